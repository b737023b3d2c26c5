from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import RunningHeadwater, child_env, make_keys

pytest_plugins = ["tests.services"]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


DEPLOYMENTS = ["embedded", pytest.param("cluster", marks=pytest.mark.cluster)]


@pytest.fixture(scope="module", params=DEPLOYMENTS)
def deployment(request: pytest.FixtureRequest) -> dict[str, str]:
    """Settings of the deployment a module runs on: the embedded defaults, or Kafka + PostgreSQL + S3
    (real services started once per test session, a fresh topic, database and bucket per module)."""
    if request.param == "embedded":
        return {}
    from tests.services import cluster_settings  # registered as a plugin above: import it after that

    services = (request.getfixturevalue(name) for name in ("kafka_broker", "postgres_server", "s3_server"))
    return cluster_settings(*services, name=uuid.uuid4().hex[:12])


@pytest.fixture(scope="module")
def headwater(tmp_path_factory: pytest.TempPathFactory, deployment: dict[str, str]) -> Iterator[RunningHeadwater]:
    """One `headwater up` per test module and deployment, with write / read / admin keys."""
    data_dir = tmp_path_factory.mktemp("hw")
    keys = make_keys(data_dir)
    env = child_env(data_dir, flush_interval_ms=200, **deployment)
    running = RunningHeadwater(data_dir, env, keys=keys, settings=deployment).start()
    try:
        yield running
    finally:
        running.stop()


_exit_status: list[int] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _exit_status.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """End the test process without running native libraries' exit handlers once pytest is done.

    With PostgreSQL (psycopg's bundled libldap), S3 and DuckDB's avro extension all loaded into this one process,
    libldap's destructor frees an invalid pointer at exit (gdb: `__GI___libc_free` from `libldap` in `_dl_fini`),
    turning a green run into exit code 139 after the summary is printed. Headwater's own processes load one of
    them at a time and exit cleanly; only this process, which drives every service at once, is affected."""
    if _exit_status:
        import os
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_exit_status[0])
