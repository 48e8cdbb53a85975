"""Fixtures for every test. The scenario suite's `deployment` (tests/deployment.py) is here:
parametrized over the foreground and the systemd deployment, one container per module.

Nothing here skips: without root or systemd-nspawn the system fixtures raise HarnessError,
because CI runs as root and a system test that cannot run must fail.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import TypeVar

import pytest

from tests.deployment import Deployment, Foreground
from tests.relayproc import RelayProcess, write_config
from tests.standin.api import StandinAPI
from tests.standin.ntfy import StandinNtfy
from tests.system.nspawn import Container
from tests.system.packaged import Packaged
from tests.system.relaydeb import build_deb, install

D = TypeVar("D", bound=Deployment)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "installed_with(key=..., **config): the deployment's first install uses this API key "
        "(None: none) and config instead of the defaults",
    )


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session", autouse=True)
def _sigterm_runs_teardown() -> Iterator[None]:
    """Turn SIGTERM (a CI timeout, `timeout(1)`) into KeyboardInterrupt for this session.

    pytest then still runs fixture teardown, which stops relay processes and powers containers
    off. (SIGKILL cannot be caught; nspawn's PR_SET_PDEATHSIG and cleanup_stale() cover that.)
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.fixture
def api() -> Iterator[StandinAPI]:
    with StandinAPI() as server:
        yield server


@pytest.fixture
def ntfy() -> Iterator[StandinNtfy]:
    with StandinNtfy() as server:
        yield server


@pytest.fixture
def relay_factory(tmp_path: Path) -> Iterator[list[RelayProcess]]:
    """Processes appended here are stopped by PID at teardown, even when a test fails."""
    started: list[RelayProcess] = []
    yield started
    for proc in started:
        proc.stop()


@pytest.fixture
def relay(
    tmp_path: Path, api: StandinAPI, ntfy: StandinNtfy, relay_factory: list[RelayProcess]
) -> RelayProcess:
    config = write_config(
        tmp_path,
        api.url,
        ntfy={"server": ntfy.url, "topic": "relay-test"},
        history_char_cap=400_000,
    )
    proc = RelayProcess(config)
    relay_factory.append(proc)
    return proc.start()


# ----- the systemd deployment -------------------------------------------------------------


@pytest.fixture(scope="session")
def relay_deb() -> Path:
    """relay's .deb, built from this tree with dpkg-buildpackage (cached by content)."""
    return build_deb()


@pytest.fixture(scope="session")
def relay_deb_upgrade(relay_deb: Path) -> Path:
    """The same tree as a higher Debian revision, for upgrade tests."""
    return build_deb(revision="2")


@pytest.fixture(scope="module")
def packaged_container(relay_deb: Path) -> Iterator[Container]:
    """A booted container with the package installed by apt, shared by a module's tests."""
    with Container() as container:
        container.boot()
        install(container, relay_deb)
        yield container


def _installed(deployment: D, request: pytest.FixtureRequest) -> Iterator[D]:
    marker = request.node.get_closest_marker("installed_with")
    try:
        deployment.reset(**(marker.kwargs if marker else {}))
        yield deployment
    finally:
        deployment.close()


@pytest.fixture(
    scope="module", params=["foreground", pytest.param("systemd", marks=pytest.mark.system)]
)
def deployment_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
def deployment(
    deployment_kind: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    api: StandinAPI,
    ntfy: StandinNtfy,
) -> Iterator[Deployment]:
    """relay freshly installed, once in the foreground (`relay run`) and once under systemd
    (the .deb in a container), with the stand-ins new for each test."""
    if deployment_kind == "foreground":
        yield from _installed(Foreground(tmp_path, api, ntfy), request)
    else:
        container = request.getfixturevalue("packaged_container")
        yield from _installed(Packaged(container, api, ntfy), request)


@pytest.fixture
def packaged(
    packaged_container: Container,
    request: pytest.FixtureRequest,
    api: StandinAPI,
    ntfy: StandinNtfy,
) -> Iterator[Packaged]:
    """The systemd deployment alone, for what only exists under systemd."""
    yield from _installed(Packaged(packaged_container, api, ntfy), request)
