"""relay.answers: the question's push, what a line of the answer stream means, the handover
format, and the bounded memory of what was handled."""

from __future__ import annotations

import json

import pytest

from relay.answers import (
    Answer,
    Flood,
    Handled,
    Handover,
    Refused,
    Skip,
    acknowledgement,
    button_body,
    decode_handover,
    parse_options,
    question_push,
    read_line,
)
from relay.ntfy import MAX_BODY_BYTES

URL = "https://ntfy.example/relay-answers-x"


def line(**fields: object) -> bytes:
    message = {"id": "abc123", "time": 1000, "event": "message", "topic": "t", "message": "yes"}
    message.update(fields)
    return json.dumps({k: v for k, v in message.items() if v is not None}).encode() + b"\n"


# ---- options and the push --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "options"),
    [
        ("[NEEDS-JC] Ship?\nOptions: yes | no | later", ("yes", "no", "later")),
        ("[NEEDS-JC] Ship?\n\n  options:  yes|no  \n\n", ("yes", "no")),
        ("[NEEDS-JC] Ship?\nOptions: a | b | c | d", ("a", "b", "c")),  # ntfy's limit: 3
        ("[NEEDS-JC] Ship?\nOptions: yes | | no", ()),  # an empty option: no buttons
        ("[NEEDS-JC] Ship?\nOptions: " + "x" * 65 + " | no", ()),  # too long for a button
        ("[NEEDS-JC] Options: yes | no\nWhich one?", ()),  # not the last line
        ("[NEEDS-JC] Ship?", ()),
        ("", ()),
    ],
)
def test_options_come_from_the_last_line(text: str, options: tuple[str, ...]) -> None:
    assert parse_options(text) == options


def test_a_question_with_three_options_has_three_buttons_and_opens_the_web_app() -> None:
    push = question_push("Q7-abc", "session-1", "[NEEDS-JC] Ship?\nOptions: a | b | c", URL)
    body = push.to_json("relay-q")
    assert body["click"] == URL
    assert [a["action"] for a in body["actions"]] == ["http", "http", "http"]
    for action, option in zip(body["actions"], "abc", strict=True):
        assert action["url"] == URL and action["method"] == "POST"
        assert json.loads(action["body"]) == {"question": "Q7-abc", "answer": option}
        assert action["label"] == option
        assert "headers" not in action  # the token never goes into a push
    assert body["priority"] == 4 and "session-1" in body["title"]
    assert "Q7-abc" in body["message"]
    assert push.key == "Q7-abc"


@pytest.mark.parametrize("options", [0, 1, 2])
def test_with_room_left_a_view_button_opens_the_web_app_too(options: int) -> None:
    text = "[NEEDS-JC] Ship?" + ("\nOptions: " + " | ".join("xy"[:options]) if options else "")
    body = question_push("Q1-a", "session-1", text, URL).to_json("relay-q")
    kinds = [a["action"] for a in body["actions"]]
    assert kinds == ["http"] * options + ["view"]
    assert body["actions"][-1]["url"] == URL
    assert len(body["actions"]) <= 3


def test_without_an_answer_topic_the_push_says_to_answer_at_the_shell() -> None:
    body = question_push("Q1-a", "session-1", "[NEEDS-JC] ?\nOptions: a | b", None).to_json("t")
    assert "actions" not in body and "click" not in body
    assert "relay reply" in body["message"]


def test_a_long_question_fits_ntfys_limit_with_its_id_intact() -> None:
    text = "[NEEDS-JC] " + "é" * 5000
    body = question_push("Q9-abcdef", "session-1", text, URL).to_json("t")
    assert len(body["message"].encode()) <= MAX_BODY_BYTES
    assert "Q9-abcdef" in body["message"]


def test_acknowledgements_are_low_priority_and_marked_as_relays() -> None:
    body = acknowledgement("answer received, sent to session-1").to_json("t")
    assert body["priority"] == 2
    assert "relay" in body["tags"]
    assert "session-1" in body["message"]


# ---- the handover ----------------------------------------------------------------------------


@pytest.mark.parametrize("question", ["Q12-3fa9c1", None])
def test_a_handover_round_trips(question: str | None) -> None:
    handover = Handover("Abc123xyz", question, "yes\nand more\n")
    assert decode_handover(handover.encode()) == handover


@pytest.mark.parametrize(
    "text",
    ["yes", "[relay-answer ntfy=bad id]\nyes", "[relay-answer ntfy=a question=x]\nyes", ""],
)
def test_input_typed_at_the_shell_is_no_handover(text: str) -> None:
    assert decode_handover(text) is None


# ---- lines of the answer stream --------------------------------------------------------------


def test_a_typed_answer() -> None:
    assert read_line(line(message="  deploy it \n"), 4096) == Answer(
        "abc123", 1000, None, "deploy it"
    )


def test_a_buttons_answer_carries_its_question() -> None:
    message = read_line(line(message=button_body("Q3-ab12", "approve")), 4096)
    assert message == Answer("abc123", 1000, "Q3-ab12", "approve")


def test_json_that_is_not_a_buttons_answer_is_typed_text() -> None:
    text = json.dumps({"question": "not an id", "answer": "x"})
    assert read_line(line(message=text), 4096) == Answer("abc123", 1000, None, text)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"event":"open","id":"x","time":1}\n',
        b'{"event":"keepalive","id":"x","time":1}\n',
        b"not json\n",
        b"[1, 2]\n",
        b'{"event":"message","time":1,"message":"no id"}\n',
        b'{"event":"message","id":"x","time":"soon","message":"bad time"}\n',
        b"{" * 100000 + b"\n",
    ],
)
def test_what_is_not_a_message_is_skipped(raw: bytes) -> None:
    assert isinstance(read_line(raw, 4096), Skip)


@pytest.mark.parametrize(
    ("raw", "reason", "ack"),
    [
        (line(message="x" * 4097), "too long (4097 bytes; at most 4096)", True),
        (line(message="é" * 2049), "too long (4098 bytes; at most 4096)", True),
        (line(attachment={"name": "a.txt", "size": 9000}), "attachment", True),
        (line(message="  "), "empty", True),
        (line(tags=["warning", "relay"]), "relay's own", False),
        (line(message=None), "no message text", True),
        (line(message="ok").replace(b'"ok"', b'"\xff\xfe"'), "not valid UTF-8", True),
        (line(message="ok").replace(b'"ok"', b'"\\ud800"'), "not valid UTF-8", True),
    ],
)
def test_refusals(raw: bytes, reason: str, ack: bool) -> None:
    message = read_line(raw, 4096)
    assert isinstance(message, Refused), message
    assert reason in message.reason
    assert message.ack is ack
    assert message.ntfy_id == "abc123"


# ---- what was handled ------------------------------------------------------------------------


def test_handled_ids_are_bounded_and_the_floor_covers_what_was_dropped() -> None:
    handled = Handled(limit=3)
    for index, time in enumerate([10, 11, 11, 12, 13]):
        handled.add(f"id{index}", time)
    assert len(handled.ids) <= 3
    assert handled.floor == 11
    # Every id ever added still counts as handled: by id, or by the floor.
    assert all(handled.seen(f"id{i}", t) for i, t in enumerate([10, 11, 11, 12, 13]))
    assert not handled.seen("new", 12)
    again = Handled.from_json(json.loads(json.dumps(handled.to_json())), limit=3)
    assert again.ids == handled.ids and again.floor == handled.floor


def test_a_damaged_handled_record_starts_empty() -> None:
    assert Handled.from_json("junk").ids == {}
    assert Handled.from_json({"ids": {"a": "x", "b": 5}, "floor": "no"}).ids == {"b": 5}


def test_flood_admits_per_minute_of_publishing_time() -> None:
    flood = Flood(per_minute=2)
    assert flood.admit(100) and flood.admit(110)
    assert not flood.admit(120)
    assert flood.admit(161)  # 100 has left the window
    assert flood.should_ack(120) and not flood.should_ack(150) and flood.should_ack(181)
