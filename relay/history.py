"""The conversation history on disk: append-only JSON lines, one record per turn.

Each append is one `write()` of one line followed by fsync, so a crash leaves at worst a
torn last line, which `load` cuts off (docs/architecture.md, promise 3). Summarization writes a
new file and swaps it in with a rename after hard-linking the old one into archive/.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from relay import fsutil
from relay.errors import StateError
from relay.layout import PRIVATE_FILE_MODE
from relay.records import Record, decode_record

log = logging.getLogger(__name__)


def encode(record: Record | dict[str, Any]) -> bytes:
    # Stable key order keeps re-rendered history byte-identical (prompt-cache friendly).
    raw = record if isinstance(record, dict) else record.to_json()
    return (
        json.dumps(raw, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode("utf-8")
        + b"\n"
    )


def load(path: Path) -> list[Record]:
    """Read every record; cut off a torn last record left by a crash.

    A damaged record anywhere but at the end is not something a crash produces, so it is
    reported rather than silently dropped.
    """
    try:
        data = fsutil.read_regular(path, 1 << 40, follow_symlinks=False)
    except FileNotFoundError:
        return []
    except OSError as exc:  # a FIFO, a link, a directory: never waited on or followed
        raise StateError(
            f"{path}: cannot be read safely ({exc.strerror or exc}); restore it from state/archive/"
        ) from None
    records: list[Record] = []
    good_end = 0
    offset = 0
    while offset < len(data):
        newline = data.find(b"\n", offset)
        end = len(data) if newline < 0 else newline + 1
        line = data[offset:end]
        try:
            if newline < 0:
                raise ValueError("no newline")
            record = decode_record(json.loads(line))
        except (ValueError, RecursionError, TypeError, OverflowError) as exc:
            # Only a line without its newline can be a torn append; a whole line that does
            # not decode was written so (or damaged since), wherever it is.
            if end < len(data) or newline >= 0:
                raise StateError(
                    f"{path}: record at byte {offset} is damaged ({exc}); "
                    "restore it from state/archive/ or remove the line"
                ) from exc
            break
        records.append(record)
        good_end = end
        offset = end
    if good_end < len(data):
        log.warning(
            "history: cutting a torn last record (%d bytes) left by a crash", len(data) - good_end
        )
        with open(path, "r+b") as handle:
            handle.truncate(good_end)
            os.fsync(handle.fileno())
    return records


class HistoryFile:
    """Appends records durably; replaces the whole file only on summarization."""

    def __init__(self, path: Path, archive: Path) -> None:
        self.path = path
        self.archive = archive
        self._fd: int | None = None

    def _open(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, PRIVATE_FILE_MODE)
        return self._fd

    def append(self, record: Record) -> None:
        fd = self._open()
        data = encode(record)
        written = os.write(fd, data)
        if written != len(data):
            # A short append (full disk) would tear the record: undo it and fail loudly.
            size = os.fstat(fd).st_size
            os.ftruncate(fd, size - written)
            raise OSError(f"short write to {self.path}: {written} of {len(data)} bytes")
        try:
            os.fsync(fd)
        except OSError as exc:
            # The line is written: raising would have the caller append it again (the same
            # turn twice in the conversation). Its durability is what is in doubt.
            log.error(
                "cannot fsync %s: %s; the record is written but may not be durable", self.path, exc
            )

    def replace(self, records: Iterable[Record]) -> Path:
        """Swap in `records` as the whole history; the old file moves to archive/."""
        self.close()
        new = self.path.with_name(f".{self.path.name}.new")
        fsutil.atomic_write(new, b"".join(encode(r) for r in records), PRIVATE_FILE_MODE)
        fsutil.makedirs(self.archive, 0o700)
        archived = self.archive / f"history-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
        archived = _unique(archived)
        if self.path.exists():
            os.link(self.path, archived)  # the old history stays whole under archive/
            fsutil.fsync_dir(self.archive)
        fsutil.durable_rename(new, self.path)
        return archived

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _unique(path: Path) -> Path:
    candidate, n = path.with_suffix(".jsonl"), 1
    while candidate.exists():
        candidate = path.with_name(f"{path.name}-{n}.jsonl")
        n += 1
    return candidate
