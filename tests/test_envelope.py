"""relay.envelope: every rejection reason, the happy path and the encode round trip."""

from __future__ import annotations

import json
from typing import Any

import pytest

from relay.envelope import MAX_ID_LENGTH, Envelope, Rejected, encode_envelope, parse_envelope

SESSIONS = ("session-1", "session-2")
LIMIT = 1024


def as_bytes(value: Any) -> bytes:
    return json.dumps(value).encode("utf-8")


def reason(data: bytes, max_bytes: int = LIMIT) -> str:
    with pytest.raises(Rejected) as caught:
        parse_envelope(data, SESSIONS, max_bytes)
    return str(caught.value)


def good(**overrides: Any) -> dict[str, Any]:
    envelope: dict[str, Any] = {
        "session_id": "session-1",
        "timestamp": "2026-05-02T00:00:00Z",
        "content": "text",
        "id": "abc-1",
    }
    envelope.update(overrides)
    return envelope


# ---- the happy path -----------------------------------------------------------------------


def test_full_envelope() -> None:
    envelope = parse_envelope(as_bytes(good()), SESSIONS, LIMIT)
    assert envelope == Envelope(
        session_id="session-1", content="text", timestamp="2026-05-02T00:00:00Z", id="abc-1"
    )


def test_minimal_envelope_and_unknown_fields_are_ignored() -> None:
    data = as_bytes({"session_id": "session-2", "content": "hi", "priority": 9, "x": [1]})
    assert parse_envelope(data, SESSIONS, LIMIT) == Envelope(session_id="session-2", content="hi")


def test_explicit_nulls_for_optional_fields() -> None:
    envelope = parse_envelope(as_bytes(good(timestamp=None, id=None)), SESSIONS, LIMIT)
    assert envelope.timestamp is None
    assert envelope.id is None


def test_non_ascii_content_and_content_kept_verbatim() -> None:
    content = "  Grüße ✓\nline two  \n"
    envelope = parse_envelope(as_bytes(good(content=content)), SESSIONS, LIMIT)
    assert envelope.content == content


def test_size_exactly_at_the_limit_is_accepted() -> None:
    base = as_bytes(good(content=""))
    padding = LIMIT - len(base)
    data = as_bytes(good(content="x" * padding))
    assert len(data) == LIMIT
    assert parse_envelope(data, SESSIONS, LIMIT).content == "x" * padding


def test_id_at_the_maximum_length_is_accepted() -> None:
    envelope = parse_envelope(as_bytes(good(id="i" * MAX_ID_LENGTH)), SESSIONS, LIMIT)
    assert envelope.id == "i" * MAX_ID_LENGTH


# ---- rejections ---------------------------------------------------------------------------


def test_too_large() -> None:
    data = as_bytes(good(content="x" * LIMIT))
    assert reason(data) == f"too large: {len(data)} bytes, the limit is {LIMIT}"


def test_one_byte_over_the_limit() -> None:
    data = as_bytes(good(content="x" * 100))
    assert reason(data, max_bytes=len(data) - 1).startswith("too large:")


def test_invalid_utf8_names_the_byte() -> None:
    data = b'{"session_id": "session-1", "content": "\xff"}'
    bad = data.index(b"\xff")
    assert reason(data) == f"not valid UTF-8 (byte {bad})"


@pytest.mark.parametrize("data", [b"", b"{", b"session_id: session-1", b'{"a": 1,}'])
def test_not_json(data: bytes) -> None:
    assert reason(data).startswith("not JSON: ")


def test_not_json_says_where() -> None:
    assert reason(b'{\n  "session_id": }') == "not JSON: Expecting value at line 2 column 17"


@pytest.mark.parametrize(
    ("value", "kind"), [([1, 2], "list"), ("text", "str"), (3, "int"), (None, "NoneType")]
)
def test_not_an_object(value: Any, kind: str) -> None:
    assert reason(as_bytes(value)) == f"not a JSON object but a {kind}"


def test_session_id_missing() -> None:
    data = as_bytes({"content": "hi"})
    assert reason(data) == "session_id must be a string, got nothing"


def test_session_id_wrong_type() -> None:
    assert reason(as_bytes(good(session_id=1))) == "session_id must be a string, got int 1"


@pytest.mark.parametrize("session", ["session-3", "../etc", "", "SESSION-1"])
def test_session_id_unknown(session: str) -> None:
    assert reason(as_bytes(good(session_id=session))) == (
        f"unknown session_id {session!r} (configured: session-1, session-2)"
    )


def test_content_missing_or_wrong_type() -> None:
    assert reason(as_bytes({"session_id": "session-1"})) == (
        "content must be a string, got nothing"
    )
    assert reason(as_bytes(good(content=["a"]))) == "content must be a string, got list ['a']"


@pytest.mark.parametrize("content", ["", " ", "\n\t \n"])
def test_content_empty_or_whitespace(content: str) -> None:
    assert reason(as_bytes(good(content=content))) == "content is empty"


def test_timestamp_wrong_type() -> None:
    assert reason(as_bytes(good(timestamp=1746144000))) == (
        "timestamp must be a string, got int 1746144000"
    )


@pytest.mark.parametrize(("value", "shown"), [(7, "int 7"), ("", "str ''"), (False, "bool False")])
def test_id_wrong_type_or_empty(value: Any, shown: str) -> None:
    assert reason(as_bytes(good(id=value))) == f"id must be a non-empty string, got {shown}"


def test_id_too_long() -> None:
    assert reason(as_bytes(good(id="i" * (MAX_ID_LENGTH + 1)))) == (
        f"id is longer than {MAX_ID_LENGTH} characters"
    )


def test_reason_for_a_huge_wrong_value_stays_short() -> None:
    # The reason is kept as one line beside the rejected file: it must not echo the payload.
    assert len(reason(as_bytes(good(content=["y" * 500])))) < 120


def test_checks_run_in_order_size_first() -> None:
    # An oversized file is refused for its size before anything reads it as text.
    assert reason(b"\xff" * (LIMIT + 1)).startswith("too large:")


# ---- encode -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "envelope",
    [
        Envelope(session_id="session-1", content="hello"),
        Envelope(session_id="session-2", content='Grüße ✓\n"quoted"', timestamp="t", id="x"),
    ],
)
def test_encode_round_trip(envelope: Envelope) -> None:
    data = encode_envelope(envelope)
    assert parse_envelope(data, SESSIONS, LIMIT) == envelope


def test_encode_omits_absent_fields_and_keeps_utf8() -> None:
    data = encode_envelope(Envelope(session_id="session-1", content="é"))
    assert json.loads(data) == {"session_id": "session-1", "content": "é"}
    assert "é".encode() in data  # not \u00e9
