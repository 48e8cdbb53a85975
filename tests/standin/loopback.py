"""What both stand-in servers share: a threaded HTTP/1.1 server on loopback that really stops
(kept-alive connections included), its handler base, and the script form's main loop.

stdlib only, like the stand-ins themselves.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any, Self, cast


class LoopbackServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the SDK pools many connections; don't refuse bursts

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        verbose: bool,
        owner: Any,
    ) -> None:
        super().__init__(address, handler)
        self.verbose = verbose
        self.owner = owner
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def track(self, connection: socket.socket, alive: bool) -> None:
        with self._connections_lock:
            if alive:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def close_connections(self) -> None:
        # Keep-alive connections outlive serve_forever(); without this a pooled SDK client would
        # still be answered after stop(), so "API down" could not be simulated.
        with self._connections_lock:
            for connection in self._connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
            self._connections.clear()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out before a delayed answer causes BrokenPipe: expected, not news.
        if self.verbose:
            super().handle_error(request, client_address)


class LoopbackHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the SDK reuses pooled connections

    @property
    def loopback(self) -> LoopbackServer:
        return cast(LoopbackServer, self.server)

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes; with Nagle on, the client's delayed
        # ACK holds the body back ~40 ms per response, which no real server does.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.loopback.track(self.connection, alive=True)

    def finish(self) -> None:
        self.loopback.track(self.connection, alive=False)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        if self.loopback.verbose:
            super().log_message(format, *args)

    def read_body(self) -> tuple[dict[str, str], bytes]:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        return {k.lower(): v for k, v in self.headers.items()}, raw

    def send_json(
        self,
        status: int,
        body: bytes,
        headers: dict[str, str] | None = None,
        reason: str | None = None,
        content_type: str = "application/json",
    ) -> None:
        self.send_response(status, reason)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


class Serving:
    """Start/stop/url/context manager for a stand-in served by `handler`."""

    handler: type[LoopbackHandler]
    thread_name = "standin"

    def __init__(self, host: str, port: int, verbose: bool) -> None:
        self.host = host
        self.port = port
        self.verbose = verbose
        self._stopping = threading.Event()  # wakes requests sleeping in a delay
        self._server: LoopbackServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> Self:
        self._server = LoopbackServer((self.host, self.port), self.handler, self.verbose, self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=self.thread_name,
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server.close_connections()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError(f"{type(self).__name__} is not running")
        host, port = self._server.server_address[:2]
        return f"http://{cast(str, host)}:{port}"


def serve_until_signalled(url: str, port_file: str | None, stop: Callable[[], None]) -> int:
    """Announce `url`, wait for SIGTERM/SIGINT, stop, return exit status 0."""
    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    # A flag polled by sleep, not Event.wait(): a handler calling Event.set() can deadlock if the
    # signal lands while the main thread holds the event's internal lock.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if port_file:
        tmp = f"{port_file}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(url + "\n")
        os.replace(tmp, port_file)  # readers never see a half-written file
    print(url, flush=True)
    while not stopping:
        time.sleep(0.05)
    stop()
    return 0
