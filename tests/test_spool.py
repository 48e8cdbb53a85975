"""The spool's names and moves, and intake through them, for files no client should
be able to use to stop relay: odd names, odd kinds of file, copies that keep everything."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
from pathlib import Path

import pytest

from relay import intake
from relay.config import Config
from relay.layout import Layout
from relay.spool import (
    NAME_MAX,
    REASON_SUFFIX,
    Serials,
    Spool,
    envelope_key,
    operator_key,
    parse_item,
    pending_name,
    rejected_name,
)


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Config, Layout]:
    config = Config(sessions=("session-1",), data_dir=tmp_path / "data", max_envelope_bytes=4096)
    layout = Layout(config.data_dir)
    layout.ensure_intake()
    return config, layout


def envelope(content: str = "hi", **extra: str) -> bytes:
    return json.dumps({"session_id": "session-1", "content": content, **extra}).encode()


def drop(layout: Layout, name: bytes, data: bytes, mtime_ns: int | None = None) -> None:
    path = os.path.join(os.fsencode(layout.queue), name)
    with open(path, "wb") as handle:
        handle.write(data)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))


def rejected(layout: Layout) -> dict[bytes, bytes]:
    """Rejected files (by raw name) and their reasons."""
    names = os.listdir(os.fsencode(layout.rejected))
    files = {n for n in names if not n.endswith(b".reason")}
    assert {n + b".reason" for n in files} <= set(names), "every refusal has its reason"
    return {n: (layout.rejected / os.fsdecode(n + b".reason")).read_bytes() for n in files}


def contents(layout: Layout) -> list[str]:
    spool = Spool(layout)
    return [json.loads(spool.read(key))["content"] for key in spool.items()]


# ---- names -------------------------------------------------------------------------------


def test_item_names_parse_back_and_sort_operator_first() -> None:
    envelope_item = parse_item(envelope_key(5, 7))
    operator_item = parse_item(operator_key(9))
    assert envelope_item is not None and envelope_item.serial == 7 and envelope_item.mtime == 5
    assert operator_item is not None and operator_item.operator
    assert sorted([envelope_key(1, 1), operator_key(2)])[0] == operator_key(2)
    # Names an older release wrote are still read.
    legacy = parse_item(f"q-{3:020d}-report.json")
    assert legacy is not None and legacy.legacy_name == "report.json" and legacy.serial is None
    assert parse_item("j-123.txt") is not None and parse_item("junk") is None


def test_serials_are_never_handed_out_twice(tmp_path: Path) -> None:
    path = tmp_path / "serial"
    first = Serials(path)
    taken = [first.take() for _ in range(5)]
    second = Serials(path)  # another process, or the next run
    taken += [second.take() for _ in range(5)]
    path.write_text("garbage")  # a damaged counter falls back on the clock
    taken += [Serials(path).take()]
    assert len(set(taken)) == len(taken)


@pytest.mark.parametrize("length", [1, 100, 247, 248, 249, 250, 254, 255])
def test_rejected_names_always_leave_room_for_the_reason(length: int) -> None:
    name = ("é" * length).encode()[:length]
    for attempt in (0, 1, 12):
        derived = rejected_name(name, attempt)
        assert len(derived) + len(REASON_SUFFIX) <= NAME_MAX
    assert rejected_name(name, 0) != rejected_name(name, 1)


def test_long_names_that_share_a_prefix_stay_distinct() -> None:
    a, b = b"x" * 250 + b".json", b"x" * 250 + b".jsom"
    assert rejected_name(a, 0) != rejected_name(b, 0)
    assert pending_name(1, "k" * 300 + "a") != pending_name(1, "k" * 300 + "b")


# ---- intake over odd names ---------------------------------------------------------------


def test_a_name_that_is_not_utf8_is_accepted_and_answerable(setup: tuple[Config, Layout]) -> None:
    config, layout = setup
    drop(layout, b"bad-\xff\xfe.json", envelope("from a binary name"))
    drop(layout, b"worse-\xff.json", b"{broken")
    os.utime(os.path.join(os.fsencode(layout.queue), b"worse-\xff.json"), (1, 1))
    result = intake.drain_queue(config, layout)
    assert len(result.accepted) == 1 and contents(layout) == ["from a binary name"]
    assert list(rejected(layout)) == [b"worse-\xff.json"]
    assert Spool(layout).client_name(result.accepted[0]) == os.fsdecode(b"bad-\xff\xfe.json")


@pytest.mark.parametrize("length", [200, 240, 250, 255])
def test_names_of_any_legal_length_are_accepted_or_refused_with_a_reason(
    setup: tuple[Config, Layout], length: int
) -> None:
    config, layout = setup
    good = ("é" * 200).encode()[: length - 5] + b".json"
    bad = ("ü" * 200).encode()[: length - 5] + b".json"
    drop(layout, good, envelope("long good"))
    drop(layout, bad, b"not json", mtime_ns=1)
    result = intake.drain_queue(config, layout)
    assert contents(layout) == ["long good"] and len(result.rejected) == 1
    ((name, reason),) = rejected(layout).items()
    assert (layout.rejected / os.fsdecode(name)).read_bytes() == b"not json"
    if name != bad:  # too long to take ".reason": the reason names the file
        assert len(bad) + len(REASON_SUFFIX) > NAME_MAX
        assert b"the file was named" in reason


def test_two_envelopes_with_the_same_name_and_mtime_are_both_kept(
    setup: tuple[Config, Layout],
) -> None:
    config, layout = setup
    drop(layout, b"same.json", envelope("first"), mtime_ns=10**18)
    intake.drain_queue(config, layout)
    drop(layout, b"same.json", envelope("second"), mtime_ns=10**18)
    intake.drain_queue(config, layout)
    assert contents(layout) == ["first", "second"]


def test_long_names_sharing_a_prefix_are_both_kept(setup: tuple[Config, Layout]) -> None:
    config, layout = setup
    drop(layout, b"p" * 240 + b"-a.json", envelope("a"), mtime_ns=5)
    drop(layout, b"p" * 240 + b"-b.json", envelope("b"), mtime_ns=5)
    assert len(intake.drain_queue(config, layout).accepted) == 2
    assert sorted(contents(layout)) == ["a", "b"]


def test_a_copy_that_keeps_name_mtime_and_id_is_refused_as_a_duplicate(
    setup: tuple[Config, Layout], tmp_path: Path
) -> None:
    config, layout = setup
    original = tmp_path / "task.json"
    original.write_bytes(envelope("once", id="task-1"))
    os.utime(original, ns=(10**18, 10**18))
    shutil.copy2(original, layout.queue / "task.json")  # cp -p
    assert len(intake.drain_queue(config, layout).accepted) == 1
    shutil.copy2(original, layout.queue / "task.json")  # rsync -t, later
    result = intake.drain_queue(config, layout)
    assert result.accepted == [] and result.rejected == ["task.json"]
    assert b"duplicate id" in rejected(layout)[b"task.json"]


# ---- intake over odd files ---------------------------------------------------------------


def test_a_hard_link_to_an_outside_file_is_refused_and_left_unchanged(
    setup: tuple[Config, Layout], tmp_path: Path
) -> None:
    config, layout = setup
    outside = tmp_path / "outside.json"
    outside.write_bytes(envelope("not yours"))
    os.chmod(outside, 0o604)
    os.link(outside, layout.queue / "link.json")
    result = intake.drain_queue(config, layout)
    assert result.accepted == [] and b"hard links" in rejected(layout)[b"link.json"]
    assert stat.S_IMODE(outside.stat().st_mode) == 0o604
    assert outside.read_bytes() == envelope("not yours")


def test_directories_fifos_and_sockets_are_refused(setup: tuple[Config, Layout]) -> None:
    config, layout = setup
    (layout.queue / "dir.json").mkdir()
    (layout.queue / "dir.json" / "inner").write_text("x")
    os.mkfifo(layout.queue / "fifo.json")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(layout.queue / "sock.json"))
    try:
        drop(layout, b"ok.json", envelope("fine"))
        result = intake.drain_queue(config, layout)
    finally:
        sock.close()
    assert contents(layout) == ["fine"]
    reasons = rejected(layout)
    assert set(reasons) == {b"dir.json", b"fifo.json", b"sock.json"}
    assert b"a directory" in reasons[b"dir.json"] and b"FIFO" in reasons[b"fifo.json"]
    assert sorted(result.rejected) == ["dir.json", "fifo.json", "sock.json"]


@pytest.mark.parametrize(
    ("label", "data"),
    [
        ("surrogate in content", b'{"session_id": "session-1", "content": "\\ud800"}'),
        ("surrogate in id", b'{"session_id": "session-1", "content": "x", "id": "\\udfff"}'),
        ("deep nesting", b"[" * 100_000 + b"]" * 100_000),
        ("deep in content", b'{"session_id": "session-1", "content": ' + b"[" * 50_000 + b"}"),
        ("huge integer", b'{"session_id": "session-1", "content": "x", "n": ' + b"9" * 5000 + b"}"),
    ],
)
def test_content_no_parser_survives_is_refused_with_a_reason(
    setup: tuple[Config, Layout], label: str, data: bytes
) -> None:
    config, layout = setup
    config = Config(sessions=config.sessions, data_dir=config.data_dir, max_envelope_bytes=10**6)
    drop(layout, b"odd.json", data, mtime_ns=1)
    drop(layout, b"ok.json", envelope("fine"))
    result = intake.drain_queue(config, layout)
    assert result.rejected == ["odd.json"], label
    assert contents(layout) == ["fine"]
    assert rejected(layout)[b"odd.json"].endswith(b"\n")


def test_a_slow_writer_does_not_hold_up_the_others(setup: tuple[Config, Layout]) -> None:
    config, layout = setup
    with open(layout.queue / "slow.json", "wb") as slow:
        slow.write(envelope("slow")[:10])
        slow.flush()
        drop(layout, b"quick.json", envelope("quick"))
        result = intake.drain_queue(config, layout, wait=False)
        # The quick one is in; the slow one waits, claimed, for its writer to finish.
        assert contents(layout) == ["quick"] and result.retry_in is not None
        slow.write(envelope("slow")[10:])
    result = intake.drain_queue(config, layout)  # a later run (or the same, waiting) takes it
    assert sorted(contents(layout)) == ["quick", "slow"] and result.rejected == []


def test_a_crash_between_keeping_the_name_and_claiming_leaves_nothing_behind(
    setup: tuple[Config, Layout],
) -> None:
    config, layout = setup
    (layout.inbox / f".n-{42:020d}").write_bytes(b"1\nlost.json")  # the claim never happened
    drop(layout, b"real.json", envelope("real"))
    intake.drain_queue(config, layout)
    assert contents(layout) == ["real"]
    assert not (layout.inbox / f".n-{42:020d}").exists()


def test_a_claim_left_by_a_crash_keeps_its_client_name(setup: tuple[Config, Layout]) -> None:
    config, layout = setup
    spool = Spool(layout)
    drop(layout, b"half.json", b"{broken", mtime_ns=7)
    claim = spool.claim("half.json", 7)  # then the run was killed
    assert claim is not None
    intake.drain_queue(config, layout)
    assert list(rejected(layout)) == [b"half.json"]


@pytest.mark.parametrize("crash_at", ["_link_new", "_move_rejected"])
def test_a_crash_in_the_middle_of_a_rejection_never_leaves_a_reason_alone(
    setup: tuple[Config, Layout], monkeypatch: pytest.MonkeyPatch, crash_at: str
) -> None:
    import relay.spool

    config, layout = setup
    real = getattr(relay.spool, crash_at)

    class Killed(BaseException):
        pass

    def killed(*args: object) -> object:
        if crash_at == "_link_new":
            real(*args)  # the reason is in place, then the process dies
        raise Killed()

    monkeypatch.setattr(relay.spool, crash_at, killed)
    drop(layout, b"bad.json", b"{broken", mtime_ns=3)
    with pytest.raises(Killed):
        intake.drain_queue(config, layout)
    monkeypatch.setattr(relay.spool, crash_at, real)
    result = intake.drain_queue(config, layout)  # the next run finishes it
    assert result.rejected == ["bad.json"]
    assert rejected(layout) == {b"bad.json": rejected(layout)[b"bad.json"]}
    assert (layout.rejected / "bad.json").read_bytes() == b"{broken"
    assert [n for n in os.listdir(layout.inbox) if not n.startswith(".lock")] == []


def test_an_admitted_item_is_relays_own_copy_not_the_clients_inode(
    setup: tuple[Config, Layout],
) -> None:
    config, layout = setup
    drop(layout, b"held.json", envelope("held open"))
    fd = os.open(layout.queue / "held.json", os.O_RDWR)
    try:
        (key,) = intake.drain_queue(config, layout).accepted
        os.fchmod(fd, 0)  # the client still holds the file it wrote
        os.write(fd, b"and changes it afterwards")
    finally:
        os.close(fd)
    item = layout.inbox / key
    assert stat.S_IMODE(item.stat().st_mode) == 0o600
    assert json.loads(Spool(layout).read(key))["content"] == "held open"


def test_a_name_refused_many_times_still_gets_a_place(setup: tuple[Config, Layout]) -> None:
    config, layout = setup
    for n in range(12):
        drop(layout, b"same.json", b"{broken", mtime_ns=n + 1)
        intake.drain_queue(config, layout)
    reasons = rejected(layout)
    assert len(reasons) == 12 and b"same.json" in reasons and b"same.json.9" in reasons
    assert all(n.startswith(b"same.json") for n in reasons)


def test_a_negative_mtime_still_makes_an_item(setup: tuple[Config, Layout]) -> None:
    config, layout = setup
    drop(layout, b"old.json", envelope("from before 1970"), mtime_ns=-(10**18))
    (key,) = intake.drain_queue(config, layout).accepted
    assert parse_item(key) is not None and contents(layout) == ["from before 1970"]


def test_a_directory_relay_cannot_move_is_refused_once_and_hidden(
    setup: tuple[Config, Layout], monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    config, layout = setup
    (layout.queue / "dir.json").mkdir()
    real_rename = os.rename

    def no_write_permission(src: object, dst: object) -> None:
        if str(src).endswith("/queue/dir.json") and "/inbox/" in str(dst):
            raise PermissionError(errno.EACCES, "Permission denied")
        real_rename(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "rename", no_write_permission)
    drop(layout, b"ok.json", envelope("fine"))
    for _ in range(3):
        intake.drain_queue(config, layout)
    assert contents(layout) == ["fine"]
    reasons = os.listdir(layout.rejected)
    assert reasons == ["dir.json.reason"]
    hidden = [n for n in os.listdir(layout.queue) if n.startswith(".refused-")]
    assert len(hidden) == 1 and hidden[0] in (layout.rejected / "dir.json.reason").read_text()
