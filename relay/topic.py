"""The ntfy topics: the question topic relay pushes to and the answer topic the phone
publishes to. Each comes from the config, or is generated once (192 random bits) and kept
forever under state/: phones are subscribed to them."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from relay import fsutil
from relay.config import Config
from relay.errors import StateError
from relay.layout import OPERATOR_FILE_MODE, Layout

MAX_TOPIC_BYTES = 1024


def resolve_topic(config: Config, layout: Layout, *, create: bool = True) -> str | None:
    """The topic pushes go to; None if there is none yet and `create` is off.

    The file is 0640 in the setgid state/ (group relay-operators): operators read it with
    `relay topic`, and only relay and root, who may write state/, create it."""
    return _resolve(config.ntfy.topic, layout.topic, layout, "relay-", create)


def resolve_reply_topic(config: Config, layout: Layout, *, create: bool = True) -> str | None:
    """The topic answers come from (kept beside the question topic, made the same way)."""
    return _resolve(config.ntfy.reply_topic, layout.reply_topic, layout, "relay-answers-", create)


def _resolve(
    configured: str | None, path: Path, layout: Layout, prefix: str, create: bool
) -> str | None:
    if configured:
        return configured
    try:
        topic = _read(path)
        if topic:
            return topic
    except FileNotFoundError:
        pass
    if not create:
        return None
    layout.ensure_intake()
    candidate = prefix + secrets.token_urlsafe(24)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fsutil.atomic_write(tmp, candidate.encode() + b"\n", OPERATOR_FILE_MODE)
    try:
        # link() never replaces: if two processes race, the first topic wins for both.
        os.link(tmp, path)
        fsutil.fsync_dir(path.parent)
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)
    _give_to_state_owner(layout, path)
    return _read(path)


def _read(path: Path) -> str:
    """A stored topic. Phones are subscribed to it, so a file relay cannot read safely
    (a FIFO that would hang the start, a directory, a link, something huge or not text) is
    never replaced by a new topic: it stops relay with what to do (StateError)."""
    try:
        data = fsutil.read_regular(path, MAX_TOPIC_BYTES, follow_symlinks=False)
        if len(data) > MAX_TOPIC_BYTES:
            raise ValueError(f"larger than {MAX_TOPIC_BYTES} bytes")
        return data.decode("utf-8").strip()
    except (FileNotFoundError, PermissionError):
        raise  # no topic yet; or not ours to read (cli says who may)
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise StateError(
            f"{path} cannot be read safely ({reason}): put the topic back in it as "
            "one line, or remove it to have a new one made (phones must then subscribe "
            "again)"
        ) from exc


def _give_to_state_owner(layout: Layout, path: Path) -> None:
    # `sudo relay topic` may create the file before the service ever ran; the service
    # user must still be able to read it.
    if os.geteuid() == 0:
        st = os.stat(layout.state)
        with contextlib.suppress(OSError):
            os.chown(path, st.st_uid, st.st_gid)


def may_create(layout: Layout) -> bool:
    """Whether this process may create the topic file: relay and root may, operators not."""
    return os.access(layout.state, os.W_OK | os.X_OK)


def subscribe_url(config: Config, topic: str) -> str:
    """What the ntfy app subscribes to; in a browser, the same URL opens the web app on
    that topic, where a message can be typed and published (the answer topic's use)."""
    return f"{config.ntfy.server or 'https://ntfy.sh'}/{topic}"
