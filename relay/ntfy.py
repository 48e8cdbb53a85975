"""Pushes by ntfy: best effort, short timeout, on their own thread.

A slow or failing ntfy server is logged and never delays dispatch (invariant 5). Pushes are
published as JSON (`POST <server>/`), which carries a title, a click URL and action buttons
without header quoting. The optional access token goes in the Authorization header of
relay's own requests only: never in a push, whose buttons anyone reading the topic can see.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import urllib.request
from dataclasses import dataclass
from typing import Any, Literal

from relay.log import event

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 4096  # ntfy turns a longer message into an attachment
MAX_ACTIONS = 3  # ntfy refuses a fourth action with HTTP 400


@dataclass(frozen=True)
class Action:
    """A button on a push: `http` publishes `body` to `url` when tapped; `view` opens `url`."""

    kind: Literal["http", "view"]
    label: str
    url: str
    body: str = ""

    def to_json(self) -> dict[str, Any]:
        if self.kind == "view":
            return {"action": "view", "label": self.label, "url": self.url, "clear": False}
        return {
            "action": "http",
            "label": self.label,
            "url": self.url,
            "method": "POST",
            "body": self.body,
            "clear": True,
        }


@dataclass(frozen=True)
class Push:
    title: str
    message: str
    priority: str = "default"  # ntfy: min, low, default, high, urgent
    tags: tuple[str, ...] = ()
    click: str | None = None
    actions: tuple[Action, ...] = ()
    key: str | None = None  # names the push for a later `Notifier.delete(key)`

    def to_json(self, topic: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "topic": topic,
            "title": self.title,
            "message": fit(self.message, MAX_BODY_BYTES),
            "priority": _PRIORITY[self.priority],
            "tags": list(self.tags),
        }
        if self.click:
            body["click"] = self.click
        if self.actions:
            body["actions"] = [a.to_json() for a in self.actions[:MAX_ACTIONS]]
        return body


_PRIORITY = {"min": 1, "low": 2, "default": 3, "high": 4, "urgent": 5}


def fit(text: str, limit: int, ellipsis: str = "…") -> str:
    """`text` cut to at most `limit` UTF-8 bytes, never inside a character."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    room = limit - len(ellipsis.encode("utf-8"))
    return data[:room].decode("utf-8", errors="ignore") + ellipsis


def _headers(token: str | None) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers


def post(server: str, topic: str, push: Push, timeout_s: float, token: str | None = None) -> str:
    """Send one push now and return its ntfy message id ("" if the server gave none);
    raises OSError on failure."""
    data = json.dumps(push.to_json(topic), ensure_ascii=False).encode("utf-8")
    request = urllib.request.Request(
        f"{server}/", data=data, method="POST", headers=_headers(token)
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        raw = response.read()  # whole: a body cut short is a failed push (IncompleteRead)
    try:
        answer = json.loads(raw)
    except ValueError:
        return ""
    ident = answer.get("id") if isinstance(answer, dict) else None
    return ident if isinstance(ident, str) else ""


def delete(
    server: str, topic: str, message_id: str, timeout_s: float, token: str | None = None
) -> None:
    """Remove a push from the phones subscribed to `topic` (ntfy >= 2.16); raises OSError."""
    request = urllib.request.Request(
        f"{server}/{topic}/{message_id}", method="DELETE", headers=_headers(token)
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        response.read(65536)


@dataclass(frozen=True)
class _Delete:
    key: str


class Notifier:
    """Queues pushes (and deletions of earlier ones) and sends them, in order, from a daemon
    thread: a deletion queued after its push runs after that push has its id."""

    def __init__(
        self,
        server: str | None,
        topic: str | None,
        timeout_s: float,
        token: str | None = None,
    ) -> None:
        self.server = server
        self.topic = topic
        self.timeout_s = timeout_s
        self.token = token
        self._queue: queue.Queue[Push | _Delete | None] = queue.Queue(maxsize=100)
        self._thread: threading.Thread | None = None
        self._ids: dict[str, str] = {}  # push key -> ntfy message id (this process's pushes)
        self.sent = 0
        self.failed = 0

    @property
    def enabled(self) -> bool:
        return bool(self.server and self.topic)

    def configure(self, topic: str | None, timeout_s: float, token: str | None) -> None:
        """Push to `topic` from now on (a reload). The queue and its thread stay: pushes
        already queued are sent, and earlier pushes can still be deleted."""
        self.topic, self.timeout_s, self.token = topic, timeout_s, token

    def push(self, push: Push) -> None:
        if not self.enabled:
            log.info("ntfy disabled; not sending %r", push.title)
            return
        self._put(push, push.title)

    def delete(self, key: str) -> None:
        """Remove the push sent with `key`, if this process sent one (failures ignored)."""
        if self.enabled:
            self._put(_Delete(key), f"deletion of {key}")

    def _put(self, item: Push | _Delete, what: str) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ntfy", daemon=True)
            self._thread.start()
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            event(log, "ntfy_error", "ntfy queue full; dropped %r", what, level=logging.WARNING)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            assert self.server and self.topic
            try:
                if isinstance(item, _Delete):
                    ident = self._ids.pop(item.key, None)
                    if ident:
                        delete(self.server, self.topic, ident, self.timeout_s, self.token)
                    continue
                ident = post(self.server, self.topic, item, self.timeout_s, self.token)
                if item.key and ident:
                    self._ids[item.key] = ident
                self.sent += 1
            except Exception as exc:  # best effort: this thread must survive
                # http.client raises HTTPException (not OSError) on a broken response.
                if isinstance(item, _Delete):
                    log.info("ntfy: could not remove push %s: %s", item.key, exc)
                    continue
                self.failed += 1
                event(
                    log,
                    "ntfy_error",
                    "ntfy push %r failed: %s",
                    item.title,
                    exc,
                    level=logging.WARNING,
                )

    def close(self, wait_s: float = 0.0) -> None:
        if self._thread is not None:
            try:
                self._queue.put_nowait(None)
            except queue.Full:
                return
            self._thread.join(wait_s)
