"""One round of the campaign: every input it throws, and the client action that throws it."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.fuzz.client import Client
from tests.fuzz.contents import Content, Contents
from tests.fuzz.harness import Faults, Outside
from tests.fuzz.model import Expect, Signature, Thrown, expected_reply, reg_signature
from tests.fuzz.names import Names
from tests.standin.api import Drop, rate_limited

SPECIAL_KINDS = [
    "directory", "directory-mode-000", "directory-with-files", "directory-000-with-files",
    "symlink-to-outside-file", "symlink-to-outside-dir", "symlink-dangling", "symlink-to-itself",
    "symlink-to-relay-state", "symlink-to-dot-file", "fifo", "fifo", "socket", "socket",
]  # fmt: skip
REFUSALS = ["400", "404", "413"]  # the API refuses the request itself, every time
OPERATOR_KINDS = ["direct"] * 5 + [
    "direct-multiline", "direct-unknown", "direct-unknown", "direct-empty", "direct-odd-name",
    "text", "text", "non-utf8", "whitespace",
]  # fmt: skip

Op = Callable[[], None]
OperatorPut = Callable[[Thrown, bytes, bool], None]


@dataclass
class Plan:
    thrown: list[Thrown] = field(default_factory=list)
    ops: list[Op] = field(default_factory=list)  # quick, thrown in a random order
    scenarios: list[Op] = field(default_factory=list)  # wait for relay: own threads
    dots: list[Thrown] = field(default_factory=list)


class Builder:
    def __init__(
        self,
        rng: random.Random,
        client: Client,
        outside: Outside,
        faults: Faults,
        operator: OperatorPut,
        answered: Callable[[str], bool],
        where: tuple[int, int],  # (data directory, round)
        only: tuple[str, ...] = (),  # throw only inputs with a facet starting with one of these
    ) -> None:
        self.rng = rng
        self.contents = Contents(rng)
        self.names = Names(rng)
        self.client = client
        self.outside = outside
        self.faults = faults
        self.operator = operator
        self.answered = answered
        self.where = where
        self.only = only
        self.plan = Plan()
        self.attempted = 0

    def _unit(self, make: Callable[..., object], *args: object) -> None:
        """Make one unit of inputs; without a facet in `only`, it is dropped again."""
        plan = self.plan
        marks = len(plan.thrown), len(plan.ops), len(plan.scenarios), len(plan.dots)
        make(*args)
        new = plan.thrown[marks[0] :]
        self.attempted += len(new)
        if self.only and not any(f.startswith(self.only) for t in new for f in t.facets):
            del plan.thrown[marks[0] :], plan.ops[marks[1] :], plan.scenarios[marks[2] :]
            del plan.dots[marks[3] :]

    # ---- bookkeeping --------------------------------------------------------------------

    def _thrown(
        self,
        uid: str,
        facets: list[str],
        expect: Expect,
        name: bytes,
        data: bytes = b"",
        *,
        session: str | None = None,
        reply: str | None = None,
        signature: Signature | None = None,
        private: bool = False,
        group: str | None = None,
    ) -> Thrown:
        t = Thrown(
            uid=uid,
            facets=tuple(facets),
            expect=expect,
            name=name,
            signature=signature or reg_signature(data),
            head=data[:100],
            size=len(data),
            session=session,
            reply=reply,
            private=private,
            group=group,
            incarnation=self.where[0],
            round=self.where[1],
        )
        self.plan.thrown.append(t)
        return t

    def _envelope(
        self,
        uid: str,
        facets: list[str],
        name: bytes,
        c: Content,
        kind: str,
        *,
        group: str | None = None,
    ) -> Thrown:
        expect = c.expect
        lenient = kind != "kind:renamed-in" or not name.endswith(b".json")
        if expect is Expect.ANSWER and lenient:
            expect = Expect.EITHER  # outside the contract's letter: refusing is fine too
        if kind == "kind:hardlink-outside":
            expect = Expect.REJECT  # README: more than one hard link is refused
        return self._thrown(
            uid,
            [*facets, c.facet, kind],
            expect,
            name,
            c.data,
            session=c.session,
            reply=expected_reply(uid),
            group=group,
        )

    def _op(self, t: Thrown, action: Callable[[], bool]) -> Op:
        def run() -> None:
            t.placed = action()

        return run

    # ---- queue files ----------------------------------------------------------------------

    def file(
        self, facet: str, name: bytes, uid: str | None = None, c: Content | None = None
    ) -> None:
        """One queue file: `name`, random content, mostly staged and renamed in."""
        rng = self.rng
        uid = uid or self.contents.uid()
        c = c or self.contents.random(uid)
        kind = rng.choices(
            ["kind:renamed-in", "kind:written-in-place", "kind:mode-000", "kind:hardlink-outside"],
            weights=[88, 3, 5, 4],
        )[0]
        facets = [facet] + (["name:240-255-bytes"] if len(name) >= 240 else [])
        t = self._envelope(uid, facets, name, c, kind)
        if kind == "kind:renamed-in":
            self.plan.ops.append(self._op(t, lambda: self.client.regular(uid, name, c.data)))
        elif kind == "kind:written-in-place":
            self.plan.ops.append(self._op(t, lambda: self.client.in_place(name, c.data)))
        elif kind == "kind:mode-000":
            self.plan.ops.append(
                self._op(t, lambda: self.client.regular(uid, name, c.data, mode=0o000))
            )
        else:
            mode = rng.choice([0o644, 0o600, 0o400, 0o000, 0o755, 0o4755])
            target = self.outside.file(f"hl-{uid}", c.data, mode)
            self.plan.ops.append(self._op(t, lambda: self.client.hardlink(uid, name, target)))

    def dot(self) -> None:
        uid = self.contents.uid()
        name = self.names.dot(uid)
        c = self.contents.valid(uid)
        t = self._thrown(uid, ["name:dot", c.facet], Expect.IGNORE, name, c.data)
        self.plan.dots.append(t)
        self.plan.ops.append(self._op(t, lambda: self.client.dot(name, c.data)))

    def special(self, kind: str) -> None:
        """A queue entry that is not a regular file."""
        uid = self.contents.uid()
        name = f"{kind}-{uid}.json".encode()
        c = self.contents.valid(uid)
        facet = f"kind:{kind}"
        client = self.client
        if kind.startswith("directory"):
            children = {} if "files" not in kind else {f"{uid}.json".encode(): c.data}
            mode = 0o000 if "000" in kind else 0o755
            sig = ("dir", *sorted(n.hex() for n in children))
            t = self._thrown(uid, [facet], Expect.REJECT, name, signature=sig)
            self.plan.ops.append(self._op(t, lambda: client.directory(uid, name, children, mode)))
            return
        if kind.startswith("symlink"):
            if kind == "symlink-to-outside-file":
                target = bytes(self.outside.file(f"t-{uid}.json", c.data, 0o644))
            elif kind == "symlink-to-outside-dir":
                target = bytes(self.outside.directory(f"d-{uid}", {f"{uid}.json": c.data}))
            elif kind == "symlink-dangling":
                target = bytes(self.outside.root / f"missing-{uid}")
            elif kind == "symlink-to-itself":
                target = name
            elif kind == "symlink-to-relay-state":
                target = b"../state/history.jsonl"
            else:  # to a dot-file beside it in queue/, which relay must leave alone too
                dot_name = f".fz-target-{uid}.json".encode()
                dot = self._thrown(uid, ["name:dot"], Expect.IGNORE, dot_name, c.data)
                self.plan.dots.append(dot)
                self.plan.ops.append(self._op(dot, lambda: client.dot(dot_name, c.data)))
                target = dot_name
            t = self._thrown(uid, [facet], Expect.REJECT, name, signature=("lnk", target.hex()))
            self.plan.ops.append(self._op(t, lambda: client.symlink(uid, name, target)))
            return
        sig = ("fifo" if kind == "fifo" else "sock", uid)
        t = self._thrown(uid, [facet], Expect.REJECT, name, signature=sig)
        make = client.fifo if kind == "fifo" else client.socket
        self.plan.ops.append(self._op(t, lambda: make(uid, name)))

    # ---- sequences that wait for relay ---------------------------------------------------

    def same_name_same_mtime(self) -> None:
        """Two envelopes, one name, one mtime: the second written once relay took the first."""
        rng = self.rng
        name = rng.choice(
            [
                self.names.ascii(self.contents.uid()),
                self.names.exact(rng.choice([2, 3, 4]), 255),
                self.names.non_utf8(self.contents.uid()),
            ]
        )
        after_answer = rng.random() < 0.5
        facet = "scenario:same-name-same-mtime" + ("-after-answer" if after_answer else "")
        ua, ub = self.contents.uid(), self.contents.uid()
        a, b = self.contents.valid(ua), self.contents.valid(ub)
        ta = self._envelope(ua, [facet], name, a, "kind:renamed-in")
        tb = self._envelope(ub, [facet], name, b, "kind:renamed-in")
        mtime = time.time_ns() - rng.randrange(10**9)

        def run() -> None:
            ta.placed = self.client.regular(ta.uid, name, a.data, mtime_ns=mtime)
            if not ta.placed or not self.client.wait_taken(name):
                return
            if after_answer:
                _wait(lambda: self.answered(ta.uid), 20)
            tb.placed = self.client.regular(tb.uid, name, b.data, mtime_ns=mtime)

        self.plan.scenarios.append(run)

    def resubmit(self) -> None:
        """`cp -p` of an envelope with an id, once relay has taken (or answered) it: same
        name, mtime, bytes and id. It must be refused as a duplicate."""
        rng = self.rng
        uid = self.contents.uid()
        s = self.contents.session()
        data = self.contents.dumps(self.contents.envelope(uid, s, id=f"id-{uid}"))
        c = Content("content:valid-id", Expect.ANSWER, data, s)
        name = rng.choice([self.names.ascii(uid), self.names.exact(rng.choice([1, 2, 4]), 255)])
        after_answer = rng.random() < 0.5
        facet = "scenario:resubmit-identical" + ("-after-answer" if after_answer else "")
        group = f"resubmit-{uid}"
        first = self._envelope(uid, [facet], name, c, "kind:renamed-in", group=group)
        copy = self._envelope(uid, [facet], name, c, "kind:renamed-in", group=group)
        mtime = time.time_ns() - rng.randrange(10**9)

        def run() -> None:
            first.placed = self.client.regular(uid, name, data, mtime_ns=mtime)
            if not first.placed or not self.client.wait_taken(name):
                return
            if after_answer:
                _wait(lambda: self.answered(uid), 20)
            copy.placed = self.client.regular(uid, name, data, mtime_ns=mtime)

        self.plan.scenarios.append(run)

    def duplicate_id(self) -> None:
        """Two different envelopes with one id in one session (exactly one is answered), and
        the same id from another session (answered: ids are per session)."""
        s, other = self.rng.sample(["session-1", "session-2", "session-3"], 2)
        shared = f"shared-{self.contents.uid()}"
        group = f"dup-{shared}"
        made = []
        for session, grouped in ((s, True), (s, True), (other, False)):
            uid = self.contents.uid()
            env = self.contents.envelope(uid, session, id=shared)
            c = Content("content:valid-id", Expect.ANSWER, self.contents.dumps(env), session)
            facet = "scenario:duplicate-id" if grouped else "scenario:same-id-other-session"
            name = self.names.ascii(uid)
            t = self._envelope(
                uid, [facet], name, c, "kind:renamed-in", group=group if grouped else None
            )
            made.append((t, c))
        base = time.time_ns() - 10**9

        def run() -> None:
            for i, (t, c) in enumerate(made):
                t.placed = self.client.regular(t.uid, t.name, c.data, mtime_ns=base + i * 1000)

        self.plan.ops.append(run)

    def shared_prefix(self) -> None:
        """Long names that share a 200-byte prefix, all with one mtime, in at once."""
        names = self.names.shared_prefix(self.rng.randint(2, 4))
        mtime = time.time_ns() - self.rng.randrange(10**9)
        made = []
        for name in names:
            uid = self.contents.uid()
            c = self.contents.valid(uid) if self.rng.random() < 0.6 else self.contents.random(uid)
            facets = ["name:shared-200-byte-prefix"]
            made.append((self._envelope(uid, facets, name, c, "kind:renamed-in"), c))

        def run() -> None:
            for t, c in made:
                t.placed = self.client.regular(t.uid, t.name, c.data, mtime_ns=mtime)

        self.plan.ops.append(run)

    def slow_writer(self, seconds: float) -> Thrown:
        uid = self.contents.uid()
        name = f"slow-{uid}.json".encode()
        c = self.contents.valid(uid)
        t = self._envelope(uid, [], name, c, "kind:slow-writer-in-place")
        self.plan.scenarios.append(self._op(t, lambda: self.client.slow(name, c.data, seconds)))
        return t

    # ---- the API misbehaving ----------------------------------------------------------------

    def api_fault(self, kind: str) -> None:
        uid = self.contents.uid()
        s = self.contents.session()
        n = self.rng.randint(1, 2)
        directive = ""
        if kind in ("529", "500"):
            directive = f" [[error: {kind}]]"
            self.faults.plan(uid, [None] * n)  # fall through to the directive n times
        elif kind == "429-retry-after-0":
            self.faults.plan(uid, [rate_limited(0.0)] * n)
        elif kind == "connection-dropped":
            self.faults.plan(uid, [Drop()] * n)
        elif kind == "slow":
            self.faults.slow(uid, self.rng.uniform(0.1, 0.6))
        else:  # a refusal that stays: every call with this envelope gets it
            directive = f" [[error: {kind}]]"
            self.faults.refusing(uid)
        env = self.contents.envelope(uid, s, content=f"{uid} api {kind}{directive}")
        data = self.contents.dumps(env)
        expect = Expect.REJECT if kind in REFUSALS else Expect.ANSWER
        facets = [f"api:{kind}", "content:valid"]
        reply = expected_reply(uid)
        t = self._thrown(uid, facets, expect, self.names.ascii(uid), data, session=s, reply=reply)
        self.plan.ops.append(self._op(t, lambda: self.client.regular(uid, t.name, data)))

    # ---- the operator -----------------------------------------------------------------------

    def jc(self, kind: str) -> None:
        uid = self.contents.uid()
        c = self.contents.operator(uid, kind)
        t = self._thrown(
            uid,
            [c.facet],
            c.expect,
            b"jc_input.txt",
            c.data,
            session=c.session,
            reply=c.reply,
            private=True,
        )
        needs_target = c.session is None  # a turn: its answer goes to the last session
        if needs_target:  # so that there is one, even when RELAY_FUZZ_ONLY picks jc: alone
            primer = self.contents.uid()
            self.file("name:ascii", self.names.ascii(primer), primer, self.contents.valid(primer))
        self.plan.ops.append(lambda: self.operator(t, c.data, needs_target))

    # ---- a whole round ---------------------------------------------------------------------------

    def build(
        self, size: int, lengths: list[tuple[int, int]], refusals: bool, big_jc: bool
    ) -> Plan:
        rng = self.rng
        unit = self._unit
        for kind in SPECIAL_KINDS:
            unit(self.special, kind)
        for _ in range(2):
            unit(self.same_name_same_mtime)
            unit(self.duplicate_id)
            unit(self.shared_prefix)
        for _ in range(3):
            unit(self.resubmit)
        for kind in rng.sample(["529", "500", "429-retry-after-0", "connection-dropped"], 3):
            unit(self.api_fault, kind)
        for _ in range(4):
            unit(self.api_fault, "slow")
        for kind in REFUSALS if refusals else [rng.choice(REFUSALS)]:
            unit(self.api_fault, kind)
        unit(self.slow_writer, rng.uniform(2.0, 4.0))
        for kind in OPERATOR_KINDS + (["over-1MiB", "direct-1MiB"] if big_jc else []):
            unit(self.jc, kind)
        for _ in range(max(2, size // 50)):
            unit(self.dot)
        for width, length in lengths:
            facet = "name:ascii-length-1-255" if width == 1 else f"name:utf8-{width}-byte-chars"
            unit(self.file, facet, self.names.exact(width, length))
        while self.attempted < size:
            uid = self.contents.uid()
            which = rng.choices(["ascii", "non-utf8", "weird"], weights=[55, 25, 20])[0]
            if which == "ascii":
                unit(self.file, "name:ascii", self.names.ascii(uid), uid)
            elif which == "non-utf8":
                unit(self.file, "name:non-utf8-bytes", self.names.non_utf8(uid), uid)
            else:
                unit(self.file, "name:odd-ascii", self.names.weird(uid), uid)
        rng.shuffle(self.plan.ops)
        return self.plan


def _wait(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True
