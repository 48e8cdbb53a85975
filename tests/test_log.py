"""relay.log: journal fields on every event, readable stderr, and the journal/stderr choice."""

from __future__ import annotations

import logging
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from relay import log as relay_log
from relay.log import RELAY_FIELDS, FieldsFormatter, event, setup, use_journal
from tests.capture import Collect


@pytest.fixture
def relay_logger() -> Iterator[logging.Logger]:
    """The `relay` logger, restored afterwards: setup() reconfigures it."""
    logger = logging.getLogger("relay")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield logger
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])
    logger.propagate = saved[2]


@pytest.fixture
def collected(relay_logger: logging.Logger) -> Iterator[tuple[logging.Logger, Collect]]:
    logger = logging.getLogger("relay.test")
    handler = Collect()
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield logger, handler
    logger.removeHandler(handler)
    logger.setLevel(logging.NOTSET)


def test_event_puts_the_relay_fields_on_the_record(
    collected: tuple[logging.Logger, Collect],
) -> None:
    logger, handler = collected

    event(
        logger,
        "dispatched",
        "dispatched reply %s to %s",
        "q-1",
        "session-1",
        session="session-1",
        envelope="q-1",
        cost_usd=0.0123456789,
        question="Q3-abc123",
        level=logging.WARNING,
    )

    (record,) = handler.records
    assert record.getMessage() == "dispatched reply q-1 to session-1"
    assert record.levelno == logging.WARNING
    fields: dict[str, Any] = {name: getattr(record, name) for name in RELAY_FIELDS}
    assert fields == {
        "RELAY_EVENT": "dispatched",
        "RELAY_SESSION": "session-1",
        "RELAY_ENVELOPE": "q-1",
        "RELAY_COST_USD": "0.012346",
        "RELAY_QUESTION": "Q3-abc123",
    }


def test_event_leaves_out_fields_that_do_not_apply(
    collected: tuple[logging.Logger, Collect],
) -> None:
    logger, handler = collected

    event(logger, "summarized", "history summarized")

    (record,) = handler.records
    assert record.levelno == logging.INFO
    assert getattr(record, "RELAY_EVENT") == "summarized"  # noqa: B009
    for name in ("RELAY_SESSION", "RELAY_ENVELOPE", "RELAY_COST_USD"):
        assert not hasattr(record, name)


def test_zero_cost_is_still_recorded(collected: tuple[logging.Logger, Collect]) -> None:
    logger, handler = collected
    event(logger, "turn", "free", cost_usd=0.0)
    assert getattr(handler.records[0], "RELAY_COST_USD") == "0.000000"  # noqa: B009


def make_record(**fields: str) -> logging.LogRecord:
    record = logging.LogRecord("relay.x", logging.INFO, __file__, 1, "hello %s", ("you",), None)
    for name, value in fields.items():
        setattr(record, name, value)
    return record


def test_fields_formatter_shows_the_fields() -> None:
    formatter = FieldsFormatter("%(levelname)s %(message)s")
    record = make_record(
        RELAY_EVENT="accepted", RELAY_SESSION="session-2", RELAY_ENVELOPE="q-7", RELAY_COST_USD="1"
    )
    assert formatter.format(record) == (
        "INFO hello you [event=accepted session=session-2 envelope=q-7 cost_usd=1]"
    )


def test_fields_formatter_without_fields_is_plain() -> None:
    assert FieldsFormatter("%(message)s").format(make_record()) == "hello you"
    assert FieldsFormatter("%(message)s").format(make_record(RELAY_EVENT="x")) == (
        "hello you [event=x]"
    )


@pytest.mark.parametrize("env", [{}, {"HOME": "/root", "TERM": "xterm"}])
def test_use_journal_is_false_outside_systemd(env: dict[str, str]) -> None:
    assert use_journal(env) is False


@pytest.fixture
def journal_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A stand-in for /run/systemd/journal/socket (a real datagram socket)."""
    path = tmp_path / "journal-socket"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    monkeypatch.setattr(relay_log, "JOURNAL_SOCKET", path)
    yield path
    sock.close()


def test_use_journal_needs_systemd_and_a_live_socket(
    journal_socket: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert use_journal({"INVOCATION_ID": "abc"}) is True
    assert use_journal({"JOURNAL_STREAM": "8:123"}) is True
    assert use_journal({}) is False
    monkeypatch.setattr(relay_log, "JOURNAL_SOCKET", journal_socket.with_name("absent"))
    assert use_journal({"INVOCATION_ID": "abc"}) is False


def test_setup_without_journald_logs_to_stderr(
    relay_logger: logging.Logger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(relay_log, "JOURNAL_SOCKET", tmp_path / "no-journald")

    setup("relay-test", {"INVOCATION_ID": "abc", "JOURNAL_STREAM": "8:1"})

    (handler,) = relay_logger.handlers
    assert type(handler) is logging.StreamHandler
    assert handler.stream is sys.stderr
    assert isinstance(handler.formatter, FieldsFormatter)
    assert relay_logger.level == logging.INFO
    assert relay_logger.propagate is False


def test_setup_output_names_the_unit_and_shows_fields(
    relay_logger: logging.Logger,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(relay_log, "JOURNAL_SOCKET", tmp_path / "no-journald")
    setup("relay-intake", {}, verbose=True)

    assert relay_logger.level == logging.DEBUG
    event(logging.getLogger("relay.intake"), "rejected", "rejected %s", "f.json", envelope="f")

    line = capsys.readouterr().err.strip()
    assert line.endswith("relay-intake: INFO rejected f.json [event=rejected envelope=f]")


def test_setup_replaces_earlier_handlers(
    relay_logger: logging.Logger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(relay_log, "JOURNAL_SOCKET", tmp_path / "no-journald")
    setup("a", {})
    setup("b", {})
    assert len(relay_logger.handlers) == 1


def test_setup_under_systemd_with_journald_uses_the_journal_handler(
    relay_logger: logging.Logger, journal_socket: Path
) -> None:
    journal = pytest.importorskip("systemd.journal")

    setup("relay-conversation", {"INVOCATION_ID": "abc"})

    (handler,) = relay_logger.handlers
    assert isinstance(handler, journal.JournalHandler)
    assert handler._extra["SYSLOG_IDENTIFIER"] == "relay-conversation"


def test_relay_fields_reach_the_journal_handler_as_upper_case_keys(
    collected: tuple[logging.Logger, Collect],
) -> None:
    journal = pytest.importorskip("systemd.journal")
    sent: list[tuple[str, dict[str, Any]]] = []

    # Named like systemd.journal.send's first parameter: the handler passes every record
    # attribute as a keyword, including the formatted `message`.
    def fake_send(MESSAGE: str, **fields: Any) -> None:
        sent.append((MESSAGE, fields))

    try:
        handler = journal.JournalHandler(
            sender_function=fake_send, SYSLOG_IDENTIFIER="relay-conversation"
        )
    except TypeError:
        pytest.skip("this python-systemd's JournalHandler has no sender_function")
    logger, _ = collected
    logger.addHandler(handler)
    try:
        event(
            logger,
            "needs_jc",
            "paused for %s",
            "session-1",
            session="session-1",
            envelope="q-9",
            cost_usd=0.5,
        )
    finally:
        logger.removeHandler(handler)

    ((message, fields),) = sent
    assert message == "paused for session-1"
    assert fields["SYSLOG_IDENTIFIER"] == "relay-conversation"
    assert fields["RELAY_EVENT"] == "needs_jc"
    assert fields["RELAY_SESSION"] == "session-1"
    assert fields["RELAY_ENVELOPE"] == "q-9"
    assert fields["RELAY_COST_USD"] == "0.500000"


def test_names_that_are_not_utf8_are_logged_escaped_not_dropped() -> None:
    import io

    from relay.log import PrintableFilter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(PrintableFilter())
    logger = logging.getLogger("relay.test.printable")
    logger.addHandler(handler)
    try:
        event(logger, "rejected", "rejected %s", "bad-\udcff.json", envelope="\ud800", level=50)
    finally:
        logger.removeHandler(handler)
    line = stream.getvalue()
    line.encode("utf-8")  # what journald's encoder would do
    assert "bad-\\udcff.json" in line
