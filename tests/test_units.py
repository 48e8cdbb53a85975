"""The unit files pass check_units.py, and check_units.py catches what it claims to."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from . import check_units as cu


def test_static_checks_pass() -> None:
    units = cu.load(cu.UNITS_DIR)
    assert [p for check in cu.STATIC_CHECKS for p in check(units)] == []


def test_verify_has_no_unjustified_output() -> None:
    assert cu.check_verify() == []


def test_verify_in_staged_root_is_silent() -> None:
    assert cu.check_verify_staged() == []


@pytest.mark.parametrize("name", sorted(cu.EXPOSURE_LIMITS))
def test_exposure_within_limit(name: str) -> None:
    score = cu.exposure(cu.UNITS_DIR / name)
    assert score <= cu.EXPOSURE_LIMITS[name], f"{name}: {score}"


def test_every_service_has_a_limit() -> None:
    services = {p.name for p in cu.unit_files() if p.name.endswith(".service")}
    assert services == set(cu.EXPOSURE_LIMITS)


# ----- the checker catches mistakes (on a mutated copy of units/) -----------------------------


@pytest.fixture
def units_copy(tmp_path: Path) -> Path:
    dest = tmp_path / "units"
    shutil.copytree(cu.UNITS_DIR, dest)
    return dest


def _edit(units_dir: Path, name: str, old: str, new: str) -> None:
    path = units_dir / name
    text = path.read_text()
    assert old in text, f"{old!r} not in {name}"
    path.write_text(text.replace(old, new, 1))


def _static(units_dir: Path) -> list[str]:
    units = cu.load(units_dir)
    return [p for check in cu.STATIC_CHECKS for p in check(units)]


MUTATIONS: list[tuple[str, str, str, str]] = [
    # (unit, old, new, expected fragment of a problem)
    ("relay-queue.service", "StartLimitBurst=60\n", "", "StartLimitBurst=5"),
    ("relay-jc.service", "ExecStartPost=/usr/bin/sleep 1\n", "", "no pacing"),
    ("relay-queue.service", "StartLimitBurst=60", "StartLimitBurst=15", "16 paced starts"),
    ("relay-queue.service", "TimeoutStartSec=120s\n", "", "TimeoutStartSec="),
    ("relay-jc.service", "PrivateNetwork=yes\n", "", "PrivateNetwork=yes"),
    ("relay-queue.path", "OnFailure=relay-alert@%n.service\n", "", "OnFailure="),
    ("relay-conversation.service", "\nRestartSec=5s", "\nRestartSec=1s", "allows 11 starts"),
    (
        "relay-conversation.service",
        "LoadCredential=anthropic-api-key:relay.anthropic-api-key",
        "LoadCredential=anthropic-api-key:/etc/relay/key",
        "243/CREDENTIALS",
    ),
    ("relay-conversation.service", "PartOf=relay.target\n", "", "PartOf=relay.target"),
    ("relay.target", "relay-jc.path", "", "Wants= should be exactly"),
    ("relay-jc.service", "User=relay", "User=root", "User=relay"),
    ("relay-conversation.service", "SupplementaryGroups=relay-clients\n", "", "dispatch/"),
    ("relay-alert@.service", "Documentation=man:relay(1)\n", "", "Documentation="),
]


@pytest.mark.parametrize(("name", "old", "new", "expected"), MUTATIONS)
def test_static_checks_catch(
    units_copy: Path, name: str, old: str, new: str, expected: str
) -> None:
    _edit(units_copy, name, old, new)
    problems = _static(units_copy)
    assert any(expected in p for p in problems), problems


def test_pairing_catches_missing_service(units_copy: Path) -> None:
    (units_copy / "relay-jc.service").unlink()
    assert any("triggers relay-jc.service" in p for p in _static(units_copy))


def test_start_limit_in_service_section_is_caught(units_copy: Path) -> None:
    # systemd-analyze verify exits 0 here and only warns: the checker must still fail.
    _edit(units_copy, "relay-queue.service", "StartLimitIntervalSec=30s\n", "")
    _edit(
        units_copy, "relay-queue.service", "[Service]\n", "[Service]\nStartLimitIntervalSec=30s\n"
    )
    assert any("belongs in [Unit]" in p for p in _static(units_copy))
    assert any("Unknown key 'StartLimitIntervalSec'" in p for p in cu.check_verify(units_copy))


def test_verify_catches_typo_and_wrong_binary(units_copy: Path) -> None:
    _edit(units_copy, "relay-jc.service", "ProtectClock=yes", "ProtectClok=yes")
    _edit(units_copy, "relay-queue.service", "/usr/bin/relay intake", "/usr/bin/rely intake")
    staged = cu.check_verify_staged(units_copy)
    assert any("ProtectClok" in p for p in staged), staged
    assert any("/usr/bin/rely" in p for p in staged), staged
    assert any("/usr/bin/rely" in p for p in cu.check_verify(units_copy))


def test_exposure_catches_network_in_handler(units_copy: Path) -> None:
    _edit(units_copy, "relay-queue.service", "PrivateNetwork=yes\n", "")
    _edit(units_copy, "relay-queue.service", "RestrictAddressFamilies=AF_UNIX", "")
    assert any("relay-queue.service: exposure" in p for p in cu.check_exposure(units_copy))


@pytest.mark.parametrize(
    ("service", "pace"),
    [
        ("ExecStart=/usr/bin/relay intake queue\n", 0.0),
        ("ExecStart=/usr/bin/relay intake queue --linger 1.5\n", 1.5),
        ("ExecStart=/usr/bin/relay intake queue\nExecStartPost=/usr/bin/sleep 1\n", 1.0),
    ],
)
def test_handler_pace(tmp_path: Path, service: str, pace: float) -> None:
    unit_file = tmp_path / "x.service"
    unit_file.write_text(f"[Service]\n{service}")
    assert cu.handler_pace(cu.parse_unit(unit_file)) == pace


@pytest.mark.parametrize(
    ("span", "expected"),
    [("5s", 5.0), ("100ms", 0.1), ("1min 30s", 90.0), ("90", 90.0), ("2h", 7200.0)],
)
def test_seconds(span: str, expected: float) -> None:
    assert cu.seconds(span) == pytest.approx(expected)


def test_main_reports_and_fails(units_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cu.main(["check_units.py"]) == 0
    _edit(units_copy, "relay-jc.service", "Type=oneshot", "Type=simple")
    assert cu.main(["check_units.py", str(units_copy)]) == 1
    assert "Type=oneshot expected" in capsys.readouterr().out
