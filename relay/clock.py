"""The conversation's wall clock, which the budgets' day and month boundaries are read on.

For tests only: with RELAY_TEST_CLOCK_FILE set, the clock runs ahead by the number of
seconds that file holds (read again whenever it changes; missing or unreadable: 0), so a
test can step past midnight without waiting for it. Nothing in a normal deployment sets
it; the monotonic clock that times retries is never shifted.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from pathlib import Path

from relay.ledger import utc_now

log = logging.getLogger(__name__)

TEST_CLOCK_ENV = "RELAY_TEST_CLOCK_FILE"


class ShiftedClock:
    def __init__(self, path: Path, now: Callable[[], datetime] = utc_now) -> None:
        self.path = path
        self.now = now
        self._seen: tuple[int, int] | None = None
        self._offset = timedelta(0)

    def __call__(self) -> datetime:
        try:
            info = os.stat(self.path)
            stamp = (info.st_mtime_ns, info.st_size)
            if stamp != self._seen:
                self._seen = stamp
                self._offset = timedelta(seconds=float(self.path.read_text().strip() or 0))
                log.warning("test clock: running %s ahead", self._offset)
        except (OSError, ValueError, OverflowError):
            self._seen, self._offset = None, timedelta(0)
        return self.now() + self._offset


def wall_clock(environ: Mapping[str, str]) -> Callable[[], datetime]:
    path = environ.get(TEST_CLOCK_ENV)
    return ShiftedClock(Path(path)) if path else utc_now
