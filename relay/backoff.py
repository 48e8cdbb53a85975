"""When to try the API again: a small pure policy, no clock or randomness of its own."""

from __future__ import annotations

from dataclasses import dataclass, replace

MAX_BACKOFF_S = 300.0
BLOCKED_RETRY_S = 300.0


@dataclass(frozen=True)
class Backoff:
    """The API's side of the loop: consecutive transient failures, the earliest time the
    next call may start (monotonic seconds), and why calls are blocked, if they are."""

    failures: int = 0
    retry_at: float = 0.0
    blocked: str | None = None

    def ready(self, now: float) -> bool:
        return now >= self.retry_at

    def succeeded(self) -> Backoff:
        return Backoff()

    def failed(self, now: float, retry_after: float | None, jitter: float) -> Backoff:
        """After a transient failure. `jitter` in [0, 1) spreads retries out.

        relay's own exponential backoff is the floor: a server asking for `retry-after: 0`
        (or a few milliseconds) again and again must not make relay hammer the API."""
        failures = self.failures + 1
        # The exponent is capped: 2.0 ** 1024 overflows, and 2 ** 16 s is past the cap anyway.
        ours = min(2.0 ** min(failures - 1, 16), MAX_BACKOFF_S) * (0.75 + 0.25 * jitter)
        delay = min(max(retry_after or 0.0, ours), MAX_BACKOFF_S)
        return Backoff(failures, now + delay, None)

    def block(self, now: float, reason: str) -> Backoff:
        """After a refusal that no retry fixes soon (bad key, no credit): try again only
        every BLOCKED_RETRY_S."""
        return replace(self, retry_at=now + BLOCKED_RETRY_S, blocked=reason)

    def delay(self, now: float) -> float:
        return max(0.0, self.retry_at - now)
