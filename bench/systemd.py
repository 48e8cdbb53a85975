"""Benchmark (not a test): relay deployed as its Debian package under a real systemd.

Boots systemd 252 in systemd-nspawn (tests/system/nspawn.py), installs the .deb built by
tests/system/relaydeb.py (postinst byte-compiles the venv), points it at the stand-in API at
zero delay on the host's loopback (the container shares the host network namespace) and
measures, printing a table of medians and percentiles with the targets beside them:

- drop→dispatch latency, one envelope at a time. Measured *inside* the container by a small
  stdlib script (PROBE, run with the system python3) so clocks and inotify are local: it writes
  `queue/.NAME.tmp`, renames it in, and waits with inotify (ctypes) for the file to leave
  queue/ (claimed by the handler) and for `dispatch/session-1/input.txt`, which it deletes.
  The very first envelope (cold handler, first API call) and a few cold handler starts (the
  handler had exited) are reported separately from the warm stream.
- handler activation: the real relay-queue.service (`--linger 2`) is measured from the rename
  to the handler's fork (`ExecMainStartTimestampMonotonic`; CLOCK_MONOTONIC is shared with
  the container) and to the claim; its peak RSS is `VmHWM` of its MainPID, read while it
  lingers (the envelope is done by then). Then, with a runtime drop-in inside the container
  only (/run/systemd/system/relay-queue.service.d/) that removes `--linger`, the same unit,
  with its whole sandbox, is timed from trigger to inactive and from fork to exit, and
  wrapped in `/usr/bin/time` for its max RSS (cgroup v1 here: systemd 252 reports no
  MemoryCurrent and has no MemoryPeak, so cgroup accounting cannot be used).
- the conversation service: `VmRSS` of MainPID after the stream, and fork→READY=1
  (`ActiveEnterTimestampMonotonic - ExecMainStartTimestampMonotonic`) over a few restarts.

`--explain` adds what is needed to see where the time and memory go: `-X importtime` of
`relay intake queue` and of what `relay serve` imports before READY=1, the handler's fork→exit
split into sandbox set-up and Python (variants of the installed unit, empty queue), and VmRSS
after each import.

Needs root (nspawn). Builds the .deb if the tree changed (cached under dist/system-tests/).
The host's other load shows in the cold-start numbers: run it more than once.

    .venv/bin/python -m bench.systemd [--envelopes 300] [--cold 5] [--runs 10] [--explain]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from bench.foreground import percentile
from tests.system.nspawn import CommandError, Container
from tests.system.relaydeb import DATA, build_deb, config_yaml, relay_container

SESSION = "session-1"
QUEUE_UNIT = "relay-queue.service"
CONVERSATION_UNIT = "relay-conversation.service"
PROBE_PATH = "/root/relay-bench/probe.py"
DROPIN = "/run/systemd/system/relay-queue.service.d/zz-relay-bench.conf"
RUSAGE_TAG = "relay-bench-rusage"
VENV_PYTHON = "/usr/lib/relay/bin/python"

# Runs under the container's /usr/bin/python3: stdlib only, inotify through ctypes.
PROBE = r"""
import ctypes, json, os, select, struct, sys, time

IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE = 0x40, 0x80, 0x100
IN_NONBLOCK, IN_CLOEXEC = 0o4000, 0o2000000
libc = ctypes.CDLL(None, use_errno=True)


def check(ret, what):
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def events(fd):
    data = os.read(fd, 65536)
    off = 0
    while off < len(data):
        wd, mask, _cookie, length = struct.unpack_from("iIII", data, off)
        name = data[off + 16 : off + 16 + length].rstrip(b"\0").decode()
        off += 16 + length
        yield wd, mask, name


def main():
    opts = json.loads(sys.argv[1])
    data, session, count = opts["data"], opts["session"], opts["count"]
    queue = f"{data}/queue"
    rejected = f"{queue}/.rejected"
    sdir = f"{data}/dispatch/{session}"
    target = f"{sdir}/input.txt"
    if not os.path.isdir(sdir):
        raise SystemExit(json.dumps({"error": f"{sdir} does not exist"}))
    if os.path.exists(target):
        raise SystemExit(json.dumps({"error": f"{target} already exists (unconsumed reply)"}))
    fd = check(libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC), "inotify_init1")
    wq = check(libc.inotify_add_watch(fd, queue.encode(), IN_MOVED_FROM), "watch queue")
    wr = check(libc.inotify_add_watch(fd, rejected.encode(), IN_MOVED_TO), "watch rejected")
    wd = check(libc.inotify_add_watch(fd, sdir.encode(), IN_MOVED_TO | IN_CREATE), "watch dispatch")
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    samples = []
    for i in range(count):
        name = f"bench-{os.getpid()}-{i:05d}.json"
        tmp = f"{queue}/.{name}.tmp"
        body = json.dumps(
            {"session_id": session, "timestamp": "2026-11-25T00:00:00Z", "content": f"bench {i}"}
        ).encode()
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        os.fchmod(out, 0o640)  # what `relay submit` leaves: group relay-clients, via setgid
        os.write(out, body)
        os.fsync(out)
        os.close(out)
        claimed = dispatched = None
        t0 = time.monotonic_ns()
        os.rename(tmp, f"{queue}/{name}")
        deadline = t0 + int(opts["timeout_s"] * 1e9)
        while dispatched is None:
            left_ms = (deadline - time.monotonic_ns()) // 1_000_000
            if left_ms <= 0:
                raise SystemExit(json.dumps({"error": f"envelope {i}: no {target} in time",
                                             "claimed": claimed is not None}))
            if poller.poll(min(left_ms, 1000)):
                now = time.monotonic_ns()
                for w, _mask, n in events(fd):
                    if w == wq and n == name and claimed is None:
                        claimed = now
                    elif w == wr and n == name:
                        reason = open(f"{rejected}/{name}.reason").read().strip()
                        raise SystemExit(json.dumps({"error": f"envelope rejected: {reason}"}))
                    elif w == wd and n == "input.txt":
                        dispatched = now
            elif os.path.exists(target):  # cannot happen with inotify; belt and braces
                dispatched = time.monotonic_ns()
        os.unlink(target)
        samples.append({
            "t0_us": t0 // 1000,
            "claim_ms": None if claimed is None else (claimed - t0) / 1e6,
            "dispatch_ms": (dispatched - t0) / 1e6,
        })
    print(json.dumps({"samples": samples}))


main()
"""


@dataclass
class Sample:
    t0_us: int  # CLOCK_MONOTONIC of the rename, µs (same clock as systemd's *Monotonic)
    claim_ms: float | None
    dispatch_ms: float


@dataclass
class ColdRun:
    sample: Sample
    fork_ms: float  # rename → handler fork (ExecMainStartTimestampMonotonic)
    accepted_ms: float | None  # rename → first `accepted` journal entry (journald's clock)
    hwm_kb: int | None  # VmHWM of the lingering handler


@dataclass
class Activation:
    to_inactive_ms: float  # rename → unit inactive, no linger
    fork_ms: float  # rename → fork
    runtime_ms: float  # fork → main process exit (sandbox set-up, exec, relay)
    claim_ms: float | None


@dataclass
class Results:
    first: Sample | None = None
    cold: list[ColdRun] = field(default_factory=list)
    warm: list[Sample] = field(default_factory=list)
    conv_rss_kb: int | None = None
    conv_hwm_kb: int | None = None
    activations: list[Activation] = field(default_factory=list)
    maxrss_kb: list[int] = field(default_factory=list)
    time_elapsed_s: list[float] = field(default_factory=list)
    ready_ms: list[float] = field(default_factory=list)
    restart_ms: list[float] = field(default_factory=list)
    idle_rss_kb: int | None = None
    importtime: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    handler_split: dict[str, list[float]] = field(default_factory=dict)
    import_rss: list[tuple[str, float]] = field(default_factory=list)


# ----- helpers --------------------------------------------------------------------------------


@contextlib.contextmanager
def standin_api() -> Iterator[str]:
    """The stand-in Messages API (zero delay) on the host's loopback; stopped by its PID."""
    proc = subprocess.Popen(
        [sys.executable, "tests/standin/api.py", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        if not url.startswith("http://"):
            raise RuntimeError(f"stand-in API did not start (said {url!r})")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def tree_version() -> str:
    """The commit the package was built from, and whether the work tree differed."""
    done = subprocess.run(
        ["git", "describe", "--always", "--dirty"], capture_output=True, text=True, check=False
    )
    return done.stdout.strip() or "an unknown tree (no git)"


def props(c: Container, unit: str, *names: str) -> dict[str, str]:
    args = [arg for name in names for arg in ("-p", name)]
    out = c.systemctl("show", *args, unit).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def mono_ms(c: Container, unit: str, *names: str) -> dict[str, float]:
    """Monotonic timestamps (ms) of a unit; 0 means "never"."""
    return {k: int(v) / 1000 for k, v in props(c, unit, *names).items()}


def wait_inactive(c: Container, unit: str, timeout: float = 30) -> None:
    def inactive() -> bool:
        state = c.show(unit, "ActiveState")
        if state == "failed":
            raise RuntimeError(f"{unit} failed:\n{c.journal('-u', unit, '-n', '30', check=False)}")
        return state == "inactive"

    c.wait_for(inactive, timeout=timeout, what=f"{unit} inactive")


def proc_status_kb(c: Container, pid: int, *fields: str) -> dict[str, int]:
    """VmRSS/VmHWM… of a process inside the container, in kB; {} if it is gone."""
    if pid <= 0:
        return {}
    res = c.run(["cat", f"/proc/{pid}/status"], check=False)
    if res.returncode != 0:
        return {}
    values: dict[str, int] = {}
    for line in res.stdout.splitlines():
        key, _, rest = line.partition(":")
        if key in fields:
            values[key] = int(rest.split()[0])
    return values


def probe(c: Container, count: int, timeout_s: float = 30.0) -> list[Sample]:
    opts = {"data": DATA, "session": SESSION, "count": count, "timeout_s": timeout_s}
    res = c.run(
        ["python3", "-I", PROBE_PATH, json.dumps(opts)],
        check=False,
        timeout=count * timeout_s + 60,
    )
    if res.returncode != 0:
        journal = c.journal("-u", QUEUE_UNIT, "-u", CONVERSATION_UNIT, "-n", "30", check=False)
        raise RuntimeError(
            f"probe failed ({res.returncode}): {res.stdout}{res.stderr}\n--- journal ---\n{journal}"
        )
    return [Sample(**s) for s in json.loads(res.stdout)["samples"]]


def journal_after(c: Container, cursor: str, identifier: str) -> list[dict[str, Any]]:
    """Entries after `cursor` with this SYSLOG_IDENTIFIER."""
    return c.journal_since(cursor, f"SYSLOG_IDENTIFIER={identifier}")


def first_accepted_us(c: Container, cursor: str) -> int | None:
    """journald's receive time of the first relay-queue `accepted` entry after `cursor`."""
    for entry in journal_after(c, cursor, "relay-queue"):
        if entry.get("RELAY_EVENT") == "accepted":
            return int(entry["__MONOTONIC_TIMESTAMP"])
    return None


def check_run_after(fork_ms: float, sample: Sample) -> None:
    """The unit's timestamps must belong to the run our envelope triggered."""
    if fork_ms < sample.t0_us / 1000:
        raise RuntimeError(f"{QUEUE_UNIT} last started before the envelope: stale timestamps")


# ----- phases --------------------------------------------------------------------------------


def cold_run(c: Container) -> ColdRun:
    """One envelope while relay-queue.service is inactive: a fresh handler (the real unit)."""
    wait_inactive(c, QUEUE_UNIT)
    cursor = c.cursor()
    (sample,) = probe(c, 1)
    # The handler lingers 2 s after the envelope: its peak RSS so far is the run's peak.
    pid = int(c.show(QUEUE_UNIT, "MainPID") or 0)
    hwm = proc_status_kb(c, pid, "VmHWM").get("VmHWM")
    wait_inactive(c, QUEUE_UNIT)
    t = mono_ms(c, QUEUE_UNIT, "ExecMainStartTimestampMonotonic")
    check_run_after(t["ExecMainStartTimestampMonotonic"], sample)
    accepted = first_accepted_us(c, cursor)
    return ColdRun(
        sample=sample,
        fork_ms=t["ExecMainStartTimestampMonotonic"] - sample.t0_us / 1000,
        accepted_ms=None if accepted is None else (accepted - sample.t0_us) / 1000,
        hwm_kb=hwm,
    )


@contextlib.contextmanager
def queue_unit_override(c: Container, exec_start: str) -> Iterator[None]:
    """A runtime drop-in inside the throw-away container (never units/): new ExecStart=."""
    c.write_file(DROPIN, f"[Service]\nExecStart=\nExecStart={exec_start}\n")
    c.systemctl("daemon-reload")
    try:
        yield
    finally:
        c.run(["rm", "-f", DROPIN])
        c.systemctl("daemon-reload")


def activation_runs(c: Container, runs: int, rss_runs: int, res: Results) -> None:
    with queue_unit_override(c, "/usr/bin/relay intake queue"):
        for _ in range(runs):
            wait_inactive(c, QUEUE_UNIT)
            (sample,) = probe(c, 1)
            wait_inactive(c, QUEUE_UNIT)
            t = mono_ms(
                c,
                QUEUE_UNIT,
                "ExecMainStartTimestampMonotonic",
                "ExecMainExitTimestampMonotonic",
                "InactiveEnterTimestampMonotonic",
            )
            check_run_after(t["ExecMainStartTimestampMonotonic"], sample)
            t0 = sample.t0_us / 1000
            res.activations.append(
                Activation(
                    to_inactive_ms=t["InactiveEnterTimestampMonotonic"] - t0,
                    fork_ms=t["ExecMainStartTimestampMonotonic"] - t0,
                    runtime_ms=t["ExecMainExitTimestampMonotonic"]
                    - t["ExecMainStartTimestampMonotonic"],
                    claim_ms=sample.claim_ms,
                )
            )
    if not c.exists("/usr/bin/time"):
        print("note: no /usr/bin/time in the container; max RSS by rusage skipped")
        return
    # %% because systemd expands % specifiers in ExecStart=.
    wrapped = f"/usr/bin/time -f '{RUSAGE_TAG} %%M %%e' /usr/bin/relay intake queue"
    with queue_unit_override(c, wrapped):
        for _ in range(rss_runs):
            wait_inactive(c, QUEUE_UNIT)
            cursor = c.cursor()
            probe(c, 1)
            wait_inactive(c, QUEUE_UNIT)
            # GNU time reports on stderr: a stream entry, tagged with the unit by PID 1.
            for entry in journal_after(c, cursor, "relay-queue"):
                line = str(entry.get("MESSAGE", ""))
                if line.startswith(RUSAGE_TAG):
                    _, kb, elapsed = line.split()
                    res.maxrss_kb.append(int(kb))
                    res.time_elapsed_s.append(float(elapsed))


def ready_runs(c: Container, runs: int, res: Results) -> None:
    for _ in range(runs):
        # Restarts count against StartLimitBurst=5 per 10 s; reset-failed flushes the counter.
        c.systemctl("reset-failed", CONVERSATION_UNIT, check=False)
        started = time.monotonic()
        c.systemctl("restart", CONVERSATION_UNIT)  # Type=notify: returns once READY=1 arrived
        res.restart_ms.append((time.monotonic() - started) * 1000)
        t = mono_ms(
            c,
            CONVERSATION_UNIT,
            "ExecMainStartTimestampMonotonic",
            "ActiveEnterTimestampMonotonic",
        )
        res.ready_ms.append(
            t["ActiveEnterTimestampMonotonic"] - t["ExecMainStartTimestampMonotonic"]
        )
    pid = int(c.show(CONVERSATION_UNIT, "MainPID") or 0)
    res.idle_rss_kb = proc_status_kb(c, pid, "VmRSS").get("VmRSS")


def importtime_profile(c: Container, argv: list[str], env: dict[str, str]) -> list[tuple[str, int]]:
    """`python -X importtime` inside the container as user relay (.pyc already compiled):
    cumulative µs per top-level import, largest first."""
    cmd = [
        "setpriv", "--reuid=relay", "--regid=relay", "--init-groups",
        "env", *(f"{k}={v}" for k, v in env.items()), VENV_PYTHON, "-X", "importtime", *argv,
    ]  # fmt: skip
    res = c.run(cmd, check=False, timeout=60)
    totals: dict[str, int] = {}
    for line in res.stderr.splitlines():
        # "import time: SELF | CUMULATIVE | NAME", NAME indented two spaces per nesting level
        if not line.startswith("import time:") or line.count("|") != 2:
            continue
        _, cumulative, raw_name = line.split(":", 1)[1].split("|")
        if not cumulative.strip().isdigit() or raw_name.startswith("  "):
            continue  # the header, or a nested import (counted in its parent's cumulative)
        top = raw_name.strip().split(".")[0]
        totals[top] = totals.get(top, 0) + int(cumulative)
    return sorted(totals.items(), key=lambda kv: -kv[1])


# What the handler's sandbox is, for the cost split: these keys stay in the "bare" variant.
BARE_KEYS = frozenset({"Type", "User", "Group", "UMask", "Environment", "SyslogIdentifier"})
SPLIT_VARIANTS = {
    "sandbox only (/bin/true, full unit)": ("/bin/true", False),
    "no sandbox (/bin/true, bare unit)": ("/bin/true", True),
    "relay intake queue, full unit": ("/usr/bin/relay intake queue", False),
    "relay intake queue, bare unit": ("/usr/bin/relay intake queue", True),
}


def variant_unit(installed: str, exec_start: str, bare: bool) -> str:
    """relay-queue.service's [Service] section with another ExecStart= (and, if `bare`, no
    sandbox), kept loaded after each run (RemainAfterExit=) and without a start limit."""
    lines = ["[Unit]", "StartLimitIntervalSec=0", "[Service]", "RemainAfterExit=yes"]
    section = ""
    for raw in installed.splitlines():
        line = raw.strip()
        if line.startswith("["):
            section = line
            continue
        if section != "[Service]" or not line or line.startswith("#") or "=" not in line:
            continue
        key = line.split("=", 1)[0]
        if key == "ExecStart" or (bare and key not in BARE_KEYS):
            continue
        lines.append(line)
    lines.append(f"ExecStart={exec_start}")
    return "\n".join(lines) + "\n"


def handler_split(c: Container, rounds: int) -> dict[str, list[float]]:
    """fork→exit of relay-queue.service variants on an empty queue, round-robin."""
    installed = c.read_file("/lib/systemd/system/relay-queue.service")
    names = {label: f"relay-bench-split{i}.service" for i, label in enumerate(SPLIT_VARIANTS)}
    for label, (exec_start, bare) in SPLIT_VARIANTS.items():
        c.write_file(
            f"/run/systemd/system/{names[label]}", variant_unit(installed, exec_start, bare)
        )
    c.systemctl("daemon-reload")
    out: dict[str, list[float]] = {label: [] for label in SPLIT_VARIANTS}
    for _ in range(rounds):
        for label, unit in names.items():
            c.systemctl("restart", unit)  # a oneshot: returns when the process has exited
            t = mono_ms(
                c, unit, "ExecMainStartTimestampMonotonic", "ExecMainExitTimestampMonotonic"
            )
            out[label].append(
                t["ExecMainExitTimestampMonotonic"] - t["ExecMainStartTimestampMonotonic"]
            )
    for unit in names.values():
        c.systemctl("stop", unit)
        c.run(["rm", "-f", f"/run/systemd/system/{unit}"])
    c.systemctl("daemon-reload")
    return out


RSS_STEPS = (
    "logging", "yaml", "relay.config", "relay.cli", "systemd.journal", "inotify_simple",
    "relay.intake", "relay.engine", "relay.service", "httpx2", "pydantic", "anthropic",
)  # fmt: skip
RSS_SCRIPT = """
import importlib, json, sys
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
steps = [("interpreter", rss())]
for name in sys.argv[1:]:
    importlib.import_module(name)
    steps.append((name, rss()))
print(json.dumps(steps))
"""


def import_rss(c: Container) -> list[tuple[str, float]]:
    """VmRSS (kB) after each import, in order, as user relay under the package's python."""
    cmd = [
        "setpriv", "--reuid=relay", "--regid=relay", "--init-groups",
        VENV_PYTHON, "-c", RSS_SCRIPT, *RSS_STEPS,
    ]  # fmt: skip
    return [(name, float(kb)) for name, kb in json.loads(c.run(cmd).stdout)]


def explain(c: Container, res: Results) -> None:
    journal = {"INVOCATION_ID": "relay-bench"}  # so relay logs to journald, as under a unit
    res.importtime["relay intake queue"] = importtime_profile(
        c, ["/usr/bin/relay", "intake", "queue"], journal
    )
    res.importtime["relay serve (imports up to READY)"] = importtime_profile(
        c, ["-c", "import relay.cli, relay.service, anthropic, systemd.journal"], journal
    )
    res.handler_split = handler_split(c, rounds=10)
    res.import_rss = import_rss(c)


def run_bench(args: argparse.Namespace) -> Results:
    res = Results()
    deb = build_deb()
    with standin_api() as url, relay_container(deb, config_yaml(url, None)) as c:
        c.write_file(PROBE_PATH, PROBE, mode=0o755)
        print(f"measuring {deb.name} built from {tree_version()}")
        # 1. The very first envelope: cold handler and the conversation's first API call.
        wait_inactive(c, QUEUE_UNIT)
        (res.first,) = probe(c, 1)
        # 2. Cold handler starts (the handler had exited; the conversation is warm).
        for _ in range(args.cold):
            res.cold.append(cold_run(c))
        # 3. The warm stream, one envelope at a time.
        wait_inactive(c, QUEUE_UNIT)
        res.warm = probe(c, args.envelopes + args.warmup)[args.warmup :]
        pid = int(c.show(CONVERSATION_UNIT, "MainPID") or 0)
        mem = proc_status_kb(c, pid, "VmRSS", "VmHWM")
        res.conv_rss_kb, res.conv_hwm_kb = mem.get("VmRSS"), mem.get("VmHWM")
        # 4. Handler activation without the linger, real unit and sandbox.
        activation_runs(c, args.runs, args.rss_runs, res)
        # 5. Conversation start-up to READY=1.
        ready_runs(c, args.restarts, res)
        if args.explain:
            explain(c, res)
    return res


# ----- report --------------------------------------------------------------------------------


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def fmt(ms: float) -> str:
    return f"{ms:.1f} ms"


def span(values: list[float]) -> str:
    return f"{fmt(min(values))} / {fmt(max(values))}" if values else "n/a"


def mb(kb: float | None) -> str:
    return "n/a" if kb is None else f"{kb * 1024 / 1e6:.1f} MB"


def report(res: Results, args: argparse.Namespace) -> None:
    warm = [s.dispatch_ms for s in res.warm]
    cold = res.cold
    acts = res.activations
    hwms = [r.hwm_kb for r in cold if r.hwm_kb is not None]
    claims = [r.sample.claim_ms for r in cold if r.sample.claim_ms is not None]
    fork_to_claim = [r.sample.claim_ms - r.fork_ms for r in cold if r.sample.claim_ms is not None]
    accepted = [r.accepted_ms for r in cold if r.accepted_ms is not None]
    rows: list[tuple[str, str, str]] = [
        (f"drop→dispatch p50 (warm handler, n={len(warm)})", fmt(med(warm)), "≤ 150 ms"),
        ("drop→dispatch p99 (warm handler)", fmt(percentile(warm, 99)), "≤ 400 ms"),
        ("drop→dispatch max (warm handler)", fmt(max(warm)), ""),
        (
            "first envelope after start (cold handler, 1st API call)",
            fmt(res.first.dispatch_ms) if res.first else "n/a",
            "",
        ),
        (
            f"drop→dispatch, cold handler (median of {len(cold)})",
            fmt(med([r.sample.dispatch_ms for r in cold])),
            "",
        ),
        ("handler activation: drop→claimed, real unit (median)", fmt(med(claims)), "≤ 100 ms"),
        (
            f"handler run trigger→inactive, no linger (median of {len(acts)})",
            fmt(med([a.to_inactive_ms for a in acts])),
            "≤ 100 ms",
        ),
        (
            "handler peak RSS (VmHWM while lingering, max)",
            mb(max(hwms) if hwms else None),
            "≤ 25 MB",
        ),
        (
            "handler max RSS (/usr/bin/time, no linger, max)",
            mb(max(res.maxrss_kb) if res.maxrss_kb else None),
            "≤ 25 MB",
        ),
        (
            f"conversation VmRSS after {len(warm) + args.warmup + 1 + len(cold)} envelopes",
            mb(res.conv_rss_kb),
            "≤ 70 MB",
        ),
        (
            f"conversation fork→READY=1 (median of {len(res.ready_ms)})",
            fmt(med(res.ready_ms)),
            "≤ 1500 ms",
        ),
    ]
    print(
        f"\nrelay systemd benchmark: real systemd 252 in nspawn, installed .deb, "
        f"stand-in API at zero delay, {len(warm)} envelopes one at a time "
        f"after {args.warmup} warm-up ones\n(the container's root is an overlay on tmpfs, "
        "so fsync costs next to nothing here)"
    )
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'measured':>10}  target")
    for name, value, target in rows:
        print(f"{name:<{width}}  {value:>10}  {target}")

    print("\ndetails (medians unless said otherwise; MB = 10^6 bytes)")
    details = [
        ("warm drop→claimed", fmt(med([s.claim_ms for s in res.warm if s.claim_ms is not None]))),
        ("warm drop→dispatch p90", fmt(percentile(warm, 90))),
        ("cold: drop→claimed, min / max", span(claims)),
        ("cold: rename → handler fork (path unit + job)", fmt(med([r.fork_ms for r in cold]))),
        (
            "cold: handler fork → claimed",
            fmt(med(fork_to_claim)),
        ),
        ("cold: rename → `accepted` in the journal", fmt(med(accepted))),
        (
            "no linger: trigger→inactive, min / max",
            span([a.to_inactive_ms for a in acts]),
        ),
        ("no linger: rename → handler fork", fmt(med([a.fork_ms for a in acts]))),
        (
            "no linger: fork → exit (sandbox + python + intake)",
            fmt(med([a.runtime_ms for a in acts])),
        ),
        (
            "no linger: rename → claimed",
            fmt(med([a.claim_ms for a in acts if a.claim_ms is not None])),
        ),
        (
            "no linger: /usr/bin/time elapsed (10 ms resolution)",
            fmt(med([e * 1000 for e in res.time_elapsed_s])),
        ),
        (
            f"handler VmHWM per cold run (n={len(hwms)})",
            ", ".join(mb(h) for h in hwms) or "n/a",
        ),
        ("conversation VmHWM after the stream", mb(res.conv_hwm_kb)),
        ("conversation VmRSS idle after restart", mb(res.idle_rss_kb)),
        ("`systemctl restart` wall time (incl. stop)", fmt(med(res.restart_ms))),
        ("fork→READY=1 all runs", ", ".join(f"{x:.0f}" for x in res.ready_ms) + " ms"),
    ]
    dwidth = max(len(d[0]) for d in details)
    for name, value in details:
        print(f"  {name:<{dwidth}}  {value}")

    if res.handler_split:
        print("\nhandler cost split: fork→exit of relay-queue.service variants, empty queue")
        for label, values in res.handler_split.items():
            print(f"  {label:<38} median {med(values):6.1f} ms  (n={len(values)})")
    if res.import_rss:
        print("\nVmRSS after each import (user relay, the package's python):")
        prev = res.import_rss[0][1]
        for name, kb in res.import_rss:
            print(f"  {name:<20} {mb(kb):>8}  +{(kb - prev) * 1024 / 1e6:5.1f} MB")
            prev = kb
    for what, totals in res.importtime.items():
        print(f"\nimport time, {what} (cumulative, top level, user relay, .pyc present):")
        total = sum(us for _, us in totals)
        for name, us in totals[:12]:
            print(f"  {name:<28} {us / 1000:7.1f} ms")
        print(f"  {'(all top-level imports)':<28} {total / 1000:7.1f} ms")


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # so the context managers tear down


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--envelopes", type=int, default=300, help="warm stream (≥ 200)")
    parser.add_argument("--warmup", type=int, default=5, help="stream envelopes not counted")
    parser.add_argument("--cold", type=int, default=5, help="cold handler starts")
    parser.add_argument("--runs", type=int, default=10, help="handler runs without linger")
    parser.add_argument("--rss-runs", type=int, default=5, help="… wrapped in /usr/bin/time")
    parser.add_argument("--restarts", type=int, default=5, help="conversation restarts")
    parser.add_argument(
        "--explain",
        action="store_true",
        help="also: import-time profiles, handler cost split (sandbox vs python), RSS by import",
    )
    args = parser.parse_args()
    if min(args.envelopes, args.cold, args.runs, args.restarts) < 1 or args.warmup < 0:
        parser.error("--envelopes, --cold, --runs and --restarts must be at least 1")
    if os.geteuid() != 0:
        print("bench.systemd needs root (systemd-nspawn)", file=sys.stderr)
        return 2
    os.chdir(Path(__file__).resolve().parent.parent)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        res = run_bench(args)
    except CommandError as exc:
        print(f"bench.systemd: {exc}", file=sys.stderr)
        return 1
    report(res, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
