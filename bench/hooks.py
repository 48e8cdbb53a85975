"""Benchmark (not a test): the Claude Code hooks' wall time, one hook run at a time.

A hook runs on every turn of every session, so it must start fast (target: p50 ≤ 100 ms per
hook, and no `anthropic` import). This runs the real hook command exactly as Claude Code
does, `sh -c '"<repo>/claude-code/relay/hooks/relay-hook" EVENT'` with the hook's JSON on
stdin, against a temporary data dir and config (no relay service runs: the Stop hook only
writes an envelope into queue/, which is cleared between runs). The bench process plays
Claude Code: it is registered in $HOME/.claude/sessions/PID.json, so the hooks find it as
their Claude Code process, and the replies they claim are claimed for it.

Each case is timed from just before the fork to the child's exit (what Claude Code waits
for), N runs after a few warm-ups (the first run writes the .pyc files). Before each run the
dispatch directory is put back into the case's starting state (input.txt, .relay-claim,
queue/), outside the timed part. Then each event runs once under `python -X importtime`
(the console script `.venv/bin/relay` itself, same stdin and environment): whether
`anthropic` (or anything else outside the standard library) is imported, how many modules
are, and the slowest imports of the Stop hook. Last, where the Stop hook's time goes inside
Python (PHASES: import relay.cli, import relay.cc.hooks, run the hook),
beside the floors: `sh -c true` and the interpreter's own start-up.

The numbers move with the machine's other load (the load average is printed): compare runs
made on a quiet machine.

    .venv/bin/python -m bench.hooks [--runs 30] [--warmup 3]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.foreground import percentile
from relay import fsutil
from relay.cc import identity
from relay.cc.hooks import frame
from relay.cc.mailbox import Mailbox
from relay.layout import Layout
from tests.relayproc import write_config

ROOT = Path(__file__).resolve().parent.parent
HOOK = ROOT / "claude-code" / "relay" / "hooks" / "relay-hook"
PLUGIN_ROOT = HOOK.parent.parent
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
RELAY = ROOT / ".venv" / "bin" / "relay"
SESSION = "session-1"
SESSIONS = ("session-1", "session-2")
TARGET_MS = 100.0
PHASES_NOTE = "after the interpreter's start-up, which is the `python -c pass` floor"
MODEL = "claude-opus-4-7"

# What `.venv/bin/relay cc hook EVENT` does, step by step, timed from inside the process
# (the interpreter's own start-up is the `python -c pass` floor). Prints JSON on stderr.
PHASES = """
import time
t0 = time.perf_counter()
import os, sys
import relay.cli
t1 = time.perf_counter()
from relay.cc import hooks  # `relay cc hook` goes straight here: no argument parser
t3 = time.perf_counter()
code = hooks.main(sys.argv[1], sys.stdin, os.environ)
t4 = time.perf_counter()
import json
print(json.dumps({"import relay.cli": t1 - t0,
                  "import relay.cc.hooks (after relay.cli)": t3 - t1,
                  "hooks.main() (config, files, fsync)": t4 - t3}), file=sys.stderr)
"""

# What a turn's final message looks like: a few KB of markdown.
ASSISTANT_MESSAGE = (
    "Done. Summary of this turn:\n\n"
    + "".join(
        f"- `src/module_{i}.py`: refactored `handle_{i}()` to take the parsed request instead "
        f"of the raw bytes; added a regression test in `tests/test_module_{i}.py` (passes).\n"
        for i in range(30)
    )
    + "\nAll 412 tests pass (`make test`, 38.2 s). Open question for you: should the retry "
    "budget be per request or per session? I left it per request for now.\n"
)
REPLY_TEXT = (
    "[from chat-Claude]\nGood. Keep the retry budget per request. Next: "
    + "write the migration notes for the changed signatures, one paragraph each. " * 12
)


@dataclass(frozen=True)
class Run:
    seconds: float
    returncode: int
    stdout: str
    stderr: str


@dataclass(frozen=True)
class Case:
    label: str
    event: str
    prepare: Callable[[], dict[str, Any]]  # set the files up; return the hook's stdin JSON
    check: Callable[[Run], str | None]  # None if the hook did what it should
    bound: bool = True


class Bench:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.config = write_config(work, "http://127.0.0.1:9")  # no API is ever called
        self.layout = Layout(work / "data")
        self.layout.ensure_all(SESSIONS)
        self.mailbox = Mailbox(self.layout, SESSION)
        self.home = work / "home"
        self.project = work / "project"
        self.unbound_project = work / "elsewhere"
        for d in (self.project, self.unbound_project):
            d.mkdir()
        self.cc_session = str(uuid.uuid4())
        slug = str(self.project).replace("/", "-")
        self.transcript = self.home / ".claude" / "projects" / slug / f"{self.cc_session}.jsonl"
        self.transcript.parent.mkdir(parents=True)
        line = {"type": "assistant", "message": {"role": "assistant", "content": "x" * 2000}}
        self.transcript.write_text((json.dumps(line) + "\n") * 100)  # ~200 KB
        # This process is "Claude Code": its live-session registry entry, as Claude Code has.
        registry = self.home / ".claude" / "sessions"
        registry.mkdir(parents=True)
        (registry / f"{os.getpid()}.json").write_text(
            json.dumps({"pid": os.getpid(), "sessionId": self.cc_session, "cwd": str(self.project)})
        )
        owner = identity.process(os.getpid())
        assert owner is not None
        self.owner = owner
        base = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("RELAY_", "CLAUDE", "ANTHROPIC_", "PYTHON"))
        }
        base.update({"HOME": str(self.home), "CLAUDE_PLUGIN_ROOT": str(PLUGIN_ROOT)})
        self.env_bound = {
            **base,
            "RELAY_SESSION": SESSION,
            "RELAY_CONFIG": str(self.config),
            "CLAUDE_PROJECT_DIR": str(self.project),
        }
        self.env_unbound = {**base, "CLAUDE_PROJECT_DIR": str(self.unbound_project)}

    # --- state of the dispatch directory and the queue -----------------------------------

    def reset(self) -> None:
        for path in (self.mailbox.input, self.mailbox.claim_path):
            path.unlink(missing_ok=True)
        for entry in self.layout.queue.iterdir():
            if entry.is_file():
                entry.unlink()

    def put_reply(self) -> None:
        """What relay's delivery does: input.txt renamed into place."""
        fsutil.atomic_write(self.mailbox.input, REPLY_TEXT.encode(), 0o640, durable=False)

    def delivered(self, seen: bool) -> str:
        """A reply claimed by this "Claude Code" (and, if `seen`, taken in): the text the
        model got, as the deliver hook framed it."""
        self.put_reply()
        reply = self.mailbox.take(self.owner, self.cc_session)
        assert reply is not None
        text = frame(SESSION, reply)
        if seen:
            assert self.mailbox.mark_seen(self.owner, text)
        return text

    def queued(self) -> int:
        return sum(1 for e in self.layout.queue.iterdir() if e.is_file())

    # --- hook inputs ----------------------------------------------------------------------

    def common(self, event_name: str, cwd: Path | None = None) -> dict[str, Any]:
        return {
            "session_id": self.cc_session,
            "transcript_path": str(self.transcript),
            "cwd": str(cwd or self.project),
            "hook_event_name": event_name,
        }

    def session_start(self) -> dict[str, Any]:
        return {**self.common("SessionStart"), "source": "startup", "model": MODEL}

    def file_changed(self) -> dict[str, Any]:
        return {
            **self.common("FileChanged"),
            "file_path": str(self.mailbox.input),
            "event": "change",
        }

    def prompt(self, text: str) -> dict[str, Any]:
        return {
            **self.common("UserPromptSubmit"),
            "prompt_id": str(uuid.uuid4()),
            "permission_mode": "default",
            "prompt": text,
        }

    def stop(self, cwd: Path | None = None) -> dict[str, Any]:
        return {
            **self.common("Stop", cwd),
            "prompt_id": str(uuid.uuid4()),
            "stop_hook_active": False,
            "last_assistant_message": ASSISTANT_MESSAGE,
            "background_tasks": [],
            "session_crons": [],
        }

    def stop_failure(self) -> dict[str, Any]:
        # The hook reads only the common fields; the error fields are illustrative.
        return {
            **self.common("StopFailure"),
            "prompt_id": str(uuid.uuid4()),
            "error": "rate_limit",
            "error_details": "429 rate_limit_error",
        }

    def session_end(self) -> dict[str, Any]:
        return {**self.common("SessionEnd"), "reason": "prompt_input_exit"}

    # --- running a hook -------------------------------------------------------------------

    def hook_command(self, event: str) -> list[str]:
        return ["sh", "-c", f'"{HOOK}" {event}']

    def run(self, case: Case) -> Run:
        data = json.dumps(case.prepare()).encode()
        env = self.env_bound if case.bound else self.env_unbound
        start = time.perf_counter()
        proc = subprocess.run(
            self.hook_command(case.event), input=data, env=env, capture_output=True, check=False
        )
        elapsed = time.perf_counter() - start
        return Run(
            elapsed, proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode()
        )

    def importtime(self, case: Case) -> str:
        data = json.dumps(case.prepare()).encode()
        env = self.env_bound if case.bound else self.env_unbound
        proc = subprocess.run(
            [str(VENV_PYTHON), "-X", "importtime", str(RELAY), "cc", "hook", case.event],
            input=data,
            env=env,
            capture_output=True,
            check=False,
        )
        return proc.stderr.decode(errors="replace")

    def phases(self, case: Case, runs: int) -> dict[str, float]:
        """Medians, in seconds, of where a hook's time goes inside Python (PHASES)."""
        samples: dict[str, list[float]] = {}
        for _ in range(runs):
            data = json.dumps(case.prepare()).encode()
            proc = subprocess.run(
                [str(VENV_PYTHON), "-c", PHASES, case.event],
                input=data,
                env=self.env_bound,
                capture_output=True,
                check=False,
            )
            lines = proc.stderr.decode(errors="replace").strip().splitlines()
            if proc.returncode != 0 or not lines:
                raise RuntimeError(f"phase probe failed: {proc.stderr.decode(errors='replace')}")
            for name, value in json.loads(lines[-1]).items():
                samples.setdefault(name, []).append(value)
        return {name: statistics.median(values) for name, values in samples.items()}

    def floor(self, argv: list[str], runs: int, warmup: int) -> list[float]:
        samples = []
        for i in range(warmup + runs):
            start = time.perf_counter()
            subprocess.run(argv, stdin=subprocess.DEVNULL, env=self.env_bound, check=True)
            if i >= warmup:
                samples.append(time.perf_counter() - start)
        return samples

    # --- the cases ------------------------------------------------------------------------

    def cases(self) -> list[Case]:
        def silent(expect: int = 0) -> Callable[[Run], str | None]:
            def check(r: Run) -> str | None:
                if r.returncode != expect or r.stdout.strip() or r.stderr.strip():
                    return f"expected exit {expect} and no output"
                return None

            return check

        def started(r: Run) -> str | None:
            try:
                out = json.loads(r.stdout)
            except ValueError:
                out = {}
            if r.returncode != 0 or "hookSpecificOutput" not in out or "systemMessage" in out:
                return "expected the SessionStart output, no systemMessage"
            return None

        def delivered(r: Run) -> str | None:
            if r.returncode != 2 or not r.stderr.startswith("Message from your coordinator"):
                return "expected exit 2 with the framed reply on stderr"
            return None

        def submitted(r: Run) -> str | None:
            return silent()(r) or (None if self.queued() == 1 else "expected one envelope")

        def consumed(r: Run) -> str | None:
            if self.mailbox.input.exists() or self.mailbox.claim_path.exists():
                return "expected input.txt and the claim consumed"
            return submitted(r)

        def fresh(make: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
            def prepare() -> dict[str, Any]:
                self.reset()
                return make()

            return prepare

        def with_reply() -> dict[str, Any]:
            self.reset()
            self.put_reply()
            return self.file_changed()

        def prompt_carrying() -> dict[str, Any]:
            self.reset()
            return self.prompt(self.delivered(seen=False))

        def stop_after_reply() -> dict[str, Any]:
            self.reset()
            self.delivered(seen=True)
            return self.stop()

        return [
            Case(
                "unbound project (shell fast path), stop",
                "stop",
                fresh(lambda: self.stop(self.unbound_project)),
                silent(),
                bound=False,
            ),
            Case("session-start", "session-start", fresh(self.session_start), started),
            Case("deliver, no input.txt", "deliver", fresh(self.file_changed), silent()),
            Case("deliver, input.txt: claim + exit 2", "deliver", with_reply, delivered),
            Case(
                "prompt, no reply in flight",
                "prompt",
                fresh(lambda: self.prompt("go on")),
                silent(),
            ),
            Case("prompt carrying a reply (claim → seen)", "prompt", prompt_carrying, silent()),
            Case("stop: submit the envelope", "stop", fresh(self.stop), submitted),
            Case("stop after a reply: submit + consume", "stop", stop_after_reply, consumed),
            Case("stop-failure", "stop-failure", fresh(self.stop_failure), silent()),
            Case("session-end", "session-end", fresh(self.session_end), silent()),
        ]


@dataclass(frozen=True)
class Import:
    name: str
    self_us: int
    cumulative_us: int
    chain: str  # who imported it: "relay.cli > relay.client > relay.config > yaml"


def parse_importtime(stderr: str) -> list[Import]:
    rows: list[tuple[str, int, int, int]] = []
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "imported package" in line:
            continue
        own, cumulative, name = line.split(":", 1)[1].split("|", 2)
        raw = name.rstrip()[1:]  # drop the one space after "|"
        depth = (len(raw) - len(raw.lstrip(" "))) // 2
        rows.append((raw.strip(), depth, int(own), int(cumulative)))
    # A module's line follows those of what it imported: its parent is the next line up a level.
    imports = []
    for i, (name, depth, self_us, cumulative_us) in enumerate(rows):
        chain, want = [name], depth - 1
        for other, other_depth, _, _ in rows[i + 1 :]:
            if want < 0:
                break
            if other_depth == want:
                chain.insert(0, other)
                want -= 1
        imports.append(Import(name, self_us, cumulative_us, " > ".join(chain)))
    return imports


def third_party(imports: list[Import]) -> list[str]:
    """Top-level packages from outside the standard library that were really imported
    (-X importtime also lists attempts that failed, such as `nt` or `org`)."""
    tops = {i.name.split(".")[0] for i in imports}
    found = []
    for top in sorted(tops - {"relay", "bench", "tests"}):
        if top in sys.stdlib_module_names or top.startswith("_"):
            continue
        with contextlib.suppress(ImportError, ValueError):
            if importlib.util.find_spec(top) is not None:
                found.append(top)
    return found


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def row(label: str, samples: list[float], target: str) -> str:
    return (
        f"| {label} | {ms(statistics.median(samples))} ms | {ms(percentile(samples, 90))} ms | "
        f"{ms(max(samples))} ms | {target} |"
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    if not os.access(RELAY, os.X_OK):
        print(f"bench.hooks: no {RELAY}: run `bash scripts/setup` first", file=sys.stderr)
        return 2
    began, load_before = time.perf_counter(), os.getloadavg()[0]
    results: list[tuple[Case, list[float]]] = []
    importtimes: dict[str, list[Import]] = {}
    with tempfile.TemporaryDirectory(prefix="relay-bench-hooks-") as tmp:
        bench = Bench(Path(tmp))
        fs = fs_type(Path(tmp))
        cases = bench.cases()
        for case in cases:
            samples = []
            for i in range(args.warmup + args.runs):
                run = bench.run(case)
                problem = case.check(run)
                if problem:
                    print(
                        f"bench.hooks: {case.label}: {problem}; got exit {run.returncode}, "
                        f"stdout {run.stdout.strip()!r}, stderr {run.stderr.strip()!r}",
                        file=sys.stderr,
                    )
                    return 1
                if i >= args.warmup:
                    samples.append(run.seconds)
            results.append((case, samples))
            if case.bound and case.event not in importtimes:
                importtimes[case.event] = parse_importtime(bench.importtime(case))
        stop_case = next(c for c in cases if c.event == "stop" and c.bound)
        phases = bench.phases(stop_case, 10)
        baseline = subprocess.run(
            [str(VENV_PYTHON), "-X", "importtime", "-c", "pass"],
            env=bench.env_bound,
            capture_output=True,
            check=True,
        )
        importtimes["(python -c pass)"] = parse_importtime(baseline.stderr.decode())
        floors = [
            ("floor: `sh -c true`", bench.floor(["sh", "-c", "true"], args.runs, 1)),
            (
                "floor: `sh -c 'python -c pass'` (the venv's python)",
                bench.floor(["sh", "-c", f'"{VENV_PYTHON}" -c pass'], args.runs, 1),
            ),
            (
                "floor: `sh -c 'python -S -c pass'` (no site)",
                bench.floor(["sh", "-c", f'"{VENV_PYTHON}" -S -c pass'], args.runs, 1),
            ),
        ]
    elapsed = time.perf_counter() - began

    print(
        f"\nrelay hooks benchmark: {args.runs} runs per case after {args.warmup} warm-ups, "
        f"`sh -c '\"relay-hook\" EVENT'` with the hook JSON on stdin, data dir on {fs}; "
        f"nproc {os.cpu_count()}, load average {load_before:.2f} before, "
        f"{os.getloadavg()[0]:.2f} after; took {elapsed:.0f} s"
    )
    print("\n| hook | p50 | p90 | max | target |")
    print("|---|---|---|---|---|")
    for case, samples in results:
        missed = statistics.median(samples) * 1000 > TARGET_MS
        print(row(case.label, samples, f"≤ {TARGET_MS:.0f} ms" + (" (missed)" if missed else "")))
    for label, samples in floors:
        print(row(label, samples, "—"))

    print(f"\nwhere the stop hook's time goes inside Python (medians of 10 runs; {PHASES_NOTE}):\n")
    print("| step | median |")
    print("|---|---|")
    for name, seconds in phases.items():
        print(f"| {name} | {ms(seconds)} ms |")

    print("\nimports (`python -X importtime .venv/bin/relay cc hook EVENT`, once each):\n")
    print("| event | modules | sum of top-level imports | `anthropic` | outside the stdlib |")
    print("|---|---|---|---|---|")
    for event, imports in importtimes.items():
        total = sum(i.cumulative_us for i in imports if " > " not in i.chain)
        anthropic = any(i.name.split(".")[0] == "anthropic" for i in imports)
        print(
            f"| {event} | {len({i.name for i in imports})} | {total / 1000:.1f} ms | "
            f"{'IMPORTED' if anthropic else 'no'} | {', '.join(third_party(imports)) or '—'} |"
        )

    print("\nslowest imports of the stop hook (cumulative; -X importtime inflates them):\n")
    print("| module | cumulative | self | imported by |")
    print("|---|---|---|---|")
    for imp in sorted(importtimes["stop"], key=lambda i: i.cumulative_us, reverse=True)[:12]:
        by = " > ".join(imp.chain.split(" > ")[:-1]) or "(top level)"
        cumulative, own = imp.cumulative_us / 1000, imp.self_us / 1000
        print(f"| {imp.name} | {cumulative:.1f} ms | {own:.1f} ms | {by} |")
    return 0


def fs_type(path: Path) -> str:
    """The file system type of `path` (fsync costs differ: tmpfs is free, ext4 is not)."""
    best, kind = "", "?"
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return kind
    resolved = str(path.resolve())
    for line in mounts:
        fields = line.split()
        if (
            len(fields) >= 3
            and (resolved + "/").startswith(fields[1].rstrip("/") + "/")
            and len(fields[1]) >= len(best)
        ):
            best, kind = fields[1], fields[2]
    return kind


if __name__ == "__main__":
    raise SystemExit(main())
