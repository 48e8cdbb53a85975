"""The nspawn harness itself: boot, exec inside, journal, host loopback, teardown."""

from __future__ import annotations

import http.server
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from . import nspawn
from .nspawn import Container, HarnessError, mounts_under

system = pytest.mark.system

PROGRAMS = Path(__file__).resolve().parents[1] / "programs"


@system
def test_pid1_is_systemd_252(system_container: Container) -> None:
    c = system_container
    assert c.run(["systemctl", "--version"]).stdout.startswith("systemd 252 ")
    assert c.run(["cat", "/proc/1/comm"]).stdout.strip() == "systemd"
    state = c.run(["systemctl", "is-system-running"], check=False).stdout.strip()
    failed = c.systemctl("--failed", "--no-legend").stdout
    # "degraded" would mean a host service that should have been masked failed to start.
    assert state == "running", f"state {state}, failed units:\n{failed}"


@system
def test_boot_is_fast(system_container: Container) -> None:
    assert system_container.boot_seconds is not None
    print(f"boot took {system_container.boot_seconds:.2f}s")
    assert system_container.boot_seconds < 10


@system
def test_installed_oneshot_logs_custom_field(system_container: Container) -> None:
    c = system_container
    token = secrets.token_hex(8)
    c.copy_in(PROGRAMS / "journal_probe.py", "/usr/local/lib/harness/probe.py")
    c.write_file(
        "/etc/systemd/system/harness-probe.service",
        "[Service]\nType=oneshot\n"
        f"ExecStart=/usr/bin/python3 /usr/local/lib/harness/probe.py {token}\n",
    )
    try:
        c.systemctl("daemon-reload")
        c.systemctl("start", "harness-probe.service")  # a oneshot start waits for the exit
        entries = c.journal_json(f"FOO={token}")
        assert [e["MESSAGE"] for e in entries] == ["harness probe"]
        assert entries[0]["SYSLOG_IDENTIFIER"] == "harness-probe"
        # stdout goes through a stream PID 1 opened for the unit, so -u always finds it.
        assert f"stdout line {token}" in c.journal("-u", "harness-probe.service", "-o", "cat")
    finally:
        c.run(["rm", "-f", "/etc/systemd/system/harness-probe.service"])
        c.systemctl("daemon-reload")


@system
def test_transient_unit_and_cursor(system_container: Container) -> None:
    c = system_container
    cursor = c.cursor()
    token = secrets.token_hex(8)
    c.run(["systemd-run", "--wait", "--collect", "--unit", f"harness-{token}", "echo", token])
    after = c.journal_text_since(cursor)
    assert token in after


@system
def test_files_in_and_out(system_container: Container) -> None:
    c = system_container
    c.write_file("/var/tmp/harness/a.txt", "hé\n", mode=0o640, owner="nobody:nogroup")
    assert c.read_file("/var/tmp/harness/a.txt") == "hé\n"
    listing = c.run(["stat", "-c", "%a %U %G", "/var/tmp/harness/a.txt"]).stdout.split()
    assert listing == ["640", "nobody", "nogroup"]
    assert not c.exists("/var/tmp/harness/missing")
    # The temp dot-file used for the atomic write is gone.
    assert c.run(["ls", "-A", "/var/tmp/harness"]).stdout.split() == ["a.txt"]
    c.run(["rm", "-r", "/var/tmp/harness"])


@pytest.fixture
def host_http_server() -> Iterator[tuple[int, str]]:
    """A loopback HTTP server in this (host) process, answering a random token."""
    token = secrets.token_hex(8)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = token.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], token
    finally:
        server.shutdown()
        server.server_close()


@system
def test_host_loopback_reachable_inside(
    system_container: Container, host_http_server: tuple[int, str]
) -> None:
    port, token = host_http_server
    fetch = f"import urllib.request as u; print(u.urlopen('http://127.0.0.1:{port}/').read())"
    out = system_container.run(["python3", "-c", fetch], timeout=20).stdout
    assert token in out


def _assert_gone(base: Path, nspawn_pid: int, init_pid: int) -> None:
    assert mounts_under(base) == []
    assert not base.exists()
    for pid in (nspawn_pid, init_pid):
        assert not Path(f"/proc/{pid}").exists(), f"pid {pid} survived teardown"


@system
def test_teardown_leaves_nothing_even_on_error() -> None:
    box: dict[str, Container] = {}
    with pytest.raises(RuntimeError, match="test body failed"), Container() as c:
        box["c"] = c
        c.boot()
        assert c.base is not None and c._proc is not None
        base, pid, init, cgroups = c.base, c._proc.pid, c.init_pid, list(c._cgroups)
        raise RuntimeError("test body failed")
    _assert_gone(base, pid, init)
    assert cgroups and not any(cg.exists() for cg in cgroups)
    box["c"].close()  # idempotent


@system
def test_teardown_when_poweroff_is_ignored() -> None:
    # stop_timeout=0: the poweroff request is not waited for, so the SIGTERM path runs.
    c = Container(stop_timeout=0.0)
    try:
        c.boot()
        assert c.base is not None and c._proc is not None
        base, pid, init = c.base, c._proc.pid, c.init_pid
    finally:
        with pytest.raises(HarnessError, match="no poweroff"):
            c.close()
    _assert_gone(base, pid, init)


@system
def test_sigkilled_runner_powers_off_and_is_cleaned_later() -> None:
    """SIGKILL the test process: PDEATHSIG stops nspawn, cleanup_stale() unmounts."""
    root = str(PROGRAMS.parents[1])
    runner = subprocess.Popen(
        [sys.executable, str(PROGRAMS / "booted_then_killed.py"), root],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert runner.stdout is not None
        base_str, pid_str = runner.stdout.readline().split()
    finally:
        runner.send_signal(signal.SIGKILL)
        runner.wait(timeout=10)
    base, nspawn_pid = Path(base_str), int(pid_str)
    nspawn.poll_until(
        lambda: not Path(f"/proc/{nspawn_pid}").exists(), timeout=20, what="nspawn exit"
    )
    # (Another harness's prepare() may beat us to the cleanup; either way it must be gone.)
    nspawn.cleanup_stale()
    assert mounts_under(base) == [] and not base.exists()


def test_preflight_refuses_non_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(HarnessError, match="need root"):
        nspawn.preflight()


def test_preflight_refuses_missing_nspawn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    real_which = shutil.which

    def which(name: str, path: str | None = None) -> str | None:
        return None if name == "systemd-nspawn" else real_which(name, path=path)

    monkeypatch.setattr(shutil, "which", which)
    with pytest.raises(HarnessError, match="systemd-nspawn not found"):
        nspawn.preflight()
