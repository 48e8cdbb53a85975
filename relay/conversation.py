"""The conversation's pure logic: state derived from history, request rendering, the
[NEEDS-JC] check, routing and summarization planning. No I/O here.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from relay.records import RELAY, Carried, Record, Sender, Summary, Turn

SUMMARY_HEADER = "Summary of the conversation so far (earlier turns were summarized):\n\n"

# A prompt-cache entry's lifetime; relay/cache_policy.py decides which each breakpoint gets.
Ttl = Literal["5m", "1h"]

_DIRECT_RE = re.compile(r"\A\s*@([A-Za-z0-9][A-Za-z0-9._-]{0,63})\s*:[ \t]*\n?(.*)\Z", re.DOTALL)


@dataclass(frozen=True)
class ConversationState:
    """What the history says about where the conversation stands."""

    paused: bool = False  # a [NEEDS-JC] reply is waiting for the operator
    needs_jc_session: str | None = None  # whose message raised it
    needs_jc_text: str | None = None
    last_session: str | None = None  # the last session that took part
    turns: int = 0
    next_seq: int = 1
    needs_jc_question: str | None = None  # the pending question's id (question_id)

    def carried(self) -> Carried:
        return Carried(
            self.paused,
            self.needs_jc_session,
            self.needs_jc_text,
            self.last_session,
            self.needs_jc_question if self.paused else None,
        )


def question_id(turn: Turn) -> str:
    """The id of the question a [NEEDS-JC] turn asks: derived from the history, so it is
    the same after any restart, and different for every question (the sequence number,
    and a digest of the item and time, which differ even if the history is ever reset)."""
    digest = hashlib.sha256(f"{turn.seq}\0{turn.key}\0{turn.ts}".encode()).hexdigest()
    return f"Q{turn.seq}-{digest[:6]}"


def derive_state(records: Sequence[Record]) -> ConversationState:
    state = ConversationState()
    for record in records:
        if isinstance(record, Summary):
            carried = record.state
            question = carried.needs_jc_question
            if carried.paused and question is None:  # a summary written before question ids
                question = f"Q{record.seq}-s"
            state = ConversationState(
                paused=carried.paused,
                needs_jc_session=carried.needs_jc_session,
                needs_jc_text=carried.needs_jc_text,
                last_session=carried.last_session,
                turns=0,
                next_seq=record.seq + 1,
                needs_jc_question=question if carried.paused else None,
            )
        else:
            state = apply_turn(state, record)
    return state


def apply_turn(state: ConversationState, turn: Turn) -> ConversationState:
    """The state after `turn`."""
    own = turn.sender.session
    last = turn.target or own or state.last_session
    if turn.needs_jc:
        origin = own if own is not None else state.needs_jc_session
        return ConversationState(
            paused=True,
            needs_jc_session=origin or state.last_session,
            needs_jc_text=turn.reply,
            last_session=last,
            turns=state.turns + 1,
            next_seq=turn.seq + 1,
            needs_jc_question=question_id(turn),
        )
    return ConversationState(
        paused=False,
        needs_jc_session=None,
        needs_jc_text=state.needs_jc_text,
        last_session=last,
        turns=state.turns + 1,
        next_seq=turn.seq + 1,
    )


def user_text(sender: Sender, content: str) -> str:
    """The user turn as chat-Claude sees it: who wrote it, then what they wrote."""
    return f"[from {sender.wire}]\n{content}"


def has_needs_jc(reply: str, marker: str, window: int) -> bool:
    return marker in reply[:window]


def parse_operator(text: str) -> tuple[str | None, str]:
    """`@session-N: text` → (session, text) for direct dispatch; anything else → (None, text)."""
    match = _DIRECT_RE.match(text)
    if match:
        return match.group(1), match.group(2).strip("\n")
    return None, text.strip()


def operator_target(state: ConversationState) -> str | None:
    """Where the reply to an operator turn goes: the session that raised the pause, else
    the last active session."""
    return state.needs_jc_session or state.last_session


def history_chars(records: Sequence[Record]) -> int:
    return sum(
        len(r.text) if isinstance(r, Summary) else len(r.user) + len(r.reply) for r in records
    )


def cache_control(ttl: Ttl) -> dict[str, Any]:
    """A breakpoint's `cache_control`. 5 m is the API's default TTL, so it is left unsaid:
    the same bytes relay always sent."""
    return {"type": "ephemeral"} if ttl == "5m" else {"type": "ephemeral", "ttl": ttl}


def render_messages(
    records: Sequence[Record],
    new_user: str | None,
    *,
    prefix_ttl: Ttl | None = None,
    new_ttl: Ttl | None = "5m",
    boundary: tuple[int, Ttl] | None = None,
) -> list[dict[str, Any]]:
    """The `messages` list for the API: history, then the new user turn.

    Breakpoints (None: none there): `new_ttl` on the new turn's last block, so the whole
    conversation so far is a cached prefix for the next call; `prefix_ttl` on the end of the
    last reply in history, so a call that comes after the new turn's entry has expired still
    reads all but the newest turn; `boundary` (n, ttl) on the end of the reply n turns from
    the end (1: the last), where a coming summarization will cut, so that call can read what
    it summarizes. The caller orders the TTLs (1 h before 5 m).

    A summary becomes the first text block of the first user message, which keeps the
    user/assistant alternation without inventing an assistant reply.
    """
    messages: list[dict[str, Any]] = []
    pending_summary: str | None = None
    for record in records:
        if isinstance(record, Summary):
            pending_summary = SUMMARY_HEADER + record.text
            continue
        blocks: list[dict[str, Any]] = [{"type": "text", "text": record.user}]
        if pending_summary is not None:
            blocks.insert(0, {"type": "text", "text": pending_summary})
            pending_summary = None
        messages.append({"role": "user", "content": blocks})
        messages.append(
            {
                "role": "assistant",
                "content": [{"type": "text", "text": record.reply or "(no reply)"}],
            }
        )
    if boundary is not None and 0 < boundary[0] <= len(messages) // 2:
        messages[-2 * boundary[0] + 1]["content"][-1]["cache_control"] = cache_control(boundary[1])
    if prefix_ttl is not None and messages:
        messages[-1]["content"][-1]["cache_control"] = cache_control(prefix_ttl)
    if new_user is not None:
        last: list[dict[str, Any]] = [{"type": "text", "text": new_user}]
        if pending_summary is not None:
            last.insert(0, {"type": "text", "text": pending_summary})
        if new_ttl is not None:
            last[-1]["cache_control"] = cache_control(new_ttl)
        messages.append({"role": "user", "content": last})
    return messages


def render_system(system_prompt: str, ttl: Ttl | None = "5m") -> list[dict[str, Any]]:
    block: dict[str, Any] = {"type": "text", "text": system_prompt}
    if ttl is not None:
        block["cache_control"] = cache_control(ttl)
    return [block]


def split_for_summary(
    records: Sequence[Record], keep_recent: int
) -> tuple[list[Record], list[Turn]]:
    """(records to summarize, turns kept verbatim). An earlier summary is summarized again."""
    turns = [r for r in records if isinstance(r, Turn)]
    keep = turns[len(turns) - keep_recent :] if keep_recent > 0 else []
    kept = {id(r) for r in keep}
    return [r for r in records if id(r) not in kept], keep


@dataclass(frozen=True)
class SummaryPlan:
    """A summarization to run: what to send, and what the history becomes after it."""

    old: list[Record]
    keep: list[Turn]
    messages: list[dict[str, Any]]

    @property
    def covers(self) -> int:
        return sum(1 for r in self.old if isinstance(r, Turn))

    def summary(self, text: str, ts: str, cost_usd: float, state: ConversationState) -> Summary:
        first_kept = self.keep[0].seq if self.keep else state.next_seq
        return Summary(first_kept - 1, text, ts, self.covers, cost_usd, state.carried())


def plan_summary(
    records: Sequence[Record],
    cap: int,
    keep_recent: int,
    summarization_prompt: str,
    *,
    new_ttl: Ttl | None = "5m",
) -> SummaryPlan | None:
    """The summarization due now, or None: the history fits under `cap`, or only the turns
    kept verbatim are left and they alone exceed it (nothing would be gained). `new_ttl`:
    the instruction's breakpoint, through which the call reads the summarized part."""
    if history_chars(records) <= cap:
        return None
    old, keep = split_for_summary(records, keep_recent)
    if not any(isinstance(r, Turn) for r in old):
        return None
    messages = render_messages(old, user_text(RELAY, summarization_prompt), new_ttl=new_ttl)
    return SummaryPlan(old, keep, messages)
