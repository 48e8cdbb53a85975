"""The cost ledger: one JSON line per API call with its usage and estimated cost.

Append-only: a call adds one line and nothing is ever rewritten, so a crash can tear at
most the last line, and reading it back skips what does not parse."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from relay.costs import decode_lines, numbered_lines
from relay.fsutil import write_all
from relay.layout import OPERATOR_FILE_MODE
from relay.records import LedgerEntry, parse_ts


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class CostTotals:
    """Spend in the current day and month (in the budget's zone)."""

    zone: ZoneInfo
    day: str = ""  # 2026-12-02, local to `zone`
    month: str = ""  # 2026-12
    today_usd: float = 0.0
    calls_today: int = 0
    month_usd: float = 0.0

    def roll(self, now: datetime) -> None:
        local = now.astimezone(self.zone)
        day, month = local.strftime("%Y-%m-%d"), local.strftime("%Y-%m")
        if day != self.day:
            self.day, self.today_usd, self.calls_today = day, 0.0, 0
        if month != self.month:
            self.month, self.month_usd = month, 0.0

    def add(self, moment: datetime, cost: float) -> None:
        """Count one call made at `moment`; a call before the current day or month (an old
        ledger line) counts in neither."""
        local = moment.astimezone(self.zone)
        if local.strftime("%Y-%m-%d") == self.day:
            self.today_usd += cost
            self.calls_today += 1
        if local.strftime("%Y-%m") == self.month:
            self.month_usd += cost


class Ledger:
    def __init__(self, path: Path) -> None:
        self.path = path

    def costs(self) -> Iterator[tuple[datetime, float]]:
        """(time, cost) of every call the ledger holds, read by the same decoder as
        `relay costs`, so the budgets and the report count the same lines; damaged ones
        are skipped (the report lists them)."""
        try:
            with open(self.path, "rb") as handle:
                for item in decode_lines(numbered_lines(handle)):
                    if isinstance(item, LedgerEntry):
                        yield parse_ts(item.ts), item.cost_usd
        except FileNotFoundError:
            return

    def record(self, entry: dict[str, Any]) -> None:
        line = json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n"
        # 0640 like status.json: state/ is setgid relay-operators, so members read it
        # (`relay costs` without sudo). It holds usage and cost, never the conversation.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, OPERATOR_FILE_MODE)
        try:
            if stat.S_IMODE(os.fstat(fd).st_mode) != OPERATOR_FILE_MODE:
                os.fchmod(fd, OPERATOR_FILE_MODE)  # the units' UMask=0077 narrowed it
            write_all(fd, line.encode("utf-8"))  # one line, appended
        finally:
            os.close(fd)
