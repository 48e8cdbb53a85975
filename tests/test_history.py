from __future__ import annotations

import json
from pathlib import Path

import pytest

from relay import history
from relay.errors import RelayError


def record(seq: int) -> history.Record:
    return {"kind": "turn", "seq": seq, "key": f"k{seq}", "user": "u", "reply": "r"}


def test_append_then_load(tmp_path: Path) -> None:
    h = history.HistoryFile(tmp_path / "h.jsonl", tmp_path / "archive")
    for seq in range(3):
        h.append(record(seq))
    h.close()
    assert history.load(tmp_path / "h.jsonl") == [record(0), record(1), record(2)]


def test_append_only_adds_one_line(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    h = history.HistoryFile(path, tmp_path / "archive")
    h.append(record(0))
    before = path.read_bytes()
    h.append(record(1))
    after = path.read_bytes()
    assert after.startswith(before) and after.count(b"\n") == 2


@pytest.mark.parametrize("torn", [b'{"kind": "tu', b'{"kind": "turn"}', b"\x00\x00"])
def test_torn_last_record_is_cut_and_the_file_repaired(tmp_path: Path, torn: bytes) -> None:
    path = tmp_path / "h.jsonl"
    good = history.encode(record(0)) + history.encode(record(1))
    path.write_bytes(good + torn)
    assert history.load(path) == [record(0), record(1)]
    assert path.read_bytes() == good


def test_damage_in_the_middle_is_reported_not_dropped(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    path.write_bytes(history.encode(record(0)) + b"garbage\n" + history.encode(record(2)))
    with pytest.raises(RelayError, match="damaged"):
        history.load(path)


def test_replace_archives_the_old_history(tmp_path: Path) -> None:
    path, archive = tmp_path / "h.jsonl", tmp_path / "archive"
    h = history.HistoryFile(path, archive)
    h.append(record(0))
    h.append(record(1))
    old = path.read_bytes()
    archived = h.replace([{"kind": "summary", "seq": 0, "text": "s"}, record(1)])
    assert archived.read_bytes() == old
    assert [r["kind"] for r in history.load(path)] == ["summary", "turn"]
    h.append(record(2))  # appending continues on the new file
    assert history.load(path)[-1] == record(2)


def test_encoding_is_stable(tmp_path: Path) -> None:
    a = history.encode({"b": 1, "a": "ü"})
    assert a == history.encode(json.loads(a))
    assert a == '{"a":"ü","b":1}\n'.encode()
