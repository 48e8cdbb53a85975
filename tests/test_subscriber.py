"""The answer subscriber against the stand-in ntfy server: the real stream, the real
`since=` semantics, restarts, an expired cursor, a server that goes away, and bad input.

What it hands over is read from state/jc_input.txt by a stand-in for relay's intake (which
takes the file away, as the real one does); status.json is written by the test where a
question must be pending. The whole path through the conversation is in tests/test_e2e.py.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from relay.answers import Handover, button_body, decode_handover
from relay.config import Config, parse_config
from relay.layout import Layout
from relay.subscriber import Subscriber
from tests.capture import Collect
from tests.standin.ntfy import StandinNtfy, publish

QUESTIONS = "relay-q"
ANSWERS = "relay-a"


def config(tmp_path: Path, ntfy: StandinNtfy, **ntfy_settings: Any) -> Config:
    settings = {"server": ntfy.url, "topic": QUESTIONS, "reply_topic": ANSWERS}
    settings.update(ntfy_settings)
    return parse_config(
        {"sessions": ["session-1", "session-2"], "data_dir": str(tmp_path), "ntfy": settings}
    )


def wait_until(condition: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        time.sleep(0.01)


class Intake:
    """Takes state/jc_input.txt away as relay's intake does, keeping what it held."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.taken: list[Handover] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            with contextlib.suppress(FileNotFoundError):
                text = self.layout.jc_input.read_text()
                self.layout.jc_input.unlink()
                handover = decode_handover(text)
                assert handover is not None, text
                self.taken.append(handover)

    def texts(self) -> list[str]:
        return [h.text for h in self.taken]

    def __enter__(self) -> Intake:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)


class Running:
    """A Subscriber on a thread, stopped (by the test or at the end) through stop()."""

    def __init__(self, cfg: Config, layout: Layout, environ: dict[str, str] | None = None):
        self.cfg, self.layout, self.environ = cfg, layout, environ or {}
        self.subscriber: Subscriber | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> Subscriber:
        self.subscriber = Subscriber(self.cfg, self.layout, self.environ)
        self.thread = threading.Thread(target=self.subscriber.run, daemon=True)
        self.thread.start()
        return self.subscriber

    def stop(self) -> None:
        if self.subscriber is not None and self.thread is not None:
            self.subscriber.stop()
            self.thread.join(10)
            assert not self.thread.is_alive(), "the subscriber did not stop"
            self.subscriber = None


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    layout = Layout(tmp_path)
    layout.ensure_intake()
    return layout


@pytest.fixture
def intake(layout: Layout) -> Iterator[Intake]:
    with Intake(layout) as running:
        yield running


@pytest.fixture
def logged() -> Iterator[Collect]:
    handler = Collect()
    logger = logging.getLogger("relay")
    old = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old)


@pytest.fixture
def running(tmp_path: Path, layout: Layout, ntfy: StandinNtfy) -> Iterator[Running]:
    runner = Running(config(tmp_path, ntfy), layout)
    yield runner
    runner.stop()


def events(logged: Collect, name: str) -> list[logging.LogRecord]:
    return [r for r in logged.records if getattr(r, "RELAY_EVENT", None) == name]


def acks(ntfy: StandinNtfy) -> list[str]:
    return [m.message for m in ntfy.messages if m.topic == QUESTIONS]


def pending(layout: Layout, question: str | None) -> None:
    """status.json as the conversation writes it while `question` waits (None: none)."""
    layout.status.write_text(json.dumps({"state": "needs_jc", "needs_jc_question": question}))


def subscribed(ntfy: StandinNtfy) -> None:
    ntfy.wait_for_subscriber_on(ANSWERS, timeout=30)


# ---- answers ---------------------------------------------------------------------------------


def test_a_typed_answer_is_handed_over_as_operator_input(
    running: Running, ntfy: StandinNtfy, intake: Intake, logged: Collect
) -> None:
    running.start()
    subscribed(ntfy)
    ident = publish(ntfy.url, ANSWERS, "deploy to staging first")
    wait_until(lambda: intake.taken, what="the handover")
    assert intake.taken == [Handover(ident, None, "deploy to staging first")]
    assert [r.__dict__["RELAY_ENVELOPE"] for r in events(logged, "answer")] == [ident]
    saved = json.loads(running.layout.subscriber_state.read_text())
    assert saved["since"] == ident and ident in saved["handled"]["ids"]


def test_a_tap_answers_the_pending_question_once(
    running: Running, layout: Layout, ntfy: StandinNtfy, intake: Intake, logged: Collect
) -> None:
    pending(layout, "Q4-abc123")
    running.start()
    subscribed(ntfy)
    first = publish(ntfy.url, ANSWERS, button_body("Q4-abc123", "approve"))
    wait_until(lambda: intake.taken, what="the handover")
    # A second tap (another button, the same question) before the conversation even wrote
    # its new status: the first answer wins.
    publish(ntfy.url, ANSWERS, button_body("Q4-abc123", "reject"))
    wait_until(lambda: events(logged, "answer_stale"), what="the stale answer")
    assert intake.taken == [Handover(first, "Q4-abc123", "approve")]
    wait_until(lambda: any("already answered" in a for a in acks(ntfy)), what="the ack")


@pytest.mark.parametrize("now", [None, "Q9-ffffff"])
def test_a_tap_on_a_question_no_longer_pending_changes_nothing(
    running: Running,
    layout: Layout,
    ntfy: StandinNtfy,
    intake: Intake,
    logged: Collect,
    now: str | None,
) -> None:
    pending(layout, now)
    running.start()
    subscribed(ntfy)
    publish(ntfy.url, ANSWERS, button_body("Q4-abc123", "approve"))
    (stale,) = wait_until(lambda: events(logged, "answer_stale"), what="the stale answer")
    assert stale.__dict__["RELAY_QUESTION"] == "Q4-abc123"
    (ack,) = wait_until(lambda: acks(ntfy), what="the ack")
    assert "already answered" in ack
    assert (ntfy.messages[-1].priority, ntfy.messages[-1].topic) == (2, QUESTIONS)
    time.sleep(0.2)
    assert intake.taken == []


# ---- never lost, never twice -----------------------------------------------------------------


def test_a_restart_resumes_after_the_last_answer_and_takes_what_came_meanwhile(
    running: Running, ntfy: StandinNtfy, intake: Intake
) -> None:
    running.start()
    subscribed(ntfy)
    for text in ("one", "two"):
        publish(ntfy.url, ANSWERS, text)
    wait_until(lambda: len(intake.taken) == 2, what="two handovers")
    running.stop()
    publish(ntfy.url, ANSWERS, "three, while relay was down")
    running.start()
    wait_until(lambda: len(intake.taken) == 3, what="the third")
    publish(ntfy.url, ANSWERS, "four")
    wait_until(lambda: len(intake.taken) == 4, what="the fourth")
    time.sleep(0.3)
    assert intake.texts() == ["one", "two", "three, while relay was down", "four"]


def test_an_expired_cursor_replays_the_whole_cache_and_nothing_is_applied_twice(
    tmp_path: Path, layout: Layout, intake: Intake
) -> None:
    clock = [1_000_000.0]
    with StandinNtfy(clock=lambda: clock[0], cache_s=3600) as ntfy:
        runner = Running(config(tmp_path, ntfy), layout)
        try:
            runner.start()
            subscribed(ntfy)
            publish(ntfy.url, ANSWERS, "old")  # the cursor will point at it
            wait_until(lambda: len(intake.taken) == 1, what="the first")
            runner.stop()
            clock[0] += 1800
            later = [publish(ntfy.url, ANSWERS, f"later {i}") for i in range(3)]
            clock[0] += 2000  # "old" leaves the cache; the later ones stay
            assert [m["id"] for m in ntfy.cached(ANSWERS)] == later
            runner.start()  # since=<old id>: unknown, so the server replays its whole cache
            wait_until(lambda: len(intake.taken) == 4, what="the later ones")
            runner.stop()
            # Now the cursor too has left the cache while answers it handled are still in it
            # (as after the server's cache was cut, or the message deleted): the server
            # replays all of them again, and none may be applied twice.
            saved = json.loads(layout.subscriber_state.read_text())
            assert saved["since"] == later[-1]
            saved["since"] = "Gone0000000x"
            layout.subscriber_state.write_text(json.dumps(saved))
            runner.start()
            subscribed(ntfy)
            publish(ntfy.url, ANSWERS, "newest")
            wait_until(lambda: len(intake.taken) == 5, what="the newest")
            time.sleep(0.3)
        finally:
            runner.stop()
    assert intake.texts() == ["old", "later 0", "later 1", "later 2", "newest"]


def test_handled_ids_stop_a_replay_even_without_a_cursor(
    running: Running, layout: Layout, ntfy: StandinNtfy, intake: Intake
) -> None:
    running.start()
    subscribed(ntfy)
    publish(ntfy.url, ANSWERS, "once")
    wait_until(lambda: intake.taken, what="the handover")
    running.stop()
    saved = json.loads(layout.subscriber_state.read_text())
    saved["since"] = None  # as if the cursor were lost: the stream starts at since=all
    layout.subscriber_state.write_text(json.dumps(saved))
    running.start()
    subscribed(ntfy)
    publish(ntfy.url, ANSWERS, "twice")
    wait_until(lambda: len(intake.taken) == 2, what="the new one")
    assert intake.texts() == ["once", "twice"]


def test_a_server_that_goes_away_is_reconnected_when_it_returns(
    running: Running, ntfy: StandinNtfy, intake: Intake, logged: Collect
) -> None:
    subscriber = running.start()
    subscribed(ntfy)
    publish(ntfy.url, ANSWERS, "before")
    wait_until(lambda: intake.taken, what="the first")
    ntfy.stop()
    wait_until(lambda: not subscriber.connected.is_set(), what="the stream to drop")
    time.sleep(3)  # a few failed reconnects
    ntfy.start()
    publish(ntfy.url, ANSWERS, "after")  # published before relay is back on the stream
    began = time.monotonic()
    wait_until(lambda: len(intake.taken) == 2, timeout=40, what="the answer after the return")
    assert time.monotonic() - began < 30
    assert intake.texts() == ["before", "after"]
    assert events(logged, "ntfy_subscribe_error")


def test_a_silent_server_is_given_up_after_the_read_timeout(
    tmp_path: Path, layout: Layout, intake: Intake, logged: Collect
) -> None:
    with StandinNtfy(keepalive_s=600) as ntfy:
        runner = Running(config(tmp_path, ntfy, read_timeout_s=0.5), layout)
        try:
            runner.start()
            subscribed(ntfy)
            wait_until(lambda: events(logged, "ntfy_subscribe_error"), what="the time-out")
            assert "nothing from" in events(logged, "ntfy_subscribe_error")[0].getMessage()
            subscribed(ntfy)  # and it comes back
            publish(ntfy.url, ANSWERS, "still heard")
            wait_until(lambda: intake.taken, what="the answer")
        finally:
            runner.stop()


def test_stop_ends_a_stream_blocked_in_a_read(
    tmp_path: Path, layout: Layout, intake: Intake
) -> None:
    with StandinNtfy(keepalive_s=600) as ntfy:
        runner = Running(config(tmp_path, ntfy, read_timeout_s=600), layout)
        runner.start()
        subscribed(ntfy)
        began = time.monotonic()
        runner.stop()
        assert time.monotonic() - began < 5


# ---- bad input -------------------------------------------------------------------------------


def test_too_long_and_binary_answers_are_refused_and_acknowledged(
    running: Running, ntfy: StandinNtfy, intake: Intake, logged: Collect
) -> None:
    running.start()
    subscribed(ntfy)
    publish(ntfy.url, ANSWERS, "x" * 5000)  # ntfy makes it an attachment
    publish(ntfy.url, ANSWERS, b"\xff\xfe binary")  # so too for what is not UTF-8
    publish(ntfy.url, ANSWERS, "fine")
    wait_until(lambda: intake.taken, what="the good one")
    assert intake.texts() == ["fine"]
    assert len(events(logged, "answer_refused")) == 2
    wait_until(lambda: len(acks(ntfy)) == 2, what="two acks")
    assert all(a.startswith("refused: ") for a in acks(ntfy))


def test_over_the_size_limit_is_refused(
    tmp_path: Path, layout: Layout, ntfy: StandinNtfy, intake: Intake, logged: Collect
) -> None:
    runner = Running(config(tmp_path, ntfy, max_answer_bytes=100), layout)
    try:
        runner.start()
        subscribed(ntfy)
        publish(ntfy.url, ANSWERS, "y" * 101)
        publish(ntfy.url, ANSWERS, "y" * 100)
        wait_until(lambda: intake.taken, what="the one that fits")
    finally:
        runner.stop()
    assert intake.texts() == ["y" * 100]
    (refused,) = events(logged, "answer_refused")
    assert "too long (101 bytes; at most 100)" in refused.getMessage()


def test_a_flood_is_cut_at_the_limit_with_one_ack(
    tmp_path: Path, layout: Layout, ntfy: StandinNtfy, intake: Intake, logged: Collect
) -> None:
    runner = Running(config(tmp_path, ntfy, max_answers_per_minute=5), layout)
    try:
        runner.start()
        subscribed(ntfy)
        for i in range(12):
            publish(ntfy.url, ANSWERS, f"flood {i}")
        wait_until(lambda: len(events(logged, "answer_refused")) == 7, what="seven refusals")
        wait_until(lambda: len(intake.taken) == 5, what="five taken")
    finally:
        runner.stop()
    assert intake.texts() == [f"flood {i}" for i in range(5)]
    assert len(acks(ntfy)) == 1 and "more than 5 answers in a minute" in acks(ntfy)[0]


def test_malformed_lines_and_relays_own_pushes_are_skipped(
    running: Running, layout: Layout, ntfy: StandinNtfy, intake: Intake, logged: Collect
) -> None:
    subscriber = Subscriber(running.cfg, layout, {})
    for junk in (b"{not json\n", b"\xff\xfe\n", b"[]\n", b'{"event": "message"}\n', b"{" * 50000):
        subscriber.handle_line(junk)
    own = {"id": "own1", "time": 5, "event": "message", "message": "hi", "tags": ["relay"]}
    subscriber.handle_line(json.dumps(own).encode())
    time.sleep(0.2)
    assert intake.taken == []
    assert [r.__dict__["RELAY_ENVELOPE"] for r in events(logged, "answer_refused")] == ["own1"]
    assert acks(ntfy) == []  # no ack for relay's own push: that could loop


# ---- the token -------------------------------------------------------------------------------


def test_with_a_token_it_subscribes_and_the_token_is_never_logged(
    tmp_path: Path, layout: Layout, intake: Intake, logged: Collect
) -> None:
    token = "tk_" + "s3cr3t" * 5
    with StandinNtfy(token=token) as ntfy:
        wrong = Running(config(tmp_path, ntfy), layout, {"RELAY_NTFY_TOKEN": "tk_wrong"})
        try:
            wrong.start()
            wait_until(lambda: events(logged, "ntfy_subscribe_error"), what="the refusal")
        finally:
            wrong.stop()
        assert "token" in events(logged, "ntfy_subscribe_error")[0].getMessage()
        runner = Running(config(tmp_path, ntfy), layout, {"RELAY_NTFY_TOKEN": token})
        try:
            runner.start()
            subscribed(ntfy)
            publish(ntfy.url, ANSWERS, "with a token", token=token)
            wait_until(lambda: intake.taken, what="the answer")
        finally:
            runner.stop()
    assert all(token not in r.getMessage() for r in logged.records)
    assert token not in layout.subscriber_state.read_text()
