"""Typed records, one codec each: history turns and summaries, ledger entries, status.

On disk these are JSON objects whose keys are part of the on-disk format (docs/
architecture.md, "On disk"); in memory they are frozen dataclasses, so `mypy --strict`
checks every field. Decoding is lenient where older releases wrote less (missing
optional keys take their defaults) and strict where a wrong value would mislead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from relay.prices import Usage

# ---- senders -----------------------------------------------------------------------------

SenderKind = Literal["session", "operator", "relay"]


@dataclass(frozen=True)
class Sender:
    """Who wrote a turn. A session can never be the operator: the kind says which it is,
    and session names that would read like one of relay's own are refused by the config."""

    kind: SenderKind
    session: str | None = None

    @property
    def wire(self) -> str:
        """The string stored on disk: the session's name, or "operator" / "relay"."""
        return self.session if self.session is not None else self.kind

    @staticmethod
    def from_wire(value: str) -> Sender:
        if value == "operator":
            return OPERATOR
        if value == "relay":
            return RELAY
        return Sender("session", value)


OPERATOR = Sender("operator")
RELAY = Sender("relay")


def session(name: str) -> Sender:
    return Sender("session", name)


# ---- history -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Carried:
    """What a summary carries over about where the conversation stood."""

    paused: bool = False
    needs_jc_session: str | None = None
    needs_jc_text: str | None = None
    last_session: str | None = None
    needs_jc_question: str | None = None  # the pending question's id

    def to_json(self) -> dict[str, Any]:
        carried: dict[str, Any] = {
            "paused": self.paused,
            "needs_jc_session": self.needs_jc_session,
            "needs_jc_text": self.needs_jc_text,
            "last_session": self.last_session,
        }
        if self.needs_jc_question is not None:  # older releases wrote none
            carried["needs_jc_question"] = self.needs_jc_question
        return carried

    @staticmethod
    def from_json(raw: Any) -> Carried:
        raw = raw if isinstance(raw, dict) else {}
        return Carried(
            paused=bool(raw.get("paused")),
            needs_jc_session=_opt_str(raw, "needs_jc_session"),
            needs_jc_text=_opt_str(raw, "needs_jc_text"),
            last_session=_opt_str(raw, "last_session"),
            needs_jc_question=_opt_str(raw, "needs_jc_question"),
        )


@dataclass(frozen=True)
class Turn:
    """One exchange: what was sent to chat-Claude for an inbox item, and its reply."""

    seq: int
    key: str  # the inbox item's name (docs/architecture.md)
    sender: Sender
    user: str  # the user turn as chat-Claude saw it
    reply: str
    target: str | None  # the session the reply is dispatched to; None: nobody
    needs_jc: bool
    ts: str
    cost_usd: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "turn",
            "seq": self.seq,
            "key": self.key,
            "session": self.sender.wire,
            "user": self.user,
            "reply": self.reply,
            "target": self.target,
            "needs_jc": self.needs_jc,
            "ts": self.ts,
            "cost_usd": self.cost_usd,
        }


@dataclass(frozen=True)
class Summary:
    """Stands for every turn before `seq` + 1, after a summarization."""

    seq: int
    text: str
    ts: str
    covers_turns: int
    cost_usd: float
    state: Carried = field(default_factory=Carried)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "summary",
            "seq": self.seq,
            "text": self.text,
            "ts": self.ts,
            "covers_turns": self.covers_turns,
            "cost_usd": self.cost_usd,
            "state": self.state.to_json(),
        }


Record = Turn | Summary


def decode_record(raw: Any) -> Record:
    """A history line's object as a record; ValueError names what is wrong."""
    if not isinstance(raw, dict):
        raise ValueError("not an object")
    kind = raw.get("kind")
    if kind == "turn":
        return Turn(
            seq=_int(raw, "seq"),
            key=_str(raw, "key"),
            sender=Sender.from_wire(_str(raw, "session")),
            user=_str(raw, "user"),
            reply=_str(raw, "reply"),
            target=_opt_str(raw, "target"),
            needs_jc=bool(raw.get("needs_jc")),
            ts=str(raw.get("ts", "")),
            cost_usd=_float(raw, "cost_usd"),
        )
    if kind == "summary":
        return Summary(
            seq=_int(raw, "seq"),
            text=_str(raw, "text"),
            ts=str(raw.get("ts", "")),
            covers_turns=_count(raw, "covers_turns"),
            cost_usd=_float(raw, "cost_usd"),
            state=Carried.from_json(raw.get("state")),
        )
    raise ValueError(f"unknown record kind {kind!r}")


# ---- the ledger --------------------------------------------------------------------------


@dataclass(frozen=True)
class LedgerEntry:
    """One API call's usage and estimated cost (state/ledger.jsonl)."""

    ts: str
    kind: Literal["turn", "summary"]
    key: str
    sender: Sender
    model: str
    request_id: str | None
    stop_reason: str | None
    usage: Usage
    cost_usd: float
    price_known: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "ts": self.ts,
            "kind": self.kind,
            "key": self.key,
            "session": self.sender.wire,
            "model": self.model,
            "request_id": self.request_id,
            "stop_reason": self.stop_reason,
            "usage": self.usage.as_dict(),
            "cost_usd": self.cost_usd,
            "price_known": self.price_known,
        }


USAGE_KEYS = (
    "input_tokens",
    "output_tokens",
    "cache_write_tokens",
    "cache_write_1h_tokens",
    "cache_read_tokens",
)


def parse_ts(ts: str) -> datetime:
    """A time relay wrote (ledger.iso: "…Z"; the history's and budget.json's too) as an
    aware datetime; a time without a zone is UTC, as relay writes them. ValueError if it
    is not one."""
    try:
        moment = datetime.fromisoformat(ts)
    except ValueError:
        raise ValueError(f"ts {ts!r} is not an ISO time") from None
    if not 1 < moment.year < 9999:  # no zone may move it out of datetime's range
        raise ValueError(f"ts {ts!r} is out of range")
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def decode_ledger_entry(raw: Any) -> LedgerEntry:
    """A ledger line's object as an entry; ValueError names what is wrong. Older releases
    wrote no 1 h writes and no `price_known`: those take 0 and True. A token count or a cost
    that is not a non-negative number is refused rather than read as 0, so a report never
    quietly undercounts a damaged line."""
    if not isinstance(raw, dict):
        raise ValueError("not an object")
    kind = raw.get("kind")
    if kind not in ("turn", "summary"):
        raise ValueError(f"unknown kind {kind!r}")
    usage = raw.get("usage")
    if not isinstance(usage, dict):
        raise ValueError("usage is not an object")
    counts: dict[str, int] = {}
    for name in USAGE_KEYS:
        value = usage.get(name, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"usage.{name} is not a token count")
        counts[name] = value
    cost = raw.get("cost_usd")
    if (
        isinstance(cost, bool)
        or not isinstance(cost, int | float)
        or not math.isfinite(cost)
        or cost < 0
    ):
        raise ValueError("cost_usd is not a non-negative number")
    known = raw.get("price_known", True)
    if not isinstance(known, bool):
        raise ValueError("price_known is not true or false")
    return LedgerEntry(
        ts=_str(raw, "ts"),
        kind="turn" if kind == "turn" else "summary",
        key=_str(raw, "key"),
        sender=Sender.from_wire(_str(raw, "session")),
        model=_str(raw, "model"),
        request_id=_opt_str(raw, "request_id"),
        stop_reason=_opt_str(raw, "stop_reason"),
        usage=Usage(**counts),
        cost_usd=float(cost),
        price_known=known,
    )


# ---- status ------------------------------------------------------------------------------


@dataclass(frozen=True)
class BudgetStatus:
    """The budgets as status.json shows them: the caps, what was spent against them, and
    why calls are blocked (a cap reached, the workspace's limit), if they are."""

    daily_usd: float | None
    monthly_usd: float | None
    timezone: str
    blocked: str | None  # the budget that stopped calls: daily, monthly or workspace
    resets_at: str | None  # ISO UTC: when calls start again by themselves

    def to_json(self) -> dict[str, Any]:
        return {
            "daily_usd": self.daily_usd,
            "monthly_usd": self.monthly_usd,
            "timezone": self.timezone,
            "blocked": self.blocked,
            "resets_at": self.resets_at,
        }


@dataclass(frozen=True)
class ReloadResult:
    """How the latest `relay reload` went in this process (status.json `last_reload`):
    `seq` counts this process's reloads, so `relay reload` can tell its own from an
    earlier one."""

    seq: int
    at: str
    ok: bool
    errors: tuple[str, ...] = ()  # why it was refused
    changed: tuple[str, ...] = ()  # the settings it changed, by key path

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "at": self.at,
            "ok": self.ok,
            "errors": list(self.errors),
            "changed": list(self.changed),
        }

    @staticmethod
    def from_json(raw: Any) -> ReloadResult | None:
        """None for anything that is not one (no reload yet, or an older release)."""
        if not isinstance(raw, dict):
            return None
        try:
            seq = _int(raw, "seq")
        except ValueError:
            return None
        return ReloadResult(
            seq,
            str(raw.get("at", "")),
            raw.get("ok") is True,
            _strings(raw, "errors"),
            _strings(raw, "changed"),
        )


@dataclass(frozen=True)
class Status:
    """One snapshot of the service, taken once per loop: state/status.json and STATUS=."""

    state: str
    state_detail: str
    last_dispatch_session: str | None
    last_needs_jc_text: str | None
    needs_jc_session: str | None
    needs_jc_question: str | None
    history_turns: int
    history_chars: int
    pending: dict[str, int]
    awaiting_pickup: list[str]
    inbox: int
    last_error: str | None
    cost_today_usd: float
    calls_today: int
    api_key: bool
    api_key_help: str | None
    model: str
    pid: int
    updated_at: str
    cost_month_usd: float = 0.0
    budget: BudgetStatus | None = None
    last_reload: ReloadResult | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "cost_month_usd": round(self.cost_month_usd, 6),
            "budget": self.budget.to_json() if self.budget else None,
            "state": self.state,
            "state_detail": self.state_detail,
            "last_dispatch_session": self.last_dispatch_session,
            "last_needs_jc_text": self.last_needs_jc_text,
            "needs_jc_session": self.needs_jc_session,
            "needs_jc_question": self.needs_jc_question,
            "history_turns": self.history_turns,
            "history_chars": self.history_chars,
            "pending": dict(self.pending),
            "awaiting_pickup": list(self.awaiting_pickup),
            "inbox": self.inbox,
            "last_error": self.last_error,
            "cost_today_usd": round(self.cost_today_usd, 6),
            "calls_today": self.calls_today,
            "api_key": self.api_key,
            "api_key_help": self.api_key_help,
            "model": self.model,
            "pid": self.pid,
            "updated_at": self.updated_at,
            "last_reload": self.last_reload.to_json() if self.last_reload else None,
        }

    def line(self) -> str:
        """The one-line form for systemd's STATUS=."""
        return (
            f"{self.state} ({self.state_detail}); inbox {self.inbox}, "
            f"pending {sum(self.pending.values())}; ${self.cost_today_usd:.4f} today"
        )


# ---- field helpers -----------------------------------------------------------------------


def _str(raw: dict[str, Any], key: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str):
        raise ValueError(f"{key} is not a string")
    return value


def _strings(raw: dict[str, Any], key: str) -> tuple[str, ...]:
    value = raw.get(key)
    return tuple(v for v in value if isinstance(v, str)) if isinstance(value, list) else ()


def _opt_str(raw: dict[str, Any], key: str) -> str | None:
    value = raw.get(key)
    return value if isinstance(value, str) else None


def _int(raw: dict[str, Any], key: str) -> int:
    value = raw.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key} is not an integer")
    return value


def _count(raw: dict[str, Any], key: str) -> int:
    value = raw.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _float(raw: dict[str, Any], key: str) -> float:
    value = raw.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return 0.0
    return float(value)
