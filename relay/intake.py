"""Intake: move envelopes from queue/ and the operator's jc_input.txt into the private inbox.

This is what the short-lived path-activated handlers run, so it must start fast: it never
imports `anthropic`. Each run drains everything and always consumes its trigger, so the
path units never loop or wedge (docs/architecture.md, promise 4).

A file is first claimed by renaming it into the inbox under a dot-name (writers can no
longer replace it), then validated, then either renamed to its final inbox name or moved
to queue/.rejected/ with a reason. Every step is a rename, so a crash at any point leaves
the file in exactly one place; leftover claims are finished by the next run.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from relay import fsutil
from relay.config import Config
from relay.envelope import Envelope, Rejected, parse_envelope
from relay.layout import (
    CLIENT_FILE_MODE,
    PRIVATE_FILE_MODE,
    PRIVATE_MODE,
    REJECTED_MODE,
    Layout,
)
from relay.log import event

log = logging.getLogger(__name__)

QUEUE_PREFIX = "q-"
OPERATOR_PREFIX = "j-"  # sorts before "q-": operator input has priority over the queue
CLAIM_PREFIX = ".claim-"
JC_CLAIM_PREFIX = f"{CLAIM_PREFIX}jc-"


@dataclass
class IntakeResult:
    accepted: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    ran: bool = True  # False: another intake run held the lock, and this one did nothing


def id_marker(layout: Layout, session: str, envelope_id: str) -> Path:
    digest = hashlib.sha256(f"{session}\0{envelope_id}".encode()).hexdigest()[:40]
    return layout.ids / digest


def _queue_entries(layout: Layout) -> list[tuple[int, str]]:
    entries: list[tuple[int, str]] = []
    with os.scandir(layout.queue) as it:
        for entry in it:
            if entry.name.startswith("."):
                continue  # writers stage dot-files and rename them into place
            try:
                mtime = entry.stat(follow_symlinks=False).st_mtime_ns
            except FileNotFoundError:
                continue
            entries.append((mtime, entry.name))
    entries.sort()
    return entries


@contextlib.contextmanager
def _one_at_a_time(lock: Path, wait: bool) -> Iterator[bool]:
    """Yield True holding `lock`; False at once if `wait` is off and another run holds it.

    A claim that no running intake is settling is a crash's leftover, which the next run
    finishes. Two runs at once (a manual `relay intake queue` beside the units or
    `relay run`) would each take the other's claims for leftovers: one at a time, then."""
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE_MODE)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def drain_queue(config: Config, layout: Layout, *, wait: bool = True) -> IntakeResult:
    """Validate every envelope in queue/, oldest by mtime first, until the queue is empty.

    `wait`: off for the service's own loop, which must never block: if another intake run
    is draining, it takes this turn's files as well."""
    layout.ensure_intake()
    result = IntakeResult()
    with _one_at_a_time(layout.state / "intake-queue.lock", wait) as mine:
        if mine:
            _drain_queue_locked(config, layout, result)
    result.ran = mine
    return result


def _drain_queue_locked(config: Config, layout: Layout, result: IntakeResult) -> None:
    _finish_stale_claims(config, layout, result)
    # Loop: envelopes that arrive while we work are taken in the same run.
    while entries := _queue_entries(layout):
        for mtime, name in entries:
            claim = layout.inbox / f"{CLAIM_PREFIX}{mtime:020d}-{name}"[:250]
            try:
                os.rename(layout.queue / name, claim)
            except FileNotFoundError:
                continue
            _settle(config, layout, claim, name, mtime, result)


MAX_RUN_S = 60.0


def drain_queue_lingering(
    config: Config, layout: Layout, linger_s: float, max_run_s: float = MAX_RUN_S
) -> IntakeResult:
    """Drain, then keep draining whatever arrives until the queue has been quiet for
    `linger_s`. Under a steady trickle this keeps one handler run busy instead of starting
    one per file, which protects the unit's start limit without delaying anything.

    A run ends after `max_run_s` however busy the queue is (well inside the unit's
    TimeoutStartSec=); the path unit's re-check starts the next one at once."""
    deadline = time.monotonic() + max_run_s
    from inotify_simple import INotify
    from inotify_simple import flags as in_flags

    layout.ensure_intake()
    total = IntakeResult()
    with INotify() as inotify:
        # Watch before draining, so nothing that lands in between is missed.
        inotify.add_watch(layout.queue, in_flags.MOVED_TO | in_flags.CLOSE_WRITE)
        while True:
            result = drain_queue(config, layout)
            total.accepted += result.accepted
            total.rejected += result.rejected
            remaining = deadline - time.monotonic()
            wait_s = min(linger_s, remaining)
            if wait_s <= 0 or not inotify.read(timeout=int(wait_s * 1000)):
                return total


def _finish_stale_claims(config: Config, layout: Layout, result: IntakeResult) -> None:
    # Operator claims are drain_operator's: under systemd the jc handler runs at the same
    # time as this one, so a jc claim seen here may be in its hands right now.
    with os.scandir(layout.inbox) as it:
        stale = sorted(
            e.name
            for e in it
            if e.name.startswith(CLAIM_PREFIX) and not e.name.startswith(JC_CLAIM_PREFIX)
        )
    for claim_name in stale:
        stamp, _, name = claim_name.removeprefix(CLAIM_PREFIX).partition("-")
        mtime = int(stamp) if stamp.isdigit() else 0
        _settle(config, layout, layout.inbox / claim_name, name, mtime, result)


def _marked_by_another(marker: Path, final_name: str) -> bool:
    try:
        return marker.read_text(encoding="utf-8") != final_name
    except FileNotFoundError:
        return False


def _read_claimed(path: Path, limit: int) -> bytes:
    """Read a claimed file without following symlinks; Rejected if it is not a regular file."""
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a regular file"
        raise Rejected(f"not a regular file ({kind}); symlinks are never followed")
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise Rejected("not a regular file")
        chunks: list[bytes] = []
        size = 0
        while size <= limit and (chunk := os.read(fd, 65536)):
            chunks.append(chunk)
            size += len(chunk)
        # The client may not have synced; make the content durable before we own it.
        os.fsync(fd)
        return b"".join(chunks)
    finally:
        os.close(fd)


# A writer that did not use a temp file + rename may still be writing when we claim the file
# (it keeps writing into the very inode we renamed). A file that fails to parse but was
# modified within YOUNG_S gets until it has been quiet for QUIET_S, at most MAX_WAIT_S.
YOUNG_S = 2.0
QUIET_S = 0.25
MAX_WAIT_S = 2.0


def _wait_if_young(path: Path) -> bool:
    """True if `path` was still young and we waited for it to go quiet."""
    age = time.time() - os.lstat(path).st_mtime
    if age >= YOUNG_S:
        return False
    deadline = time.monotonic() + MAX_WAIT_S
    while time.monotonic() < deadline and time.time() - os.lstat(path).st_mtime < QUIET_S:
        time.sleep(0.02)
    return True


def _parse_claimed(config: Config, claim: Path) -> Envelope:
    def attempt() -> Envelope:
        data = _read_claimed(claim, config.max_envelope_bytes)
        return parse_envelope(data, config.sessions, config.max_envelope_bytes)

    try:
        return attempt()
    except Rejected:
        if not stat.S_ISREG(os.lstat(claim).st_mode) or not _wait_if_young(claim):
            raise
        return attempt()


def _settle(
    config: Config, layout: Layout, claim: Path, name: str, mtime: int, result: IntakeResult
) -> None:
    final = layout.inbox / f"{QUEUE_PREFIX}{mtime:020d}-{name}"[:250]
    try:
        envelope = _parse_claimed(config, claim)
        marker = id_marker(layout, envelope.session_id, envelope.id) if envelope.id else None
        if marker is not None and _marked_by_another(marker, final.name):
            raise Rejected(f"duplicate id {envelope.id!r}: already accepted for this session")
    except Rejected as exc:
        reject(layout, claim, name, str(exc))
        result.rejected.append(name)
        return
    if marker is not None:
        # The marker names the inbox item it admits and is written first: after a crash
        # before the rename, the next run finds its own name there and goes on, while any
        # other envelope with this id is refused.
        fsutil.atomic_write(marker, final.name.encode())
    fsutil.durable_rename(claim, final)
    event(
        log,
        "accepted",
        "accepted %s from %s",
        name,
        envelope.session_id,
        session=envelope.session_id,
        envelope=final.name,
    )
    result.accepted.append(final.name)


def reject(layout: Layout, source: Path, name: str, reason: str, *, private: bool = False) -> Path:
    """Move `source` to queue/.rejected/ under `name` (made unique) with NAME.reason beside it.

    `private`: the operator's input, which may say things clients must not read, goes to
    state/rejected/ instead, readable by relay (and root) only."""
    where = layout.operator_rejected if private else layout.rejected
    fsutil.makedirs(where, PRIVATE_MODE if private else REJECTED_MODE)
    file_mode = PRIVATE_FILE_MODE if private else CLIENT_FILE_MODE
    target = where / name
    counter = 1
    while (
        target.exists() or target.is_symlink() or target.with_name(f"{target.name}.reason").exists()
    ):
        target = where / f"{name}.{counter}"
        counter += 1
    line = reason.replace("\n", " ").strip() + "\n"
    fsutil.atomic_write(target.with_name(f"{target.name}.reason"), line.encode(), file_mode)
    with contextlib.suppress(OSError):
        if not source.is_symlink():
            os.chmod(source, file_mode)
    fsutil.durable_rename(source, target)
    event(log, "rejected", "rejected %s: %s", name, reason, envelope=name, level=logging.WARNING)
    return target


def drain_operator(layout: Layout, *, wait: bool = True) -> IntakeResult:
    """Move state/jc_input.txt into the inbox with priority. Always consumes the file."""
    layout.ensure_intake()
    result = IntakeResult()
    with _one_at_a_time(layout.state / "intake-jc.lock", wait) as mine:
        if mine:
            _drain_operator_locked(layout, result)
    result.ran = mine
    return result


def _drain_operator_locked(layout: Layout, result: IntakeResult) -> None:
    with os.scandir(layout.inbox) as it:
        stale = sorted(e.name for e in it if e.name.startswith(JC_CLAIM_PREFIX))
    for name in stale:
        _settle_operator(layout, layout.inbox / name, result)
    # The operator may write again while we work; keep going until the file stays away.
    while layout.jc_input.exists() or layout.jc_input.is_symlink():
        claim = layout.inbox / f"{JC_CLAIM_PREFIX}{time.time_ns():020d}"
        try:
            os.rename(layout.jc_input, claim)
        except FileNotFoundError:
            break
        _settle_operator(layout, claim, result)


OPERATOR_MAX_BYTES = 1024 * 1024


def _read_operator(claim: Path) -> bytes:
    """The operator's input, whole: past the limit it is refused, never cut short."""
    data = _read_claimed(claim, OPERATOR_MAX_BYTES)
    if len(data) > OPERATOR_MAX_BYTES:
        raise Rejected(f"too large: over {OPERATOR_MAX_BYTES} bytes")
    return data


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _settle_operator(layout: Layout, claim: Path, result: IntakeResult) -> None:
    stamp = claim.name.removeprefix(JC_CLAIM_PREFIX)
    name = f"jc_input-{stamp}.txt"
    try:
        data = _read_operator(claim)
        if (not data.strip() or not _is_utf8(data)) and _wait_if_young(claim):
            data = _read_operator(claim)  # an `echo > jc_input.txt` in progress
        text = data.decode("utf-8")
    except Rejected as exc:
        reject(layout, claim, name, str(exc), private=True)
        result.rejected.append(name)
        return
    except UnicodeDecodeError as exc:
        reject(layout, claim, name, f"not valid UTF-8 (byte {exc.start})", private=True)
        result.rejected.append(name)
        return
    if not text.strip():
        fsutil.unlink_durable(claim)
        event(log, "ignored", "operator input was empty; ignored", level=logging.WARNING)
        return
    final = layout.inbox / f"{OPERATOR_PREFIX}{stamp}.txt"
    fsutil.durable_rename(claim, final)
    event(log, "operator_input", "operator input accepted", envelope=final.name)
    result.accepted.append(final.name)
