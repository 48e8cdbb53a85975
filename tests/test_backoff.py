"""relay.backoff: when to try the API again (pure; the clock and jitter are passed in)."""

from __future__ import annotations

import pytest

from relay.backoff import BLOCKED_RETRY_S, MAX_BACKOFF_S, Backoff

NOW = 1000.0


def after(failures: int, retry_after: float | None = None, jitter: float = 0.0) -> Backoff:
    """The backoff after `failures` transient failures, all at NOW."""
    backoff = Backoff()
    for _ in range(failures):
        backoff = backoff.failed(NOW, retry_after, jitter)
    return backoff


def test_a_fresh_backoff_is_ready_at_once() -> None:
    backoff = Backoff()
    assert backoff.ready(0.0)
    assert backoff.delay(0.0) == 0.0
    assert backoff.blocked is None


def test_the_delay_doubles_with_each_failure() -> None:
    delays = [after(n).delay(NOW) for n in range(1, 7)]
    assert delays == [0.75, 1.5, 3.0, 6.0, 12.0, 24.0]  # jitter 0: three quarters of 2^(n-1)
    assert after(3).failures == 3


def test_jitter_spreads_a_delay_over_its_top_quarter() -> None:
    low = after(3, jitter=0.0).delay(NOW)
    high = after(3, jitter=0.999).delay(NOW)
    assert low == 3.0
    assert 3.99 < high < 4.0
    assert low < after(3, jitter=0.5).delay(NOW) < high


def test_not_ready_until_the_delay_has_passed() -> None:
    backoff = after(2)  # 1.5 s
    assert not backoff.ready(NOW)
    assert not backoff.ready(NOW + 1.49)
    assert backoff.ready(NOW + 1.5)
    assert backoff.delay(NOW + 1.0) == pytest.approx(0.5)
    assert backoff.delay(NOW + 10.0) == 0.0  # never negative


@pytest.mark.parametrize("retry_after", [0.0, 0.001, None])
def test_our_backoff_is_the_floor_under_retry_after(retry_after: float | None) -> None:
    # A server answering `retry-after: 0` every time must not make relay hammer the API.
    for failures in range(1, 10):
        assert after(failures, retry_after).delay(NOW) == after(failures).delay(NOW) > 0.0
    assert after(9, retry_after).delay(NOW) == 192.0


def test_a_longer_retry_after_is_honoured() -> None:
    assert after(1, retry_after=30.0).delay(NOW) == 30.0
    assert after(2, retry_after=2.5).delay(NOW) == 2.5


@pytest.mark.parametrize("jitter", [0.0, 0.999])
def test_the_delay_is_capped(jitter: float) -> None:
    capped = [after(n, jitter=jitter).delay(NOW) for n in range(9, 40)]
    assert max(capped) <= MAX_BACKOFF_S
    assert capped[-1] == pytest.approx(MAX_BACKOFF_S * (0.75 + 0.25 * jitter))
    # Also when the server asks for longer: relay looks again after MAX_BACKOFF_S anyway.
    assert after(1, retry_after=3600.0).delay(NOW) == MAX_BACKOFF_S
    assert after(30, retry_after=3600.0, jitter=jitter).delay(NOW) == MAX_BACKOFF_S


def test_block_waits_the_blocked_interval_and_says_why() -> None:
    backoff = after(2).block(NOW, "the API key was refused")
    assert backoff.blocked == "the API key was refused"
    assert backoff.failures == 2  # a block is not a transient failure
    assert backoff.delay(NOW) == BLOCKED_RETRY_S
    assert not backoff.ready(NOW + BLOCKED_RETRY_S - 1)
    assert backoff.ready(NOW + BLOCKED_RETRY_S)

    again = backoff.block(NOW + BLOCKED_RETRY_S, "no credit")
    assert again.blocked == "no credit"
    assert again.retry_at == NOW + 2 * BLOCKED_RETRY_S


@pytest.mark.parametrize(
    "before",
    [after(1), after(12, retry_after=60.0), after(3).block(NOW, "bad key"), Backoff()],
    ids=["one-failure", "many-failures", "blocked", "fresh"],
)
def test_success_resets_everything(before: Backoff) -> None:
    backoff = before.succeeded()
    assert backoff == Backoff()
    assert backoff.ready(NOW) and backoff.blocked is None
    # The next failure starts from the shortest delay again.
    assert backoff.failed(NOW, None, 0.0).delay(NOW) == 0.75


def test_backoff_is_a_value() -> None:
    # Each step returns a new backoff and leaves the old one as it was.
    first = after(1)
    second = first.failed(NOW, None, 0.0)
    first.block(NOW, "x")
    first.succeeded()
    assert (first.failures, first.retry_at, first.blocked) == (1, NOW + 0.75, None)
    assert second.failures == 2


def test_a_very_long_outage_stays_at_the_cap() -> None:
    backoff = Backoff(failures=5000).failed(0.0, None, 0.0)
    assert backoff.retry_at <= MAX_BACKOFF_S
