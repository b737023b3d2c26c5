"""API keys, web users and sessions, and dashboards shared by two collectors through one `app_db_uri`.

Two `headwater server` processes with their own data directories (embedded event log) use the same PostgreSQL
database for accounts: what is created through one, or with the CLI, works on the other.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.helpers import RunningHeadwater, child_env, make_keys
from tests.services import PostgresServer

pytestmark = pytest.mark.cluster

EVENT = '{"event":"LOGIN","userId":"shared-1"}'


class Shared:
    """The shared database's URI, the two servers, a data directory for CLI runs, and admin keys."""

    def __init__(self, uri: str, servers: list[RunningHeadwater], cli_dir: Path, keys: dict[str, str]) -> None:
        self.uri, self.servers, self.cli_dir, self.keys = uri, servers, cli_dir, keys

    def cli(self, *args: str) -> str:
        """Run `headwater ARGS` against the shared database from a third data directory; its stdout."""
        result = subprocess.run(
            [sys.executable, "-m", "headwater.cli.main", *args],
            env=child_env(self.cli_dir, app_db_uri=self.uri),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, f"headwater {' '.join(args)}: {result.stdout}{result.stderr}"
        return result.stdout


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, postgres_server: PostgresServer) -> Iterator[Shared]:
    uri = postgres_server.create_database("accounts_" + uuid.uuid4().hex[:12])
    dirs = [tmp_path_factory.mktemp(f"accounts-{name}") for name in ("a", "b", "cli")]
    servers = [RunningHeadwater(path, child_env(path, app_db_uri=uri), "server") for path in dirs[:2]]
    try:
        with ThreadPoolExecutor(2) as pool:  # started together: both create the tables at once
            list(pool.map(lambda server: server.start(), servers))
        keys = make_keys(dirs[2], uri)
        for server in servers:
            server.keys = keys
        yield Shared(uri, servers, dirs[2], keys)
    finally:
        for server in servers:
            if server.proc is not None:
                server.stop()
    for path in dirs:  # nothing went to the per-machine SQLite files
        assert not any((path / name).exists() for name in ("keys.db", "users.db", "app.db")), path


def _track(server: RunningHeadwater, key: str) -> int:
    return server.post("/track", EVENT, key).status_code


def test_cli_key_works_on_both_servers_and_revocation_reaches_both(shared: Shared) -> None:
    name = "writer-" + uuid.uuid4().hex[:8]
    key = shared.cli("keys", "create", name, "--role", "write", "--quiet").strip()
    assert key.startswith("hw_w_")
    for server in shared.servers:
        assert _track(server, key) == 200, server.log_text()
    assert name in shared.cli("keys", "list")

    shared.cli("keys", "revoke", name)
    revoked_at = time.monotonic()
    refused: dict[str, float] = {}
    while len(refused) < len(shared.servers) and time.monotonic() - revoked_at < 10:
        for server in shared.servers:
            if server.url not in refused and _track(server, key) == 401:
                refused[server.url] = time.monotonic() - revoked_at
        time.sleep(0.1)
    assert len(refused) == len(shared.servers), f"still accepted after 10 s by some of {shared.servers}"
    assert max(refused.values()) < 5, refused  # the lookup cache lives 2 s
    assert httpx.get(shared.servers[1].url + "/api/keys", headers={"Authorization": f"Bearer {key}"}).status_code == 401


def test_user_created_on_one_server_signs_in_on_the_other(shared: Shared) -> None:
    first, second = shared.servers
    admin = {"Authorization": f"Bearer {shared.keys['admin']}"}
    name, password = "ana-" + uuid.uuid4().hex[:6], "correct horse battery staple"
    made = httpx.post(first.url + "/api/users", json={"name": name, "role": "analyst", "password": password},
                      headers=admin, timeout=30)  # fmt: skip
    assert made.status_code == 201, made.text
    assert name in [u["name"] for u in httpx.get(second.url + "/api/users", headers=admin, timeout=30).json()]

    wrong = httpx.post(second.url + "/api/login", json={"name": name, "password": "not the password"}, timeout=30)
    assert wrong.status_code == 401
    login = httpx.post(second.url + "/api/login", json={"name": name, "password": password}, timeout=30)
    assert login.status_code == 200, login.text
    cookie = {"Cookie": f"hw_session={login.cookies['hw_session']}"}
    for server in shared.servers:  # the session opened on the second server is valid on the first too
        me = httpx.get(server.url + "/api/me", headers=cookie, timeout=30)
        assert me.status_code == 200 and me.json()["user"] == name, me.text

    assert httpx.delete(first.url + f"/api/users/{name}", headers=admin, timeout=30).status_code == 200
    assert httpx.get(second.url + "/api/me", headers=cookie, timeout=30).status_code == 401  # sessions went too


def test_dashboard_saved_on_one_server_is_listed_by_the_other(shared: Shared) -> None:
    first, second = shared.servers
    analyst = {"Authorization": f"Bearer {shared.keys['read']}"}
    query = {"kind": "trend", "series": [{"event": "LOGIN"}], "date_from": "2026-01-01T00:00:00Z",
             "date_to": "2026-01-08T00:00:00Z"}  # fmt: skip
    insight = httpx.post(first.url + "/api/saved-insights", json={"name": "Logins", "query": query},
                         headers=analyst, timeout=30)  # fmt: skip
    assert insight.status_code == 201, insight.text
    board = {"name": "Shared board", "tiles": [{"insight_id": insight.json()["id"], "w": 12}], "last_days": 7}
    saved = httpx.post(first.url + "/api/dashboards", json=board, headers=analyst, timeout=30)
    assert saved.status_code == 201, saved.text
    board_id = saved.json()["id"]

    listed = httpx.get(second.url + "/api/dashboards", headers=analyst, timeout=30)
    assert listed.status_code == 200, listed.text
    assert [(d["id"], d["name"]) for d in listed.json()] == [(board_id, "Shared board")]
    insights = httpx.get(second.url + "/api/saved-insights", headers=analyst, timeout=30).json()
    assert [i["query"] for i in insights if i["id"] == insight.json()["id"]] == [query]

    shared_link = httpx.post(second.url + f"/api/dashboards/{board_id}/shares", headers=analyst, timeout=30)
    assert shared_link.status_code == 201, shared_link.text
    prefix = httpx.get(first.url + f"/api/dashboards/{board_id}/shares", headers=analyst, timeout=30).json()
    assert [s["prefix"] for s in prefix] == [shared_link.json()["token"][:8]]
    assert httpx.delete(second.url + f"/api/dashboards/{board_id}", headers=analyst, timeout=30).status_code == 200
    assert httpx.get(first.url + "/api/dashboards", headers=analyst, timeout=30).json() == []
