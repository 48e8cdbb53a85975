"""The ntfy topic: from the config, or generated once (192 random bits) and kept forever."""

from __future__ import annotations

import contextlib
import os
import secrets

from relay import fsutil
from relay.config import Config
from relay.layout import OPERATOR_FILE_MODE, Layout


def resolve_topic(config: Config, layout: Layout, *, create: bool = True) -> str | None:
    """The topic pushes go to; None if there is none yet and `create` is off.

    The file is 0640 in the setgid state/ (group relay-operators): operators read it with
    `relay topic`, and only relay and root, who may write state/, create it."""
    if config.ntfy.topic:
        return config.ntfy.topic
    try:
        topic = layout.topic.read_text(encoding="utf-8").strip()
        if topic:
            return topic
    except FileNotFoundError:
        pass
    if not create:
        return None
    layout.ensure_intake()
    candidate = "relay-" + secrets.token_urlsafe(24)
    tmp = layout.topic.with_name(f".ntfy-topic.{os.getpid()}.tmp")
    fsutil.atomic_write(tmp, candidate.encode() + b"\n", OPERATOR_FILE_MODE)
    try:
        # link() never replaces: if two processes race, the first topic wins for both.
        os.link(tmp, layout.topic)
        fsutil.fsync_dir(layout.topic.parent)
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)
    _give_to_state_owner(layout)
    return layout.topic.read_text(encoding="utf-8").strip()


def _give_to_state_owner(layout: Layout) -> None:
    # `sudo relay topic` may create the file before the service ever ran; the service
    # user must still be able to read it.
    if os.geteuid() == 0:
        st = os.stat(layout.state)
        with contextlib.suppress(OSError):
            os.chown(layout.topic, st.st_uid, st.st_gid)


def may_create(layout: Layout) -> bool:
    """Whether this process may create the topic file: relay and root may, operators not."""
    return os.access(layout.state, os.W_OK | os.X_OK)


def subscribe_url(config: Config, topic: str) -> str:
    return f"{config.ntfy.server or 'https://ntfy.sh'}/{topic}"
