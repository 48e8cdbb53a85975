"""The campaign's rounds: throw a plan at a live relay while killing it, let it settle,
check the round's invariants, and in the end judge every input (tests/test_fuzz.py)."""

from __future__ import annotations

import os
import queue
import random
import stat
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.fuzz.client import Client, remove
from tests.fuzz.contents import Contents
from tests.fuzz.harness import Faults, Life, Outside, cpu_seconds
from tests.fuzz.model import Expect, Thrown, expected_reply, reg_signature
from tests.fuzz.names import every_length
from tests.fuzz.plan import Builder
from tests.fuzz.verdict import Entry, Fate, Judgement, RejectedFolder, judge, tally
from tests.relayproc import RelayProcess
from tests.standin.api import StandinAPI

THROW_S = 3.0  # a round's inputs are spread over this long
SETTLE_S = 30.0  # after that, a round that has not settled is a failure
IDLE_S = 3.0
IDLE_CPU_S = 0.5  # relay's CPU time allowed in IDLE_S seconds of quiet
STALL_S = 1.5  # how much later than usual an envelope may be answered beside a slow writer


@dataclass
class Problem:
    what: str  # a short kind, for grouping
    detail: str


@dataclass
class Books:
    """What one data directory was given, and what was seen of it."""

    life: Life
    client: Client
    thrown: list[Thrown] = field(default_factory=list)
    dots: dict[str, bool] = field(default_factory=dict)  # uid → left alone by relay
    judgement: Judgement | None = None
    folders: list[RejectedFolder] = field(default_factory=list)

    def __post_init__(self) -> None:
        data = self.life.data
        self.folders = [
            RejectedFolder(data / "queue" / ".rejected", "queue/.rejected"),
            RejectedFolder(data / "state" / "rejected", "state/rejected"),
        ]

    def entries(self) -> list[Entry]:
        return [e for folder in self.folders for e in folder.entries()]


class Campaign:
    def __init__(
        self, root: Path, seed: int, started: list[RelayProcess], only: tuple[str, ...] = ()
    ) -> None:
        self.root = root
        self.only = only
        self.seed = seed
        self.rng = random.Random(seed)
        self.started = started
        self.faults = Faults()
        self.api = StandinAPI(responder=self.faults)
        self.outside = Outside(root / "outside")
        self.books: list[Books] = []
        self.problems: list[Problem] = []
        self.halt = threading.Event()
        self.jc_queue: queue.Queue[tuple[Books, Thrown, bytes, bool]] = queue.Queue()
        self.lengths = every_length()
        self.rng.shuffle(self.lengths)
        self.rounds_done = 0
        self.probes: list[str] = []
        self.started_at = time.monotonic()

    # ---- data directories ------------------------------------------------------------------

    def current(self) -> Books:
        if not self.books or self.books[-1].life.halt.is_set():
            life = Life(
                len(self.books), self.root / f"data{len(self.books)}", self.api.url, self.started
            )
            books = Books(life, Client(life.data, self.halt))
            life.start()
            self.books.append(books)
        return self.books[-1]

    def retire(self, books: Books, why: str | None) -> None:
        if books.life.halt.is_set():
            return
        code = books.life.retire()
        if why is None and code not in (0, None):
            self.problem("exit", f"data{books.life.index}: relay exited {code} on SIGTERM")
        books.judgement = self._judge(books)

    def _judge(self, books: Books) -> Judgement:
        return judge(books.thrown, books.life.received_snapshot(), books.entries(), books.dots)

    def problem(self, what: str, detail: str) -> None:
        self.problems.append(Problem(what, detail))

    # ---- the operator's writer --------------------------------------------------------------

    def _operator(self) -> None:
        while not self.halt.is_set():
            try:
                books, t, data, needs_target = self.jc_queue.get(timeout=0.1)
            except queue.Empty:
                continue
            try:
                if needs_target:  # a turn's answer goes to the last session: wait for one
                    deadline = time.monotonic() + 20
                    while time.monotonic() < deadline and not any(
                        r.text.startswith("re:fz") for r in books.life.received_snapshot()
                    ):
                        time.sleep(0.05)
                t.placed = books.client.jc_input(t.uid, data)
            finally:
                self.jc_queue.task_done()

    # ---- a round ---------------------------------------------------------------------------

    def run(self, rounds: int, size: int) -> None:
        with self.api:
            threading.Thread(target=self._operator, daemon=True, name="operator").start()
            try:
                per_round = -(-len(self.lengths) // rounds)
                for r in range(rounds):
                    lengths = self.lengths[r * per_round : (r + 1) * per_round]
                    self.round(r, rounds, size, lengths)
                    self.rounds_done += 1
            finally:
                self.halt.set()
                for books in self.books:
                    self.retire(books, None)

    def round(self, r: int, rounds: int, size: int, lengths: list[tuple[int, int]]) -> None:
        books = self.current()
        life = books.life

        def put(t: Thrown, data: bytes, needs_target: bool) -> None:
            self.jc_queue.put((books, t, data, needs_target))

        builder = Builder(
            self.rng,
            books.client,
            self.outside,
            self.faults,
            put,
            lambda uid: self._answered(books, uid),
            (life.index, r),
            self.only,
        )
        plan = builder.build(size, lengths, refusals=r == rounds - 1, big_jc=r % 3 == 1)
        books.thrown += plan.thrown
        began = time.monotonic()

        kill_times = sorted(
            self.rng.uniform(0, THROW_S + 1.5) for _ in range(self.rng.randint(2, 4))
        )
        killer = threading.Thread(
            target=self._kill_at,
            args=(life, kill_times, began, random.Random(f"{self.seed}-{r}")),
            daemon=True,
        )
        killer.start()
        scenario_threads = []
        starts = sorted(self.rng.uniform(0, THROW_S) for _ in plan.scenarios)
        due = list(zip(starts, plan.scenarios, strict=True))
        # A random schedule over THROW_S; an op that runs late never makes the rest wait.
        schedule = sorted(self.rng.uniform(0, THROW_S) for _ in plan.ops)
        for at, op in zip(schedule, plan.ops, strict=True):
            while due and time.monotonic() - began >= due[0][0]:
                thread = threading.Thread(target=self._guarded, args=(due.pop(0)[1],), daemon=True)
                thread.start()
                scenario_threads.append(thread)
            ahead = began + at - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
            self._guarded(op)
        for _, scenario in due:
            thread = threading.Thread(target=self._guarded, args=(scenario,), daemon=True)
            thread.start()
            scenario_threads.append(thread)
        killer.join()
        for thread in scenario_threads:
            thread.join(30)
        thrown_s = time.monotonic() - began
        settled = self._settle(books, plan.thrown, SETTLE_S if r < rounds - 1 else 20)
        settled_s = time.monotonic() - began - thrown_s
        self._round_checks(books, r)
        if settled and not life.broken and r in (0, rounds // 2):
            self._stall_probe(books, r)
        if settled and not life.broken and r in (rounds // 2, rounds - 1):
            self._idle_check(books, r)
        thrown = sum(t.placed for t in plan.thrown)
        print(
            f"  round {r + 1}/{rounds}: data{life.index}, {thrown} thrown in {thrown_s:.1f}s, "
            f"{'settled' if settled else 'NOT SETTLED'} {settled_s:.1f}s later, "
            f"{time.monotonic() - began:.1f}s in all; kills {life.kills}, "
            f"deaths {len(life.deaths)}",
            flush=True,
        )
        if not settled or life.broken:
            self.retire(books, life.broken or "did not settle")

    def _guarded(self, op: Callable[[], None]) -> None:
        try:
            op()
        except Exception as exc:  # a client action that could not be done is the test's bug
            self.problem("campaign", f"a client action failed: {exc!r}")

    def _kill_at(self, life: Life, times: list[float], began: float, rng: random.Random) -> None:
        for at in times:
            delay = began + at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if not life.alive and not life.broken:
                continue  # the watcher records and restarts a relay that died by itself
            life.kill_and_restart(wait_ready=rng.random() < 0.6)

    def _answered(self, books: Books, uid: str) -> bool:
        return any(uid in r.text for r in books.life.received_snapshot())

    # ---- settling and the round's invariants --------------------------------------------------

    def _settle(self, books: Books, thrown: list[Thrown], timeout: float) -> bool:
        life = books.life
        deadline = time.monotonic() + timeout
        while True:
            pending = self._pending(books, thrown)
            if not pending:
                time.sleep(0.5)  # a second answer, if any, would come now
                return True
            if life.broken:
                self.problem("crash-loop", f"data{life.index}: {life.broken}")
                return False
            if time.monotonic() > deadline:
                errors = "; ".join(life.log_errors()) or "none"
                self.problem(
                    "not-settled",
                    f"data{life.index}: after {timeout:.0f}s: {pending}; relay's log: {errors}",
                )
                return False
            time.sleep(0.3)

    def _pending(self, books: Books, thrown: list[Thrown]) -> str:
        """What still stops the round from being over ("" when nothing does)."""
        if self.jc_queue.unfinished_tasks:
            return "operator input still being written"
        life = books.life
        left = self.queue_entries(books)
        if left:
            return f"{len(left)} entries still in queue/, e.g. {left[:3]}"
        if os.path.lexists(life.data / "state" / "jc_input.txt"):
            return "state/jc_input.txt not consumed"
        status = life.status()
        busy = status.get("inbox") or any((status.get("pending") or {}).values())
        if busy or status.get("awaiting_pickup"):
            return f"status: inbox {status.get('inbox')}, pending {status.get('pending')}"
        judgement = judge(thrown, life.received_snapshot(), books.entries(), {})
        open_ = [f for f in judgement.fates if f.pending]
        if open_:
            return f"{len(open_)} inputs unresolved, e.g. {open_[0].thrown[0].describe()}"
        return ""

    def queue_entries(self, books: Books) -> list[str]:
        queue_dir = os.fsencode(books.life.data / "queue")
        left = []
        for name in os.listdir(queue_dir):
            if name.startswith(b"."):
                continue
            try:
                mode = os.lstat(queue_dir + b"/" + name).st_mode
            except FileNotFoundError:
                continue
            shown = repr(name) if len(name) < 40 else f"{name[:30]!r}…({len(name)} bytes)"
            left.append(f"{shown} {stat.filemode(mode)}")
        return left

    def _round_checks(self, books: Books, r: int) -> None:
        life = books.life
        where = f"round {r + 1}, data{life.index}"
        if not life.alive and not life.broken:
            self.problem("dead", f"{where}: relay is not running at the end of the round")
        left = self.queue_entries(books)
        if left:
            self.problem("queue-not-empty", f"{where}: {len(left)} left in queue/: {left[:8]}")
        for change in self.outside.changes():
            self.problem("outside-modified", f"{where}: {change}")
        self.outside.rebase()
        for t in [t for t in books.thrown if t.expect is Expect.IGNORE and t.uid not in books.dots]:
            if not t.placed:
                continue
            path = books.client.path(t.name)
            try:
                with open(path, "rb") as f:
                    same = reg_signature(f.read()) == t.signature
            except OSError:
                same = False
            books.dots[t.uid] = same
            remove(path)

    def _idle_check(self, books: Books, r: int) -> None:
        proc = books.life.relay.proc
        if proc is None or proc.poll() is not None:
            return
        try:
            before = cpu_seconds(proc.pid)
            time.sleep(IDLE_S)
            used = cpu_seconds(proc.pid) - before
        except (FileNotFoundError, ProcessLookupError):
            return
        if used >= IDLE_CPU_S:
            self.problem(
                "spinning", f"round {r + 1}: relay used {used:.2f}s CPU in {IDLE_S:.0f}s idle"
            )

    def _stall_probe(self, books: Books, r: int) -> None:
        """An envelope's answer time alone, then beside a writer that writes byte by byte
        for 3 s without renaming: the writer must not hold the others up."""
        contents = Contents(self.rng)

        def probe(facet: str) -> float | None:
            uid = contents.uid()
            data = contents.dumps({"session_id": "session-1", "content": f"{uid} probe"})
            t = Thrown(
                uid,
                (facet,),
                Expect.ANSWER,
                f"{uid}.json".encode(),
                reg_signature(data),
                data[:100],
                len(data),
                "session-1",
                expected_reply(uid),
                incarnation=books.life.index,
                round=r,
            )
            books.thrown.append(t)
            start = time.monotonic()
            t.placed = books.client.regular(uid, t.name, data)
            deadline = start + 10
            while time.monotonic() < deadline:
                for got in books.life.received_snapshot():
                    if uid in got.text:
                        return got.at - start
                time.sleep(0.005)
            return None

        alone = probe("probe:alone")
        builder = Builder(
            self.rng,
            books.client,
            self.outside,
            self.faults,
            lambda *a: None,
            lambda uid: False,
            (books.life.index, r),
        )
        slow = builder.slow_writer(3.0)
        books.thrown.append(slow)
        writer = threading.Thread(target=builder.plan.scenarios[0], daemon=True)
        writer.start()
        time.sleep(0.3)
        beside = probe("probe:beside-slow-writer")
        writer.join(10)
        self._settle(books, [slow], 10)

        def shown(seconds: float | None) -> str:
            return "never" if seconds is None else f"{seconds:.2f}s"

        self.probes.append(
            f"round {r + 1}: alone {shown(alone)}, beside a slow writer {shown(beside)}"
        )
        if beside is None or alone is None or beside > alone + STALL_S:
            self.problem(
                "stalled",
                f"round {r + 1}: an envelope took {shown(beside)} while another client wrote a "
                f"file byte by byte for 3 s (alone: {shown(alone)})",
            )

    # ---- the end -----------------------------------------------------------------------------

    def finish(self) -> None:
        """Turn what the judgements found beside the inputs into problems (once)."""
        for b in self.books:
            if b.judgement:
                for x in b.judgement.stray_replies[:10]:
                    self.problem("stray-reply", f"data{b.life.index}: dispatched for no input: {x}")
                for x in b.judgement.leftovers[:10]:
                    self.problem("leftover", f"data{b.life.index}: {x}")
                for x in b.judgement.stray_entries[:10]:
                    self.problem(
                        "stray-rejected",
                        f"data{b.life.index}: refused, no input has these bytes: {x}",
                    )
            for bad in b.life.status_bad:
                self.problem("status.json", f"data{b.life.index}: {bad}")

    def fates(self) -> list[Fate]:
        return [f for b in self.books if b.judgement for f in b.judgement.fates]

    def report(self) -> str:
        lines = [
            f"fuzz campaign: seed {self.seed} (rerun with RELAY_FUZZ_SEED={self.seed}), "
            f"{self.rounds_done} rounds, {len(self.books)} data directories, "
            f"{time.monotonic() - self.started_at:.0f}s wall",
        ]
        fates = self.fates()
        per_facet, overall = tally(fates)
        columns = [
            "thrown",
            "answered",
            "refused",
            "ignored",
            "consumed silently",
            "group ok",
            "FAILED",
        ]
        lines.append(f"{'category':44}" + "".join(f"{c[:9]:>10}" for c in columns))
        for facet in sorted(per_facet):
            counts = per_facet[facet]
            lines.append(f"{facet:44}" + "".join(f"{counts.get(c, 0):>10}" for c in columns))
        totals = {**overall, "thrown": sum(overall.values())}
        lines.append(f"{'TOTAL':44}" + "".join(f"{totals.get(c, 0):>10}" for c in columns))
        deaths = [d for b in self.books for d in b.life.deaths]
        samples = sum(b.life.status_samples for b in self.books)
        lines.append(
            f"kills by the test: {sum(b.life.kills for b in self.books)}; deaths not by the test: "
            f"{len(deaths)}; status.json read {samples} times, invalid "
            f"{sum(len(b.life.status_bad) for b in self.books)}; API calls "
            f"{sum(self.faults.calls.values())}; relay's notices about refused envelopes "
            f"{sum(b.judgement.notices for b in self.books if b.judgement)}"
        )
        lines += [f"latency probe: {p}" for p in self.probes]
        failed = [f for f in fates if not f.ok]
        groups: dict[tuple[str, str, tuple[str, ...]], list[Fate]] = {}
        for f in failed:
            t = f.thrown[0]
            facets = tuple(x for x in t.facets if not x.startswith("name:") or "dot" in x)
            groups.setdefault((f.label, t.expect.value, facets), []).append(f)
        if failed:
            lines.append(f"\nFAILED inputs: {len(failed)}, in {len(groups)} kinds (most first):")
        for (label, expect, facets), members in sorted(groups.items(), key=lambda kv: -len(kv[1])):
            example = members[0]
            lines.append(f"  {len(members):4} x {label} (expected: {expect}) [{', '.join(facets)}]")
            lines.append(f"         e.g. {example.thrown[0].describe()}")
            if example.detail:
                lines.append(f"         {example.detail[:300]}")
        death_kinds = Counter(d.exception for d in deaths)
        if deaths:
            lines.append(f"\nrelay died by itself {len(deaths)} times:")
        for exception, n in death_kinds.most_common():
            tail = next(d.tail for d in deaths if d.exception == exception)
            lines.append(f"  {n:4} x {exception}")
            lines += ["         | " + ln for ln in tail.splitlines()[-12:]]
        if self.problems:
            lines.append("\nother failures:")
            kinds = Counter(p.what for p in self.problems)
            for what, n in kinds.most_common():
                lines.append(f"  {n:4} x {what}")
                for p in [p for p in self.problems if p.what == what][:4]:
                    lines.append(f"         {p.detail[:1500]}")
        return "\n".join(lines)

    def failed(self) -> bool:
        return (
            bool(self.problems)
            or any(not f.ok for f in self.fates())
            or any(b.life.deaths for b in self.books)
        )
