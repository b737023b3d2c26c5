"""The `headwater` command line, run as a user would."""

from __future__ import annotations

import csv
import io
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson

from headwater.cli.main import settings_markdown, source_settings_markdown
from tests.helpers import ROOT, RunningHeadwater, child_env


def hw(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "headwater.cli.main", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        check=False,
        timeout=300,
    )
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_keys_lifecycle(data_dir: Path) -> None:
    d = str(data_dir)
    key = hw("keys", "create", "web", "--role", "write", "--quiet", "--data-dir", d).stdout.strip()
    assert re.fullmatch(r"hw_w_[A-Za-z0-9_-]{40,}", key)
    verbose = hw("keys", "create", "analyst", "--role", "read", "--data-dir", d).stdout
    assert "cannot be shown again" in verbose
    listing = hw("keys", "list", "--data-dir", d).stdout
    assert "web" in listing and "analyst" in listing and key not in listing
    assert key not in (data_dir / "keys.db").read_bytes().decode("latin-1")  # stored hashed
    duplicate = hw("keys", "create", "web", "--data-dir", d, check=False)
    assert duplicate.returncode == 1 and "already exists" in duplicate.stderr
    bad_role = hw("keys", "create", "x", "--role", "root", "--data-dir", d, check=False)
    assert bad_role.returncode == 1 and "role must be one of" in bad_role.stderr
    hw("keys", "revoke", "web", "--data-dir", d)
    assert "revoked" in hw("keys", "list", "--data-dir", d).stdout
    assert hw("keys", "revoke", "web", "--data-dir", d, check=False).returncode == 1


def test_settings_precedence_file_env_flag_and_masking(tmp_path: Path) -> None:
    config = tmp_path / "headwater.toml"
    config.write_text(
        'port = 7000\nhost = "0.0.0.0"\nquery_max_rows = 5\ncatalog_uri = "postgresql://u:secret-pg@db/x"\n'
        's3_secret_access_key = "secret-s3"\n[kafka_client_options]\n"security.protocol" = "SASL_SSL"\n'
        '"sasl.password" = "secret-kafka"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEADWATER_")}
    shown = hw("config", "show", env=env, cwd=tmp_path).stdout
    assert "port = 7000" in shown and 'host = "0.0.0.0"' in shown and "secret-" not in shown
    assert 'catalog_uri = "****"' in shown and 's3_secret_access_key = "****"' in shown
    assert '"security.protocol":"SASL_SSL"' in shown and '"sasl.password":"****"' in shown
    env["HEADWATER_KAFKA_CLIENT_OPTIONS"] = '{"client.rack": "eu-1"}'
    assert '"client.rack":"eu-1"' in hw("config", "show", env=env, cwd=tmp_path).stdout
    del env["HEADWATER_KAFKA_CLIENT_OPTIONS"]
    env["HEADWATER_PORT"] = "7100"
    env["HEADWATER_QUERY_MAX_ROWS"] = "9"
    shown = hw("config", "show", "--port", "7200", env=env, cwd=tmp_path).stdout
    assert "port = 7200" in shown and "query_max_rows = 9" in shown
    env["HEADWATER_PORT"] = "not-a-port"
    bad = hw("config", "show", env=env, cwd=tmp_path, check=False)
    assert bad.returncode == 1 and "port" in bad.stderr
    missing = hw("config", "show", "--config", str(tmp_path / "nope.toml"), check=False)
    assert missing.returncode == 1 and "does not exist" in missing.stderr


def test_every_setting_is_documented_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    assert settings_markdown() in readme, "run `headwater config docs` and paste it into README.md"
    assert source_settings_markdown() in readme, "run `headwater config docs --sources` and paste it into README.md"


def test_generate_query_formats_and_import(headwater: RunningHeadwater, tmp_path: Path) -> None:
    env = child_env(headwater.data_dir, **headwater.settings)
    out = hw("generate", "--url", headwater.url, "--key", headwater.keys["write"], "--total", "1000", "--rate", "0",
             "--days", "3", env=env).stdout  # fmt: skip
    summary = orjson.loads(out.strip().splitlines()[-1])
    assert summary["accepted"] == 1000 and summary["errors"] == 0
    sql = (
        "SELECT count(*) AS n FROM events "
        "WHERE source = 'test-write' AND event IN ('LOGIN','VIEW','CLICK','PURCHASE','LOGOUT')"
    )
    deadline = time.monotonic() + 20
    while int(orjson.loads(hw("query", sql, "--format", "json", env=env).stdout)["rows"][0][0]) < 1000:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    as_csv = list(csv.reader(io.StringIO(hw("query", "SELECT 1 AS a, 'x' AS b", "-f", "csv", env=env).stdout)))
    assert as_csv == [["a", "b"], ["1", "x"]]
    table = hw("query", "SELECT 42 AS answer", env=env).stdout
    assert "answer" in table and "42" in table
    refused = hw("query", "DROP VIEW events", env=env, check=False)
    assert refused.returncode == 1 and "only SELECT" in refused.stderr
    source = tmp_path / "history.ndjson"
    source.write_text(
        "".join(f'{{"event":"OLD","userId":"imp{i}","dateTime":"2020-01-0{1 + i % 9} 00:00:00"}}\n' for i in range(100))
    )
    imported = orjson.loads(hw("import", str(source), "--source", "history", env=env).stdout.strip().splitlines()[-1])
    assert imported["events"] == 100 and imported["rows"] == 100
    rows = orjson.loads(
        hw("query", "SELECT count(*) FROM events WHERE source = 'history'", "-f", "json", env=env).stdout
    )
    assert rows["rows"] == [[100]]
    assert hw("import", str(tmp_path / "missing.csv"), env=env, check=False).returncode == 1


def test_help_is_useful() -> None:
    top = hw("--help").stdout
    for command in ("up", "query", "generate", "import", "keys", "config"):
        assert command in top
    assert "--rate" in hw("generate", "--help").stdout
    no_key = hw("generate", "--total", "1", check=False)
    assert no_key.returncode == 1 and "--key is required" in no_key.stderr


def test_up_demo_serves_queryable_data(tmp_path: Path) -> None:
    data_dir = tmp_path / "demo"
    env = child_env(data_dir, demo_rate=200, flush_interval_ms=200, demo_days=2)
    proc = subprocess.Popen(
        [sys.executable, "-m", "headwater.cli.main", "up", "--demo", "--port", "0"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        lines: list[str] = []
        assert proc.stdout is not None
        while not any("Query:" in line for line in lines):
            line = proc.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
        text = "".join(lines)
        url = re.search(r"http://127\.0\.0\.1:\d+", text)
        key = re.search(r"Demo admin key: (\S+)", text)
        assert url and key
        auth = {"Authorization": f"Bearer {key.group(1)}"}
        while "dashboard: " not in text:  # the history is imported, then the demo dashboard is made
            line = proc.stdout.readline()
            assert line, text
            text += line
        board_id = re.search(r"#/dashboard/(\d+)", text)
        assert board_id, text
        board = httpx.get(f"{url.group(0)}/api/dashboards/{board_id.group(1)}", headers=auth, timeout=120).json()
        kinds = {tile["kind"] for tile in board["tiles"]}
        assert {"trend", "funnel", "retention", "experiment"} <= kinds, board
        assert all(tile["error"] is None and tile["result"] for tile in board["tiles"]), board
        query = {"sql": "SELECT count(*), count(DISTINCT event) FROM events WHERE type = 'track'"}
        count, names = httpx.post(url.group(0) + "/api/query", json=query, headers=auth, timeout=60).json()["rows"][0]
        assert count > 1000 and names >= 5  # realistic events, not five bare names
    finally:
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert "stopped" in output
    cli = hw("query", "SELECT count(*) FROM events", "-f", "json", env=env).stdout
    assert orjson.loads(cli)["rows"][0][0] >= count  # everything acknowledged was committed on stop
