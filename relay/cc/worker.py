"""`relay cc worker`: an unattended headless Claude Code working for one relay session.

It drives `claude -p --input-format stream-json --output-format stream-json --verbose`,
where every message the worker writes is a genuine user message: no hook, no hook time-out,
no cap on consecutive turns. The loop:

1. the first message is `--task`, or else the session's first dispatched reply;
2. each `result` Claude Code prints is submitted as the session's envelope;
3. each reply relay dispatches to the session (input.txt) becomes the next user message,
   and is consumed once the turn it started has ended and its result was submitted;
4. until SIGTERM/SIGINT, or a reply that starts with the stop word `[RELAY-STOP]`.

Waiting for a reply has no time limit (an operator may answer after an hour). A `claude`
that dies mid-turn is started again with `--resume` on the same conversation and given
the same message again. The worker's own state (the conversation id, a result not yet
known to be submitted) is kept in a small file, so a restarted worker resumes too and
never submits one result twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from inotify_simple import INotify
from inotify_simple import flags as in_flags

from relay import client, fsutil
from relay.cc import identity
from relay.cc.mailbox import Mailbox, Reply
from relay.config import Config
from relay.errors import RelayError
from relay.layout import Layout

log = logging.getLogger(__name__)

STOP_WORD = "[RELAY-STOP]"
MAX_CRASHES = 5  # consecutive deaths of `claude` without a result: give up
CRASH_PAUSE_S = 2.0
RECHECK_S = 30.0
TERM_GRACE_S = 10.0


def state_dir(environ: Mapping[str, str]) -> Path:
    base = environ.get("XDG_STATE_HOME") or str(Path(environ.get("HOME", "~")) / ".local/state")
    return Path(base).expanduser() / "relay" / "cc-worker"


@dataclass
class WorkerState:
    """What survives a restart of the worker: the conversation and an unfinished hand-off."""

    path: Path
    cc_session: str | None = None
    # A result captured but not yet known to be submitted, and the reply its turn answered.
    unsent: dict[str, str] | None = None

    @classmethod
    def load(cls, path: Path) -> WorkerState:
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls(path)
        except (OSError, ValueError) as exc:
            raise RelayError(f"cannot read the worker state {path}: {exc}") from exc
        unsent = raw.get("unsent")
        return cls(
            path,
            raw.get("cc_session") if isinstance(raw.get("cc_session"), str) else None,
            unsent if isinstance(unsent, dict) else None,
        )

    def save(self) -> None:
        fsutil.makedirs(self.path.parent, 0o700)
        data = json.dumps({"cc_session": self.cc_session, "unsent": self.unsent}, sort_keys=True)
        fsutil.atomic_write(self.path, data.encode() + b"\n", 0o600)


@dataclass
class Turn:
    """One user message sent to Claude Code and what it came from."""

    text: str
    reply: Reply | None  # None for --task


@dataclass
class Claude:
    """One running `claude -p` in stream-json mode, read line by line without blocking."""

    proc: subprocess.Popen[bytes]
    buffer: bytes = b""
    lines: list[dict[str, Any]] = field(default_factory=list)

    @property
    def stdout_fd(self) -> int:
        assert self.proc.stdout is not None
        return self.proc.stdout.fileno()

    def send(self, text: str) -> None:
        message = {"type": "user", "message": {"role": "user", "content": text}}
        stdin: IO[bytes] | None = self.proc.stdin
        assert stdin is not None
        stdin.write(json.dumps(message).encode() + b"\n")
        stdin.flush()

    def read_available(self) -> bool:
        """Read what is there; False at end of output."""
        chunk = os.read(self.stdout_fd, 1 << 16)
        if not chunk:
            return False
        self.buffer += chunk
        *complete, self.buffer = self.buffer.split(b"\n")
        for line in complete:
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except ValueError:
                log.warning("claude printed a line that is not JSON: %.200r", line)
                continue
            if isinstance(value, dict):
                self.lines.append(value)
        return True

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                if self.proc.stdin is not None:
                    self.proc.stdin.close()
            self.proc.terminate()
            try:
                self.proc.wait(TERM_GRACE_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                if pipe is not None:
                    pipe.close()


class Stopped(Exception):
    """SIGTERM or SIGINT arrived."""


class Worker:
    def __init__(
        self,
        config: Config,
        session: str,
        *,
        claude: str,
        claude_args: Sequence[str],
        environ: Mapping[str, str],
        task: str | None = None,
        out: IO[str] | None = None,
    ) -> None:
        client.check_session(config, session)
        self.config = config
        self.session = session
        self.layout = Layout(config.data_dir)
        self.mailbox = Mailbox(self.layout, session)
        self.claude_cmd = claude
        self.claude_args = list(claude_args)
        self.task = task
        self.out = out or sys.stderr
        self.env = {k: v for k, v in environ.items() if k not in ("CLAUDECODE", identity.PID_ENV)}
        self.env.update(
            {
                identity.SESSION_ENV: session,
                identity.WORKER_ENV: "1",
                "RELAY_CONFIG": str(config.source.resolve()) if config.source else "",
            }
        )
        cwd = os.getcwd()
        key = hashlib.sha256(f"{config.source}\0{cwd}".encode()).hexdigest()[:12]
        self.state = WorkerState.load(state_dir(environ) / f"{session}-{key}.json")
        if task is not None:
            self.state.cc_session = None  # a new task is a new conversation
        me = identity.process(os.getpid())
        assert me is not None
        self.me = me
        self.cwd = cwd
        self.stopping = False
        self.rounds = 0
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)

    # --- plumbing ----------------------------------------------------------------------

    def say(self, message: str) -> None:
        print(f"relay cc worker {self.session}: {message}", file=self.out, flush=True)

    def _on_signal(self, signum: int, frame: object) -> None:
        self.stopping = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def _start_claude(self) -> Claude:
        args = [self.claude_cmd, "-p", "--input-format", "stream-json"]
        args += ["--output-format", "stream-json", "--verbose"]
        if self.state.cc_session:
            args += ["--resume", self.state.cc_session]
        args += self.claude_args
        try:
            proc = subprocess.Popen(
                args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=self.env, cwd=self.cwd
            )
        except OSError as exc:
            raise RelayError(f"cannot start {self.claude_cmd}: {exc.strerror}") from exc
        how = f"resuming {self.state.cc_session}" if self.state.cc_session else "new conversation"
        self.say(f"started claude (pid {proc.pid}, {how})")
        return Claude(proc)

    # --- the loop ----------------------------------------------------------------------

    def run(self) -> int:
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        self.mailbox.attach(self.me, None, "worker", self.cwd)
        claude: Claude | None = None
        try:
            self._finish_unsent()
            turn = Turn(self.task, None) if self.task is not None else None
            with INotify() as inotify:
                inotify.add_watch(self.mailbox.directory, in_flags.CREATE | in_flags.MOVED_TO)
                while not self.stopping:
                    if turn is None:
                        turn = self._next_reply(inotify)
                        if turn is None:
                            break  # stopped while waiting, or the stop word
                    claude = self._round(claude, turn)
                    turn = None
        except Stopped:
            pass
        finally:
            if claude is not None:
                claude.stop()
            self.mailbox.detach(self.me)
            for sig, handler in old.items():
                signal.signal(sig, handler)
            os.close(self._wake_r)
            os.close(self._wake_w)
        self.say(f"stopped after {self.rounds} rounds")
        return 0

    def _finish_unsent(self) -> None:
        """A previous worker captured a result but may have died before submitting it."""
        unsent = self.state.unsent
        if unsent is None:
            return
        self._submit(unsent["text"], unsent["id"])  # relay refuses it if it got there before
        if unsent.get("tag"):
            self.mailbox.consume_tag(self.me, unsent["tag"])  # the claim names the dead one
        self.state.unsent = None
        self.state.save()

    def _next_reply(self, inotify: INotify) -> Turn | None:
        """Wait, without a time limit, for the session's next reply; claim it."""
        announced = False
        while not self.stopping:
            reply = self.mailbox.take(self.me, self.state.cc_session)
            if reply is not None:
                if reply.text.strip().startswith(STOP_WORD):
                    self.say(f"got {STOP_WORD}; stopping")
                    self.mailbox.consume(self.me, lambda tag: True)
                    return None
                self.say(f"reply received ({len(reply.text)} characters)")
                return Turn(reply.text, reply)
            if not announced:
                self.say("waiting for the next reply")
                announced = True
            # No time limit; the timeout only re-checks a reply whose holder may have died.
            ready, _, _ = select.select([inotify.fd, self._wake_r], [], [], RECHECK_S)
            if inotify.fd in ready:
                inotify.read(timeout=0)
        return None

    def _round(self, claude: Claude | None, turn: Turn) -> Claude | None:
        """Send `turn` and see it through to a submitted result, restarting a dead claude."""
        crashes = 0
        while True:
            if claude is None or claude.proc.poll() is not None:
                if claude is not None:
                    claude.stop()
                claude = self._start_claude()
            try:
                claude.send(turn.text)
            except OSError:  # it died just now: the same as dying mid-turn
                result = None
            else:
                result = self._await_result(claude)
            if result is not None:
                break
            code = claude.proc.wait()
            claude.stop()
            claude = None
            crashes += 1
            if crashes >= MAX_CRASHES:
                raise RelayError(
                    f"claude exited {crashes} times in a row without finishing a turn "
                    f"(last exit status {code}); giving up"
                )
            self.say(f"claude exited (status {code}) mid-turn; resuming the conversation")
            time.sleep(CRASH_PAUSE_S)
        text = str(result.get("result") or "")
        if result.get("is_error"):
            text = text or f"(Claude Code ended the turn with an error: {result.get('subtype')})"
        marker = f"{self.state.cc_session}\0{result.get('uuid')}\0{text}"
        envelope_id = "cc-" + hashlib.sha256(marker.encode()).hexdigest()[:32]
        self.state.unsent = {
            "id": envelope_id,
            "text": text,
            "tag": turn.reply.tag if turn.reply else "",
        }
        self.state.save()
        self._submit(text, envelope_id)
        self._consume(turn.reply.tag if turn.reply else None)
        self.state.unsent = None
        self.state.save()
        self.rounds += 1
        self.say(f"round {self.rounds}: submitted {len(text)} characters")
        return claude

    def _await_result(self, claude: Claude) -> dict[str, Any] | None:
        """The next `result` line; None if claude's output ended first."""
        while True:
            while claude.lines:
                line = claude.lines.pop(0)
                session = line.get("session_id")
                if isinstance(session, str) and session != self.state.cc_session:
                    self.state.cc_session = session
                    self.state.save()
                if line.get("type") == "result":
                    return line
            if self.stopping:
                raise Stopped
            ready, _, _ = select.select([claude.stdout_fd, self._wake_r], [], [])
            if self._wake_r in ready and self.stopping:
                raise Stopped
            if claude.stdout_fd in ready and not claude.read_available():
                return None

    def _submit(self, text: str, envelope_id: str) -> None:
        if not text.strip():
            self.say("the turn ended with no text; nothing to submit")
            return
        client.submit(self.config, self.session, text, envelope_id)

    def _consume(self, tag: str | None) -> None:
        if tag:
            self.mailbox.consume(self.me, lambda t: t == tag)
