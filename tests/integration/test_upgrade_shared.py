"""A catalog and account database shared by several nodes (PostgreSQL): upgraded once, refused when newer."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from headwater.auth.keys import KeyStore
from headwater.lake.coordination import open_engine
from tests.helpers import child_env
from tests.services import PostgresServer

pytestmark = pytest.mark.cluster


def upgrade(data_dir: Path, uri: str, *args: str) -> subprocess.Popen[str]:
    env = child_env(data_dir, catalog_uri=uri, app_db_uri=uri)
    command = [sys.executable, "-m", "headwater.cli.main", "upgrade", *args]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_nodes_sharing_a_postgresql_catalog_upgrade_it_once_and_refuse_a_newer_one(
    tmp_path: Path, postgres_server: PostgresServer
) -> None:
    uri = postgres_server.create_database(f"hw_upgrade_{uuid.uuid4().hex[:8]}")
    open_engine(uri).dispose()  # the tables the previous version made, without any format row: format 1
    store = KeyStore(uri)
    key = store.create("before", "admin")
    store.close()

    check = upgrade(tmp_path / "a", uri, "--check", "--json")
    out, err = check.communicate(timeout=120)
    assert check.returncode == 1, err
    found = {c["component"]: c["found"] for c in json.loads(out)["components"]}
    assert found["catalog"] == 1 and found["accounts"] == 1

    nodes = [upgrade(tmp_path / name, uri) for name in ("a", "b")]  # two nodes start at once
    results = [p.communicate(timeout=300) for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], results
    engine = sa.create_engine(uri)
    try:
        with engine.connect() as conn:
            rows = dict(conn.execute(sa.text("SELECT component, version FROM headwater_format")).all())
        assert rows == {"catalog": 2, "accounts": 2, "step:catalog-1-2": 2, "step:accounts-1-2": 2}
        for name in ("a", "b"):
            assert json.loads((tmp_path / name / "FORMAT.json").read_text())["format"] == 2
        backup = json.loads((tmp_path / "a").joinpath("FORMAT.json").read_text())["history"]
        if backup and backup[0].get("backup"):  # the node that ran the steps says what it could not copy
            manifest = json.loads((tmp_path / "a" / backup[0]["backup"] / "BACKUP.json").read_text())
            assert manifest["copied"] == [] and any("postgresql" in line for line in manifest["not_copied"])
        store = KeyStore(uri)
        assert store.lookup(key) is not None  # the accounts are as they were
        store.close()

        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE headwater_format SET version = 3, written_by = 'headwater 4.0' "
                                 "WHERE component = 'catalog'"))  # fmt: skip
        refused = upgrade(tmp_path / "b", uri)
        _, err = refused.communicate(timeout=120)
        message = " ".join(err.split())
        assert refused.returncode == 1 and "catalog format 3, written by headwater 4.0" in message, message
    finally:
        engine.dispose()
