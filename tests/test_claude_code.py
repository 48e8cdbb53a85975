"""End to end with the real Claude Code: relay run + relay cc install + relay cc run / worker.

Every run is offline: Claude Code talks to one stand-in Messages API (`cc_api`), relay to
another playing chat-Claude (`coordinator`). Interactive sessions run under a tmux server
of the test's own.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from tests.claudecode import (
    RELAY,
    Coordinator,
    Started,
    Tmux,
    cc_env,
    cc_responder,
    claude_binary,
    claude_pid,
    descendants,
    main_requests,
    relay_cli,
    seed_home,
    user_texts,
    wait_request_with,
)
from tests.relayproc import RelayProcess, wait_for, write_config
from tests.standin.api import Action, Delay, Reply, StandinAPI

TURN_TIMEOUT = 45.0
PROMPT_MARK = "\u276f"  # Claude Code's input prompt: the UI is ready for typing
LONG_WAIT_S = 20.0  # relay's own API timeout in these tests is 30 s


@dataclass
class World:
    tmp: Path
    home: Path
    project: Path
    cc_api: StandinAPI
    relay_api: StandinAPI
    coordinator: Coordinator
    relay: RelayProcess
    tmux: Tmux
    started: Started
    env: dict[str, str]

    def cli(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return relay_cli(self.env, *args, cwd=cwd or self.project)

    def run_session(
        self, name: str, session: str, *claude_args: str, cwd: Path | None = None
    ) -> None:
        command = [str(RELAY), "cc", "run", "--session", session]
        if claude_args:
            command += ["--", *claude_args]
        self.tmux.start(name, command, cwd or self.project, self.env)
        self.wait_attached(session)

    def wait_attached(self, session: str, count: int = 1) -> None:
        directory = self.relay.data / "dispatch" / session
        wait_for(
            lambda: len(list(directory.glob(".relay-cc-*.json"))) >= count,
            TURN_TIMEOUT,
            f"{count} Claude Code attached to {session}",
        )

    def input_file(self, session: str) -> Path:
        return self.relay.input_file(session)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    home = tmp_path / "home"
    project = tmp_path / "project"
    project.mkdir()
    seed_home(home, tmp_path)
    coordinator = Coordinator()
    tmux = Tmux(tmp_path / "tmux.sock")
    started = Started()
    with (
        StandinAPI(responder=cc_responder) as cc_api,
        StandinAPI(responder=coordinator) as relay_api,
    ):
        config = write_config(tmp_path, relay_api.url)
        relay = RelayProcess(config)
        env = cc_env(home, cc_api.url, RELAY_CONFIG=str(config))
        try:
            relay.start()
            yield World(
                tmp_path, home, project, cc_api, relay_api, coordinator, relay, tmux, started, env
            )
        finally:
            # Shown by pytest only when the test failed.
            print(diagnostics(relay, tmux, tmp_path))
            tmux.kill_server()
            started.stop_all()
            relay.stop()


def diagnostics(relay: RelayProcess, tmux: Tmux, tmp: Path) -> str:
    lines = ["--- relay log", relay.log()[-4000:]]
    rejected = relay.data / "queue" / ".rejected"
    for reason in sorted(rejected.glob("*.reason")) if rejected.exists() else []:
        lines.append(f"--- rejected {reason.name}: {reason.read_text().strip()}")
    for directory in sorted((relay.data / "dispatch").glob("*")):
        lines.append(f"--- {directory}: {sorted(p.name for p in directory.iterdir())}")
    listed = subprocess.run(
        ["tmux", "-S", str(tmux.socket), "list-sessions", "-F", "#{session_name}"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    for name in listed:
        lines += [f"--- screen {name}", tmux.screen(name)[-3000:]]
    log = tmp / "worker.log"
    if log.exists():
        lines += ["--- worker log", log.read_text(errors="replace")[-3000:]]
    return "\n".join(lines)


def test_interactive_three_rounds_then_exit(world: World) -> None:
    installed = world.cli("cc", "install")
    assert installed.returncode == 0, installed.stderr
    world.coordinator.scripts["session-1"] = [
        f"instruction {n}: do step {n} [[reply: result {n}]]" for n in (1, 2, 3)
    ]
    world.run_session("s1", "session-1")
    world.tmux.type("s1", "start the work [[reply: result 0]]")

    for n in (1, 2, 3):
        wait_request_with(world.cc_api, f"instruction {n}: do step {n}", TURN_TIMEOUT)
    wait_for(
        lambda: len(world.coordinator.turns_from("session-1")) == 4,
        TURN_TIMEOUT,
        "four turns from session-1",
    )
    # The last reply makes Claude Code's call fail: the turn ends (StopFailure), the reply is
    # consumed all the same, and nothing is submitted.
    wait_request_with(world.cc_api, "that is all", TURN_TIMEOUT)
    wait_for(lambda: not world.input_file("session-1").exists(), TURN_TIMEOUT, "consumed")
    time.sleep(2)
    turns = world.coordinator.turns_from("session-1")
    assert [t.split("\n", 1)[1] for t in turns] == [f"result {n}" for n in range(4)]
    # One turn per reply, in order, each carried by exactly one request.
    carried = [
        n
        for body in main_requests(world.cc_api)
        for n in (1, 2, 3)
        if f"instruction {n}: do step {n}" in user_texts(body)[-1]
    ]
    assert carried == [1, 2, 3]
    screen = world.tmux.screen("s1")
    assert "result 3" in screen

    pane = world.tmux.pane_pid("s1")
    world.tmux.type("s1", "/exit")
    world.tmux.wait_screen("s1", "RELAY-TEST-EXITED", TURN_TIMEOUT)
    time.sleep(1)
    left = [p for p in descendants(pane) if Path(f"/proc/{p}/comm").exists()]
    comms = [Path(f"/proc/{p}/comm").read_text().strip() for p in left]
    assert comms == ["sleep"], f"left behind after /exit: {comms}"
    assert not list((world.relay.data / "dispatch" / "session-1").glob(".relay-cc-*"))


# --- headless workers -------------------------------------------------------------------------


def start_worker(world: World, *args: str) -> subprocess.Popen[bytes]:
    log = open(world.tmp / "worker.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        [str(RELAY), "cc", "worker", "--session", "session-1", *args],
        env=world.env,
        cwd=world.project,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    world.started.add(proc)
    world.wait_attached("session-1")
    return proc


def worker_log(world: World) -> str:
    path = world.tmp / "worker.log"
    return path.read_text(errors="replace") if path.exists() else ""


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def claude_under(pid: int) -> int | None:
    for child in descendants(pid):
        try:
            if Path(f"/proc/{child}/comm").read_text().startswith("claude"):
                return child
        except OSError:
            continue
    return None


def test_worker_twelve_rounds_then_stop_word(world: World) -> None:
    script: list[str | Action] = [
        f"round {n}: next step [[reply: worker result {n}]]" for n in range(1, 13)
    ]
    world.coordinator.scripts["session-1"] = [*script, "[RELAY-STOP] thanks, that is all"]
    worker = start_worker(world, "--task", "begin the task [[reply: worker result 0]]")
    assert worker.wait(TURN_TIMEOUT * 4) == 0, worker_log(world)
    turns = [t.split("\n", 1)[1] for t in world.coordinator.turns_from("session-1")]
    assert turns == [f"worker result {n}" for n in range(13)]
    # Each reply was a genuine user message of one conversation: the last request holds
    # the task and every round, in order.
    last = wait_request_with(world.cc_api, "round 12: next step")
    texts = user_texts(last)
    assert texts[0].endswith("begin the task [[reply: worker result 0]]")
    assert [t for t in texts if t.startswith("round ")] == [
        f"round {n}: next step [[reply: worker result {n}]]" for n in range(1, 13)
    ]
    assert not world.input_file("session-1").exists()  # the stop word was consumed too
    assert "stopped after 13 rounds" in worker_log(world)
    assert not list((world.relay.data / "dispatch" / "session-1").glob(".relay-cc-*"))


def test_worker_first_message_is_the_first_reply_and_sigterm_stops_it(world: World) -> None:
    world.coordinator.scripts["session-1"] = ["second [[reply: worker second]]"]
    worker = start_worker(world)
    assert "waiting for the next reply" in wait_for(
        lambda: worker_log(world) if "waiting" in worker_log(world) else None, TURN_TIMEOUT
    )
    # No task: the session's first dispatched reply (here an operator's direct message)
    # is the first message.
    world.relay.reply("@session-1: first [[reply: worker first]]")
    wait_request_with(world.cc_api, "first [[reply: worker first]]", TURN_TIMEOUT)
    wait_request_with(world.cc_api, "second [[reply: worker second]]", TURN_TIMEOUT)
    wait_for(lambda: len(world.coordinator.turns_from("session-1")) == 2, TURN_TIMEOUT, "two turns")
    claude = claude_under(worker.pid)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0, worker_log(world)
    assert claude is None or not Path(f"/proc/{claude}").exists()


def test_worker_resumes_a_killed_claude_and_waits_without_a_ceiling(world: World) -> None:
    world.coordinator.scripts["session-1"] = [
        "slow one [[delay: 6]] [[reply: after the crash]]",
        "[RELAY-STOP]",
    ]
    worker = start_worker(world, "--task", "begin [[reply: first result]]")
    wait_request_with(world.cc_api, "slow one", TURN_TIMEOUT)
    first = claude_under(worker.pid)
    assert first is not None
    os.kill(first, signal.SIGKILL)  # mid-turn: the stand-in is still "thinking"
    wait_for(lambda: "resuming" in worker_log(world), TURN_TIMEOUT, "the worker to resume")
    assert worker.wait(TURN_TIMEOUT * 2) == 0, worker_log(world)
    turns = [t.split("\n", 1)[1] for t in world.coordinator.turns_from("session-1")]
    assert turns == ["first result", "after the crash"]
    # The same conversation: the retried request still holds the first exchange.
    retried = [b for b in main_requests(world.cc_api) if "slow one" in user_texts(b)[-1]]
    assert len(retried) >= 2
    assert user_texts(retried[-1])[0].endswith("begin [[reply: first result]]")


def test_worker_waits_for_a_late_reply_with_nothing_running(world: World) -> None:
    # The coordinator (an operator, really) takes its time; the worker waits in its own
    # loop, with no hook running, so no hook time-out (600 s by default) can end the wait.
    world.coordinator.scripts["session-1"] = [
        Delay(LONG_WAIT_S, Reply("late reply [[reply: answered late]]")),
        "[RELAY-STOP]",
    ]
    worker = start_worker(world, "--task", "begin [[reply: first result]]")
    wait_for(lambda: len(world.coordinator.turns_from("session-1")) == 1, TURN_TIMEOUT, "turn 1")
    claude = claude_under(worker.pid)
    assert claude is not None
    time.sleep(LONG_WAIT_S / 2)
    hooks = [p for p in descendants(worker.pid) if "hook" in cmdline(p)]
    assert hooks == [], "a hook is running while the worker waits"
    assert worker.wait(TURN_TIMEOUT + LONG_WAIT_S) == 0, worker_log(world)
    wait_request_with(world.cc_api, "late reply")
    assert worker_log(world).count("started claude") == 1  # the same claude throughout


# --- more interactive cases ---------------------------------------------------------------


def turn_count_is(world: World, session: str, count: int) -> bool:
    return len(world.coordinator.turns_from(session)) == count


def claude_cmd() -> list[str]:
    return [str(claude_binary())]


def test_two_bound_projects_side_by_side(world: World) -> None:
    """Plain `claude` in two projects bound with `relay cc install --project --session`,
    the config reaching the hooks through the binding (no RELAY_CONFIG around)."""
    env = {k: v for k, v in world.env.items() if k != "RELAY_CONFIG"}
    config = str(world.relay.config)
    projects = {}
    for session in ("session-1", "session-2"):
        project = world.tmp / f"proj-{session}"
        project.mkdir()
        done = relay_cli(
            env,
            "--config",
            config,
            "cc",
            "install",
            "--project",
            str(project),
            "--session",
            session,
            cwd=project,
        )
        assert done.returncode == 0, done.stderr
        assert json.loads((project / ".claude" / "relay.json").read_text()) == {
            "session": session,
            "config": config,
        }
        projects[session] = project
        world.coordinator.scripts[session] = [
            f"{session} step {n} [[reply: {session} did {n}]]" for n in (1, 2)
        ]
    for session, project in projects.items():
        world.tmux.start(session, claude_cmd(), project, env)
        world.wait_attached(session)
    for session in projects:
        world.tmux.type(session, f"hello from {session} [[reply: {session} did 0]]")
    for session in projects:
        wait_request_with(world.cc_api, f"{session} step 2", TURN_TIMEOUT)
        wait_for(partial(turn_count_is, world, session, 3), TURN_TIMEOUT, session)
    for session in projects:
        turns = [t.split("\n", 1)[1] for t in world.coordinator.turns_from(session)]
        assert turns == [f"{session} did {n}" for n in range(3)]
        assert f"{session} did 2" in world.tmux.screen(session)
    status = json.loads(relay_cli(world.env, "cc", "status", "--json").stdout)
    assert sorted((b["project"], b["session"]) for b in status["bindings"]) == sorted(
        (str(p), s) for s, p in projects.items()
    )
    assert all(len(status["sessions"][s]["attached"]) == 1 for s in projects)


def test_reply_waiting_at_start_and_continue(world: World) -> None:
    world.relay.reply("@session-1: already waiting [[reply: took the waiting one]]")
    wait_for(world.input_file("session-1").exists, TURN_TIMEOUT, "the waiting reply")
    world.run_session("s1", "session-1")
    wait_request_with(world.cc_api, "already waiting", TURN_TIMEOUT)
    wait_for(lambda: world.coordinator.turns_from("session-1"), TURN_TIMEOUT, "the turn")
    assert world.coordinator.turns_from("session-1")[0].endswith("took the waiting one")
    wait_for(lambda: not world.input_file("session-1").exists(), TURN_TIMEOUT, "consumed")
    world.tmux.type("s1", "/exit")
    world.tmux.wait_screen("s1", "RELAY-TEST-EXITED", TURN_TIMEOUT)

    # --continue: the same conversation, still connected.
    world.run_session("s2", "session-1", "--continue")
    world.relay.reply("@session-1: after continue [[reply: continued fine]]")
    body = wait_request_with(world.cc_api, "after continue", TURN_TIMEOUT)
    assert any("already waiting" in text for text in user_texts(body)[:-1])
    wait_for(lambda: len(world.coordinator.turns_from("session-1")) == 2, TURN_TIMEOUT, "turn two")


def test_a_reply_lost_with_its_claude_is_offered_again(world: World) -> None:
    """Claude Code took the reply (its hook claimed input.txt and handed it over) and was
    killed before the model answered: the next Claude Code on the session gets it."""
    world.run_session("s1", "session-1")
    world.relay.reply("@session-1: the important one [[delay: 30]] [[reply: never seen]]")
    wait_request_with(world.cc_api, "the important one", TURN_TIMEOUT)
    pid = claude_pid(world.tmux, "s1")
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    world.tmux.wait_screen("s1", "RELAY-TEST-EXITED", TURN_TIMEOUT)
    assert world.input_file("session-1").exists()  # not consumed: the model never answered

    world.cc_api.script()  # the second delivery is answered at once
    world.run_session("s2", "session-1")
    body = wait_request_with(world.cc_api, "offered again", TURN_TIMEOUT)
    assert "the important one" in user_texts(body)[-1]


def test_two_processes_on_one_session_warn_and_never_both_take_a_reply(world: World) -> None:
    other = world.tmp / "other"
    other.mkdir()
    world.run_session("a", "session-1")
    world.run_session("b", "session-1", cwd=other)
    world.wait_attached("session-1", 2)
    world.tmux.wait_screen("b", "is attached to session-1", TURN_TIMEOUT)
    world.relay.reply("@session-1: only once please [[reply: took it once]]")
    wait_for(lambda: world.coordinator.turns_from("session-1"), TURN_TIMEOUT, "the turn")
    wait_for(lambda: not world.input_file("session-1").exists(), TURN_TIMEOUT, "consumed")
    time.sleep(3)
    carried = [
        user_texts(b)[-1]
        for b in main_requests(world.cc_api)
        if "only once please" in user_texts(b)[-1]
    ]
    assert len(carried) == 1, carried
    assert len(world.coordinator.turns_from("session-1")) == 1


def test_project_hooks_are_kept_and_both_fire(world: World) -> None:
    project = world.project
    marks = world.tmp / "marks"
    marks.mkdir()
    (project / "notes.txt").write_text("some notes\n")
    own: dict[str, Any] = {
        "hooks": {
            "Stop": [{"hooks": [{"type": "command", "command": f"touch {marks}/stop"}]}],
            "PreToolUse": [
                {"matcher": "Read", "hooks": [{"type": "command", "command": f"touch {marks}/pre"}]}
            ],
        },
        "env": {"PROJECT_SETTING": "kept"},
    }
    settings = project / ".claude" / "settings.json"
    settings.parent.mkdir()
    settings.write_text(json.dumps(own, indent=2) + "\n")
    options = ["--scope", "project", "--project", str(project), "--session", "session-1"]
    done = world.cli("cc", "install", *options, "--settings")
    assert done.returncode == 0, done.stderr
    merged = json.loads(settings.read_text())
    assert merged["env"] == own["env"]
    assert merged["hooks"]["PreToolUse"] == own["hooks"]["PreToolUse"]
    assert merged["hooks"]["Stop"][0] == own["hooks"]["Stop"][0]
    assert len(merged["hooks"]["Stop"]) == 2

    world.tmux.start("s1", claude_cmd(), project, world.env)
    world.wait_attached("session-1")
    world.tmux.type("s1", f'[[tool: Read {{"file_path": "{project}/notes.txt"}}]]')
    wait_for(lambda: world.coordinator.turns_from("session-1"), TURN_TIMEOUT, "relay's Stop")
    wait_for(lambda: (marks / "stop").exists(), TURN_TIMEOUT, "the project's Stop hook")
    assert (marks / "pre").exists(), "the project's PreToolUse hook did not fire"

    undone = world.cli("cc", "uninstall", *options, "--settings")
    assert undone.returncode == 0, undone.stderr
    assert settings.read_text() == json.dumps(own, indent=2) + "\n"
    assert not (project / ".claude" / "relay.json").exists()


def test_unbound_project_does_nothing_and_a_refusal_is_one_line(world: World) -> None:
    assert world.cli("cc", "install").returncode == 0
    env = {k: v for k, v in world.env.items() if k != "RELAY_CONFIG"}
    world.tmux.start("plain", claude_cmd(), world.project, env)
    world.tmux.wait_screen("plain", PROMPT_MARK, TURN_TIMEOUT)
    world.tmux.type("plain", "not for relay [[reply: plain answer]]")
    world.tmux.wait_screen("plain", "plain answer", TURN_TIMEOUT)
    time.sleep(2)
    assert world.coordinator.seen == []
    assert world.relay.queue_names() == []

    # Bound to a session relay does not have: one clear line, and the session still works.
    bad = world.tmp / "bad"
    (bad / ".claude").mkdir(parents=True)
    (bad / ".claude" / "relay.json").write_text(
        json.dumps({"session": "session-9", "config": str(world.relay.config)})
    )
    world.tmux.start("bad", claude_cmd(), bad, env)
    world.tmux.wait_screen("bad", "unknown session 'session-9'", TURN_TIMEOUT)
    world.tmux.type("bad", "still works [[reply: still answering]]")
    world.tmux.wait_screen("bad", "still answering", TURN_TIMEOUT)
    assert world.coordinator.seen == []


def test_replies_arriving_mid_turn_wait_for_its_end_and_come_one_turn_each_in_order(
    world: World,
) -> None:
    world.run_session("s1", "session-1")
    world.tmux.type("s1", "a slow turn [[delay: 6]] [[reply: slow turn done]]")
    wait_request_with(world.cc_api, "a slow turn", TURN_TIMEOUT)
    for n in (1, 2, 3):  # all three land while the model is still "thinking"
        world.relay.reply(f"@session-1: queued message {n} [[reply: handled {n}]]")
        wait_for(partial(dispatched, world, f"queued message {n}"), TURN_TIMEOUT, f"message {n}")
    wait_for(lambda: len(world.coordinator.turns_from("session-1")) == 4, TURN_TIMEOUT * 2, "4")
    turns = [t.split("\n", 1)[1] for t in world.coordinator.turns_from("session-1")]
    assert turns == ["slow turn done", "handled 1", "handled 2", "handled 3"]
    # Each message was the newest user message of exactly one request, after the slow one.
    order = [
        next((n for n in (0, 1, 2, 3) if marker(n) in user_texts(b)[-1]), None)
        for b in main_requests(world.cc_api)
    ]
    assert [n for n in order if n is not None] == [0, 1, 2, 3]


def marker(n: int) -> str:
    return "a slow turn" if n == 0 else f"queued message {n}"


def dispatched(world: World, text: str) -> bool:
    return any(text in t for t in pending_texts(world))


def pending_texts(world: World) -> list[str]:
    """What relay has dispatched to session-1 and not yet seen consumed."""
    directory = world.relay.data / "dispatch" / "session-1"
    files = [directory / "input.txt", *sorted((directory / ".pending").glob("*.txt"))]
    texts = []
    for path in files:
        try:
            texts.append(path.read_text())
        except OSError:
            continue
    return texts
