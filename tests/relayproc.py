"""Drive a real `relay run` process through the ⚑ contract only: files, the CLI, status.json.

Used by the end-to-end, crash and benchmark code. Every process started here is stopped
by its PID in `stop()`, also when a test fails.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

DEFAULT_TIMEOUT = 15.0


def write_config(directory: Path, api_url: str, **overrides: Any) -> Path:
    """A config for a relay whose data lives in `directory/data`, talking to `api_url`."""
    config: dict[str, Any] = {
        "sessions": ["session-1", "session-2"],
        "data_dir": str(directory / "data"),
        "anthropic": {"base_url": api_url, "timeout_s": 30},
        "ntfy": {"server": None},
    }
    config.update(overrides)
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def wait_for(
    predicate: Callable[[], Any],
    timeout: float = DEFAULT_TIMEOUT,
    what: str = "",
    interval: float = 0.01,
    who: str = "",
) -> Any:
    """The first true value of `predicate`; fails the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            prefix = f"{who}: " if who else ""
            raise AssertionError(
                f"{prefix}timed out after {timeout}s waiting for {what or predicate}"
            )
        time.sleep(interval)


class RelayProcess:
    def __init__(self, config: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.data = Path(yaml.safe_load(config.read_text())["data_dir"])
        self.env = {**os.environ, "ANTHROPIC_API_KEY": "sk-test", **(env or {})}
        for name in (
            "RELAY_CONFIG",
            "ANTHROPIC_BASE_URL",
            "NOTIFY_SOCKET",
            "INVOCATION_ID",
            "JOURNAL_STREAM",
            "CREDENTIALS_DIRECTORY",
            "WATCHDOG_USEC",
        ):
            if env is None or name not in env:
                self.env.pop(name, None)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = config.parent / "relay.log"

    # ---- process control ----------------------------------------------------------

    def start(self, wait_ready: bool = True) -> RelayProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "relay", "run", "--config", str(self.config)],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        if wait_ready:
            status = self.data / "state" / "status.json"
            wait_for(lambda: self._status_from(self.proc) is not None, what="relay to start")
            assert status.exists()
        return self

    def _status_from(self, proc: subprocess.Popen[bytes] | None) -> dict[str, Any] | None:
        if proc is None or proc.poll() is not None:
            raise AssertionError(f"relay exited early:\n{self.log()}")
        status = self.status()
        return status if status and status.get("pid") == proc.pid else None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL if it does not go; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # ---- the contract -------------------------------------------------------------

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "relay", *args, "--config", str(self.config)],
            env=self.env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def drop(self, name: str, envelope: dict[str, Any] | bytes) -> Path:
        """What a client does: write a dot-file in queue/ and rename it into place."""
        queue = self.data / "queue"
        data = envelope if isinstance(envelope, bytes) else json.dumps(envelope).encode()
        tmp = queue / f".{name}.tmp"
        tmp.write_bytes(data)
        os.rename(tmp, queue / name)
        return queue / name

    def submit(self, session: str, content: str, envelope_id: str | None = None) -> Path:
        envelope: dict[str, Any] = {
            "session_id": session,
            "content": content,
            "timestamp": "2026-11-25T00:00:00Z",
        }
        if envelope_id:
            envelope["id"] = envelope_id
        name = f"{time.time_ns()}-{session}.json"
        return self.drop(name, envelope)

    def reply(self, text: str) -> None:
        """What the operator does: write state/jc_input.txt atomically."""
        tmp = self.data / "state" / ".jc.tmp"
        tmp.write_text(text, encoding="utf-8")
        os.rename(tmp, self.data / "state" / "jc_input.txt")

    def input_file(self, session: str) -> Path:
        return self.data / "dispatch" / session / "input.txt"

    def wait_input(self, session: str, timeout: float = DEFAULT_TIMEOUT) -> str:
        path = self.input_file(session)
        wait_for(path.exists, timeout, f"{path}")
        return path.read_text(encoding="utf-8")

    def consume(self, session: str, timeout: float = DEFAULT_TIMEOUT) -> str:
        """What a Claude Code session does: read its input, then delete the file."""
        text = self.wait_input(session, timeout)
        self.input_file(session).unlink()
        return text

    def status(self) -> dict[str, Any] | None:
        try:
            data = json.loads((self.data / "state" / "status.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return data if isinstance(data, dict) else None

    def wait_status(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = DEFAULT_TIMEOUT
    ) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            status = self.status()
            return status if status is not None and predicate(status) else None

        result: dict[str, Any] = wait_for(check, timeout, "a status")
        return result

    def history(self) -> list[dict[str, Any]]:
        path = self.data / "state" / "history.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def queue_names(self) -> list[str]:
        return sorted(p.name for p in (self.data / "queue").iterdir() if not p.name.startswith("."))
