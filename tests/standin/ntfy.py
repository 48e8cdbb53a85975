"""A stand-in ntfy server on loopback, for tests and demos.

Accepts publishes the way relay sends them and ntfy.sh reads them: `POST /<topic>` with the
message as the body and `Title`/`Priority`/`Tags` headers. Every publish attempt is recorded,
including ones answered with the injected `fail_status`.

stdlib only, so it also runs as a script under a bare `/usr/bin/python3`:

    python3 tests/standin/ntfy.py --port 0 [--port-file F] [--fail-status 500]

prints `http://127.0.0.1:PORT` once listening and serves until SIGTERM/SIGINT;
`GET /_messages` returns the records as JSON.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the `tests.standin` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.standin.loopback import (
    LoopbackHandler,
    Serving,
    serve_until_signalled,
)

_TOPIC_RE = re.compile(r"^[-_A-Za-z0-9]{1,64}$")
_PRIORITIES = {"min": 1, "low": 2, "default": 3, "high": 4, "max": 5, "urgent": 5}


@dataclass(frozen=True)
class NtfyMessage:
    topic: str
    message: str
    title: str | None
    priority: int  # 1..5, 3 when not given
    tags: list[str]
    headers: dict[str, str]  # lower-case names; `authorization` is here if sent
    status: int  # what the stand-in answered: 200, or the injected fail_status
    time: float  # time.monotonic() at arrival


class _BadRequest(Exception):
    pass


def _parse_priority(value: str | None) -> int:
    if value is None or value == "":
        return 3
    if value.lower() in _PRIORITIES:
        return _PRIORITIES[value.lower()]
    if value.isdigit() and 1 <= int(value) <= 5:
        return int(value)
    raise _BadRequest("invalid priority")


def _parse_tags(value: str | None) -> list[str]:
    return [t.strip() for t in (value or "").split(",") if t.strip()]


class StandinNtfy(Serving):
    """The stand-in ntfy server. Use as a context manager or call start()/stop().

    `fail_status`: answer every publish with this status (after recording it).
    `delay`: seconds slept before answering, to simulate a hanging server.
    Both may be changed while running.
    """

    def __init__(
        self, *, port: int = 0, fail_status: int | None = None, delay: float = 0.0
    ) -> None:
        super().__init__("127.0.0.1", port, verbose=False)
        self.fail_status = fail_status
        self.delay = delay
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._messages: list[NtfyMessage] = []

    @property
    def messages(self) -> list[NtfyMessage]:
        with self._lock:
            return list(self._messages)

    def wait_for(self, count: int, timeout: float = 5.0) -> list[NtfyMessage]:
        """Block until at least `count` publishes arrived and return them all; raise
        TimeoutError otherwise. Records are made on arrival, before any `delay`."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._messages) >= count, timeout):
                raise TimeoutError(
                    f"expected {count} ntfy messages within {timeout}s, "
                    f"got {len(self._messages)}: {self._messages!r}"
                )
            return list(self._messages)

    def reset(self) -> None:
        with self._lock:
            self._messages.clear()

    def handle(
        self, method: str, path: str, headers: dict[str, str], raw: bytes
    ) -> tuple[int, Any]:
        """Answer one request with (status, JSON payload)."""
        if method == "GET" and path == "/_messages":
            return 200, [asdict(m) for m in self.messages]
        topic = path.strip("/")
        if method != "POST":
            return _error(404, 40401, "page not found")
        if not _TOPIC_RE.match(topic):
            return _error(400, 40000, f"invalid topic {topic!r}")
        try:
            priority = _parse_priority(headers.get("priority"))
        except _BadRequest as exc:
            return _error(400, 40000, str(exc))
        title = headers.get("title")
        message = NtfyMessage(
            topic=topic,
            message=raw.decode("utf-8", errors="replace"),
            title=title,
            priority=priority,
            tags=_parse_tags(headers.get("tags")),
            headers=headers,
            status=self.fail_status or 200,
            time=time.monotonic(),
        )
        with self._changed:
            self._messages.append(message)
            self._changed.notify_all()
        if self.delay > 0:
            self._stopping.wait(self.delay)
        if message.status != 200:
            return _error(message.status, message.status * 100 + 1, "stand-in injected failure")
        payload: dict[str, Any] = {
            "id": uuid.uuid4().hex[:12],
            "time": int(time.time()),
            "expires": int(time.time()) + 43200,
            "event": "message",
            "topic": topic,
            "message": message.message,
        }
        if title is not None:
            payload["title"] = title
        if priority != 3:
            payload["priority"] = priority
        if message.tags:
            payload["tags"] = message.tags
        return 200, payload


def _error(status: int, code: int, text: str) -> tuple[int, Any]:
    return status, {"code": code, "http": status, "error": text}


class _NtfyHandler(LoopbackHandler):
    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _serve(self) -> None:
        headers, raw = self.read_body()
        status, payload = self.loopback.owner.handle(self.command, self.path, headers, raw)
        self.send_json(status, json.dumps(payload).encode() + b"\n")  # ntfy ends lines with \n


StandinNtfy.handler = _NtfyHandler
StandinNtfy.thread_name = "standin-ntfy"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Stand-in ntfy server on loopback.")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--port-file", help="also write the URL to this file")
    parser.add_argument("--fail-status", type=int, help="answer every publish with this status")
    args = parser.parse_args(argv)
    ntfy = StandinNtfy(port=args.port, fail_status=args.fail_status)
    ntfy.start()
    return serve_until_signalled(ntfy.url, args.port_file, ntfy.stop)


if __name__ == "__main__":
    sys.exit(main())
