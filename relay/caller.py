"""One API call at a time on a worker thread, and a pipe that wakes the main loop when it
is done. The main loop stays free to feed the watchdog and deliver replies meanwhile."""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")  # what the call is about (the engine's Call)
R = TypeVar("R")  # what it returns


class Caller(Generic[T, R]):
    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._inflight: tuple[T, concurrent.futures.Future[R]] | None = None
        self._started = 0.0
        self._monotonic = monotonic
        self._closed = False
        self.wake_fd, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    @property
    def busy(self) -> bool:
        return self._inflight is not None

    @property
    def current(self) -> T | None:
        return self._inflight[0] if self._inflight else None

    def start(self, what: T, fn: Callable[[], R]) -> None:
        assert self._inflight is None, "one call at a time"
        future: concurrent.futures.Future[R] = concurrent.futures.Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                result = fn()
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)

        # Done-callbacks run after the result is set, so the woken loop sees it done.
        future.add_done_callback(lambda _: self.wake())
        # A daemon thread of its own per call: one abandoned in a hang must not keep the
        # process from exiting (an executor's workers are joined at exit).
        threading.Thread(target=run, name="api", daemon=True).start()
        self._inflight = (what, future)
        self._started = self._monotonic()

    def running_for(self) -> float:
        return self._monotonic() - self._started if self._inflight is not None else 0.0

    def abandon(self) -> T | None:
        """Give up on the call in flight (it has outlived every deadline: a hang below the
        HTTP client, such as a name lookup). Its thread is left to finish on its own, and
        whatever it returns is dropped."""
        if self._inflight is None:
            return None
        what, future = self._inflight
        future.cancel()
        self._inflight = None
        return what

    def take_done(self) -> tuple[T, concurrent.futures.Future[R]] | None:
        """The finished call and its future (once), or None while it runs or when idle."""
        if self._inflight is None or not self._inflight[1].done():
            return None
        done, self._inflight = self._inflight, None
        return done

    def wake(self) -> None:
        if self._closed:
            return  # an abandoned call finishing late: the pipe may be gone
        with contextlib.suppress(OSError):  # a full pipe already wakes the loop
            os.write(self._wake_w, b"x")

    def drain_wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self.wake_fd, 4096):
                pass

    def wait(self, timeout: float) -> None:
        """Block until the call in flight (if any) finishes; for tests and shutdown."""
        if self._inflight is not None:
            concurrent.futures.wait([self._inflight[1]], timeout=timeout)

    def close(self) -> None:
        self._closed = True
        os.close(self.wake_fd)
        os.close(self._wake_w)
