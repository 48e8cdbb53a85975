"""Benchmark (not a test): `relay run` in the foreground against the stand-in API at zero
delay. Measures drop→dispatch latency one envelope at a time, and the time to load a
400 000-character history. Prints a table of medians and percentiles.

    .venv/bin/python -m bench.foreground [--envelopes 300]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from inotify_simple import INotify
from inotify_simple import flags as in_flags

from relay import conversation as conv
from relay import history
from relay.records import Turn, session
from tests.relayproc import RelayProcess, write_config


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def drop_to_dispatch(work: Path, count: int) -> list[float]:
    api_proc = subprocess.Popen(
        [sys.executable, "tests/standin/api.py", "--port", "0"], stdout=subprocess.PIPE, text=True
    )
    assert api_proc.stdout is not None
    url = api_proc.stdout.readline().strip()
    relay = RelayProcess(write_config(work, url))
    try:
        relay.start()
        dispatch = relay.data / "dispatch" / "session-1"
        inotify = INotify()
        inotify.add_watch(dispatch, in_flags.MOVED_TO | in_flags.CREATE)
        samples = []
        for i in range(count + 10):
            start = time.perf_counter()
            relay.submit("session-1", f"bench {i}")
            while not relay.input_file("session-1").exists():
                inotify.read(timeout=1000)
            elapsed = time.perf_counter() - start
            relay.input_file("session-1").unlink()
            if i >= 10:  # the first calls warm the SDK's connection pool
                samples.append(elapsed)
        return samples
    finally:
        relay.stop()
        api_proc.terminate()
        api_proc.wait(10)


def history_load(work: Path, chars: int, runs: int) -> tuple[list[float], int]:
    path = work / "history.jsonl"
    h = history.HistoryFile(path, work / "archive")
    seq, total = 1, 0
    while total < chars:
        sender = session(f"session-{seq % 2 + 1}")
        user, reply = conv.user_text(sender, "u" * 700), "r" * 1300
        h.append(
            Turn(
                seq=seq,
                key=f"q-{seq:020d}-x.json",
                sender=sender,
                user=user,
                reply=reply,
                target=sender.session,
                needs_jc=False,
                ts="2026-11-25T00:00:00Z",
                cost_usd=0.01,
            )
        )
        total += len(user) + len(reply)
        seq += 1
    h.close()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        records = history.load(path)  # what start-up does: load, derive, render once
        conv.derive_state(records)
        conv.render_messages(records, "next")
        samples.append(time.perf_counter() - start)
    return samples, conv.history_chars(history.load(path))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--envelopes", type=int, default=300)
    args = parser.parse_args()
    os.chdir(Path(__file__).resolve().parent.parent)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "fg").mkdir()
        latency = drop_to_dispatch(Path(tmp) / "fg", args.envelopes)
        loads, chars = history_load(Path(tmp), 400_000, 30)
    ms = [x * 1000 for x in latency]
    load_ms = [x * 1000 for x in loads]
    rows = [
        ("drop→dispatch p50 (foreground)", f"{statistics.median(ms):.1f} ms", "≤ 30 ms"),
        ("drop→dispatch p99 (foreground)", f"{percentile(ms, 99):.1f} ms", "≤ 100 ms"),
        ("drop→dispatch max", f"{max(ms):.1f} ms", ""),
        (
            f"history load ({chars} chars), median",
            f"{statistics.median(load_ms):.1f} ms",
            "≤ 100 ms",
        ),
    ]
    print(f"\nrelay foreground benchmark: {len(ms)} envelopes, stand-in API at zero delay")
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'measured':>10}  target")
    for name, value, target in rows:
        print(f"{name:<{width}}  {value:>10}  {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
