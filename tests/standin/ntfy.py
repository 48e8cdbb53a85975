"""A stand-in ntfy server on loopback, for tests and demos.

Publishing: `POST /<topic>` with the message as the body and `Title`/`Priority`/`Tags`/`Click`/
`Actions`/`Cache`/`Authorization` headers, or `POST /` with a JSON body (`topic`, `message`,
`title`, `priority`, `tags`, `click`, `actions`). More than three actions is a 400, as on ntfy.
Every publish attempt is recorded (`messages`), including ones answered with the injected
`fail_status` or refused for want of the token; accepted ones get an `id` (12 alphanumerics) and
a `time` (Unix seconds from the injectable `clock`) and go into a per-topic cache kept `cache_s`.

Subscribing: `GET /<topic>[,<topic>...]/json` streams one JSON object per line (chunked):
`open`, then cached messages chosen by `since=` (a message id: strictly after it, or the whole
cache if the id is unknown or has expired; a Unix time: at or after it; `all`; `latest`; `none`;
a duration such as `10m`; no `since` on a stream: nothing cached), then live messages, and a
`keepalive` every `keepalive_s`. `poll=1` answers the matching cached messages (all of them
without `since`) and closes. `drop_subscribers()` cuts every open stream as a vanishing server
would; `stop()` then `start()` brings the server back on the same port with its cache intact.

With `token=`, requests without `Authorization: Bearer <token>` get 403 (none sent) or 401
(another one), like ntfy with `auth-default-access: deny-all`; publishing to a topic in
`open_topics` needs no token (`ntfy access everyone TOPIC wo`). `DELETE /<topic>/<id>`
removes a message from the cache and sends streams a `message_delete` event.

stdlib only, so it also runs as a script under a bare `/usr/bin/python3`:

    python3 tests/standin/ntfy.py --port 0 [--port-file F] [--fail-status 500] [--token T]

prints `http://127.0.0.1:PORT` once listening and serves until SIGTERM/SIGINT;
`GET /_messages` returns the records as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import queue
import re
import secrets
import socket
import string
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Self

if __package__ in (None, ""):  # run as a script: make the `tests.standin` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.standin.loopback import (
    LoopbackHandler,
    Serving,
    serve_until_signalled,
)

_TOPIC_RE = re.compile(r"^[-_A-Za-z0-9]{1,64}$")
_PRIORITIES = {"min": 1, "low": 2, "default": 3, "high": 4, "max": 5, "urgent": 5}
_ID_ALPHABET = string.ascii_letters + string.digits
_DURATION_RE = re.compile(r"^(\d+)([smhd])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_ACTIONS_MAX = 3  # ntfy's actionsMax
_ACTION_TYPES = ("view", "http", "broadcast", "copy")


@dataclass(frozen=True)
class NtfyMessage:
    topic: str
    message: str
    title: str | None
    priority: int  # 1..5, 3 when not given
    tags: list[str]
    headers: dict[str, str]  # lower-case names; `authorization` is here if sent
    status: int  # what the stand-in answered: 200, the injected fail_status, 401 or 403
    time: float  # time.monotonic() at arrival
    click: str | None = None
    actions: list[dict[str, Any]] = field(default_factory=list)
    id: str = ""  # the ntfy message id, "" when not accepted
    unix_time: int = 0  # the message's `time` (from `clock`), 0 when not accepted


class _BadRequest(Exception):
    pass


def _new_id() -> str:
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(12))


def _parse_priority(value: object) -> int:
    if value is None or value == "":
        return 3
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 5:
        return value
    if isinstance(value, str):
        if value.lower() in _PRIORITIES:
            return _PRIORITIES[value.lower()]
        if value.isdigit() and 1 <= int(value) <= 5:
            return int(value)
    raise _BadRequest("invalid priority")


def _parse_tags(value: str | None) -> list[str]:
    return [t.strip() for t in (value or "").split(",") if t.strip()]


def _split_outside_quotes(text: str, sep: str) -> list[str]:
    """Split on `sep` except inside '...', "..." or {...}/[...] (lenient, so an unquoted JSON
    body such as `body={"q":"1","a":"b"}` survives)."""
    parts: list[str] = []
    current: list[str] = []
    quote: str | None = None
    depth = 0
    for ch in text:
        if quote is not None:
            if ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch in "{[":
            depth += 1
        elif ch in "}]" and depth > 0:
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    parts.append("".join(current))
    return parts


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def _parse_simple_action(text: str) -> dict[str, Any]:
    """One action of the header form: `http, Label, https://url, key=value, headers.X=y`."""
    action: dict[str, Any] = {}
    positional = ["action", "label", "url"]
    for raw in _split_outside_quotes(text, ","):
        part = raw.strip()
        if not part:
            continue
        key, eq, value = part.partition("=")
        if eq and re.fullmatch(r"[A-Za-z][\w.-]*", key.strip()):
            key = key.strip()
            if key.startswith("headers."):
                action.setdefault("headers", {})[key[len("headers.") :]] = _unquote(value)
            elif key.startswith("extras."):
                action.setdefault("extras", {})[key[len("extras.") :]] = _unquote(value)
            elif key == "clear":
                action["clear"] = _unquote(value).lower() in ("true", "yes", "1")
            else:
                action[key] = _unquote(value)
                if key in positional:
                    positional.remove(key)
        elif positional:
            action[positional.pop(0)] = _unquote(part)
        else:
            raise _BadRequest(f"invalid action {text!r}")
    return action


def _check_actions(actions: object) -> list[dict[str, Any]]:
    if not isinstance(actions, list) or not all(isinstance(a, dict) for a in actions):
        raise _BadRequest("invalid actions")
    if len(actions) > _ACTIONS_MAX:
        raise _BadRequest(f"too many actions, only {_ACTIONS_MAX} allowed")
    checked: list[dict[str, Any]] = []
    for given in actions:
        action = dict(given)
        kind = str(action.get("action", "")).lower()
        if kind not in _ACTION_TYPES or not action.get("label"):
            raise _BadRequest(f"invalid action {given!r}")
        if kind in ("view", "http") and not action.get("url"):
            raise _BadRequest(f"action {given!r} needs a url")
        action["action"] = kind
        action.setdefault("id", _new_id())
        checked.append(action)
    return checked


def _parse_actions_header(value: str | None) -> list[dict[str, Any]]:
    if value is None or not value.strip():
        return []
    if value.lstrip().startswith("["):
        try:
            return _check_actions(json.loads(value))
        except json.JSONDecodeError as exc:
            raise _BadRequest("invalid actions") from exc
    parts = [p for p in _split_outside_quotes(value, ";") if p.strip()]
    return _check_actions([_parse_simple_action(p) for p in parts])


@dataclass
class _Subscriber:
    topics: tuple[str, ...]
    connection: socket.socket
    queue: queue.Queue[dict[str, Any] | None] = field(default_factory=queue.Queue)


class StandinNtfy(Serving):
    """The stand-in ntfy server. Use as a context manager or call start()/stop().

    `fail_status`: answer every publish with this status (after recording it).
    `delay`: seconds slept before answering a publish, to simulate a hanging server.
    `token`: require `Authorization: Bearer <token>` on every request but `/_messages`.
    `cache_s`: how long accepted messages stay in the cache; `keepalive_s`: stream keepalives.
    `clock`: Unix time in seconds, for message times, `since=` and cache expiry.
    All may be changed while running.
    """

    def __init__(
        self,
        *,
        port: int = 0,
        fail_status: int | None = None,
        delay: float = 0.0,
        token: str | None = None,
        cache_s: float = 43200.0,
        keepalive_s: float = 45.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__("127.0.0.1", port, verbose=False)
        self.fail_status = fail_status
        self.delay = delay
        self.token = token
        self.cache_s = cache_s
        self.keepalive_s = keepalive_s
        self.clock = clock
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._messages: list[NtfyMessage] = []
        self._cache: dict[str, list[dict[str, Any]]] = {}
        self._subscribers: list[_Subscriber] = []
        self.deleted: list[tuple[str, str]] = []  # (topic, message id) of accepted DELETEs
        # Topics anyone may publish to without the token (ntfy: `ntfy access everyone T wo`).
        self.open_topics: set[str] = set()

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Self:
        """Start, or restart after stop() on the same port (cache and records are kept)."""
        self._stopping.clear()
        super().start()
        assert self._server is not None
        self.port = self._server.server_address[1]
        return self

    def stop(self) -> None:
        self.drop_subscribers()
        super().stop()

    def drop_subscribers(self) -> int:
        """Cut every open stream abruptly, as a server going away would; return how many."""
        with self._lock:
            dropped, self._subscribers = self._subscribers, []
            self._changed.notify_all()
        for subscriber in dropped:
            subscriber.queue.put(None)
            with contextlib.suppress(OSError):
                subscriber.connection.shutdown(socket.SHUT_RDWR)
        return len(dropped)

    # --- inspection --------------------------------------------------------------------------

    @property
    def messages(self) -> list[NtfyMessage]:
        with self._lock:
            return list(self._messages)

    @property
    def subscribers(self) -> int:
        with self._lock:
            return len(self._subscribers)

    def cached(self, topic: str) -> list[dict[str, Any]]:
        """The topic's cache as ntfy would replay it (expired messages removed)."""
        with self._lock:
            return list(self._prune(topic))

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

    def subscribers_on(self, topic: str) -> int:
        """How many open streams include `topic`."""
        with self._lock:
            return sum(1 for s in self._subscribers if topic in s.topics)

    def wait_for_subscriber_on(self, topic: str, timeout: float = 5.0) -> None:
        with self._changed:
            if not self._changed.wait_for(
                lambda: any(topic in s.topics for s in self._subscribers), timeout
            ):
                raise TimeoutError(f"no ntfy subscriber on {topic} within {timeout}s")

    def wait_for_subscribers(self, count: int, timeout: float = 5.0) -> None:
        """Block until at least `count` streams are open (their cached replay already queued)."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._subscribers) >= count, timeout):
                raise TimeoutError(
                    f"expected {count} ntfy subscribers within {timeout}s, "
                    f"got {len(self._subscribers)}"
                )

    def reset(self) -> None:
        """Forget the records and the cache (open streams stay open)."""
        with self._lock:
            self._messages.clear()
            self._cache.clear()

    # --- requests ----------------------------------------------------------------------------

    def _auth_error(self, headers: dict[str, str]) -> tuple[int, Any] | None:
        if self.token is None:
            return None
        given = headers.get("authorization")
        if given is None:
            return _error(403, 40301, "forbidden")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or value.strip() != self.token:
            return _error(401, 40101, "unauthorized")
        return None

    def _prune(self, topic: str) -> list[dict[str, Any]]:
        """The topic's live cache list with expired messages dropped. Call with the lock held."""
        cache = self._cache.setdefault(topic, [])
        horizon = self.clock() - self.cache_s
        cache[:] = [m for m in cache if m["time"] > horizon]
        return cache

    def handle(
        self, method: str, path: str, headers: dict[str, str], raw: bytes
    ) -> tuple[int, Any]:
        """Answer one non-streaming request with (status, JSON payload)."""
        parsed = urllib.parse.urlsplit(path)
        if method == "GET" and parsed.path == "/_messages":
            return 200, [asdict(m) for m in self.messages]
        delete = re.fullmatch(r"/([^/]+)/([^/]+)", parsed.path)
        if method == "DELETE" and delete is not None:
            return self._delete(delete[1], delete[2], headers)
        if method not in ("POST", "PUT"):
            return _error(404, 40401, "page not found")
        try:
            if parsed.path == "/":
                fields = _json_fields(raw)
            else:
                fields = _header_fields(parsed.path.strip("/"), headers, raw)
        except _BadRequest as exc:
            return _error(400, 40000, f"invalid request: {exc}")
        return self._publish(fields, headers)

    def _publish(self, fields: dict[str, Any], headers: dict[str, str]) -> tuple[int, Any]:
        refusal = None if fields["topic"] in self.open_topics else self._auth_error(headers)
        status = refusal[0] if refusal is not None else self.fail_status or 200
        now = int(self.clock())
        payload: dict[str, Any] = {
            "id": _new_id(),
            "time": now,
            "expires": now + int(self.cache_s),
            "event": "message",
            "topic": fields["topic"],
            "message": fields["message"],
        }
        for name in ("title", "click"):
            if fields[name] is not None:
                payload[name] = fields[name]
        if fields["priority"] != 3:
            payload["priority"] = fields["priority"]
        for name in ("tags", "actions", "attachment"):
            if fields[name]:
                payload[name] = fields[name]
        accepted = status == 200
        record = NtfyMessage(
            topic=fields["topic"],
            message=fields["message"],
            title=fields["title"],
            priority=fields["priority"],
            tags=fields["tags"],
            headers=headers,
            status=status,
            time=time.monotonic(),
            click=fields["click"],
            actions=fields["actions"],
            id=payload["id"] if accepted else "",
            unix_time=now if accepted else 0,
        )
        with self._changed:
            self._messages.append(record)
            if accepted:
                if fields["cache"]:
                    self._prune(fields["topic"]).append(payload)
                for subscriber in self._subscribers:
                    if fields["topic"] in subscriber.topics:
                        subscriber.queue.put(payload)
            self._changed.notify_all()
        if refusal is not None:
            return refusal
        if self.delay > 0:
            self._stopping.wait(self.delay)
        if status != 200:
            return _error(status, status * 100 + 1, "stand-in injected failure")
        return 200, payload

    def _delete(self, topic: str, ident: str, headers: dict[str, str]) -> tuple[int, Any]:
        """`DELETE /<topic>/<id>` (ntfy >= 2.16): the message leaves the cache, and streams
        get a `message_delete` event, on which phones remove the notification."""
        refusal = self._auth_error(headers)
        if refusal is not None:
            return refusal
        if not _TOPIC_RE.match(topic):
            return _error(400, 40000, f"invalid topic {topic!r}")
        now = int(self.clock())
        payload = {
            "id": _new_id(),
            "time": now,
            "event": "message_delete",
            "topic": topic,
            "sequence_id": ident,
        }
        with self._changed:
            cache = self._prune(topic)
            cache[:] = [m for m in cache if m["id"] != ident]
            self.deleted.append((topic, ident))
            for subscriber in self._subscribers:
                if topic in subscriber.topics:
                    subscriber.queue.put(payload)
            self._changed.notify_all()
        return 200, payload

    def select(
        self, topics: tuple[str, ...], since: str | None, poll: bool
    ) -> list[dict[str, Any]]:
        """The cached messages of `topics` that `since=` asks for. Call with the lock held."""
        cached = sorted((m for t in topics for m in self._prune(t)), key=lambda m: m["time"])
        if since is None:
            return cached if poll else []
        if since == "all":
            return cached
        if since == "none":
            return []
        if since == "latest":
            return cached[-1:]
        if since.isdigit():
            return [m for m in cached if m["time"] >= int(since)]
        duration = _DURATION_RE.match(since)
        if duration:
            start = self.clock() - int(duration[1]) * _SECONDS[duration[2]]
            return [m for m in cached if m["time"] >= start]
        for index, message in enumerate(cached):
            if message["id"] == since:
                return cached[index + 1 :]
        return cached  # the id has left the cache (or never was): replay all of it

    def subscribe(
        self, topics: tuple[str, ...], since: str | None, connection: socket.socket
    ) -> _Subscriber:
        """Register a stream and queue its cached replay, atomically with respect to publishes."""
        subscriber = _Subscriber(topics, connection)
        with self._changed:
            for message in self.select(topics, since, poll=False):
                subscriber.queue.put(message)
            self._subscribers.append(subscriber)
            self._changed.notify_all()
        return subscriber

    def unsubscribe(self, subscriber: _Subscriber) -> None:
        with self._changed:
            if subscriber in self._subscribers:
                self._subscribers.remove(subscriber)
            self._changed.notify_all()


MESSAGE_LIMIT = 4096  # ntfy's message-size-limit: a longer body (or binary) is an attachment


def _header_fields(topic: str, headers: dict[str, str], raw: bytes) -> dict[str, Any]:
    if not _TOPIC_RE.match(topic):
        raise _BadRequest(f"invalid topic {topic!r}")
    attachment = None
    try:
        message = raw.decode("utf-8")
    except UnicodeDecodeError:
        message = None
    if message is None or len(raw) > MESSAGE_LIMIT:
        # As ntfy does: the body is kept as a file and the message says so.
        name = "attachment.txt" if message is not None else "attachment.bin"
        attachment = {"name": name, "size": len(raw), "url": f"/file/{_new_id()}"}
        message = "You received a file: " + name
    return {
        "topic": topic,
        "message": message,
        "attachment": attachment,
        "title": headers.get("title") or headers.get("t"),
        "priority": _parse_priority(headers.get("priority") or headers.get("p")),
        "tags": _parse_tags(headers.get("tags") or headers.get("ta")),
        "click": headers.get("click"),
        "actions": _parse_actions_header(headers.get("actions")),
        "cache": (headers.get("cache") or "yes").lower() not in ("no", "0", "false"),
    }


def _json_fields(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw or b"null")
    except json.JSONDecodeError as exc:
        raise _BadRequest("body is not JSON") from exc
    if not isinstance(body, dict):
        raise _BadRequest("body is not a JSON object")
    topic = body.get("topic")
    if not isinstance(topic, str) or not _TOPIC_RE.match(topic):
        raise _BadRequest(f"invalid topic {topic!r}")
    tags = body.get("tags") or []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise _BadRequest("invalid tags")
    strings = {}
    for name in ("message", "title", "click"):
        value = body.get(name)
        if value is not None and not isinstance(value, str):
            raise _BadRequest(f"invalid {name}")
        strings[name] = value
    return {
        "topic": topic,
        "message": strings["message"] or "",
        "title": strings["title"],
        "priority": _parse_priority(body.get("priority")),
        "tags": tags,
        "click": strings["click"],
        "actions": _check_actions(body.get("actions") or []),
        "cache": body.get("cache", "yes") not in ("no", False),
        "attachment": None,
    }


def _error(status: int, code: int, text: str) -> tuple[int, Any]:
    return status, {"code": code, "http": status, "error": text}


def _line(payload: Any) -> bytes:
    return json.dumps(payload).encode() + b"\n"  # ntfy ends lines with \n


class _NtfyHandler(LoopbackHandler):
    @property
    def ntfy(self) -> StandinNtfy:
        owner: StandinNtfy = self.loopback.owner
        return owner

    def do_GET(self) -> None:
        parsed = urllib.parse.urlsplit(self.path)
        match = re.fullmatch(r"/([^/]+)/json", parsed.path)
        if match is None:
            self._serve()
            return
        headers, _ = self.read_body()
        query = dict(urllib.parse.parse_qsl(parsed.query))
        topics = tuple(match[1].split(","))
        if not all(_TOPIC_RE.match(t) for t in topics):
            self.send_json(*_encoded(_error(400, 40000, f"invalid topic {match[1]!r}")))
            return
        refusal = self.ntfy._auth_error(headers)
        if refusal is not None:
            self.send_json(*_encoded(refusal))
            return
        since = query.get("since")
        if query.get("poll", "").lower() in ("1", "yes", "true"):
            with self.ntfy._lock:
                selected = self.ntfy.select(topics, since, poll=True)
            body = b"".join(_line(m) for m in selected)
            self.send_json(200, body, content_type="application/x-ndjson; charset=utf-8")
            return
        self._stream(topics, since)

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def _serve(self) -> None:
        headers, raw = self.read_body()
        status, payload = self.ntfy.handle(self.command, self.path, headers, raw)
        self.send_json(status, _line(payload))

    def _stream(self, topics: tuple[str, ...], since: str | None) -> None:
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson; charset=utf-8")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        ntfy = self.ntfy
        subscriber = ntfy.subscribe(topics, since, self.connection)
        topic = ",".join(topics)
        try:
            now = int(ntfy.clock())
            self._chunk(_line({"id": _new_id(), "time": now, "event": "open", "topic": topic}))
            while True:
                try:
                    item = subscriber.queue.get(timeout=max(ntfy.keepalive_s, 0.01))
                except queue.Empty:
                    now = int(ntfy.clock())
                    keepalive = {"id": _new_id(), "time": now, "event": "keepalive", "topic": topic}
                    self._chunk(_line(keepalive))
                    continue
                if item is None:  # dropped: end without the final chunk, like a lost server
                    return
                self._chunk(_line(item))
        except OSError:
            return
        finally:
            ntfy.unsubscribe(subscriber)

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


def tap(action: dict[str, Any], timeout: float = 10.0) -> int:
    """Do exactly what a phone does when an `http` action button is tapped: send the
    action's method (POST by default) to its url with its headers and body. Returns the
    HTTP status."""
    import urllib.error
    import urllib.request

    assert action["action"] == "http", action
    request = urllib.request.Request(
        action["url"],
        data=str(action.get("body", "")).encode("utf-8"),
        method=str(action.get("method") or "POST"),
        headers={str(k): str(v) for k, v in (action.get("headers") or {}).items()},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return int(exc.code)


def publish(url: str, topic: str, body: bytes | str, token: str | None = None) -> str:
    """What the web app does when the operator types a message and sends it: `PUT` the
    text to the topic. Returns the new message's id."""
    import urllib.request

    data = body.encode("utf-8") if isinstance(body, str) else body
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(f"{url}/{topic}", data=data, method="PUT", headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        ident: str = json.loads(response.read())["id"]
        return ident


def _encoded(answer: tuple[int, Any]) -> tuple[int, bytes]:
    return answer[0], _line(answer[1])


StandinNtfy.handler = _NtfyHandler
StandinNtfy.thread_name = "standin-ntfy"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Stand-in ntfy server on loopback.")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--port-file", help="also write the URL to this file")
    parser.add_argument("--fail-status", type=int, help="answer every publish with this status")
    parser.add_argument("--token", help="require Authorization: Bearer TOKEN")
    parser.add_argument("--keepalive", type=float, default=45.0, help="seconds between keepalives")
    args = parser.parse_args(argv)
    ntfy = StandinNtfy(
        port=args.port, fail_status=args.fail_status, token=args.token, keepalive_s=args.keepalive
    )
    ntfy.start()
    return serve_until_signalled(ntfy.url, args.port_file, ntfy.stop)


if __name__ == "__main__":
    sys.exit(main())
