"""relay.systemd: the notify protocol against a real AF_UNIX datagram socket."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.systemd import Notifier, one_line, running_under_systemd, watchdog_interval


class NotifySocket:
    """What systemd listens on: a datagram socket we read the notifications from."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.settimeout(2.0)
        self.address = address

    def receive(self) -> list[str]:
        return self.sock.recv(65536).decode("utf-8").split("\n")

    def nothing_waiting(self) -> bool:
        self.sock.setblocking(False)
        try:
            self.sock.recv(65536)
        except BlockingIOError:
            return True
        finally:
            self.sock.settimeout(2.0)
        return False

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[NotifySocket]:
    server = NotifySocket(str(tmp_path / "notify"))
    yield server
    server.close()


@pytest.fixture
def notifier(listener: NotifySocket) -> Iterator[Notifier]:
    sender = Notifier({"NOTIFY_SOCKET": listener.address})
    yield sender
    sender.close()


def test_ready_with_status(listener: NotifySocket, notifier: Notifier) -> None:
    assert notifier.enabled
    assert notifier.ready("running: 2 sessions") is True
    assert listener.receive() == ["READY=1", "STATUS=running: 2 sessions"]


def test_watchdog_stopping_status_and_extend_timeout(
    listener: NotifySocket, notifier: Notifier
) -> None:
    assert notifier.watchdog()
    assert listener.receive() == ["WATCHDOG=1"]
    assert notifier.status("backoff")
    assert listener.receive() == ["STATUS=backoff"]
    assert notifier.extend_timeout(1.5)
    assert listener.receive() == ["EXTEND_TIMEOUT_USEC=1500000"]
    assert notifier.stopping()
    assert listener.receive() == ["STOPPING=1"]
    assert listener.nothing_waiting()


def test_status_is_made_one_line(listener: NotifySocket, notifier: Notifier) -> None:
    notifier.status("blocked:\n  credit balance\ttoo low\r\n")
    (line,) = listener.receive()
    assert line == "STATUS=blocked: credit balance too low"


def test_one_line_caps_the_length() -> None:
    assert one_line("word\n" * 100) == " ".join(["word"] * 100)[:200]
    assert len(one_line("x" * 1000)) == 200
    assert one_line("  a\n\nb  ") == "a b"


def test_abstract_socket() -> None:
    address = f"@relay-test-{uuid.uuid4().hex}"
    server = NotifySocket(address)
    sender = Notifier({"NOTIFY_SOCKET": address})
    try:
        assert sender.ready("up")
        assert server.receive() == ["READY=1", "STATUS=up"]
    finally:
        sender.close()
        server.close()


def test_no_notify_socket_does_nothing() -> None:
    for env in ({}, {"NOTIFY_SOCKET": ""}):
        sender = Notifier(env)
        assert not sender.enabled
        assert sender.send("READY=1") is False
        assert sender.watchdog() is False
        assert sender._sock is None  # no socket was even created
        sender.close()


def test_socket_that_is_gone_returns_false(tmp_path: Path) -> None:
    sender = Notifier({"NOTIFY_SOCKET": str(tmp_path / "absent")})
    try:
        assert sender.enabled
        assert sender.watchdog() is False
    finally:
        sender.close()


def test_a_failing_socket_is_logged_once_per_outage(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    address = str(tmp_path / "notify")
    sender = Notifier({"NOTIFY_SOCKET": address})
    caplog.set_level(logging.INFO, logger="relay.systemd")
    try:
        assert [sender.watchdog() for _ in range(5)] == [False] * 5
        (warning,) = caplog.records
        assert warning.levelno == logging.WARNING
        assert address in warning.getMessage()
        assert "No such file or directory" in warning.getMessage()

        caplog.clear()
        listener = NotifySocket(address)  # systemd is back
        try:
            assert sender.watchdog() is True
            assert listener.receive() == ["WATCHDOG=1"]
        finally:
            listener.close()
        (recovered,) = caplog.records
        assert recovered.levelno == logging.INFO

        os.unlink(address)  # and gone again: one more warning, not one per ping
        caplog.clear()
        assert [sender.watchdog() for _ in range(3)] == [False] * 3
        assert [r.levelno for r in caplog.records] == [logging.WARNING]
    finally:
        sender.close()


def test_running_under_systemd_looks_for_its_runtime_directory(tmp_path: Path) -> None:
    assert running_under_systemd(tmp_path) is True
    assert running_under_systemd(tmp_path / "absent") is False


def test_close_is_idempotent_and_send_reopens(listener: NotifySocket, notifier: Notifier) -> None:
    notifier.close()
    notifier.close()
    assert notifier.watchdog()
    assert listener.receive() == ["WATCHDOG=1"]


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())}) == 0.5
    assert Notifier({"WATCHDOG_USEC": "4000000"}).watchdog_interval_s == 2.0


def test_watchdog_meant_for_another_process_is_ignored() -> None:
    other = str(os.getpid() + 1)
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": other}) is None


@pytest.mark.parametrize("usec", ["", "0", "-5", "thirty", "1.5"])
def test_watchdog_off_or_garbage(usec: str) -> None:
    assert watchdog_interval({"WATCHDOG_USEC": usec}) is None


def test_watchdog_absent() -> None:
    assert watchdog_interval({}) is None
    assert Notifier({}).watchdog_interval_s is None
