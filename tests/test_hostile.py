"""A real `relay run` against what the world does to it: a full disk, a data directory an
older release left behind, a loop left alone. Through the ⚑ contract only."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.relayproc import RelayProcess, wait_for, write_config
from tests.standin.api import StandinAPI


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid` so far, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle_cpu(relay: RelayProcess, seconds: float = 3.0) -> float:
    assert relay.proc is not None
    before = cpu_seconds(relay.proc.pid)
    with contextlib.suppress(subprocess.TimeoutExpired):
        relay.proc.wait(seconds)
    assert relay.proc.poll() is None, f"relay died:\n{relay.log()}"
    return cpu_seconds(relay.proc.pid) - before


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs for the data directory: it can be filled in a moment. Needs root
    (CI has it); without it the mount fails and so does the test."""
    data = tmp_path / "data"
    data.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(data)], check=True)
    try:
        yield data
    finally:
        subprocess.run(["umount", "-l", str(data)], check=False)


def fill(directory: Path) -> Path:
    filler = directory / "filler"
    with open(filler, "wb") as handle, contextlib.suppress(OSError):
        while True:
            handle.write(b"\0" * 65536)
            handle.flush()
    return filler


def test_a_full_disk_never_stops_or_spins_relay_and_nothing_is_lost(
    tmp_path: Path, api: StandinAPI, small_disk: Path, relay_factory: list[RelayProcess]
) -> None:
    relay = RelayProcess(write_config(tmp_path, api.url))
    relay_factory.append(relay)
    relay.start()
    relay.submit("session-1", "before the disk filled")
    assert relay.consume("session-1") == "ack: [from session-1] before the disk filled"

    # Files written before the disk fills, taken while it is full.
    queue = relay.data / "queue"
    (queue / ".a.tmp").write_text(json.dumps({"session_id": "session-1", "content": "during"}))
    (queue / ".b.tmp").write_bytes(b"{not json")
    (relay.data / "state" / ".jc.tmp").write_text("@session-2: direct while full")
    filler = fill(small_disk)
    os.rename(queue / ".a.tmp", queue / "a.json")
    os.rename(queue / ".b.tmp", queue / "b.json")
    os.rename(relay.data / "state" / ".jc.tmp", relay.data / "state" / "jc_input.txt")

    # It stays up and quiet: no crash, no busy loop on the failing writes.
    assert idle_cpu(relay, 4.0) < 1.0
    relay.stop()
    relay.start(wait_ready=False)  # and a restart while full does not crash-loop either
    wait_for(lambda: relay.log().count("relay run:") == 2, what="the restart")
    assert idle_cpu(relay, 3.0) < 1.0

    filler.unlink()
    assert relay.consume("session-1", timeout=40) == "ack: [from session-1] during"
    assert relay.consume("session-2", timeout=40) == "direct while full"
    reason = wait_for(lambda: (queue / ".rejected" / "b.json.reason").exists(), timeout=40)
    assert reason
    calls = [c for c in api.message_calls() if "during" in json.dumps(c.body["messages"][-1])]
    assert len(calls) == 1


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:20]


def test_a_data_directory_from_an_older_release_keeps_working(
    tmp_path: Path, api: StandinAPI, relay_factory: list[RelayProcess]
) -> None:
    """The names the previous release wrote: an admitted item named after its file, a
    half-done claim, operator input, a reply already pending, a history line."""
    data = tmp_path / "data"
    inbox, state = data / "state" / "inbox", data / "state"
    pending = data / "dispatch" / "session-2" / ".pending"
    for directory in (inbox, pending, data / "queue" / ".rejected", state / "ids"):
        directory.mkdir(parents=True, exist_ok=True)
    envelope = {"session_id": "session-1", "content": "admitted before the upgrade"}
    (inbox / f"q-{5:020d}-old.json").write_text(json.dumps(envelope))
    claimed = {"session_id": "session-1", "content": "claimed before the upgrade"}
    (inbox / f".claim-{6:020d}-claimed.json").write_text(json.dumps(claimed))
    (inbox / f"j-{7:020d}.txt").write_text("@session-2: operator before the upgrade")
    done_key = f"q-{1:020d}-done.json"
    turn = {
        "kind": "turn",
        "seq": 1,
        "key": done_key,
        "session": "session-2",
        "user": "[from session-2]\nearlier",
        "reply": "answered before the upgrade",
        "target": "session-2",
        "needs_jc": False,
        "ts": "2026-11-30T00:00:00.000000Z",
        "cost_usd": 0.01,
    }
    (state / "history.jsonl").write_text(json.dumps(turn) + "\n")
    (pending / f"{1:012d}-{digest(done_key)}-{done_key}.txt").write_text(str(turn["reply"]))

    relay = RelayProcess(write_config(tmp_path, api.url))
    relay_factory.append(relay)
    relay.start()
    assert relay.consume("session-2") == "answered before the upgrade"
    assert relay.consume("session-2") == "operator before the upgrade"
    got = {relay.consume("session-1"), relay.consume("session-1")}
    assert got == {
        "ack: [from session-1] admitted before the upgrade",
        "ack: [from session-1] claimed before the upgrade",
    }
    relay.submit("session-1", "after the upgrade")
    assert relay.consume("session-1") == "ack: [from session-1] after the upgrade"
    history = relay.history()
    assert [h["seq"] for h in history] == [1, 2, 3, 4]
    # The old turn is still in the conversation chat-Claude sees.
    last = api.message_calls()[-1].body["messages"]
    assert last[1]["content"][0]["text"] == "answered before the upgrade"


def test_an_idle_relay_sleeps(
    tmp_path: Path, api: StandinAPI, relay_factory: list[RelayProcess]
) -> None:
    relay = RelayProcess(write_config(tmp_path, api.url))
    relay_factory.append(relay)
    relay.start()
    relay.submit("session-1", "one")
    relay.consume("session-1")
    # Clients come and go in dispatch/ and write temp files in queue/: none of that is work.
    for n in range(20):
        (relay.data / "queue" / f".writer-{n}.tmp").write_text("partial")
    assert idle_cpu(relay, 3.0) < 0.5
