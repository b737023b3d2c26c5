"""`headwater doctor`: checks the configured log, catalog, warehouse, query engine and sources, in that order.

Each check says what it found and, when it fails, what to change. A later check that depends on a
failed one is skipped rather than reported as a second, confusing failure.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from headwater.core.settings import Settings


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def _log_check(settings: Settings) -> Check:
    from headwater.lake.writer import GROUP
    from headwater.log import open_log

    event_log = open_log(settings)
    admin = event_log.admin()
    try:
        problem = admin.problem()
        if problem:
            return Check(
                "event log", False, problem, "start the log's brokers or fix its settings (log_backend, kafka_*)"
            )
        lag = admin.lag(GROUP)
    finally:
        admin.close()
    detail = f"{event_log.backend}, {event_log.partitions} partitions, lake writer {lag} records behind"
    return Check("event log", True, detail)


def _catalog_check(settings: Settings) -> Check:
    from headwater.lake.tables import NAMESPACE, SPECS, close_catalog, open_catalog

    catalog = open_catalog(settings)
    try:
        present = (NAMESPACE,) in catalog.list_namespaces()
        tables = {identifier[-1] for identifier in catalog.list_tables(NAMESPACE)} if present else set()
    finally:
        close_catalog(catalog)
    missing = sorted(set(SPECS) - tables)
    uri = settings.effective_catalog_uri.split("@")[-1]  # no credentials in the output
    detail = f"{uri}: tables {', '.join(sorted(tables)) or 'none yet'}"
    if missing:
        detail += f" (missing {', '.join(missing)}: created when the writer or server first starts)"
    return Check("catalog", True, detail)


def _warehouse_check(settings: Settings) -> Check:
    from pyiceberg.io import load_file_io

    from headwater.lake.tables import storage_properties, warehouse_uri

    root = warehouse_uri(settings).rstrip("/")
    io = load_file_io(storage_properties(settings), root)
    probe = f"{root}/_headwater_doctor/{uuid.uuid4().hex}"
    payload = f"headwater doctor {time.time()}".encode()
    with io.new_output(probe).create(overwrite=True) as out:
        out.write(payload)
    with io.new_input(probe).open() as stream:
        read = stream.read()
    io.delete(probe)
    if read != payload:
        return Check("warehouse", False, f"{root}: read back different bytes", "check the storage endpoint")
    return Check("warehouse", True, f"{root}: write, read and delete work")


def _query_check(settings: Settings) -> Check:
    from headwater.query.engine import QueryEngine

    engine = QueryEngine(settings)
    try:
        rows = engine.execute("SELECT count(*) FROM events").rows
    finally:
        engine.close()
    return Check("query engine", True, f"DuckDB reads the lake: {rows[0][0]} events")


FIXES = {
    "event log": "check log_backend and kafka_bootstrap_servers / kafka_client_options (SASL/TLS); "
    "is the broker running and reachable from here?",
    "catalog": "check catalog_uri (e.g. postgresql+psycopg://user:password@host:5432/db); "
    "does the database exist and accept this user?",
    "warehouse": "check warehouse (s3://bucket/prefix), s3_endpoint, s3_region and the credentials; does the "
    "bucket exist? With s3proxy or MinIO also set AWS_REQUEST_CHECKSUM_CALCULATION=WHEN_REQUIRED and "
    "AWS_RESPONSE_CHECKSUM_VALIDATION=WHEN_REQUIRED",
    "query engine": "the lake is readable by pyiceberg but not by DuckDB: check the s3_* settings",
}
CHECKS: list[tuple[str, Callable[[Settings], Check]]] = [
    ("event log", _log_check),
    ("catalog", _catalog_check),
    ("warehouse", _warehouse_check),
    ("query engine", _query_check),
]


def source_checks(settings: Settings) -> list[Check]:
    """One check per configured source: reachable, and its format usable (nothing changed upstream)."""
    from pathlib import Path

    from headwater.sources.checks import check_source

    base_dir = Settings.config_file.parent if Settings.config_file else Path.cwd()
    results = []
    for source in settings.sources:
        try:
            ok, detail, fix = check_source(settings, source, base_dir)
        except Exception as exc:
            ok, detail, fix = False, f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}", ""
        results.append(Check(f"source {source.name}", ok, detail, fix))
    return results


def run_checks(settings: Settings) -> list[Check]:
    """Every check, in order; the query check only runs when catalog and warehouse passed; then sources."""
    results: list[Check] = []
    for name, check in CHECKS:
        if name == "query engine" and not all(r.ok for r in results if r.name in ("catalog", "warehouse")):
            results.append(Check(name, False, "skipped: the catalog or the warehouse failed", ""))
            continue
        try:
            results.append(check(settings))
        except Exception as exc:
            message = " ".join(str(exc).split())[:500] or type(exc).__name__
            results.append(Check(name, False, f"{type(exc).__name__}: {message}", FIXES[name]))
    return results + source_checks(settings)
