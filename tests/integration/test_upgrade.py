"""A data directory made by the previous version (format 1, d913ae1: tests/fixtures/datadir-v1-make.py) opens,
is upgraded, answers the same queries and keeps working; newer formats are refused; kill -9 mid-upgrade resumes."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from headwater.upgrade.formats import CURRENT, WRITTEN_BY
from tests.helpers import RunningHeadwater, child_env, serving

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
PLACE = Path("/tmp/headwater-datadir-v1")  # BUILD of tests/fixtures/datadir-v1-make.py
FIXTURE = json.loads((FIXTURES / "datadir-v1.answers.json").read_text())
KEYS: dict[str, str] = FIXTURE["keys"]
ANSWERS: dict[str, Any] = FIXTURE["answers"]
NEWER_CATALOG = "UPDATE headwater_format SET version = 7, written_by = 'headwater 12.0' WHERE component = 'catalog'"
EVENTS = 348  # stored by the old version: 360 sent, 12 quarantined by the plan (and one line that was not JSON)


@pytest.fixture
def fixture_dir() -> Iterator[Path]:
    """The fixture unpacked where it was made (the catalog records absolute paths), one test at a time."""
    with open(f"{PLACE}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # other test sessions on this machine wait
        shutil.rmtree(PLACE, ignore_errors=True)
        with tarfile.open(FIXTURES / "datadir-v1.tar.gz") as tar:
            tar.extractall(PLACE, filter="data")
        try:
            yield PLACE
        finally:
            shutil.rmtree(PLACE, ignore_errors=True)


def environment(place: Path) -> tuple[Path, dict[str, str]]:
    """The data dir and the environment of a process on it (with the fixture's processor)."""
    data_dir = place / "data"
    processors = orjson.dumps([f"{place / 'person_counts.py'}:pipeline"]).decode()
    return data_dir, child_env(data_dir, flush_interval_ms=200, processors=processors)


def headwater(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "headwater.cli.main", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)


def format_document(data_dir: Path) -> dict[str, Any]:
    return json.loads((data_dir / "FORMAT.json").read_text())


def state(running: RunningHeadwater, key: str) -> Any:
    response = httpx.get(f"{running.url}/api/state/person_counts/{key}", headers={"x-api-key": KEYS["read"]})
    return response.json().get("value") if response.status_code == 200 else None


def wait_for(check: Any, what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def assert_same_answers(running: RunningHeadwater) -> None:
    for sql, rows in ANSWERS.items():
        assert running.sql(sql, KEYS["read"]) == rows, sql


@pytest.mark.slow
def test_the_previous_versions_data_dir_is_upgraded_answers_the_same_and_keeps_working(fixture_dir: Path) -> None:
    data_dir, env = environment(fixture_dir)
    check = headwater("upgrade", "--check", "--json", env=env)
    assert check.returncode == 1, check.stderr
    before = json.loads(check.stdout)
    assert before["verdict"] == "upgrade"
    assert {c["component"]: c["found"] for c in before["components"]}["data_dir"] == 1
    assert {"log-1-2", "catalog-1-2", "accounts-1-2"} <= set(before["pending_steps"])

    running = RunningHeadwater(data_dir, env, keys=KEYS)
    with serving(running):  # `up`: server, writer, privacy worker and the fixture's processor, on the old data
        document = format_document(data_dir)
        assert document["format"] == CURRENT["data_dir"] and document["components"] == CURRENT
        assert [h["from"] for h in document["history"]] == [1]
        assert_same_answers(running)
        backup = data_dir / document["history"][0]["backup"]
        copied = json.loads((backup / "BACKUP.json").read_text())["copied"]
        assert {"log/events.db", "log/offsets.db", "catalog.db", "keys.db"} <= set(copied)
        with sqlite3.connect(backup / "log" / "events.db") as conn:  # the copy is of the format-1 database
            assert conn.execute("PRAGMA user_version").fetchone() == (0,)
            assert conn.execute("SELECT count(*) FROM batches").fetchone()[0] > 0

        counted = state(running, "u-1")
        assert counted == FIXTURE["state_u1"]["value"]
        new = [{"event": "Product Viewed", "userId": "u-1", "product_id": "TEA-0042", "price": 3,
                "messageId": f"after-{i}"} for i in range(20)]  # fmt: skip
        retry = {"event": "Page Loaded", "userId": "u-2", "path": "/", "messageId": "fixture-5"}  # stored before
        bad = {"event": "Order Completed", "userId": "u-3", "revenue": 1, "currency": "EUR", "messageId": "after-x"}
        body = b"\n".join(orjson.dumps(e) for e in [*new, retry, bad])
        assert running.post("/track", body, KEYS["write"]).status_code == 200
        running.wait_rows("SELECT count(*) FROM events", [[EVENTS + 20]], timeout=60)
        quarantined = ANSWERS["SELECT count(*) FROM quarantine"][0][0]
        running.wait_rows("SELECT count(*) FROM quarantine", [[quarantined + 1]], timeout=60)  # the plan still applies
        wait_for(lambda: (state(running, "u-1") or {}).get("n") == counted["n"] + 20, "the processor's state")
        assert running.sql("SELECT count(*) FROM events WHERE user_id = 'u-2'", KEYS["read"]) == [[34]]
    check = headwater("upgrade", "--check", "--json", env=env)
    assert check.returncode == 0, check.stdout + check.stderr
    with sqlite3.connect(data_dir / "log" / "events.db") as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (CURRENT["log"],)


def test_a_new_data_dir_gets_the_current_format_and_processes_started_together_upgrade_once(
    tmp_path: Path, fixture_dir: Path
) -> None:
    fresh = tmp_path / "fresh"
    env = child_env(fresh)
    assert headwater("upgrade", env=env).returncode == 0
    document = format_document(fresh)
    assert document["format"] == CURRENT["data_dir"] and document["history"] == [] and "created" in document
    assert not (fresh / "backups").exists()
    with sqlite3.connect(fresh / "catalog.db") as conn:
        assert conn.execute("SELECT version FROM headwater_format WHERE component = 'catalog'").fetchone() == (2,)

    data_dir, env = environment(fixture_dir)  # two processes on the old data dir at once: one upgrades, one waits
    command = [sys.executable, "-m", "headwater.cli.main", "upgrade"]
    procs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]  # fmt: skip
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    document = format_document(data_dir)
    assert document["format"] == CURRENT["data_dir"] and len(document["history"]) == 1
    assert len([p for p in (data_dir / "backups").iterdir()]) == 1


def test_newer_formats_are_refused_with_a_message_and_left_alone(tmp_path: Path, fixture_dir: Path) -> None:
    data_dir, env = environment(fixture_dir)
    assert headwater("upgrade", env=env).returncode == 0
    document = format_document(data_dir)

    newer = {**document, "format": 3, "written_by": "headwater 9.1.0"}
    (data_dir / "FORMAT.json").write_text(json.dumps(newer))
    for args in (("up", "--port", "0"), ("server", "--port", "0"), ("upgrade",)):
        refused = headwater(*args, env=env)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        message = " ".join(refused.stderr.split())
        assert "data_dir format 3, written by headwater 9.1.0" in message, message
        assert f"this is {WRITTEN_BY}, which knows data_dir formats up to {CURRENT['data_dir']}" in message, message
        assert "Run headwater 9.1.0 (or newer) on it" in message, message
    check = headwater("upgrade", "--check", env=env)
    assert check.returncode == 2, check.stdout + check.stderr
    assert json.loads((data_dir / "FORMAT.json").read_text()) == newer  # untouched

    (data_dir / "FORMAT.json").write_text(json.dumps(document))
    with sqlite3.connect(data_dir / "catalog.db") as conn:
        conn.execute(NEWER_CATALOG)
    refused = headwater("writer", env=env)
    assert refused.returncode == 1
    assert "catalog format 7, written by headwater 12.0" in " ".join(refused.stderr.split())
    with sqlite3.connect(data_dir / "catalog.db") as conn:
        conn.execute("UPDATE headwater_format SET version = 2 WHERE component = 'catalog'")

    with sqlite3.connect(data_dir / "log" / "offsets.db") as conn:
        conn.execute("PRAGMA user_version = 5")
    refused = headwater("upgrade", env=env)
    assert refused.returncode == 1 and "log format 5" in " ".join(refused.stderr.split())
    with sqlite3.connect(data_dir / "log" / "offsets.db") as conn:
        conn.execute("PRAGMA user_version = 2")

    config = tmp_path / "headwater.toml"
    config.write_text('config_version = 2\nsome_setting_of_the_future = "x"\n')
    refused = headwater("config", "show", "--config", str(config), env=env)
    message = " ".join(refused.stderr.split())
    assert refused.returncode == 1 and "config_version = 2: it was written for a newer Headwater" in message, message
    assert headwater("upgrade", "--check", env=env).returncode == 0


@pytest.mark.slow
@pytest.mark.parametrize("point", ["backup", "backup-done", "step:log-1-2", "step:catalog-1-2"])
def test_kill_9_during_the_upgrade_then_a_start_completes_it(tmp_path: Path, fixture_dir: Path, point: str) -> None:
    data_dir, env = environment(fixture_dir)
    log_path = tmp_path / "paused.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "headwater.cli.main", "server", "--port", "0"],
            env={**env, "HEADWATER_TEST_UPGRADE_PAUSE": point}, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_for(lambda: f"upgrade paused at {point}" in log_path.read_text(), f"the pause at {point}", 120)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    document = format_document(data_dir)
    assert document["format"] == 1 and document["upgrade"]["from"] == 1  # recorded as in progress

    running = RunningHeadwater(data_dir, env, "server", keys=KEYS)  # a start of any process completes it
    with serving(running):
        document = format_document(data_dir)
        assert document["format"] == CURRENT["data_dir"] and "upgrade" not in document
        assert len(document["history"]) == 1
        assert_same_answers(running)
    backups = sorted((data_dir / "backups").iterdir())
    assert len(backups) == 1 and not backups[0].name.startswith(".")  # a cut-short copy was redone, then renamed
    assert (backups[0] / "BACKUP.json").exists()


def test_settings_of_a_newer_version_are_refused_before_their_fields_are_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from headwater.core.errors import ConfigError
    from headwater.core.settings import CONFIG_VERSION, load_settings

    config = tmp_path / "headwater.toml"
    config.write_text(f"config_version = {CONFIG_VERSION}\nport = 9000\n")
    assert load_settings(config).port == 9000
    config.write_text(f"config_version = {CONFIG_VERSION + 1}\nrenamed_in_the_future = 1\n")
    with pytest.raises(ConfigError, match="written for a newer Headwater"):
        load_settings(config)
    config.write_text("port = 9001\n")  # no config_version: version 1
    assert load_settings(config).config_version == 1
    monkeypatch.setenv("HEADWATER_CONFIG_VERSION", str(CONFIG_VERSION + 1))
    with pytest.raises(ConfigError, match="HEADWATER_CONFIG_VERSION"):
        load_settings(config)
