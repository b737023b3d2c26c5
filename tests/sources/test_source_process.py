"""`headwater source NAME` as a process: an unknown name, a source that cannot start, a clean stop."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson

from tests.helpers import child_env


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
