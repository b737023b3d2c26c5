"""`headwater source NAME` as a process: an unknown name, a source that cannot start, a clean stop."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pika
import pytest

from headwater.core.source_settings import SourceSettings
from headwater.sources.checks import check_source
from tests.helpers import child_env, make_settings
from tests.services import RabbitServer


def _source(data_dir: Path, name: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "headwater.cli.main", "source", name],
        env={**child_env(data_dir), **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def test_an_unknown_source_name_is_a_clear_error(data_dir: Path) -> None:
    proc = _source(data_dir, "nope")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "no source named 'nope' in the settings (none configured); add a [[sources]] table" in out


def test_a_source_that_cannot_start_says_why_and_stops_cleanly(data_dir: Path, tmp_path: Path) -> None:
    sources = [{"name": "frames", "kind": "files", "path": str(tmp_path), "format": "cobol",
                "cobol": {"copybook": str(tmp_path / "missing.cpy"), "record_length": 10}}]  # fmt: skip
    proc = _source(data_dir, "frames", HEADWATER_SOURCES=json.dumps(sources))
    status = data_dir / "sources" / "frames" / "status.json"
    deadline = time.monotonic() + 60
    while not status.exists() and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[0]
        time.sleep(0.05)
    doc = orjson.loads(status.read_bytes())
    assert doc["state"] == "failed" and "missing.cpy" in doc["last_error"]
    assert proc.poll() is None  # waits and retries instead of exiting (no restart loop under `up`)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "cannot start" in out and "missing.cpy" in out


def test_doctor_checks_each_source_without_touching_it(data_dir: Path, tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "a.ndjson").write_bytes(b'{"event":"e","userId":"u"}\n')
    sources = [
        {"name": "good", "kind": "files", "path": str(drop), "format": "ndjson"},
        {"name": "gone", "kind": "files", "path": str(tmp_path / "nope"), "format": "ndjson"},
        {"name": "frames", "kind": "files", "path": str(drop), "format": "cobol",
         "cobol": {"copybook": str(tmp_path / "missing.cpy"), "record_length": 10}},
        {"name": "queue", "kind": "rabbitmq", "url": "amqp://guest:guest@127.0.0.1:1/%2F", "queue": "q"},
    ]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "headwater.cli.main", "doctor"],
        env={**child_env(data_dir), "HEADWATER_SOURCES": json.dumps(sources)},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    out = done.stdout
    assert done.returncode == 1, out + done.stderr
    assert "ok   source good: " in out and "1 file(s) matching '*' waiting; none taken yet" in out
    assert "FAIL source gone: " in out and "is not a directory" in out
    assert "FAIL source frames: " in out and "missing.cpy" in out
    assert "FAIL source queue: RabbitMQ 127.0.0.1:1" in out
    assert (drop / "a.ndjson").exists() and not (data_dir / "sources").exists()  # nothing taken


@pytest.mark.services
def test_doctor_on_a_real_rabbitmq(rabbitmq: RabbitServer, tmp_path: Path) -> None:
    connection = pika.BlockingConnection(rabbitmq.parameters())
    channel = connection.channel()
    channel.queue_declare("doctor-q", durable=True)
    for _ in range(3):
        channel.basic_publish("", "doctor-q", b"{}")
    connection.close()
    settings = make_settings(tmp_path)

    def check(**fields: str) -> tuple[bool, str, str]:
        source = SourceSettings(name="q", kind="rabbitmq", url=rabbitmq.url, **fields)  # type: ignore[arg-type]
        return check_source(settings, source, tmp_path)

    deadline = time.monotonic() + 30
    while (outcome := check(queue="doctor-q"))[1] != "queue 'doctor-q': 3 messages ready":
        assert time.monotonic() < deadline, outcome
        time.sleep(0.2)
    assert outcome[0]
    ok, detail, _ = check(queue="copy", exchange="no-such-exchange")
    assert not ok and "exchange 'no-such-exchange'" in detail and "NOT_FOUND" in detail
    ok, detail, _ = check(queue="no-such-queue")
    assert not ok and "queue 'no-such-queue'" in detail
