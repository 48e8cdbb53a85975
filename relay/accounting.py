"""What each API call cost: priced by the table, appended to the ledger, totalled for
status. A report only: a ledger that cannot be written never stops work."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Literal

from relay.api import ApiReply
from relay.config import Config
from relay.ledger import Ledger, iso
from relay.log import event
from relay.prices import cost_usd, price_for
from relay.records import LedgerEntry, Sender

log = logging.getLogger(__name__)


class Accounting:
    def __init__(self, config: Config, ledger: Ledger, wall: Callable[[], datetime]) -> None:
        self.config = config
        self.ledger = ledger
        self.wall = wall

    def load(self) -> None:
        self.ledger.load(self.today())

    def today(self) -> str:
        return self.wall().strftime("%Y-%m-%d")

    def charge(
        self, kind: Literal["turn", "summary"], key: str, sender: Sender, reply: ApiReply
    ) -> float:
        """Price and record one answered call; returns its cost (0.0 for an unknown model)."""
        config = self.config
        price = price_for(reply.model or config.model, config.prices) or price_for(
            config.model, config.prices
        )
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
            price_known=price is not None,
        )
        try:
            self.ledger.record(entry.to_json(), now.strftime("%Y-%m-%d"))
        except OSError as exc:  # accounting: a full disk must not stop work
            log.error("cannot write the cost ledger: %s", exc)
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

    @property
    def today_usd(self) -> float:
        self.ledger.totals.roll(self.today())
        return self.ledger.totals.today_usd

    @property
    def calls_today(self) -> int:
        self.ledger.totals.roll(self.today())
        return self.ledger.totals.calls_today
