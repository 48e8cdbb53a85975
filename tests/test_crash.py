"""Crash safety (docs/architecture.md, promises 1-3): SIGKILL `relay run` at random moments while
envelopes stream in and sessions consume replies. Every envelope must end with exactly one
dispatched reply, none twice, and history must hold each turn once.

Reproduce a failure with RELAY_CRASH_SEED=<the printed seed>.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter
from pathlib import Path

from tests.relayproc import RelayProcess, wait_for, write_config
from tests.standin.api import StandinAPI

ENVELOPES = 80
DIRECT = 12  # operator `@session-N:` messages, dispatched with no API call
KILLS = 24
SESSIONS = ("session-1", "session-2")


class Consumer(threading.Thread):
    """A Claude Code session: reads input.txt and deletes it, again and again."""

    def __init__(self, relay: RelayProcess, session: str) -> None:
        super().__init__(daemon=True)
        self.relay, self.session = relay, session
        self.received: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        path = self.relay.input_file(self.session)
        while not self.stop.is_set():
            try:
                text = path.read_text(encoding="utf-8")
            except FileNotFoundError:
                time.sleep(0.002)
                continue
            self.received.append(text)
            path.unlink()


def test_sigkill_at_random_moments_loses_nothing_and_repeats_nothing(
    tmp_path: Path, relay_factory: list[RelayProcess]
) -> None:
    seed = int(os.environ.get("RELAY_CRASH_SEED", random.randrange(1 << 30)))
    print(f"crash test seed: {seed} (rerun with RELAY_CRASH_SEED={seed})")
    rng = random.Random(seed)
    # A small API delay so that many kills land while a call is in flight.
    with StandinAPI(delay=0.03) as api:
        relay = RelayProcess(write_config(tmp_path, api.url))
        relay_factory.append(relay)
        relay.start()
        consumers = [Consumer(relay, s) for s in SESSIONS]
        for consumer in consumers:
            consumer.start()
        expected: dict[str, str] = {}

        def writer() -> None:
            for i in range(ENVELOPES):
                session = SESSIONS[i % 2]
                relay.submit(session, f"envelope {i}")
                expected[f"envelope {i}"] = session
                time.sleep(rng.uniform(0.0, 0.06))

        def operator() -> None:
            jc = relay.data / "state" / "jc_input.txt"
            for i in range(DIRECT):
                session = SESSIONS[i % 2]
                tmp = relay.data / "state" / f".jc-{i}.tmp"
                tmp.write_text(f"@{session}: direct {i}")
                wait_for(lambda: not jc.exists(), timeout=60, what="jc_input consumed")
                os.link(tmp, jc)  # never overwrite an unconsumed operator message
                tmp.unlink()
                expected_direct[f"direct {i}"] = session
                time.sleep(rng.uniform(0.0, 0.2))

        expected_direct: dict[str, str] = {}
        writing = threading.Thread(target=writer, daemon=True)
        operating = threading.Thread(target=operator, daemon=True)
        writing.start()
        operating.start()
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.0, 0.25))
            relay.kill()
            relay.start(wait_ready=rng.random() < 0.7)
        writing.join(60)
        operating.join(60)
        if relay.proc is None or relay.proc.poll() is not None:
            relay.start()

        def all_answered() -> bool:
            return sum(len(c.received) for c in consumers) >= ENVELOPES + DIRECT

        wait_for(all_answered, timeout=60, what=f"all replies (seed {seed})")
        time.sleep(0.5)  # a duplicate, if any, would arrive now
        for consumer in consumers:
            consumer.stop.set()
            consumer.join(5)

    counts = Counter(text for c in consumers for text in c.received)
    duplicates = {text: n for text, n in counts.items() if n > 1}
    assert not duplicates, f"dispatched twice (seed {seed}): {duplicates}"
    for content, session in expected.items():
        reply = f"ack: [from {session}] {content}"
        owner = next(c for c in consumers if c.session == session)
        assert reply in owner.received, f"lost: {content} (seed {seed})"
    for content, session in expected_direct.items():
        owner = next(c for c in consumers if c.session == session)
        assert content in owner.received, f"lost: {content} (seed {seed})"
    assert len(counts) == ENVELOPES + DIRECT
    keys = Counter(r["key"] for r in relay.history() if r.get("kind") == "turn")
    assert all(n == 1 for n in keys.values()), f"a turn recorded twice (seed {seed})"
    assert len(keys) == ENVELOPES
    assert relay.queue_names() == []
    assert not list((relay.data / "queue" / ".rejected").iterdir())
