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
    claude_pid,
    descendants,
    main_requests,
    relay_cli,
    seed_home,
    user_texts,
    wait_request_with,
)
from tests.relayproc import RelayProcess, wait_for, write_config
from tests.standin.api import StandinAPI

TURN_TIMEOUT = 45.0


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
