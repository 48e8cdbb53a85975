"""The Claude Code hooks, driven with the JSON Claude Code gives them (no claude here)."""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path
from typing import Any

import pytest

from relay import intake
from relay.cc import hooks
from relay.cc.identity import BINDING_NAME, Process, process
from relay.config import load_config
from relay.layout import Layout
from tests.relayproc import write_config

ME = process(os.getpid())
OTHER = process(os.getppid())


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Layout, dict[str, str]]:
    config = write_config(tmp_path, "http://127.0.0.1:9")
    layout = Layout(tmp_path / "data")
    layout.ensure_all(("session-1", "session-2"))
    env = {"HOME": str(tmp_path / "home"), "RELAY_CONFIG": str(config)}
    return config, layout, env


def stop_input(prompt_id: str | None, text: str, cc: str = "cc-uuid-1") -> dict[str, Any]:
    data: dict[str, Any] = {
        "session_id": cc,
        "transcript_path": "/nonexistent.jsonl",
        "cwd": "/project",
        "hook_event_name": "Stop",
        "stop_hook_active": False,
        "last_assistant_message": text,
    }
    if prompt_id is not None:
        data["prompt_id"] = prompt_id
    return data


def queued(layout: Layout) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(layout.queue.glob("*.json")) if p.is_file()]


def run(
    event: str, data: dict[str, Any], env: dict[str, str], owner: Process | None = ME
) -> hooks.Outcome:
    return hooks.handle(event, data, env, owner)


def test_an_unbound_project_does_nothing(
    setup: tuple[Path, Layout, dict[str, str]], tmp_path: Path
) -> None:
    _, layout, env = setup
    data = {**stop_input("p1", "text"), "cwd": str(tmp_path)}
    for event in hooks.EVENTS:
        assert run(event, data, env) == hooks.Outcome()
    assert queued(layout) == []
    # The worker's own claude: its hooks stand down even when bound.
    bound = {**env, "RELAY_SESSION": "session-1", "RELAY_CC_WORKER": "1"}
    assert run("stop", data, bound) == hooks.Outcome()
    assert queued(layout) == []


def test_stop_submits_the_turn_with_a_per_turn_id(
    setup: tuple[Path, Layout, dict[str, str]],
) -> None:
    config, layout, env = setup
    env = {**env, "RELAY_SESSION": "session-1"}
    assert run("stop", stop_input("p1", "turn one"), env) == hooks.Outcome()
    assert run("stop", stop_input("p1", "turn one"), env) == hooks.Outcome()  # a repeat
    assert run("stop", stop_input("p2", "turn one"), env) == hooks.Outcome()  # same text, new turn
    envelopes = queued(layout)
    assert [e["content"] for e in envelopes] == ["turn one"] * 3
    # Queue files written within one timestamp tick have no order: compare the ids as a set.
    ids = [e["id"] for e in envelopes]
    assert sorted(ids.count(i) for i in set(ids)) == [1, 2]
    assert hooks.envelope_id(stop_input("p1", "turn one")) in ids
    assert all(e["session_id"] == "session-1" for e in envelopes)
    # What relay makes of them: the repeat is refused as a duplicate, both turns accepted.
    result = intake.drain_queue(load_config(config), layout)
    assert len(result.accepted) == 2 and len(result.rejected) == 1
    # Nothing to submit for a turn without text; no prompt_id: no id, never a lost turn.
    assert run("stop", stop_input("p3", "  "), env) == hooks.Outcome()
    assert hooks.envelope_id(stop_input(None, "x")) is None
    assert run("stop", stop_input(None, "x"), env) == hooks.Outcome()
    assert any("id" not in e for e in queued(layout))


def test_refusals_are_one_line_for_the_user(
    setup: tuple[Path, Layout, dict[str, str]], tmp_path: Path
) -> None:
    _, layout, env = setup
    unknown = run("stop", stop_input("p1", "x"), {**env, "RELAY_SESSION": "session-9"})
    assert unknown.exit_code == 0 and unknown.stdout is not None
    message = unknown.stdout["systemMessage"]
    assert message.startswith("relay: unknown session 'session-9'") and "\n" not in message
    missing = {**env, "RELAY_SESSION": "session-1", "RELAY_CONFIG": str(tmp_path / "nope.yaml")}
    out = io.StringIO()
    code = hooks_main("stop", stop_input("p1", "x"), missing, out)
    assert code == 0
    assert "is relay installed here?" in json.loads(out.getvalue())["systemMessage"]
    too_big = run("stop", stop_input("p1", "x" * 300_000), {**env, "RELAY_SESSION": "session-1"})
    assert too_big.stdout is not None
    assert "was not sent to session-1" in too_big.stdout["systemMessage"]
    assert queued(layout) == []


def hooks_main(event: str, data: Any, env: dict[str, str], out: io.StringIO) -> int:
    with contextlib.redirect_stdout(out):
        return hooks.main(event, io.StringIO(json.dumps(data)), env)


def test_garbage_on_stdin_never_breaks_the_session(
    setup: tuple[Path, Layout, dict[str, str]],
) -> None:
    _, layout, env = setup
    for raw in ("", "not json", "[1, 2]", '{"session_id": 5}', '{"prompt": 7}'):
        for event in ("prompt", "stop", "deliver", "session-end"):
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                code = hooks.main(event, io.StringIO(raw), {**env, "RELAY_SESSION": "session-1"})
            assert code == 0, (event, raw)
            printed = out.getvalue().strip()
            assert printed == "" or "systemMessage" in json.loads(printed), (event, raw)
    assert queued(layout) == []


def test_binding_file_names_the_session_and_config(
    setup: tuple[Path, Layout, dict[str, str]], tmp_path: Path
) -> None:
    config, layout, env = setup
    project = tmp_path / "project"
    (project / ".claude").mkdir(parents=True)
    (project / ".claude" / BINDING_NAME).write_text(
        json.dumps({"session": "session-2", "config": str(config)})
    )
    bare = {"HOME": env["HOME"], "CLAUDE_PROJECT_DIR": str(project)}
    assert run("stop", stop_input("p1", "from the bound project"), bare) == hooks.Outcome()
    assert [e["session_id"] for e in queued(layout)] == ["session-2"]
    (project / ".claude" / BINDING_NAME).write_text("{broken")
    broken = run("stop", stop_input("p2", "x"), bare)
    assert (
        broken.stdout is not None
        and "cannot read the relay binding" in broken.stdout["systemMessage"]
    )


def test_a_delivery_from_start_to_consumption(setup: tuple[Path, Layout, dict[str, str]]) -> None:
    _, layout, env = setup
    env = {**env, "RELAY_SESSION": "session-1"}
    started = run("session-start", {"session_id": "cc-1", "cwd": "/p", "source": "startup"}, env)
    assert started.stdout is not None
    specific = started.stdout["hookSpecificOutput"]
    assert specific["watchPaths"] == [str(layout.input_file("session-1"))]
    assert "relay session session-1" in specific["additionalContext"]
    assert "systemMessage" not in started.stdout
    assert run("deliver", {"session_id": "cc-1"}, env) == hooks.Outcome()  # nothing yet

    layout.input_file("session-1").write_text("please refactor the parser")
    delivered = run("deliver", {"session_id": "cc-1", "event": "add"}, env)
    assert delivered.exit_code == hooks.DELIVER_EXIT
    assert delivered.stderr.startswith("Message from your coordinator")
    assert "please refactor the parser" in delivered.stderr
    tag = delivered.stderr.rsplit("[", 1)[1].rstrip("]")
    assert run("deliver", {"session_id": "cc-1"}, env) == hooks.Outcome()  # once only
    # The turn ends before the prompt carrying it was submitted: not consumed yet.
    assert run("stop", stop_input("p0", "earlier turn", "cc-1"), env) == hooks.Outcome()
    assert layout.input_file("session-1").exists()
    run("prompt", {"session_id": "cc-1", "prompt": f"... {delivered.stderr}"}, env)
    assert tag.startswith("relay-msg:")
    run("stop", stop_input("p1", "refactored", "cc-1"), env)
    assert not layout.input_file("session-1").exists()
    assert sorted(e["content"] for e in queued(layout)) == ["earlier turn", "refactored"]


def test_an_api_failure_consumes_the_reply_it_carried(
    setup: tuple[Path, Layout, dict[str, str]],
) -> None:
    _, layout, env = setup
    env = {**env, "RELAY_SESSION": "session-1"}
    layout.input_file("session-1").write_text("go")
    delivered = run("deliver", {"session_id": "cc-1"}, env)
    run("prompt", {"session_id": "cc-1", "prompt": delivered.stderr}, env)
    assert run("stop-failure", {"session_id": "cc-1"}, env) == hooks.Outcome()
    assert not layout.input_file("session-1").exists()
    assert queued(layout) == []


def test_a_second_process_on_a_session_is_warned(
    setup: tuple[Path, Layout, dict[str, str]],
) -> None:
    _, _, env = setup
    env = {**env, "RELAY_SESSION": "session-1"}
    run("session-start", {"session_id": "cc-1"}, env, ME)
    second = run("session-start", {"session_id": "cc-2"}, env, OTHER)
    assert second.stdout is not None
    assert "another process" in second.stdout["systemMessage"]
    run("session-end", {"session_id": "cc-1"}, env, ME)
    third = run("session-start", {"session_id": "cc-3"}, env, ME)
    assert third.stdout is not None
    assert "another process" in third.stdout["systemMessage"]  # OTHER is still there


def test_a_reply_landing_while_claude_code_starts_is_not_missed(
    setup: tuple[Path, Layout, dict[str, str]],
) -> None:
    """Claude Code watches input.txt only once the start hook has answered: the start's
    delivery keeps looking meanwhile."""
    import threading

    _, layout, env = setup
    env = {**env, "RELAY_SESSION": "session-1"}
    staged = layout.session_dir("session-1") / ".staged"
    staged.write_text("arrived late")
    later = threading.Timer(0.5, os.rename, [staged, layout.input_file("session-1")])
    later.start()
    at_start = {"session_id": "cc-1", "hook_event_name": "SessionStart", "source": "startup"}
    delivered = run("deliver", at_start, env)
    later.join()
    assert delivered.exit_code == hooks.DELIVER_EXIT and "arrived late" in delivered.stderr
    # It gives up at once when its Claude Code is gone.
    layout.input_file("session-1").unlink()
    (layout.session_dir("session-1") / ".relay-claim").unlink()
    assert run("deliver", at_start, env, Process(os.getpid(), -1)) == hooks.Outcome()


def test_a_claude_run_by_the_session_itself_does_not_speak_for_it(
    setup: tuple[Path, Layout, dict[str, str]],
) -> None:
    """`relay cc run` names the PID claude gets; a claude that the session's own Bash tool
    starts inherits RELAY_SESSION but is another process."""
    _, layout, env = setup
    assert ME is not None and OTHER is not None
    nested = {**env, "RELAY_SESSION": "session-1", "RELAY_CC_PID": str(OTHER.pid)}
    assert run("stop", stop_input("p1", "from a nested claude"), nested, ME) == hooks.Outcome()
    assert queued(layout) == []
    launched = {**nested, "RELAY_CC_PID": str(ME.pid)}
    assert run("stop", stop_input("p1", "from the session"), launched, ME) == hooks.Outcome()
    assert [e["content"] for e in queued(layout)] == ["from the session"]


def test_a_bug_in_a_hook_is_one_line_and_exit_0(
    setup: tuple[Path, Layout, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, _, env = setup

    def broken(*args: object) -> None:
        raise KeyError("surprise")

    monkeypatch.setattr(hooks, "_stop", broken)
    out = hooks.handle("stop", stop_input("p1", "x"), {**env, "RELAY_SESSION": "session-1"}, ME)
    assert out.exit_code == 0 and out.stdout is not None
    assert out.stdout["systemMessage"].startswith("relay: internal error in the stop hook")
