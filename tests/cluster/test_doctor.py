"""`headwater doctor` against real Kafka, PostgreSQL and S3, and against broken settings."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.helpers import child_env
from tests.services import KafkaBroker, PostgresServer, S3Server, cluster_settings

pytestmark = pytest.mark.cluster


def doctor(data_dir: Path, **settings: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "headwater.cli.main", "doctor", "--data-dir", str(data_dir)],
        env=child_env(data_dir, **settings),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_doctor_passes_on_a_working_cluster_and_names_what_is_broken(
    tmp_path: Path, kafka_broker: KafkaBroker, postgres_server: PostgresServer, s3_server: S3Server
) -> None:
    settings = cluster_settings(kafka_broker, postgres_server, s3_server, uuid.uuid4().hex[:12])
    good = doctor(tmp_path, **settings)
    assert good.returncode == 0, good.stdout + good.stderr
    for line in ("ok   event log: kafka, 12 partitions", "ok   catalog:", "ok   warehouse: s3://", "ok   query engine"):
        assert line in good.stdout, good.stdout
    assert settings["s3_secret_access_key"] not in good.stdout

    broken = {**settings, "kafka_bootstrap_servers": "127.0.0.1:1", "s3_secret_access_key": "wrong"}
    bad = doctor(tmp_path, **broken)
    assert bad.returncode == 1
    assert "FAIL event log" in bad.stdout and "kafka_bootstrap_servers" in bad.stdout
    assert "ok   catalog" in bad.stdout
    assert "FAIL warehouse" in bad.stdout and "fix: check warehouse" in bad.stdout
    assert "query engine: skipped" in bad.stdout
