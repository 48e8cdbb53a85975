"""The cost ledger: one JSON line per API call with its usage and estimated cost."""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from relay.layout import OPERATOR_FILE_MODE


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class CostTotals:
    day: str = ""
    today_usd: float = 0.0
    calls_today: int = 0
    total_usd: float = 0.0

    def add(self, day: str, cost: float) -> None:
        if day != self.day:
            self.day, self.today_usd, self.calls_today = day, 0.0, 0
        self.today_usd += cost
        self.calls_today += 1
        self.total_usd += cost

    def roll(self, day: str) -> None:
        if day != self.day:
            self.day, self.today_usd, self.calls_today = day, 0.0, 0


class Ledger:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.totals = CostTotals()

    def load(self, today: str) -> CostTotals:
        self.totals = CostTotals(day=today)
        try:
            with open(self.path, encoding="utf-8") as handle:
                for line in handle:
                    try:
                        entry = json.loads(line)
                        cost = float(entry.get("cost_usd") or 0.0)
                    except (ValueError, AttributeError):
                        continue  # a torn last line costs us one entry of accounting only
                    self.totals.total_usd += cost
                    if str(entry.get("ts", "")).startswith(today):
                        self.totals.today_usd += cost
                        self.totals.calls_today += 1
        except FileNotFoundError:
            pass
        return self.totals

    def record(self, entry: dict[str, Any], day: str) -> None:
        line = json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n"
        # 0640 like status.json: state/ is setgid relay-operators, so members read it
        # (`relay costs` without sudo). It holds usage and cost, never the conversation.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, OPERATOR_FILE_MODE)
        try:
            if stat.S_IMODE(os.fstat(fd).st_mode) != OPERATOR_FILE_MODE:
                os.fchmod(fd, OPERATOR_FILE_MODE)  # the units' UMask=0077 narrowed it
            os.write(fd, line.encode("utf-8"))
        finally:
            os.close(fd)
        self.totals.add(day, float(entry.get("cost_usd") or 0.0))
