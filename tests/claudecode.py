"""Drive the real Claude Code (pinned, installed by scripts/setup) offline, for tests.

Claude Code talks to a loopback stand-in Messages API (it streams every request, so the
stand-in answers with SSE). Each test gets a throw-away HOME, seeded so the interactive
UI starts without onboarding, trust or API-key dialogs, and its own tmux server (a
private socket) for interactive sessions. Everything started here is stopped by the
fixtures, by PID or by that socket, also when a test fails.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.relayproc import wait_for
from tests.standin.api import Action, Reply, StandinAPI

ROOT = Path(__file__).resolve().parents[1]
CLAUDE_CODE_VERSION = "2.1.332"  # the same pin as scripts/setup
FAKE_KEY = "sk-ant-api03-relaytest-0123456789abcdefghij"
RELAY = ROOT / ".venv" / "bin" / "relay"


def claude_binary() -> Path:
    """The pinned claude; a clear failure (never a skip) when setup did not install it."""
    chosen = os.environ.get("RELAY_TEST_CLAUDE")
    path = Path(chosen) if chosen else ROOT / ".claude-code" / "node_modules" / ".bin" / "claude"
    if not os.access(path, os.X_OK):
        raise AssertionError(
            f"Claude Code is not installed at {path}: run `bash scripts/setup` "
            "(it installs the pinned @anthropic-ai/claude-code into .claude-code/)"
        )
    return path


def seed_home(home: Path, trusted: Path) -> None:
    """What a user who has used Claude Code once has: onboarding done, `trusted` (and every
    directory under it) trusted, the API key approved."""
    home.mkdir(parents=True, exist_ok=True)
    state = {
        "hasCompletedOnboarding": True,
        "lastOnboardingVersion": CLAUDE_CODE_VERSION,
        "projects": {str(trusted): {"hasTrustDialogAccepted": True}},
        "customApiKeyResponses": {"approved": [FAKE_KEY[-20:]], "rejected": []},
    }
    (home / ".claude.json").write_text(json.dumps(state, indent=2))


def cc_env(home: Path, api_url: str, **extra: str) -> dict[str, str]:
    """The environment for claude and for relay's commands: offline, with `home` as HOME."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RELAY_", "CLAUDE", "ANTHROPIC_", "XDG_"))
        and k not in ("NOTIFY_SOCKET", "INVOCATION_ID", "JOURNAL_STREAM", "TMUX", "TMUX_PANE")
    }
    path = f"{claude_binary().parent}:{RELAY.parent}:{env.get('PATH', '/usr/bin:/bin')}"
    env.update(
        {
            "HOME": str(home),
            "PATH": path,
            "ANTHROPIC_BASE_URL": api_url,
            "ANTHROPIC_API_KEY": FAKE_KEY,
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_AUTOUPDATER": "1",
            "DISABLE_TELEMETRY": "1",
            "DISABLE_ERROR_REPORTING": "1",
            "TERM": "xterm-256color",
        }
    )
    env.update(extra)
    return env


# --- what the stand-in sees of Claude Code -------------------------------------------------


def is_side_request(body: dict[str, Any]) -> bool:
    """Title and other side requests ask for structured output and carry no tools."""
    fmt = (body.get("output_config") or {}).get("format")
    return bool(fmt) or not body.get("tools")


def user_texts(body: dict[str, Any]) -> list[str]:
    """The text of each user message of a request, oldest first."""
    texts = []
    for message in body.get("messages", []):
        if message.get("role") != "user":
            continue
        content = message["content"]
        if isinstance(content, str):
            texts.append(content)
        else:
            texts.append("\n".join(b.get("text", "") for b in content if b.get("type") == "text"))
    return texts


def cc_responder(body: dict[str, Any]) -> Action | None:
    """Claude Code's side requests get a title; its turns follow the `[[...]]` directives."""
    if is_side_request(body):
        return Reply('{"title": "relay test"}')
    return None


def main_requests(api: StandinAPI) -> list[dict[str, Any]]:
    return [
        r.body
        for r in api.message_calls()
        if isinstance(r.body, dict) and not is_side_request(r.body)
    ]


def wait_request_with(api: StandinAPI, text: str, timeout: float = 30.0) -> dict[str, Any]:
    """The first main request whose newest user message contains `text`."""

    def find() -> dict[str, Any] | None:
        for body in main_requests(api):
            texts = user_texts(body)
            if texts and text in texts[-1]:
                return body
        return None

    found: dict[str, Any] = wait_for(find, timeout, f"a Claude Code request carrying {text!r}")
    return found


# --- a coordinator for relay's own stand-in -------------------------------------------------

END_OF_SCRIPT = "that is all [[error: 403 permission_error end of the test script]]"


@dataclass
class Coordinator:
    """chat-Claude for the tests: answers each session's turns from a per-session script.

    A script entry is the reply text; when a session's script is used up, the reply makes
    that session's next API call fail (403, which blocks relay: a 400 would set that one
    envelope aside and tell the session, which would answer), so nothing more is dispatched,
    and the exchange ends without a [NEEDS-JC] pausing everyone.
    """

    scripts: dict[str, list[str | Action]] = field(default_factory=dict)
    seen: list[tuple[str, str]] = field(default_factory=list)  # (session, turn text)

    def __call__(self, body: dict[str, Any]) -> Action | None:
        text = user_texts(body)[-1]
        first = text.partition("\n")[0]
        session = first.removeprefix("[from ").split("]", 1)[0]
        self.seen.append((session, text))
        script = self.scripts.get(session, [])
        entry = script.pop(0) if script else END_OF_SCRIPT
        return Reply(entry) if isinstance(entry, str) else entry

    def turns_from(self, session: str) -> list[str]:
        return [text for s, text in self.seen if s == session]


# --- interactive sessions under tmux --------------------------------------------------------


PROMPT = "\u276f"  # Claude Code's prompt mark, at the start of its input box


class Tmux:
    """A tmux server of the test's own (a private socket), killed at the end."""

    def __init__(self, socket: Path) -> None:
        self.socket = socket

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["tmux", "-S", str(self.socket), *args],
            capture_output=True,
            text=True,
            check=check,
            timeout=30,
        )

    def start(self, name: str, command: list[str], cwd: Path, env: dict[str, str]) -> None:
        # `env -i` so the session sees exactly `env`, whatever the tmux server inherited;
        # a final `sleep` keeps the pane (and what claude printed) after claude exits.
        line = " ".join(
            ["env", "-i", *(shlex.quote(f"{k}={v}") for k, v in env.items())]
            + [shlex.quote(c) for c in command]
        )
        script = f"{line}; echo RELAY-TEST-EXITED $?; sleep 3600"
        self._run("new-session", "-d", "-s", name, "-x", "200", "-y", "50", "-c", str(cwd))
        self._run("send-keys", "-t", name, script, "Enter")

    def type(self, name: str, text: str) -> None:
        """Type `text` and press Enter, as a person would (Enter as its own keystroke).

        A TUI still drawing its start-up screen on a loaded machine can drop that Enter
        (seen: the text stayed in the input box): as a person would, press it again while
        the text is still there."""
        self._run("send-keys", "-t", name, "-l", text)
        time.sleep(0.5)
        for _ in range(3):
            self._run("send-keys", "-t", name, "Enter")
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline:
                if not self._in_input_box(name, text):
                    return
                time.sleep(0.1)

    def _in_input_box(self, name: str, text: str) -> bool:
        """Whether `text` is still in Claude Code's input box: the last prompt line (U+276F);
        once sent, it moves up into the transcript and the box below it is empty."""
        screen = self.screen(name)
        prompts = [line for line in screen.splitlines() if line.lstrip().startswith(PROMPT)]
        return bool(prompts) and text[:40] in prompts[-1]

    def screen(self, name: str) -> str:
        return self._run("capture-pane", "-p", "-J", "-S", "-200", "-t", name, check=False).stdout

    def wait_screen(self, name: str, text: str, timeout: float = 30.0) -> str:
        found: str = wait_for(
            lambda: self.screen(name) if text in self.screen(name) else None,
            timeout,
            f"{text!r} on the screen of {name}",
        )
        return found

    def pane_pid(self, name: str) -> int:
        return int(self._run("display-message", "-p", "-t", name, "#{pane_pid}").stdout.strip())

    def kill_server(self) -> None:
        self._run("kill-server", check=False)


def descendants(pid: int) -> list[int]:
    """Every process below `pid`."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def claude_pid(tmux: Tmux, name: str) -> int | None:
    """The claude process running in pane `name`, if any."""
    for pid in descendants(tmux.pane_pid(name)):
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        if comm.startswith("claude"):
            return pid
    return None


def relay_cli(
    env: dict[str, str], *args: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


@dataclass
class Started:
    """Processes a test started, stopped by PID at teardown."""

    procs: list[subprocess.Popen[Any]] = field(default_factory=list)

    def add(self, proc: subprocess.Popen[Any]) -> subprocess.Popen[Any]:
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)


def tree_snapshot(*roots: Path) -> dict[str, tuple[str, int, bytes | str | None]]:
    """Every file (its mode and bytes), symlink (its target) and directory (its mode) under
    `roots`; Claude Code's transcripts and session registry are left out (they are its
    own, and change as it runs)."""
    shot: dict[str, tuple[str, int, bytes | str | None]] = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if d not in ("projects", "sessions", "session-env")]
            shot[dirpath] = ("dir", os.lstat(dirpath).st_mode, None)
            for name in filenames + [
                d for d in dirnames if os.path.islink(os.path.join(dirpath, d))
            ]:
                path = os.path.join(dirpath, name)
                st = os.lstat(path)
                if os.path.islink(path):
                    shot[path] = ("link", st.st_mode, os.readlink(path))
                else:
                    shot[path] = ("file", st.st_mode, Path(path).read_bytes())
    return shot
