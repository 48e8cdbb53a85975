from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.relayproc import RelayProcess, write_config
from tests.standin.api import StandinAPI
from tests.standin.ntfy import StandinNtfy


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
