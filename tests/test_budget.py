"""Budgets: the periods (time zones, DST, month ends), the verdict (warn once, block at the
cap), and the engine in-process with an API fake: no call starts at the cap, items wait,
direct operator messages flow, work resumes at the boundary or on a raised cap; the
Console's workspace limit blocks until the date it names. End to end: test_budget_e2e."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from relay import answers, budget, budget_state
from relay.api import ApiReply
from relay.config import BudgetConfig, Config
from relay.engine import Engine
from relay.errors import ApiError
from relay.layout import Layout
from relay.prices import Price, Usage
from relay.records import session
from relay.spool import operator_key
from tests.test_engine import Clock, FakeApi, FakeNotifier, put_envelope

PARIS = ZoneInfo("Europe/Paris")


# ---- periods -------------------------------------------------------------------------------


def test_a_day_is_local_midnight_to_midnight() -> None:
    # 23:30 UTC on 1 Dec is 00:30 on 2 Dec in Paris.
    moment = datetime(2026, 12, 1, 23, 30, tzinfo=UTC)
    day = budget.period("daily", moment, PARIS)
    assert day.label == "2026-12-02"
    assert day.start == datetime(2026, 12, 2, tzinfo=PARIS)
    assert day.end.astimezone(UTC) == datetime(2026, 12, 2, 23, 0, tzinfo=UTC)
    assert budget.period("daily", moment, ZoneInfo("UTC")).label == "2026-12-01"


def test_a_dst_day_still_ends_at_the_next_local_midnight() -> None:
    # 29 March 2026: clocks go forward in Paris, the day has 23 hours.
    day = budget.period("daily", datetime(2026, 3, 29, 12, tzinfo=UTC), PARIS)
    # (Aware datetimes in one zone subtract as wall times: compare in UTC.)
    assert day.end.astimezone(UTC) - day.start.astimezone(UTC) == timedelta(hours=23)
    assert (day.end.hour, day.end.minute) == (0, 0)
    autumn = budget.period("daily", datetime(2026, 10, 25, 12, tzinfo=UTC), PARIS)
    assert autumn.end.astimezone(UTC) - autumn.start.astimezone(UTC) == timedelta(hours=25)


def test_months_roll_over_at_the_year_end() -> None:
    month = budget.period("monthly", datetime(2026, 12, 31, 23, 30, tzinfo=UTC), PARIS)
    assert month.label == "2027-01"  # already 1 January in Paris
    month = budget.period("monthly", datetime(2026, 12, 31, 22, 30, tzinfo=UTC), PARIS)
    assert month.label == "2026-12"
    assert month.end == datetime(2027, 1, 1, tzinfo=PARIS)


# ---- the verdict ---------------------------------------------------------------------------

NOW = datetime(2026, 12, 2, 12, tzinfo=UTC)


def test_no_caps_no_verdict() -> None:
    verdict = budget.judge(BudgetConfig(), budget.Spend(1e6, 1e6), NOW, frozenset())
    assert verdict.block is None and verdict.warnings == () and verdict.marks == frozenset()


def test_only_the_highest_crossed_fraction_warns_and_only_once() -> None:
    caps = BudgetConfig(daily_usd=10.0, warn_at=(0.5, 0.75, 0.95))
    verdict = budget.judge(caps, budget.Spend(8.0, 8.0), NOW, frozenset())
    assert [w.fraction for w in verdict.warnings] == [0.75]
    assert "80%" in verdict.warnings[0].text() and "$8.00" in verdict.warnings[0].text()
    assert verdict.block is None
    again = budget.judge(caps, budget.Spend(8.5, 8.5), NOW, verdict.marks)
    assert again.warnings == ()
    # A new day is a new period: the same fraction warns again.
    tomorrow = budget.judge(caps, budget.Spend(8.0, 8.0), NOW + timedelta(days=1), verdict.marks)
    assert [w.fraction for w in tomorrow.warnings] == [0.75]


def test_at_the_cap_the_block_names_the_budget_and_its_reset() -> None:
    caps = BudgetConfig(daily_usd=5.0, timezone="Europe/Paris")
    verdict = budget.judge(caps, budget.Spend(5.0, 5.0), NOW, frozenset())
    block = verdict.block
    assert block is not None and block.budget == "daily"
    assert block.resets_at == datetime(2026, 12, 3, tzinfo=PARIS)
    assert "daily budget of $5.00" in block.detail()
    assert "2026-12-03 00:00 CET" in block.detail() and "relay reload" in block.detail()
    assert verdict.warnings == ()  # the block says it, louder
    assert block.mark in verdict.marks


def test_both_caps_reached_block_until_the_later_reset() -> None:
    caps = BudgetConfig(daily_usd=1.0, monthly_usd=3.0)
    verdict = budget.judge(caps, budget.Spend(1.5, 3.5), NOW, frozenset())
    assert verdict.block is not None and verdict.block.budget == "monthly"
    assert verdict.block.resets_at == datetime(2027, 1, 1, tzinfo=UTC)
    only_day = budget.judge(caps, budget.Spend(1.5, 2.0), NOW, frozenset())
    assert only_day.block is not None and only_day.block.budget == "daily"


def test_a_raised_cap_warns_afresh_at_its_own_fractions() -> None:
    low = BudgetConfig(daily_usd=4.0, warn_at=(0.75,))
    seen = budget.judge(low, budget.Spend(3.0, 3.0), NOW, frozenset()).marks
    high = BudgetConfig(daily_usd=8.0, warn_at=(0.75,))
    assert budget.judge(high, budget.Spend(3.0, 3.0), NOW, seen).warnings == ()
    crossed = budget.judge(high, budget.Spend(6.5, 6.5), NOW, seen)
    assert [w.cap_usd for w in crossed.warnings] == [8.0]


def test_budget_state_survives_a_round_trip_and_damage(tmp_path: Path) -> None:
    path = tmp_path / "budget.json"
    state = budget_state.BudgetState(frozenset({"warn:daily:x"}), NOW, "limit")
    budget_state.save(path, state)
    assert budget_state.load(path) == state
    path.write_text("{torn")
    assert budget_state.load(path) == budget_state.BudgetState()
    assert budget_state.load(tmp_path / "missing.json") == budget_state.BudgetState()


# ---- the engine ----------------------------------------------------------------------------

# Every fake call is 10 input and 5 output tokens: at these prices, exactly $0.10.
DIME = Price(input=10_000.0, output=0.0, cache_write=0.0, cache_write_1h=0.0, cache_read=0.0)


class Wall:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


World = tuple[Config, Layout, FakeApi, Clock, Wall, FakeNotifier]


@pytest.fixture
def world(tmp_path: Path) -> World:
    config = Config(
        sessions=("session-1", "session-2"),
        data_dir=tmp_path / "data",
        prices={"claude-opus-4-7": DIME},
        budget=BudgetConfig(daily_usd=0.3, warn_at=(0.5,), timezone="Europe/Paris"),
    )
    # 22:00 UTC: 23:00 in Paris, an hour before the day ends there.
    wall = Wall(datetime(2026, 12, 2, 22, 0, tzinfo=UTC))
    return config, Layout(config.data_dir), FakeApi(), Clock(), wall, FakeNotifier()


def start(world: World, config: Config | None = None) -> Engine:
    cfg, layout, api, clock, wall, notifier = world
    engine = Engine(
        config or cfg,
        layout,
        lambda key, c: api,
        notifier,
        environ={"ANTHROPIC_API_KEY": "sk-test"},
        monotonic=clock,
        wall=wall,
    )
    engine.recover()
    return engine


def run(engine: Engine, ticks: int = 8) -> None:
    for _ in range(ticks):
        engine.tick()
        engine.wait_inflight(5)
    engine.tick()


def titles(notifier: FakeNotifier) -> list[str]:
    return [p.title for p in notifier.pushes]


def answer(world: World, serial: int, text: str = "hi") -> str:
    _, layout, _, _, _, _ = world
    return put_envelope(layout, f"{serial}.json", "session-1", f"{text} {serial}", serial)


def picked_up(layout: Layout, session: str = "session-1") -> str | None:
    path = layout.input_file(session)
    if not path.exists():
        return None
    text = path.read_text()
    path.unlink()
    return text


def drain(engine: Engine, layout: Layout, session: str = "session-1") -> list[str]:
    got = []
    for _ in range(10):
        run(engine, 2)
        text = picked_up(layout, session)
        if text is None and not engine.spool.items():
            break
        if text is not None:
            got.append(text)
    return got


def drain_all(world: World, engine: Engine, count: int) -> list[str]:
    """`count` envelopes from session-1, answered as far as the budget lets them."""
    for serial in range(1, count + 1):
        answer(world, serial)
    return drain(engine, world[1])


def over_the_cap(world: World, engine: Engine) -> list[str]:
    """Four envelopes: three calls of $0.10 reach the $0.30 cap, the fourth waits."""
    return drain_all(world, engine, 4)


def test_warn_once_then_block_at_the_cap(world: World) -> None:
    _, _layout, api, _, _, notifier = world
    engine = start(world)
    answered = over_the_cap(world, engine)
    # Three calls of $0.10 reach the $0.30 cap; the fourth envelope waits.
    assert [a.split()[-1] for a in answered] == ["1", "2", "3"]
    assert len(api.calls) == 3
    assert engine.accounts.today_usd == pytest.approx(0.3)
    assert titles(notifier).count("relay: 50% of the daily budget") == 1
    blocked = [p for p in notifier.pushes if p.title == "relay paused: daily budget reached"]
    assert len(blocked) == 1 and blocked[0].priority == "high"
    status = engine.status()
    assert status["state"] == "blocked"
    assert "daily budget of $0.30" in status["state_detail"]
    assert "2026-12-03 00:00 CET" in status["state_detail"]
    assert status["budget"]["blocked"] == "daily"
    assert status["budget"]["resets_at"] == "2026-12-02T23:00:00.000000Z"
    assert status["inbox"] == 1
    # More envelopes are accepted and wait; many ticks later, still no call.
    answer(world, 5)
    run(engine, 20)
    assert len(api.calls) == 3 and len(engine.spool.items()) == 2
    assert len([p for p in notifier.pushes if p.priority == "high"]) == 1
    engine.close()


def test_a_direct_operator_message_passes_the_block(world: World) -> None:
    _, layout, api, _, _, _ = world
    engine = start(world)
    over_the_cap(world, engine)
    assert engine.status()["state"] == "blocked"
    # An operator turn (needs the API) first, then a direct message behind it.
    (layout.inbox / operator_key(1)).write_text("what next?")
    (layout.inbox / operator_key(2)).write_text("@session-2: stop for today")
    run(engine, 3)
    assert picked_up(layout, "session-2") == "stop for today"
    assert len(api.calls) == 3  # no call for anything
    assert operator_key(1) in engine.spool.items()
    engine.close()


def test_work_resumes_at_the_boundary_in_the_configured_zone(world: World) -> None:
    _, layout, api, _, wall, _notifier = world
    engine = start(world)
    over_the_cap(world, engine)
    assert len(api.calls) == 3
    wall.now += timedelta(minutes=59)  # 23:59 in Paris: still the same day
    run(engine, 3)
    assert len(api.calls) == 3
    wall.now += timedelta(minutes=2)  # 00:01 on 3 December in Paris (23:01 UTC, 2 Dec)
    assert drain(engine, layout) == ["re: [from session-1]\nhi 4"]
    assert engine.status()["state"] == "running"
    assert engine.accounts.today_usd == pytest.approx(0.1)
    engine.close()


def test_raising_the_cap_on_reload_resumes_at_once(world: World) -> None:
    config, layout, api, _, _, _notifier = world
    engine = start(world)
    over_the_cap(world, engine)
    assert len(api.calls) == 3
    engine.reconfigure(replace(config, budget=replace(config.budget, daily_usd=1.0)))
    assert drain(engine, layout) == ["re: [from session-1]\nhi 4"]
    assert len(api.calls) == 4
    engine.close()


def test_a_restart_does_not_push_the_same_warning_or_block_again(world: World) -> None:
    _, _layout, api, _, _, notifier = world
    engine = start(world)
    over_the_cap(world, engine)
    engine.close()
    pushed = len(notifier.pushes)
    again = start(world)  # the totals come back from the ledger
    run(again, 5)
    assert again.status()["state"] == "blocked"
    assert len(api.calls) == 3
    assert len(notifier.pushes) == pushed
    again.close()


def test_the_monthly_budget_counts_every_day_of_the_month(world: World) -> None:
    config, layout, api, _, wall, _ = world
    monthly = replace(config, budget=BudgetConfig(monthly_usd=0.2, timezone="UTC"))
    engine = start(world, monthly)
    answer(world, 1)
    drain(engine, layout)
    wall.now += timedelta(days=10)
    wall.now = wall.now.replace(month=12, day=20)
    answer(world, 2)
    answer(world, 3)
    drain(engine, layout)
    assert len(api.calls) == 2
    status = engine.status()
    assert status["budget"]["blocked"] == "monthly"
    assert status["budget"]["resets_at"] == "2027-01-01T00:00:00.000000Z"
    assert status["cost_month_usd"] == pytest.approx(0.2)
    wall.now = datetime(2027, 1, 1, 0, 0, 1, tzinfo=UTC)
    assert drain(engine, layout) == ["re: [from session-1]\nhi 3"]
    engine.close()


WORKSPACE = ApiError(
    "the workspace's API usage limit is reached: no calls until 2026-12-05 at 00:00 UTC",
    transient=False,
    status=400,
    blocked_until=datetime(2026, 12, 5, tzinfo=UTC),
)


def test_the_workspace_limit_blocks_until_its_date_without_retrying(world: World) -> None:
    config, layout, api, clock, wall, notifier = world
    uncapped = replace(config, budget=BudgetConfig())
    api.errors.append(WORKSPACE)
    engine = start(world, uncapped)
    answer(world, 1)
    for _ in range(30):  # an hour of the loop's retry clock: no second call
        run(engine, 1)
        clock.now += 120
    assert len(api.calls) == 1
    assert titles(notifier) == ["relay is blocked: workspace usage limit"]
    status = engine.status()
    assert status["state"] == "blocked" and "2026-12-05 00:00 UTC" in status["state_detail"]
    assert status["budget"]["blocked"] == "workspace"
    assert engine.spool.items()  # the envelope waits; it was not set aside
    engine.close()
    # A restart remembers the date: still no call.
    engine = start(world, uncapped)
    run(engine, 3)
    assert len(api.calls) == 1
    wall.now = datetime(2026, 12, 5, 0, 0, 1, tzinfo=UTC)
    assert drain(engine, layout) == ["re: [from session-1]\nhi 1"]
    assert len(titles(notifier)) == 1
    engine.close()


def test_a_reload_tries_again_before_the_workspace_limit_date(world: World) -> None:
    config, layout, api, _, _, _ = world
    uncapped = replace(config, budget=BudgetConfig())
    api.errors.append(WORKSPACE)
    engine = start(world, uncapped)
    answer(world, 1)
    run(engine, 3)
    assert engine.status()["state"] == "blocked"
    engine.reconfigure(uncapped)  # the operator raised the limit in the Console
    assert drain(engine, layout) == ["re: [from session-1]\nhi 1"]
    engine.close()


def test_the_same_workspace_limit_is_pushed_once_however_often_a_reload_retries(
    world: World,
) -> None:
    config, _layout, api, _, _, notifier = world
    uncapped = replace(config, budget=BudgetConfig())
    api.errors.extend([WORKSPACE, WORKSPACE])
    engine = start(world, uncapped)
    answer(world, 1)
    run(engine, 3)
    engine.reconfigure(uncapped)  # a reload for something else: one try, the same refusal
    run(engine, 3)
    assert len(api.calls) == 2
    assert titles(notifier) == ["relay is blocked: workspace usage limit"]
    assert engine.status()["budget"]["blocked"] == "workspace"
    engine.close()


def test_an_answer_from_the_phone_held_by_a_budget_says_so(world: World) -> None:
    _, layout, api, _, _, notifier = world
    engine = start(world)
    drain_all(world, engine, 3)
    assert engine.status()["state"] == "blocked"
    handover = answers.Handover("ntfy-1", None, "go ahead")
    (layout.inbox / operator_key(1)).write_text(handover.encode())
    run(engine, 3)
    (ack,) = [p.message for p in notifier.pushes if p.message.startswith("answer received")]
    assert "it waits: the daily budget of $0.30 is spent" in ack
    assert len(api.calls) == 3
    engine.close()


def test_an_unknown_models_call_is_estimated_and_says_so(world: World) -> None:
    _, layout, _api, _, _, _ = world
    engine = start(world)
    reply = ApiReply("re", Usage(10, 5), "claude-unknown-9", "end_turn", "req_9")
    cost = engine.accounts.charge("turn", "k", session("session-1"), reply)
    assert cost == pytest.approx(0.1)  # at the configured model's price
    (line,) = [json.loads(x) for x in layout.ledger.read_text().splitlines()]
    assert line["price_known"] is False and line["model"] == "claude-unknown-9"
    engine.close()


def test_a_reconfigure_that_fails_leaves_the_old_config_whole(world: World) -> None:
    config, layout, _, _, _, _ = world
    engine = start(world)
    layout.ledger.unlink(missing_ok=True)
    layout.ledger.mkdir()  # a new zone means reading the ledger again: that fails here
    moved = replace(config, budget=replace(config.budget, timezone="Asia/Tokyo"), model="m-2")
    with pytest.raises(OSError):
        engine.reconfigure(moved)
    assert engine.config is config and engine.accounts.config is config
    assert engine.accounts.totals.zone == ZoneInfo("Europe/Paris")
    engine.close()


def test_a_cap_of_zero_makes_no_call_at_all(world: World) -> None:
    config, _layout, api, _, _, notifier = world
    engine = start(world, replace(config, budget=BudgetConfig(daily_usd=0.0)))
    answer(world, 1)
    run(engine, 3)
    assert api.calls == [] and engine.status()["state"] == "blocked"
    assert titles(notifier) == ["relay paused: daily budget reached"]
    engine.close()
