"""What a client of relay does: queue an envelope the way the contract says.

Shared by `relay submit`, the Claude Code hooks and the headless worker, so that every
client writes envelopes the same way: staged under a dot-name, fsync'd, renamed in.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from relay import fsutil
from relay.config import Config
from relay.envelope import Envelope, encode_envelope
from relay.errors import RelayError, UsageError
from relay.layout import Layout
from relay.ledger import iso, utc_now


def denied(directory: Path, what: str) -> str:
    who = "members of the relay-clients group" if what == "submit" else "root (sudo relay reply)"
    return f"cannot write to {directory}: permission denied; only {who} may {what}"


def check_dir(directory: Path, what: str) -> None:
    try:
        os.stat(directory)
    except PermissionError:
        raise RelayError(denied(directory, what)) from None
    except FileNotFoundError:
        raise RelayError(
            f"{directory} does not exist: is relay installed, and is data_dir in the config right?"
        ) from None


def check_session(config: Config, session: str) -> None:
    if session not in config.sessions:
        raise UsageError(
            f"unknown session {session!r}: configured sessions are {', '.join(config.sessions)}"
        )


def check_connected(config: Config, session: str) -> None:
    """What a Claude Code session bound to `session` needs: to submit into queue/, and to
    read, claim and delete its replies in dispatch/<session>/."""
    layout = Layout(config.data_dir)
    check_dir(layout.queue, "submit")
    directory = layout.session_dir(session)
    if not os.access(directory, os.R_OK | os.W_OK | os.X_OK):
        raise RelayError(
            f"cannot use {directory}: only members of the relay-clients group may receive "
            f"replies for {session} (has relay run with this configuration?)"
        )


def submit(config: Config, session: str, content: str, envelope_id: str | None = None) -> Path:
    """Queue `content` from `session`; return the queue file. RelayError says why not."""
    check_session(config, session)
    if not content.strip():
        raise UsageError("refusing to submit empty content")
    data = encode_envelope(Envelope(session, content, iso(utc_now()), envelope_id))
    if len(data) > config.max_envelope_bytes:
        raise UsageError(
            f"envelope is {len(data)} bytes; the limit is "
            f"{config.max_envelope_bytes} (max_envelope_bytes)"
        )
    queue = Layout(config.data_dir).queue
    check_dir(queue, "submit")
    name = f"{time.strftime('%Y%m%dT%H%M%S')}-{session}-{os.urandom(4).hex()}.json"
    try:
        fsutil.atomic_write(queue / name, data, 0o640)
    except PermissionError:
        raise RelayError(denied(queue, "submit")) from None
    return queue / name
