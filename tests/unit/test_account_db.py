"""The account stores on `app_db_uri`: per-store SQLite files by default (existing data dirs keep working),
or one database shared by all three stores."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from headwater.auth.keys import KeyStore
from headwater.auth.users import UserStore
from headwater.boards.store import BoardStore
from tests.helpers import make_settings

QUERY = {"kind": "trend", "series": [{"event": "X"}], "date_from": "2026-01-01T00:00:00Z",
         "date_to": "2026-01-02T00:00:00Z"}  # fmt: skip

# the schemas Headwater created before the stores moved to SQLAlchemy
OLD_SCHEMAS = {
    "keys": """
        CREATE TABLE api_keys (name TEXT PRIMARY KEY, role TEXT NOT NULL, key_hash TEXT NOT NULL UNIQUE,
            prefix TEXT NOT NULL, created_ms INTEGER NOT NULL, revoked_ms INTEGER);
        INSERT INTO api_keys VALUES ('old', 'write', 'x', 'hw_w_old', 1, NULL);
    """,
    "users": """
        CREATE TABLE users (name TEXT PRIMARY KEY, role TEXT NOT NULL, password_hash TEXT NOT NULL,
            created_ms INTEGER NOT NULL);
        CREATE TABLE sessions (token_hash TEXT PRIMARY KEY, user TEXT NOT NULL REFERENCES users (name)
            ON DELETE CASCADE, csrf TEXT NOT NULL, created_ms INTEGER NOT NULL, expires_ms INTEGER NOT NULL);
        INSERT INTO users VALUES ('old', 'viewer', 'not-a-hash', 1);
    """,
    "app": """
        CREATE TABLE insights (id INTEGER PRIMARY KEY, name TEXT NOT NULL, query TEXT NOT NULL,
            created_by TEXT NOT NULL, created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL);
        CREATE TABLE dashboards (id INTEGER PRIMARY KEY, name TEXT NOT NULL, body TEXT NOT NULL,
            created_by TEXT NOT NULL, created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL);
        CREATE TABLE shares (token_hash TEXT PRIMARY KEY, prefix TEXT NOT NULL, dashboard_id INTEGER NOT NULL
            REFERENCES dashboards (id) ON DELETE CASCADE, created_by TEXT NOT NULL, created_ms INTEGER NOT NULL);
        INSERT INTO dashboards VALUES (7, 'old board', '{"tiles": []}', 'old', 1, 1);
    """,
}


def test_store_uris_default_to_the_data_dir_files_and_app_db_uri_overrides_all(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "da ta?")
    assert settings.store_uri("keys") == f"sqlite:///{tmp_path}/da%20ta%3F/keys.db"
    assert settings.store_uri("users").endswith("/users.db") and settings.store_uri("app").endswith("/app.db")
    shared = make_settings(tmp_path, app_db_uri="postgresql+psycopg://h/accounts")
    assert {shared.store_uri(s) for s in ("keys", "users", "app")} == {"postgresql+psycopg://h/accounts"}
    store = KeyStore(settings.store_uri("keys"))  # a data dir with special characters is created and opened
    store.close()
    assert (tmp_path / "da ta?" / "keys.db").exists()


def test_existing_data_dir_files_keep_working(tmp_path: Path) -> None:
    for name, script in OLD_SCHEMAS.items():
        with sqlite3.connect(tmp_path / f"{name}.db") as conn:
            conn.executescript(script)
        conn.close()
    settings = make_settings(tmp_path)
    keys = KeyStore(settings.store_uri("keys"), cache_s=0)
    key = keys.create("new", "write")
    assert [k.name for k in keys.list()] == ["old", "new"] and keys.require(key, write=True).name == "new"
    keys.close()
    users = UserStore(settings.store_uri("users"))
    users.create("ana", "admin", "correct horse battery")
    token, _ = users.login("ana", "correct horse battery")
    assert users.count() == 2 and users.session(token) is not None
    users.delete("ana")
    assert users.session(token) is None
    users.close()
    boards = BoardStore(settings.store_uri("app"))
    assert boards.dashboards()[0]["name"] == "old board"
    share = boards.share(7, "ana")
    assert boards.shared_dashboard(share) == 7
    assert boards.save_insight("new", QUERY, "ana")["id"] == 1
    boards.delete_dashboard(7)
    assert boards.shared_dashboard(share) is None
    boards.close()


def test_three_stores_share_one_database(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/shared.db"
    keys, users, boards = KeyStore(uri), UserStore(uri), BoardStore(uri)
    try:
        key = keys.create("k", "admin")
        users.create("ana", "analyst", "correct horse battery")
        insight = boards.save_insight("i", QUERY, "ana")
        board = boards.save_dashboard("d", {"tiles": [{"insight_id": insight["id"]}]}, "ana")
        again = KeyStore(uri)  # another server on the same database
        assert again.require(key, read=True).name == "k"
        again.close()
        assert [u.name for u in users.list()] == ["ana"] and boards.dashboards()[0]["id"] == board["id"]
    finally:
        for store in (keys, users, boards):
            store.close()
    with sqlite3.connect(tmp_path / "shared.db") as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    conn.close()
    assert tables == {"api_keys", "users", "sessions", "insights", "dashboards", "shares"}
