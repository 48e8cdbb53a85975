"""A stand-in for the Anthropic Messages API, served on loopback for tests and demos.

The real `anthropic` SDK (httpx2 underneath, so respx cannot intercept it) is pointed at this
server with `base_url=`. It answers like the real API: success bodies with full `usage` including
simulated prompt caching, error bodies, `request-id`, rate-limit and `retry-after` headers.

stdlib only, on purpose: it also runs as a script under a bare `/usr/bin/python3` (in a container,
for system tests and demos):

    python3 tests/standin/api.py --port 0 [--port-file F] [--api-key K]

prints `http://127.0.0.1:PORT` once listening and serves until SIGTERM/SIGINT. Other processes
steer it through `POST /_script`, `GET /_requests`, `POST /_clock` (`{"advance": S}`: the
prompt cache's clock moves S seconds on) and `POST /_reset`.

It serves what relay and Claude Code use: `POST /v1/messages` (plain JSON, or SSE for
`"stream": true`) and `HEAD /`. Choosing the answer (first match wins):
  1. the script queue (`script(...)` or `POST /_script`), one action per request;
  2. the `responder` callable, when it returns an action;
  3. directives in the last user message: `[[error: STATUS [TYPE [MESSAGE]]]]` (or
     `[[error: credit]]`, `[[error: workspace]]`), `[[reply: TEXT]]`, `[[tool: NAME {JSON
     input}]]` (a tool_use) — the last one wins — plus `[[delay: S]]` (answer S seconds late)
     and `[[trickle: S]]` (headers at once, then the body one byte every S seconds);
  4. `"ack: "` + the first 80 characters of the last user message, whitespace collapsed.
Auth, size and body validation happen before any of these (so a malformed request consumes
nothing), and so does the context window (`context_window`: "prompt is too long").
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import sys
import threading
import time
import traceback
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeAlias, cast

if __package__ in (None, ""):  # run as a script: make the `tests.standin` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.standin.loopback import (
    LoopbackHandler,
    Serving,
    serve_until_signalled,
)

CREDIT_BALANCE_MESSAGE = (
    "Your credit balance is too low to access the Anthropic API. "
    "Please go to Plans & Billing to upgrade or purchase credits."
)
# The Console's workspace spend limit: a plain 400 naming the date access returns.
WORKSPACE_LIMIT_MESSAGE = (
    "You have reached your specified workspace API usage limits. You will regain access on {until}."
)
# The real Messages API refuses bodies over 32 MB with 413 (docs: api/errors).
MAX_REQUEST_BYTES = 32 * 1024 * 1024

# Error type the real API uses for each status (platform.claude.com/docs/en/api/errors).
ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_DEFAULT_MESSAGES: dict[str, str] = {
    "invalid_request_error": "Invalid request",
    "authentication_error": "invalid x-api-key",
    "billing_error": "There is an issue with your billing information.",
    "permission_error": "Your API key does not have permission to use the specified resource.",
    "not_found_error": "Not found",
    "request_too_large": "Request exceeds the maximum allowed number of bytes.",
    "rate_limit_error": "This request would exceed your organization's rate limit. "
    "Please try again later.",
    "api_error": "Internal server error",
    "timeout_error": "Request timed out",
    "overloaded_error": "Overloaded",
}
# http.server has no reason phrase for 529; the SDK does not care, curl -v readers do.
_REASONS = {529: "Overloaded"}

# Real API: each breakpoint looks back at most 20 blocks for an earlier cache entry.
CACHE_LOOKBACK_BLOCKS = 20
MAX_BREAKPOINTS = 4
# Cache entry lifetimes by `cache_control.ttl` (absent: 5 minutes), refreshed on each hit.
CACHE_TTL_S = {"5m": 300.0, "1h": 3600.0}
TTL_ORDER_MESSAGE = (
    "A cache_control block with ttl='1h' must not come after a block with ttl='5m'. "
    "Note that blocks are processed in the following order: `tools`, `system`, `messages`."
)

_MESSAGES_FIELDS = frozenset(
    [
        "model",
        "max_tokens",
        "messages",
        "system",
        "cache_control",
        "container",
        "diagnostics",
        "inference_geo",
        "metadata",
        "output_config",
        "service_tier",
        "speed",
        "stop_sequences",
        "stream",
        "thinking",
        "tool_choice",
        "tools",
        "context_management",
        "safeguards",  # sent by Claude Code 2.1.332 in auto permission mode
    ]
)
_REPLY_RE = re.compile(r"\[\[reply: ?(.*?)\]\]", re.DOTALL)
_TOOL_RE = re.compile(r"\[\[tool:\s*(\w+)\s+(\{.*?\})\]\]", re.DOTALL)
_ERROR_RE = re.compile(r"\[\[error:\s*(.*?)\]\]", re.DOTALL)
_DELAY_RE = re.compile(r"\[\[delay:\s*([0-9]*\.?[0-9]+)\s*\]\]")
_TRICKLE_RE = re.compile(r"\[\[trickle:\s*([0-9]*\.?[0-9]+)\s*\]\]")


# --- actions -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """Answer 200 with this text (truncated to `max_tokens` like the real model), and with
    `tool` ((name, input)) a tool_use block after it: stop_reason becomes "tool_use"."""

    text: str
    stop_reason: str = "end_turn"
    tool: tuple[str, dict[str, Any]] | None = None


@dataclass(frozen=True)
class Fail:
    """Answer with an API error. `error_type` defaults from the status (529 → overloaded_error)."""

    status: int
    error_type: str | None = None
    message: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    error_code: str | None = None  # → error.details.error_code (the SDK's `.error_code`)
    retry_after: float | None = None  # → `retry-after` header, seconds


@dataclass(frozen=True)
class Delay:
    """Sleep, then do `then` (None: answer as if this script entry were not there)."""

    seconds: float
    then: Action | None = None


@dataclass(frozen=True)
class Trickle:
    """Answer `then` (None: as if this entry were not there), but send only the status line
    and headers at once, then the body one byte every `interval` seconds, until it is done,
    the client goes away or the server stops: never silent for long, and never finished."""

    interval: float
    then: Action | None = None


@dataclass(frozen=True)
class Drop:
    """Close the connection without answering (the SDK raises APIConnectionError)."""


Action: TypeAlias = Reply | Fail | Delay | Trickle | Drop
Responder: TypeAlias = Callable[[dict[str, Any]], Action | None]


def without_breakpoints(messages: list[dict[str, Any]]) -> str:
    """Messages as canonical JSON without `cache_control`: only the breakpoint may move between
    two calls of one conversation, everything else must repeat byte for byte."""
    stripped = [
        {
            **m,
            "content": [{k: v for k, v in b.items() if k != "cache_control"} for b in m["content"]],
        }
        for m in messages
    ]
    return json.dumps(stripped, sort_keys=True)


def credit_balance_too_low() -> Fail:
    """The real "out of credit" answer: a plain 400, no error_code, not retried by the SDK."""
    return Fail(400, "invalid_request_error", CREDIT_BALANCE_MESSAGE)


def workspace_limit_reached(until: str = "2026-12-01 at 00:00 UTC") -> Fail:
    """The Console's workspace spend limit: a plain 400 like the credit one, naming a date."""
    return Fail(400, "invalid_request_error", WORKSPACE_LIMIT_MESSAGE.format(until=until))


def prompt_too_long(tokens: int, maximum: int) -> Fail:
    """What the real API answers when the prompt does not fit the model's context window."""
    return Fail(
        400, "invalid_request_error", f"prompt is too long: {tokens} tokens > {maximum} maximum"
    )


def overloaded(retry_after: float | None = None) -> Fail:
    return Fail(529, "overloaded_error", retry_after=retry_after)


def rate_limited(retry_after: float | None = None) -> Fail:
    return Fail(429, "rate_limit_error", retry_after=retry_after)


def action_from_json(item: Any) -> Action:
    """Decode one `POST /_script` entry: `{"reply": "text"}` or `{"fail": {"status": 529,
    "type": "overloaded_error", "message": "...", "headers": {"retry-after-ms": "100"},
    "error_code": "...", "retry_after": 0.1}}` (all but "status" optional)."""
    if not isinstance(item, dict):
        raise ValueError(f"script entry must be an object: {item!r}")
    if "reply" in item:
        return Reply(str(item["reply"]))
    fail = item.get("fail")
    if isinstance(fail, dict):
        headers = fail.get("headers") or {}
        retry_after = fail.get("retry_after")
        return Fail(
            status=int(fail["status"]),
            error_type=fail.get("type"),
            message=fail.get("message"),
            headers={str(k): str(v) for k, v in headers.items()},
            error_code=fail.get("error_code"),
            retry_after=None if retry_after is None else float(retry_after),
        )
    raise ValueError(f"unknown script entry: {item!r}")


# --- records -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str  # without the query string
    headers: dict[str, str]  # lower-case names
    body: Any  # parsed JSON, or None when empty or not JSON
    status: int | None  # None while still being answered, 0 when dropped
    time: float  # time.monotonic() at arrival, for measuring retry gaps

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "path": self.path,
            "headers": self.headers,
            "body": self.body,
            "status": self.status,
            "time": self.time,
        }


@dataclass
class _Response:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"
    trickle: float | None = None  # seconds between body bytes (Trickle)


@dataclass(frozen=True)
class _Entry:
    """A cached prefix: live until `expires` (cache clock seconds); a hit extends it by `ttl`."""

    expires: float
    ttl: float


class _Invalid(Exception):
    """A request the real API would answer with 400 invalid_request_error."""


# --- request model: render order, tokens, cache breakpoints ---------------------------------


@dataclass(frozen=True)
class _Block:
    key: str  # canonical JSON of the block and its position, cache_control removed
    tokens: int
    cache_control: dict[str, Any] | None


def _tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _block(where: dict[str, Any], block: dict[str, Any]) -> _Block:
    bare = {k: v for k, v in block.items() if k != "cache_control"}
    text = bare.get("text")
    tokens = _tokens(text) if isinstance(text, str) else _tokens(_canonical(bare))
    return _Block(_canonical({**where, "block": bare}), tokens, block.get("cache_control"))


def _check_cache_control(where: str, value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, dict) or value.get("type") != "ephemeral":
        raise _Invalid(f"{where}.cache_control.type: Input should be 'ephemeral'")
    if value.get("ttl") not in (None, "5m", "1h"):
        raise _Invalid(f"{where}.cache_control.ttl: Input should be '5m' or '1h'")


def _content_blocks(where: str, content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        if not content:
            raise _Invalid(f"{where}: text content blocks must be non-empty")
        return [{"type": "text", "text": content}]
    if not isinstance(content, list) or not content:
        raise _Invalid(f"{where}: Input should be a non-empty string or list of content blocks")
    for j, block in enumerate(content):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise _Invalid(f"{where}.{j}.type: Field required")
        if block["type"] == "text" and not (isinstance(block.get("text"), str) and block["text"]):
            raise _Invalid(f"{where}.{j}: text content blocks must be non-empty")
        _check_cache_control(f"{where}.{j}", block.get("cache_control"))
    return cast(list[dict[str, Any]], content)


def _parse(body: Any) -> list[_Block]:
    """Validate like the real API and return the prompt in render order: tools → system →
    messages."""
    if not isinstance(body, dict):
        raise _Invalid("Input should be a valid dictionary")
    for name in body:
        if name not in _MESSAGES_FIELDS:
            # Also how API version 2026-10-21 rejects temperature/top_p/top_k.
            raise _Invalid(f"{name}: Extra inputs are not permitted")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise _Invalid("model: Field required")
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        raise _Invalid("max_tokens: Field required")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 0:
        raise _Invalid("max_tokens: Input should be a valid integer >= 0")
    if body.get("stream") not in (None, True, False):
        raise _Invalid("stream: Input should be a valid boolean")
    _check_cache_control("cache_control", body.get("cache_control"))

    blocks: list[_Block] = []
    tools = body.get("tools") or []
    if not isinstance(tools, list):
        raise _Invalid("tools: Input should be a valid list")
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise _Invalid(f"tools.{i}: Input should be a valid dictionary")
        _check_cache_control(f"tools.{i}", tool.get("cache_control"))
        blocks.append(_block({"tool": i}, tool))

    system = body.get("system")
    if isinstance(system, str):
        if system:
            blocks.append(_block({"system": 0}, {"type": "text", "text": system}))
    elif isinstance(system, list):
        for j, block in enumerate(system):
            if not isinstance(block, dict) or block.get("type") != "text":
                raise _Invalid(f"system.{j}.type: Input should be 'text'")
            if not isinstance(block.get("text"), str) or not block["text"]:
                raise _Invalid("system: text content blocks must be non-empty")
            _check_cache_control(f"system.{j}", block.get("cache_control"))
            blocks.append(_block({"system": j}, block))
    elif system is not None:
        raise _Invalid("system: Input should be a valid string or list of text blocks")

    messages = body.get("messages")
    if messages is None:
        raise _Invalid("messages: Field required")
    if not isinstance(messages, list):
        raise _Invalid("messages: Input should be a valid list")
    if not messages:
        raise _Invalid("messages: at least one message is required")
    previous = None
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _Invalid(f"messages.{i}: Input should be a valid dictionary")
        role = message.get("role")
        if role == "system":
            # Claude Code sends mid-conversation system entries; they take no part in the
            # user/assistant alternation.
            for block in _content_blocks(f"messages.{i}.content", message.get("content")):
                blocks.append(_block({"message": i, "role": role}, block))
            continue
        if role not in ("user", "assistant"):
            raise _Invalid(f"messages.{i}.role: Input should be 'user', 'assistant' or 'system'")
        if i == 0 and role != "user":
            raise _Invalid('messages: first message must use the "user" role')
        if role == previous:
            raise _Invalid(
                'messages: roles must alternate between "user" and "assistant", '
                f'but found multiple "{role}" roles in a row'
            )
        previous = role
        for block in _content_blocks(f"messages.{i}.content", message.get("content")):
            blocks.append(_block({"message": i, "role": role}, block))

    breakpoints = sum(1 for b in blocks if b.cache_control is not None)
    if body.get("cache_control") is not None and blocks[-1].cache_control is None:
        breakpoints += 1  # automatic caching takes one of the four slots
    if breakpoints > MAX_BREAKPOINTS:
        raise _Invalid(
            f"A maximum of {MAX_BREAKPOINTS} blocks with cache_control may be provided. "
            f"Found {breakpoints}."
        )
    # Longer-lived entries first, like the real API: a 1 h breakpoint after a 5 m one is refused.
    seen_5m = False
    for control in [*(b.cache_control for b in blocks), body.get("cache_control")]:
        if control is None:
            continue
        if _ttl(control) == "1h" and seen_5m:
            raise _Invalid(TTL_ORDER_MESSAGE)
        seen_5m = seen_5m or _ttl(control) == "5m"
    return blocks


def _ttl(control: dict[str, Any]) -> str:
    return str(control.get("ttl") or "5m")


def _last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body["messages"]):
        if message["role"] == "user":
            content = message["content"]
            if isinstance(content, str):
                return content
            return "\n".join(
                b["text"] for b in content if b.get("type") == "text" and isinstance(b["text"], str)
            )
    return ""


def directive_action(text: str) -> Action:
    """The action the `[[...]]` directives in `text` ask for, else the default ack reply.

    When several are there, the last one wins: Claude Code merges a user message whose
    turn failed into the next one, and the newest instruction is the one meant."""
    action: Action
    found = [
        (m.start(), kind, m)
        for kind, pattern in (("error", _ERROR_RE), ("reply", _REPLY_RE), ("tool", _TOOL_RE))
        for m in pattern.finditer(text)
    ]
    if not found:
        action = Reply("ack: " + " ".join(text.split())[:80])
    else:
        _, kind, match = max(found, key=lambda f: f[0])
        if kind == "error":
            action = _error_directive(match.group(1))
        elif kind == "reply":
            action = Reply(match.group(1))
        else:
            action = Reply("", tool=(match.group(1), json.loads(match.group(2))))
    trickle = _TRICKLE_RE.search(text)
    if trickle:
        action = Trickle(float(trickle.group(1)), action)
    delay = _DELAY_RE.search(text)
    return Delay(float(delay.group(1)), action) if delay else action


def _error_directive(argument: str) -> Fail:
    parts = argument.split(maxsplit=2)
    if parts and parts[0] == "credit":
        return credit_balance_too_low()
    if parts and parts[0] == "workspace":
        return workspace_limit_reached()
    try:
        status = int(parts[0])
    except (IndexError, ValueError):
        return Fail(500, "api_error", f"stand-in: bad error directive {argument!r}")
    return Fail(
        status,
        parts[1] if len(parts) > 1 else None,
        parts[2] if len(parts) > 2 else None,
    )


def _sse(message: dict[str, Any]) -> bytes:
    """`message` as the event stream the real API sends for `"stream": true`: the message
    with empty content, one start/delta/stop triple per text block, then the stop reason
    and the output tokens."""
    usage = message["usage"]
    start = {
        **message,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {**usage, "output_tokens": 1},
    }
    events: list[tuple[str, dict[str, Any]]] = [("message_start", {"message": start})]
    events.append(("ping", {}))
    for index, block in enumerate(message["content"]):
        if block["type"] == "tool_use":
            start_block = {**block, "input": {}}
            delta_type, key, payload = (
                "input_json_delta",
                "partial_json",
                json.dumps(block["input"]),
            )
        else:
            start_block = {"type": "text", "text": ""}
            delta_type, key, payload = "text_delta", "text", block["text"]
        events.append(("content_block_start", {"index": index, "content_block": start_block}))
        for at in range(0, len(payload), 64):  # several deltas, as the real stream sends
            delta = {"type": delta_type, key: payload[at : at + 64]}
            events.append(("content_block_delta", {"index": index, "delta": delta}))
        events.append(("content_block_stop", {"index": index}))
    events.append(
        (
            "message_delta",
            {
                "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                "usage": {"output_tokens": usage["output_tokens"]},
            },
        )
    )
    events.append(("message_stop", {}))
    return b"".join(
        f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n".encode()
        for name, data in events
    )


def _new_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:24]


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value).encode()


# --- the server ----------------------------------------------------------------------------


class StandinAPI(Serving):
    """The stand-in Messages API. Use as a context manager or call start()/stop().

    `api_key`: when set, any other key gets 401 (otherwise any non-empty key is accepted).
    `delay`: seconds slept before answering every /v1 request (mutable while running).
    `responder`: called with the parsed body of each valid Messages request when the script queue
    is empty; return an action, or None to fall through to directives and the default reply.
    `context_window`: prompts of more tokens get the real 400 "prompt is too long" (None: no
    limit); `max_request_bytes`: larger bodies get 413 request_too_large (both mutable).
    `clock`: the seconds cache entries expire on (5 m and 1 h TTLs); `advance_clock()` or
    `POST /_clock {"advance": S}` moves it on, so a test or benchmark can skip an hour at once.
    """

    def __init__(
        self,
        *,
        port: int = 0,
        api_key: str | None = None,
        delay: float = 0.0,
        responder: Responder | None = None,
        context_window: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__("127.0.0.1", port, verbose=False)
        self.api_key = api_key
        self.delay = delay
        self.responder = responder
        self.context_window = context_window
        self.max_request_bytes = MAX_REQUEST_BYTES
        self._lock = threading.Lock()
        self._script: deque[Action] = deque()
        self._records: list[RecordedRequest] = []
        self.clock = clock
        self._clock_offset = 0.0
        self._cache: dict[bytes, _Entry] = {}

    # steering and inspection

    def advance_clock(self, seconds: float) -> float:
        """Move the cache clock on by `seconds`; returns the total offset."""
        with self._lock:
            self._clock_offset += seconds
            return self._clock_offset

    def cache_now(self) -> float:
        """The time cache entries expire by: `clock()` plus every `advance_clock()` so far."""
        return self.clock() + self._clock_offset

    def script(self, *actions: Action) -> None:
        """Queue actions; each Messages request consumes one, before any other rule."""
        with self._lock:
            self._script.extend(actions)

    def pending_script(self) -> int:
        with self._lock:
            return len(self._script)

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of every request so far, except the `/_` control endpoints."""
        with self._lock:
            return list(self._records)

    def message_calls(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == "POST" and r.path == "/v1/messages"]

    def reset(self) -> None:
        """Forget records, script, prompt cache and cache clock offset."""
        with self._lock:
            self._records.clear()
            self._script.clear()
            self._cache.clear()
            self._clock_offset = 0.0

    # request handling (called from handler threads)

    def _record(self, record: RecordedRequest) -> None:
        with self._lock:
            self._records.append(record)

    def _finish(self, record: RecordedRequest, status: int) -> None:
        with self._lock:
            # Found by identity: reset() may have emptied or refilled the list meanwhile.
            for i in range(len(self._records) - 1, -1, -1):
                if self._records[i] is record:
                    self._records[i] = replace(record, status=status)
                    break

    def pause(self, seconds: float) -> bool:
        """Sleep; True (at once) when the server is stopping."""
        return self._stopping.wait(seconds)

    def handle(
        self, method: str, path: str, headers: dict[str, str], raw: bytes
    ) -> _Response | None:
        """Answer one request; None means drop the connection."""
        if path.startswith("/_"):
            return self._control(method, path, raw)
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = None
            bad_json = True
        else:
            bad_json = False
        record = RecordedRequest(method, path, headers, body, None, time.monotonic())
        self._record(record)
        try:
            response = self._answer(method, path, headers, body, bad_json, len(raw))
        except Exception as exc:
            # A bug here should fail the test loudly, not look like a network problem.
            traceback.print_exc()
            response = self._error(Fail(500, "api_error", f"stand-in crashed: {exc!r}"))
        self._finish(record, 0 if response is None else response.status)
        return response

    def _answer(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        body: Any,
        bad_json: bool,
        size: int,
    ) -> _Response | None:
        if self.delay > 0:
            self.pause(self.delay)
        key = headers.get("x-api-key") or headers.get("authorization", "").removeprefix("Bearer ")
        if not key:
            return self._error(Fail(401, message="x-api-key header is required"))
        if self.api_key is not None and key != self.api_key:
            return self._error(Fail(401, message="invalid x-api-key"))
        if not headers.get("anthropic-version"):
            return self._error(Fail(400, message="anthropic-version: header is required"))
        if method != "POST" or path != "/v1/messages":
            return self._error(Fail(404, message=f"Not found: {method} {path}"))
        if size > self.max_request_bytes:
            return self._error(Fail(413))
        if bad_json:
            return self._error(
                Fail(400, message="There was an error parsing the body of your request.")
            )
        try:
            blocks = _parse(body)
        except _Invalid as exc:
            return self._error(Fail(400, message=str(exc)))
        prompt = sum(b.tokens for b in blocks)
        if self.context_window is not None and prompt > self.context_window:
            return self._error(prompt_too_long(prompt, self.context_window))

        with self._lock:
            action: Action | None = self._script.popleft() if self._script else None
        if action is None:
            action = self._fallback(body)
        trickle: float | None = None
        while isinstance(action, Delay | Trickle):
            if isinstance(action, Delay):
                self.pause(action.seconds)
            else:
                trickle = action.interval
            action = action.then if action.then is not None else self._fallback(body)
        if isinstance(action, Drop):
            return None
        response = (
            self._error(action) if isinstance(action, Fail) else self._message(body, blocks, action)
        )
        response.trickle = trickle
        return response

    def _fallback(self, body: dict[str, Any]) -> Action:
        if self.responder is not None:
            action = self.responder(body)
            if action is not None:
                return action
        return directive_action(_last_user_text(body))

    def _message(self, body: dict[str, Any], blocks: list[_Block], reply: Reply) -> _Response:
        text, stop_reason = reply.text, reply.stop_reason
        max_tokens: int = body["max_tokens"]
        if _tokens(text) > max_tokens:
            text, stop_reason = text[: max_tokens * 4], "max_tokens"
        uncached, read, created_5m, created_1h = self._cache_usage(body, blocks)
        content: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
        if reply.tool is not None:
            name, tool_input = reply.tool
            content.append(
                {"type": "tool_use", "id": _new_id("toolu_01"), "name": name, "input": tool_input}
            )
            stop_reason = "tool_use"
        message = {
            "id": _new_id("msg_01"),
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": {
                "input_tokens": uncached,
                "output_tokens": _tokens(text),
                "cache_creation_input_tokens": created_5m + created_1h,
                "cache_read_input_tokens": read,
                "cache_creation": {
                    "ephemeral_5m_input_tokens": created_5m,
                    "ephemeral_1h_input_tokens": created_1h,
                },
                "service_tier": "standard",
            },
        }
        if body.get("stream"):
            return _Response(
                200, _sse(message), self._headers(_new_id("req_011C")), "text/event-stream"
            )
        return self._ok(message)

    def _cache_usage(self, body: dict[str, Any], blocks: list[_Block]) -> tuple[int, int, int, int]:
        """(input_tokens, cache_read, cache_write_5m, cache_write_1h) for this request.

        The cache holds hashes of prefixes that ended at a breakpoint, each until its TTL runs
        out. The request reads the longest live prefix within the lookback window of one of its
        breakpoints (refreshing that entry's TTL), writes everything from there up to its last
        breakpoint (1 h writes up to the last `1h` breakpoint, 5 m writes after it, since 1 h
        ones come first), and pays full price for the rest. Afterwards every one of its
        breakpoints is a live entry, for at least its own TTL from now.
        """
        cumulative: list[int] = []
        digests: list[bytes] = []
        running, digest = 0, hashlib.sha256(body["model"].encode()).digest()  # model-scoped
        for block in blocks:
            running += block.tokens
            digest = hashlib.sha256(digest + block.key.encode()).digest()
            cumulative.append(running)
            digests.append(digest)

        controls: dict[int, dict[str, Any]] = {
            i: block.cache_control
            for i, block in enumerate(blocks)
            if block.cache_control is not None
        }
        automatic = body.get("cache_control")
        if automatic is not None and (len(blocks) - 1) not in controls:
            controls[len(blocks) - 1] = automatic
        breakpoints = sorted(i for i in controls if cumulative[i] >= 1)
        if not breakpoints:
            return running, 0, 0, 0

        with self._lock:
            now = self.clock() + self._clock_offset
            for stale in [d for d, entry in self._cache.items() if entry.expires <= now]:
                del self._cache[stale]
            hit = max(
                (
                    k
                    for b in breakpoints
                    for k in range(max(0, b - CACHE_LOOKBACK_BLOCKS), b + 1)
                    if digests[k] in self._cache
                ),
                default=-1,
            )
            if hit >= 0:  # TTL refresh on read
                entry = self._cache[digests[hit]]
                self._cache[digests[hit]] = _Entry(now + entry.ttl, entry.ttl)
            for b in breakpoints:
                ttl = CACHE_TTL_S[_ttl(controls[b])]
                old = self._cache.get(digests[b])
                if old is None or old.expires < now + ttl:
                    self._cache[digests[b]] = _Entry(now + ttl, max(ttl, old.ttl if old else 0))

        read = cumulative[hit] if hit >= 0 else 0
        written = {"5m": 0, "1h": 0}
        start = read
        for b in breakpoints:
            if b > hit:
                written[_ttl(controls[b])] += cumulative[b] - start
                start = cumulative[b]
        return running - cumulative[breakpoints[-1]], read, written["5m"], written["1h"]

    def _headers(self, request_id: str) -> dict[str, str]:
        reset = (datetime.now(UTC) + timedelta(seconds=60)).strftime("%Y-%m-%dT%H:%M:%SZ")
        headers = {"request-id": request_id}
        for kind, limit in (
            ("requests", 4_000),
            ("tokens", 2_000_000),
            ("input-tokens", 2_000_000),
            ("output-tokens", 400_000),
        ):
            headers[f"anthropic-ratelimit-{kind}-limit"] = str(limit)
            headers[f"anthropic-ratelimit-{kind}-remaining"] = str(limit - 1)
            headers[f"anthropic-ratelimit-{kind}-reset"] = reset
        return headers

    def _ok(self, payload: dict[str, Any]) -> _Response:
        return _Response(200, _json_bytes(payload), self._headers(_new_id("req_011C")))

    def _error(self, fail: Fail) -> _Response:
        request_id = _new_id("req_011C")
        error_type = fail.error_type or ERROR_TYPES.get(fail.status, "api_error")
        error: dict[str, Any] = {
            "type": error_type,
            "message": fail.message or _DEFAULT_MESSAGES.get(error_type, error_type),
        }
        if fail.error_code is not None:
            error["details"] = {"error_code": fail.error_code}
        headers = self._headers(request_id)
        if fail.retry_after is not None:
            headers["retry-after"] = f"{fail.retry_after:g}"
        headers.update({k.lower(): v for k, v in fail.headers.items()})
        payload = {"type": "error", "error": error, "request_id": request_id}
        return _Response(fail.status, _json_bytes(payload), headers)

    def _control(self, method: str, path: str, raw: bytes) -> _Response:
        if method == "GET" and path == "/_requests":
            return _Response(200, _json_bytes([r.to_json() for r in self.requests]))
        if method == "POST" and path == "/_script":
            try:
                items = json.loads(raw)
                if not isinstance(items, list):
                    items = [items]
                actions = [action_from_json(item) for item in items]
            except (ValueError, KeyError, TypeError) as exc:
                return _Response(400, _json_bytes({"error": str(exc)}))
            self.script(*actions)
            return _Response(200, _json_bytes({"queued": self.pending_script()}))
        if method == "POST" and path == "/_clock":
            try:
                advance = float(json.loads(raw or b"{}").get("advance", 0))
            except (ValueError, TypeError, AttributeError) as exc:
                return _Response(400, _json_bytes({"error": str(exc)}))
            if not math.isfinite(advance):
                return _Response(400, _json_bytes({"error": "advance must be a finite number"}))
            return _Response(200, _json_bytes({"offset": self.advance_clock(advance)}))
        if method == "POST" and path == "/_reset":
            self.reset()
            return _Response(200, _json_bytes({"reset": True}))
        return _Response(404, _json_bytes({"error": f"no control endpoint {method} {path}"}))


# --- HTTP plumbing -------------------------------------------------------------------------


class _APIHandler(LoopbackHandler):
    def do_HEAD(self) -> None:
        # Claude Code pre-warms its connection with `HEAD /`; any answer will do.
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _serve(self) -> None:
        headers, raw = self.read_body()
        path = self.path.split("?", 1)[0]
        response = self.loopback.owner.handle(self.command, path, headers, raw)
        if response is None:
            self.close_connection = True
            return
        if response.trickle is not None:
            self._trickle(response, response.trickle)
            return
        self.send_json(
            response.status,
            response.body,
            response.headers,
            _REASONS.get(response.status),
            response.content_type,
        )

    def _trickle(self, response: _Response, interval: float) -> None:
        """The status line and headers at once, then the body one byte every `interval`."""
        self.close_connection = True  # the body may never be finished
        self.send_response(response.status, _REASONS.get(response.status))
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.end_headers()
        try:
            for at in range(len(response.body)):
                self.wfile.write(response.body[at : at + 1])
                if self.loopback.owner.pause(interval):
                    return  # the server is stopping
        except OSError:
            return  # the client gave up: what the trickle is for


StandinAPI.handler = _APIHandler
StandinAPI.thread_name = "standin-api"


# --- script form ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Stand-in Anthropic Messages API on loopback.")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--port-file", help="also write the URL to this file")
    parser.add_argument("--api-key", help="require exactly this key")
    args = parser.parse_args(argv)
    api = StandinAPI(port=args.port, api_key=args.api_key)
    api.start()
    return serve_until_signalled(api.url, args.port_file, api.stop)


if __name__ == "__main__":
    sys.exit(main())
