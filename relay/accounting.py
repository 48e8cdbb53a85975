"""What each API call cost: priced by the table, appended to the ledger, totalled for
status and the budgets. A report only: a ledger that cannot be written never stops work."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Literal

from relay.api import ApiReply
from relay.budget import Spend
from relay.config import Config
from relay.ledger import CostTotals, Ledger, iso
from relay.log import event
from relay.prices import call_price, cost_usd
from relay.records import LedgerEntry, Sender

log = logging.getLogger(__name__)


class Accounting:
    def __init__(self, config: Config, ledger: Ledger, wall: Callable[[], datetime]) -> None:
        self.config = config
        self.ledger = ledger
        self.wall = wall
        self.totals = CostTotals(config.budget.zone)

    def load(self) -> None:
        """Total the ledger for the current day and month (read once, at start and when
        the time zone changes; from then on each call adds to the totals)."""
        self.totals = self._count(self.config)

    def _count(self, config: Config) -> CostTotals:
        totals = CostTotals(config.budget.zone)
        totals.roll(self.wall())
        for moment, cost in self.ledger.costs():
            totals.add(moment, cost)
        return totals

    def reconfigure(self, config: Config) -> None:
        """Use `config` from now on; if the ledger cannot be read again for a new time
        zone (OSError), nothing has changed."""
        totals = self.totals
        if config.budget.timezone != self.config.budget.timezone:
            totals = self._count(config)  # the day and month boundaries moved: count again
        self.config, self.totals = config, totals

    def charge(
        self, kind: Literal["turn", "summary"], key: str, sender: Sender, reply: ApiReply
    ) -> float:
        """Price and record one answered call; returns its cost (0.0 for an unknown model)."""
        config = self.config
        # An estimate (another model's price) says so in the entry: price_known false.
        price, known = call_price(reply.model, config.model, config.prices)
        cost = cost_usd(reply.usage, price) if price else 0.0
        now = self.wall()
        entry = LedgerEntry(
            ts=iso(now),
            kind=kind,
            key=key,
            sender=sender,
            model=reply.model,
            request_id=reply.request_id,
            stop_reason=reply.stop_reason,
            usage=reply.usage,
            cost_usd=cost,
            price_known=known,
        )
        try:
            self.ledger.record(entry.to_json())
        except OSError as exc:  # accounting: a full disk must not stop work
            log.error("cannot write the cost ledger: %s", exc)
        # Counted even when the line could not be written: the money was spent.
        self.totals.roll(now)
        self.totals.add(now, cost)
        u = reply.usage
        event(
            log,
            "api_call",
            "%s %s: in=%d out=%d cache_write=%d cache_read=%d $%.6f",
            kind,
            key,
            u.input_tokens,
            u.output_tokens,
            u.cache_write_tokens + u.cache_write_1h_tokens,
            u.cache_read_tokens,
            cost,
            session=sender.session,
            envelope=key,
            cost_usd=cost,
        )
        return cost

    def spend(self) -> Spend:
        self.totals.roll(self.wall())
        return Spend(self.totals.today_usd, self.totals.month_usd)

    @property
    def today_usd(self) -> float:
        self.totals.roll(self.wall())
        return self.totals.today_usd

    @property
    def month_usd(self) -> float:
        self.totals.roll(self.wall())
        return self.totals.month_usd

    @property
    def calls_today(self) -> int:
        self.totals.roll(self.wall())
        return self.totals.calls_today
