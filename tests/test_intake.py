"""Intake: what the path-activated handlers do, on a real temp directory."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from relay import intake
from relay.config import Config
from relay.layout import Layout
from relay.spool import LEGACY_CLAIM, LEGACY_JC_CLAIM, OPERATOR, Spool


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Config, Layout]:
    config = Config(
        sessions=("session-1", "session-2"), data_dir=tmp_path / "data", max_envelope_bytes=1024
    )
    layout = Layout(config.data_dir)
    layout.ensure_intake()
    return config, layout


def envelope(session: str = "session-1", content: str = "hi", **extra: str) -> bytes:
    return json.dumps({"session_id": session, "content": content, **extra}).encode()


def inbox(layout: Layout) -> list[str]:
    """The inbox items (dot-files beside them are the spool's own)."""
    return Spool(layout).items()


def names(layout: Layout, keys: list[str]) -> list[str]:
    """The client file names the inbox items came from."""
    return [Spool(layout).client_name(key) for key in keys]


def test_accepts_oldest_first_and_leaves_the_queue_empty(setup: tuple[Config, Layout]) -> None:
    config, layout = setup
    for name, mtime in (("b.json", 300), ("a.json", 200), ("c.json", 100)):
        (layout.queue / name).write_bytes(envelope(content=name))
        os.utime(layout.queue / name, ns=(mtime, mtime))
    result = intake.drain_queue(config, layout)
    assert names(layout, result.accepted) == ["c.json", "a.json", "b.json"]
    assert inbox(layout) == sorted(result.accepted)
    assert [p.name for p in layout.queue.iterdir()] == [".rejected"]


def test_dot_files_are_left_alone(setup: tuple[Config, Layout]) -> None:
    config, layout = setup
    (layout.queue / ".staging.tmp").write_bytes(envelope())
    assert intake.drain_queue(config, layout).accepted == []
    assert (layout.queue / ".staging.tmp").exists()


def test_symlink_is_rejected_without_being_followed(
    setup: tuple[Config, Layout], tmp_path: Path
) -> None:
    config, layout = setup
    secret = tmp_path / "secret"
    secret.write_bytes(envelope(content="must not be read"))
    os.symlink(secret, layout.queue / "link.json")
    result = intake.drain_queue(config, layout)
    assert result.rejected == ["link.json"]
    moved = layout.rejected / "link.json"
    assert moved.is_symlink() and os.readlink(moved) == str(secret)
    assert "symlink" in (layout.rejected / "link.json.reason").read_text()
    assert inbox(layout) == []


def test_directory_and_fifo_are_rejected(setup: tuple[Config, Layout]) -> None:
    config, layout = setup
    (layout.queue / "adir").mkdir()
    os.mkfifo(layout.queue / "fifo.json")
    result = intake.drain_queue(config, layout)
    assert sorted(result.rejected) == ["adir", "fifo.json"]
    assert "not a regular file" in (layout.rejected / "fifo.json.reason").read_text()


def test_oversized_envelope_is_rejected_byte_for_byte(setup: tuple[Config, Layout]) -> None:
    config, layout = setup
    data = envelope(content="x" * 2000)
    (layout.queue / "big.json").write_bytes(data)
    intake.drain_queue(config, layout)
    assert (layout.rejected / "big.json").read_bytes() == data
    assert "too large" in (layout.rejected / "big.json.reason").read_text()
    assert oct((layout.rejected / "big.json").stat().st_mode & 0o777) == "0o640"


def test_unknown_session_creates_no_directory(setup: tuple[Config, Layout]) -> None:
    config, layout = setup
    (layout.queue / "x.json").write_bytes(envelope(session="../evil"))
    intake.drain_queue(config, layout)
    assert not (layout.root / "evil").exists()
    assert "unknown session_id" in (layout.rejected / "x.json.reason").read_text()


def test_same_name_rejected_twice_keeps_both(setup: tuple[Config, Layout]) -> None:
    config, layout = setup
    for data in (b"one", b"two"):
        (layout.queue / "dup.json").write_bytes(data)
        intake.drain_queue(config, layout)
    assert (layout.rejected / "dup.json").read_bytes() == b"one"
    assert (layout.rejected / "dup.json.1").read_bytes() == b"two"


def test_duplicate_id_is_rejected_with_a_reason(setup: tuple[Config, Layout]) -> None:
    config, layout = setup
    (layout.queue / "one.json").write_bytes(envelope(id="task-7"))
    intake.drain_queue(config, layout)
    (layout.queue / "two.json").write_bytes(envelope(id="task-7"))
    (layout.queue / "other.json").write_bytes(envelope(session="session-2", id="task-7"))
    result = intake.drain_queue(config, layout)
    assert result.rejected == ["two.json"]
    assert len(result.accepted) == 1  # the same id from another session is another envelope
    assert "duplicate id" in (layout.rejected / "two.json.reason").read_text()


def test_a_claim_left_by_a_crash_of_an_older_release_is_finished(
    setup: tuple[Config, Layout],
) -> None:
    config, layout = setup
    (layout.inbox / f"{LEGACY_CLAIM}{5:020d}-late.json").write_bytes(envelope())
    (layout.inbox / f"{LEGACY_CLAIM}{6:020d}-bad.json").write_bytes(b"junk")
    result = intake.drain_queue(config, layout)
    assert result.accepted == [f"q-{5:020d}-late.json"]
    assert result.rejected == ["bad.json"]
    assert inbox(layout) == [f"q-{5:020d}-late.json"]


def test_operator_input_is_always_consumed(setup: tuple[Config, Layout]) -> None:
    _, layout = setup
    layout.jc_input.write_text("go ahead")
    result = intake.drain_operator(layout)
    assert not layout.jc_input.exists()
    (name,) = result.accepted
    assert name.startswith(OPERATOR)
    assert (layout.inbox / name).read_text() == "go ahead"


def test_operator_input_sorts_before_queue_entries(setup: tuple[Config, Layout]) -> None:
    config, layout = setup
    (layout.queue / "a.json").write_bytes(envelope())
    intake.drain_queue(config, layout)
    layout.jc_input.write_text("urgent")
    intake.drain_operator(layout)
    assert inbox(layout)[0].startswith(OPERATOR)


@pytest.mark.parametrize(("data", "accepted"), [(b"   \n", 0), (b"\xff\xfe", 0)])
def test_empty_or_binary_operator_input_is_consumed_not_sent(
    setup: tuple[Config, Layout], data: bytes, accepted: int
) -> None:
    _, layout = setup
    layout.jc_input.write_bytes(data)
    result = intake.drain_operator(layout)
    assert len(result.accepted) == accepted
    assert not layout.jc_input.exists()
    assert inbox(layout) == []


def test_the_handler_never_imports_anthropic(tmp_path: Path) -> None:
    import subprocess
    import sys

    config = tmp_path / "config.yaml"
    config.write_text(f"sessions: [session-1]\ndata_dir: {tmp_path / 'data'}\n")
    code = (
        "import sys; from relay.cli import main; rc = main(['intake', 'queue', '--config', "
        f"{str(config)!r}]); assert 'anthropic' not in sys.modules, 'imported'; "
        "sys.exit(rc)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "0 accepted, 0 rejected" in done.stdout


def test_lingering_handler_takes_what_arrives_while_it_runs(
    setup: tuple[Config, Layout],
) -> None:
    import threading
    import time

    config, layout = setup

    def late_writer() -> None:
        for i in range(3):
            time.sleep(0.05)
            tmp = layout.queue / f".late{i}.tmp"
            tmp.write_bytes(envelope(content=f"late {i}"))
            os.rename(tmp, layout.queue / f"late{i}.json")

    (layout.queue / "first.json").write_bytes(envelope())
    writer = threading.Thread(target=late_writer)
    writer.start()
    result = intake.drain_queue_lingering(config, layout, linger_s=0.5)
    writer.join()
    assert len(result.accepted) == 4
    assert [p.name for p in layout.queue.iterdir()] == [".rejected"]


def test_an_envelope_still_being_written_in_place_is_waited_for(
    setup: tuple[Config, Layout],
) -> None:
    import threading
    import time

    config, layout = setup
    data = envelope(content="written without a temp file")
    opened = threading.Event()

    def slow_writer() -> None:
        with open(layout.queue / "direct.json", "wb") as f:  # no dot-file, no rename
            f.write(data[:10])
            f.flush()
            opened.set()
            time.sleep(intake.QUIET_S / 2)  # a writer that pauses, but less than QUIET_S
            f.write(data[10:])

    writer = threading.Thread(target=slow_writer)
    writer.start()
    opened.wait(5)
    result = intake.drain_queue(config, layout)
    writer.join()
    assert result.rejected == [] and len(result.accepted) == 1
    assert (layout.inbox / result.accepted[0]).read_bytes() == data


def test_an_old_broken_file_is_rejected_without_waiting(setup: tuple[Config, Layout]) -> None:
    import time

    config, layout = setup
    (layout.queue / "old.json").write_bytes(b"{broken")
    os.utime(layout.queue / "old.json", (time.time() - 60, time.time() - 60))
    started = time.monotonic()
    assert intake.drain_queue(config, layout).rejected == ["old.json"]
    assert time.monotonic() - started < intake.QUIET_S


def test_operator_echo_into_jc_input_is_not_lost(setup: tuple[Config, Layout]) -> None:
    import threading
    import time

    _, layout = setup
    created = threading.Event()

    def echo() -> None:  # like `echo yes > state/jc_input.txt`: create, then write
        with open(layout.jc_input, "w") as f:
            created.set()
            time.sleep(intake.QUIET_S / 2)
            f.write("yes, go ahead\n")

    writer = threading.Thread(target=echo)
    writer.start()
    created.wait(5)
    result = intake.drain_operator(layout)
    writer.join()
    (name,) = result.accepted
    assert (layout.inbox / name).read_text() == "yes, go ahead\n"


def test_queue_intake_leaves_operator_claims_to_the_jc_handler(
    setup: tuple[Config, Layout],
) -> None:
    config, layout = setup
    # Under systemd the jc handler may be settling this claim at this very moment.
    claim = layout.inbox / f"{LEGACY_JC_CLAIM}{7:020d}"
    claim.write_text("being handled elsewhere")
    assert intake.drain_queue(config, layout).accepted == []
    assert claim.read_text() == "being handled elsewhere"
    (name,) = intake.drain_operator(layout).accepted
    assert (layout.inbox / name).read_text() == "being handled elsewhere"


def test_a_crash_between_marking_an_id_and_accepting_does_not_reject_it(
    setup: tuple[Config, Layout],
) -> None:
    config, layout = setup
    claim = layout.inbox / f"{LEGACY_CLAIM}{5:020d}-a.json"
    claim.write_bytes(envelope(id="task-9"))
    # The state a crash leaves after the id marker was written, before the rename.
    intake.id_marker(layout, "session-1", "task-9").write_text(f"q-{5:020d}-a.json")
    result = intake.drain_queue(config, layout)
    assert result.accepted == [f"q-{5:020d}-a.json"] and result.rejected == []
    (layout.queue / "again.json").write_bytes(envelope(id="task-9"))
    assert intake.drain_queue(config, layout).rejected == ["again.json"]


def test_refused_operator_input_stays_private(setup: tuple[Config, Layout]) -> None:
    _, layout = setup
    secret = b"the deploy password is hunter2 \xff"
    layout.jc_input.write_bytes(secret)
    os.utime(layout.jc_input, (time.time() - 60, time.time() - 60))  # not being written
    result = intake.drain_operator(layout)
    assert len(result.rejected) == 1
    assert not layout.rejected.exists() or list(layout.rejected.iterdir()) == []
    (kept,) = [p for p in layout.operator_rejected.iterdir() if not p.name.endswith(".reason")]
    assert kept.read_bytes() == secret
    assert kept.stat().st_mode & 0o077 == 0
    assert layout.operator_rejected.stat().st_mode & 0o077 == 0
    reason = kept.with_name(kept.name + ".reason").read_text()
    assert "not valid UTF-8" in reason


def test_operator_input_past_the_limit_is_refused_not_cut_short(
    setup: tuple[Config, Layout],
) -> None:
    _, layout = setup
    # A multibyte character across the read limit: refused as too large, not "bad UTF-8".
    big = ("é" * (intake.OPERATOR_MAX_BYTES // 2 + 1000)).encode()
    layout.jc_input.write_bytes(big)
    os.utime(layout.jc_input, (time.time() - 60, time.time() - 60))
    result = intake.drain_operator(layout)
    assert result.accepted == [] and len(result.rejected) == 1
    (reason,) = layout.operator_rejected.glob("*.reason")
    assert "too large" in reason.read_text()
    just_fits = ("é" * (intake.OPERATOR_MAX_BYTES // 2)).encode()
    layout.jc_input.write_bytes(just_fits)
    (name,) = intake.drain_operator(layout).accepted
    assert (layout.inbox / name).read_bytes() == just_fits


def test_intake_runs_at_once_never_crash_each_other(tmp_path: Path) -> None:
    """Four `relay intake queue` (as a person might run beside the units) on 200 envelopes:
    every run exits 0 and every envelope is admitted exactly once."""
    import subprocess
    import sys

    config = tmp_path / "config.yaml"
    config.write_text(f"sessions: [session-1]\ndata_dir: {tmp_path / 'data'}\n")
    layout = Layout(tmp_path / "data")
    layout.ensure_intake()
    for n in range(200):
        (layout.queue / f".{n}.tmp").write_bytes(envelope(content=f"m{n}", id=f"id-{n}"))
        os.rename(layout.queue / f".{n}.tmp", layout.queue / f"{n:03d}.json")
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "relay", "intake", "queue", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outcomes = [(run.wait(60), run.stderr.read() if run.stderr else "") for run in runs]
    assert all(code == 0 for code, _ in outcomes), outcomes
    admitted = sorted(json.loads((layout.inbox / n).read_text())["content"] for n in inbox(layout))
    assert admitted == sorted(f"m{n}" for n in range(200))
    assert not layout.rejected.exists() or list(layout.rejected.iterdir()) == []
    assert [n for n in os.listdir(layout.queue) if not n.startswith(".")] == []
