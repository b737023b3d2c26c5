"""Fixtures of the source reader tests: a real RabbitMQ server for the session (Kafka comes from tests.services)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services import RabbitServer


@pytest.fixture(scope="session")
def rabbitmq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitServer]:
    """Debian's rabbitmq-server on free ports (about 5 s to start), stopped with its epmd at the end."""
    server = RabbitServer(tmp_path_factory.mktemp("rabbitmq"))
    try:
        yield server.start()
    finally:
        server.close()


@pytest.fixture
def drop(tmp_path: Path) -> Path:
    """A folder a files source watches."""
    folder = tmp_path / "drop"
    folder.mkdir()
    return folder
