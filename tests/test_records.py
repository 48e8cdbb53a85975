"""relay.records: the typed records and their codecs (the keys are the on-disk format)."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from relay import status as status_file
from relay.config import RESERVED_SENDERS
from relay.history import encode
from relay.prices import Usage
from relay.records import (
    OPERATOR,
    RELAY,
    BudgetStatus,
    Carried,
    LedgerEntry,
    Record,
    Sender,
    Status,
    Summary,
    Turn,
    decode_ledger_entry,
    decode_record,
    session,
)

SESSION_1 = session("session-1")


def turn(sender: Sender = SESSION_1, **changes: Any) -> Turn:
    fields: dict[str, Any] = {
        "seq": 7,
        "key": "q-00000000000000000007-ab.json",
        "sender": sender,
        "user": f"[from {sender.wire}]\nhello ✓",
        "reply": "[NEEDS-JC] Which DB?",
        "target": None,
        "needs_jc": True,
        "ts": "2026-05-02T00:00:00Z",
        "cost_usd": 0.0125,
    }
    fields.update(changes)
    return Turn(**fields)


def through_disk(record: Record) -> Record:
    return decode_record(json.loads(encode(record)))


# ---- round trips -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "record",
    [
        turn(),
        turn(session("session-2"), target="session-2", needs_jc=False, reply=""),
        turn(OPERATOR, target="session-1", needs_jc=False),
        turn(RELAY, cost_usd=0.0),
        Summary(3, "the gist", "2026-05-02T00:00:00Z", 3, 0.5),
        Summary(
            3,
            "the gist",
            "2026-05-02T00:00:00Z",
            3,
            0.5,
            Carried(True, "session-2", "[NEEDS-JC] ?", "session-1"),
        ),
    ],
    ids=["turn", "plain-turn", "operator-turn", "relay-turn", "summary", "paused-summary"],
)
def test_records_round_trip_through_their_json(record: Record) -> None:
    again = through_disk(record)
    assert again == record
    assert type(again) is type(record)
    assert encode(again) == encode(record)


def test_turn_json_keys_are_the_on_disk_format() -> None:
    assert turn(OPERATOR, target="session-1").to_json() == {
        "kind": "turn",
        "seq": 7,
        "key": "q-00000000000000000007-ab.json",
        "session": "operator",
        "user": "[from operator]\nhello ✓",
        "reply": "[NEEDS-JC] Which DB?",
        "target": "session-1",
        "needs_jc": True,
        "ts": "2026-05-02T00:00:00Z",
        "cost_usd": 0.0125,
    }


def test_summary_json_keys_are_the_on_disk_format() -> None:
    summary = Summary(3, "S", "2026-05-02T00:00:00Z", 2, 0.5, Carried(last_session="session-1"))
    assert summary.to_json() == {
        "kind": "summary",
        "seq": 3,
        "text": "S",
        "ts": "2026-05-02T00:00:00Z",
        "covers_turns": 2,
        "cost_usd": 0.5,
        "state": {
            "paused": False,
            "needs_jc_session": None,
            "needs_jc_text": None,
            "last_session": "session-1",
        },
    }


# ---- senders -----------------------------------------------------------------------------


def test_relays_own_senders_decode_to_the_constants() -> None:
    assert Sender.from_wire("operator") is OPERATOR
    assert Sender.from_wire("relay") is RELAY
    assert (OPERATOR.wire, OPERATOR.session) == ("operator", None)
    assert (RELAY.wire, RELAY.session) == ("relay", None)


@pytest.mark.parametrize(
    "name", ["session-1", "Operator", "OPERATOR", "operator-2", "my.operator", "relay_1", "x"]
)
def test_a_session_never_decodes_as_the_operator(name: str) -> None:
    sender = session(name)
    assert sender.kind == "session"
    assert sender.wire == name
    decoded = Sender.from_wire(name)
    assert decoded == sender
    assert decoded != OPERATOR and decoded != RELAY
    # Nor through a whole record.
    record = through_disk(turn(sender))
    assert isinstance(record, Turn) and record.sender == sender


def test_every_wire_name_of_relays_own_senders_is_refused_as_a_session_id() -> None:
    # A session named "operator" would read back as the operator, so the config must
    # refuse every name that does not decode as a session.
    for name in ("operator", "relay"):
        assert Sender.from_wire(name).kind != "session"
        assert name in RESERVED_SENDERS


# ---- decoding: strict where a wrong value would mislead ----------------------------------


@pytest.mark.parametrize("seq", ["7", 7.0, True, None, [7]])
@pytest.mark.parametrize("kind", ["turn", "summary"])
def test_a_bad_seq_type_is_refused(kind: str, seq: Any) -> None:
    raw = turn().to_json() if kind == "turn" else Summary(7, "S", "", 0, 0.0).to_json()
    raw["seq"] = seq
    with pytest.raises(ValueError, match="seq is not an integer"):
        decode_record(raw)


def test_a_missing_seq_is_refused() -> None:
    raw = turn().to_json()
    del raw["seq"]
    with pytest.raises(ValueError, match="seq"):
        decode_record(raw)


@pytest.mark.parametrize("key", ["key", "session", "user", "reply"])
@pytest.mark.parametrize("value", ["missing", None, 1, ["x"]])
def test_a_turn_without_its_text_fields_is_refused(key: str, value: Any) -> None:
    raw = turn().to_json()
    if value == "missing":
        del raw[key]
    else:
        raw[key] = value
    with pytest.raises(ValueError, match=f"{key} is not a string"):
        decode_record(raw)


def test_a_summary_without_text_is_refused() -> None:
    with pytest.raises(ValueError, match="text is not a string"):
        decode_record({"kind": "summary", "seq": 1})


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"kind": "note", "seq": 1}, "unknown record kind 'note'"),
        ({"seq": 1, "text": "S"}, "unknown record kind None"),
        ([], "not an object"),
        ("turn", "not an object"),
        (None, "not an object"),
    ],
)
def test_what_is_not_a_record_is_refused(raw: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decode_record(raw)


# ---- decoding: lenient where older releases wrote less ---------------------------------


def test_a_turn_missing_optional_keys_takes_the_defaults() -> None:
    raw = {"kind": "turn", "seq": 1, "key": "k", "session": "session-1", "user": "u", "reply": "r"}
    assert decode_record(raw) == Turn(1, "k", session("session-1"), "u", "r", None, False, "", 0.0)


def test_a_summary_missing_optional_keys_takes_the_defaults() -> None:
    assert decode_record({"kind": "summary", "seq": 4, "text": "S"}) == Summary(
        4, "S", "", 0, 0.0, Carried()
    )


@pytest.mark.parametrize("cost", [math.nan, math.inf, -math.inf, "0.5", True, None])
def test_a_cost_that_is_not_a_finite_number_counts_as_zero(cost: Any) -> None:
    raw = turn().to_json()
    raw["cost_usd"] = cost
    decoded = decode_record(raw)
    assert isinstance(decoded, Turn) and decoded.cost_usd == 0.0


def test_an_integer_cost_is_a_float() -> None:
    raw = turn().to_json()
    raw["cost_usd"] = 2
    decoded = decode_record(raw)
    assert isinstance(decoded, Turn)
    assert decoded.cost_usd == 2.0 and isinstance(decoded.cost_usd, float)


@pytest.mark.parametrize("raw", [None, "paused", [], {}])
def test_carried_state_that_is_missing_or_not_an_object_is_the_default(raw: Any) -> None:
    assert Carried.from_json(raw) == Carried()


def test_carried_state_keeps_only_strings_for_the_names() -> None:
    carried = Carried.from_json(
        {"paused": 1, "needs_jc_session": 5, "needs_jc_text": "?", "last_session": ["x"]}
    )
    assert carried == Carried(paused=True, needs_jc_text="?")


def test_a_non_string_target_is_nobody() -> None:
    raw = turn().to_json()
    raw["target"] = 3
    decoded = decode_record(raw)
    assert isinstance(decoded, Turn) and decoded.target is None


# ---- the ledger --------------------------------------------------------------------------


def test_ledger_entry_json_keys() -> None:
    usage = Usage(
        input_tokens=10,
        output_tokens=20,
        cache_write_tokens=30,
        cache_write_1h_tokens=40,
        cache_read_tokens=50,
    )
    entry = LedgerEntry(
        ts="2026-05-02T00:00:00Z",
        kind="summary",
        key="summary-12",
        sender=RELAY,
        model="claude-sonnet-4-5",
        request_id="req_1",
        stop_reason="end_turn",
        usage=usage,
        cost_usd=0.001,
        price_known=True,
    )
    assert entry.to_json() == {
        "ts": "2026-05-02T00:00:00Z",
        "kind": "summary",
        "key": "summary-12",
        "session": "relay",
        "model": "claude-sonnet-4-5",
        "request_id": "req_1",
        "stop_reason": "end_turn",
        "usage": {
            "input_tokens": 10,
            "output_tokens": 20,
            "cache_write_tokens": 30,
            "cache_write_1h_tokens": 40,
            "cache_read_tokens": 50,
        },
        "cost_usd": 0.001,
        "price_known": True,
    }


def test_ledger_entry_names_a_session_and_the_operator_by_their_wire_names() -> None:
    def entry(sender: Sender) -> dict[str, Any]:
        return LedgerEntry("t", "turn", "k", sender, "m", None, None, Usage(), 0.0, False).to_json()

    assert entry(session("session-3"))["session"] == "session-3"
    assert entry(OPERATOR)["session"] == "operator"
    assert entry(OPERATOR)["request_id"] is None


def test_ledger_entry_round_trips_through_its_decoder() -> None:
    entry = LedgerEntry(
        "2026-05-02T00:00:00.000000Z", "turn", "k", SESSION_1, "claude-opus-5-5", "req", None,
        Usage(1, 2, 3, 4, 5), 0.25, True,
    )  # fmt: skip
    assert decode_ledger_entry(json.loads(json.dumps(entry.to_json()))) == entry
    old = entry.to_json()  # as older releases wrote it: no 1 h writes, no price_known
    del old["price_known"], old["usage"]["cache_write_1h_tokens"]
    decoded = decode_ledger_entry(old)
    assert decoded.price_known and decoded.usage == Usage(1, 2, 3, 0, 5)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"kind": "call"}, "unknown kind 'call'"),
        ({"usage": None}, "usage is not an object"),
        ({"usage": {"input_tokens": -1}}, "usage.input_tokens is not a token count"),
        ({"usage": {"cache_read_tokens": True}}, "usage.cache_read_tokens is not a token count"),
        ({"cost_usd": "0.1"}, "cost_usd is not a non-negative number"),
        ({"cost_usd": math.inf}, "cost_usd is not a non-negative number"),
        ({"price_known": "yes"}, "price_known is not true or false"),
        ({"ts": 17}, "ts is not a string"),
        ({"session": None}, "session is not a string"),
    ],
)
def test_a_damaged_ledger_entry_is_refused_with_the_reason(
    change: dict[str, Any], reason: str
) -> None:
    raw = LedgerEntry("t", "turn", "k", OPERATOR, "m", None, None, Usage(), 0.0, True).to_json()
    with pytest.raises(ValueError, match=f"^{reason}$"):
        decode_ledger_entry({**raw, **change})


# ---- status ------------------------------------------------------------------------------


def status(**changes: Any) -> Status:
    fields: dict[str, Any] = {
        "state": "needs_jc",
        "state_detail": "waiting for the operator",
        "last_dispatch_session": "session-1",
        "last_needs_jc_text": "[NEEDS-JC] Which DB?",
        "needs_jc_session": "session-2",
        "needs_jc_question": "Q4-abcdef",
        "history_turns": 4,
        "history_chars": 1234,
        "pending": {"session-1": 2, "session-2": 1},
        "awaiting_pickup": ["session-1"],
        "inbox": 3,
        "last_error": None,
        "cost_today_usd": 0.123456789,
        "calls_today": 9,
        "api_key": True,
        "api_key_help": None,
        "model": "claude-sonnet-4-5",
        "pid": 4242,
        "updated_at": "2026-05-02T00:00:00Z",
    }
    fields.update(changes)
    return Status(**fields)


def test_status_json_keys() -> None:
    snapshot = status()
    data = snapshot.to_json()
    assert data == {
        "state": "needs_jc",
        "state_detail": "waiting for the operator",
        "last_dispatch_session": "session-1",
        "last_needs_jc_text": "[NEEDS-JC] Which DB?",
        "needs_jc_session": "session-2",
        "needs_jc_question": "Q4-abcdef",
        "history_turns": 4,
        "history_chars": 1234,
        "pending": {"session-1": 2, "session-2": 1},
        "awaiting_pickup": ["session-1"],
        "inbox": 3,
        "last_error": None,
        "cost_today_usd": 0.123457,  # rounded to 6 places
        "cost_month_usd": 0.0,
        "budget": None,
        "calls_today": 9,
        "api_key": True,
        "api_key_help": None,
        "model": "claude-sonnet-4-5",
        "pid": 4242,
        "updated_at": "2026-05-02T00:00:00Z",
        "last_reload": None,
    }
    # The JSON holds copies: changing them does not change the snapshot.
    data["pending"]["session-1"] = 99
    data["awaiting_pickup"].append("session-2")
    assert snapshot.pending == {"session-1": 2, "session-2": 1}
    assert snapshot.awaiting_pickup == ["session-1"]


def test_status_json_is_what_relay_status_reads() -> None:
    shown = status_file.format_status(status().to_json(), None)
    assert "waiting for:    operator (raised by session-2)" in shown
    assert "pending:        session-1=2, session-2=1" in shown
    assert "cost today:     $0.1235 (9 calls)" in shown


def test_status_line() -> None:
    assert status().line() == (
        "needs_jc (waiting for the operator); inbox 3, pending 3; $0.1235 today"
    )
    idle = status(state="idle", state_detail="nothing to do", inbox=0, pending={})
    assert idle.line() == "idle (nothing to do); inbox 0, pending 0; $0.1235 today"


def test_relay_status_shows_the_budgets_when_there_are_caps() -> None:
    capped = status(
        cost_today_usd=1.5,
        cost_month_usd=12.25,
        budget=BudgetStatus(2.0, 50.0, "Europe/Paris", None, None),
    )
    shown = status_file.format_status(capped.to_json(), None)
    assert "budget:         $1.50 of $2.00 today; $12.25 of $50.00 this month (Europe/Paris)" in (
        shown
    )
    uncapped = status(budget=BudgetStatus(None, None, "UTC", None, None))
    assert "budget:" not in status_file.format_status(uncapped.to_json(), None)
