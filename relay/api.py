"""The Messages API boundary. The only module that imports `anthropic`, and lazily, so
the intake handlers never pay for it. SDK exceptions become `ApiError` here.
"""

from __future__ import annotations

import email.utils
import math
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from relay.errors import ApiError
from relay.prices import Usage

CREDIT_TEXT = "credit balance is too low"
# "You have reached your specified workspace API usage limits. You will regain access on
# 2025-06-01 at 00:00 UTC." (a 400, like the credit one)
WORKSPACE_LIMIT_TEXT = "api usage limits"
_REGAIN_RE = re.compile(r"regain access on (.+?)\.?\s*$", re.IGNORECASE)
# "prompt is too long: 210883 tokens > 200000 maximum", and the older "input length and
# `max_tokens` exceed context limit: ..."
_OVERFLOW_RE = re.compile(r"prompt is too long|exceed context limit|context window", re.I)
# A refusal naming one of relay's own settings ("model: claude-x", "max_tokens: 200000 >
# 128000, which is the maximum ..."), after the error type the text starts with.
_FIELD_RE = re.compile(r"(?:^|_error: )(model|max_tokens):")
# Refusals of one request: its content or size. 401-403 and credit are the account's.
PER_ITEM_STATUSES = frozenset({400, 404, 413})
MAX_RETRY_AFTER_S = 3600.0


@dataclass(frozen=True)
class ApiReply:
    text: str
    usage: Usage
    model: str
    stop_reason: str | None
    request_id: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "usage": self.usage.as_dict(),
            "model": self.model,
            "stop_reason": self.stop_reason,
            "request_id": self.request_id,
        }

    @staticmethod
    def from_json(raw: Any) -> ApiReply:
        """ValueError for anything that is not a reply `to_json` wrote."""
        try:
            usage = Usage(**{str(k): int(v) for k, v in raw["usage"].items()})
            stop, request = raw.get("stop_reason"), raw.get("request_id")
            return ApiReply(
                str(raw["text"]),
                usage,
                str(raw["model"]),
                stop if isinstance(stop, str) else None,
                request if isinstance(request, str) else None,
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a kept reply: {exc}") from None


class MessagesApi(Protocol):
    def create(
        self,
        *,
        model: str,
        max_tokens: int,
        system: list[dict[str, Any]],
        messages: list[dict[str, Any]],
    ) -> ApiReply: ...


class AnthropicApi:
    """The real SDK. We own retries (max_retries=0): a server `retry-after` of an hour
    must not block the service's loop, and our backoff keeps the watchdog fed.

    `timeout_s` is the whole call's deadline, not only each read's: a server that keeps
    sending a byte now and then must not hold the one worker thread for ever
    (`relay/deadline.py`)."""

    def __init__(self, api_key: str, base_url: str | None, timeout_s: float) -> None:
        import anthropic

        from relay import deadline

        self._anthropic = anthropic
        self._timeout_s = timeout_s
        self._deadline = deadline.Deadline()
        self._client = anthropic.Anthropic(
            api_key=api_key,
            base_url=base_url,
            timeout=timeout_s,
            max_retries=0,
            http_client=anthropic.DefaultHttpxClient(transport=deadline.transport(self._deadline)),
        )

    def create(
        self,
        *,
        model: str,
        max_tokens: int,
        system: list[dict[str, Any]],
        messages: list[dict[str, Any]],
    ) -> ApiReply:
        anthropic = self._anthropic
        try:
            with self._deadline.within(self._timeout_s):
                message = self._client.messages.create(
                    model=model,
                    max_tokens=max_tokens,
                    system=system,  # type: ignore[arg-type]
                    messages=messages,  # type: ignore[arg-type]
                )
        except anthropic.APIStatusError as exc:
            raise translate_status(
                exc.status_code,
                _error_text(exc),
                exc.response.headers,
                getattr(exc, "request_id", None),
            ) from exc
        except anthropic.APITimeoutError as exc:
            raise ApiError(
                f"the API call timed out (no whole answer within {self._timeout_s:g} s)",
                transient=True,
            ) from exc
        except anthropic.APIConnectionError as exc:
            raise ApiError(f"cannot reach the API: {exc}", transient=True) from exc
        except anthropic.AnthropicError as exc:
            raise ApiError(f"API client error: {exc}", transient=False) from exc
        # Unknown block types arrive as objects without text; keep only real text blocks.
        texts = [
            getattr(block, "text", None)
            for block in message.content
            if getattr(block, "type", None) == "text"
        ]
        text = "".join(t for t in texts if isinstance(t, str))
        return ApiReply(
            text=text,
            usage=Usage.from_api(message.usage),
            model=message.model,
            stop_reason=message.stop_reason,
            request_id=getattr(message, "_request_id", None),
        )


def _error_text(exc: Any) -> str:
    message = getattr(exc, "api_message", None) or getattr(exc, "message", None) or str(exc)
    kind = getattr(exc, "type", None)
    return f"{kind}: {message}" if kind else str(message)


def translate_status(
    status: int, text: str, headers: Any, request_id: str | None = None
) -> ApiError:
    """Given an HTTP error from the API, return the ApiError that says what to do about it:
    retry later (transient), set this one request aside (per_item), or wait for the
    operator (blocked; see ApiError)."""
    suffix = f" (request {request_id})" if request_id else ""
    lower = text.lower()
    if status == 400 and CREDIT_TEXT in lower:
        return ApiError(
            f"credit balance too low: add credits, then relay resumes{suffix}",
            transient=False,
            status=status,
        )
    if status == 400 and WORKSPACE_LIMIT_TEXT in lower:
        # A spend limit set in the Console: nothing goes through until the date it names.
        when = _REGAIN_RE.search(text)
        until = f" until {when.group(1).strip()}" if when else ""
        return ApiError(
            f"the workspace's API usage limit is reached: no calls{until} "
            f"(raise the limit in the Console, then relay reload, to resume sooner){suffix}",
            transient=False,
            status=status,
            blocked_until=regain_time(when.group(1)) if when else None,
        )
    if status == 401:
        return ApiError(f"the API key was rejected (401){suffix}", transient=False, status=status)
    if status == 402:
        return ApiError(f"billing problem (402): {text}{suffix}", transient=False, status=status)
    if status == 403:
        return ApiError(f"permission denied (403): {text}{suffix}", transient=False, status=status)
    retryable = status in (408, 409, 429) or status >= 500
    should_retry = _header(headers, "x-should-retry")
    if should_retry in ("true", "false"):
        retryable = should_retry == "true"
    message = f"HTTP {status}: {text}{suffix}"
    if retryable:
        return ApiError(message, transient=True, retry_after=retry_after(headers), status=status)
    if status in PER_ITEM_STATUSES:
        setting = _config_setting(status, text)
        if setting is not None:
            # It names relay's configuration, not this item's content: every request would
            # get the same answer, so setting items aside one by one would discard them all.
            return ApiError(
                f"{message}: every call would get this; check {setting} in the config",
                transient=False,
                status=status,
            )
        return ApiError(
            message,
            transient=False,
            status=status,
            per_item=True,
            context_overflow=status == 400 and _OVERFLOW_RE.search(text) is not None,
        )
    return ApiError(message, transient=False, status=status)


_WHEN_RE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})(?:\s*(?:at|T)?\s*(\d{1,2}):(\d{2})(?::(\d{2}))?)?\s*(UTC|Z|GMT)?",
    re.IGNORECASE,
)


def regain_time(text: str) -> datetime | None:
    """The moment in "2026-12-01 at 00:00 UTC" (the workspace limit's message) as an aware
    UTC datetime; None if it is not such a date. A time without a zone is read as UTC, the
    zone the Console's messages use."""
    match = _WHEN_RE.search(text)
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(g) if g else 0 for g in match.groups()[:6])
    try:
        return datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError:
        return None


def _config_setting(status: int, text: str) -> str | None:
    """The config key a refusal is about, if it is about one rather than the request."""
    field = _FIELD_RE.search(text)
    if field is not None:
        return field.group(1)
    if status == 404 and ("model" in text.lower() or "not available" in text.lower()):
        return "model"  # the real API's 404 for a model it does not offer
    return None


def _header(headers: Any, name: str) -> str | None:
    try:
        value = headers.get(name)
    except AttributeError:
        return None
    return str(value).strip().lower() if value is not None else None


def retry_after(headers: Any, now: float | None = None) -> float | None:
    """Seconds the server asked us to wait (`retry-after-ms`, or `retry-after` in seconds
    or as an HTTP date), capped so a bad header cannot park relay for days."""
    ms = _number(_header(headers, "retry-after-ms"))
    if ms is not None:
        return _clamp(ms / 1000.0)
    value = _header(headers, "retry-after")
    if not value:
        return None
    seconds = _number(value)
    if seconds is not None:
        return _clamp(seconds)
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return _clamp(when - (time.time() if now is None else now))


def _number(text: str | None) -> float | None:
    """A finite float, or None: "nan" and "inf" parse as floats but mean nothing here."""
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _clamp(seconds: float) -> float:
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)
