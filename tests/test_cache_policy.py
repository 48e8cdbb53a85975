"""The cache policy (relay/cache_policy.py): which breakpoints, with which TTLs, from
`cache_ttl` and the gaps between recent turns."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from relay import conversation as conv
from relay.cache_policy import CachePlan, configured, recent_gaps
from relay.config import Config
from relay.ledger import iso
from relay.records import Record, Summary, Turn, session

T0 = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
CONFIG = Config(sessions=("session-1",))


def turns(*gaps_min: float, needs_jc_at: tuple[int, ...] = (), size: int = 100) -> list[Record]:
    """Turns recorded `gaps_min` minutes apart (the first at T0)."""
    out: list[Record] = []
    at = T0
    for i, gap in enumerate((0.0, *gaps_min)):
        at += timedelta(minutes=gap)
        out.append(
            Turn(
                i + 1,
                f"k{i}",
                session("session-1"),
                "u" * size,
                "r" * size,
                "session-1",
                i in needs_jc_at,
                iso(at),
            )
        )
    return out


def last_ts(records: list[Record]) -> datetime:
    last = records[-1]
    assert isinstance(last, Turn)
    return datetime.fromisoformat(last.ts)


def plan(records: list[Record], after_min: float, config: Config = CONFIG) -> CachePlan:
    return configured(config, "turn", records, last_ts(records) + timedelta(minutes=after_min))


def test_short_gaps_keep_the_prefix_an_hour_and_the_new_turn_five_minutes() -> None:
    assert plan(turns(1, 2, 1, 3), 1) == CachePlan("1h", "1h", "5m")


def test_long_gaps_keep_the_new_turn_an_hour_too() -> None:
    assert plan(turns(10, 12, 9, 20), 10) == CachePlan("1h", "1h", "1h")
    # One short gap among long ones does not flip the guess; a change of rhythm does.
    assert plan(turns(10, 12, 9, 20, 1), 10).new_turn == "1h"
    assert plan(turns(10, 12, 9, 1, 1, 1, 1, 1), 1).new_turn == "5m"


def test_no_rhythm_yet_is_an_hour() -> None:
    assert configured(CONFIG, "turn", [], T0) == CachePlan("1h", "1h", "1h")


def test_a_needs_jc_pause_is_not_the_sessions_rhythm() -> None:
    # Sessions a minute apart; the operator answered the third turn's question 20 minutes on.
    records = turns(1, 1, 20, 1, 1, 1, 1, needs_jc_at=(2,))
    assert 20 * 60.0 not in recent_gaps(records, last_ts(records))
    assert plan(records, 1).new_turn == "5m"
    # The answer itself, 40 minutes after the question: the gap is left out as well.
    paused = turns(1, 1, 1, 1, needs_jc_at=(4,))
    assert recent_gaps(paused, last_ts(paused) + timedelta(minutes=40)) == [60.0] * 4
    assert plan(paused, 40).new_turn == "5m"


def test_hours_between_turns_cache_nothing() -> None:
    # Nothing would be read before it expired, and a write costs more than no cache.
    assert plan(turns(90, 120, 75), 100) == CachePlan()
    assert configured(CONFIG, "summary", turns(90, 120, 75), T0 + timedelta(hours=6)) == CachePlan()


def test_a_burst_after_a_long_idle_caches_from_its_first_call() -> None:
    # A day of hourly-plus gaps, then a night, then a session writes every minute: the
    # second call of the burst already reads what the first one wrote.
    idle = turns(90, 120, 75, 80, 95, 100, 90)
    assert plan(idle, 600) == CachePlan()  # still idle: nothing to cache
    burst = turns(90, 120, 75, 80, 95, 100, 90, 600)
    assert plan(burst, 1).prefix == "1h" and plan(burst, 1).system == "1h"


@pytest.mark.parametrize("mode", ["5m", "1h"])
def test_forced_ttl_on_every_breakpoint(mode: str) -> None:
    config = replace(CONFIG, cache_ttl=mode)
    for records, after in ((turns(1, 1), 1), (turns(30, 40), 30), (turns(90, 120), 100)):
        assert plan(records, after, config) == CachePlan(mode, mode, mode)  # type: ignore[arg-type]
    summary = configured(config, "summary", turns(1, 1), T0)
    assert summary == CachePlan(mode, None, mode)  # type: ignore[arg-type]


def test_the_mode_is_read_from_the_config_at_each_call() -> None:
    records = turns(1, 1)
    assert plan(records, 1).new_turn == "5m"
    assert plan(records, 1, replace(CONFIG, cache_ttl="1h")).new_turn == "1h"


def test_a_1h_breakpoint_may_not_follow_a_5m_one() -> None:
    with pytest.raises(ValueError, match="1h breakpoint may not follow"):
        CachePlan("5m", "1h", None)
    with pytest.raises(ValueError):
        CachePlan(None, "1h", None, boundary=(10, "5m"))
    CachePlan("1h", "1h", "5m", boundary=(10, "1h"))


def test_near_the_cap_a_fourth_breakpoint_marks_where_the_summary_will_cut() -> None:
    config = replace(CONFIG, history_char_cap=20_000, keep_recent_turns=3)
    far = turns(*[1] * 20, size=100)  # 4 200 characters: far from the cap
    assert plan(far, 1, config).boundary is None
    near = turns(*[1] * 20, size=450)  # 18 900: one more turn may cross it
    assert plan(near, 1, config) == CachePlan("1h", "1h", "5m", boundary=(3, "1h"))
    # The summarization that follows reads through its instruction's breakpoint (5 m: the
    # call is sent once), unless the last call, which placed the boundary, is an hour old.
    now = last_ts(near) + timedelta(minutes=1)
    assert configured(config, "summary", near, now) == CachePlan("1h", None, "5m")
    late = now + timedelta(hours=1)
    assert configured(config, "summary", near, late).new_turn is None


def test_every_plan_is_within_the_api_limits_when_rendered() -> None:
    config = replace(CONFIG, history_char_cap=20_000, keep_recent_turns=3)
    records = turns(*[1] * 20, size=450)
    for mode in ("auto", "5m", "1h"):
        cache = plan(records, 1, replace(config, cache_ttl=mode))
        messages = conv.render_messages(
            records,
            "new",
            prefix_ttl=cache.prefix,
            new_ttl=cache.new_turn,
            boundary=cache.boundary,
        )
        system = conv.render_system("S", cache.system)
        blocks = [*system, *(b for m in messages for b in m["content"])]
        marked = [i for i, b in enumerate(blocks) if "cache_control" in b]
        assert len(marked) == 4  # the API's maximum
        # System, the reply 3 turns back, the last reply, the new turn.
        assert marked == [0, len(blocks) - 6, len(blocks) - 2, len(blocks) - 1]
        ttls = [blocks[i]["cache_control"].get("ttl", "5m") for i in marked]
        assert ttls == sorted(ttls, key=lambda t: t == "5m")  # 1 h before 5 m


def test_unreadable_timestamps_are_skipped() -> None:
    records: list[Record] = [
        *turns(1, 1),
        Summary(3, "S", "not a time", 3, 0.0),
        replace(turns()[0], seq=4, ts="t"),
    ]
    assert recent_gaps(records, T0 + timedelta(minutes=3)) == [60.0, 60.0, 60.0]
