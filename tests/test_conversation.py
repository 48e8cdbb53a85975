"""relay.conversation: the pure logic of the conversation (state, routing, rendering)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from relay.conversation import (
    SUMMARY_HEADER,
    ConversationState,
    apply_turn,
    derive_state,
    has_needs_jc,
    history_chars,
    operator_target,
    parse_operator,
    plan_summary,
    render_messages,
    render_system,
    split_for_summary,
    user_text,
)
from relay.records import OPERATOR, RELAY, Carried, Record, Sender, Summary, Turn, session

MARKER = "[NEEDS-JC]"


def turn(
    seq: int,
    sender: Sender | str,
    reply: str = "ok",
    *,
    target: str | None = None,
    needs_jc: bool = False,
    user: str | None = None,
) -> Turn:
    """A turn as the engine records it; a plain string names a session."""
    who = session(sender) if isinstance(sender, str) else sender
    if target is None and not needs_jc:
        target = who.session  # a session's turn is answered to that session
    return Turn(
        seq=seq,
        key=f"q-{seq:020d}-m{seq}.json",
        sender=who,
        user=user if user is not None else user_text(who, f"message {seq}"),
        reply=reply,
        target=target,
        needs_jc=needs_jc,
        ts="2026-05-02T00:00:00Z",
        cost_usd=0.01,
    )


def summary(seq: int, text: str = "the story so far", state: Carried | None = None) -> Summary:
    return Summary(seq, text, "2026-05-02T00:00:00Z", 0, 0.0, state or Carried())


def cache_controls(messages: list[dict[str, Any]]) -> list[tuple[int, int]]:
    return [
        (m, b)
        for m, message in enumerate(messages)
        for b, block in enumerate(message["content"])
        if "cache_control" in block
    ]


# ---- [NEEDS-JC] ---------------------------------------------------------------------------


def test_needs_jc_at_the_start() -> None:
    assert has_needs_jc(f"{MARKER} Which database?", MARKER, 200)


def test_needs_jc_inside_and_outside_the_window() -> None:
    assert has_needs_jc("Some preamble. " + MARKER + " question", MARKER, 200)
    assert not has_needs_jc("x" * 300 + MARKER, MARKER, 200)
    assert not has_needs_jc("No marker here, just [NEEDS JC] lookalikes", MARKER, 200)


def test_needs_jc_exactly_at_the_edge_of_the_window() -> None:
    window = 200
    ends_at_edge = "x" * (window - len(MARKER)) + MARKER
    one_past = "x" * (window - len(MARKER) + 1) + MARKER
    assert len(ends_at_edge) == window
    assert has_needs_jc(ends_at_edge + " more", MARKER, window)
    assert not has_needs_jc(one_past, MARKER, window)


# ---- operator input -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("@session-2: run the tests", ("session-2", "run the tests")),
        ("@session-2:run the tests", ("session-2", "run the tests")),
        ("@session-2 : spaced colon", ("session-2", "spaced colon")),
        ("  \n@session-2: after blank lines\n", ("session-2", "after blank lines")),
        ("@session-2: line one\nline two\n\n", ("session-2", "line one\nline two")),
        (
            "@session-2:\nbody on the next line\n  indented",
            ("session-2", "body on the next line\n  indented"),
        ),
        ("@a.b_c-1: dots and underscores", ("a.b_c-1", "dots and underscores")),
    ],
)
def test_parse_operator_direct(text: str, expected: tuple[str, str]) -> None:
    assert parse_operator(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "Please mail email@x: y",
        "write to email@x: y",
        "Use the staging DB.\n@session-2: this is not at the start",
        "@bad name: text",
        "@-leading-dash: text",
        "@session-2 no colon",
        "session-2: no at sign",
    ],
)
def test_parse_operator_not_direct(text: str) -> None:
    assert parse_operator(text) == (None, text.strip())


def test_parse_operator_plain_text_is_stripped() -> None:
    assert parse_operator("\n  Use Postgres.  \n") == (None, "Use Postgres.")


# ---- state --------------------------------------------------------------------------------


def test_empty_history() -> None:
    assert derive_state([]) == ConversationState()
    assert derive_state([]).next_seq == 1


def test_ordinary_turns() -> None:
    state = derive_state([turn(1, "session-1"), turn(2, "session-2")])
    assert state == ConversationState(paused=False, last_session="session-2", turns=2, next_seq=3)


def test_pause_raised_by_a_session() -> None:
    records = [
        turn(1, "session-1"),
        turn(2, "session-2", f"{MARKER} Which DB?", needs_jc=True),
    ]
    state = derive_state(records)
    assert state.paused
    assert state.needs_jc_session == "session-2"
    assert state.needs_jc_text == f"{MARKER} Which DB?"
    assert state.last_session == "session-2"
    assert operator_target(state) == "session-2"


def test_operator_answer_lifts_the_pause() -> None:
    raised = derive_state([turn(1, "session-2", f"{MARKER} Which DB?", needs_jc=True)])
    target = operator_target(raised)
    assert target == "session-2"

    state = apply_turn(raised, turn(2, OPERATOR, "Use Postgres, session-2.", target=target))

    assert not state.paused
    assert state.needs_jc_session is None
    assert state.last_session == "session-2"
    assert state.turns == 2
    assert state.next_seq == 3
    # The last question stays visible in status after it was answered.
    assert state.needs_jc_text == f"{MARKER} Which DB?"


def test_operator_answer_raising_again_keeps_the_original_session() -> None:
    raised = derive_state(
        [turn(1, "session-1"), turn(2, "session-2", f"{MARKER} Which DB?", needs_jc=True)]
    )

    state = apply_turn(
        raised,
        turn(3, OPERATOR, f"{MARKER} And which version?", needs_jc=True, target="session-2"),
    )

    assert state.paused
    assert state.needs_jc_session == "session-2"  # not "operator"
    assert state.needs_jc_text == f"{MARKER} And which version?"
    assert operator_target(state) == "session-2"


def test_operator_raising_without_a_pause_falls_back_to_the_last_session() -> None:
    before = derive_state([turn(1, "session-1")])
    state = apply_turn(before, turn(2, OPERATOR, f"{MARKER} Sure?", needs_jc=True))
    assert state.needs_jc_session == "session-1"


def test_operator_target_without_pause_is_the_last_session() -> None:
    assert operator_target(ConversationState()) is None
    assert operator_target(ConversationState(last_session="session-3")) == "session-3"
    assert (
        operator_target(ConversationState(needs_jc_session="session-1", last_session="session-3"))
        == "session-1"
    )


def test_summary_record_carries_the_state() -> None:
    records = [
        summary(
            10,
            state=Carried(
                paused=True,
                needs_jc_session="session-1",
                needs_jc_text=f"{MARKER} Ship it?",
                last_session="session-1",
            ),
        ),
    ]
    state = derive_state(records)
    assert state == ConversationState(
        paused=True,
        needs_jc_session="session-1",
        needs_jc_text=f"{MARKER} Ship it?",
        last_session="session-1",
        turns=0,
        next_seq=11,
        needs_jc_question="Q10-s",  # a summary from before question ids: one made up for it
    )

    after = derive_state([*records, turn(11, OPERATOR, "Yes.", target="session-1")])
    assert not after.paused
    assert after.turns == 1
    assert after.next_seq == 12


def test_carried_state_round_trips_through_a_summary() -> None:
    state = derive_state([turn(1, "session-2", f"{MARKER} ?", needs_jc=True)])
    question = state.needs_jc_question
    assert question is not None and question.startswith("Q1-")
    assert state.carried() == Carried(True, "session-2", f"{MARKER} ?", "session-2", question)

    carried = derive_state([summary(1, state=state.carried())])

    assert carried == dataclasses.replace(state, turns=0)


def test_a_summary_resets_what_came_before_it() -> None:
    # Whatever the turns before it said, the summary's carried state is what counts.
    records: list[Record] = [
        turn(1, "session-1", f"{MARKER} ?", needs_jc=True),
        summary(5, state=Carried(last_session="session-3")),
    ]
    assert derive_state(records) == ConversationState(last_session="session-3", next_seq=6)


# ---- rendering ----------------------------------------------------------------------------


def test_render_alternates_user_and_assistant() -> None:
    records = [turn(1, "session-1", "r1"), turn(2, "session-2", "r2")]

    messages = render_messages(records, user_text(session("session-1"), "next"))

    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant", "user"]
    assert messages[0]["content"] == [{"type": "text", "text": "[from session-1]\nmessage 1"}]
    assert messages[1]["content"] == [{"type": "text", "text": "r1"}]
    assert messages[3]["content"] == [{"type": "text", "text": "r2"}]
    assert messages[4]["content"][-1]["text"] == "[from session-1]\nnext"


def test_cache_control_only_on_the_newest_turns_last_block() -> None:
    records: list[Record] = [summary(0), turn(1, "session-1"), turn(2, "session-2")]
    messages = render_messages(records, "newest")
    assert cache_controls(messages) == [(4, 0)]
    assert messages[4]["content"][0]["cache_control"] == {"type": "ephemeral"}

    # With a summary waiting for the new turn, the breakpoint is still on its last block.
    messages = render_messages([summary(0)], "newest")
    assert cache_controls(messages) == [(0, 1)]

    assert cache_controls(render_messages(records, None)) == []


def test_summary_is_the_first_block_of_the_first_user_message() -> None:
    records: list[Record] = [summary(4, "S"), turn(5, "session-1", "r5")]

    messages = render_messages(records, "new")

    assert messages[0] == {
        "role": "user",
        "content": [
            {"type": "text", "text": SUMMARY_HEADER + "S"},
            {"type": "text", "text": "[from session-1]\nmessage 5"},
        ],
    }
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert len(messages[2]["content"]) == 1  # the summary appears once


def test_summary_with_no_kept_turns_goes_into_the_new_message() -> None:
    messages = render_messages([summary(4, "S")], "new")
    assert messages == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": SUMMARY_HEADER + "S"},
                {"type": "text", "text": "new", "cache_control": {"type": "ephemeral"}},
            ],
        }
    ]


def test_empty_reply_is_rendered_as_a_placeholder() -> None:
    # The API refuses an empty assistant text block.
    messages = render_messages([turn(1, "session-1", "")], None)
    assert messages[1]["content"] == [{"type": "text", "text": "(no reply)"}]


def without_cache_control(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            **m,
            "content": [{k: v for k, v in b.items() if k != "cache_control"} for b in m["content"]],
        }
        for m in messages
    ]


@pytest.mark.parametrize("with_summary", [False, True])
def test_prefix_is_byte_identical_when_a_turn_is_added(with_summary: bool) -> None:
    records: list[Record] = [summary(2, "S")] if with_summary else []
    records += [turn(3, "session-1", "r3"), turn(4, OPERATOR, "r4", target="session-1")]
    new_user = user_text(session("session-2"), "fifth")

    before = render_messages(records, new_user)
    after = render_messages([*records, turn(5, "session-2", "r5", user=new_user)], "sixth")

    shared = len(before) - 1
    assert json.dumps(after[:shared]).encode() == json.dumps(before[:shared]).encode()
    # The turn that was new is now history: the same bytes except for the moved breakpoint.
    assert json.dumps(without_cache_control(after[: shared + 1])) == json.dumps(
        without_cache_control(before)
    )


def test_breakpoint_ttls_are_placed_as_asked() -> None:
    records: list[Record] = [summary(0), turn(1, "session-1"), turn(2, "session-2")]
    messages = render_messages(records, "newest", prefix_ttl="1h", new_ttl="1h", boundary=(2, "1h"))
    # The end of the first reply (2 turns back), the end of the last reply, the new turn.
    assert cache_controls(messages) == [(1, 0), (3, 0), (4, 0)]
    assert all(
        messages[m]["content"][b]["cache_control"] == {"type": "ephemeral", "ttl": "1h"}
        for m, b in cache_controls(messages)
    )
    # 5 m is the API's default TTL: left unsaid, the bytes relay always sent.
    messages = render_messages(records, "newest", prefix_ttl="1h", new_ttl="5m")
    assert messages[4]["content"][0]["cache_control"] == {"type": "ephemeral"}
    assert cache_controls(render_messages(records, "newest", new_ttl=None)) == []
    # Nothing to mark: no reply yet, or a boundary further back than the history.
    assert cache_controls(render_messages([], "first", prefix_ttl="1h")) == [(0, 0)]
    assert cache_controls(render_messages(records, None, boundary=(3, "1h"), new_ttl=None)) == []


def test_render_system_ttl() -> None:
    assert render_system("S", "1h")[0]["cache_control"] == {"type": "ephemeral", "ttl": "1h"}
    assert render_system("S", None) == [{"type": "text", "text": "S"}]


def test_plan_summary_instruction_ttl() -> None:
    plan = plan_summary(long_turns(1, 5), 100, 2, "Summarize now.", new_ttl=None)
    assert plan is not None and cache_controls(plan.messages) == []


def test_render_system_has_a_breakpoint() -> None:
    assert render_system("You coordinate.") == [
        {"type": "text", "text": "You coordinate.", "cache_control": {"type": "ephemeral"}}
    ]


@pytest.mark.parametrize(
    ("sender", "expected"),
    [
        (session("session-1"), "[from session-1]\nhi"),
        (OPERATOR, "[from operator]\nhi"),
        (RELAY, "[from relay]\nhi"),
    ],
)
def test_user_text_names_the_sender(sender: Sender, expected: str) -> None:
    assert user_text(sender, "hi") == expected


# ---- summarization split and size --------------------------------------------------------


def test_split_for_summary_keeps_the_newest_turns() -> None:
    old_summary = summary(0)
    turns = [turn(n, "session-1") for n in range(1, 6)]

    old, keep = split_for_summary([old_summary, *turns], keep_recent=2)

    assert keep == turns[3:]
    assert old == [old_summary, *turns[:3]]  # the earlier summary is summarized again
    assert old[0] is old_summary


def test_split_for_summary_edges() -> None:
    turns = [turn(n, "session-1") for n in range(1, 4)]
    assert split_for_summary(turns, keep_recent=0) == (turns, [])
    assert split_for_summary(turns, keep_recent=10) == ([], turns)
    assert split_for_summary([], keep_recent=3) == ([], [])


def test_split_for_summary_uses_identity_not_equality() -> None:
    a = turn(1, "session-1")
    b = dataclasses.replace(a)  # equal content, a different record
    assert a == b and a is not b
    old, keep = split_for_summary([a, b], keep_recent=1)
    assert old[0] is a
    assert keep[0] is b


def test_history_chars() -> None:
    records: list[Record] = [
        summary(0, "s" * 100),
        turn(1, "session-1", "r" * 30, user="u" * 20),
        turn(2, "session-2", "", user="v" * 7),
    ]
    assert history_chars(records) == 100 + 20 + 30 + 7
    assert history_chars([]) == 0


# ---- summarization plan ------------------------------------------------------------------


def long_turns(first: int, last: int, size: int = 100) -> list[Turn]:
    """Turns of exactly `size` user + reply characters."""
    return [
        turn(n, "session-1", "r" * (size // 2), user="u" * (size // 2))
        for n in range(first, last + 1)
    ]


def test_no_plan_while_the_history_fits_under_the_cap() -> None:
    records = long_turns(1, 5)
    assert history_chars(records) == 500
    assert plan_summary(records, 500, 2, "Summarize now.") is None
    assert plan_summary(records, 499, 2, "Summarize now.") is not None


def test_no_plan_when_only_the_kept_turns_are_left() -> None:
    # They alone exceed the cap, and an earlier summary by itself is nothing to gain from.
    assert plan_summary(long_turns(1, 3), 10, 3, "Summarize now.") is None
    assert plan_summary([summary(0, "s" * 50), *long_turns(1, 2)], 10, 2, "Summarize.") is None


def test_plan_sends_the_old_part_then_the_instruction() -> None:
    old_summary = summary(0, "S")
    records: list[Record] = [old_summary, *long_turns(1, 5)]

    plan = plan_summary(records, 100, 2, "Summarize now.")

    assert plan is not None
    assert plan.old == records[:4]
    assert plan.keep == records[4:]
    assert plan.covers == 3  # the earlier summary is not a turn
    assert plan.messages == render_messages(records[:4], "[from relay]\nSummarize now.")
    assert plan.messages[-1]["role"] == "user"
    assert plan.messages[-1]["content"][-1]["text"] == "[from relay]\nSummarize now."
    assert cache_controls(plan.messages) == [(6, 0)]  # three turns, then the instruction


def test_plan_summary_stands_just_before_the_first_kept_turn() -> None:
    records: list[Record] = [
        *long_turns(1, 3),
        turn(4, "session-2", f"{MARKER} Which DB?", needs_jc=True),
        turn(5, OPERATOR, "Postgres.", target="session-2"),
        turn(6, "session-1"),
    ]
    state = derive_state(records)
    plan = plan_summary(records, 100, 2, "Summarize now.")
    assert plan is not None

    made = plan.summary("the gist", "2026-05-03T00:00:00Z", 0.25, state)

    assert made == Summary(4, "the gist", "2026-05-03T00:00:00Z", 4, 0.25, state.carried())
    assert [t.seq for t in plan.keep] == [5, 6]
    # The history it leaves behind says the same about where things stand, including the
    # answered question, which only the summary remembers now.
    after = derive_state([made, *plan.keep])
    assert after == dataclasses.replace(state, turns=2)
    assert after.needs_jc_text == f"{MARKER} Which DB?"


def test_plan_summary_with_nothing_kept_stands_for_everything() -> None:
    records = long_turns(1, 4)
    state = derive_state(records)
    plan = plan_summary(records, 10, 0, "Summarize now.")
    assert plan is not None and plan.keep == []

    made = plan.summary("all of it", "2026-05-03T00:00:00Z", 0.0, state)

    assert (made.seq, made.covers_turns) == (4, 4)
    after = derive_state([made])
    assert after.next_seq == state.next_seq == 5
    assert after.last_session == "session-1"
