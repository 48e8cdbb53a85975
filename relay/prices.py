"""Model prices and the cost of one API call. Pure arithmetic, no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Price:
    """USD per million tokens."""

    input: float
    output: float
    cache_write: float  # 5-minute cache write
    cache_write_1h: float
    cache_read: float

    @classmethod
    def standard(cls, input: float, output: float, read_ratio: float = 0.1) -> Price:
        # The usual multipliers: 5m write 1.25x, 1h write 2x, read 0.1x of input.
        return cls(input, output, input * 1.25, input * 2.0, input * read_ratio)


# Published list prices, late 2026 (see README "Cost"). Override or extend with `prices:`.
DEFAULT_PRICES: dict[str, Price] = {
    "claude-opus-5-5": Price.standard(4.0, 20.0, read_ratio=0.05),
    "claude-opus-5": Price.standard(5.0, 25.0),
    "claude-opus-4-8": Price.standard(5.0, 25.0),
    "claude-opus-4-7": Price.standard(5.0, 25.0),
    "claude-opus-4-6": Price.standard(5.0, 25.0),
    "claude-opus-4-5": Price.standard(5.0, 25.0),
    "claude-sonnet-5-5": Price.standard(2.0, 10.0, read_ratio=0.05),
    "claude-sonnet-5": Price.standard(2.0, 10.0),
    "claude-sonnet-4-6": Price.standard(3.0, 15.0),
    "claude-sonnet-4-5": Price.standard(3.0, 15.0),
    "claude-haiku-5-5": Price.standard(0.10, 0.50),
    "claude-haiku-4-5": Price.standard(1.0, 5.0),
    "claude-fable-5-2": Price.standard(8.0, 40.0, read_ratio=0.025),
    "claude-fable-5-1": Price.standard(10.0, 50.0, read_ratio=0.025),
    "claude-mythos-5-1": Price.standard(10.0, 50.0, read_ratio=0.025),
    "claude-fable-5": Price.standard(10.0, 50.0),
    "claude-mythos-5": Price.standard(10.0, 50.0),
}


@dataclass(frozen=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_write_tokens: int = 0  # 5-minute writes
    cache_write_1h_tokens: int = 0
    cache_read_tokens: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "cache_write_1h_tokens": self.cache_write_1h_tokens,
            "cache_read_tokens": self.cache_read_tokens,
        }

    @classmethod
    def from_api(cls, usage: Any) -> Usage:
        """Given the SDK's `usage` object (or a dict), return our flat record."""

        def get(obj: Any, name: str) -> Any:
            return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)

        created = int(get(usage, "cache_creation_input_tokens") or 0)
        breakdown = get(usage, "cache_creation")
        write_1h = int(get(breakdown, "ephemeral_1h_input_tokens") or 0) if breakdown else 0
        write_5m = int(get(breakdown, "ephemeral_5m_input_tokens") or 0) if breakdown else created
        if breakdown and write_5m + write_1h != created:
            # The breakdown is authoritative only when it adds up; otherwise bill as 5m.
            write_5m, write_1h = created, 0
        return cls(
            input_tokens=int(get(usage, "input_tokens") or 0),
            output_tokens=int(get(usage, "output_tokens") or 0),
            cache_write_tokens=write_5m,
            cache_write_1h_tokens=write_1h,
            cache_read_tokens=int(get(usage, "cache_read_input_tokens") or 0),
        )


def cost_usd(usage: Usage, price: Price) -> float:
    """Given token counts and a price, return the estimated cost in USD."""
    total = (
        usage.input_tokens * price.input
        + usage.output_tokens * price.output
        + usage.cache_write_tokens * price.cache_write
        + usage.cache_write_1h_tokens * price.cache_write_1h
        + usage.cache_read_tokens * price.cache_read
    )
    return round(total / 1_000_000, 8)


def call_price(
    model: str, configured: str, table: Mapping[str, Price]
) -> tuple[Price | None, bool]:
    """(the price of a call, whether it is the model's own): a model the table does not know
    (an empty one: the configured model) is estimated at the configured model's price."""
    own = price_for(model or configured, table)
    return (own, True) if own is not None else (price_for(configured, table), False)


def price_for(model: str, table: Mapping[str, Price]) -> Price | None:
    """Exact id first, then the longest known id that prefixes it (dated snapshots)."""
    if model in table:
        return table[model]
    matches = [name for name in table if model.startswith(name)]
    return table[max(matches, key=len)] if matches else None
