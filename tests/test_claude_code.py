"""End to end with the real Claude Code: relay run + relay cc install + relay cc run / worker.

Every run is offline: Claude Code talks to one stand-in Messages API (`cc_api`), relay to
another playing chat-Claude (`coordinator`). Interactive sessions run under a tmux server
of the test's own.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.claudecode import (
    RELAY,
    Coordinator,
    Started,
    Tmux,
    cc_env,
    cc_responder,
    descendants,
    main_requests,
    relay_cli,
    seed_home,
    user_texts,
    wait_request_with,
)
from tests.relayproc import RelayProcess, wait_for, write_config
from tests.standin.api import Delay, Reply, StandinAPI

TURN_TIMEOUT = 45.0
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
            tmux.kill_server()
            started.stop_all()
            relay.stop()


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
    world.coordinator.scripts["session-1"] = [
        f"round {n}: next step [[reply: worker result {n}]]" for n in range(1, 13)
    ] + ["[RELAY-STOP] thanks, that is all"]
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
