"""A total deadline for each API call, enforced where the bytes move.

The SDK's `timeout` is per operation: each connect, each read and each write gets the full
time again, so a server that sends a byte every second never times out. Here the network
backend under httpx2 caps every connect, read and write by the time left until the current
call's deadline, and raises httpcore2's own timeouts once it has passed, which httpx2 and
the SDK turn into `APITimeoutError` as for any time-out.

Imported only by `AnthropicApi`, lazily, like `anthropic` itself. One consequence of giving
httpx2 a transport of our own: it no longer mounts proxies from HTTPS_PROXY/ALL_PROXY, which
it does only for transports it makes itself (relay has never documented or tested a proxy).
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import httpcore2
import httpx2
from httpcore2 import NetworkBackend, NetworkStream

# Writes go out in pieces so a server that reads slowly cannot stretch one write past the
# deadline either (each piece gets at most the time left).
WRITE_PIECE = 64 * 1024

SocketOption = (
    tuple[int, int, int] | tuple[int, int, bytes | bytearray] | tuple[int, int, None, int]
)


class Deadline(threading.local):
    """The monotonic time by which the current thread's call must end, or None."""

    def __init__(self) -> None:
        self.at: float | None = None

    @contextmanager
    def within(self, seconds: float) -> Iterator[None]:
        self.at = time.monotonic() + seconds
        try:
            yield
        finally:
            self.at = None

    def cap(self, timeout: float | None, expired: type[Exception]) -> float | None:
        """`timeout`, shortened to the time left; raise `expired` when none is left."""
        if self.at is None:
            return timeout
        left = self.at - time.monotonic()
        if left <= 0:
            raise expired("the call's total deadline has passed")
        return left if timeout is None else min(timeout, left)


class _Stream(NetworkStream):
    def __init__(self, stream: NetworkStream, deadline: Deadline) -> None:
        self._stream = stream
        self._deadline = deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, self._deadline.cap(timeout, httpcore2.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        for start in range(0, len(buffer), WRITE_PIECE):
            piece = buffer[start : start + WRITE_PIECE]
            self._stream.write(piece, self._deadline.cap(timeout, httpcore2.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> NetworkStream:
        capped = self._deadline.cap(timeout, httpcore2.ConnectTimeout)
        return _Stream(self._stream.start_tls(ssl_context, server_hostname, capped), self._deadline)

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _Backend(NetworkBackend):
    def __init__(self, deadline: Deadline) -> None:
        self._backend = httpcore2.SyncBackend()
        self._deadline = deadline

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> NetworkStream:
        capped = self._deadline.cap(timeout, httpcore2.ConnectTimeout)
        stream = self._backend.connect_tcp(host, port, capped, local_address, socket_options)
        return _Stream(stream, self._deadline)

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> NetworkStream:
        capped = self._deadline.cap(timeout, httpcore2.ConnectTimeout)
        stream = self._backend.connect_unix_socket(path, capped, socket_options)
        return _Stream(stream, self._deadline)

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


def transport(deadline: Deadline) -> httpx2.HTTPTransport:
    """httpx2's own transport, its connections made by a backend that honours `deadline`.

    httpx2 takes no network backend, but its pool does and hands it to every connection it
    opens, so it is set on the pool before the first one (tests/test_api.py proves it works
    with this httpx2; a version that renamed these fails here, at start, not silently)."""
    made = httpx2.HTTPTransport()
    pool = made._pool
    if not isinstance(pool, httpcore2.ConnectionPool) or not hasattr(pool, "_network_backend"):
        raise RuntimeError("this httpx2 has no connection pool to give a deadline to")
    pool._network_backend = _Backend(deadline)
    return made
