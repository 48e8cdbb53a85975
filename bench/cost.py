"""Benchmark (not a test): what prompt caching saves. One scripted 100-turn conversation goes
through relay's real Engine and the real SDK to the in-process stand-in API, whose prompt cache
expires on a simulated clock that moves with the engine's wall clock (nothing sleeps), under
three rhythms and five caching strategies. Prints, per rhythm and strategy, the bill (relay's
price table, claude-opus-4-7), the share of input tokens read from the cache, and the bill
against caching the system prompt alone (the original design).

    .venv/bin/python -m bench.cost [--turns 100]

Rhythms: a turn every minute; every 10 minutes; mixed (mostly short gaps, some long ones),
where both [NEEDS-JC] questions wait 20 minutes for the operator (in the other two rhythms the
operator answers after the usual gap). Strategies: `cache_ttl` auto, 5m and 1h as configured,
"system only" (only the system prompt cached, 5 m) and "none" (no cache_control at all).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from relay import costs
from relay.api import AnthropicApi
from relay.cache_policy import CachePlan, CachePolicy, CallKind, configured
from relay.config import AnthropicConfig, Config
from relay.engine import Engine
from relay.layout import Layout
from relay.ntfy import Notifier, Push
from relay.records import Record
from relay.spool import envelope_key, operator_key
from tests.standin.api import Action, Reply, StandinAPI

MODEL = "claude-opus-4-7"
SESSIONS = ("session-1", "session-2")
NEEDS_JC_AT = (30, 70)  # steps whose reply asks the operator; the next step is the answer
EPOCH = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
MINUTE = 60.0
_PROSE = (
    "the queue worker reads envelopes from disk and hands each one to the engine which "
    "renders history calls the api records usage and dispatches the reply to the session "
    "tests pass except the flaky one in the retry path so I changed the backoff and reran"
)
WORDS = tuple(_PROSE.split(" "))


# ---- the script -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One turn: an envelope from a session, or the operator's answer to a [NEEDS-JC]."""

    tag: str  # unique, at the start of the text: how the stand-in finds the reply
    sender: str  # a session, or "operator"
    text: str
    reply: str


def filler(rng: random.Random, tokens: int) -> str:
    """About `tokens` tokens (the stand-in counts 4 characters a token) of plausible text."""
    out: list[str] = []
    size = 0
    while size < tokens * 4:
        word = rng.choice(WORDS)
        out.append(word)
        size += len(word) + 1
    return " ".join(out)


def script(turns: int) -> list[Step]:
    """The conversation, the same for every rhythm and strategy: envelopes of 300-2000
    tokens, replies of 200-1500, two [NEEDS-JC] questions each answered by the operator."""
    rng = random.Random(10)
    steps: list[Step] = []
    for i in range(turns):
        tag = f"#T{i:03d}"
        if i - 1 in NEEDS_JC_AT:
            text = f"{tag} Yes, go ahead: {filler(rng, rng.randint(20, 120))}"
            steps.append(Step(tag, "operator", text, filler(rng, rng.randint(200, 800))))
            continue
        text = f"{tag} {filler(rng, rng.randint(300, 2000))}"
        reply = filler(rng, rng.randint(200, 1500))
        if i in NEEDS_JC_AT:
            reply = f"[NEEDS-JC] Should the old branch be deleted? {filler(rng, 150)}"
        steps.append(Step(tag, SESSIONS[rng.random() < 0.4], text, reply))
    return steps


def every(seconds: float) -> Callable[[int, Step], float]:
    return lambda i, step: seconds


def mixed() -> Callable[[int, Step], float]:
    """Mostly a few minutes, sometimes a quarter of an hour; 20 minutes for each answer."""
    rng = random.Random(20)
    gaps = [
        rng.uniform(0.5, 3) if r < 0.8 else rng.uniform(6, 15) if r < 0.97 else rng.uniform(20, 40)
        for r in (rng.random() for _ in range(1000))
    ]
    return lambda i, step: 20 * MINUTE if step.sender == "operator" else gaps[i] * MINUTE


PATTERNS: dict[str, Callable[[], Callable[[int, Step], float]]] = {
    "1-minute gaps": lambda: every(MINUTE),
    "10-minute gaps": lambda: every(10 * MINUTE),
    "mixed, 2 x 20 min NEEDS-JC": mixed,
}


# ---- strategies -----------------------------------------------------------------------------


def system_only(config: Config, kind: CallKind, records: Sequence[Record], now: Any) -> CachePlan:
    return CachePlan(system="5m")


def no_cache(config: Config, kind: CallKind, records: Sequence[Record], now: Any) -> CachePlan:
    return CachePlan()


STRATEGIES: dict[str, tuple[str, CachePolicy]] = {
    "auto": ("auto", configured),
    "5m": ("5m", configured),
    "1h": ("1h", configured),
    "system only": ("auto", system_only),
    "none": ("auto", no_cache),
}


# ---- one run --------------------------------------------------------------------------------


class SimClock:
    """Seconds since EPOCH; the engine's monotonic and wall clocks and the stand-in's cache
    clock all read it, so they move together."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def wall(self) -> datetime:
        return EPOCH + timedelta(seconds=self.t)


class QuietNotifier(Notifier):
    def __init__(self) -> None:
        super().__init__(None, None, 1.0)
        self.pushes: list[Push] = []

    def push(self, push: Push) -> None:
        self.pushes.append(push)


@dataclass(frozen=True)
class Result:
    pattern: str
    strategy: str
    calls: int
    usd: float
    read_share: float


def responder(steps: Sequence[Step]) -> Callable[[dict[str, Any]], Action | None]:
    replies = {step.tag: step.reply for step in steps}
    rng = random.Random(30)
    summary = filler(rng, 2500)

    def answer(body: dict[str, Any]) -> Action | None:
        text = body["messages"][-1]["content"][-1]["text"]
        if text.startswith("[from relay]"):
            return Reply(summary)
        tag = text.split("\n", 1)[-1][:5]
        return Reply(replies[tag])

    return answer


def run(pattern: str, strategy: str, steps: Sequence[Step], system_prompt: str) -> Result:
    mode, policy = STRATEGIES[strategy]
    gap = PATTERNS[pattern]()
    clock = SimClock()
    with (
        tempfile.TemporaryDirectory(prefix="relay-bench-cost-") as tmp,
        StandinAPI(clock=clock, responder=responder(steps)) as api,
    ):
        config = Config(
            sessions=SESSIONS,
            model=MODEL,
            system_prompt=system_prompt,
            data_dir=Path(tmp),
            anthropic=AnthropicConfig(base_url=api.url),
            cache_ttl=mode,
        )
        client = AnthropicApi("sk-bench", api.url, 60.0)
        layout = Layout(config.data_dir)
        engine = Engine(
            config,
            layout,
            lambda key, cfg: client,
            QuietNotifier(),
            environ={"ANTHROPIC_API_KEY": "sk-bench"},
            monotonic=clock,
            wall=clock.wall,
            cache_policy=policy,
        )
        try:
            engine.recover()
            for i, step in enumerate(steps):
                clock.t += gap(i, step) if i else 0.0
                submit(layout, i + 1, step)
                settle(engine, layout)
        finally:
            engine.close()
        refused = [c.status for c in api.message_calls() if c.status != 200]
        if refused:
            raise SystemExit(f"{pattern} / {strategy}: the stand-in refused {refused}")
        # The bill is what relay itself recorded and reports (`relay costs`): each call's
        # usage as the API reported it, priced by relay's table.
        total = costs.read_ledger(layout.ledger, costs.Query(), config, clock.wall()).total
    share = total.cache_read_share or 0.0
    return Result(pattern, strategy, total.calls, total.cost_usd, share)


def submit(layout: Layout, serial: int, step: Step) -> None:
    """The inbox item intake would leave for this step."""
    if step.sender == "operator":
        (layout.inbox / operator_key(serial)).write_text(step.text)
        return
    key = envelope_key(serial, serial)
    (layout.inbox / key).write_text(json.dumps({"session_id": step.sender, "content": step.text}))
    (layout.inbox / f".n-{serial:020d}").write_bytes(f"1\nbench-{serial}.json".encode())


def settle(engine: Engine, layout: Layout) -> None:
    """Tick until the item is answered (a summarization first, when one is due), and let the
    sessions take their replies."""
    for _ in range(50):
        engine.tick()
        engine.wait_inflight(60)
        if not engine.busy and not engine.spool.items():
            break
    else:
        raise SystemExit(f"the engine did not settle: {engine.status()}")
    engine.tick()
    for name in SESSIONS:
        layout.input_file(name).unlink(missing_ok=True)


# ---- report ---------------------------------------------------------------------------------


def table(results: Sequence[Result]) -> str:
    baseline = {r.pattern: r.usd for r in results if r.strategy == "system only"}
    rows = [("pattern", "strategy", "calls", "bill USD", "read from cache", "x system only")]
    for r in results:
        rows.append(
            (
                r.pattern,
                r.strategy,
                str(r.calls),
                f"{r.usd:.2f}",
                f"{r.read_share:.1%}",
                f"{r.usd / baseline[r.pattern]:.2f}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + " |"
        for row in rows
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--turns", type=int, default=100)
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)  # the engine's own events ([NEEDS-JC] pauses) are expected
    steps = script(args.turns)
    system_prompt = filler(random.Random(40), 3000)
    started = time.perf_counter()
    results = [
        run(pattern, strategy, steps, system_prompt)
        for pattern in PATTERNS
        for strategy in STRATEGIES
    ]
    print(table(results))
    print(
        f"\n{args.turns} turns per run, {MODEL} list prices; "
        f"{time.perf_counter() - started:.0f} s of real time."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
