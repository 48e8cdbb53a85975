"""operator/: where members of relay-operators leave their replies, one file each.

Operators may not write state/ (it holds the history, the inbox and relay's locks; a name
they could create there is a name relay might later open). So `relay reply`, run by an
operator, writes its text to operator/NAME, and the jc handler moves each file, oldest
first, to state/jc_input.txt, where it is taken in exactly like root's. The move is a
rename that never replaces: an unconsumed jc_input.txt (root's, or the previous reply)
waits its turn, and a crash leaves each reply in exactly one place.

operator/ is 3770 relay:relay-operators. Operators can create files there and remove only
their own (sticky); relay owns it and may move any file. Whatever else an operator puts
there (a link, a FIFO, a directory, a file relay may not read, one hard-linked elsewhere)
is not forwarded: it is renamed to `.refused-NONCE-NAME` beside it, for its owner to
remove, and the journal says why (RELAY_EVENT=rejected).
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from relay import fsutil
from relay.fsutil import file_kind, rename_noreplace
from relay.intake import IntakeResult
from relay.layout import OPERATOR_FILE_MODE, PRIVATE_FILE_MODE, Layout
from relay.log import event

log = logging.getLogger(__name__)

REFUSED_PREFIX = ".refused-"
MAX_RUN_S = 60.0  # one handler run; the path unit's re-check starts the next at once


def reply_name(now_ns: int, pid: int, nonce: str) -> str:
    """A reply's file name in operator/: sorts by time, never shared by two writers."""
    return f"{now_ns:020d}-{pid}-{nonce}.txt"


def write_jc_input(layout: Layout, body: bytes, wait_s: float) -> bool:
    """Write state/jc_input.txt (the operator-input contract) as relay or root may, never
    replacing one not yet consumed: False if one is still there after `wait_s`."""
    tmp = layout.state / f".jc_input.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    fsutil.atomic_write(tmp, body, PRIVATE_FILE_MODE)
    try:
        # Root's reply is relay's before it appears: 0600, and no one else reads it.
        if os.geteuid() == 0:
            st = os.stat(layout.state)
            os.chown(tmp, st.st_uid, st.st_gid)
        # A rename that never replaces: an earlier reply not yet consumed is not
        # overwritten. Not link() and unlink(): between the two the reply would have two
        # links, and intake refuses a file with more than one.
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fsutil.rename_noreplace(tmp, layout.jc_input)
                break
            except FileExistsError:
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.1)
        fsutil.fsync_dir(layout.state)
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_reply(layout: Layout, body: bytes) -> Path:
    """Leave `body` in operator/ as a new file (written aside, fsync'd, renamed in)."""
    path = layout.operator_drop / reply_name(time.time_ns(), os.getpid(), os.urandom(4).hex())
    fsutil.atomic_write(path, body, OPERATOR_FILE_MODE)
    return path


def refusal(st: os.stat_result, relay_uid: int, readable: bool) -> str | None:
    """Why the entry with lstat `st` may not be forwarded, or None if it may.

    `readable`: whether relay may open it for reading (the handler must read what it takes
    in). `relay_uid` owns operator/: a file of relay's own there never came from an
    operator; it can only be a hard link to one of relay's files, such as the history."""
    if not stat.S_ISREG(st.st_mode):
        return f"not a regular file ({file_kind(st.st_mode)})"
    if st.st_uid == relay_uid:
        return "owned by relay, so not an operator's reply"
    if st.st_nlink != 1:
        return f"has {st.st_nlink} hard links; a reply must have one"
    if not readable:
        return f"relay may not read it (mode {stat.S_IMODE(st.st_mode):04o}); use relay reply"
    return None


@dataclass(frozen=True)
class Entry:
    name: str
    st: os.stat_result


def waiting(drop: Path) -> list[Entry]:
    """The replies in operator/, oldest first (by mtime, then name); dot-names are not."""
    entries: list[Entry] = []
    try:
        with os.scandir(drop) as it:
            for item in it:
                if item.name.startswith("."):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    entries.append(Entry(item.name, item.stat(follow_symlinks=False)))
    except FileNotFoundError:
        return []  # no operator/ (a development data directory): nothing ever waits there
    entries.sort(key=lambda e: (e.st.st_mtime_ns, e.name))
    return entries


def forward_one(layout: Layout, result: IntakeResult, *, relay_uid: int | None = None) -> bool:
    """Move the oldest reply in operator/ to state/jc_input.txt; True if one was moved.

    False when nothing waits, or jc_input.txt is still there (it is drained first, then
    this is called again). Entries that may not be forwarded are set aside on the way.
    What is forwarded is checked again when it is taken in (regular, one link, readable),
    so a file its owner changes in between is refused there, privately."""
    drop = layout.operator_drop
    entries = waiting(drop)
    if not entries:
        return False
    uid = os.stat(drop).st_uid if relay_uid is None else relay_uid
    for entry in entries:
        source = drop / entry.name
        reason = refusal(entry.st, uid, os.access(source, os.R_OK, follow_symlinks=False))
        if reason is not None:
            _set_aside(drop, entry, reason)
            result.rejected.append(f"operator/{entry.name}")
            continue
        try:
            rename_noreplace(source, layout.jc_input)
        except FileExistsError:
            return False
        except FileNotFoundError:
            continue  # its owner took it back
        fsutil.fsync_dir(layout.jc_input.parent)
        fsutil.fsync_dir(drop)
        log.info("operator reply %s moved to %s", entry.name, layout.jc_input)
        return True
    return False


def refused_name(name: str, nonce: str) -> bytes:
    """`.refused-NONCE-NAME`, cut to fit a file name (255 bytes); never an existing name."""
    prefix = f"{REFUSED_PREFIX}{nonce}-".encode()
    return prefix + os.fsencode(name)[: 255 - len(prefix)]


def _set_aside(drop: Path, entry: Entry, reason: str) -> None:
    """Out of the path unit's way, nothing destroyed: renamed to a dot-name beside it (a
    rename within one directory works for anything, a directory too)."""
    target = refused_name(entry.name, os.urandom(4).hex())
    with contextlib.suppress(FileNotFoundError):
        os.rename(os.fsencode(drop / entry.name), os.path.join(os.fsencode(drop), target))
        fsutil.fsync_dir(drop)
    event(
        log,
        "rejected",
        "operator/%s not taken in: %s",
        entry.name,
        reason,
        envelope=entry.name,
        level=logging.WARNING,
    )


def drain(
    layout: Layout,
    drain_operator: Callable[[Layout], IntakeResult],
    *,
    max_run_s: float = MAX_RUN_S,
    relay_uid: int | None = None,
) -> IntakeResult:
    """Take in state/jc_input.txt, then every reply in operator/, one at a time."""
    deadline = time.monotonic() + max_run_s
    total = IntakeResult()
    while True:
        result = drain_operator(layout)
        total.accepted += result.accepted
        total.rejected += result.rejected
        if time.monotonic() > deadline or not forward_one(layout, total, relay_uid=relay_uid):
            return total


# ---- rename without replacing ---------------------------------------------------------------
