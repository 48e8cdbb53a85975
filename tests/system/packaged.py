"""The systemd deployment for the scenario suite (tests/deployment.py): relay's .deb installed by
apt in a booted container (a real systemd 252 as PID 1, see nspawn.py) and driven the way a
user drives it: files under /var/lib/relay, `systemctl`, `journalctl` and the `relay` command
line inside the container. The stand-in API and ntfy run on the host (the container shares
its network namespace).

One container serves a whole module (boot and `apt install` cost ~10 s); `reset` gives each
test a fresh install's state in ~1.5 s. Faults are injected with drop-ins (`dropin`), on the
real units and the real /usr/bin/relay.

Journal reads are scoped with `--cursor=C` and the cursor's own entry dropped, never with
`--after-cursor=C` plus field matches: journalctl 252 then skips the first *matching* entry
after the cursor (systemd issue #30288, fixed in v255 by PR #30336).
"""

from __future__ import annotations

import base64
import contextlib
import posixpath
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import yaml

from relay.clock import TEST_CLOCK_ENV
from tests.deployment import DEFAULT_KEY, PROGRAMS, Deployment, Event
from tests.standin.api import StandinAPI
from tests.standin.ntfy import StandinNtfy

from .nspawn import Container
from .relaydeb import CONFIG_PATH, DATA, KEY_PATH, place_config, wait_ready

CONVERSATION = "relay-conversation.service"
ANSWERS = "relay-answers.service"
RELAY_UNITS = (
    "relay.target",
    CONVERSATION,
    ANSWERS,
    "relay-queue.path",
    "relay-jc.path",
    "relay-queue.service",
    "relay-jc.service",
)
# The optional ntfy access token, where README.Debian says to put it (LoadCredential=).
NTFY_TOKEN_PATH = "/etc/credstore/relay.ntfy-token"
PROGRAM_DIR = "/usr/local/lib/relay-test"
SCRATCH = "/root/relay-test"
# The test clock (relay/clock.py): a drop-in points the conversation at this file.
TEST_CLOCK_FILE = "/etc/relay/test-clock"
TEST_CLOCK_DROPIN = f"/etc/systemd/system/{CONVERSATION}.d/test-clock.conf"


class Packaged(Deployment):
    kind = "systemd"
    poll_interval = 0.05  # every look is a process inside the container

    def __init__(self, container: Container, api: StandinAPI, ntfy: StandinNtfy) -> None:
        super().__init__(api, ntfy)
        self.c = container
        self.cursor = ""
        self._killed = 0
        self._killed_subscriber = 0

    def reset(
        self, key: str | None = DEFAULT_KEY, *, ntfy_token: str | None = None, **config: Any
    ) -> None:
        """Stop everything relay, wipe its data (tmpfiles.d recreates the directories exactly
        as the package's postinst did), write config, key and ntfy token (none: no file left
        from an earlier test), start relay.target."""
        # Named one by one: `systemctl stop relay.target` returns before its PartOf= members
        # have stopped (the target has no ordering against them). reset-failed also resets
        # the start limits, which every manual start counts against.
        self.c.systemctl("stop", *RELAY_UNITS)
        self.c.systemctl("reset-failed", *RELAY_UNITS)
        if self.c.exists(TEST_CLOCK_DROPIN):  # left by use_test_clock
            self.c.run(["rm", "-f", TEST_CLOCK_DROPIN, TEST_CLOCK_FILE])
            self.c.systemctl("daemon-reload")
        self.c.run(["rm", "-rf", f"{DATA}/queue", f"{DATA}/dispatch", f"{DATA}/state", SCRATCH])
        self.c.run(["systemd-tmpfiles", "--create", "/usr/lib/tmpfiles.d/relay.conf"])
        settings = self.config(**config)
        place_config(self.c, yaml.safe_dump(settings), key)
        if ntfy_token is None:
            self.c.run(["rm", "-f", NTFY_TOKEN_PATH])
        else:
            self.c.write_file(NTFY_TOKEN_PATH, ntfy_token + "\n", mode=0o600, owner="root:root")
        self.key = key
        before = self.show(ANSWERS, "InvocationID")
        self.c.systemctl("start", "relay.target")
        wait_ready(self.c)
        ntfy = settings.get("ntfy") or {}
        self._wait_subscriber_started(before, ntfy_on=ntfy.get("server", "default") is not None)
        self.cursor = self.c.cursor()

    def _wait_subscriber_started(self, before: str, *, ntfy_on: bool) -> None:
        """Until relay-answers.service has started anew (a new InvocationID) and sent READY=1:
        active while ntfy is on; with ntfy.server null it exits 0 at once, inactive."""

        def started() -> bool:
            if self.show(ANSWERS, "InvocationID") in ("", before):
                return False
            state = self.show(ANSWERS, "ActiveState")
            if ntfy_on:
                return state == "active"
            return state == "inactive" and self.show(ANSWERS, "Result") == "success"

        self.wait_for(started, f"{ANSWERS} started ({'active' if ntfy_on else 'done'})")

    def close(self) -> None:
        """Nothing: the container is the module's, and the next reset starts afresh."""

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return self.c.run(["relay", *args], input=stdin, check=False)

    def path(self, path: str = "") -> str:
        return posixpath.join(DATA, path)

    def scratch(self, name: str) -> str:
        self.c.run(["mkdir", "-p", SCRATCH])
        return f"{SCRATCH}/{name}"

    def read_bytes(self, path: str) -> bytes | None:
        done = self.c.run(["base64", "-w0", "--", self.path(path)], check=False)
        return base64.b64decode(done.stdout) if done.returncode == 0 else None

    def listing(self, path: str) -> list[str]:
        return sorted(self.c.run(["ls", "-A", "--", self.path(path)]).stdout.split())

    def exists(self, path: str) -> bool:
        return self.c.exists(self.path(path))

    def remove(self, path: str) -> None:
        self.c.run(["rm", "--", self.path(path)])

    def write(self, path: str, data: bytes) -> None:
        """As root, owned like its directory (what `relay reply` does for jc_input.txt)."""
        target = self.path(path)
        owner = self.c.run(["stat", "-c", "%U:%G", posixpath.dirname(target)]).stdout.strip()
        self.c.write_file(target, data, mode=0o640, owner=owner)

    def symlink(self, path: str, target: str) -> None:
        self.c.run(["ln", "-s", "--", target, self.path(path)])

    def submit(self, session: str, content: str, envelope_id: str | None = None) -> str:
        """`relay submit` as root."""
        args = ["submit", "--session", session, *(["--id", envelope_id] if envelope_id else [])]
        done = self.c.run(["relay", *args, "-"], input=content)
        return posixpath.basename(done.stdout.strip())

    def events(self, *matches: str) -> list[Event]:
        entries = self.c.journal_since(self.cursor, *matches)
        return [e for e in entries if str(e.get("SYSLOG_IDENTIFIER", "")).startswith("relay-")]

    def log_text(self) -> str:
        return self.journal_text()

    def stop(self) -> None:
        self.c.systemctl("stop", CONVERSATION)
        assert self.show(CONVERSATION, "Result") == "success"

    def start(self) -> None:
        self.c.systemctl("start", CONVERSATION)  # Type=notify: returns after READY=1
        wait_ready(self.c)

    def kill(self) -> None:
        self._killed = self.main_pid()
        self.c.run(["kill", "-KILL", str(self._killed)])

    def recover(self) -> None:
        self.wait_restarted(self._killed)

    def service_pid(self) -> int:
        return self.main_pid()

    def kill_subscriber(self) -> None:
        self._killed_subscriber = self.main_pid(ANSWERS)
        assert self._killed_subscriber, f"{ANSWERS} is not running"
        self.c.run(["kill", "-KILL", str(self._killed_subscriber)])

    def recover_subscriber(self) -> None:
        """Until systemd has restarted it (Restart=on-failure, RestartSec=5s)."""
        gone = self._killed_subscriber
        self.wait_for(
            lambda: (
                self.main_pid(ANSWERS) not in (0, gone)
                and self.show(ANSWERS, "ActiveState") == "active"
            ),
            f"systemd to restart {ANSWERS} in place of pid {gone}",
            timeout=40,
        )

    def environments(self) -> list[str]:
        """/proc/PID/environ of every running relay-* unit's main process, then every relay
        unit's Environment= (`systemctl show`), the template's through an instance."""
        listed = self.c.systemctl(
            "list-units", "--no-legend", "--plain", "--type=service", "--state=running", "relay-*"
        ).stdout
        found = []
        for unit in sorted(line.split()[0] for line in listed.splitlines() if line.strip()):
            pid = self.show(unit, "MainPID")
            if pid not in ("", "0"):
                # check=False: it may exit meanwhile (a handler, an alert).
                done = self.c.run(["cat", f"/proc/{pid}/environ"], check=False)
                if done.returncode == 0:
                    found.append(done.stdout)
        files = self.c.systemctl("list-unit-files", "--no-legend", "relay*").stdout
        for name in sorted(line.split()[0] for line in files.splitlines() if line.strip()):
            unit = name.replace("@.", f"@{CONVERSATION}.")  # an instance loads its template
            found.append(self.c.systemctl("show", "-p", "Environment", unit).stdout)
        return found

    @property
    def clock_file(self) -> str:
        return TEST_CLOCK_FILE

    def write_absolute(self, path: str, data: bytes) -> None:
        self.c.write_file(path, data, mode=0o644, owner="root:root")

    def use_test_clock(self) -> None:
        self.c.run(["rm", "-f", TEST_CLOCK_FILE])
        self.c.write_file(
            TEST_CLOCK_DROPIN, f"[Service]\nEnvironment={TEST_CLOCK_ENV}={TEST_CLOCK_FILE}\n"
        )
        self.c.systemctl("daemon-reload")
        self.c.systemctl("restart", CONVERSATION)
        wait_ready(self.c)

    def set_key(self, key: str) -> None:
        """Into the credstore, then a restart: the credential is copied when the unit starts."""
        self.c.write_file(KEY_PATH, key + "\n", mode=0o600, owner="root:root")
        self.key = key
        self.c.systemctl("restart", CONVERSATION)

    def write_config(self, text: str) -> None:
        self.c.write_file(CONFIG_PATH, text, mode=0o644, owner="root:root")

    def reload(self) -> subprocess.CompletedProcess[str]:
        return self.c.systemctl("reload", CONVERSATION, check=False)

    def _program(self, program: str) -> str:
        inside = f"{PROGRAM_DIR}/{program}"
        self.c.copy_in(PROGRAMS / program, inside, mode=0o755)
        return inside

    def run_program(self, program: str, *args: str, stdin: str | None = None) -> str:
        return self.c.run(
            ["python3", self._program(program), *args], input=stdin, timeout=300
        ).stdout

    @contextlib.contextmanager
    def background(self, program: str, *args: str) -> Iterator[Callable[[], str]]:
        errors = self.scratch(f"{program}.stderr")
        script = 'python3 "$@" </dev/null >/dev/null 2>"$ERR" & echo $!'
        argv = ["sh", "-c", script, "sh", self._program(program), *args]
        pid = self.c.run(argv, env={"ERR": errors}).stdout.strip()
        try:
            yield lambda: self.c.read_file(errors)
        finally:
            self.c.run(["kill", pid], check=False)
            self.c.wait_for(
                lambda: self.c.run(["kill", "-0", pid], check=False).returncode != 0,
                timeout=10,
                what=f"pid {pid} to exit",
            )

    # ----- systemd's side, for the scenarios that only exist there --------------------------

    def wait_restarted(self, gone: int) -> None:
        """Until systemd has restarted the conversation (Restart=on-failure, RestartSec=5s)
        in place of process `gone`."""
        self.wait_for(
            lambda: (
                self.main_pid() not in (0, gone)
                and self.show(CONVERSATION, "ActiveState") == "active"
            ),
            f"systemd to restart the conversation in place of pid {gone}",
            timeout=40,
        )

    def show(self, unit: str, prop: str) -> str:
        return self.c.show(unit, prop)

    def main_pid(self, unit: str = CONVERSATION) -> int:
        return int(self.show(unit, "MainPID"))

    def journal(self, *args: str) -> list[dict[str, Any]]:
        """Journal entries since `reset` (or the cursor given), with matches/options `args`."""
        return self.c.journal_since(self.cursor, *args)

    def journal_text(self, *args: str) -> str:
        return self.c.journal_text_since(self.cursor, *args)

    @contextlib.contextmanager
    def dropin(self, unit: str, text: str) -> Iterator[None]:
        """`text` as /etc/systemd/system/`unit`.d/test.conf (with daemon-reload) meanwhile."""
        path = f"/etc/systemd/system/{unit}.d/test.conf"
        self.c.write_file(path, text)
        self.c.systemctl("daemon-reload")
        try:
            yield
        finally:
            self.c.run(["rm", "-f", path])
            self.c.systemctl("daemon-reload")
