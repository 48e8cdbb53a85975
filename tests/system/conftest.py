"""Fixtures for the system tests (a real systemd 252 in systemd-nspawn, see nspawn.py).

- ``system_container`` (session scope): one plain booted container shared by every test that
  only needs a systemd to talk to. Tests that share it should install what they need at run
  time (``write_file`` + ``systemctl daemon-reload``), clean up after themselves and read the
  journal from a ``cursor()`` taken at their start.
- Tests that need files in place *before* boot (units enabled at boot, a .deb installed with
  ``setup_run``) build their own module-scoped container with ``booted_container(setup)``;
  a boot costs well under a second here.

Nothing here skips: without root or systemd-nspawn the fixtures raise HarnessError, because CI
runs as root and a system test that cannot run must fail.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest

from .nspawn import Container, booted_container
from .relaydeb import build_deb


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session", autouse=True)
def _sigterm_runs_teardown() -> Iterator[None]:
    """Turn SIGTERM (a CI timeout, `timeout(1)`) into KeyboardInterrupt for this session.

    pytest then still runs fixture teardown, which powers containers off and unmounts them.
    (SIGKILL cannot be caught; nspawn's PR_SET_PDEATHSIG and cleanup_stale() cover that.)
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.fixture(scope="session")
def system_container() -> Iterator[Container]:
    """A booted container shared by the whole session."""
    with booted_container() as container:
        yield container


@pytest.fixture(scope="session")
def relay_deb() -> Path:
    """relay's .deb, built from this tree with dpkg-buildpackage (cached by content)."""
    return build_deb()


@pytest.fixture(scope="session")
def relay_deb_upgrade(relay_deb: Path) -> Path:
    """The same tree as a higher Debian revision, for upgrade tests."""
    return build_deb(revision="2")
