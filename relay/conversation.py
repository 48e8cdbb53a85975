"""The conversation's pure logic: state derived from history, request rendering, the
[NEEDS-JC] check, routing and the summarization split. No I/O here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from relay.history import Record

OPERATOR = "operator"
SUMMARY_HEADER = "Summary of the conversation so far (earlier turns were summarized):\n\n"

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


def derive_state(records: list[Record]) -> ConversationState:
    state = ConversationState()
    for record in records:
        if record.get("kind") == "summary":
            carried = record.get("state") or {}
            state = ConversationState(
                paused=bool(carried.get("paused")),
                needs_jc_session=carried.get("needs_jc_session"),
                needs_jc_text=carried.get("needs_jc_text"),
                last_session=carried.get("last_session"),
                turns=0,
                next_seq=int(record.get("seq", 0)) + 1,
            )
        elif record.get("kind") == "turn":
            state = apply_turn(state, record)
    return state


def apply_turn(state: ConversationState, record: Record) -> ConversationState:
    """The state after a turn record (see `turn_record`)."""
    target = record.get("target")
    session = record.get("session")
    last = target or (session if session != OPERATOR else None) or state.last_session
    if record.get("needs_jc"):
        origin = state.needs_jc_session if session == OPERATOR else session
        return ConversationState(
            paused=True,
            needs_jc_session=origin or state.last_session,
            needs_jc_text=record.get("reply"),
            last_session=last,
            turns=state.turns + 1,
            next_seq=int(record["seq"]) + 1,
        )
    return ConversationState(
        paused=False,
        needs_jc_session=None,
        needs_jc_text=state.needs_jc_text,
        last_session=last,
        turns=state.turns + 1,
        next_seq=int(record["seq"]) + 1,
    )


def state_dict(state: ConversationState) -> dict[str, Any]:
    return {
        "paused": state.paused,
        "needs_jc_session": state.needs_jc_session,
        "needs_jc_text": state.needs_jc_text,
        "last_session": state.last_session,
    }


def user_text(source: str, content: str) -> str:
    """The user turn as chat-Claude sees it: who wrote it, then what they wrote."""
    return f"[from {source}]\n{content}"


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


def turn_record(
    *,
    seq: int,
    key: str,
    session: str,
    user: str,
    reply: str,
    target: str | None,
    needs_jc: bool,
    ts: str,
    cost_usd: float,
) -> Record:
    return {
        "kind": "turn",
        "seq": seq,
        "key": key,
        "session": session,
        "user": user,
        "reply": reply,
        "target": target,
        "needs_jc": needs_jc,
        "ts": ts,
        "cost_usd": cost_usd,
    }


def history_chars(records: list[Record]) -> int:
    total = 0
    for record in records:
        if record.get("kind") == "summary":
            total += len(record.get("text", ""))
        else:
            total += len(record.get("user", "")) + len(record.get("reply", ""))
    return total


def render_messages(records: list[Record], new_user: str | None) -> list[dict[str, Any]]:
    """The `messages` list for the API: history, then the new user turn with a cache
    breakpoint on its last block, so the whole conversation so far is a cached prefix.

    A summary becomes the first text block of the first user message, which keeps the
    user/assistant alternation without inventing an assistant reply.
    """
    messages: list[dict[str, Any]] = []
    pending_summary: str | None = None
    for record in records:
        if record.get("kind") == "summary":
            pending_summary = SUMMARY_HEADER + str(record.get("text", ""))
            continue
        blocks: list[dict[str, Any]] = [{"type": "text", "text": str(record["user"])}]
        if pending_summary is not None:
            blocks.insert(0, {"type": "text", "text": pending_summary})
            pending_summary = None
        messages.append({"role": "user", "content": blocks})
        messages.append(
            {
                "role": "assistant",
                "content": [{"type": "text", "text": str(record["reply"]) or "(no reply)"}],
            }
        )
    if new_user is not None:
        last: list[dict[str, Any]] = [{"type": "text", "text": new_user}]
        if pending_summary is not None:
            last.insert(0, {"type": "text", "text": pending_summary})
        last[-1]["cache_control"] = {"type": "ephemeral"}
        messages.append({"role": "user", "content": last})
    return messages


def render_system(system_prompt: str) -> list[dict[str, Any]]:
    return [{"type": "text", "text": system_prompt, "cache_control": {"type": "ephemeral"}}]


def split_for_summary(records: list[Record], keep_recent: int) -> tuple[list[Record], list[Record]]:
    """(records to summarize, turns kept verbatim). An earlier summary is summarized again."""
    turns = [r for r in records if r.get("kind") == "turn"]
    keep = turns[len(turns) - keep_recent :] if keep_recent > 0 else []
    kept_ids = {id(r) for r in keep}
    return [r for r in records if id(r) not in kept_ids], keep


def summary_request(old: list[Record], summarization_prompt: str) -> list[dict[str, Any]]:
    """Messages for the one summarization call: the old part, then the instruction."""
    return render_messages(old, user_text("relay", summarization_prompt))
