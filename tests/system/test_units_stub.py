"""The unit files under a real systemd 252, driven by a stub /usr/bin/relay (stub_relay.py).

One container per module: sysusers/tmpfiles from packaging/, units/ in /etc/systemd/system,
relay.target enabled before boot (as the package's postinst does), the stub as /usr/bin/relay.
Each test takes a journal cursor and restores what it changes.

Expected noise: handlers log "Failed to configure loopback network device ... Operation not
permitted" here, because nspawn without --private-network gives the container no CAP_NET_ADMIN
to set up lo in PrivateNetwork='s new namespace. The handlers need no network either way.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .nspawn import Container, booted_container

pytestmark = pytest.mark.system

REPO = Path(__file__).resolve().parents[2]
DATA = "/var/lib/relay"
CONVERSATION = "relay-conversation.service"
START_LIMIT = ("start-limit-hit", "Start request repeated too quickly")


def install(c: Container) -> None:
    c.copy_in(REPO / "tests/system/stub_relay.py", "/usr/bin/relay", mode=0o755)
    for unit in sorted((REPO / "units").iterdir()):
        c.copy_in(unit, f"/etc/systemd/system/{unit.name}", mode=0o644)
    c.copy_in(REPO / "packaging/sysusers.d/relay.conf", "/etc/sysusers.d/relay.conf", mode=0o644)
    c.copy_in(REPO / "packaging/tmpfiles.d/relay.conf", "/etc/tmpfiles.d/relay.conf", mode=0o644)
    c.setup_run(["systemctl", "enable", "relay.target"])


@pytest.fixture(scope="module")
def relay() -> Iterator[Container]:
    with booted_container(install) as c:
        yield c


def count(c: Container, directory: str, prefix: str = "") -> int:
    script = 'ls -A "$1" | grep -c -- "^$2" || true'
    return int(c.run(["sh", "-c", script, "sh", directory, prefix]).stdout.strip())


def visible_in_queue(c: Container) -> int:
    return count(c, f"{DATA}/queue") - count(c, f"{DATA}/queue", r"\.")


def assert_no_start_limit(c: Container, cursor: str, *units: str) -> None:
    unit_args = [arg for unit in units for arg in ("-u", unit)]
    log = c.journal_text_since(cursor, *unit_args)
    assert not any(marker in log for marker in START_LIMIT), log


def wait_active(c: Container, unit: str, timeout: float = 20.0) -> None:
    c.wait_for(lambda: c.show(unit, "ActiveState") == "active", timeout=timeout, what=unit)


def test_enabled_target_brings_everything_up_at_boot(relay: Container) -> None:
    assert relay.systemctl("is-enabled", "relay.target").stdout.strip() == "enabled"
    for unit in (CONVERSATION, "relay-queue.path", "relay-jc.path"):
        assert relay.systemctl("is-enabled", unit, check=False).stdout.strip() == "static"
        wait_active(relay, unit)
    assert relay.show("relay.target", "ActiveState") == "active"
    assert relay.show(CONVERSATION, "SubState") == "running"
    assert relay.show("relay-queue.path", "SubState") == "waiting"
    # tmpfiles modes survive the units starting (no StateDirectory= chown to relay:relay).
    modes = relay.run(["stat", "-c", "%a %U %G", DATA, f"{DATA}/queue"]).stdout.split("\n")
    assert modes[:2] == ["750 relay relay-clients", "3770 relay relay-clients"]


def test_missing_credential_does_not_fail_the_unit(relay: Container) -> None:
    relay.run(["rm", "-f", "/etc/credstore/relay.anthropic-api-key"])
    relay.systemctl("restart", CONVERSATION)
    assert relay.show(CONVERSATION, "ActiveState") == "active"
    assert "no API key" in relay.show(CONVERSATION, "StatusText")
    assert not relay.exists(f"/run/credentials/{CONVERSATION}/anthropic-api-key")


def test_credential_is_loaded_and_not_leaked(relay: Container) -> None:
    key = "sk-ant-test-DO-NOT-LEAK-7f3a"
    relay.write_file("/etc/credstore/relay.anthropic-api-key", key + "\n", mode=0o600)
    try:
        cursor = relay.cursor()
        relay.systemctl("restart", CONVERSATION)
        assert relay.show(CONVERSATION, "StatusText") == "running"
        path = f"/run/credentials/{CONVERSATION}/anthropic-api-key"
        assert relay.run(["stat", "-c", "%a %U", path]).stdout.split() == ["400", "relay"]
        environ = relay.read_file(f"/proc/{relay.show(CONVERSATION, 'MainPID')}/environ")
        assert "CREDENTIALS_DIRECTORY=" in environ and key not in environ
        assert key not in json.dumps(relay.journal_since(cursor))
    finally:
        relay.run(["rm", "-f", "/etc/credstore/relay.anthropic-api-key"])
        relay.systemctl("restart", CONVERSATION)


def test_dispatch_files_stay_readable_by_clients(relay: Container) -> None:
    # The stub does what the engine does: mkdir 2770 via the umask, input.txt 0640.
    session = f"{DATA}/dispatch/stub-session"
    out = relay.run(["stat", "-c", "%A %G", session, f"{session}/input.txt"]).stdout.split("\n")
    assert out[:2] == ["drwxrws--- relay-clients", "-rw-r----- relay-clients"]


BURST = r"""
cd "$1"
write() { for i in $(seq "$2"); do
    printf '{"n": %s}' "$i" > ".b$1-$i.tmp" && mv ".b$1-$i.tmp" "b$1-$i.json"; done; }
write 1 70 & write 2 70 & write 3 60 & wait
"""


def test_burst_of_200_is_drained_without_start_limit(relay: Container) -> None:
    cursor = relay.cursor()
    started = time.monotonic()
    relay.run(["sh", "-c", BURST, "sh", f"{DATA}/queue"])
    relay.wait_for(
        lambda: count(relay, f"{DATA}/state/inbox", "b") == 200, timeout=60, what="200 in inbox"
    )
    print(f"200 envelopes drained in {time.monotonic() - started:.1f}s")
    assert visible_in_queue(relay) == 0
    assert relay.show("relay-queue.path", "ActiveState") == "active"
    assert_no_start_limit(relay, cursor, "relay-queue.service", "relay-queue.path")


TRICKLE = r"""
cd "$1"
for i in $(seq 70); do printf x > ".t$i.tmp" && mv ".t$i.tmp" "t$i.json"; sleep 0.12; done
"""


def test_trickle_does_not_hit_the_start_limit(relay: Container) -> None:
    """70 files ~0.12 s apart: one run per file without pacing (> 60 starts in 30 s, which
    failed relay-queue.path in an earlier draft); ExecStartPost= pacing batches them."""
    cursor = relay.cursor()
    relay.run(["sh", "-c", TRICKLE, "sh", f"{DATA}/queue"], timeout=60)
    relay.wait_for(
        lambda: count(relay, f"{DATA}/state/inbox", "t") == 70, timeout=30, what="70 in inbox"
    )
    assert relay.show("relay-queue.path", "ActiveState") == "active"
    assert_no_start_limit(relay, cursor, "relay-queue.service", "relay-queue.path")


def test_jc_input_is_always_consumed(relay: Container) -> None:
    cursor = relay.cursor()
    jc_input = f"{DATA}/state/jc_input.txt"
    before = count(relay, f"{DATA}/state/inbox", "jc-")
    for i in range(4):
        relay.write_file(jc_input, f"operator says {i}\n", mode=0o600)
        relay.wait_for(lambda: not relay.exists(jc_input), timeout=15, what="jc consumed")
    # Back-to-back replacements while the handler may be running: still consumed in the end.
    for i in range(5):
        relay.write_file(jc_input, f"rapid {i}\n", mode=0o600)
    relay.wait_for(lambda: not relay.exists(jc_input), timeout=15, what="jc consumed")
    assert count(relay, f"{DATA}/state/inbox", "jc-") >= before + 5
    assert relay.show("relay-jc.path", "ActiveState") == "active"
    assert_no_start_limit(relay, cursor, "relay-jc.service", "relay-jc.path")


@pytest.fixture
def short_watchdog(relay: Container) -> Iterator[None]:
    """WatchdogSec=2s via a drop-in, so the test needs seconds instead of 30."""
    dropin = f"/etc/systemd/system/{CONVERSATION}.d/test-watchdog.conf"
    relay.write_file(dropin, "[Service]\nWatchdogSec=2s\n")
    relay.systemctl("daemon-reload")
    relay.systemctl("restart", CONVERSATION)
    try:
        yield
    finally:
        relay.run(["rm", "-f", dropin])
        relay.systemctl("daemon-reload")
        relay.systemctl("restart", CONVERSATION)


@pytest.mark.usefixtures("short_watchdog")
def test_stopped_conversation_is_killed_by_watchdog_with_traceback(relay: Container) -> None:
    cursor = relay.cursor()
    pid = relay.show(CONVERSATION, "MainPID")
    relay.run(["kill", "-STOP", pid])
    relay.wait_for(
        lambda: (
            relay.show(CONVERSATION, "MainPID") not in ("0", pid)
            and relay.show(CONVERSATION, "ActiveState") == "active"
        ),
        timeout=30,
        what="restart after the watchdog",
    )
    log = relay.journal_text_since(cursor, "-u", CONVERSATION)
    assert "Watchdog timeout (limit 2s)!" in log
    assert "with signal SIGABRT" in log
    # PYTHONFAULTHANDLER=1: systemd also sends SIGCONT, so even a stopped process dumps.
    assert "Fatal Python error: Aborted" in log
    assert 'File "/usr/bin/relay"' in log and "in main_loop_iteration" in log
    assert "Scheduled restart job" in log
    assert int(relay.show(CONVERSATION, "NRestarts")) >= 1
    # Restart= keeps the unit out of "failed", so no alert for a restart that worked.
    assert "Triggering OnFailure=" not in log


@pytest.fixture
def short_handler_timeout(relay: Container) -> Iterator[None]:
    dropin = "/etc/systemd/system/relay-queue.service.d/test-timeout.conf"
    relay.write_file(dropin, "[Service]\nTimeoutStartSec=2s\n")
    relay.systemctl("daemon-reload")
    try:
        yield
    finally:
        relay.run(["rm", "-f", dropin])
        relay.systemctl("daemon-reload")


@pytest.mark.usefixtures("short_handler_timeout")
def test_hung_handler_times_out_with_traceback(relay: Container) -> None:
    cursor = relay.cursor()
    relay.write_file(f"{DATA}/queue/stub-hang-1.json", "{}")
    relay.wait_for(
        lambda: (
            "Failed with result 'timeout'"
            in relay.journal_text_since(cursor, "-u", "relay-queue.service")
        ),
        timeout=20,
        what="handler start timeout",
    )
    log = relay.journal_text_since(cursor, "-u", "relay-queue.service")
    # TimeoutStartFailureMode=abort: SIGABRT, so faulthandler shows where it hung.
    assert "Fatal Python error: Aborted" in log and "in hang_forever" in log
    wait_active(relay, "relay-queue.path")
    relay.write_file(f"{DATA}/queue/after-hang.json", "{}")
    relay.wait_for(lambda: visible_in_queue(relay) == 0, timeout=15, what="queue drained")


def test_failing_handler_fails_path_unit_and_alerts(relay: Container) -> None:
    """A poison entry the handler cannot move: fast failures hit the start limit, the path
    unit fails and OnFailure= runs relay-alert@relay-queue.path.service with the right %i."""
    cursor = relay.cursor()
    # A root-owned directory: relay may not rename it (that would rewrite its "..").
    relay.run(["mkdir", "-m", "0755", f"{DATA}/queue/poison"])
    try:
        relay.wait_for(
            lambda: relay.show("relay-queue.path", "Result") == "unit-start-limit-hit",
            timeout=60,
            what="relay-queue.path to fail",
        )
        relay.wait_for(
            lambda: (
                "alert: relay-queue.path failed"
                in relay.journal_text_since(cursor, "-t", "relay-alert")
            ),
            timeout=20,
            what="the alert",
        )
    finally:
        relay.run(["rmdir", f"{DATA}/queue/poison"])
        relay.systemctl("reset-failed", "relay-queue.path", "relay-queue.service")
        relay.systemctl("start", "relay-queue.path")
    wait_active(relay, "relay-queue.path")


def test_stopping_target_stops_members(relay: Container) -> None:
    members = (CONVERSATION, "relay-queue.path", "relay-jc.path")
    relay.systemctl("stop", "relay.target")
    try:
        relay.wait_for(
            lambda: all(relay.show(u, "ActiveState") == "inactive" for u in members),
            timeout=20,
            what="members to stop",
        )
    finally:
        relay.systemctl("start", "relay.target")
    for unit in members:
        wait_active(relay, unit)
