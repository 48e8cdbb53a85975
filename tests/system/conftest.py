"""Fixtures for the system tests (a real systemd 252 in systemd-nspawn, see nspawn.py).

- ``system_container`` (session scope): one plain booted container shared by every test that
  only needs a systemd to talk to. Tests that share it should install what they need at run
  time (``write_file`` + ``systemctl daemon-reload``), clean up after themselves and read the
  journal from a ``cursor()`` taken at their start.
- ``packaged_container`` (module scope, tests/conftest.py): the .deb installed by apt; the
  ``relay_deb`` fixtures and the SIGTERM handling live there too.
- Tests that need files in place *before* boot (units enabled at boot, a .deb installed with
  ``setup_run``) build their own module-scoped container with ``booted_container(setup)``;
  a boot costs well under a second here.

Nothing here skips: without root or systemd-nspawn the fixtures raise HarnessError, because CI
runs as root and a system test that cannot run must fail.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .nspawn import Container, booted_container


@pytest.fixture(scope="session")
def system_container() -> Iterator[Container]:
    """A booted container shared by the whole session."""
    with booted_container() as container:
        yield container
