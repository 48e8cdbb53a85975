"""relay.prices: the cost arithmetic, usage parsing and price lookup."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from relay.prices import DEFAULT_PRICES, Price, Usage, cost_usd, price_for

OPUS = DEFAULT_PRICES["claude-opus-4-7"]
MILLION = 1_000_000


def test_opus_4_7_list_price_and_cache_multipliers() -> None:
    assert (
        Price(input=5.0, output=25.0, cache_write=6.25, cache_write_1h=10.0, cache_read=0.5) == OPUS
    )


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        (Usage(input_tokens=MILLION), 5.0),
        (Usage(output_tokens=MILLION), 25.0),
        (Usage(cache_write_tokens=MILLION), 6.25),  # 1.25 x input
        (Usage(cache_write_1h_tokens=MILLION), 10.0),  # 2 x input
        (Usage(cache_read_tokens=MILLION), 0.5),  # 0.1 x input
        (Usage(), 0.0),
    ],
)
def test_each_token_kind_at_its_price(usage: Usage, expected: float) -> None:
    assert cost_usd(usage, OPUS) == pytest.approx(expected)


def test_a_realistic_cached_turn() -> None:
    # 12 new input tokens, 400 output, 2,000 written to the 5m cache, 1,000 to the 1h
    # cache and 50,000 read from it.
    usage = Usage(
        input_tokens=12,
        output_tokens=400,
        cache_write_tokens=2_000,
        cache_write_1h_tokens=1_000,
        cache_read_tokens=50_000,
    )
    expected = (12 * 5 + 400 * 25 + 2_000 * 6.25 + 1_000 * 10 + 50_000 * 0.5) / MILLION
    assert expected == pytest.approx(0.05756)
    assert cost_usd(usage, OPUS) == pytest.approx(expected, abs=1e-12)


def test_cost_is_rounded_to_eight_places() -> None:
    # One input token of opus costs $0.000005; one cache-read token $0.0000005.
    assert cost_usd(Usage(input_tokens=1), OPUS) == 0.000005
    assert cost_usd(Usage(cache_read_tokens=1), OPUS) == 0.0000005
    assert cost_usd(Usage(cache_read_tokens=1), DEFAULT_PRICES["claude-haiku-5-5"]) == 0.00000001


def test_usage_from_api_dict_with_breakdown() -> None:
    usage = Usage.from_api(
        {
            "input_tokens": 10,
            "output_tokens": 20,
            "cache_creation_input_tokens": 300,
            "cache_read_input_tokens": 4000,
            "cache_creation": {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 200},
        }
    )
    assert usage == Usage(
        input_tokens=10,
        output_tokens=20,
        cache_write_tokens=100,
        cache_write_1h_tokens=200,
        cache_read_tokens=4000,
    )


def test_usage_from_api_object_with_breakdown() -> None:
    # The SDK hands us attribute objects, not dicts.
    sdk_usage = SimpleNamespace(
        input_tokens=1,
        output_tokens=2,
        cache_creation_input_tokens=30,
        cache_read_input_tokens=40,
        cache_creation=SimpleNamespace(ephemeral_5m_input_tokens=0, ephemeral_1h_input_tokens=30),
    )
    assert Usage.from_api(sdk_usage) == Usage(1, 2, 0, 30, 40)


def test_usage_from_api_without_breakdown_bills_cache_writes_as_5m() -> None:
    usage = Usage.from_api(
        {"input_tokens": 5, "output_tokens": 6, "cache_creation_input_tokens": 700}
    )
    assert usage == Usage(
        input_tokens=5, output_tokens=6, cache_write_tokens=700, cache_write_1h_tokens=0
    )
    assert Usage.from_api({"cache_creation_input_tokens": 7, "cache_creation": None}) == Usage(
        cache_write_tokens=7
    )


def test_breakdown_that_does_not_add_up_is_ignored() -> None:
    usage = Usage.from_api(
        {
            "input_tokens": 1,
            "output_tokens": 1,
            "cache_creation_input_tokens": 500,
            "cache_creation": {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 100},
        }
    )
    assert usage.cache_write_tokens == 500
    assert usage.cache_write_1h_tokens == 0


def test_usage_from_api_treats_missing_and_null_as_zero() -> None:
    assert Usage.from_api({}) == Usage()
    assert Usage.from_api({"input_tokens": None, "cache_read_input_tokens": None}) == Usage()
    assert Usage.from_api(SimpleNamespace()) == Usage()


def test_usage_as_dict() -> None:
    assert Usage(1, 2, 3, 4, 5).as_dict() == {
        "input_tokens": 1,
        "output_tokens": 2,
        "cache_write_tokens": 3,
        "cache_write_1h_tokens": 4,
        "cache_read_tokens": 5,
    }


def test_price_for_exact_id() -> None:
    assert price_for("claude-opus-4-7", DEFAULT_PRICES) is OPUS
    assert price_for("claude-opus-5-5", DEFAULT_PRICES) == Price.standard(4.0, 20.0, 0.05)


def test_price_for_dated_snapshot_uses_the_longest_prefix() -> None:
    assert price_for("claude-opus-4-7-20260115", DEFAULT_PRICES) is OPUS
    # "claude-opus-5" and "claude-opus-5-5" both prefix it; the longer one is the model.
    assert (
        price_for("claude-opus-5-5-20261101", DEFAULT_PRICES) is DEFAULT_PRICES["claude-opus-5-5"]
    )
    assert (
        price_for("claude-sonnet-5-20261001", DEFAULT_PRICES) is DEFAULT_PRICES["claude-sonnet-5"]
    )


def test_price_for_unknown_model() -> None:
    assert price_for("gpt-7", DEFAULT_PRICES) is None
    assert price_for("claude", DEFAULT_PRICES) is None  # shorter than every id
    assert price_for("claude-opus-4-7", {}) is None


def test_exact_id_wins_over_a_prefix() -> None:
    table = {"m": Price.standard(1.0, 1.0), "m-1": Price.standard(2.0, 2.0)}
    assert price_for("m-1", table) is table["m-1"]
    assert price_for("m-2", table) is table["m"]


# Read multipliers differ by model; writes are 1.25x (5 m) and 2x (1 h) for all of them.
READ_RATIOS = {
    "claude-opus-5-5": 0.05,
    "claude-sonnet-5-5": 0.05,
    "claude-fable-5-2": 0.025,
    "claude-fable-5-1": 0.025,
    "claude-mythos-5-1": 0.025,
}


@pytest.mark.parametrize("model", sorted(DEFAULT_PRICES))
def test_each_model_s_cache_multipliers(model: str) -> None:
    price = DEFAULT_PRICES[model]
    assert price.cache_write == pytest.approx(price.input * 1.25)
    assert price.cache_write_1h == pytest.approx(price.input * 2.0)
    assert price.cache_read == pytest.approx(price.input * READ_RATIOS.get(model, 0.1))


def test_an_api_usage_with_1h_writes_on_a_005_read_model_to_dollars() -> None:
    # What the API reports for a turn that wrote the prefix to the 1 h cache and the new
    # turn to the 5 m one, priced on a dated claude-opus-5-5 ($4 in, $20 out): 5 m writes
    # $5, 1 h writes $8, reads $0.20 (0.05x, not the usual 0.1x).
    usage = Usage.from_api(
        {
            "input_tokens": 3,
            "output_tokens": 500,
            "cache_creation_input_tokens": 30_000,
            "cache_read_input_tokens": 200_000,
            "cache_creation": {
                "ephemeral_5m_input_tokens": 1_000,
                "ephemeral_1h_input_tokens": 29_000,
            },
        }
    )
    assert usage == Usage(3, 500, 1_000, 29_000, 200_000)
    price = price_for("claude-opus-5-5-20261101", DEFAULT_PRICES)
    assert price is DEFAULT_PRICES["claude-opus-5-5"]
    expected = (3 * 4 + 500 * 20 + 1_000 * 5 + 29_000 * 8 + 200_000 * 0.2) / MILLION
    assert cost_usd(usage, price) == pytest.approx(expected, abs=1e-12)
    # Billed as if all writes were 5 m, the same call would have looked cheaper.
    as_5m = Usage(3, 500, 30_000, 0, 200_000)
    assert cost_usd(as_5m, price) < cost_usd(usage, price)
