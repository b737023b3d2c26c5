"""HTTP routes for stream processors: their status, and their served state tables by key.

The processors run in another process (`headwater process`, started by `headwater up`); the
server finds them in `settings.processors_dir`: each has `manifest.json` (run, input, outputs),
`status.json` (counters written every few checkpoints) and `state-<run>.db`, whose `served`
table holds the state tables. Lookups are synchronous SQLite point reads on the event loop (no
thread hop): well under a millisecond, and WAL lets them run while the processor commits.

- `GET /api/processors`: every processor with its counters; `stale` when its status is older
  than 30 s (the processor is stopped or stuck).
- `GET /api/state/<table>/<key>`: `{"table", "key", "value", "event_time"}`, 404 when missing.
- `GET /api/state/<table>?prefix=&start=&limit=`: keys in order after `start` that begin with
  `prefix`: `{"rows": [{"key", "value", "event_time"}], "next": <start of the next page> | null}`.

Reads need the `view` permission: read and admin keys, and every signed-in user.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from headwater.api.principal import authenticate
from headwater.api.responses import error_response, json_response
from headwater.core.errors import AuthError
from headwater.processing.state import ServedReader

STALE_MS = 30_000
RESCAN_S = 1.0
MAX_SCAN = 1000
DEFAULT_SCAN = 100
STATUS_FIELDS = ("records_in", "records_out", "late", "errors", "lag", "state_bytes", "last_error", "checkpoints")


class NotFound(Exception):
    """A state table, key or processor that is not there (answered 404 with the message)."""


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):  # missing, or replaced while we read it
        return None
    return found if isinstance(found, dict) else None


class ProcessorRegistry:
    """What the processors in `folder` declare, re-read at most once per `rescan_s` (and at once
    when a state table is not found); one `ServedReader` per processor, reopened when its run changes."""

    def __init__(self, folder: Path, rescan_s: float = RESCAN_S) -> None:
        self.folder = folder
        self.rescan_s = rescan_s
        self._lock = threading.Lock()
        self._scanned = -1e9
        self._manifests: dict[str, dict[str, Any]] = {}
        self._mtimes: dict[str, int] = {}
        self._serving: dict[str, str] = {}  # state table -> processor
        self._readers: dict[str, tuple[Path, ServedReader]] = {}

    # -- manifests --------------------------------------------------------------------------------
    def _rescan(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._scanned < self.rescan_s:
            return
        self._scanned = now
        manifests: dict[str, dict[str, Any]] = {}
        mtimes: dict[str, int] = {}
        try:
            folders = sorted(p for p in self.folder.iterdir() if p.is_dir())
        except FileNotFoundError:
            folders = []
        for folder in folders:
            path = folder / "manifest.json"
            try:
                mtime = path.stat().st_mtime_ns
            except FileNotFoundError:
                continue
            name = folder.name
            manifest = self._manifests.get(name) if self._mtimes.get(name) == mtime else _read_json(path)
            if manifest is None:
                continue
            manifests[name], mtimes[name] = manifest, mtime
        serving: dict[str, str] = {}
        newest_first = sorted(manifests.items(), key=lambda item: -int(item[1].get("started_at") or 0))
        for name, manifest in newest_first:  # two processors serving one name: the newest wins
            for table in (manifest.get("outputs") or {}).get("state_tables") or []:
                serving.setdefault(str(table), name)
        self._manifests, self._mtimes, self._serving = manifests, mtimes, serving
        for name in [n for n in self._readers if n not in manifests]:
            self._readers.pop(name)[1].close()

    def manifests(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            self._rescan()
            return dict(self._manifests)

    def streams(self) -> set[str]:
        """Every log stream the processors write (the live view may read these, and no other)."""
        out: set[str] = set()
        for name, manifest in self.manifests().items():
            outputs = manifest.get("outputs") or {}
            out.update(str(s) for s in outputs.get("streams") or [])
            out.update(f"{name}.table.{t}" for t in outputs.get("tables") or [])
            out.update(f"{name}.sink.{s}" for s in outputs.get("sinks") or [])
            out.update((f"{name}.late", f"{name}.errors"))
        return out

    # -- state tables -----------------------------------------------------------------------------
    def _reader(self, table: str) -> ServedReader:
        """The reader of the processor serving `table` (NotFound when none does); call with the lock
        held, and use the reader under it too (a rescan may close it)."""
        self._rescan()
        name = self._serving.get(table)
        if name is None:
            self._rescan(force=True)  # a processor may have started since the last scan
            name = self._serving.get(table)
        if name is None:
            known = ", ".join(sorted(self._serving)) or "none yet"
            raise NotFound(f"state table {table!r}: no processor serves it (state tables: {known})")
        run = str(self._manifests[name].get("run"))
        path = self.folder / name / f"state-{run}.db"
        cached = self._readers.get(name)
        if cached is not None and cached[0] == path:
            return cached[1]
        if cached is not None:
            cached[1].close()
            del self._readers[name]
        if not path.exists():
            raise NotFound(f"state table {table!r}: processor {name!r} (run {run}) has no state file yet")
        try:
            reader = ServedReader(path)
        except sqlite3.Error as exc:
            raise NotFound(f"state table {table!r}: cannot open the state of processor {name!r}: {exc}") from None
        self._readers[name] = (path, reader)
        return reader

    def get(self, table: str, key: str) -> dict[str, Any]:
        with self._lock:
            found = self._reader(table).get(table, key)
        if found is None:
            raise NotFound(f"key {key!r} not found in state table {table!r}")
        return {"table": table, "key": key, "value": found[0], "event_time": found[1]}

    def scan(self, table: str, prefix: str = "", start: str | None = None, limit: int = DEFAULT_SCAN) -> dict[str, Any]:
        with self._lock:
            rows = self._reader(table).scan(table, prefix, start, limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        return {"rows": rows, "next": rows[-1]["key"] if more else None}

    # -- status -----------------------------------------------------------------------------------
    def overview(self) -> list[dict[str, Any]]:
        """Each processor's manifest joined with its latest status."""
        now = int(time.time() * 1000)
        out = []
        for name, manifest in sorted(self.manifests().items()):
            status = _read_json(self.folder / name / "status.json") or {}
            current = status.get("run") == manifest.get("run")
            updated = status.get("updated_at") if current else None
            item: dict[str, Any] = {
                "name": name,
                "description": manifest.get("description") or "",
                "run": manifest.get("run"),
                "previous_run": manifest.get("previous_run"),
                "input": manifest.get("input"),
                "outputs": manifest.get("outputs") or {},
                "partitions": manifest.get("partitions"),
                "owned_partitions": status.get("partitions") if current else None,
                "started_at": manifest.get("started_at"),
                "updated_at": updated,
                "stale": updated is None or now - int(updated) > STALE_MS,
            }
            for field in STATUS_FIELDS:
                item[field] = status.get(field) if current else None
            out.append(item)
        return out

    def close(self) -> None:
        with self._lock:
            for _, reader in self._readers.values():
                reader.close()
            self._readers.clear()


def processor_routes(services: Callable[[], Any]) -> list[Route]:
    """Routes reading `services().processors` (a ProcessorRegistry); auth as every /api read."""

    def guarded(handler: Callable[[Request, ProcessorRegistry], Response]) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            s = services()
            try:
                authenticate(request, s.keys, s.users, "view")
                return handler(request, s.processors)
            except AuthError as exc:
                return error_response(str(exc), exc.status)
            except NotFound as exc:
                return error_response(str(exc), 404)
            except ValueError as exc:
                return error_response(str(exc), 400)

        return endpoint

    def processors(request: Request, registry: ProcessorRegistry) -> Response:
        return json_response({"processors": registry.overview()})

    def lookup(request: Request, registry: ProcessorRegistry) -> Response:
        key = request.path_params["key"]
        if not key:
            raise ValueError("key: empty; to list keys use GET /api/state/<table>?prefix=")
        return json_response(registry.get(request.path_params["table"], key))

    def scan(request: Request, registry: ProcessorRegistry) -> Response:
        params = request.query_params
        limit = params.get("limit", str(DEFAULT_SCAN))
        if not limit.isdigit() or not 1 <= int(limit) <= MAX_SCAN:
            raise ValueError(f"limit: must be an integer from 1 to {MAX_SCAN}, got {limit!r}")
        start = params.get("start") or None
        return json_response(registry.scan(request.path_params["table"], params.get("prefix", ""), start, int(limit)))

    return [
        Route("/api/processors", guarded(processors), methods=["GET"]),
        Route("/api/state/{table}", guarded(scan), methods=["GET"]),
        Route("/api/state/{table}/{key:path}", guarded(lookup), methods=["GET"]),
    ]
