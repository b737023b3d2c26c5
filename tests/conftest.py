from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import RunningHeadwater, child_env, make_keys


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


@pytest.fixture(scope="module")
def headwater(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHeadwater]:
    """One `headwater up` per test module, with write / read / admin keys."""
    data_dir = tmp_path_factory.mktemp("hw")
    keys = make_keys(data_dir)
    running = RunningHeadwater(data_dir, child_env(data_dir, flush_interval_ms=200), keys=keys).start()
    try:
        yield running
    finally:
        running.stop()
