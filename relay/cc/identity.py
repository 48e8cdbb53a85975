"""Which relay session a Claude Code process speaks for, and which process that is.

A Claude Code process does not know relay's session names. It is bound to one either
through the environment (`RELAY_SESSION`, set by `relay cc run` and `relay cc worker` and
inherited by every hook) or through a small binding file in the project,
`<project>/.claude/relay.json`, written by `relay cc install --project DIR --session ID`.
With neither, every hook does nothing, so a user-wide plugin leaves unrelated projects
alone.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from relay.config import config_path
from relay.errors import UsageError

BINDING_NAME = "relay.json"
SESSION_ENV = "RELAY_SESSION"
WORKER_ENV = "RELAY_CC_WORKER"  # set by `relay cc worker`: the hooks stand down
PID_ENV = "RELAY_CC_PID"  # set by `relay cc run`: the PID claude will have


@dataclass(frozen=True)
class Binding:
    session: str
    config: Path


def binding_file(project: Path) -> Path:
    return project / ".claude" / BINDING_NAME


def read_binding_file(path: Path) -> dict[str, str]:
    """The binding file's content; UsageError if it is there but unusable."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UsageError(f"cannot read the relay binding {path}: {exc}") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("session"), str):
        raise UsageError(f'{path}: expected {{"session": "<relay session id>"}}')
    config = raw.get("config")
    if config is not None and not isinstance(config, str):
        raise UsageError(f'{path}: "config" must be a path')
    return {k: v for k, v in raw.items() if isinstance(v, str)}


def project_dir(environ: Mapping[str, str], cwd: str | None) -> Path:
    return Path(environ.get("CLAUDE_PROJECT_DIR") or cwd or os.getcwd())


def resolve(
    environ: Mapping[str, str], cwd: str | None = None, claude: Process | None = None
) -> Binding | None:
    """The binding in force for a hook, or None when this Claude Code is not relay's.

    `relay cc run` also says which process it became (RELAY_CC_PID, as it execs claude):
    a `claude` that the session itself runs (from its Bash tool) inherits RELAY_SESSION
    but is not that process, and must not speak for the session.
    """
    session = environ.get(SESSION_ENV, "").strip()
    launched = environ.get(PID_ENV, "")
    if session and launched and (claude is None or str(claude.pid) != launched):
        session = ""
    if session:
        return Binding(session, config_path(None, environ))
    path = binding_file(project_dir(environ, cwd))
    if not path.exists():
        return None
    raw = read_binding_file(path)
    configured = environ.get("RELAY_CONFIG") or raw.get("config")
    return Binding(raw["session"], config_path(configured, {}))


# --- processes ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Process:
    """A process, told apart from a later one that reuses its PID by its start time."""

    pid: int
    start: int  # clock ticks since boot, field 22 of /proc/PID/stat

    def alive(self) -> bool:
        return start_time(self.pid) == self.start

    def to_json(self) -> dict[str, int]:
        return {"pid": self.pid, "start": self.start}

    @classmethod
    def from_json(cls, raw: object) -> Process | None:
        if isinstance(raw, dict):
            pid, start = raw.get("pid"), raw.get("start")
            if isinstance(pid, int) and isinstance(start, int):
                return cls(pid, start)
        return None


def _stat(pid: int) -> list[str] | None:
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    return data[data.rindex(")") + 2 :].split()


def start_time(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[19]) if fields is not None else None


def parent(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[1]) if fields is not None else None


def process(pid: int) -> Process | None:
    start = start_time(pid)
    return None if start is None else Process(pid, start)


_SHELLS = {"sh", "bash", "dash", "zsh", "env", "relay-hook", "timeout"}


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def claude_process(environ: Mapping[str, str], home: Path | None = None) -> Process | None:
    """The Claude Code process that ran this hook.

    Hooks run as `sh -c COMMAND` children of Claude Code. Claude Code keeps a registry of
    its live sessions in ~/.claude/sessions/PID.json; the nearest ancestor found there is
    it. Failing that (an older or newer layout), the nearest ancestor that is not a shell.
    """
    registry = (home or Path(environ.get("HOME", "~")).expanduser()) / ".claude" / "sessions"
    chain: list[int] = []
    pid: int | None = os.getppid()
    while pid is not None and pid > 1 and len(chain) < 12:
        chain.append(pid)
        pid = parent(pid)
    for candidate in chain:
        if (registry / f"{candidate}.json").exists():
            return process(candidate)
    for candidate in chain:
        if _comm(candidate) not in _SHELLS:
            return process(candidate)
    return None
