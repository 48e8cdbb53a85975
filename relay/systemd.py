"""The one module that speaks systemd: the notify protocol (sd_notify(3)), the watchdog
interval, and whether systemd runs this machine.

A stdlib AF_UNIX datagram sender, as systemd's own self-contained example does: no build
dependency, and testable against a real socket. The environment is injected.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping
from pathlib import Path

log = logging.getLogger(__name__)

SYSTEMD_RUNTIME_DIR = Path("/run/systemd/system")


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.address = env.get("NOTIFY_SOCKET") or None
        self.watchdog_interval_s = watchdog_interval(env)
        self._sock: socket.socket | None = None
        self._failing = False  # the last send failed, and said so in the log

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> bool:
        if self.address is None:
            return False
        # A leading "@" names an abstract socket (a NUL byte on the wire).
        address = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(fields).encode("utf-8"), address)
        except OSError as exc:
            # Once per outage: a missed WATCHDOG=1 gets the unit killed, so the reason must
            # be in the journal, but not every few seconds for as long as it lasts.
            if not self._failing:
                log.warning(
                    "cannot notify systemd at %s: %s (further failures are not logged)",
                    self.address,
                    exc,
                )
                self._failing = True
            return False
        if self._failing:
            log.info("notifying systemd at %s works again", self.address)
            self._failing = False
        return True

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={one_line(status)}")

    def reloading(self) -> bool:
        """A reload has begun (READY=1 ends it). MONOTONIC_USEC= is what Type=notify-reload
        (systemd 253+) requires with it; systemd 252 ignores it."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def status(self, status: str) -> bool:
        return self.send(f"STATUS={one_line(status)}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def stopping(self) -> bool:
        return self.send("STOPPING=1")

    def extend_timeout(self, seconds: float) -> bool:
        return self.send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def one_line(text: str) -> str:
    return " ".join(text.split())[:200]


def watchdog_interval(environ: Mapping[str, str]) -> float | None:
    """Half of WATCHDOG_USEC (as sd_watchdog_enabled(3) advises), or None when off or
    meant for another process."""
    usec = environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = environ.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2_000_000 if value > 0 else None


def running_under_systemd(runtime_dir: Path = SYSTEMD_RUNTIME_DIR) -> bool:
    """systemd is PID 1 here (sd_booted(3)): it creates this directory early at boot."""
    return runtime_dir.is_dir()
