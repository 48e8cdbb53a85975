"""The real Claude Code against the packaged relay, under systemd.

relay's .deb is installed by apt in a booted container (a real systemd 252, see nspawn.py);
a user in relay-clients, with a HOME of their own, runs `relay cc install` (the packaged
/usr/bin/relay, so the plugin comes from /usr/share/relay/claude-code) and then
`relay cc run --session session-1` under a tmux server of their own inside the container.
One typed prompt makes one full round trip: the turn's Stop hook submits it, relay's units
accept it and ask chat-Claude, the reply lands in dispatch/session-1/input.txt, the
FileChanged hook wakes the idle session with it, and the turn that took it in deletes it.

Both Messages APIs are loopback stand-ins started here (the container shares the host's
network namespace): `cc_api` for Claude Code's model, `relay_api` for chat-Claude, played by
a `Coordinator` whose script ends the exchange (tests/claudecode.py). The pinned claude
binary is the one scripts/setup installed; its directory is bind-mounted read-only into the
container, since the overlay of / does not show a checkout under /tmp or on another mount.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.claudecode import (
    CLAUDE_CODE_VERSION,
    Coordinator,
    Tmux,
    cc_env,
    cc_responder,
    claude_binary,
    main_requests,
    seed_home,
    user_texts,
    wait_request_with,
)
from tests.relayproc import wait_for
from tests.standin.api import StandinAPI

from .nspawn import CommandError, Container
from .relaydeb import DATA, config_yaml, configure, install

pytestmark = pytest.mark.system

USER = "alice"
HOME = f"/home/{USER}"
PROJECT = f"{HOME}/project"
TMUX_SOCKET = f"{HOME}/.relay-test-tmux.sock"
CLAUDE_DIR = "/opt/relay-test-claude"  # the host's pinned binary, bind-mounted read-only
PLUGIN = "/usr/share/relay/claude-code"
SESSION = "session-1"
DISPATCH = f"{DATA}/dispatch/{SESSION}"
INPUT = f"{DISPATCH}/input.txt"
PANE = "cc"
TURN_TIMEOUT = 60.0


class ContainerTmux(Tmux):
    """tests.claudecode.Tmux, its server run by `user` inside the container."""

    def __init__(self, container: Container, user: str, socket: str) -> None:
        super().__init__(Path(socket))
        self.container = container
        self.user = user

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = ["runuser", "-u", self.user, "--", "tmux", "-S", str(self.socket), *args]
        return self.container.run(command, check=check, timeout=30)

    def kill_server(self) -> None:
        if self.container.booted:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                self._run("kill-server", check=False)


@dataclass
class World:
    c: Container
    cc_api: StandinAPI
    relay_api: StandinAPI
    coordinator: Coordinator
    tmux: ContainerTmux
    env: dict[str, str]

    def as_user(self, *cmd: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        """`cmd` as the user, with exactly `env` (what a login of theirs would have)."""
        argv = ["runuser", "-u", USER, "--", "env", "-i", *env_args(self.env), *cmd]
        return self.c.run(argv, input=input, check=False, timeout=120)

    def attached(self) -> list[str]:
        done = self.c.run(["sh", "-c", f"ls -A {shlex.quote(DISPATCH)}"], check=False)
        return [n for n in done.stdout.split() if n.startswith(".relay-cc-")]

    def events(self, cursor: str, event: str) -> list[dict[str, Any]]:
        return self.c.journal_since(cursor, f"RELAY_EVENT={event}", f"RELAY_SESSION={SESSION}")


def settled(c: Container) -> bool:
    """`relay status` (as root) says nothing waits for the session."""
    try:
        status = json.loads(c.run(["relay", "status", "--json"]).stdout)
    except (CommandError, ValueError):
        return False
    return bool(status["awaiting_pickup"] == [] and status["pending"].get(SESSION) == 0)


def env_args(env: Mapping[str, str]) -> list[str]:
    return [f"{k}={v}" for k, v in env.items()]


def user_env(cc_api_url: str) -> dict[str, str]:
    """What the user's shell has: their HOME and PATH, and cc_env's offline settings for
    Claude Code (stand-in URL, fake key, no nonessential traffic, no updater)."""
    offline = {
        k: v
        for k, v in cc_env(Path(HOME), cc_api_url).items()
        if k.startswith(("ANTHROPIC_", "CLAUDE_", "DISABLE_"))
    }
    return {
        "HOME": HOME,
        "USER": USER,
        "LOGNAME": USER,
        "SHELL": "/bin/sh",
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "TERM": "xterm-256color",
        **offline,
    }


@pytest.fixture(scope="module")
def world(relay_deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    binary = claude_binary().resolve()  # fails (never skips) when setup did not install it
    coordinator = Coordinator()
    with (
        StandinAPI(responder=cc_responder) as cc_api,
        StandinAPI(responder=coordinator) as relay_api,
        Container(bind_ro=[(binary.parent, CLAUDE_DIR)]) as c,
    ):
        tmux = ContainerTmux(c, USER, TMUX_SOCKET)
        try:
            c.boot()
            install(c, relay_deb)
            configure(c, config_yaml(relay_api.url, None))
            # Claude Code installed the usual way: a `claude` on every user's PATH.
            c.run(["ln", "-sf", f"{CLAUDE_DIR}/{binary.name}", "/usr/local/bin/claude"])
            c.run(["useradd", "-m", "-G", "relay-clients", USER])
            seeded = tmp_path_factory.mktemp("home")
            seed_home(seeded, Path(HOME))
            c.copy_in(seeded / ".claude.json", f"{HOME}/.claude.json", mode=0o600, owner=USER)
            c.run(["runuser", "-u", USER, "--", "mkdir", PROJECT])
            yield World(c, cc_api, relay_api, coordinator, tmux, user_env(cc_api.url))
        finally:
            tmux.kill_server()  # the container's poweroff would end it too, but by its socket


@contextlib.contextmanager
def explained(w: World) -> Iterator[None]:
    """On failure, print what the user's screen and relay's journal showed."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):
            print("--- screen ---\n" + w.tmux.screen(PANE))
        with contextlib.suppress(Exception):
            print("--- relay journal ---\n" + w.c.journal("-u", "relay-*", "-o", "cat", "-n", "80"))
        with contextlib.suppress(Exception):
            print("--- chat-Claude saw ---\n" + json.dumps(w.coordinator.seen, indent=1))
        raise


def test_user_in_relay_clients_round_trips_through_the_packaged_relay(world: World) -> None:
    w, c = world, world.c
    with explained(w):
        # The package ships the plugin, a directory marketplace, with an executable hook.
        assert c.exists(f"{PLUGIN}/.claude-plugin/marketplace.json")
        assert c.exists(f"{PLUGIN}/relay/hooks/hooks.json")
        assert (
            c.run(["test", "-x", f"{PLUGIN}/relay/hooks/relay-hook"], check=False).returncode == 0
        )
        mode = c.run(["stat", "-c", "%a %U", f"{PLUGIN}/relay/hooks/relay-hook"]).stdout.split()
        assert mode == ["755", "root"]

        # The user runs the pinned Claude Code, from a read-only directory of root's.
        version = w.as_user("claude", "--version")
        assert version.returncode == 0, version
        assert CLAUDE_CODE_VERSION in version.stdout

        # `relay cc install` with the packaged relay takes the packaged plugin.
        done = w.as_user("/usr/bin/relay", "cc", "install")
        assert done.returncode == 0, done
        assert f"installed plugin relay@relay (user scope) from {PLUGIN}" in done.stdout, done
        report = json.loads(w.as_user("/usr/bin/relay", "cc", "status", "--json").stdout)
        assert report["plugin"] == {"source": PLUGIN, "installed": ["user"]}

        cursor = c.cursor()
        w.coordinator.scripts[SESSION] = ["instruction 1: do step 1 [[reply: result 1]]"]
        w.tmux.start(
            PANE, ["/usr/bin/relay", "cc", "run", "--session", SESSION], Path(PROJECT), w.env
        )
        wait_for(lambda: len(w.attached()) == 1, TURN_TIMEOUT, f"Claude Code attached to {SESSION}")
        w.tmux.type(PANE, "start the work [[reply: result 0]]")

        # The turn reaches relay: the Stop hook's envelope is accepted and chat-Claude asked.
        wait_for(lambda: w.events(cursor, "accepted"), TURN_TIMEOUT, "the first envelope accepted")
        wait_for(lambda: w.coordinator.turns_from(SESSION), TURN_TIMEOUT, "chat-Claude asked once")
        first = w.coordinator.turns_from(SESSION)[0]
        assert first.startswith(f"[from {SESSION}]") and first.endswith("result 0"), first
        # Its reply is dispatched to input.txt, wakes the idle session and is the next request.
        wait_for(lambda: w.events(cursor, "dispatched"), TURN_TIMEOUT, "the reply dispatched")
        woken = wait_request_with(w.cc_api, "instruction 1: do step 1", TURN_TIMEOUT)
        carried = user_texts(woken)[-1]
        frame = f"Message from your coordinator (chat-Claude, through relay) for session {SESSION}"
        assert frame in carried and "instruction 1: do step 1" in carried, carried

        # That turn's end sends "result 1" on and deletes input.txt: only then can relay put
        # chat-Claude's next reply (the end of its script: Claude Code's call for it fails, so
        # nothing more is submitted) in its place, and that one is consumed as well.
        wait_for(
            lambda: len(w.coordinator.turns_from(SESSION)) == 2, TURN_TIMEOUT, "the second turn"
        )
        assert w.coordinator.turns_from(SESSION)[1].endswith("result 1")
        wait_request_with(w.cc_api, "that is all", TURN_TIMEOUT)
        c.wait_for(lambda: not c.exists(INPUT), timeout=TURN_TIMEOUT, what="input.txt consumed")
        assert len(w.events(cursor, "accepted")) == 2
        assert len(w.events(cursor, "dispatched")) == 2
        wait_for(lambda: settled(c), TURN_TIMEOUT, "status: nothing pending or awaiting pickup")
        # Each reply was carried by exactly one request, and the exchange is over.
        texts = [user_texts(body)[-1] for body in main_requests(w.cc_api)]
        assert sum("instruction 1: do step 1" in t for t in texts) == 1
        assert len(w.coordinator.turns_from(SESSION)) == 2
        assert "result 1" in w.tmux.screen(PANE)

        # /exit ends claude and its SessionEnd hook detaches it from the session.
        w.tmux.type(PANE, "/exit")
        w.tmux.wait_screen(PANE, "RELAY-TEST-EXITED", TURN_TIMEOUT)
        wait_for(lambda: not w.attached(), TURN_TIMEOUT, "Claude Code detached")
        assert not c.exists(INPUT)


def test_a_user_outside_relay_clients_gets_one_clear_line(world: World) -> None:
    w, c = world, world.c
    c.run(["useradd", "-m", "bob"])
    env = {**w.env, "HOME": "/home/bob", "USER": "bob", "LOGNAME": "bob"}

    def as_bob(*cmd: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        argv = ["runuser", "-u", "bob", "--", "env", "-i", *env_args(env), *cmd]
        return c.run(argv, input=input, check=False, timeout=120)

    refused = as_bob("/usr/bin/relay", "cc", "run", "--session", SESSION)
    assert refused.returncode == 1, refused
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "relay-clients" in lines[0], refused.stderr
    # The Stop hook, as Claude Code would run it for bob: one line for him, exit 0.
    stop = {"session_id": "cc-bob", "prompt_id": "p1", "last_assistant_message": "hi"}
    hook = as_bob(
        "env",
        f"RELAY_SESSION={SESSION}",
        f"{PLUGIN}/relay/hooks/relay-hook",
        "stop",
        input=json.dumps(stop),
    )
    assert hook.returncode == 0, hook
    message = json.loads(hook.stdout)["systemMessage"]
    assert (
        message.startswith("relay: this turn was not sent to session-1")
        and "relay-clients" in message
    )
