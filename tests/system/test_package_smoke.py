"""The installed package carries one envelope end to end under a real systemd."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.standin.api import StandinAPI

from .nspawn import Container
from .relaydeb import config_yaml, consume, relay_container, submit

pytestmark = pytest.mark.system


@pytest.fixture(scope="module")
def api() -> Iterator[StandinAPI]:
    with StandinAPI() as server:
        yield server


@pytest.fixture(scope="module")
def relay(relay_deb: Path, api: StandinAPI) -> Iterator[Container]:
    with relay_container(relay_deb, config_yaml(api.url, None)) as container:
        yield container


def test_one_envelope_through_the_units(relay: Container) -> None:
    submit(relay, "session-1", "hello from the container")
    assert consume(relay, "session-1") == "ack: [from session-1] hello from the container"
    for unit in ("relay.target", "relay-conversation.service", "relay-queue.path", "relay-jc.path"):
        assert relay.show(unit, "ActiveState") == "active", unit
