"""The audit trail: key, user and share-link changes made through the API and the CLI of a real `headwater up`
land in `headwater_audit` with who, what, when and from where; the table refuses UPDATE and DELETE; only admins
read it (JSON, CSV, NDJSON); settings changes between starts are recorded, secrets never."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import sqlalchemy as sa

from headwater.auth.audit import AuditLog, cli_actor
from tests.helpers import RunningHeadwater, child_env, make_settings

PASSWORD = "audit-password-123"


def catalog_uri(hw: RunningHeadwater) -> str:
    return hw.settings.get("catalog_uri") or f"sqlite:///{hw.data_dir.resolve()}/catalog.db"


def api(hw: RunningHeadwater, method: str, path: str, key: str = "admin", **kwargs: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {hw.keys[key]}"} if key else {}
    return httpx.request(method, hw.url + path, headers=headers, timeout=30, **kwargs)


def audit_rows(hw: RunningHeadwater, **params: str) -> list[dict[str, Any]]:
    response = api(hw, "GET", "/api/audit", params=params)
    assert response.status_code == 200, response.text
    rows: list[dict[str, Any]] = response.json()["rows"]
    return rows


def add_user(hw: RunningHeadwater, name: str, role: str) -> None:
    response = api(hw, "POST", "/api/users", json={"name": name, "role": role, "password": PASSWORD})
    assert response.status_code == 201, response.text


def sign_in(hw: RunningHeadwater, name: str) -> tuple[httpx.Client, str]:
    client = httpx.Client(base_url=hw.url, timeout=30)
    response = client.post("/api/login", json={"name": name, "password": PASSWORD})
    assert response.status_code == 200, response.text
    return client, response.json()["csrf"]


@pytest.fixture
def audit_log(tmp_path: Path) -> Iterator[AuditLog]:
    log = AuditLog(f"sqlite:///{tmp_path}/catalog.db")
    try:
        yield log
    finally:
        log.close()


def test_key_and_user_changes_through_the_api(headwater: RunningHeadwater) -> None:
    hw = headwater
    since = int(time.time() * 1000)
    made = api(hw, "POST", "/api/keys", json={"name": "audit-k1", "role": "write"})
    assert made.status_code == 201, made.text
    assert api(hw, "DELETE", "/api/keys/audit-k1").status_code == 200
    add_user(hw, "adele", "admin")
    add_user(hw, "ana", "analyst")

    # a signed-in admin: the actor is the user, not a key
    adele, csrf = sign_in(hw, "adele")
    headers = {"x-csrf-token": csrf}
    assert adele.post("/api/keys", json={"name": "audit-k2", "role": "read"}, headers=headers).status_code == 201
    assert adele.delete("/api/users/ana", headers=headers).status_code == 200
    adele.close()
    # refused changes are not recorded as done
    assert api(hw, "DELETE", "/api/keys/no-such-key").status_code == 404

    rows = audit_rows(hw, action="key,user", since=str(since))
    seen = [(r["actor"], r["actor_kind"], r["action"], r["target"], r["address"]) for r in reversed(rows)]
    assert seen == [
        ("test-admin", "key", "key.created", "audit-k1", "127.0.0.1"),
        ("test-admin", "key", "key.revoked", "audit-k1", "127.0.0.1"),
        ("test-admin", "key", "user.created", "adele", "127.0.0.1"),
        ("test-admin", "key", "user.created", "ana", "127.0.0.1"),
        ("adele", "user", "key.created", "audit-k2", "127.0.0.1"),
        ("adele", "user", "user.deleted", "ana", "127.0.0.1"),
    ]
    by_target = {(r["action"], r["target"]): r for r in rows}
    assert by_target["key.created", "audit-k1"]["details"] == {"role": "write", "prefix": made.json()["key"][:9]}
    assert by_target["user.created", "ana"]["details"] == {"role": "analyst"}
    assert rows[0]["at_ms"] >= since and rows[0]["at"].endswith("Z")
    # newest first, ids increasing with time; filters by action prefix and by actor
    assert [r["id"] for r in rows] == sorted((r["id"] for r in rows), reverse=True)
    assert {r["action"] for r in audit_rows(hw, action="key", since=str(since))} == {"key.created", "key.revoked"}
    assert [r["target"] for r in audit_rows(hw, actor="adele", action="key,user")] == ["ana", "audit-k2"]
    # no secret anywhere: neither the new key nor a password
    text = api(hw, "GET", "/api/audit", params={"format": "ndjson"}).text
    assert made.json()["key"] not in text and PASSWORD not in text


def test_role_and_password_changes(headwater: RunningHeadwater) -> None:
    hw = headwater
    add_user(hw, "rolf", "viewer")
    viewer, _ = sign_in(hw, "rolf")
    assert api(hw, "PATCH", "/api/users/rolf", json={"role": "analyst"}).status_code == 200
    assert api(hw, "PATCH", "/api/users/rolf", json={"password": "another-password-1"}).status_code == 200
    assert viewer.get("/api/me").status_code == 401  # a new password ends the sessions
    viewer.close()
    assert api(hw, "PATCH", "/api/users/rolf", json={"role": "root"}).status_code == 400
    assert api(hw, "PATCH", "/api/users/nobody", json={"role": "viewer"}).status_code == 404
    assert api(hw, "PATCH", "/api/users/rolf", key="read", json={"role": "admin"}).status_code == 403

    rows = audit_rows(hw, actor="test-admin", action="user.role_changed,user.password_changed")
    assert [(r["action"], r["target"], r["details"]) for r in rows[:2]] == [
        ("user.password_changed", "rolf", {}),
        ("user.role_changed", "rolf", {"from": "viewer", "to": "analyst"}),
    ]
    assert "another-password-1" not in api(hw, "GET", "/api/audit", params={"format": "ndjson"}).text


def test_share_links_created_and_revoked(headwater: RunningHeadwater) -> None:
    hw = headwater
    board = api(hw, "POST", "/api/dashboards", json={"name": "Audited", "tiles": []})
    assert board.status_code == 201, board.text
    board_id = board.json()["id"]
    link = api(hw, "POST", f"/api/dashboards/{board_id}/shares")
    assert link.status_code == 201, link.text
    token = link.json()["token"]
    assert api(hw, "DELETE", f"/api/dashboards/{board_id}/shares/{token[:8]}").status_code == 200

    rows = audit_rows(hw, action="share")
    assert [(r["action"], r["actor"], r["target"], r["details"]) for r in rows[:2]] == [
        ("share.revoked", "test-admin", f"dashboard:{board_id}", {"prefix": token[:8]}),
        ("share.created", "test-admin", f"dashboard:{board_id}", {"prefix": token[:8]}),
    ]
    assert token not in api(hw, "GET", "/api/audit", params={"format": "csv"}).text


def test_the_table_refuses_update_and_delete(headwater: RunningHeadwater) -> None:
    assert audit_rows(headwater, limit="1")  # the server start recorded its settings at least
    engine = sa.create_engine(catalog_uri(headwater))
    try:
        statements = ["UPDATE headwater_audit SET actor = 'nobody'", "DELETE FROM headwater_audit"]
        if engine.dialect.name == "postgresql":
            statements.append("TRUNCATE headwater_audit")
        for statement in statements:
            with pytest.raises(sa.exc.DBAPIError, match="headwater_audit is append-only"), engine.begin() as conn:
                conn.exec_driver_sql(statement)
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM headwater_audit WHERE actor = 'nobody'").scalar() == 0
    finally:
        engine.dispose()


def test_only_admins_read_it(headwater: RunningHeadwater) -> None:
    hw = headwater
    refused = api(hw, "GET", "/api/audit", key="read")
    assert refused.status_code == 403
    assert "audit trail is for admins" in refused.json()["error"]
    assert api(hw, "GET", "/api/audit", key="").status_code == 401
    add_user(hw, "vic", "viewer")
    viewer, _ = sign_in(hw, "vic")
    response = viewer.get("/api/audit")
    viewer.close()
    assert response.status_code == 403 and "vic" in response.json()["error"]


def test_exports_and_bad_parameters(headwater: RunningHeadwater) -> None:
    hw = headwater
    for name in ("audit-e1", "audit-e2", "audit-e3"):
        assert api(hw, "POST", "/api/keys", json={"name": name, "role": "write"}).status_code == 201

    exported = api(hw, "GET", "/api/audit", params={"format": "csv", "action": "key.created"})
    assert exported.status_code == 200
    assert exported.headers["content-type"].startswith("text/csv")
    assert exported.headers["content-disposition"].startswith('attachment; filename="headwater-audit-')
    table = list(csv.DictReader(io.StringIO(exported.text)))
    assert list(table[0]) == ["id", "at", "at_ms", "actor", "actor_kind", "action", "target", "address", "details"]
    assert [r["target"] for r in table[:3]] == ["audit-e3", "audit-e2", "audit-e1"]
    assert orjson.loads(table[0]["details"])["role"] == "write"

    lines = api(hw, "GET", "/api/audit", params={"format": "ndjson", "actor": "test-*", "limit": "2"}).text.splitlines()
    assert len(lines) == 2 and all(orjson.loads(line)["actor"] == "test-admin" for line in lines)

    # pages: next_before_id leads to the older rows
    first = api(hw, "GET", "/api/audit", params={"action": "key.created", "limit": "2"}).json()
    assert [r["target"] for r in first["rows"]] == ["audit-e3", "audit-e2"]
    older = audit_rows(hw, action="key.created", limit="1", before_id=str(first["next_before_id"]))
    assert [r["target"] for r in older] == ["audit-e1"]
    # a window in time
    assert audit_rows(hw, since="2999-01-01T00:00:00Z") == []
    assert audit_rows(hw, until="2000-01-01") == []

    for params, name in (({"limit": "lots"}, "limit"), ({"since": "yesterday"}, "since"),
                         ({"format": "xml"}, "format"), ({"acton": "key"}, "acton"),
                         ({"before_id": "-3"}, "before_id"), ({"limit": "1000001"}, "limit")):  # fmt: skip
        response = api(hw, "GET", "/api/audit", params=params)
        assert response.status_code == 400, params
        assert response.json()["error"].startswith(f"{name}:"), response.json()


def test_cli_changes_are_recorded_and_printed(headwater: RunningHeadwater) -> None:
    hw = headwater
    env = child_env(hw.data_dir, **hw.settings)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "headwater.cli.main", *args, "--data-dir", str(hw.data_dir)],
                              capture_output=True, text=True, env=env, timeout=120, check=False)  # fmt: skip

    key = cli("keys", "create", "audit-cli", "--role", "read", "--quiet")
    assert key.returncode == 0, key.stderr
    assert cli("keys", "revoke", "audit-cli").returncode == 0
    assert cli("users", "create", "carl", "--role", "viewer", "--password", PASSWORD).returncode == 0
    assert cli("users", "set-role", "carl", "analyst").returncode == 0
    assert cli("users", "set-password", "carl", "--password", "carl-password-2").returncode == 0
    users = cli("audit", "--action", "user", "--actor", cli_actor(), "--format", "ndjson").stdout.splitlines()
    assert [orjson.loads(line)["action"] for line in users[:3]] == [
        "user.password_changed",
        "user.role_changed",
        "user.created",
    ]

    ndjson = cli("audit", "--action", "key", "--actor", "cli:*", "--format", "ndjson")
    assert ndjson.returncode == 0, ndjson.stderr
    rows = [orjson.loads(line) for line in ndjson.stdout.splitlines()]
    assert [(r["action"], r["target"], r["actor_kind"]) for r in rows[:2]] == [
        ("key.revoked", "audit-cli", "cli"),
        ("key.created", "audit-cli", "cli"),
    ]
    assert rows[0]["actor"] == cli_actor() and rows[0]["address"]
    assert key.stdout.strip() not in ndjson.stdout

    table = cli("audit", "--limit", "5")
    assert table.returncode == 0, table.stderr
    assert "key.revoked" in table.stdout and "audit-cli" in table.stdout and " rows" in table.stderr
    exported = cli("audit", "--format", "csv", "--limit", "0", "--action", "key.created")
    parsed = list(csv.DictReader(io.StringIO(exported.stdout)))
    assert parsed and all(r["action"] == "key.created" for r in parsed)
    bad = cli("audit", "--since", "last tuesday")
    assert bad.returncode == 1 and "--since" in bad.stderr
    assert "--action" in cli("audit", "--help").stdout


def test_server_start_records_the_settings(headwater: RunningHeadwater) -> None:
    rows = audit_rows(headwater, action="settings")
    assert rows[-1]["action"] == "settings.started" and rows[-1]["actor"] == "system"
    details = rows[-1]["details"]
    assert details["settings"]["flush_interval_ms"] == 200
    if headwater.settings:  # the cluster: its secrets are masked, not stored
        assert details["settings"]["s3_secret_access_key"] == "****"
        assert headwater.settings["s3_secret_access_key"] not in orjson.dumps(rows).decode()


def test_settings_changes_between_starts(audit_log: AuditLog, tmp_path: Path) -> None:
    base = make_settings(tmp_path, query_max_rows=5)
    first = audit_log.check_settings(base, started_by="ops@box")
    assert first is not None and "changed" not in first and first["started_by"] == "ops@box"
    assert audit_log.check_settings(make_settings(tmp_path, query_max_rows=5)) is None  # same: nothing recorded

    source = {"name": "bets", "kind": "rabbitmq", "url": "amqp://hw:first-pass@mq:5672/", "queue": "bets"}
    changed = make_settings(tmp_path, query_max_rows=7, s3_secret_access_key="first-secret", sources=[source])
    details = audit_log.check_settings(changed)
    assert details is not None and details["changed"] == ["query_max_rows", "s3_secret_access_key", "sources"]
    assert details["settings"]["sources"][0]["url"] == "amqp://hw:****@mq:5672/"

    rotated = {**source, "url": "amqp://hw:second-pass@mq:5672/"}
    again = make_settings(tmp_path, query_max_rows=7, s3_secret_access_key="second-secret", sources=[rotated])
    details = audit_log.check_settings(again)
    assert details is not None and details["changed"] == ["s3_secret_access_key", "sources"]  # one secret for another

    rows = audit_log.query(action="settings")
    assert [r["action"] for r in rows] == ["settings.changed", "settings.changed", "settings.started"]
    stored = orjson.dumps(rows).decode()
    for secret in ("first-pass", "second-pass", "first-secret", "second-secret"):
        assert secret not in stored


def test_record_refuses_secrets_and_unknown_actions(audit_log: AuditLog) -> None:
    for details in ({"password": "hunter2-hunter2"}, {"new": {"token": "abc"}}, {"note": "hw_a_" + "x" * 43}):
        with pytest.raises(ValueError, match="never record"):
            audit_log.record("ana", "key.created", "k", details)
    with pytest.raises(ValueError, match="not one of"):
        audit_log.record("ana", "key.stolen", "k")
    with pytest.raises(ValueError, match="actor_kind"):
        audit_log.record("ana", "key.created", "k", actor_kind="robot")
    assert audit_log.query() == []
    # ids of deleted people arrive hashed; the privacy code records them as given
    row_id = audit_log.record("system", "privacy.deletion_completed", "req-1", {"ids_hashed": ["9f2c", "77ab"]})
    assert audit_log.query()[0] | {"at": "", "at_ms": 0} == {
        "id": row_id, "at": "", "at_ms": 0, "actor": "system", "actor_kind": "system",
        "action": "privacy.deletion_completed", "target": "req-1", "address": "",
        "details": {"ids_hashed": ["9f2c", "77ab"]},
    }  # fmt: skip
    # creating the table and triggers again (every process does at start) changes nothing
    again = AuditLog(audit_log.engine)
    assert len(again.query()) == 1
    again.close()
    assert len(audit_log.query()) == 1


@pytest.mark.services
def test_postgres_triggers(postgres_server: Any, tmp_path: Path) -> None:
    uri = postgres_server.create_database("audit_triggers")
    first, second = AuditLog(uri), AuditLog(uri)  # idempotent: two processes creating the same triggers
    try:
        first.record("ana", "user.role_changed", "bob", {"from": "viewer", "to": "analyst"}, "10.1.2.3")
        assert second.query(action="user")[0]["address"] == "10.1.2.3"
        for statement in ("UPDATE headwater_audit SET actor = 'x'", "DELETE FROM headwater_audit",
                          "TRUNCATE headwater_audit"):  # fmt: skip
            with pytest.raises(sa.exc.DBAPIError, match="append-only"), first.engine.begin() as conn:
                conn.exec_driver_sql(statement)
        settings = make_settings(tmp_path)
        assert first.check_settings(settings) is not None and second.check_settings(settings) is None
        assert len(first.query()) == 2
    finally:
        first.close()
        second.close()
