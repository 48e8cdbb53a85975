"""Escalation by ntfy push: best effort, short timeout, on its own thread.

A slow or failing ntfy server is logged and never delays dispatch (invariant 5).
"""

from __future__ import annotations

import logging
import queue
import threading
import urllib.request
from dataclasses import dataclass

from relay.log import event

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Push:
    title: str
    message: str
    priority: str = "default"  # ntfy: min, low, default, high, urgent
    tags: tuple[str, ...] = ()


def post(server: str, topic: str, push: Push, timeout_s: float) -> None:
    """Send one push now; raises OSError on failure."""
    # ntfy reads the title from a header, and headers must be latin-1: RFC 2047-encode
    # anything else so a non-ASCII title is not lost.
    title = push.title
    if not title.isascii():
        import email.header

        title = email.header.Header(title, "utf-8").encode()
    request = urllib.request.Request(
        f"{server}/{topic}",
        data=push.message.encode("utf-8"),
        method="POST",
        headers={"Title": title, "Priority": push.priority, "Tags": ",".join(push.tags)},
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        response.read()


class Notifier:
    """Queues pushes and sends them from a daemon thread."""

    def __init__(self, server: str | None, topic: str | None, timeout_s: float) -> None:
        self.server = server
        self.topic = topic
        self.timeout_s = timeout_s
        self._queue: queue.Queue[Push | None] = queue.Queue(maxsize=100)
        self._thread: threading.Thread | None = None
        self.sent = 0
        self.failed = 0

    @property
    def enabled(self) -> bool:
        return bool(self.server and self.topic)

    def push(self, push: Push) -> None:
        if not self.enabled:
            log.info("ntfy disabled; not sending %r", push.title)
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ntfy", daemon=True)
            self._thread.start()
        try:
            self._queue.put_nowait(push)
        except queue.Full:
            event(
                log, "ntfy_error", "ntfy queue full; dropped %r", push.title, level=logging.WARNING
            )

    def _run(self) -> None:
        while (push := self._queue.get()) is not None:
            assert self.server and self.topic
            try:
                post(self.server, self.topic, push, self.timeout_s)
                self.sent += 1
            except Exception as exc:  # best effort: this thread must survive
                # http.client raises HTTPException (not OSError) on a broken response.
                self.failed += 1
                event(
                    log,
                    "ntfy_error",
                    "ntfy push %r failed: %s",
                    push.title,
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
