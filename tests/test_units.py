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


def test_the_units_are_the_ones_the_package_installs() -> None:
    """debian/relay.install ships every unit in units/ (dh_installsystemd then starts, stops
    and restarts them; docs/systemd.md §5.2), and nothing else from there."""
    install = (cu.UNITS_DIR.parent / "debian" / "relay.install").read_text().splitlines()
    shipped = sorted(
        line.split()[0].removeprefix("units/")
        for line in install
        if line.startswith("units/") and line.split()[1:] == ["lib/systemd/system/"]
    )
    listed = [line.split()[0] for line in install if line.startswith("units/")]
    assert len(listed) == len(shipped), f"units/ must go to lib/systemd/system/: {install}"
    assert shipped == [p.name for p in cu.unit_files()]


def test_the_target_wants_every_member() -> None:
    target = cu.parse_unit(cu.UNITS_DIR / cu.TARGET)
    members = set(cu.words(target, "Unit", "Wants"))
    assert members == {cu.CONVERSATION, cu.ANSWERS, "relay-queue.path", "relay-jc.path"}


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
    ("relay-conversation.service", " reload --pid $MAINPID", " reload", "ExecReload="),
    ("relay-alert@.service", "Documentation=man:relay(1)\n", "", "Documentation="),
    # the answer subscriber, a member like the conversation
    ("relay.target", " relay-answers.service", "", "Wants= should be exactly"),
    ("relay-answers.service", "PartOf=relay.target\n", "", "PartOf=relay.target"),
    ("relay-answers.service", "\nRestartSec=5s", "\nRestartSec=1s", "allows 11 starts"),
    ("relay-answers.service", "Type=notify", "Type=simple", "Type=notify expected"),
    ("relay-answers.service", "RestartPreventExitStatus=2 3", "", "RestartPreventExitStatus=2"),
    ("relay-answers.service", "OnFailure=relay-alert@%n.service\n", "", "OnFailure="),
    ("relay-answers.service", "TimeoutStopSec=15s\n", "", "TimeoutStopSec="),
    ("relay-answers.service", "After=network-online.target\n", "", "After=network-online"),
    ("relay-answers.service", "UMask=0077", "UMask=0022", "UMask=0077"),
    (
        "relay-answers.service",
        "User=relay\n",
        "User=relay\nSupplementaryGroups=relay-clients\n",
        "no SupplementaryGroups=",
    ),
    # credentials: bare names, where they are needed and nowhere else, never the environment
    (
        "relay-answers.service",
        "LoadCredential=ntfy-token:relay.ntfy-token",
        "LoadCredential=ntfy-token:/etc/relay/ntfy-token",
        "243/CREDENTIALS",
    ),
    (
        "relay-alert@.service",
        "LoadCredential=ntfy-token:relay.ntfy-token\n",
        "",
        "relay-alert@.service: LoadCredential=ntfy-token:relay.ntfy-token missing",
    ),
    (
        "relay-conversation.service",
        "LoadCredential=ntfy-token:relay.ntfy-token\n",
        "",
        "relay-conversation.service: LoadCredential=ntfy-token:relay.ntfy-token missing",
    ),
    (
        "relay-answers.service",
        "LoadCredential=ntfy-token:relay.ntfy-token",
        "LoadCredential=ntfy-token:relay.ntfy-token\n"
        "LoadCredential=anthropic-api-key:relay.anthropic-api-key",
        "it does not need it",
    ),
    (
        "relay-answers.service",
        "Environment=PYTHONFAULTHANDLER=1",
        "Environment=PYTHONFAULTHANDLER=1 RELAY_NTFY_TOKEN=tk_secret",
        "secrets must not be in the environment",
    ),
    (
        "relay-conversation.service",
        "Environment=PYTHONFAULTHANDLER=1",
        "Environment=ANTHROPIC_API_KEY=sk-x",
        "secrets must not be in the environment",
    ),
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
