"""Logging: journald with structured fields under systemd, readable stderr otherwise.

Every event carries RELAY_EVENT and, where they apply, RELAY_SESSION, RELAY_ENVELOPE and
RELAY_COST_USD (README: Journal fields), so `journalctl RELAY_SESSION=…` works.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path

JOURNAL_SOCKET = Path("/run/systemd/journal/socket")
RELAY_FIELDS = (
    "RELAY_EVENT",
    "RELAY_SESSION",
    "RELAY_ENVELOPE",
    "RELAY_COST_USD",
    "RELAY_QUESTION",
)


def event(
    logger: logging.Logger,
    name: str,
    message: str,
    *args: object,
    session: str | None = None,
    envelope: str | None = None,
    cost_usd: float | None = None,
    question: str | None = None,
    level: int = logging.INFO,
) -> None:
    """Log `message % args` as journal event `name` with the relay fields that apply."""
    extra: dict[str, str] = {"RELAY_EVENT": name}
    if session is not None:
        extra["RELAY_SESSION"] = session
    if envelope is not None:
        extra["RELAY_ENVELOPE"] = envelope
    if cost_usd is not None:
        extra["RELAY_COST_USD"] = f"{cost_usd:.6f}"
    if question is not None:
        extra["RELAY_QUESTION"] = question
    logger.log(level, message, *args, extra=extra)


def printable(text: str) -> str:
    """`text` as valid UTF-8: a file name that is not UTF-8, or a lone surrogate from JSON,
    would make journald's encoder drop the whole line."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


class PrintableFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        safe = printable(message)
        if safe is not message:
            record.msg, record.args = safe, None
        for name in RELAY_FIELDS:
            value = getattr(record, name, None)
            if isinstance(value, str):
                setattr(record, name, printable(value))
        return True


class FieldsFormatter(logging.Formatter):
    """Plain-text logs that still show the structured fields, for the foreground."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = [
            f"{name.removeprefix('RELAY_').lower()}={getattr(record, name)}"
            for name in RELAY_FIELDS
            if getattr(record, name, None) is not None
        ]
        return f"{text} [{' '.join(fields)}]" if fields else text


def use_journal(environ: Mapping[str, str]) -> bool:
    # JOURNAL_STREAM says our stderr goes to journald; INVOCATION_ID says systemd started
    # us. Without a live socket JournalHandler drops messages silently, so check it too.
    started_by_systemd = "JOURNAL_STREAM" in environ or "INVOCATION_ID" in environ
    return started_by_systemd and JOURNAL_SOCKET.is_socket()


def setup(identifier: str, environ: Mapping[str, str] | None = None, verbose: bool = False) -> None:
    """Route the `relay` loggers to journald (as `identifier`) or to stderr."""
    env = os.environ if environ is None else environ
    root = logging.getLogger("relay")
    root.handlers.clear()
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False
    handler: logging.Handler
    if use_journal(env):
        from systemd.journal import JournalHandler

        handler = JournalHandler(SYSLOG_IDENTIFIER=identifier)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            FieldsFormatter(f"%(asctime)s {identifier}: %(levelname)s %(message)s", "%H:%M:%S")
        )
    handler.addFilter(PrintableFilter())
    root.addHandler(handler)
