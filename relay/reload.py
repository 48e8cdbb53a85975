"""`relay reload`: re-read the configuration without a restart (README: Reloading the
configuration).

Two halves. The service's (relay/service.py calls `decide` on SIGHUP): read the same file
again, and refuse it, keeping the running configuration, when it is invalid or changes what
cannot change while relay runs. The command's (`request`): check the file first, so a bad
one is never sent; then signal the running service and wait until status.json says how the
reload went (`last_reload`), so the exit code, and `systemctl reload`'s, are the outcome.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relay import status as status_file
from relay import systemd
from relay.config import Config
from relay.errors import ConfigError, RelayError
from relay.layout import Layout
from relay.records import ReloadResult

CONVERSATION_UNIT = "relay-conversation.service"
WAIT_S = 30.0
POLL_S = 0.05
# A relay that is ready names itself in status.json within one loop turn; one that does not
# by then writes another data directory (or none: a full disk).
NAMED_WITHIN_S = 5.0

# What a running relay cannot take on: the data directory holds its lock, history and
# spool; the answer subscriber (relay-answers.service, a process of its own under systemd)
# and the answer links in question pushes are built from the ntfy server, both topics and
# the subscriber's limits. Each needs a restart, and a config changing any is refused
# whole, so the service never runs half on the old settings and half on the new.
RESTART_ONLY: Mapping[str, str] = {
    "data_dir": "relay's files live there",
    "ntfy.server": "the answer subscriber and the answer links use it",
    "ntfy.topic": "the answer subscriber pushes there too",
    "ntfy.reply_topic": "the answer subscriber streams it",
    "ntfy.max_answer_bytes": "the answer subscriber applies it",
    "ntfy.max_answers_per_minute": "the answer subscriber applies it",
    "ntfy.read_timeout_s": "the answer subscriber applies it",
}
RESTART_HINT = "restart relay for it (systemctl restart relay.target, or start relay run again)"


# ---- the service's half: what changed, and whether it may -------------------------------


def _flat(config: Config) -> dict[str, Any]:
    """Every setting by its key path (`ntfy.topic`); `source` is where, not what."""
    flat: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name == "source":
            continue
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            for inner in dataclasses.fields(value):
                flat[f"{f.name}.{inner.name}"] = getattr(value, inner.name)
        else:
            flat[f.name] = value
    return flat


def changes(old: Config, new: Config) -> list[str]:
    """The settings `new` changes, by key path; sessions say which were added and removed."""
    before, after = _flat(old), _flat(new)
    changed = []
    for key, value in after.items():
        if before.get(key) == value:
            continue
        if key == "sessions":
            added = [s for s in new.sessions if s not in old.sessions]
            removed = [s for s in old.sessions if s not in new.sessions]
            detail = ", ".join([*(f"+{s}" for s in added), *(f"-{s}" for s in removed)])
            changed.append(f"sessions ({detail or 'reordered'})")
        else:
            changed.append(key)
    return changed


def refusals(old: Config, new: Config) -> list[str]:
    """Why `new` cannot be applied while relay runs (empty: it can)."""
    before, after = _flat(old), _flat(new)
    return [
        f"{key} cannot change while relay runs ({before[key]} → {after[key]}; {why}): "
        + RESTART_HINT
        for key, why in RESTART_ONLY.items()
        if before[key] != after[key]
    ]


@dataclass(frozen=True)
class Decision:
    """What to do with a reload request: apply `config`, or (None) keep the running one."""

    config: Config | None
    changed: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()


def decide(old: Config, load: Callable[[Path], Config]) -> Decision:
    """Read `old`'s file again with `load` and judge the result against `old`."""
    if old.source is None:
        return Decision(None, errors=("relay was not started from a configuration file",))
    try:
        new = load(old.source)
    except ConfigError as exc:
        return Decision(None, errors=tuple(f"{exc.source}: {p}" for p in exc.problems))
    refused = refusals(old, new)
    if refused:
        return Decision(None, errors=tuple(refused))
    return Decision(new, changed=tuple(changes(old, new)))


def summary(changed: tuple[str, ...] | list[str]) -> str:
    return ", ".join(changed) if changed else "nothing changed"


# ---- the command's half: ask the running service, and wait for its answer --------------


def last_reload(layout: Layout) -> tuple[int, ReloadResult | None]:
    """(the pid status.json names, its last_reload); (0, None) when there is none yet. A
    status.json the caller may not read is a PermissionError (the CLI says who may)."""
    try:
        current = status_file.read(layout.status)
    except PermissionError:
        raise
    except (OSError, ValueError, RecursionError):
        return 0, None  # missing, or being replaced: atomic, so only missing in practice
    written_by = current.get("pid")
    return (written_by if isinstance(written_by, int) else 0), ReloadResult.from_json(
        current.get("last_reload")
    )


def signal_and_wait(
    layout: Layout,
    pid: int,
    *,
    timeout_s: float = WAIT_S,
    kill: Callable[[int, int], None] = os.kill,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> ReloadResult:
    """SIGHUP `pid`, then wait until status.json shows a reload by that process newer than
    the one it showed before. RelayError when it cannot be signalled or does not answer."""
    writer, before = last_reload(layout)
    # A status.json from an earlier process (a service that has just started and not yet
    # written its own) counts as no reload: this process's first one is seq 1.
    baseline = before.seq if before is not None and writer == pid else 0
    try:
        kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise RelayError(f"no process {pid}: is relay running?") from None
    except PermissionError:
        raise RelayError(
            f"not allowed to signal process {pid}: run relay reload as root or as the "
            "user relay runs as"
        ) from None
    started = clock()
    deadline = started + timeout_s
    while True:
        writer, result = last_reload(layout)
        if writer == pid and result is not None and result.seq > baseline:
            return result
        now = clock()
        if writer != pid and now >= started + min(NAMED_WITHIN_S, timeout_s):
            raise RelayError(
                f"relay (pid {pid}) does not write {layout.status}, so data_dir in the "
                f"configuration ({layout.root}) is not the directory it runs on; data_dir "
                f"cannot change while relay runs: {RESTART_HINT}"
            )
        if now >= deadline:
            raise RelayError(
                f"relay (pid {pid}) did not report the reload in {layout.status} within "
                f"{timeout_s:g}s: is it stuck? See its log (journalctl -u {CONVERSATION_UNIT})"
            )
        sleep(POLL_S)


def unit_main_pid(run: Callable[[list[str]], subprocess.CompletedProcess[str]]) -> int:
    """relay-conversation.service's main pid while it is active under systemd, else 0."""
    if not systemd.running_under_systemd() or shutil.which("systemctl") is None:
        return 0
    done = run(["systemctl", "show", "-p", "ActiveState,MainPID", CONVERSATION_UNIT])
    shown = dict(line.partition("=")[::2] for line in done.stdout.splitlines())
    if done.returncode != 0 or shown.get("ActiveState") not in ("active", "reloading"):
        return 0
    try:
        return int(shown.get("MainPID", "0"))
    except ValueError:
        return 0


def is_relay_process(pid: int, proc: Path = Path("/proc")) -> bool:
    """A live `relay run` or `relay serve`: a pid from an old status.json may since have
    been given to anything else, which must not get a SIGHUP."""
    try:
        argv = (proc / str(pid) / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    names = [os.path.basename(a.decode(errors="replace")) for a in argv if a]
    return "relay" in names and any(a in ("run", "serve") for a in names)


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def find_target(layout: Layout, run: Callable[[list[str]], Any] = _run) -> tuple[str, int]:
    """How to reach the running relay: ("systemd", main pid) when relay-conversation.service
    runs it, ("pid", pid) for a foreground `relay run` (the pid in status.json)."""
    writer, _ = last_reload(layout)
    main = unit_main_pid(run)
    if writer and writer != main and is_relay_process(writer):
        return "pid", writer
    if main:
        # Through systemd, so that it tracks the reload (ExecReload= signals and waits).
        return "systemd", main
    raise RelayError(
        f"relay is not running: no live relay process wrote {layout.status} (data_dir in "
        f"the configuration), and {CONVERSATION_UNIT} is not active. The configuration is "
        "valid; relay reads it when it starts (if relay runs on another data directory: "
        f"data_dir cannot change while it runs, {RESTART_HINT})"
    )


def through_systemd(
    layout: Layout, pid: int, run: Callable[[list[str]], Any] = _run
) -> ReloadResult:
    """`systemctl reload`, so that systemd tracks it: ExecReload= runs `relay reload --pid
    $MAINPID`, whose exit code becomes systemctl's. The outcome is read from status.json,
    which has the reasons; RelayError when there is none to read there."""
    _, before = last_reload(layout)
    done = run(["systemctl", "reload", CONVERSATION_UNIT])
    writer, shown = last_reload(layout)
    # Only an outcome newer than the one before counts: a systemctl that failed on its own
    # (access denied, a time-out) must not pass off an earlier refusal as this one's.
    fresh = shown is not None and (before is None or shown.seq > before.seq)
    if writer == pid and shown is not None and fresh and (done.returncode == 0 or not shown.ok):
        return shown
    said = " ".join(done.stderr.split()) if isinstance(done.stderr, str) else ""
    if done.returncode == 0:
        return ReloadResult(0, "", True)  # reloaded, though status.json cannot tell what
    if writer != pid:
        raise RelayError(
            f"systemctl reload {CONVERSATION_UNIT} failed ({said or done.returncode}): relay "
            f"(pid {pid}) does not write {layout.status}, so data_dir in the configuration is "
            f"not the directory it runs on; data_dir cannot change while relay runs: "
            f"{RESTART_HINT}"
        )
    raise RelayError(
        f"systemctl reload {CONVERSATION_UNIT} failed ({said or done.returncode}); why: "
        f"journalctl -u {CONVERSATION_UNIT}"
    )
