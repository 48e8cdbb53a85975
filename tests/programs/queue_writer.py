"""Clients writing envelopes into queue/ all at once, as the contract asks: each stages
`.NAME.tmp` in the queue and renames it in.

    queue_writer.py QUEUE WRITERS PER [WAVES] [EVERY]

WRITERS processes are forked, then released together. Each writes PER envelopes, spread
evenly over WAVES (seconds after the release, comma-separated, default "0"), plus 20 ms per
writer; inside a wave each file follows the last after EVERY seconds (default 0: at once).
A writer's file names sort in its own order, so even where mtimes are coarse (jiffies) two
of its files with the same mtime keep their order; across writers the order is whatever the
clock says. Writer w's envelope n goes to `session_for(w, n)` and says `content(w, n)`.
"""

from __future__ import annotations

import json
import os
import sys
import time


def session_for(writer: int, seq: int) -> str:
    return ("session-1", "session-2")[(seq // (writer + 1)) % 2]


def content(writer: int, seq: int) -> str:
    return f"burst w{writer} n{seq:04d}"


def schedule(per: int, waves: list[float], every: float) -> list[float]:
    """When each of a writer's envelopes is due, in seconds after the release."""
    due: list[float] = []
    for seq in range(per):
        wave = seq * len(waves) // per
        first = next(s for s in range(per) if s * len(waves) // per == wave)
        due.append(waves[wave] + every * (seq - first))
    return due


def write(queue: str, writer: int, due: list[float], start: float) -> None:
    for seq, when in enumerate(due):
        time.sleep(max(0.0, start + when + 0.02 * writer - time.monotonic()))
        name = f"w{writer}-{seq:04d}.json"
        body = {
            "session_id": session_for(writer, seq),
            "timestamp": "2026-11-25T00:00:00Z",
            "content": content(writer, seq),
        }
        staged = os.path.join(queue, f".{name}.tmp")
        with open(staged, "w", encoding="utf-8") as f:
            json.dump(body, f)
        os.rename(staged, os.path.join(queue, name))


def main(argv: list[str]) -> int:
    queue, writers, per = argv[1], int(argv[2]), int(argv[3])
    waves = [float(w) for w in (argv[4] if len(argv) > 4 else "0").split(",")]
    due = schedule(per, waves, float(argv[5]) if len(argv) > 5 else 0.0)
    go_r, go_w = os.pipe()
    children = []
    for writer in range(writers):
        pid = os.fork()
        if pid == 0:
            os.close(go_w)
            os.read(go_r, 1)  # released together, when the parent closes its end
            write(queue, writer, due, time.monotonic())
            os._exit(0)
        children.append(pid)
    os.close(go_r)
    os.close(go_w)
    return 1 if any(os.waitpid(pid, 0)[1] for pid in children) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
