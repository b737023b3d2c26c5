"""`headwater sql-server`: real psql, psycopg and SQLAlchemy's PostgreSQL dialect against a real running platform."""

from __future__ import annotations

import datetime as dt
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg
import pytest
import sqlalchemy as sa

from headwater.auth.users import UserStore
from headwater.query import seed_queries
from tests.helpers import RunningHeadwater, child_env, make_settings

PSQL = "/usr/bin/psql"
ANALYST_PASSWORD = "analyst-password-1"
VIEWER_PASSWORD = "viewer-password-1"


@dataclass
class SqlServer:
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    def dsn(self, user: str, password: str, sslmode: str = "disable", **extra: str) -> str:
        parts = {"host": "127.0.0.1", "port": str(self.port), "user": user, "password": password,
                 "dbname": "headwater", "sslmode": sslmode, "connect_timeout": "20", **extra}  # fmt: skip
        return " ".join(f"{k}='{v}'" for k, v in parts.items())


def start_sql_server(data_dir: Path, env: dict[str, str], name: str) -> SqlServer:
    port_file = data_dir / "run" / f"{name}.port"
    port_file.unlink(missing_ok=True)
    log = data_dir / f"{name}.log"
    args = [sys.executable, "-m", "headwater.cli.main", "sql-server", "--port", "0", "--port-file", str(port_file)]
    with open(log, "ab") as out:
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while not port_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"sql-server did not start: {log.read_text()[-3000:]}")
        time.sleep(0.05)
    return SqlServer(int(port_file.read_text()), proc, log)


def stop(server: SqlServer) -> None:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(30)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()


@pytest.fixture(scope="module")
def sql(headwater: RunningHeadwater) -> Iterator[SqlServer]:
    settings = make_settings(headwater.data_dir, **headwater.settings)
    users = UserStore(settings.store_uri("users"))
    try:
        users.create("sql-analyst", "analyst", ANALYST_PASSWORD)
        users.create("sql-viewer", "viewer", VIEWER_PASSWORD)
    finally:
        users.close()
    server = start_sql_server(headwater.data_dir, child_env(headwater.data_dir, **headwater.settings), "sql")
    try:
        yield server
    finally:
        stop(server)


@pytest.fixture(scope="module")
def seeded(headwater: RunningHeadwater) -> list[dict[str, Any]]:
    """1,500 LOGIN / PURCHASE events over three months, in the lake."""
    start = dt.datetime(2025, 11, 1, tzinfo=dt.UTC)
    events = [
        {"event": "PURCHASE" if i % 3 == 0 else "LOGIN", "userId": f"user{i % 97}",
         "dateTime": (start + dt.timedelta(minutes=87 * i)).strftime("%Y-%m-%d %H:%M:%S")}
        for i in range(1500)
    ]  # fmt: skip
    body = b"\n".join(orjson.dumps(e) for e in events)
    assert headwater.post("/track", body, headwater.keys["write"]).json()["accepted"] == 1500
    headwater.wait_rows("SELECT count(*) FROM events", [[1500]])
    return events


def psql(server: SqlServer, user: str, password: str, *commands: str) -> subprocess.CompletedProcess[str]:
    args = [PSQL, server.dsn(user, password), "-X", "-v", "ON_ERROR_STOP=1"]
    for command in commands:
        args += ["-c", command]
    env = {**os.environ, "PGCONNECT_TIMEOUT": "20"}
    return subprocess.run(args, check=False, capture_output=True, text=True, timeout=60, env=env)


def _plain(value: Any) -> Any:
    """A psycopg value as /api/query's JSON gives it."""
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return value


def test_psql_lists_and_describes_tables(headwater: RunningHeadwater, sql: SqlServer, seeded: list[Any]) -> None:
    done = psql(sql, "test-read", headwater.keys["read"], r"\dt", r"\d events", "SELECT count(*) AS n FROM events")
    assert done.returncode == 0, done.stderr
    listing = done.stdout
    assert re.search(r"main\s+\|\s+events\s+\|\s+table", listing), listing
    assert re.search(r"main\s+\|\s+quarantine\s+\|\s+table", listing), listing
    assert 'Table "main.events"' in listing
    assert re.search(r"event_id\s+\|\s+text", listing) and re.search(r"timestamp\s+\|\s+timestamp without", listing)
    assert re.search(r"^\s*1500\s*$", listing, re.M), listing


def test_seed_queries_match_the_http_api(headwater: RunningHeadwater, sql: SqlServer, seeded: list[Any]) -> None:
    queries = [
        seed_queries.DISTINCT_USERS_IN_MONTH.format(month="2025-12"),
        seed_queries.EVENTS_BY_DAY,
        seed_queries.DISTINCT_USERS_BY_MONTH,
        "SELECT event, count(*) AS n, min(timestamp) AS first FROM events GROUP BY event ORDER BY event",
    ]
    with psycopg.connect(sql.dsn("test-read", headwater.keys["read"])) as conn:
        for query in queries:
            over_wire = [[_plain(v) for v in row] for row in conn.execute(query).fetchall()]
            over_http = [[v.replace(" ", "T") if isinstance(v, str) and re.match(r"\d{4}-\d\d-\d\d \d", v) else v
                          for v in row] for row in headwater.sql(query)]  # fmt: skip
            assert over_wire == over_http, query
            assert over_wire, query
        by_day = conn.execute(seed_queries.EVENTS_BY_DAY).fetchall()
        assert isinstance(by_day[0][0], dt.date) and isinstance(by_day[0][1], int)  # typed, not text


def test_bound_parameters_and_binary_results(headwater: RunningHeadwater, sql: SqlServer, seeded: list[Any]) -> None:
    purchases = sum(1 for e in seeded if e["event"] == "PURCHASE")
    with psycopg.connect(sql.dsn("test-read", headwater.keys["read"])) as conn:
        query = "SELECT count(*) FROM events WHERE event = %s AND user_id <> %s"
        assert conn.execute(query, ["PURCHASE", "it's nobody"]).fetchone() == (purchases,)
        assert conn.execute(query, ["LOGIN'; DROP TABLE events; --", "x"]).fetchone() == (0,)
        with conn.cursor(binary=True) as cursor:
            cursor.execute("SELECT count(*)::BIGINT, true, 2.5::DOUBLE, 'ü' FROM events WHERE event = %s", ["PURCHASE"])
            assert cursor.fetchone() == (purchases, True, 2.5, "ü")
        prepared = "SELECT count(*) FROM events WHERE user_id = %s"
        for user in ("user1", "user2", "user3", "user4", "user5", "user6"):  # past psycopg's prepare threshold
            expected = sum(1 for e in seeded if e["userId"] == user)
            assert conn.execute(prepared, [user], prepare=True).fetchone() == (expected,)


METABASE_TABLES = """SELECT n.nspname AS schema, c.relname AS name,
  CASE c.relkind WHEN 'r' THEN 'TABLE' WHEN 'p' THEN 'PARTITIONED TABLE' WHEN 'v' THEN 'VIEW' ELSE NULL END AS type,
  d.description AS description, stat.n_live_tup AS estimated_row_count
FROM pg_catalog.pg_class c
INNER JOIN pg_catalog.pg_namespace n ON c.relnamespace = n.oid
LEFT JOIN pg_catalog.pg_description d ON c.oid = d.objoid AND d.objsubid = 0 AND d.classoid = 'pg_class'::regclass
LEFT JOIN pg_stat_user_tables stat ON n.nspname = stat.schemaname AND c.relname = stat.relname
WHERE c.relnamespace = n.oid AND n.nspname !~ '^information_schema|catalog_history|pg_'
  AND n.nspname <> 'information_schema' AND c.relkind in ('r', 'p', 'v', 'f', 'm')
  AND has_table_privilege(current_user, quote_ident(n.nspname) || '.' || quote_ident(c.relname), 'SELECT')
ORDER BY type, schema, name"""


def test_bi_tool_catalog_queries(headwater: RunningHeadwater, sql: SqlServer, seeded: list[Any]) -> None:
    """What Superset (SQLAlchemy's PostgreSQL dialect) and Metabase ask at connect and sync."""
    with psycopg.connect(sql.dsn("test-read", headwater.keys["read"])) as conn:
        version = conn.execute("select pg_catalog.version()").fetchone()
        assert version and re.match(r"PostgreSQL \d+\.\d+", version[0])
        assert conn.execute("select current_schema()").fetchone() == ("main",)
        assert conn.execute("show transaction isolation level").fetchone() == ("read committed",)
        assert conn.execute("SHOW standard_conforming_strings").fetchone() == ("on",)
        conn.execute("SET application_name = 'Metabase v0.50'")
        conn.execute("SET extra_float_digits = 3")
        tables = conn.execute(
            "SELECT table_schema, table_name, table_type FROM information_schema.tables "
            "WHERE table_schema NOT IN ('pg_catalog', 'information_schema') ORDER BY table_name"
        ).fetchall()
        assert ("main", "events", "BASE TABLE") in tables and ("main", "quarantine", "BASE TABLE") in tables
        columns = conn.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
            ["public", "events"],
        ).fetchall()
        assert columns == [], "public is not a schema here"
        columns = conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = 'main' AND table_name = 'events' "
            "ORDER BY ordinal_position"
        ).fetchall()
        assert [c[0] for c in columns][:3] == ["event_id", "type", "event"]
        schemas = conn.execute("SELECT nspname FROM pg_catalog.pg_namespace ORDER BY 1").fetchall()
        assert ("main",) in schemas and ("hwpg",) not in schemas
        relations = conn.execute(
            "SELECT c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'main' AND c.relkind IN ('r', 'p', 'v', 'm', 'f') "
            "AND pg_catalog.pg_table_is_visible(c.oid) ORDER BY 1"
        ).fetchall()
        assert ("events",) in relations and not any(r[0].startswith("hw_") for r in relations)
        assert conn.execute("SELECT public.events.event FROM public.events LIMIT 1").fetchone() is not None
        listed = conn.execute(METABASE_TABLES).fetchall()  # Metabase's sync (its PostgreSQL driver's query)
        assert ("main", "events", "TABLE", None, None) in listed
        assert not any(schema.startswith("pg_") for schema, *_ in listed)
    url = sa.URL.create("postgresql+psycopg", "test-read", headwater.keys["read"], "127.0.0.1", sql.port, "headwater")
    engine = sa.create_engine(url.update_query_dict({"sslmode": "disable"}))
    try:
        inspector = sa.inspect(engine)
        assert "main" in inspector.get_schema_names()
        assert {"events", "quarantine"} <= set(inspector.get_table_names())
        types = {c["name"]: type(c["type"]).__name__ for c in inspector.get_columns("events")}
        assert types["event_id"] == "TEXT" and types["timestamp"] == "TIMESTAMP", types
        assert inspector.get_pk_constraint("events")["constrained_columns"] == []
        assert inspector.get_foreign_keys("events") == [] and inspector.get_indexes("events") == []
        with engine.connect() as conn:
            assert (
                conn.execute(sa.text("SELECT count(*) FROM events WHERE event = :e"), {"e": "LOGIN"}).scalar() == 1000
            )
    finally:
        engine.dispose()


def test_writes_and_file_access_are_refused(headwater: RunningHeadwater, sql: SqlServer) -> None:
    with psycopg.connect(sql.dsn("test-admin", headwater.keys["admin"]), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction, match=r"read-only.*only SELECT.*INSERT"):
            conn.execute("INSERT INTO events (event) VALUES ('x')")
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction, match="CREATE"):
            conn.execute("CREATE TABLE stolen AS SELECT * FROM events")
        with pytest.raises(psycopg.Error, match="only SELECT"):
            conn.execute("COPY events TO '/tmp/out.csv'")
        with pytest.raises(psycopg.Error):
            conn.execute("SELECT * FROM read_csv('/etc/passwd')")
        assert conn.execute("SELECT 1").fetchone() == (1,)  # the connection goes on after errors
    done = psql(sql, "test-read", headwater.keys["read"], "DELETE FROM events")
    assert done.returncode != 0 and "read-only" in done.stderr, done.stderr


def test_sign_in(headwater: RunningHeadwater, sql: SqlServer) -> None:
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(sql.dsn("test-read", "hw_r_wrong"))
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(sql.dsn("test-admin", headwater.keys["read"]))  # another key's name
    with pytest.raises(psycopg.OperationalError, match="SQL needs a read or admin key"):
        psycopg.connect(sql.dsn("test-write", headwater.keys["write"]))
    with pytest.raises(psycopg.OperationalError, match="SQL needs analyst or admin"):
        psycopg.connect(sql.dsn("sql-viewer", VIEWER_PASSWORD))
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(sql.dsn("sql-analyst", "not-the-password"))
    with psycopg.connect(sql.dsn("sql-analyst", ANALYST_PASSWORD)) as conn:
        assert conn.execute("SELECT 40 + 2").fetchone() == (42,)
    done = psql(sql, "test-read", "nope", "SELECT 1")
    assert done.returncode != 0 and "password authentication failed" in done.stderr


def _self_signed(folder: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1)).sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_path, key_path = folder / "sql.crt", folder / "sql.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    key_path.write_bytes(key_bytes)
    return cert_path, key_path


def test_tls(headwater: RunningHeadwater, tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    env = child_env(headwater.data_dir, sql_tls_cert=cert, sql_tls_key=key, **headwater.settings)
    server = start_sql_server(headwater.data_dir, env, "sql-tls")
    try:
        with psycopg.connect(server.dsn("test-read", headwater.keys["read"], sslmode="require")) as conn:
            assert conn.pgconn.ssl_in_use
            assert conn.execute("SELECT count(*) >= 0 FROM events").fetchone() == (True,)
        verified = server.dsn("test-read", headwater.keys["read"], sslmode="verify-ca", sslrootcert=str(cert))
        with psycopg.connect(verified) as conn:
            assert conn.pgconn.ssl_in_use
        with pytest.raises(psycopg.OperationalError, match="requires TLS"):
            psycopg.connect(server.dsn("test-read", headwater.keys["read"], sslmode="disable"))
        done = subprocess.run(
            [PSQL, server.dsn("test-read", headwater.keys["read"], sslmode="require"), "-X", "-c", r"\conninfo"],
            check=False, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0 and "SSL connection" in done.stdout, done.stdout + done.stderr
    finally:
        stop(server)


def test_bad_tls_settings_fail_clearly(headwater: RunningHeadwater, tmp_path: Path) -> None:
    env = child_env(headwater.data_dir, sql_tls_cert=tmp_path / "missing.crt", **headwater.settings)
    args = [sys.executable, "-m", "headwater.cli.main", "sql-server", "--port", "0"]
    done = subprocess.run(args, check=False, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "sql_tls_cert and sql_tls_key: set both" in done.stderr, done.stderr


def test_parameters_are_inlined_as_literals_only_outside_quotes() -> None:
    from headwater.sqlwire.sqltext import bind, local, rewrite

    sql = "SELECT '$1', \"$1\", $1 /* $2 */, $2 -- $1\n"
    assert bind(sql, ["it's", 7], [25, 23]) == "SELECT '$1', \"$1\", 'it''s' /* $2 */, 7 -- $1\n"
    assert bind("SELECT $1", ["1; DROP TABLE x"], [23]) == "SELECT '1; DROP TABLE x'"  # not a number: quoted
    assert rewrite("SELECT 'public.x' FROM public.events WHERE n OPERATOR(pg_catalog.~) '^a$'") == (
        "SELECT 'public.x' FROM main.events WHERE n  ~  '^a$'"
    )
    assert local("  set  application_name = 'x' ;") == local("SET application_name TO x")
    assert local("SELECT 1") is None and local("-- BEGIN\nSELECT 1") is None


def test_failed_sign_ins_are_throttled_and_audited(headwater: RunningHeadwater, sql: SqlServer) -> None:
    """Last in the module: it leaves this machine's address throttled for a while."""
    errors = []
    for _ in range(12):  # the first few failures are free (login_free_failures), then each one imposes a wait
        with pytest.raises(psycopg.OperationalError) as refused:
            psycopg.connect(sql.dsn("sql-guesser", "guess-1234567"))
        errors.append(str(refused.value))
        if "too many failed sign-ins" in errors[-1]:
            break
    assert "too many failed sign-ins" in errors[-1], errors
    assert "password authentication failed" in errors[0]
    rows = httpx.get(
        headwater.url + "/api/audit", params={"action": "login.failed", "actor": "sql-guesser"},
        headers={"authorization": f"Bearer {headwater.keys['admin']}"}, timeout=30,
    ).json()["rows"]  # fmt: skip
    assert len(rows) == len(errors) - 1  # a refusal while waiting checks no password and records nothing
    assert all(r["details"] == {"via": "sql"} and r["address"] == "127.0.0.1" for r in rows)
