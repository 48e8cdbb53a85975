"""`relay reload` end to end, over every deployment (tests/deployment.py): a real `relay run`
reloaded with `relay reload`, and the real package under systemd 252 reloaded with
`systemctl reload relay-conversation.service` (ExecReload= runs `relay reload --pid
$MAINPID` in the unit's sandbox). A good config applies in the same process; a bad one is
refused with its errors, the reload fails, and relay goes on, on the old config.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.deployment import SESSIONS, Deployment
from tests.standin.api import StandinAPI
from tests.system.packaged import CONVERSATION, Packaged

NEW_MODEL = "claude-sonnet-4-5"


def last_reload(deployment: Deployment) -> dict[str, Any] | None:
    status = deployment.status() or {}
    last = status.get("last_reload")
    return last if isinstance(last, dict) else None


def still_answers(deployment: Deployment, pid: int, text: str) -> None:
    """The same process, still running, still answering sessions."""
    assert deployment.service_pid() == pid
    if isinstance(deployment, Packaged):
        assert deployment.show(CONVERSATION, "ActiveState") == "active"
    deployment.submit("session-1", text)
    assert deployment.consume("session-1") == f"ack: [from session-1] {text}"


def test_a_new_session_and_model_apply_without_a_restart(
    deployment: Deployment, api: StandinAPI
) -> None:
    pid = deployment.service_pid()
    sessions = [*SESSIONS, "session-3"]
    deployment.rewrite_config(sessions=sessions, model=NEW_MODEL)
    done = deployment.reload()
    assert done.returncode == 0, done
    status = deployment.wait_status(lambda s: s["model"] == NEW_MODEL)
    assert status["pid"] == pid
    assert status["last_reload"]["ok"] is True and status["last_reload"]["errors"] == []
    assert status["last_reload"]["changed"] == ["sessions (+session-3)", "model"]
    assert "session-3" in status["pending"]
    (logged,) = deployment.events("RELAY_EVENT=reloaded")
    assert "sessions (+session-3), model" in logged["MESSAGE"]

    # The new session is accepted and answered, with the new model, by the same process.
    deployment.submit("session-3", "Hello from the new session")
    assert deployment.consume("session-3") == "ack: [from session-3] Hello from the new session"
    (call,) = api.message_calls()
    assert call.body["model"] == NEW_MODEL
    assert deployment.service_pid() == pid

    # `relay reload` does the same under either (through systemctl under systemd).
    again = deployment.cli("reload")
    assert again.returncode == 0, again
    assert again.stdout.strip() == "relay: reloaded (nothing changed)"
    assert deployment.service_pid() == pid


def invalid_yaml(deployment: Deployment) -> None:
    deployment.write_config("sessions: [session-1\n")


def invalid_values(deployment: Deployment) -> None:
    deployment.rewrite_config(max_tokens=0, model="")


BAD_FILES: dict[str, tuple[Callable[[Deployment], None], list[str]]] = {
    "invalid YAML": (invalid_yaml, ["not valid YAML"]),
    "invalid values": (invalid_values, ["max_tokens: must be at least 1", "model: must be"]),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_an_invalid_file_is_never_sent(deployment: Deployment, case: str) -> None:
    """relay reload checks the file first: every error shown, exit 2, and the running relay
    is not even asked (under systemd, ExecReload= fails the same way)."""
    pid = deployment.service_pid()
    write, expected = BAD_FILES[case]
    write(deployment)
    done = deployment.reload()
    assert done.returncode != 0, done
    shown = deployment.cli("reload")
    assert shown.returncode == 2, shown
    assert "is not valid, nothing was reloaded" in shown.stderr
    for error in expected:
        assert error in shown.stderr
    assert last_reload(deployment) is None  # relay never saw it
    # Put back: `relay submit` and, under systemd, the intake handlers read the file too.
    deployment.rewrite_config()
    still_answers(deployment, pid, "still there?")


def test_a_config_relay_cannot_take_live_is_refused_and_the_old_one_stays(
    deployment: Deployment,
) -> None:
    """Valid on its own, but it changes the question topic (the answer subscriber pushes
    there too): the running relay refuses it, says why, and keeps its config."""
    pid = deployment.service_pid()
    deployment.rewrite_config(
        model=NEW_MODEL, ntfy={"server": deployment.ntfy.url, "topic": "another-topic"}
    )
    done = deployment.reload()
    assert done.returncode != 0, done
    refused = deployment.wait_status(lambda s: (s.get("last_reload") or {}).get("ok") is False)
    (error,) = refused["last_reload"]["errors"]
    assert error.startswith("ntfy.topic cannot change while relay runs")
    assert refused["model"] != NEW_MODEL and refused["pid"] == pid
    assert deployment.events("RELAY_EVENT=reload_refused")

    shown = deployment.cli("reload")
    assert shown.returncode == 1, shown
    assert "refused; relay keeps running on the old one" in shown.stderr
    assert "ntfy.topic cannot change while relay runs" in shown.stderr
    still_answers(deployment, pid, "on the old config?")

    # Put right, it applies.
    deployment.rewrite_config(model=NEW_MODEL)
    assert deployment.reload().returncode == 0
    assert deployment.wait_status(lambda s: s["model"] == NEW_MODEL)["pid"] == pid


def test_a_data_dir_change_is_refused(deployment: Deployment) -> None:
    pid = deployment.service_pid()
    deployment.rewrite_config(data_dir=deployment.scratch("elsewhere"))
    done = deployment.reload()
    assert done.returncode != 0, done
    shown = deployment.cli("reload")
    assert shown.returncode == 1, shown
    assert "data_dir cannot change while" in shown.stderr
    deployment.rewrite_config()  # `relay submit` and the intake handlers read it too
    still_answers(deployment, pid, "same directory?")
