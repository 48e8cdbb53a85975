"""`relay costs`: where the money went, from state/ledger.jsonl (README: Costs).

A functional core: ledger lines in, a `Report` out, rendered as a table or as JSON. The only
I/O is `read_ledger`, which streams the file line by line (the ledger only grows). A damaged
line is set aside with its number and the reason, never fatal: the report is built from the
rest and says what it skipped.

Each entry's cost is the `cost_usd` the ledger recorded, what relay charged at the time, so
the report agrees with `relay status` and the journal even after the price table changes.
What the cache saved is priced from today's table (the same lookup accounting uses).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from pathlib import Path
from typing import Any, BinaryIO, Literal
from zoneinfo import ZoneInfo

from relay.config import Config
from relay.prices import Price, call_price
from relay.records import LedgerEntry, decode_ledger_entry, parse_ts

Grouping = Literal["day", "session", "model", "kind"]
GROUPINGS: tuple[Grouping, ...] = ("day", "session", "model", "kind")
MAX_LINE = 64 * 1024  # a ledger line is a few hundred bytes; longer is damage, not data
MAX_DAMAGED_SHOWN = 20
MILLION = 1_000_000


@dataclass(frozen=True)
class Damaged:
    line: int  # 1-based, as an editor shows it
    reason: str


@dataclass(frozen=True)
class Priced:
    """One decoded entry, placed on its day in the report's time zone."""

    entry: LedgerEntry
    day: date
    saved_usd: float  # what its cached tokens would have cost as plain input, minus their cost
    unpriced: bool  # no price of its own model: its cost is an estimate (or 0), it saves nothing


@dataclass
class _Sums:
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0
    cache_read_tokens: int = 0
    cost_usd: float = 0.0
    saved_usd: float = 0.0
    unpriced_calls: int = 0

    def add(self, item: Priced) -> None:
        u = item.entry.usage
        self.calls += 1
        self.input_tokens += u.input_tokens
        self.output_tokens += u.output_tokens
        self.cache_write_tokens += u.cache_write_tokens
        self.cache_write_1h_tokens += u.cache_write_1h_tokens
        self.cache_read_tokens += u.cache_read_tokens
        self.cost_usd += item.entry.cost_usd
        self.saved_usd += item.saved_usd
        self.unpriced_calls += item.unpriced

    def row(self, key: str) -> Row:
        return Row(
            key,
            self.calls,
            self.input_tokens,
            self.output_tokens,
            self.cache_write_tokens,
            self.cache_write_1h_tokens,
            self.cache_read_tokens,
            self.cost_usd,
            self.saved_usd,
            self.unpriced_calls,
        )


@dataclass(frozen=True)
class Row:
    key: str
    calls: int = 0
    input_tokens: int = 0  # uncached input
    output_tokens: int = 0
    cache_write_tokens: int = 0  # 5-minute cache writes
    cache_write_1h_tokens: int = 0
    cache_read_tokens: int = 0
    cost_usd: float = 0.0
    saved_usd: float = 0.0
    unpriced_calls: int = 0

    @property
    def prompt_tokens(self) -> int:
        """Every input token the API took in: uncached, written to the cache, read from it."""
        return (
            self.input_tokens
            + self.cache_write_tokens
            + self.cache_write_1h_tokens
            + self.cache_read_tokens
        )

    @property
    def cache_read_share(self) -> float | None:
        """The share of input tokens served from the cache; None with no input at all."""
        total = self.prompt_tokens
        return self.cache_read_tokens / total if total else None

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "calls": self.calls,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "cache_write_1h_tokens": self.cache_write_1h_tokens,
            "cache_read_tokens": self.cache_read_tokens,
            "cost_usd": _usd(self.cost_usd),
            "cache_read_share": _share(self.cache_read_share),
            "saved_usd": _usd(self.saved_usd),
            "unpriced_calls": self.unpriced_calls,
        }


@dataclass(frozen=True)
class Period:
    """Spend in one budget period (a day or a calendar month in the configured zone)."""

    name: str  # "2026-05-02" or "2026-05"
    usd: float
    calls: int
    budget_usd: float | None

    @property
    def used(self) -> float | None:
        return self.usd / self.budget_usd if self.budget_usd else None

    def to_json(self) -> dict[str, Any]:
        return {
            "period": self.name,
            "usd": _usd(self.usd),
            "calls": self.calls,
            "budget_usd": self.budget_usd,
            "used": _share(self.used),
            "remaining_usd": (
                None if self.budget_usd is None else _usd(max(self.budget_usd - self.usd, 0.0))
            ),
        }


@dataclass(frozen=True)
class Report:
    by: Grouping
    timezone: str
    since: date | None
    until: date | None
    rows: tuple[Row, ...]
    total: Row
    today: Period
    month_to_date: Period
    damaged: tuple[Damaged, ...] = ()
    ledger: Path | None = None
    ledger_exists: bool = True

    def to_json(self) -> dict[str, Any]:
        """The `--json` shape (README: Costs); keys are added, never renamed."""
        return {
            "ledger": str(self.ledger) if self.ledger is not None else None,
            "by": self.by,
            "timezone": self.timezone,
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "rows": [row.to_json() for row in self.rows],
            "total": self.total.to_json(),
            "cache_read_share": _share(self.total.cache_read_share),
            "saved_usd": _usd(self.total.saved_usd),
            "unpriced_calls": self.total.unpriced_calls,
            "today": self.today.to_json(),
            "month_to_date": self.month_to_date.to_json(),
            "damaged": [{"line": d.line, "reason": d.reason} for d in self.damaged],
        }


@dataclass(frozen=True)
class Query:
    by: Grouping = "day"
    since: date | None = None
    until: date | None = None
    zone: ZoneInfo = field(default_factory=lambda: ZoneInfo("UTC"))


# ---- decoding --------------------------------------------------------------------------


def decode_lines(lines: Iterable[tuple[int, bytes | None]]) -> Iterator[LedgerEntry | Damaged]:
    """Each numbered line as an entry, or as the damage that keeps it from being one.
    None stands for a line too long to hold (see `numbered_lines`)."""
    for number, raw in lines:
        if raw is None:
            yield Damaged(number, f"longer than {MAX_LINE} bytes")
            continue
        if not raw.strip():
            continue  # a blank line holds no call
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            yield Damaged(number, "not UTF-8")
            continue
        try:
            value = json.loads(text)
        except (ValueError, RecursionError):
            torn = not raw.endswith(b"\n")
            yield Damaged(
                number, "incomplete last line (a write cut short)" if torn else "not JSON"
            )
            continue
        try:
            entry = decode_ledger_entry(value)
            parse_ts(entry.ts)
        except ValueError as exc:
            yield Damaged(number, str(exc))
            continue
        yield entry


def numbered_lines(handle: BinaryIO) -> Iterator[tuple[int, bytes | None]]:
    """The file's lines, numbered from 1, read one at a time: memory stays bounded however
    long the ledger is, and a line longer than MAX_LINE is skipped (yielded as None)."""
    number = 0
    while raw := handle.readline(MAX_LINE + 1):
        number += 1
        if len(raw) > MAX_LINE and not raw.endswith(b"\n"):
            while raw and not raw.endswith(b"\n"):
                raw = handle.readline(MAX_LINE)
            yield number, None
        else:
            yield number, raw


# ---- pricing -----------------------------------------------------------------------------


def saved_usd(entry: LedgerEntry, price: Price) -> float:
    """What the entry's cached tokens (written and read) would have cost as plain input,
    minus what they did cost. Writes cost more than plain input, so a call that only
    wrote to the cache saved a negative amount: that is the truth of it."""
    u = entry.usage
    cached = u.cache_write_tokens + u.cache_write_1h_tokens + u.cache_read_tokens
    paid = (
        u.cache_write_tokens * price.cache_write
        + u.cache_write_1h_tokens * price.cache_write_1h
        + u.cache_read_tokens * price.cache_read
    )
    return (cached * price.input - paid) / MILLION


def place(
    entry: LedgerEntry, zone: ZoneInfo, prices: Mapping[str, Price], default_model: str
) -> Priced:
    """Put one entry on its day in `zone` and price what its cache saved, with accounting's
    price lookup."""
    day = parse_ts(entry.ts).astimezone(zone).date()
    price, _ = call_price(entry.model, default_model, prices)
    if price is None or not entry.price_known:
        return Priced(entry, day, 0.0, True)
    return Priced(entry, day, saved_usd(entry, price), False)


# ---- the report --------------------------------------------------------------------------


def group_key(item: Priced, by: Grouping) -> str:
    if by == "day":
        return item.day.isoformat()
    if by == "session":
        return item.entry.sender.wire
    if by == "model":
        return item.entry.model or "(unknown)"
    return item.entry.kind


def build(
    items: Iterable[LedgerEntry | Damaged],
    query: Query,
    config: Config,
    now: datetime,
) -> Report:
    """One pass over the decoded ledger: the rows `query` asks for, their total, and today
    and the month to date against the budget (those over the whole ledger, whatever the
    filter: a budget counts every call)."""
    zone = query.zone
    local_now = now.astimezone(zone)
    today, month = local_now.date(), (local_now.year, local_now.month)
    groups: dict[str, _Sums] = {}
    total, today_sums, month_sums = _Sums(), _Sums(), _Sums()
    damaged: list[Damaged] = []
    for item in items:
        if isinstance(item, Damaged):
            damaged.append(item)
            continue
        priced = place(item, zone, config.prices, config.model)
        if priced.day == today:
            today_sums.add(priced)
        if (priced.day.year, priced.day.month) == month:
            month_sums.add(priced)
        if query.since is not None and priced.day < query.since:
            continue
        if query.until is not None and priced.day > query.until:
            continue
        groups.setdefault(group_key(priced, query.by), _Sums()).add(priced)
        total.add(priced)
    rows = [sums.row(key) for key, sums in groups.items()]
    if query.by == "day":
        rows.sort(key=lambda r: r.key)
    else:  # where the money went: the most expensive first
        rows.sort(key=lambda r: (-r.cost_usd, r.key))
    budget = config.budget
    return Report(
        by=query.by,
        timezone=zone.key,
        since=query.since,
        until=query.until,
        rows=tuple(rows),
        total=total.row("Total"),
        today=Period(today.isoformat(), today_sums.cost_usd, today_sums.calls, budget.daily_usd),
        month_to_date=Period(
            f"{month[0]:04d}-{month[1]:02d}",
            month_sums.cost_usd,
            month_sums.calls,
            budget.monthly_usd,
        ),
        damaged=tuple(damaged),
    )


def read_ledger(path: Path, query: Query, config: Config, now: datetime) -> Report:
    """The report for the ledger at `path`; a ledger not there yet is an empty report.
    PermissionError propagates: the command line explains who may read it."""
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below; the report streams from it
    except FileNotFoundError:
        report = build((), query, config, now)
        return _with_ledger(report, path, exists=False)
    with handle:
        report = build(decode_lines(numbered_lines(handle)), query, config, now)
    return _with_ledger(report, path, exists=True)


def _with_ledger(report: Report, path: Path, *, exists: bool) -> Report:
    return replace(report, ledger=path, ledger_exists=exists)


# ---- rendering ---------------------------------------------------------------------------

HEADINGS = {
    "day": "Day",
    "session": "Session",
    "model": "Model",
    "kind": "Kind",
}
COLUMNS = (
    "Calls",
    "Input",
    "Output",
    "Cache write 5m",
    "Cache write 1h",
    "Cache read",
    "Cost (USD)",
)


def render_text(report: Report) -> tuple[str, str]:
    """The table and its summary lines (for stdout), and what was skipped (for stderr)."""
    out: list[str] = []
    where = f"ledger {report.ledger}" if report.ledger is not None else "the ledger"
    span = _span(report)
    out.append(f"relay costs by {report.by}{span}, days in {report.timezone}; {where}")
    if not report.ledger_exists:
        out.append("no API calls recorded yet (there is no ledger yet)")
    elif report.total.calls == 0:
        out.append("no API calls in this period" if span else "no API calls recorded yet")
    if report.rows:
        out.append("")
        out.extend(_table(report))
    out.append("")
    out.extend(_summary(report))
    err: list[str] = []
    if report.damaged:
        n = len(report.damaged)
        err.append(
            f"relay: {n} damaged ledger line{'s' if n != 1 else ''} skipped "
            f"(the report counts the rest):"
        )
        for d in report.damaged[:MAX_DAMAGED_SHOWN]:
            err.append(f"relay:   line {d.line}: {d.reason}")
        if n > MAX_DAMAGED_SHOWN:
            err.append(f"relay:   … and {n - MAX_DAMAGED_SHOWN} more")
    return "\n".join(out) + "\n", ("\n".join(err) + "\n") if err else ""


def render_json(report: Report) -> str:
    return json.dumps(report.to_json(), indent=2, sort_keys=False, ensure_ascii=False) + "\n"


def _span(report: Report) -> str:
    if report.since is None and report.until is None:
        return ""
    since = report.since.isoformat() if report.since else "the start"
    until = report.until.isoformat() if report.until else "now"
    return f", {since} to {until}"


def _cells(row: Row) -> list[str]:
    return [
        row.key,
        f"{row.calls:,}",
        f"{row.input_tokens:,}",
        f"{row.output_tokens:,}",
        f"{row.cache_write_tokens:,}",
        f"{row.cache_write_1h_tokens:,}",
        f"{row.cache_read_tokens:,}",
        f"${row.cost_usd:,.4f}",
    ]


def _table(report: Report) -> list[str]:
    header = [HEADINGS[report.by], *COLUMNS]
    body = [_cells(row) for row in report.rows]
    total = _cells(report.total)
    widths = [max(len(r[i]) for r in (header, *body, total)) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True))
        return "  ".join((first, *rest)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return [line(header), rule, *(line(r) for r in body), rule, line(total)]


def _summary(report: Report) -> list[str]:
    total = report.total
    lines: list[str] = []
    share = total.cache_read_share
    if share is not None:
        lines.append(
            f"cache: {share:.1%} of input tokens read from the cache; "
            f"saved ${total.saved_usd:,.4f} against no caching"
        )
    if total.unpriced_calls:
        lines.append(
            f"unknown price: {total.unpriced_calls} call(s) of a model with no price of its "
            "own, estimated at the configured model's price ($0 if it has none either; add "
            "the model under prices:)"
        )
    lines.append(_period_line("month to date", report.month_to_date, "budget.monthly_usd"))
    lines.append(_period_line("today", report.today, "budget.daily_usd"))
    return lines


def _period_line(label: str, period: Period, setting: str) -> str:
    head = f"{label} ({period.name}): ${period.usd:,.4f} in {period.calls} call(s)"
    if period.budget_usd is None or period.used is None:
        return f"{head}; no budget ({setting} is null)"
    left = max(period.budget_usd - period.usd, 0.0)
    return f"{head} of ${period.budget_usd:,.2f} budget ({period.used:.1%}; ${left:,.4f} left)"


def _usd(value: float) -> float:
    return round(value, 8)


def _share(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def parse_date(value: str, flag: str) -> date:
    """A --since/--until value: YYYY-MM-DD, or YYYYMMDD as ccusage takes it; ValueError
    with a one-line reason otherwise."""
    text = f"{value[:4]}-{value[4:6]}-{value[6:]}" if len(value) == 8 and value.isdigit() else value
    try:
        if len(text) != 10:
            raise ValueError
        return date.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{flag}: expected a date as YYYY-MM-DD (or YYYYMMDD), got {value!r}"
        ) from None
