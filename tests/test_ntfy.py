"""relay.ntfy: pushes as ntfy reads them, and a slow or failing server never blocks or raises."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
import urllib.error
from collections.abc import Callable, Iterator

import pytest

from relay.ntfy import Notifier, Push, post
from tests.capture import Collect
from tests.standin.ntfy import StandinNtfy

TOPIC = "relay-test"


@pytest.fixture
def logged() -> Iterator[Collect]:
    handler = Collect()
    logger = logging.getLogger("relay.ntfy")
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old_level)


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.01)


# ---- post ---------------------------------------------------------------------------------


def test_post_sends_title_priority_tags_and_body(ntfy: StandinNtfy) -> None:
    post(
        ntfy.url,
        TOPIC,
        Push("relay: session-1 needs you", "Which branch?", "high", ("warning", "relay")),
        timeout_s=5,
    )

    (message,) = ntfy.messages
    assert message.topic == TOPIC
    assert message.message == "Which branch?"
    assert message.title == "relay: session-1 needs you"
    assert message.priority == 4
    assert message.tags == ["warning", "relay"]
    assert message.status == 200


@pytest.mark.parametrize(
    ("priority", "number"), [("min", 1), ("low", 2), ("default", 3), ("high", 4), ("urgent", 5)]
)
def test_priority_names(ntfy: StandinNtfy, priority: str, number: int) -> None:
    post(ntfy.url, TOPIC, Push("t", "m", priority), timeout_s=5)
    assert ntfy.messages[0].priority == number


def test_no_tags_sends_no_tags(ntfy: StandinNtfy) -> None:
    post(ntfy.url, TOPIC, Push("t", "m"), timeout_s=5)
    assert ntfy.messages[0].tags == []
    assert ntfy.messages[0].priority == 3


def test_non_ascii_title_and_body_survive(ntfy: StandinNtfy) -> None:
    title = "Größe prüfen — ✓"
    post(ntfy.url, TOPIC, Push(title, "Tschüß 👋", "urgent"), timeout_s=5)

    (message,) = ntfy.messages
    assert message.title == title  # published as JSON: no header encoding to get wrong
    assert message.message == "Tschüß 👋"
    assert message.priority == 5


def test_post_raises_oserror_on_http_failure() -> None:
    with StandinNtfy(fail_status=500) as server:
        with pytest.raises(urllib.error.HTTPError) as caught:
            post(server.url, TOPIC, Push("t", "m"), timeout_s=5)
        caught.value.close()  # it holds the response
        assert caught.value.code == 500
        assert isinstance(caught.value, OSError)
        assert len(server.messages) == 1


# ---- Notifier: off the caller's thread ----------------------------------------------------


def test_push_is_delivered_in_the_background(ntfy: StandinNtfy) -> None:
    notifier = Notifier(ntfy.url, TOPIC, timeout_s=5)
    try:
        notifier.push(Push("one", "first", "high"))
        notifier.push(Push("two", "second"))
        first, second = ntfy.wait_for(2)
        wait_until(lambda: notifier.sent == 2)
    finally:
        notifier.close(wait_s=5)
    assert (first.title, first.message, first.priority) == ("one", "first", 4)
    assert (second.title, second.message) == ("two", "second")  # in order
    assert notifier.failed == 0


def test_push_returns_at_once_when_the_server_hangs() -> None:
    # The client gives up after 0.5 s, well before the stand-in's 3 s delay ends.
    notifier = Notifier(None, TOPIC, timeout_s=0.5)
    with StandinNtfy(delay=3.0) as server:
        notifier.server = server.url
        started = time.monotonic()
        notifier.push(Push("slow", "the server sleeps 3 s before answering"))
        elapsed = time.monotonic() - started
        server.wait_for(1)  # the request really is hanging at the server
        assert notifier.sent == notifier.failed == 0
        wait_until(lambda: notifier.failed == 1)  # the timeout counts as a failure
        notifier.close(wait_s=5)
    # A behaviour bound, not a benchmark: a blocking push would take >= 0.5 s.
    assert elapsed < 0.5
    assert notifier.sent == 0
    assert notifier._thread is not None
    assert not notifier._thread.is_alive()


def test_failing_server_is_counted_and_logged_never_raised(logged: Collect) -> None:
    with StandinNtfy(fail_status=500) as server:
        notifier = Notifier(server.url, TOPIC, timeout_s=5)
        try:
            notifier.push(Push("doomed", "m"))  # must not raise
            server.wait_for(1)
            wait_until(lambda: notifier.failed == 1)
            notifier.push(Push("doomed too", "m"))
            wait_until(lambda: notifier.failed == 2)
        finally:
            notifier.close(wait_s=5)
    assert notifier.sent == 0
    errors = [r for r in logged.records if getattr(r, "RELAY_EVENT", None) == "ntfy_error"]
    assert len(errors) == 2
    assert errors[0].levelno == logging.WARNING
    assert "doomed" in errors[0].getMessage()
    assert "500" in errors[0].getMessage()


def test_unreachable_server_is_counted_not_raised() -> None:
    with StandinNtfy() as server:
        url = server.url
    notifier = Notifier(url, TOPIC, timeout_s=2)
    try:
        notifier.push(Push("nobody home", "m"))
        wait_until(lambda: notifier.failed == 1)
    finally:
        notifier.close(wait_s=5)
    assert notifier.sent == 0


def test_disabled_notifier_sends_nothing(ntfy: StandinNtfy, logged: Collect) -> None:
    for notifier in (Notifier(None, TOPIC, 5), Notifier(ntfy.url, None, 5), Notifier("", "t", 5)):
        assert not notifier.enabled
        notifier.push(Push("quiet", "m"))
        assert notifier._thread is None  # nothing started, nothing queued
        assert notifier._queue.empty()
        notifier.close()
    assert ntfy.messages == []
    assert any("ntfy disabled" in r.getMessage() for r in logged.records)


def test_full_queue_drops_and_logs_instead_of_blocking(logged: Collect) -> None:
    # A listening socket that never answers: the first push hangs until its timeout.
    silent = socket.create_server(("127.0.0.1", 0))
    notifier = Notifier(f"http://127.0.0.1:{silent.getsockname()[1]}", TOPIC, timeout_s=0.5)
    try:
        started = time.monotonic()
        for n in range(105):  # one in flight, up to 100 queued, the rest dropped
            notifier.push(Push(f"p{n}", "m"))
        elapsed = time.monotonic() - started
    finally:
        silent.close()  # from now on every push is refused at once
    wait_until(lambda: notifier.failed >= 101 or notifier._queue.empty())
    notifier.close(wait_s=5)
    assert elapsed < 0.5
    dropped = [r for r in logged.records if "queue full" in r.getMessage()]
    assert 4 <= len(dropped) <= 5
    assert all(getattr(r, "RELAY_EVENT", None) == "ntfy_error" for r in dropped)
    assert notifier.failed + len(dropped) == 105
    assert notifier._thread is not None
    assert not notifier._thread.is_alive()


class BrokenHttp:
    """A server that answers every request with `reply` and hangs up."""

    def __init__(self, reply: bytes) -> None:
        self.reply = reply
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with conn, contextlib.suppress(OSError):
                conn.settimeout(2)
                conn.recv(65536)
                conn.sendall(self.reply)

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.sock.close()


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{}",  # body cut short
        b"garbage\r\n\r\n",  # not HTTP at all
    ],
    ids=["incomplete-read", "bad-status-line"],
)
def test_broken_response_is_counted_and_the_worker_survives(reply: bytes) -> None:
    # Was a bug (fixed in 742ade1): http.client's IncompleteRead/BadStatusLine are not
    # OSError; they killed the push thread and every later escalation was silently lost.
    server = BrokenHttp(reply)
    notifier = Notifier(server.url, TOPIC, timeout_s=2)
    try:
        notifier.push(Push("first", "m"))
        assert notifier._thread is not None
        thread = notifier._thread
        wait_until(lambda: notifier.failed == 1 or not thread.is_alive())
        assert thread.is_alive()
        notifier.push(Push("second", "m"))
        wait_until(lambda: notifier.failed == 2 or not thread.is_alive())
        assert notifier.failed == 2
    finally:
        notifier.close(wait_s=2)
        server.close()
