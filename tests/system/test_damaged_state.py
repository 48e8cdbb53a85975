"""A damaged history, under the real units: relay stops with exit status 3, systemd does not
restart it, relay-alert@ pushes, and `relay status` says what to do, which then works.

The package is installed by apt in a booted container (a real systemd 252, nspawn.py); the
stand-in API and ntfy run on the host, whose network the container shares.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.standin.api import StandinAPI
from tests.standin.ntfy import StandinNtfy

from .nspawn import Container
from .relaydeb import DATA, build_deb, config_yaml, relay_container, wait_input, wait_ready

pytestmark = pytest.mark.system

CONVERSATION = "relay-conversation.service"
ALERT = f"relay-alert@{CONVERSATION}.service"
HISTORY = f"{DATA}/state/history.jsonl"
DAMAGED = '{"this record is damaged\n'


@pytest.fixture(scope="module")
def ntfy() -> Iterator[StandinNtfy]:
    with StandinNtfy() as server:
        yield server


@pytest.fixture(scope="module")
def api() -> Iterator[StandinAPI]:
    with StandinAPI() as server:
        yield server


@pytest.fixture(scope="module")
def relay(api: StandinAPI, ntfy: StandinNtfy) -> Iterator[Container]:
    deb: Path = build_deb()
    with relay_container(deb, config_yaml(api.url, ntfy.url)) as container:
        yield container


def status(c: Container) -> dict[str, object]:
    report: dict[str, object] = json.loads(c.run(["relay", "status", "--json"]).stdout)
    return report


def test_a_damaged_history_line_fails_the_unit_once_and_says_what_to_do(
    relay: Container, ntfy: StandinNtfy
) -> None:
    c = relay
    # One real turn, so the history holds a real record after the damaged one.
    c.run(["relay", "submit", "--session", "session-1", "-"], input="hello")
    assert wait_input(c, "session-1").startswith("ack: ")
    c.systemctl("stop", CONVERSATION)
    history = c.read_file(HISTORY)
    assert history.count("\n") == 1
    c.write_file(HISTORY, DAMAGED + history, mode=0o600, owner="relay:relay")
    cursor = c.cursor()
    ntfy.reset()

    c.systemctl("start", CONVERSATION, check=False)  # Type=notify: the start job fails

    c.wait_for(
        lambda: c.show(CONVERSATION, "ActiveState") == "failed", timeout=30, what="unit failed"
    )
    assert c.show(CONVERSATION, "ExecMainStatus") == "3"
    assert c.show(CONVERSATION, "Result") == "exit-code"
    # "failed", not "activating (auto-restart)": RestartPreventExitStatus= kept it down.
    assert c.show(CONVERSATION, "NRestarts") == "0"

    # OnFailure= ran relay-alert@, which pushed to the operator's phone.
    pushes = [m for m in ntfy.wait_for(1, timeout=30) if CONVERSATION in (m.title or "")]
    assert pushes, [m.title for m in ntfy.messages]
    assert pushes[0].priority == 5
    assert c.show(ALERT, "Result") == "success"

    # The journal says it once, as a relay event, with what to do.
    (event,) = c.journal_since(cursor, "RELAY_EVENT=state_error")
    assert event["SYSLOG_IDENTIFIER"] == "relay-conversation"
    assert "history.jsonl: record at byte 0 is damaged" in event["MESSAGE"]
    assert "restore it from state/archive/ or remove the line" in event["MESSAGE"]

    # So does `relay status`, though the process is gone.
    report = status(c)
    assert report["state"] == "failed"
    assert str(report["state_detail"]).endswith("; then systemctl restart relay.target")
    shown = c.run(["relay", "status"]).stdout
    assert "state:          failed" in shown
    assert "restore it from state/archive/ or remove the line" in shown
    assert f"{CONVERSATION} failed" in shown

    # Doing what it says brings relay back with its history.
    c.write_file(HISTORY, history, mode=0o600, owner="relay:relay")
    c.systemctl("restart", "relay.target")
    wait_ready(c)
    c.wait_for(lambda: status(c)["state"] == "running", timeout=30, what="relay running")
    assert status(c)["history_turns"] == 1
