"""Which prompt-cache breakpoints a call gets, and the TTL of each (`cache_ttl: auto | 5m |
1h`). Pure: decided from the history relay keeps and the time now, so it is the same after a
restart and follows a reloaded config at the next call.

A turn has three breakpoints, and a fourth shortly before a summarization (below), within the
API's four and its 20-block lookback (each call adds two blocks: the last reply and the new
turn):
  - the system prompt;
  - the prefix: the end of the last reply in history, so a call that comes after the newest
    turn's entry expired still reads all the conversation but that turn;
  - the new turn, so the next call reads everything.
The API wants longer-lived entries first (a 1 h breakpoint may not follow a 5 m one).

`auto`, measured by `python -m bench.cost` (README "Prompt caching"): system and prefix 1 h,
so any gap up to an hour re-reads the whole history (a [NEEDS-JC] pause, a session working for
twenty minutes), and only the newest turn's tokens are at stake when the guess for the new
turn is wrong; the new turn 5 m when the recent gaps between turns are short (the next call
reads through it, and a 5 m write costs 1.25x instead of 2x), else 1 h. On the benchmark's
100 turns this bills 0.23-0.24x of caching the system prompt alone at 1-minute, 10-minute and
mixed gaps, reading 95-96 % of input tokens from the cache, where forced `5m` re-writes the
whole history after every gap over five minutes (1.22x at 10-minute gaps) and forced `1h`
pays 2x for every new turn (0.25x at 1-minute gaps). Shortly before a summarization a fourth
breakpoint marks where it will cut, so the summarization reads what it summarizes: without
it auto billed 0.26x at 10-minute gaps. When turns come more than an hour apart (most of the
recent gaps, and the newest two) nothing survives to be read, and a write costs more than
sending the prompt uncached: no breakpoints.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from relay.config import Config
from relay.conversation import Ttl, history_chars
from relay.records import Record, Turn, parse_ts

CallKind = Literal["turn", "summary"]

# A gap under this is "short": the next call comes while a 5 m entry is still live, with a
# margin for the call's own latency (the entry is written when the answer starts, the gap is
# measured between recorded replies).
SHORT_GAP_S = 240.0
# Likewise for a 1 h entry.
HOUR_GAP_S = 55 * 60.0
# How many recent gaps the guess looks at: enough to ride out one odd gap, few enough to follow
# a change of rhythm within a few turns.
RECENT_GAPS = 8
# Break-even shares. A 5 m new turn instead of 1 h saves 0.75x its tokens when the next call
# reads it and costs 1.25x more when it is gone (written again at 1 h by the next call):
# worth it when more than 1.25 / 2 of the gaps are short.
SHORT_SHARE = 0.625
# Caching at all: a 1 h write of the prefix costs 1x more than sending it uncached and
# saves 0.9x when the next call reads it: worth it when more than 1 / 1.9 come within the hour.
HOUR_SHARE = 0.5


@dataclass(frozen=True)
class CachePlan:
    """The TTL of each breakpoint of one call; None: no breakpoint there."""

    system: Ttl | None = None
    prefix: Ttl | None = None  # the end of the last reply in history
    new_turn: Ttl | None = None  # the new user turn (a summary's: the instruction)
    # (n, ttl): the end of the reply n turns from the end, where a summarization that seems
    # near will cut (render order: between the system prompt and the prefix).
    boundary: tuple[int, Ttl] | None = None

    def __post_init__(self) -> None:
        cut = self.boundary[1] if self.boundary is not None else None
        ttls = [t for t in (self.system, cut, self.prefix, self.new_turn) if t is not None]
        if "5m" in ttls and "1h" in ttls[ttls.index("5m") :]:
            raise ValueError(f"a 1h breakpoint may not follow a 5m one: {ttls}")


# What the engine asks, at every call: the config (cache_ttl), the call's kind, the history
# and the wall-clock time now.
CachePolicy = Callable[[Config, CallKind, Sequence[Record], datetime], CachePlan]

NO_CACHE = CachePlan()


def configured(
    config: Config, kind: CallKind, records: Sequence[Record], now: datetime
) -> CachePlan:
    """relay's policy: `config.cache_ttl` forces one TTL on every breakpoint, or (`auto`)
    chooses from the gaps between recent turns."""
    forced: Ttl | None = "5m" if config.cache_ttl == "5m" else None
    if config.cache_ttl == "1h":
        forced = "1h"
    if forced is not None:
        if kind == "summary":
            return CachePlan(forced, None, forced)
        return CachePlan(forced, forced, forced, summary_boundary(config, records, forced))
    gaps = recent_gaps(records, now)
    if gaps and share(gaps, HOUR_GAP_S) < HOUR_SHARE and min(gaps[-2:]) >= HOUR_GAP_S:
        # Hours apart, lately too. A burst after a long idle (the newest gap is short, or the
        # previous one was) caches at once rather than after half its gaps turned short.
        return NO_CACHE
    if kind == "summary":
        return CachePlan("1h", None, summary_instruction(records, now))
    short = bool(gaps) and share(gaps, SHORT_GAP_S) >= SHORT_SHARE
    return CachePlan("1h", "1h", "5m" if short else "1h", summary_boundary(config, records, "1h"))


def summary_boundary(config: Config, records: Sequence[Record], ttl: Ttl) -> tuple[int, Ttl] | None:
    """The fourth breakpoint, while a summarization seems near (the history is within two of
    its largest recent turns of `history_char_cap`): on the reply where that summarization
    will cut (`keep_recent_turns` turns from the end, once this call's turn is recorded).
    It costs nothing here, inside the prefix this call reads, and lets the summarization read
    what it summarizes instead of paying for it in full."""
    keep = config.keep_recent_turns
    turns = [r for r in records if isinstance(r, Turn)]
    if keep < 2 or len(turns) < keep:
        return None
    step = max(len(t.user) + len(t.reply) for t in turns[-RECENT_GAPS:])
    if history_chars(records) + 2 * step <= config.history_char_cap:
        return None
    return keep, ttl


def summary_instruction(records: Sequence[Record], now: datetime) -> Ttl | None:
    """A summarization is sent once, and its prefix is never used again (the history is
    replaced), so a write there is waste. Its instruction's breakpoint is there to read the
    summarized part, through the boundary entry the last turn's call left (1 h): 5 m if that
    call came within the hour, else no breakpoint at all."""
    turns = [r for r in records if isinstance(r, Turn)]
    at = _time(turns[-1].ts) if turns else None
    return "5m" if at is not None and (_aware(now) - at).total_seconds() < HOUR_GAP_S else None


def recent_gaps(records: Sequence[Record], now: datetime) -> list[float]:
    """Seconds between recent turns, up to now (the call being planned), newest last.

    A gap that ended a [NEEDS-JC] pause is the operator's reading time, not the sessions'
    rhythm: it is left out. (The pause itself is what the 1 h prefix is for.)"""
    now = _aware(now)
    times: list[tuple[datetime, bool]] = []
    for record in records:
        if isinstance(record, Turn) and (at := _time(record.ts)) is not None:
            times.append((at, record.needs_jc))
    times.append((now, False))
    gaps = [
        (later - earlier).total_seconds()
        for (earlier, paused), (later, _) in itertools.pairwise(times)
        if not paused
    ]
    return [max(0.0, g) for g in gaps[-RECENT_GAPS:]]


def share(gaps: Sequence[float], under: float) -> float:
    return sum(1 for g in gaps if g < under) / len(gaps)


def _time(ts: str) -> datetime | None:
    try:
        return parse_ts(ts)
    except ValueError:
        return None


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)
