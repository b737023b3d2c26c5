from __future__ import annotations

import pytest

from tests.engines.common import Deployment


@pytest.fixture(scope="module")
def deployment(deployment: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Deployment:  # type: ignore[override]
    """The root conftest's deployment (embedded, or Kafka + PostgreSQL + S3) with a data directory."""
    return Deployment("cluster" if deployment else "embedded", tmp_path_factory.mktemp("engine"), deployment)
