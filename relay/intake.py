"""Intake: move envelopes from queue/ and the operator's jc_input.txt into the private inbox.

This is what the short-lived path-activated handlers run, so it must start fast: it never
imports `anthropic`. Each run drains everything and always consumes its trigger, so the
path units never loop or wedge (docs/architecture.md, promise 4).

A file is first claimed by renaming it into the inbox (writers can no longer replace it),
then validated, then either admitted as an inbox item or moved to queue/.rejected/ with a
reason. The names and moves are the spool's (relay/spool.py); this module decides.
Nothing a client puts in queue/ stops a run: whatever cannot be read, parsed or moved is
refused with a reason, and the run goes on.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from relay import fsutil
from relay.config import Config
from relay.envelope import Envelope, Rejected, parse_envelope
from relay.layout import Layout
from relay.log import event
from relay.spool import (
    CLAIM,
    LEGACY_CLAIM,
    LEGACY_JC_CLAIM,
    Claim,
    Refused,
    Spool,
    display,
    one_at_a_time,
    read_client_file,
)

log = logging.getLogger(__name__)


@dataclass
class IntakeResult:
    accepted: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    ran: bool = True  # False: another intake run held the lock, and this one did nothing
    # Seconds until a deferred claim (a file still being written) should be looked at again.
    retry_in: float | None = None


def id_marker(layout: Layout, session: str, envelope_id: str) -> Path:
    digest = hashlib.sha256(f"{session}\0{envelope_id}".encode()).hexdigest()[:40]
    return layout.ids / digest


def drain_queue(
    config: Config, layout: Layout, *, wait: bool = True, final: bool = False
) -> IntakeResult:
    """Validate every envelope in queue/, oldest by mtime first, until the queue is empty.

    `wait`: off for the service's own loop, which must never block: if another intake run
    is draining, it takes this turn's files as well. `final`: judge files still being
    written as they are now, instead of deferring them."""
    layout.ensure_intake()
    result = IntakeResult()
    with one_at_a_time(layout.state / "intake-queue.lock", wait) as mine:
        if mine:
            _Drain(config, layout, result, final=final, blocking=wait).run()
    result.ran = mine
    return result


MAX_RUN_S = 60.0
ERROR_RETRY_S = 10.0


def drain_queue_lingering(
    config: Config, layout: Layout, linger_s: float, max_run_s: float = MAX_RUN_S
) -> IntakeResult:
    """Drain, then keep draining whatever arrives until the queue has been quiet for
    `linger_s`. Under a steady trickle this keeps one handler run busy instead of starting
    one per file, which protects the unit's start limit without delaying anything.

    A run ends after `max_run_s` however busy the queue is (well inside the unit's
    TimeoutStartSec=); the path unit's re-check starts the next one at once. A file still
    being written is waited for inside `drain_queue`, while the others go on."""
    deadline = time.monotonic() + max_run_s
    from inotify_simple import INotify
    from inotify_simple import flags as in_flags

    layout.ensure_intake()
    total = IntakeResult()
    with INotify() as inotify:
        # Watch before draining, so nothing that lands in between is missed.
        inotify.add_watch(layout.queue, in_flags.MOVED_TO | in_flags.CLOSE_WRITE)
        while True:
            remaining = deadline - time.monotonic()
            try:
                result = drain_queue(config, layout, final=remaining <= 0)
            except OSError as exc:
                # A full disk: exiting now would have the path unit start us again at once
                # (the queue is not empty), a crash loop. Wait instead, then end the run.
                log.error("intake: %s; trying again in %ds", exc, ERROR_RETRY_S)
                if remaining <= 0:
                    return total
                time.sleep(min(ERROR_RETRY_S, remaining))
                continue
            total.accepted += result.accepted
            total.rejected += result.rejected
            wait_s = min(linger_s, remaining)
            if wait_s <= 0 or not inotify.read(timeout=int(wait_s * 1000)):
                return total


# A writer that did not use a temp file + rename may still be writing when we claim the file
# (it keeps writing into the very inode we renamed). A file that fails to parse is judged
# once it has been quiet for QUIET_S (for at most MAX_DEFER_S after the claim); until then
# it is deferred, and every other file goes on meanwhile.
QUIET_S = 0.5
MAX_DEFER_S = 30.0


class _Drain:
    def __init__(
        self, config: Config, layout: Layout, result: IntakeResult, *, final: bool, blocking: bool
    ) -> None:
        self.config = config
        self.layout = layout
        self.spool = Spool(layout)
        self.result = result
        self.final = final
        self.blocking = blocking

    def run(self) -> None:
        for name in self.spool.resume_rejections(_queue_claim):
            self._rejected(name, "finished a rejection that a crash interrupted")
        self.spool.drop_orphan_names()
        while True:
            for stale in self.spool.stale_claims():
                self._settle(stale)
            # Envelopes that arrive while we work are taken in the same run.
            while entries := self.spool.queue_entries():
                for mtime, name in entries:
                    claim = self._claim(name, mtime)
                    if claim is not None:
                        self._settle(claim)
            waits = [w for c in self.spool.stale_claims() if (w := self._young(c)) is not None]
            if not waits:
                return
            if not self.blocking:
                self.result.retry_in = min(waits)
                return
            time.sleep(min(waits))

    def _claim(self, name: str, mtime: int) -> Claim | None:
        try:
            return self.spool.claim(name, mtime)
        except OSError as exc:
            # Only a client's directory relay may not move (its ".." cannot be updated
            # without write permission on it) is refused where it lies; any other error
            # (a full disk) is the run's, retried as a whole.
            try:
                is_dir = stat.S_ISDIR(os.lstat(self.layout.queue / name).st_mode)
            except FileNotFoundError:
                return None
            if not is_dir or exc.errno not in (errno.EACCES, errno.EPERM):
                raise
            reason = f"not a regular file (a directory that relay cannot move: {exc.strerror})"
            self.spool.refuse_in_queue(name, reason)
            self._rejected(name, reason)
            return None

    def _young(self, claim: Claim) -> float | None:
        """Seconds to wait before judging `claim` again, or None to judge it now."""
        if self.final:
            return None
        now = time.time()
        try:
            st = os.lstat(claim.path)
        except FileNotFoundError:
            return None
        quiet_for = now - st.st_mtime
        if not stat.S_ISREG(st.st_mode) or now - claim.claimed_at >= MAX_DEFER_S:
            return None
        if quiet_for >= QUIET_S:
            return None
        return max(0.02, QUIET_S - quiet_for)

    def _settle(self, claim: Claim) -> None:
        try:
            data, envelope = self._parse(claim)
        except Rejected as exc:
            if self._young(claim) is not None:
                return  # deferred: looked at again shortly (run() says when)
            self._reject(claim, str(exc))
            return
        except Exception as exc:  # a parser surprise must cost one file, never the run
            log.exception("unexpected error validating %s", display(claim.name))
            self._reject(claim, f"cannot be parsed: {type(exc).__name__}")
            return
        key = claim.key
        marker = id_marker(self.layout, envelope.session_id, envelope.id) if envelope.id else None
        if marker is not None:
            if _marked_by_another(marker, key):
                self._reject(
                    claim, f"duplicate id {envelope.id!r}: already accepted for this session"
                )
                return
            # The marker names the inbox item it admits and is written first: after a crash
            # before the admission, the next run finds its own key there and goes on, while
            # any other envelope with this id (even a `cp -p` copy) is refused.
            fsutil.atomic_write(marker, key.encode())
        self.spool.admit(claim, data)
        event(
            log,
            "accepted",
            "accepted %s from %s",
            display(claim.name),
            envelope.session_id,
            session=envelope.session_id,
            envelope=key,
        )
        self.result.accepted.append(key)

    def _parse(self, claim: Claim) -> tuple[bytes, Envelope]:
        try:
            data = read_client_file(claim.path, self.config.max_envelope_bytes)
        except Refused as exc:
            raise Rejected(str(exc)) from None
        return data, parse_envelope(data, self.config.sessions, self.config.max_envelope_bytes)

    def _reject(self, claim: Claim, reason: str) -> None:
        self.spool.reject_claim(claim, reason)
        self._rejected(claim.name, reason)

    def _rejected(self, name: str, reason: str) -> None:
        event(
            log,
            "rejected",
            "rejected %s: %s",
            display(name),
            reason,
            envelope=display(name),
            level=logging.WARNING,
        )
        self.result.rejected.append(name)


def _marked_by_another(marker: Path, key: str) -> bool:
    try:
        return marker.read_text(encoding="utf-8") != key
    except FileNotFoundError:
        return False


def _queue_claim(source_name: str) -> bool:
    return source_name.startswith((CLAIM, LEGACY_CLAIM)) and not source_name.startswith(
        LEGACY_JC_CLAIM
    )


# ---- the operator ----------------------------------------------------------------------

OPERATOR_MAX_BYTES = 1024 * 1024
OPERATOR_YOUNG_S = 2.0


def drain_operator(layout: Layout, *, wait: bool = True) -> IntakeResult:
    """Move state/jc_input.txt into the inbox with priority. Always consumes the file."""
    layout.ensure_intake()
    result = IntakeResult()
    with one_at_a_time(layout.state / "intake-jc.lock", wait) as mine:
        if mine:
            spool = Spool(layout)
            spool.resume_rejections(lambda source: source.startswith(LEGACY_JC_CLAIM))
            for stale in spool.operator_claims():
                _settle_operator(spool, stale, result)
            # The operator may write again while we work; keep going until it stays away.
            while os.path.lexists(layout.jc_input):
                claim = spool.claim_operator()
                if claim is None:
                    break
                _settle_operator(spool, claim, result)
    result.ran = mine
    return result


def _read_operator(claim: Path) -> bytes:
    """The operator's input, whole: past the limit it is refused, never cut short."""
    try:
        data = read_client_file(claim, OPERATOR_MAX_BYTES)
    except Refused as exc:
        raise Rejected(str(exc)) from None
    if len(data) > OPERATOR_MAX_BYTES:
        raise Rejected(f"too large: over {OPERATOR_MAX_BYTES} bytes")
    return data


def _wait_if_young(path: Path) -> bool:
    """True if `path` was still young and we waited (at most 2 s) for it to go quiet. The
    operator writes one file at a time, so waiting here stalls no one else."""
    age = time.time() - os.lstat(path).st_mtime
    if age >= OPERATOR_YOUNG_S:
        return False
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline and time.time() - os.lstat(path).st_mtime < QUIET_S:
        time.sleep(0.02)
    return True


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _settle_operator(spool: Spool, claim: Path, result: IntakeResult) -> None:
    key = spool.operator_claim_key(claim)
    try:
        data = _read_operator(claim)
        if (not data.strip() or not _is_utf8(data)) and _wait_if_young(claim):
            data = _read_operator(claim)  # an `echo > jc_input.txt` in progress
        text = data.decode("utf-8")
    except Rejected as exc:
        _reject_operator(spool, claim, key, str(exc), result)
        return
    except UnicodeDecodeError as exc:
        _reject_operator(spool, claim, key, f"not valid UTF-8 (byte {exc.start})", result)
        return
    if not text.strip():
        fsutil.unlink_durable(claim)
        event(log, "ignored", "operator input was empty; ignored", level=logging.WARNING)
        return
    spool.admit_operator(claim, data)
    event(log, "operator_input", "operator input accepted", envelope=key)
    result.accepted.append(key)


def _reject_operator(
    spool: Spool, claim: Path, key: str, reason: str, result: IntakeResult
) -> None:
    target = spool.reject_operator(claim, key, reason)
    event(
        log,
        "rejected",
        "rejected operator input %s: %s",
        target.name,
        reason,
        envelope=target.name,
        level=logging.WARNING,
    )
    result.rejected.append(target.name)
