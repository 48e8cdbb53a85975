"""The live side of the campaign: the stand-in's answers, one relay data directory at a
time (its process, kills, restarts and deaths), the sessions consuming input.txt, the
status.json watcher, and the watch on files outside the data directory."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import stat
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.fuzz.contents import SESSIONS
from tests.fuzz.model import UID_RE, expected_reply
from tests.relayproc import RelayProcess, write_config
from tests.standin.api import Action, Delay, Reply

STATES = {"running", "needs_jc", "blocked", "backoff", "stopped", "failed"}  # README


class Faults:
    """The stand-in's responder: "re:<uid>" for every turn, after the faults planned for
    that uid. A planned None falls through to the stand-in's own `[[error: ...]]`
    directive in the envelope's content; uids in `refuse` always do (a refusal that
    stays). Summarization calls are answered plainly, whatever the history holds."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.plans: dict[str, list[Action | None]] = {}
        self.refuse: set[str] = set()
        self.delays: dict[str, float] = {}
        self.calls: Counter[str] = Counter()

    def plan(self, uid: str, actions: list[Action | None]) -> None:
        with self.lock:
            self.plans[uid] = list(actions)

    def slow(self, uid: str, seconds: float) -> None:
        with self.lock:
            self.delays[uid] = seconds

    def refusing(self, uid: str) -> None:
        with self.lock:
            self.refuse.add(uid)

    def __call__(self, body: dict[str, Any]) -> Action | None:
        text = last_user_block(body)
        if not text.startswith("[from ") or text.startswith("[from relay]"):
            return Reply("summary: fuzz traffic so far")
        match = UID_RE.search(text)
        if match is None:
            return Reply("re:none")
        uid = match.group(0)
        with self.lock:
            self.calls[uid] += 1
            if uid in self.refuse:
                return None
            plan = self.plans.get(uid)
            if plan:
                return plan.pop(0)
            delay = self.delays.get(uid)
        reply = Reply(expected_reply(uid))
        return Delay(delay, reply) if delay else reply


def last_user_block(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages") or []):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        texts = [b.get("text") for b in content if isinstance(b, dict) and b.get("type") == "text"]
        return str(texts[-1]) if texts else ""
    return ""


# ---- files outside the data directory ----------------------------------------------------


class Outside:
    """Files the campaign keeps outside every data directory (hard-link and symlink
    targets): their mode, owner and bytes must never change."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir()
        self.known: dict[Path, tuple[int, int, int, str]] = {}

    def file(self, name: str, data: bytes, mode: int) -> Path:
        path = self.root / name
        path.write_bytes(data)
        os.chmod(path, mode)
        self.known[path] = self._facts(path)
        return path

    def directory(self, name: str, children: dict[str, bytes]) -> Path:
        path = self.root / name
        path.mkdir()
        for child, data in children.items():
            self.file(f"{name}/{child}", data, 0o644)
        self.known[path] = self._facts(path)
        return path

    @staticmethod
    def _facts(path: Path) -> tuple[int, int, int, str]:
        st = os.lstat(path)
        digest = ""
        if stat.S_ISREG(st.st_mode):
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        elif stat.S_ISDIR(st.st_mode):
            digest = ",".join(sorted(os.listdir(path)))
        return st.st_mode, st.st_uid, st.st_gid, digest

    def changes(self) -> list[str]:
        problems = []
        for path, facts in self.known.items():
            try:
                now = self._facts(path)
            except FileNotFoundError:
                problems.append(f"{path} is gone")
                continue
            if now != facts:
                problems.append(
                    f"{path}: mode {facts[0]:o} → {now[0]:o}, owner {facts[1]}:{facts[2]} → "
                    f"{now[1]}:{now[2]}, content {'same' if now[3] == facts[3] else 'CHANGED'}"
                )
        extra = set(self.root.rglob("*")) - set(self.known)
        problems += [f"{p}: appeared outside the data directory" for p in sorted(extra)]
        return problems

    def rebase(self) -> None:
        """Take things as they are now, so one change is reported once."""
        self.known = {p: self._facts(p) for p in self.known if os.path.lexists(p)}


# ---- sessions ------------------------------------------------------------------------------


@dataclass
class Received:
    session: str
    text: str
    at: float


class Consumer(threading.Thread):
    """A Claude Code session: read input.txt, then delete it, again and again."""

    def __init__(
        self, data: Path, session: str, sink: list[Received], lock: threading.Lock
    ) -> None:
        super().__init__(daemon=True, name=f"consumer-{session}")
        self.path = data / "dispatch" / session / "input.txt"
        self.session = session
        self.sink, self.lock = sink, lock
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                raw = self.path.read_bytes()
            except FileNotFoundError:
                time.sleep(0.004)
                continue
            except OSError:
                time.sleep(0.05)
                continue
            text = raw.decode("utf-8", "backslashreplace")
            with self.lock:
                self.sink.append(Received(self.session, text, time.monotonic()))
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


# ---- one data directory, one relay at a time ------------------------------------------------


@dataclass
class Death:
    incarnation: int
    returncode: int | None
    exception: str  # the last line of the last traceback in its log, or a note
    tail: str


class Life:
    """One data directory and the relay processes that run on it, one after another."""

    def __init__(self, index: int, root: Path, api_url: str, started: list[RelayProcess]) -> None:
        self.index = index
        root.mkdir()
        self.config = write_config(
            root,
            api_url,
            sessions=list(SESSIONS),
            history_char_cap=20000,
            max_envelope_bytes=262144,
        )
        self.relay = RelayProcess(self.config)
        started.append(self.relay)  # stopped by PID at teardown, whatever happens here
        self.data = self.relay.data
        self.received: list[Received] = []
        self.deaths: list[Death] = []
        self.status_samples = 0
        self.status_bad: list[str] = []
        self.kills = 0
        self.broken: str | None = None  # why this data directory was given up
        self.lock = threading.RLock()
        self.sink_lock = threading.Lock()
        self.halt = threading.Event()
        self._log_at = 0
        self._expected_exit = False
        self._recent_deaths: list[float] = []
        self.consumers = [Consumer(self.data, s, self.received, self.sink_lock) for s in SESSIONS]

    def start(self) -> None:
        self._spawn(wait_ready=True)
        for consumer in self.consumers:
            consumer.start()
        threading.Thread(target=self._watch, daemon=True, name="relay-watch").start()

    def _spawn(self, wait_ready: bool) -> None:
        self._log_at = self.relay.log_path.stat().st_size if self.relay.log_path.exists() else 0
        self.relay.start(wait_ready=False)
        if wait_ready:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                proc = self.relay.proc
                if proc is None or proc.poll() is not None:
                    return  # the watcher records it
                status = self.relay.status()
                if status and status.get("pid") == proc.pid:
                    return
                time.sleep(0.02)

    @property
    def alive(self) -> bool:
        proc = self.relay.proc
        return proc is not None and proc.poll() is None

    def kill_and_restart(self, wait_ready: bool) -> None:
        with self.lock:
            if self.broken or not self.alive:
                return  # the watcher deals with a death
            self._expected_exit = True
            self.relay.kill()
            self.kills += 1
            self._expected_exit = False
            self._spawn(wait_ready)

    def _watch(self) -> None:
        """Record every exit the campaign did not cause, and start relay again; a data
        directory whose relay keeps dying at once is given up."""
        while not self.halt.is_set():
            with self.lock:
                proc = self.relay.proc
                if proc is not None and proc.poll() is not None and not self._expected_exit:
                    self._died(proc.returncode)
            self._sample_status()
            time.sleep(0.03)

    def _died(self, returncode: int | None) -> None:
        log = self.relay.log_path.read_bytes()[self._log_at :].decode("utf-8", "replace")
        lines = log.splitlines()
        exception = "exited without a traceback"
        for i in range(len(lines) - 1, -1, -1):
            if lines[i].startswith("Traceback"):
                after = [ln for ln in lines[i + 1 :] if ln and not ln.startswith(" ")]
                exception = after[0] if after else lines[-1]
                break
        else:
            if lines:
                exception = f"no traceback; last line: {lines[-1][:200]}"
        self.deaths.append(Death(self.index, returncode, exception, "\n".join(lines[-25:])))
        now = time.monotonic()
        self._recent_deaths = [t for t in self._recent_deaths if now - t < 20] + [now]
        if len(self._recent_deaths) >= 5:
            self.broken = f"relay died 5 times within 20 s (last: {exception})"
            self.relay.proc = None
            return
        self._spawn(wait_ready=False)

    def _sample_status(self) -> None:
        path = self.data / "state" / "status.json"
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return
        self.status_samples += 1
        try:
            value = json.loads(raw)
            if not isinstance(value, dict) or value.get("state") not in STATES:
                raise ValueError(
                    f"state {value.get('state') if isinstance(value, dict) else value!r}"
                )
        except ValueError as exc:
            if len(self.status_bad) < 20:
                self.status_bad.append(f"{exc}: {raw[:120]!r}")

    def status(self) -> dict[str, Any]:
        return self.relay.status() or {}

    def log_errors(self, limit: int = 6) -> list[str]:
        """The most frequent error lines (and exceptions under tracebacks) in relay's log,
        numbers blanked so repeats count as one."""
        try:
            lines = self.relay.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []
        found: Counter[str] = Counter()
        for i, line in enumerate(lines):
            if " ERROR " in line or " CRITICAL " in line:
                found[re.sub(r"\d+", "N", line[9:])[:300]] += 1
            elif line.startswith("Traceback"):
                after = [x for x in lines[i + 1 : i + 80] if x and not x.startswith(" ")]
                if after:
                    found["exception: " + re.sub(r"\d+", "N", after[0])[:300]] += 1
        return [f"{n}x {text}" for text, n in found.most_common(limit)]

    def received_snapshot(self) -> list[Received]:
        with self.sink_lock:
            return list(self.received)

    def retire(self) -> int | None:
        """Stop relay with SIGTERM (its exit code is returned) and the sessions."""
        with self.lock:
            self.halt.set()
            self._expected_exit = True
            code = None
            if self.relay.proc is not None and self.relay.proc.poll() is None:
                code = self.relay.stop()
        time.sleep(0.2)
        for consumer in self.consumers:
            consumer.halt.set()
            consumer.join(5)
        return code


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far, from /proc/<pid>/stat."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
