"""The phone answers the conversation has taken: ntfy message id -> the inbox item that
carried it (state/answers-applied.json, bounded, rewritten per answer: answers are rare).

The subscriber hands an answer over before it records the answer's id, so after a crash in
between the same answer can arrive twice, in two inbox items. The first item to be taken
owns the id; another item with it is a copy and changes nothing. The item that owns it may
be taken again after a restart (its turn had not finished): that is no copy.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from relay import fsutil
from relay.layout import PRIVATE_FILE_MODE

log = logging.getLogger(__name__)

MAX_ENTRIES = 2000


class AppliedAnswers:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._items: dict[str, str] | None = None  # read on first use

    def _load(self) -> dict[str, str]:
        if self._items is None:
            self._items = self._read()
        return self._items

    def _read(self) -> dict[str, str]:
        path = self.path
        try:
            raw = json.loads(fsutil.read_regular(path, 1 << 22))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("%s cannot be read (%s); starting it again", path, exc)
            return {}
        if not isinstance(raw, dict):
            return {}
        return {k: v for k, v in raw.items() if isinstance(v, str)}

    def owner(self, ntfy_id: str) -> str | None:
        return self._load().get(ntfy_id)

    def take(self, ntfy_id: str, key: str) -> bool:
        """Record that `key` carries answer `ntfy_id`; False if another item already does.
        Raises OSError if it cannot be recorded (the item is then tried again later)."""
        current = self._load()
        owner = current.get(ntfy_id)
        if owner is not None:
            return owner == key
        items = {**current, ntfy_id: key}
        while len(items) > MAX_ENTRIES:
            del items[next(iter(items))]  # insertion order: the oldest first
        fsutil.atomic_write(self.path, json.dumps(items).encode() + b"\n", PRIVATE_FILE_MODE)
        self._items = items
        return True
