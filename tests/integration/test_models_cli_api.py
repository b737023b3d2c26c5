"""`headwater models list|run|test` run as a user runs them (a real process on a data directory), and the HTTP API
`/api/models` (list, runs, run: admins only) served by Starlette over a real key store and catalog."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette

from headwater.api.models import model_routes
from headwater.auth.keys import KeyStore
from headwater.auth.users import UserStore
from tests.helpers import make_keys, make_settings

# `headwater` with the models commands (registered here when the lead's cli/main.py does not register them yet)
CLI = (
    "from headwater.cli import main\n"
    "if not any(g.name == 'models' for g in main.app.registered_groups):\n"
    "    from headwater.cli.models import register\n"
    "    register(main.app)\n"
    "main.app(prog_name='headwater')\n"
)
CHECKS = """\
[[checks]]
name = "counted"
table = "totals"
kind = "not_null"
column = "n"

[[checks]]
name = "too_many"
table = "totals"
kind = "row_count"
min = 5
{severity}
"""


def hw(tmp_path: Path, *args: str, expect: int = 0) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEADWATER_")}
    env |= {"COLUMNS": "200", "HEADWATER_CONFIG": str(tmp_path / "absent.toml")}
    done = subprocess.run([sys.executable, "-c", CLI, *args], capture_output=True, text=True, env=env, cwd=tmp_path,
                          check=False, timeout=300)  # fmt: skip
    assert done.returncode == expect, done.stdout + done.stderr
    return done


def project(tmp_path: Path) -> Path:
    models = tmp_path / "models"
    models.mkdir(exist_ok=True)
    (models / "totals.sql").write_text("-- description: events in the lake\nSELECT count(*) AS n FROM events")
    (models / "doubled.sql").write_text("SELECT n * 2 AS n2 FROM totals")
    return models


def test_list_run_and_test_from_the_command_line(tmp_path: Path) -> None:
    models = project(tmp_path)
    common = ["--data-dir", str(tmp_path / "data"), "--models-dir", str(models)]
    listed = hw(tmp_path, "models", "list", *common)
    assert "totals" in listed.stdout and "doubled" in listed.stdout and "never" in listed.stdout

    built = hw(tmp_path, "models", "run", *common)
    assert "building totals (table)…" in built.stdout and "ok totals: 1 rows (full)" in built.stdout
    assert built.stdout.index("totals") < built.stdout.index("doubled")
    runs = json.loads(hw(tmp_path, "models", "run", "totals", "--downstream", "--json", *common).stdout)
    assert [(r["model"], r["status"], r["trigger"]) for r in runs] == [("totals", "ok", "manual"),
                                                                       ("doubled", "ok", "manual")]  # fmt: skip
    status = json.loads(hw(tmp_path, "models", "list", "--json", *common).stdout)
    assert [m["name"] for m in status["models"]] == ["totals", "doubled"]
    assert status["models"][1]["last_run"]["rows"] == 1 and status["models"][0]["exists"]

    (models / "checks.toml").write_text(CHECKS.format(severity='severity = "warn"'))
    passing = hw(tmp_path, "models", "test", *common)
    assert "1 of 2 checks pass" not in passing.stdout and "2 of 2 checks pass (severity error)" in passing.stdout
    (models / "checks.toml").write_text(CHECKS.format(severity=""))
    failing = hw(tmp_path, "models", "test", "totals", *common, expect=1)
    assert "fail" in failing.stdout and "1 of 2 checks pass" in failing.stdout
    hw(tmp_path, "models", "test", "counted", *common)
    assert "no check named" in hw(tmp_path, "models", "test", "nothing", *common, expect=1).stderr

    (models / "doubled.sql").write_text("SELECT missing_column FROM totals")
    broken = hw(tmp_path, "models", "run", *common, expect=1)
    assert "failed doubled" in broken.stdout and "missing_column" in broken.stdout
    (models / "loop.sql").write_text("SELECT * FROM loop")
    looped = hw(tmp_path, "models", "run", *common, expect=1).stdout
    assert "failed loop: loop.sql (model loop): reads itself" in looped and "ok totals" in looped
    assert "no models directory" in hw(tmp_path, "models", "list", "--data-dir", str(tmp_path), expect=1).stderr


@pytest.fixture
def client(tmp_path: Path) -> Iterator[tuple[httpx.Client, dict[str, str], Any]]:
    """The model routes served over HTTP (uvicorn on a free port, in a thread), with a real key store."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    keys = make_keys(data_dir)
    settings = make_settings(data_dir, models_dir=project(tmp_path))
    services = SimpleNamespace(settings=settings, keys=KeyStore(data_dir / "keys.db"),
                               users=UserStore(data_dir / "users.db"))  # fmt: skip
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(Starlette(routes=model_routes(lambda: services)), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as http:
            yield http, keys, services
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
        services.keys.close()
        services.users.close()
        if getattr(services, "models", None) is not None:
            services.models.close()


def test_the_api_lists_runs_and_builds_models(client: tuple[httpx.Client, dict[str, str], Any]) -> None:
    http, keys, _ = client
    read = {"authorization": f"Bearer {keys['read']}"}
    admin = {"authorization": f"Bearer {keys['admin']}"}
    assert http.get("/api/models").status_code == 401
    listed = http.get("/api/models", headers=read).json()
    assert [m["name"] for m in listed["models"]] == ["totals", "doubled"] and not listed["running"]
    totals = listed["models"][0]
    assert totals["sql"].endswith("FROM events") and totals["config"]["materialized"] == "table"
    assert totals["last_run"] is None and totals["due"] and listed["models"][1]["deps"] == ["totals"]

    assert http.post("/api/models/run", json={}, headers=read).status_code == 403
    assert http.post("/api/models/run", json={"models": ["nope"]}, headers=admin).status_code == 400
    assert http.post("/api/models/run", json={"models": "totals"}, headers=admin).status_code == 400
    done = http.post("/api/models/run", json={"models": ["totals"], "downstream": True, "wait": True}, headers=admin)
    assert done.status_code == 200, done.text
    assert [(r["model"], r["status"]) for r in done.json()["runs"]] == [("totals", "ok"), ("doubled", "ok")]

    started = http.post("/api/models/run", json={"models": ["doubled"]}, headers=admin)
    assert started.status_code == 202 and started.json()["status"] == "started"
    runs = http.get("/api/models/runs?model=doubled", headers=read).json()["runs"]
    while len(runs) < 2:  # the build started in the background: its run appears once done
        time.sleep(0.1)
        runs = http.get("/api/models/runs?model=doubled", headers=read).json()["runs"]
    assert [r["trigger"] for r in runs] == ["manual", "manual"] and runs[0]["rows"] == 1
    assert "inputs" not in runs[0]
    assert http.get("/api/models/runs?limit=0", headers=read).status_code == 400
    listed = http.get("/api/models", headers=read).json()
    assert listed["models"][0]["last_run"]["status"] == "ok" and not listed["models"][0]["due"]
