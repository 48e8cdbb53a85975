"""One driver over every way relay is deployed, so that one scenario suite (tests/test_e2e.py)
runs against each of them. A driver touches relay only through the README's ⚑ contract:
files under the data root, the `relay` command line, status.json, and the journal fields
(which the foreground appends to its log lines).

- `Foreground` (here): a real `relay run` process on this machine (tests/relayproc.py).
- `Packaged` (tests/system/packaged.py): the real Debian package, installed by apt in a
  booted container with systemd 252 as PID 1.

A path is relative to the data root, or absolute on relay's machine (inside the container
for `Packaged`). Programs are files in tests/programs/, run as root on relay's machine.
"""

from __future__ import annotations

import abc
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, TypeVar

import yaml

from relay.clock import TEST_CLOCK_ENV
from tests.relayproc import RelayProcess, wait_for
from tests.standin.api import StandinAPI
from tests.standin.ntfy import StandinNtfy

PROGRAMS = Path(__file__).resolve().parent / "programs"
SESSIONS = ("session-1", "session-2")
TOPIC = "relay-test"
DEFAULT_KEY = "sk-deployment-test"
TIMEOUT = 30.0

T = TypeVar("T")
Status = dict[str, Any]
Event = dict[str, Any]  # journal fields: RELAY_EVENT, RELAY_SESSION, ..., MESSAGE


def input_txt(session: str) -> str:
    return f"dispatch/{session}/input.txt"


class Deployment(abc.ABC):
    """relay, installed one way or another, freshly for each test (`reset`)."""

    kind: str
    poll_interval = 0.01

    def __init__(self, api: StandinAPI, ntfy: StandinNtfy) -> None:
        self.api = api
        self.ntfy = ntfy
        self.key: str | None = None  # the API key relay was given

    def config(self, **overrides: Any) -> dict[str, Any]:
        """relay's config: two sessions, the stand-in API and ntfy, then `overrides`."""
        return {
            "sessions": list(SESSIONS),
            "anthropic": {"base_url": self.api.url, "timeout_s": 30},
            "ntfy": {"server": self.ntfy.url, "topic": TOPIC},
            **overrides,
        }

    # ----- what each deployment does its own way ------------------------------------------

    @abc.abstractmethod
    def reset(
        self, key: str | None = DEFAULT_KEY, *, ntfy_token: str | None = None, **config: Any
    ) -> None:
        """A fresh install: no data, `config` over config(), `key` (None: none), the ntfy
        access token where the README says to put it (None: none), running."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop what this driver started."""

    @abc.abstractmethod
    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """The `relay` command, run by root (the operator) with relay's config."""

    @abc.abstractmethod
    def path(self, path: str = "") -> str:
        """The absolute path on relay's machine."""

    @abc.abstractmethod
    def scratch(self, name: str) -> str:
        """An absolute path on relay's machine, outside relay's files, for a test's own."""

    @abc.abstractmethod
    def read_bytes(self, path: str) -> bytes | None:
        """A file's bytes, None if there is no such file."""

    @abc.abstractmethod
    def listing(self, path: str) -> list[str]:
        """Every name in a directory, dot-files included, sorted."""

    @abc.abstractmethod
    def exists(self, path: str) -> bool: ...

    @abc.abstractmethod
    def remove(self, path: str) -> None: ...

    @abc.abstractmethod
    def write(self, path: str, data: bytes) -> None:
        """What clients and the operator do: stage a dot-file beside `path`, rename it in."""

    @abc.abstractmethod
    def symlink(self, path: str, target: str) -> None: ...

    @abc.abstractmethod
    def submit(self, session: str, content: str, envelope_id: str | None = None) -> str:
        """A client submits an envelope; returns its name in queue/."""

    @abc.abstractmethod
    def events(self, *matches: str) -> list[Event]:
        """relay's log records since `reset` carrying every FIELD=value of `matches`."""

    @abc.abstractmethod
    def log_text(self) -> str:
        """Everything relay logged since `reset`."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop the conversation cleanly (and check that it was clean)."""

    @abc.abstractmethod
    def start(self) -> None:
        """Start it again, and wait until it is ready."""

    @abc.abstractmethod
    def kill(self) -> None:
        """SIGKILL the conversation's process."""

    @abc.abstractmethod
    def recover(self) -> None:
        """After `kill`: until it runs again (the test starts it, or systemd restarts it)."""

    @abc.abstractmethod
    def service_pid(self) -> int:
        """The conversation's PID on relay's machine, 0 while it does not run."""

    @abc.abstractmethod
    def kill_subscriber(self) -> None:
        """SIGKILL the process that streams the answer topic."""

    @abc.abstractmethod
    def recover_subscriber(self) -> None:
        """After `kill_subscriber`: until it runs again (started by the test, or by systemd)."""

    @abc.abstractmethod
    def environments(self) -> list[str]:
        """The environment of every relay process now running (NUL-separated, as in
        /proc/PID/environ), and under systemd every relay unit's Environment= too."""

    @abc.abstractmethod
    def use_test_clock(self) -> None:
        """Restart the conversation with its wall clock read through a test-clock file
        (RELAY_TEST_CLOCK_FILE, see relay/clock.py), running 0 s ahead until shift_clock."""

    def shift_clock(self, seconds: float) -> None:
        """From now on relay's wall clock runs `seconds` ahead (use_test_clock first)."""
        self.write_absolute(self.clock_file, f"{seconds}\n".encode())

    @property
    @abc.abstractmethod
    def clock_file(self) -> str: ...

    @abc.abstractmethod
    def write_absolute(self, path: str, data: bytes) -> None:
        """Write a file anywhere on relay's machine (as root)."""

    @abc.abstractmethod
    def set_key(self, key: str) -> None:
        """The API key appears where the README says to put it, as the README says."""

    @abc.abstractmethod
    def write_config(self, text: str) -> None:
        """The config file replaced with `text`, as the operator edits it; relay is not told."""

    @abc.abstractmethod
    def reload(self) -> subprocess.CompletedProcess[str]:
        """What the README says reloads the running relay's config."""

    @abc.abstractmethod
    def run_program(self, program: str, *args: str, stdin: str | None = None) -> str:
        """Run tests/programs/`program` to its end; returns its stdout."""

    @abc.abstractmethod
    def background(self, program: str, *args: str) -> AbstractContextManager[Callable[[], str]]:
        """Run a program meanwhile; gives a function returning its stderr so far."""

    # ----- the contract, the same way everywhere ------------------------------------------

    def wait_for(self, predicate: Callable[[], T | None], what: str, timeout: float = TIMEOUT) -> T:
        """The first true value of `predicate`; fails the test after `timeout` seconds."""
        value: T = wait_for(predicate, timeout, what, self.poll_interval, self.kind)
        return value

    def settings(self, **overrides: Any) -> dict[str, Any]:
        """The config `reset` writes, with `overrides`."""
        return self.config(**overrides)

    def rewrite_config(self, **overrides: Any) -> None:
        """The config file as `reset` wrote it, with `overrides`; relay is not told."""
        self.write_config(yaml.safe_dump(self.settings(**overrides)))

    def read(self, path: str) -> str | None:
        data = self.read_bytes(path)
        return None if data is None else data.decode()

    def wait_input(self, session: str, timeout: float = TIMEOUT) -> str:
        """A session's input.txt, once it is there."""
        return self.wait_for(lambda: self.read(input_txt(session)), input_txt(session), timeout)

    def consume(self, session: str, timeout: float = TIMEOUT) -> str:
        """What a Claude Code session does: read its input.txt, then delete it."""
        text = self.wait_input(session, timeout)
        self.remove(input_txt(session))
        return text

    def status(self) -> Status | None:
        try:
            data = json.loads(self.read("state/status.json") or "null")
        except ValueError:  # never half-written (it is replaced atomically), but be sure
            return None
        return data if isinstance(data, dict) else None

    def wait_status(self, predicate: Callable[[Status], bool], timeout: float = TIMEOUT) -> Status:
        seen: list[Status | None] = [None]

        def check() -> Status | None:
            seen[0] = self.status()
            return seen[0] if seen[0] is not None and predicate(seen[0]) else None

        try:
            return self.wait_for(check, "status.json to match", timeout)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nlast status.json: {seen[0]}") from None

    def lines(self, path: str) -> list[dict[str, Any]]:
        """A JSON-lines file's complete lines (one being appended may end mid-line)."""
        complete = (self.read(path) or "").split("\n")[:-1]
        return [json.loads(line) for line in complete if line.strip()]

    def history(self) -> list[dict[str, Any]]:
        return self.lines("state/history.jsonl")

    def queue_names(self) -> list[str]:
        return [n for n in self.listing("queue") if not n.startswith(".")]


# ----- the foreground -------------------------------------------------------------------------

# "12:00:00 relay-run: INFO text [event=accepted session=session-1 envelope=q-...]"
_LOG_LINE = re.compile(r"\S+ (?P<who>relay-[\w-]+): \w+ (?P<text>.*?)(?: \[(?P<fields>[^][]*)\])?")


class Foreground(Deployment):
    """`relay run` on this machine, configured in `directory`, its data in `directory/data`."""

    kind = "foreground"

    def __init__(self, directory: Path, api: StandinAPI, ntfy: StandinNtfy) -> None:
        super().__init__(api, ntfy)
        self.directory = directory
        self.config_path = directory / "config.yaml"
        self.data = directory / "data"
        self.proc: RelayProcess | None = None
        self._log_from = 0

    @property
    def relay(self) -> RelayProcess:
        assert self.proc is not None, "reset() first"
        return self.proc

    def reset(
        self, key: str | None = DEFAULT_KEY, *, ntfy_token: str | None = None, **config: Any
    ) -> None:
        self.close()
        shutil.rmtree(self.data, ignore_errors=True)
        (self.directory / ".env").unlink(missing_ok=True)
        if ntfy_token is not None:  # development: a `.env` beside the config
            (self.directory / ".env").write_text(f"RELAY_NTFY_TOKEN={ntfy_token}\n")
        settings = {**self.config(**config), "data_dir": str(self.data)}
        self.config_path.write_text(yaml.safe_dump(settings), encoding="utf-8")
        self.key = key
        self.proc = RelayProcess(self.config_path, env={"ANTHROPIC_API_KEY": key or ""})
        log = self.proc.log_path
        self._log_from = log.stat().st_size if log.exists() else 0
        self.proc.start()

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()  # by its PID; a clean stop is what test_status_... checks

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return self.relay.cli(*args, stdin=stdin)

    def path(self, path: str = "") -> str:
        return str(self.data / path)

    def scratch(self, name: str) -> str:
        return str(self.directory / name)

    def read_bytes(self, path: str) -> bytes | None:
        try:
            return Path(self.path(path)).read_bytes()
        except FileNotFoundError:
            return None

    def listing(self, path: str) -> list[str]:
        return sorted(os.listdir(self.path(path)))

    def exists(self, path: str) -> bool:
        return os.path.lexists(self.path(path))

    def remove(self, path: str) -> None:
        os.unlink(self.path(path))

    def write(self, path: str, data: bytes) -> None:
        target = Path(self.path(path))
        staged = target.with_name(f".{target.name}.tmp")
        staged.write_bytes(data)
        os.rename(staged, target)

    def symlink(self, path: str, target: str) -> None:
        os.symlink(target, self.path(path))

    def submit(self, session: str, content: str, envelope_id: str | None = None) -> str:
        return self.relay.submit(session, content, envelope_id).name

    def log_text(self) -> str:
        with contextlib.suppress(FileNotFoundError), self.relay.log_path.open("rb") as log:
            log.seek(self._log_from)
            return log.read().decode(errors="replace")
        return ""

    def events(self, *matches: str) -> list[Event]:
        wanted = dict(match.split("=", 1) for match in matches)
        found = []
        for line in self.log_text().splitlines():
            parsed = _LOG_LINE.fullmatch(line)
            if parsed is None or not parsed["fields"]:
                continue
            entry: Event = {"SYSLOG_IDENTIFIER": parsed["who"], "MESSAGE": parsed["text"]}
            for field in parsed["fields"].split():
                name, _, value = field.partition("=")
                entry[f"RELAY_{name.upper()}"] = value
            if all(entry.get(k) == v for k, v in wanted.items()):
                found.append(entry)
        return found

    def stop(self) -> None:
        assert self.relay.stop() == 0, self.relay.log()

    def start(self) -> None:
        self.relay.start()

    def kill(self) -> None:
        self.relay.kill()

    def recover(self) -> None:
        self.relay.start()

    def service_pid(self) -> int:
        proc = self.relay.proc
        return proc.pid if proc is not None and proc.poll() is None else 0

    def kill_subscriber(self) -> None:
        """`relay run` streams the answer topic on a thread of its own process."""
        self.relay.kill()

    def recover_subscriber(self) -> None:
        self.relay.start()

    def environments(self) -> list[str]:
        pid = self.service_pid()
        return [Path(f"/proc/{pid}/environ").read_text(errors="replace")] if pid else []

    @property
    def clock_file(self) -> str:
        return str(self.directory / "clock")

    def write_absolute(self, path: str, data: bytes) -> None:
        Path(path).write_bytes(data)

    def use_test_clock(self) -> None:
        Path(self.clock_file).unlink(missing_ok=True)
        self.stop()
        self.relay.env[TEST_CLOCK_ENV] = self.clock_file
        self.start()

    def set_key(self, key: str) -> None:
        """A `.env` beside the config: read again every few seconds, no restart needed."""
        env = self.directory / ".env"
        kept = [
            line
            for line in (env.read_text().splitlines() if env.exists() else [])
            if not line.startswith("ANTHROPIC_API_KEY=")
        ]
        env.write_text("".join(f"{line}\n" for line in [*kept, f"ANTHROPIC_API_KEY={key}"]))
        self.key = key

    def settings(self, **overrides: Any) -> dict[str, Any]:
        return {"data_dir": str(self.data), **self.config(**overrides)}

    def write_config(self, text: str) -> None:
        self.config_path.write_text(text, encoding="utf-8")

    def reload(self) -> subprocess.CompletedProcess[str]:
        """`relay reload`: it finds the foreground process through status.json."""
        return self.cli("reload")

    def run_program(self, program: str, *args: str, stdin: str | None = None) -> str:
        argv = [sys.executable, str(PROGRAMS / program), *args]
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done
        return done.stdout

    @contextlib.contextmanager
    def background(self, program: str, *args: str) -> Iterator[Callable[[], str]]:
        errors = Path(self.scratch(f"{program}.stderr"))
        with errors.open("wb") as sink:
            proc = subprocess.Popen(
                [sys.executable, str(PROGRAMS / program), *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=sink,
            )
        try:
            yield lambda: errors.read_text(errors="replace")
        finally:
            proc.terminate()
            proc.wait(10)
