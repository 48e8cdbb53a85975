"""A stand-in ntfy server on loopback, for tests and demos.

Accepts publishes the way ntfy.sh does: `POST`/`PUT /<topic>` with the message as the body and
`Title`/`Priority`/`Tags` headers (or their `X-` and short aliases, or `?title=` query
parameters), and JSON publishes `POST /` with `{"topic": ..., "message": ..., ...}`. Every publish
attempt is recorded, including ones answered with the injected `fail_status`.

stdlib only, so it also runs as a script under a bare `/usr/bin/python3`:

    python3 tests/standin/ntfy.py --port 0 [--port-file F] [--fail-status 500] [--delay S]

prints `http://127.0.0.1:PORT` once listening and serves until SIGTERM/SIGINT;
`GET /_messages` returns the records as JSON, `POST /_reset` forgets them.
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
from urllib.parse import parse_qs, urlsplit

if __package__ in (None, ""):  # run as a script: make the `tests.standin` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.standin.loopback import (
    LoopbackHandler,
    Serving,
    serve_until_signalled,
)

_TOPIC_RE = re.compile(r"^[-_A-Za-z0-9]{1,64}$")
_PRIORITIES = {"min": 1, "low": 2, "default": 3, "high": 4, "max": 5, "urgent": 5}
# Header and query aliases ntfy accepts, in ntfy's order of preference.
_ALIASES = {
    "title": ("x-title", "title", "ti", "t"),
    "priority": ("x-priority", "priority", "prio", "p"),
    "tags": ("x-tags", "tags", "tag", "ta"),
}


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


def _parse_tags(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    items = value if isinstance(value, list) else value.split(",")
    return [t.strip() for t in items if t.strip()]


class StandinNtfy(Serving):
    """The stand-in ntfy server. Use as a context manager or call start()/stop().

    `fail_status`: answer every publish with this status (after recording it).
    `delay`: seconds slept before answering, to simulate a hanging server.
    Both may be changed while running.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        fail_status: int | None = None,
        delay: float = 0.0,
        verbose: bool = False,
    ) -> None:
        super().__init__(host, port, verbose)
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
        self, method: str, target: str, headers: dict[str, str], raw: bytes
    ) -> tuple[int, Any]:
        """Answer one request with (status, JSON payload)."""
        split = urlsplit(target)
        path = split.path
        if method == "GET" and path == "/_messages":
            return 200, [asdict(m) for m in self.messages]
        if method == "POST" and path == "/_reset":
            self.reset()
            return 200, {"reset": True}
        if method not in ("POST", "PUT"):
            return _error(404, 40401, "page not found")
        try:
            message = self._publish(path, parse_qs(split.query), headers, raw)
        except _BadRequest as exc:
            return _error(400, 40000, str(exc))
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
            "topic": message.topic,
            "message": message.message,
        }
        if message.title is not None:
            payload["title"] = message.title
        if message.priority != 3:
            payload["priority"] = message.priority
        if message.tags:
            payload["tags"] = message.tags
        return 200, payload

    def _publish(
        self, path: str, query: dict[str, list[str]], headers: dict[str, str], raw: bytes
    ) -> NtfyMessage:
        fields: dict[str, Any]
        if path == "/":
            # JSON publishing: everything is in the body.
            try:
                fields = json.loads(raw)
            except ValueError:
                raise _BadRequest("invalid request: body must be JSON") from None
            if not isinstance(fields, dict):
                raise _BadRequest("invalid request: body must be a JSON object")
            topic = str(fields.get("topic", ""))
            text = str(fields.get("message", ""))
            title = fields.get("title")
            priority = _parse_priority(str(fields["priority"]) if "priority" in fields else None)
            tags = _parse_tags(fields.get("tags"))
        else:
            topic = path.strip("/")

            def lookup(name: str) -> str | None:
                for alias in _ALIASES[name]:
                    if alias in headers:
                        return headers[alias]
                    if alias in query:
                        return query[alias][0]
                return None

            text = raw.decode("utf-8", errors="replace")
            title = lookup("title")
            priority = _parse_priority(lookup("priority"))
            tags = _parse_tags(lookup("tags"))
        if not _TOPIC_RE.match(topic):
            raise _BadRequest(f"invalid topic {topic!r}")
        return NtfyMessage(
            topic=topic,
            message=text,
            title=None if title is None else str(title),
            priority=priority,
            tags=tags,
            headers=headers,
            status=self.fail_status or 200,
            time=time.monotonic(),
        )


def _error(status: int, code: int, text: str) -> tuple[int, Any]:
    return status, {"code": code, "http": status, "error": text}


class _NtfyHandler(LoopbackHandler):
    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def _serve(self) -> None:
        headers, raw = self.read_body()
        status, payload = self.loopback.owner.handle(self.command, self.path, headers, raw)
        self.send_json(status, json.dumps(payload).encode() + b"\n")  # ntfy ends lines with \n


StandinNtfy.handler = _NtfyHandler
StandinNtfy.thread_name = "standin-ntfy"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Stand-in ntfy server on loopback.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--port-file", help="also write the URL to this file")
    parser.add_argument("--fail-status", type=int, help="answer every publish with this status")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--verbose", action="store_true", help="log requests to stderr")
    args = parser.parse_args(argv)
    ntfy = StandinNtfy(
        host=args.host,
        port=args.port,
        fail_status=args.fail_status,
        delay=args.delay,
        verbose=args.verbose,
    )
    ntfy.start()
    return serve_until_signalled(ntfy.url, args.port_file, ntfy.stop)


if __name__ == "__main__":
    sys.exit(main())
