#!/usr/bin/python3
"""A stand-in for /usr/bin/relay, installed into the test container to exercise the units.

Not the engine: it implements only what the unit files rely on, with the stdlib (it runs on
the container's /usr/bin/python3 under the units' full sandbox):

- ``serve``: Type=notify. Reads the ``anthropic-api-key`` credential (never prints it), sends
  READY=1 with a one-line STATUS= (a missing key is reported, not fatal), then WATCHDOG=1 from
  its main loop every half WATCHDOG_USEC. SIGTERM -> STOPPING=1, exit 0. At start it writes
  dispatch/stub-session/input.txt with the engine's modes (2770 dir, 0660 file).
- ``intake queue``: moves every non-hidden entry of queue/ into state/inbox/, re-listing until
  queue/ is empty (drain everything per run), then logs one summary line; ``--linger N`` as the
  real CLI (keep draining until quiet for N s). Test hook: if a moved
  name starts with ``stub-hang`` it then hangs (to exercise TimeoutStartSec=).
- ``intake jc``: moves state/jc_input.txt into state/inbox/.
- ``alert UNIT``: logs that UNIT failed (the real one posts to ntfy).

Every run logs a journal entry with SYSLOG_IDENTIFIER=relay-<part> and STUB_EVENT=..., sent with
the native protocol (stdlib only) so tests can match fields.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import time
from pathlib import Path
from types import FrameType

DATA = Path("/var/lib/relay")
JOURNAL_SOCKET = "/run/systemd/journal/socket"
LINGER_CAP_S = 60.0


def journal(identifier: str, message: str, **fields: str) -> None:
    """One journal entry via the native protocol; silently nothing without journald."""
    entry = {"MESSAGE": message, "SYSLOG_IDENTIFIER": identifier, **fields}
    payload = "".join(f"{key}={value}\n" for key, value in entry.items()).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(payload, JOURNAL_SOCKET)
    except OSError:
        pass


def notify(*fields: str) -> None:
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    target = "\0" + address[1:] if address.startswith("@") else address
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto("\n".join(fields).encode(), target)


def watchdog_interval() -> float:
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return 1.0
    return int(usec) / 2_000_000


def api_key() -> str | None:
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return None
    try:
        return (Path(directory) / "anthropic-api-key").read_text().strip() or None
    except OSError:
        return None


def serve() -> int:
    stopping = False

    def on_term(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    make_dispatch_file("stub-session")
    have_key = api_key() is not None
    status = "running" if have_key else "waiting: no API key (credential anthropic-api-key)"
    print(f"serve: started, API key {'present' if have_key else 'missing'}", flush=True)
    journal("relay-conversation", f"serve: {status}", STUB_EVENT="ready")
    notify("READY=1", f"STATUS={status}")
    interval = watchdog_interval()
    while not stopping:
        main_loop_iteration(interval)
    notify("STOPPING=1")
    return 0


def make_dispatch_file(session: str) -> None:
    """What the engine does per dispatch: a 2770 session dir (mode through the umask, setgid
    inherited from dispatch/, as relay.fsutil.makedirs does), a 0640 input.txt for clients."""
    directory = DATA / "dispatch" / session
    old = os.umask(0o007)
    try:
        directory.mkdir(mode=0o770, exist_ok=True)
    finally:
        os.umask(old)
    target = directory / "input.txt"
    target.write_text("dispatched by the stub\n")
    os.chmod(target, 0o640)


def main_loop_iteration(interval: float) -> None:
    # The ping comes from the loop itself: if the loop wedges, the pings stop.
    notify("WATCHDOG=1")
    time.sleep(min(interval, 0.5))


def visible_entries(directory: Path) -> list[str]:
    # Dot-files are writers' temp files and .rejected/; the path unit ignores them too.
    return sorted(name for name in os.listdir(directory) if not name.startswith("."))


def intake_queue(linger: float = 0.0) -> int:
    """Drain queue/; with `linger`, keep draining until it has been quiet that long (the real
    relay's --linger; polled here, capped at LINGER_CAP_S so a run stays well inside
    TimeoutStartSec=)."""
    queue, inbox = DATA / "queue", DATA / "state" / "inbox"
    inbox.mkdir(exist_ok=True)
    moved = drain_into(queue, inbox)
    started = last_activity = time.monotonic()
    while linger > 0 and time.monotonic() - last_activity < linger:
        if time.monotonic() - started > LINGER_CAP_S:
            break
        time.sleep(0.05)
        if more := drain_into(queue, inbox):
            moved += more
            last_activity = time.monotonic()
    print(f"intake queue: {moved} moved", flush=True)
    journal(
        "relay-queue", f"intake queue: {moved} moved", STUB_EVENT="drained", STUB_MOVED=str(moved)
    )
    return 0


def drain_into(queue: Path, inbox: Path) -> int:
    moved = 0
    hang = False
    while names := visible_entries(queue):
        for name in names:
            os.rename(queue / name, inbox / name)
            moved += 1
            hang = hang or name.startswith("stub-hang")
    if hang:  # test hook: a wedged handler, after consuming its trigger
        hang_forever()
    return moved


def hang_forever() -> None:
    print("intake queue: hanging (test hook)", flush=True)
    while True:
        time.sleep(60)


def intake_jc() -> int:
    source, inbox = DATA / "state" / "jc_input.txt", DATA / "state" / "inbox"
    inbox.mkdir(exist_ok=True)
    # Already gone means an earlier run consumed it: nothing to do, and still a success.
    with contextlib.suppress(FileNotFoundError):
        os.rename(source, inbox / f"jc-{time.time_ns()}.txt")
    print("intake jc: consumed", flush=True)
    journal("relay-jc", "intake jc: consumed", STUB_EVENT="jc_consumed")
    return 0


def alert(unit: str) -> int:
    print(f"alert: {unit} failed", flush=True)
    journal("relay-alert", f"alert: {unit} failed", STUB_EVENT="alert", STUB_UNIT=unit)
    return 0


def main(argv: list[str]) -> int:
    match argv[1:]:
        case ["serve"]:
            return serve()
        case ["intake", "queue"]:
            return intake_queue()
        case ["intake", "queue", "--linger", seconds]:
            return intake_queue(float(seconds))
        case ["intake", "jc"]:
            return intake_jc()
        case ["alert", unit]:
            return alert(unit)
    print(f"stub relay: unsupported arguments {argv[1:]}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
