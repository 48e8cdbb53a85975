"""Dispatch: per-session FIFO of replies and their delivery to dispatch/<session>/input.txt.

A pending reply is a file in dispatch/<session>/.pending/ (named by the spool: sequence
number, the key's digest, the key). Delivering it is one rename to input.txt, done only
while input.txt is absent, so a reply is pending or delivered and never both, even across
SIGKILL (invariant 2). Only the conversation process writes here, under its lock, so
"absent, then rename" cannot race.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from relay import fsutil
from relay.layout import CLIENT_FILE_MODE, PRIVATE_MODE, Layout
from relay.log import event
from relay.spool import key_digest, pending_digest, pending_key_hint, pending_name, pending_seq

log = logging.getLogger(__name__)


def _named(names: list[str], key: str) -> str | None:
    digest = key_digest(key)
    return next((name for name in names if pending_digest(name) == digest), None)


def find_pending(layout: Layout, session: str, key: str) -> Path | None:
    name = _named(pending(layout, session), key)
    return None if name is None else layout.pending_dir(session) / name


def enqueue(layout: Layout, session: str, key: str, text: str) -> Path:
    """Make `text` the newest pending reply for `session` (idempotent per key).

    The sequence number only orders the replies still pending, so one more than the
    highest pending one is enough.
    """
    names = pending(layout, session)
    existing = _named(names, key)
    if existing is not None:
        return layout.pending_dir(session) / existing
    fsutil.makedirs(layout.pending_dir(session), PRIVATE_MODE)
    seq = pending_seq(names[-1]) + 1 if names else 1
    path = layout.pending_dir(session) / pending_name(seq, key)
    # A reply may carry a lone surrogate chat-Claude echoed back; keep it, escaped.
    fsutil.atomic_write(path, text.encode("utf-8", "backslashreplace"), CLIENT_FILE_MODE)
    return path


def pending(layout: Layout, session: str) -> list[str]:
    try:
        names = os.listdir(layout.pending_dir(session))
    except FileNotFoundError:
        return []
    return sorted(
        n for n in names if n.endswith(".txt") and not n.startswith(".") and n[:12].isdigit()
    )


def deliver(layout: Layout, session: str) -> str | None:
    """If the session has consumed its input, hand it the oldest pending reply.

    Returns the delivered file's name, or None when nothing moved.
    """
    target = layout.input_file(session)
    if os.path.lexists(target):
        return None
    names = pending(layout, session)
    if not names:
        return None
    source = layout.pending_dir(session) / names[0]
    os.rename(source, target)
    fsutil.fsync_dir(target.parent)
    fsutil.fsync_dir(source.parent)
    key = pending_key_hint(names[0])
    event(
        log, "dispatched", "dispatched reply %s to %s", key, session, session=session, envelope=key
    )
    return names[0]
