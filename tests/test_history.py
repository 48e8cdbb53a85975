"""relay.history: the append-only history file, its crash repair, and its on-disk format."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from relay import history
from relay.conversation import ConversationState, derive_state
from relay.errors import StateError
from relay.records import OPERATOR, Carried, Summary, Turn, session


def record(seq: int) -> Turn:
    return Turn(
        seq=seq,
        key=f"q-{seq:020d}-m{seq}.json",
        sender=session("session-1"),
        user=f"[from session-1]\nmessage {seq}",
        reply="r",
        target="session-1",
        needs_jc=False,
        ts="2026-05-02T00:00:00Z",
        cost_usd=0.01,
    )


def test_append_then_load(tmp_path: Path) -> None:
    h = history.HistoryFile(tmp_path / "h.jsonl", tmp_path / "archive")
    for seq in range(3):
        h.append(record(seq))
    h.close()
    assert history.load(tmp_path / "h.jsonl") == [record(0), record(1), record(2)]


def test_a_missing_file_is_an_empty_history(tmp_path: Path) -> None:
    assert history.load(tmp_path / "h.jsonl") == []


def test_append_only_adds_one_line(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    h = history.HistoryFile(path, tmp_path / "archive")
    h.append(record(0))
    before = path.read_bytes()
    h.append(record(1))
    after = path.read_bytes()
    assert after.startswith(before) and after.count(b"\n") == 2
    assert after[len(before) :] == history.encode(record(1))


@pytest.mark.parametrize(
    "torn",
    [
        b'{"kind": "tu',
        b'{"kind": "turn"}',  # parses, but without its newline it was never finished
        history.encode(record(2)).rstrip(b"\n"),  # whole but for the newline
        b"\x00\x00",
    ],
)
def test_torn_last_record_is_cut_and_the_file_repaired(tmp_path: Path, torn: bytes) -> None:
    path = tmp_path / "h.jsonl"
    good = history.encode(record(0)) + history.encode(record(1))
    path.write_bytes(good + torn)
    assert history.load(path) == [record(0), record(1)]
    assert path.read_bytes() == good


@pytest.mark.parametrize(
    "damaged",
    [
        b"garbage",
        b'{"kind":"turn","seq":1}',  # required fields missing
        b'{"kind":"turn","seq":"1","key":"k","session":"s","user":"u","reply":"r"}',
        b'{"kind":"summary","seq":0}',  # no text
        b'{"kind":"note","seq":1}',  # not a kind relay writes
        b"[1, 2]",
        b"[" * 100_000 + b"]" * 100_000,  # nested too deep to parse
    ],
)
def test_damage_in_the_middle_is_reported_not_dropped(tmp_path: Path, damaged: bytes) -> None:
    path = tmp_path / "h.jsonl"
    contents = history.encode(record(0)) + damaged + b"\n" + history.encode(record(2))
    path.write_bytes(contents)
    offset = len(history.encode(record(0)))
    with pytest.raises(StateError, match=f"record at byte {offset} is damaged") as caught:
        history.load(path)
    assert caught.value.exit_code == 3
    assert "state/archive/" in caught.value.message  # it says what to do
    assert path.read_bytes() == contents  # nothing is cut


def test_replace_archives_the_old_history(tmp_path: Path) -> None:
    path, archive = tmp_path / "h.jsonl", tmp_path / "archive"
    h = history.HistoryFile(path, archive)
    h.append(record(0))
    h.append(record(1))
    old = path.read_bytes()
    summary = Summary(0, "s", "2026-05-02T00:00:00Z", 1, 0.02, Carried(last_session="session-1"))
    archived = h.replace([summary, record(1)])
    assert archived.parent == archive
    assert archived.read_bytes() == old
    assert history.load(path) == [summary, record(1)]
    h.append(record(2))  # appending continues on the new file
    assert history.load(path) == [summary, record(1), record(2)]
    assert archived.read_bytes() == old  # the archived copy is not the file appended to


def test_replace_twice_in_a_second_keeps_both_archives(tmp_path: Path) -> None:
    path, archive = tmp_path / "h.jsonl", tmp_path / "archive"
    h = history.HistoryFile(path, archive)
    h.append(record(0))
    first = h.replace([record(1)])
    second = h.replace([record(2)])
    assert first != second
    assert history.load(first) == [record(0)]
    assert history.load(second) == [record(1)]
    assert history.load(path) == [record(2)]


def test_encoding_is_stable() -> None:
    a = history.encode({"b": 1, "a": "ü"})
    assert a == history.encode(json.loads(a))
    assert a == '{"a":"ü","b":1}\n'.encode()
    assert history.encode(record(1)) == history.encode(record(1).to_json())


# Lines exactly as relay wrote them before records were typed: the on-disk format is the
# same, so such a file loads as it is and re-encodes to the same bytes (prompt caching
# relies on the rendered history staying byte-identical across a restart or an upgrade).
OLD_FORMAT = (
    b'{"cost_usd":0.0123,"covers_turns":2,"kind":"summary","seq":2,'
    b'"state":{"last_session":"session-1","needs_jc_session":null,'
    b'"needs_jc_text":null,"paused":false},"text":"Session 1 set up the schema.",'
    b'"ts":"2026-05-01T23:00:00Z"}\n'
    b'{"cost_usd":0.1,"key":"q-00000000000000000003-a1.json","kind":"turn","needs_jc":false,'
    b'"reply":"Run the tests.","seq":3,"session":"session-1","target":"session-1",'
    b'"ts":"2026-05-02T00:00:00Z","user":"[from session-1]\\nSchema done \xc3\xbcberall."}\n'
    b'{"cost_usd":0.2,"key":"q-00000000000000000004-b2.json","kind":"turn","needs_jc":true,'
    b'"reply":"[NEEDS-JC] Which DB?","seq":4,"session":"session-2","target":null,'
    b'"ts":"2026-05-02T00:01:00Z","user":"[from session-2]\\nWhich DB?"}\n'
    b'{"cost_usd":0.05,"key":"j-00000000000000000005-c3.txt","kind":"turn","needs_jc":false,'
    b'"reply":"Use Postgres.","seq":5,"session":"operator","target":"session-2",'
    b'"ts":"2026-05-02T00:02:00Z","user":"[from operator]\\nPostgres"}\n'
)


def test_a_history_written_by_the_old_code_loads_and_re_encodes_byte_identically(
    tmp_path: Path,
) -> None:
    path = tmp_path / "h.jsonl"
    path.write_bytes(OLD_FORMAT)

    records = history.load(path)

    assert records == [
        Summary(
            seq=2,
            text="Session 1 set up the schema.",
            ts="2026-05-01T23:00:00Z",
            covers_turns=2,
            cost_usd=0.0123,
            state=Carried(last_session="session-1"),
        ),
        Turn(
            seq=3,
            key="q-00000000000000000003-a1.json",
            sender=session("session-1"),
            user="[from session-1]\nSchema done überall.",
            reply="Run the tests.",
            target="session-1",
            needs_jc=False,
            ts="2026-05-02T00:00:00Z",
            cost_usd=0.1,
        ),
        Turn(
            seq=4,
            key="q-00000000000000000004-b2.json",
            sender=session("session-2"),
            user="[from session-2]\nWhich DB?",
            reply="[NEEDS-JC] Which DB?",
            target=None,
            needs_jc=True,
            ts="2026-05-02T00:01:00Z",
            cost_usd=0.2,
        ),
        Turn(
            seq=5,
            key="j-00000000000000000005-c3.txt",
            sender=OPERATOR,
            user="[from operator]\nPostgres",
            reply="Use Postgres.",
            target="session-2",
            needs_jc=False,
            ts="2026-05-02T00:02:00Z",
            cost_usd=0.05,
        ),
    ]
    last = records[3]
    assert isinstance(last, Turn) and last.sender is OPERATOR
    assert b"".join(history.encode(r) for r in records) == OLD_FORMAT
    assert path.read_bytes() == OLD_FORMAT  # loading left it alone
    assert derive_state(records) == ConversationState(
        paused=False,
        needs_jc_session=None,
        needs_jc_text="[NEEDS-JC] Which DB?",
        last_session="session-2",
        turns=3,
        next_seq=6,
    )


def test_appending_to_an_old_history_keeps_it_one_format(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    path.write_bytes(OLD_FORMAT)
    h = history.HistoryFile(path, tmp_path / "archive")
    h.append(record(6))
    h.close()
    assert path.read_bytes() == OLD_FORMAT + history.encode(record(6))
    assert history.load(path)[-1] == record(6)


@pytest.mark.parametrize(
    "last",
    [b'{"kind":"note","seq":1}\n', b'{"kind":"turn","seq":"1"}\n'],
)
def test_a_whole_last_line_that_does_not_decode_is_damage_not_a_torn_append(
    tmp_path: Path, last: bytes
) -> None:
    path = tmp_path / "h.jsonl"
    data = b'{"kind":"summary","seq":0,"text":"s"}\n' + last
    path.write_bytes(data)
    with pytest.raises(StateError):
        history.load(path)
    assert path.read_bytes() == data


def test_a_history_that_is_not_a_regular_file_is_never_waited_on(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    os.mkfifo(path)
    with pytest.raises(StateError, match="cannot be read safely"):
        history.load(path)
