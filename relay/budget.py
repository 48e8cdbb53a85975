"""Spend caps: which budget period a moment falls in, and what the spend so far means
(carry on, warn, or stop starting API calls). Pure: the clock, the ledger totals and the
config come in as arguments; what to push and what to remember come out.

Periods are calendar days and months in the configured time zone, so the operator can
predict the reset ("midnight in Europe/Paris"), and arithmetic goes through local dates,
so a day of 23 or 25 hours (a DST change) still ends at the next local midnight.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from relay.config import BudgetConfig

Name = Literal["daily", "monthly"]


@dataclass(frozen=True)
class Period:
    """One budget period: [start, end) as aware datetimes in the budget's zone."""

    name: Name
    start: datetime
    end: datetime

    @property
    def label(self) -> str:
        """The day (2026-12-02) or month (2026-12) this period is."""
        return self.start.strftime("%Y-%m-%d" if self.name == "daily" else "%Y-%m")


def _midnight(day: date, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, time(0, 0), tzinfo=zone)


def period(name: Name, moment: datetime, zone: ZoneInfo) -> Period:
    """The day or month `moment` (aware) falls in, in `zone`."""
    local = moment.astimezone(zone).date()
    if name == "daily":
        first, after = local, local + timedelta(days=1)
    else:
        first = local.replace(day=1)
        after = (first + timedelta(days=32)).replace(day=1)
    return Period(name, _midnight(first, zone), _midnight(after, zone))


@dataclass(frozen=True)
class Spend:
    """What the ledger says was spent in the current day and month."""

    day_usd: float
    month_usd: float

    def of(self, name: Name) -> float:
        return self.day_usd if name == "daily" else self.month_usd


@dataclass(frozen=True)
class Block:
    """A cap reached: no new API call until `resets_at` (or until the cap is raised)."""

    budget: Name
    cap_usd: float
    spent_usd: float
    resets_at: datetime
    label: str  # the period: 2026-12-02 or 2026-12

    @property
    def mark(self) -> str:
        return f"block:{self.budget}:{self.label}:{self.cap_usd:g}"

    def detail(self) -> str:
        when = self.resets_at.strftime("%Y-%m-%d %H:%M")
        zone = self.resets_at.tzname() or ""
        spent = "today" if self.budget == "daily" else "this month"
        return (
            f"the {self.budget} budget of ${self.cap_usd:.2f} is spent (${self.spent_usd:.2f} "
            f"{spent}); no API calls until {when} {zone} ({self.resets_at.tzinfo}), "
            f"or raise budget.{'daily' if self.budget == 'daily' else 'monthly'}_usd and run "
            "relay reload"
        )


@dataclass(frozen=True)
class Warning:
    """A warn_at fraction crossed in a period: pushed once (its mark says it was)."""

    budget: Name
    fraction: float
    cap_usd: float
    spent_usd: float
    label: str

    @property
    def mark(self) -> str:
        return f"warn:{self.budget}:{self.label}:{self.cap_usd:g}:{self.fraction:g}"

    def text(self) -> str:
        spent = "today" if self.budget == "daily" else "this month"
        return (
            f"relay has spent ${self.spent_usd:.2f} {spent}: {self.spent_usd / self.cap_usd:.0%} "
            f"of the {self.budget} budget (${self.cap_usd:.2f}). At the budget relay stops "
            "making API calls until the period ends; messages wait, nothing is lost."
        )


@dataclass(frozen=True)
class Halt:
    """Why no new API call may start: a cap reached (daily, monthly) or the workspace's
    limit, when calls start again by themselves, and the sentence status.json shows."""

    kind: Literal["daily", "monthly", "workspace"]
    until: datetime
    detail: str


@dataclass(frozen=True)
class Verdict:
    block: Block | None
    warnings: tuple[Warning, ...]  # new ones only: marks not in `seen`
    marks: frozenset[str]  # the marks to keep: the ones of the current periods, old and new


def caps(config: BudgetConfig) -> list[tuple[Name, float]]:
    found: list[tuple[Name, float]] = []
    if config.daily_usd is not None:
        found.append(("daily", config.daily_usd))
    if config.monthly_usd is not None:
        found.append(("monthly", config.monthly_usd))
    return found


def judge(config: BudgetConfig, spend: Spend, now: datetime, seen: frozenset[str]) -> Verdict:
    """Given the caps, what was spent and the marks already acted on, return the block (if a
    cap is reached: the one that resets last, since nothing runs until both allow it) and
    the warnings not yet pushed (per budget, only the highest fraction crossed), and the
    marks to remember: those of `seen` still in a current period, and the ones due now."""
    zone = config.zone
    blocks: list[Block] = []
    warnings: list[Warning] = []
    marks: set[str] = set()
    for name, cap in caps(config):
        spent = spend.of(name)
        current = period(name, now, zone)
        marks.update(m for m in seen if f":{current.label}:" in m)
        if spent >= cap:
            blocks.append(Block(name, cap, spent, current.end, current.label))
        crossed = [f for f in config.warn_at if spent >= f * cap]
        for fraction in crossed:
            marks.add(Warning(name, fraction, cap, spent, current.label).mark)
        if crossed and spent < cap:
            top = Warning(name, max(crossed), cap, spent, current.label)
            if top.mark not in seen:
                warnings.append(top)
    chosen = max(blocks, key=lambda b: b.resets_at) if blocks else None
    if chosen is not None:
        marks.add(chosen.mark)
    return Verdict(chosen, tuple(warnings), frozenset(marks))
