"""relay.outbox: per-session FIFO of replies and their delivery to input.txt, on a real disk."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from relay import outbox, spool
from relay.layout import Layout

SESSION = "session-1"


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    layout = Layout(tmp_path / "relay")
    layout.ensure_all((SESSION, "session-2"))
    return layout


def entries(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


def test_enqueue_writes_a_pending_reply(layout: Layout) -> None:
    path = outbox.enqueue(layout, SESSION, "q-1", "reply one")

    assert path.parent == layout.pending_dir(SESSION)
    assert path.name == spool.pending_name(1, "q-1")
    assert path.name.startswith("000000000001-")
    assert path.name.endswith("-q-1.txt")  # readable for people looking at the directory
    assert path.read_text(encoding="utf-8") == "reply one"
    assert not layout.input_file(SESSION).exists()  # enqueue never delivers


def test_enqueue_is_idempotent_per_key(layout: Layout) -> None:
    first = outbox.enqueue(layout, SESSION, "q-1", "reply one")
    again = outbox.enqueue(layout, SESSION, "q-1", "a different text")

    assert again == first
    assert outbox.pending(layout, SESSION) == [first.name]
    assert first.read_text(encoding="utf-8") == "reply one"  # not replaced


def test_same_key_in_another_session_is_separate(layout: Layout) -> None:
    a = outbox.enqueue(layout, SESSION, "q-1", "for one")
    b = outbox.enqueue(layout, "session-2", "q-1", "for two")
    assert a != b
    assert outbox.find_pending(layout, "session-2", "q-1") == b


def test_fifo_order_across_several_enqueues(layout: Layout) -> None:
    keys = ["q-zzz", "q-aaa", "j-mmm", "q-000"]  # deliberately not in name order
    for n, key in enumerate(keys):
        outbox.enqueue(layout, SESSION, key, f"reply {n}")

    delivered: list[str] = []
    while (name := outbox.deliver(layout, SESSION)) is not None:
        delivered.append(layout.input_file(SESSION).read_text(encoding="utf-8"))
        layout.input_file(SESSION).unlink()  # the CC side reads and deletes it
        assert name.endswith(".txt")

    assert delivered == [f"reply {n}" for n in range(len(keys))]


def test_order_holds_when_enqueueing_between_deliveries(layout: Layout) -> None:
    outbox.enqueue(layout, SESSION, "k1", "one")
    outbox.enqueue(layout, SESSION, "k2", "two")
    outbox.deliver(layout, SESSION)
    layout.input_file(SESSION).unlink()
    outbox.enqueue(layout, SESSION, "k3", "three")

    texts = []
    while outbox.deliver(layout, SESSION):
        texts.append(layout.input_file(SESSION).read_text(encoding="utf-8"))
        layout.input_file(SESSION).unlink()
    assert texts == ["two", "three"]


def test_deliver_moves_exactly_one_file_with_mode_0640(layout: Layout) -> None:
    outbox.enqueue(layout, SESSION, "q-1", "first")
    outbox.enqueue(layout, SESSION, "q-2", "second")
    old_umask = os.umask(0o077)  # as under systemd: the mode must not depend on it
    try:
        name = outbox.deliver(layout, SESSION)
    finally:
        os.umask(old_umask)

    assert name == spool.pending_name(1, "q-1")
    target = layout.input_file(SESSION)
    assert target.read_text(encoding="utf-8") == "first"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert stat.S_ISREG(target.lstat().st_mode)
    assert outbox.pending(layout, SESSION) == [spool.pending_name(2, "q-2")]
    assert entries(layout.session_dir(SESSION)) == [".pending", "input.txt"]


def test_deliver_never_overwrites_an_existing_input(layout: Layout) -> None:
    outbox.enqueue(layout, SESSION, "q-1", "waiting")
    layout.input_file(SESSION).write_text("not yet read", encoding="utf-8")

    assert outbox.deliver(layout, SESSION) is None

    assert layout.input_file(SESSION).read_text(encoding="utf-8") == "not yet read"
    assert outbox.pending(layout, SESSION) == [spool.pending_name(1, "q-1")]


def test_deliver_does_not_replace_a_symlink(layout: Layout, tmp_path: Path) -> None:
    outbox.enqueue(layout, SESSION, "q-1", "waiting")
    layout.input_file(SESSION).symlink_to(tmp_path / "dangling")

    assert outbox.deliver(layout, SESSION) is None
    assert layout.input_file(SESSION).is_symlink()


def test_deliver_with_nothing_pending(layout: Layout, tmp_path: Path) -> None:
    assert outbox.deliver(layout, SESSION) is None
    assert not layout.input_file(SESSION).exists()
    # A session whose directories were never made is not an error either.
    bare = Layout(tmp_path / "bare")
    assert outbox.deliver(bare, SESSION) is None
    assert outbox.pending(bare, SESSION) == []
    assert outbox.find_pending(bare, SESSION, "q-1") is None


def test_enqueue_creates_the_pending_directory(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "fresh")
    path = outbox.enqueue(layout, "session-9", "q-1", "x")
    assert path.exists()
    assert stat.S_IMODE(layout.pending_dir("session-9").stat().st_mode) == 0o700


def test_find_pending(layout: Layout) -> None:
    one = outbox.enqueue(layout, SESSION, "q-00000000000000000001-a.json", "a")
    two = outbox.enqueue(layout, SESSION, "j-00000000000000000002.txt", "b")

    assert outbox.find_pending(layout, SESSION, "q-00000000000000000001-a.json") == one
    assert outbox.find_pending(layout, SESSION, "j-00000000000000000002.txt") == two
    assert outbox.find_pending(layout, SESSION, "q-00000000000000000003-c.json") is None
    assert outbox.find_pending(layout, "session-2", "j-00000000000000000002.txt") is None

    outbox.deliver(layout, SESSION)
    assert outbox.find_pending(layout, SESSION, "q-00000000000000000001-a.json") is None


def test_pending_ignores_temp_and_foreign_files(layout: Layout) -> None:
    outbox.enqueue(layout, SESSION, "q-1", "real")
    (layout.pending_dir(SESSION) / ".000000000009-q-9.txt.123.tmp").write_text("torn")
    (layout.pending_dir(SESSION) / "notes.md").write_text("stray")
    assert outbox.pending(layout, SESSION) == [spool.pending_name(1, "q-1")]


def test_pending_name_is_bounded_and_distinct() -> None:
    name = spool.pending_name(7, "k" * 400)
    assert name.startswith("000000000007-")
    assert name.endswith(".txt")
    assert len(name.encode()) <= 255
    # Keys that share a long prefix still get different names.
    assert spool.pending_name(7, "k" * 300 + "a") != spool.pending_name(7, "k" * 300 + "b")


def test_enqueue_is_idempotent_for_a_long_key(layout: Layout) -> None:
    # Was a bug (fixed in 742ade1): a key of 228+ characters was never found again, so
    # recovery queued the reply twice. Inbox keys are "q-" + 20 digits + "-" + the queue
    # file name, so a 205-character file name was enough.
    key = "q-00000000000000000001-" + "n" * 210 + ".json"
    first = outbox.enqueue(layout, SESSION, key, "reply")
    assert outbox.find_pending(layout, SESSION, key) == first
    assert outbox.enqueue(layout, SESSION, key, "reply") == first
    assert len(outbox.pending(layout, SESSION)) == 1


def test_long_keys_with_a_common_prefix_are_different_keys(layout: Layout) -> None:
    stem = "q-00000000000000000001-" + "n" * 240
    a = outbox.enqueue(layout, SESSION, stem + "a", "one")
    b = outbox.enqueue(layout, SESSION, stem + "b", "two")
    assert a != b
    assert outbox.find_pending(layout, SESSION, stem + "b") == b


def test_a_key_that_is_a_suffix_of_another_is_a_different_key(layout: Layout) -> None:
    # Was a bug (fixed in 742ade1): matching on the name's ending made key "b" find the
    # reply queued for key "x-b", and enqueue("b") silently dropped its own reply.
    long_key = "q-00000000000000000005-j-00000000000000000001.txt"
    outbox.enqueue(layout, SESSION, long_key, "one")
    assert outbox.find_pending(layout, SESSION, "j-00000000000000000001.txt") is None
    outbox.enqueue(layout, SESSION, "j-00000000000000000001.txt", "two")
    assert len(outbox.pending(layout, SESSION)) == 2


def test_deliver_reports_the_delivered_name(layout: Layout) -> None:
    outbox.enqueue(layout, SESSION, "q-7", "x")
    name = outbox.deliver(layout, SESSION)
    assert name is not None
    assert spool.pending_key_hint(name) == "q-7"
