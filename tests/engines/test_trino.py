"""Trino reads the Iceberg tables Headwater wrote and gives the same answers as Headwater itself.

Trino 476 (the server core plus the Iceberg plugin from Maven Central, see tools/jars/trino/pom.xml) runs on a
JDK 22 or newer, found under /usr/lib/jvm or in $TRINO_JAVA_HOME. One server per module, with dynamic catalogs:
each test adds a read-only Iceberg catalog of type `jdbc` on the deployment's SQL catalog.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import tarfile
import time
import uuid
import zipfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.engines.common import CART, INVALID, PROBE_ID, PROBE_PATH, SENT, Deployment, fill_lake, ground_truth
from tests.helpers import ROOT
from tests.services import free_ports, log_tail, stop_process

pytestmark = pytest.mark.trino

TRINO_VERSION = "476"
JARS = ROOT / ".tools" / "jars" / "trino"
TRINO_HOME = ROOT / ".tools" / "trino" / f"trino-server-core-{TRINO_VERSION}"
MIN_JAVA = 22


def trino_home() -> Path:
    """`.tools/trino/trino-server-core-476` with the Iceberg plugin and SQLite's JDBC driver, unpacked once."""
    if (TRINO_HOME / ".complete").exists():
        return TRINO_HOME
    if not (JARS / ".complete").exists():
        subprocess.run([str(ROOT / "tools" / "fetch-jars.sh"), "trino"], check=True)
    TRINO_HOME.parent.mkdir(parents=True, exist_ok=True)
    with open(TRINO_HOME.parent / ".unpack.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent test sessions unpack once
        if not (TRINO_HOME / ".complete").exists():
            shutil.rmtree(TRINO_HOME, ignore_errors=True)
            with tarfile.open(JARS / f"trino-server-core-{TRINO_VERSION}.tar.gz") as archive:
                archive.extractall(TRINO_HOME.parent, filter="data")
            plugins = TRINO_HOME / "plugin"
            with zipfile.ZipFile(JARS / f"trino-iceberg-{TRINO_VERSION}.zip") as archive:
                archive.extractall(plugins)
            (plugins / f"trino-iceberg-{TRINO_VERSION}").rename(plugins / "iceberg")
            for jar in JARS.glob("sqlite-jdbc-*.jar"):  # the plugin bundles PostgreSQL's driver, not SQLite's
                shutil.copy(jar, plugins / "iceberg")
            (TRINO_HOME / ".complete").touch()
    return TRINO_HOME


def java_home() -> Path:
    """A JDK that Trino accepts: $TRINO_JAVA_HOME, else the newest one under /usr/lib/jvm."""
    candidates = [Path(os.environ["TRINO_JAVA_HOME"])] if os.environ.get("TRINO_JAVA_HOME") else []
    candidates += sorted(Path("/usr/lib/jvm").glob("*"), reverse=True)
    for home in candidates:
        release = home / "release"
        if (home / "bin" / "java").exists() and release.exists():
            found = re.search(r'^JAVA_VERSION="(\d+)', release.read_text(), re.MULTILINE)
            if found and int(found.group(1)) >= MIN_JAVA:
                return home
    pytest.fail(f"Trino {TRINO_VERSION} needs Java {MIN_JAVA}+: none under /usr/lib/jvm; set TRINO_JAVA_HOME")


class TrinoError(Exception):
    """A statement failed; the message is Trino's."""


class TrinoServer:
    """A single-node Trino (coordinator and worker) on a free port, stopped by its process id."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "trino.log"
        self.startup_seconds = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _configure(self) -> Path:
        (self.port,) = free_ports(1)
        etc = self.workdir / "etc"
        etc.mkdir()
        (etc / "node.properties").write_text(
            f"node.environment=headwater_test\nnode.id={uuid.uuid4()}\nnode.data-dir={self.workdir / 'data'}\n"
        )
        (etc / "config.properties").write_text(
            "coordinator=true\n"
            "node-scheduler.include-coordinator=true\n"
            f"http-server.http.port={self.port}\n"
            f"discovery.uri={self.url}\n"
            "catalog.management=dynamic\n"  # CREATE CATALOG / DROP CATALOG, one per test
            "catalog.store=memory\n"
            "query.max-memory=256MB\n"
            "query.max-memory-per-node=256MB\n"
        )
        (etc / "jvm.config").write_text(
            "-server\n-Xmx1G\n-XX:+UseG1GC\n-XX:+ExitOnOutOfMemoryError\n-Djdk.attach.allowAttachSelf=true\n"
            # the AWS SDK's default checksum headers are not implemented by s3proxy (501 on GET)
            "-Daws.requestChecksumCalculation=WHEN_REQUIRED\n-Daws.responseChecksumValidation=WHEN_REQUIRED\n"
        )
        (etc / "log.properties").write_text("io.trino=WARN\nio.trino.server.Server=INFO\n")
        return etc

    def start(self, timeout: float = 180) -> TrinoServer:
        started = time.monotonic()
        home, java = trino_home(), java_home()
        etc = self._configure()
        env = {**os.environ, "JAVA_HOME": str(java), "PATH": f"{java / 'bin'}:{os.environ['PATH']}"}
        args = [str(home / "bin" / "launcher"), "run", f"--etc-dir={etc}", f"--data-dir={self.workdir / 'data'}"]
        with open(self.log_path, "ab") as log_file:  # `launcher run` execs java: the pid is the JVM's
            self.proc = subprocess.Popen(
                args, env=env, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT
            )
        while not self._ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"trino exited with {self.proc.returncode}:\n{log_tail(self.log_path)}")
            if time.monotonic() > started + timeout:
                self.stop()
                raise RuntimeError(f"trino not ready in {timeout} s:\n{log_tail(self.log_path)}")
            time.sleep(0.5)
        self.startup_seconds = time.monotonic() - started
        return self

    def _ready(self) -> bool:
        try:
            response = httpx.get(self.url + "/v1/info", timeout=2)
        except httpx.HTTPError:
            return False
        return response.status_code == 200 and response.json().get("starting") is False

    def stop(self, timeout: float = 60) -> None:
        proc, self.proc = self.proc, None
        stop_process(proc, timeout)

    def query(self, sql: str) -> list[list[Any]]:
        """Run one statement over Trino's client protocol; timestamps keep their precision (PARAMETRIC_DATETIME)."""
        headers = {"X-Trino-User": "headwater-test", "X-Trino-Client-Capabilities": "PARAMETRIC_DATETIME"}
        with httpx.Client(timeout=120) as client:
            payload = client.post(self.url + "/v1/statement", content=sql, headers=headers).json()
            rows: list[list[Any]] = []
            while True:
                if "error" in payload:
                    raise TrinoError(f"{payload['error']['message']}\n{sql}")
                rows += payload.get("data", [])
                if "nextUri" not in payload:
                    return rows
                payload = client.get(payload["nextUri"], headers=headers).json()


@pytest.fixture(scope="module")
def trino(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrinoServer]:
    server = TrinoServer(tmp_path_factory.mktemp("trino"))
    try:
        server.start()
        print(f"trino started in {server.startup_seconds:.1f} s")
        yield server
    finally:
        server.stop()


def trino_catalog(deployment: Deployment) -> dict[str, str]:
    """Properties of a read-only Trino Iceberg catalog on the deployment's SQL catalog and warehouse."""
    uri, user, password = deployment.jdbc()
    props = {
        "iceberg.catalog.type": "jdbc",
        "iceberg.jdbc-catalog.catalog-name": "headwater",  # the name pyiceberg stored in every catalog row
        "iceberg.jdbc-catalog.driver-class": "org.sqlite.JDBC" if "sqlite" in uri else "org.postgresql.Driver",
        "iceberg.jdbc-catalog.connection-url": uri,
        "iceberg.jdbc-catalog.default-warehouse-dir": deployment.warehouse,
        "iceberg.security": "read_only",
    }
    if user:
        props["iceberg.jdbc-catalog.connection-user"] = user
    if password:
        props["iceberg.jdbc-catalog.connection-password"] = password
    settings = deployment.settings
    if deployment.warehouse.startswith("s3://"):
        props |= {
            "fs.native-s3.enabled": "true",
            "s3.endpoint": settings["s3_endpoint"],
            "s3.region": settings["s3_region"],
            "s3.path-style-access": "true",
            "s3.aws-access-key": settings["s3_access_key_id"],
            "s3.aws-secret-key": settings["s3_secret_access_key"],
        }
    else:
        props |= {"fs.native-local.enabled": "true", "local.location": "/"}
    return props


def literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def trino_answers(trino: TrinoServer, events: str, quarantine: str) -> dict[str, Any]:
    """The questions of `headwater_answers`, in Trino SQL."""
    probe = f"FROM {events} WHERE event_id = '{PROBE_ID}'"
    day = "CAST(CAST(timestamp AS date) AS varchar)"
    return {
        "count": trino.query(f"SELECT count(*) FROM {events}")[0][0],
        "days": trino.query(f"SELECT {day}, count(*) FROM {events} GROUP BY 1 ORDER BY 1"),
        "users": trino.query(f"SELECT count(DISTINCT user_id) FROM {events}")[0][0],
        "times": trino.query(f"SELECT event_id, CAST(timestamp AS varchar) FROM {events} ORDER BY event_id"),
        "probe_time": trino.query(f"SELECT CAST(timestamp AS varchar) {probe}")[0][0],
        "probe_title": trino.query(f"SELECT json_extract_scalar(properties, '{PROBE_PATH}') {probe}")[0][0],
        "quarantine": trino.query(f"SELECT count(*) FROM {quarantine}")[0][0],
    }


def test_trino_reads_what_headwater_wrote(trino: TrinoServer, deployment: Deployment) -> None:
    expected = ground_truth()
    assert fill_lake(deployment) == expected  # Headwater's own answers, taken before it stopped

    columns = deployment.catalog_columns()
    catalog = f"hw_{deployment.kind}_{uuid.uuid4().hex[:8]}"
    properties = ", ".join(f'"{key}" = {literal(value)}' for key, value in trino_catalog(deployment).items())
    trino.query(f"CREATE CATALOG {catalog} USING iceberg WITH ({properties})")
    try:
        events, quarantine = f"{catalog}.headwater.events", f"{catalog}.headwater.quarantine"
        types = trino.query(
            f"SELECT column_name, data_type FROM {catalog}.information_schema.columns "
            "WHERE table_schema = 'headwater' AND table_name = 'events' AND column_name IN ('timestamp', 'properties') "
            "ORDER BY column_name"
        )
        assert types == [["properties", "varchar"], ["timestamp", "timestamp(6)"]]  # no time zone; JSON as text
        assert trino_answers(trino, events, quarantine) == expected

        stored = {
            row[0]: datetime.fromisoformat(row[1]) for row in trino.query(f"SELECT event_id, timestamp FROM {events}")
        }
        assert stored == {sent.message_id: sent.utc for sent in SENT}
        probe = trino.query(f"SELECT properties FROM {events} WHERE event_id = '{PROBE_ID}'")[0][0]
        assert orjson.loads(probe) == CART
        assert trino.query(f"SELECT raw FROM {quarantine}") == [[INVALID]]
        with pytest.raises(TrinoError, match="Access Denied"):  # the catalog is read-only
            trino.query(f"DELETE FROM {events} WHERE event_id = '{PROBE_ID}'")
    finally:
        trino.query(f"DROP CATALOG {catalog}")

    assert deployment.catalog_columns() == columns  # Trino did not create or migrate catalog tables
