"""Envelope validation (README: Envelope). Pure: bytes in, Envelope or a reason out."""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

MAX_ID_LENGTH = 200


class Rejected(Exception):
    """The envelope is refused; the message is the one-line reason kept beside it."""


@dataclass(frozen=True)
class Envelope:
    session_id: str
    content: str
    timestamp: str | None = None
    id: str | None = None


def parse_envelope(data: bytes, sessions: Collection[str], max_bytes: int) -> Envelope:
    """Given the raw bytes of a queue file, return the Envelope or raise Rejected(reason)."""
    if len(data) > max_bytes:
        raise Rejected(f"too large: {len(data)} bytes, the limit is {max_bytes}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Rejected(f"not valid UTF-8 (byte {exc.start})") from None
    try:
        raw: Any = json.loads(text)
    except json.JSONDecodeError as exc:
        raise Rejected(f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise Rejected("not usable JSON: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer past the interpreter's digit limit
        raise Rejected(f"not usable JSON: {exc}"[:200]) from None
    if not isinstance(raw, dict):
        raise Rejected(f"not a JSON object but a {type(raw).__name__}")
    session = raw.get("session_id")
    if not isinstance(session, str):
        raise Rejected(f"session_id must be a string, got {_kind(session)}")
    if session not in sessions:
        raise Rejected(f"unknown session_id {session!r} (configured: {', '.join(sessions)})")
    content = raw.get("content")
    if not isinstance(content, str):
        raise Rejected(f"content must be a string, got {_kind(content)}")
    if not content.strip():
        raise Rejected("content is empty")
    timestamp = raw.get("timestamp")
    if timestamp is not None and not isinstance(timestamp, str):
        raise Rejected(f"timestamp must be a string, got {_kind(timestamp)}")
    envelope_id = raw.get("id")
    if envelope_id is not None:
        if not isinstance(envelope_id, str) or not envelope_id:
            raise Rejected(f"id must be a non-empty string, got {_kind(envelope_id)}")
        if len(envelope_id) > MAX_ID_LENGTH:
            raise Rejected(f"id is longer than {MAX_ID_LENGTH} characters")
    for label, value in (("content", content), ("timestamp", timestamp), ("id", envelope_id)):
        _encodable(label, value)
    return Envelope(session_id=session, content=content, timestamp=timestamp, id=envelope_id)


def _encodable(label: str, value: str | None) -> None:
    """JSON may escape a lone surrogate ("\\ud800"): valid JSON, but not Unicode text, so
    it could be neither sent to the API nor written to history."""
    if value is None:
        return
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise Rejected(
            f"{label} holds a lone surrogate (\\u{ord(value[exc.start]):04x}), which is not text"
        ) from None


def _kind(value: Any) -> str:
    return "nothing" if value is None else f"{type(value).__name__} {value!r}"[:80]


def encode_envelope(envelope: Envelope) -> bytes:
    raw: dict[str, str] = {"session_id": envelope.session_id}
    if envelope.timestamp is not None:
        raw["timestamp"] = envelope.timestamp
    raw["content"] = envelope.content
    if envelope.id is not None:
        raw["id"] = envelope.id
    return json.dumps(raw, ensure_ascii=False).encode("utf-8")
