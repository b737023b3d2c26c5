"""A source's `status.json` (what the Sources page and `headwater sources` show), written atomically."""

from __future__ import annotations

import collections
import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from headwater.core import metrics
from headwater.core.erasure import ErasureSet
from headwater.core.settings import Settings
from headwater.core.source_settings import SourceSettings
from headwater.log.erase import TokenMatcher

RECENT_REJECTIONS = 20
WRITE_EVERY_S = 1.0
STALE_AFTER_S = 10.0


def target_of(source: SourceSettings) -> str:
    """Where a source's records land, as the status shows it: `table NAME` or `stream NAME`."""
    return f"table {source.table}" if source.table else f"stream {source.stream}"


class SourceStatus:
    """Counters of one running source, flushed to Prometheus and to `<sources_dir>/<name>/status.json`."""

    def __init__(self, settings: Settings, source: SourceSettings) -> None:
        self.source = source
        self.path = settings.sources_dir / source.name / "status.json"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.state = "starting"
        self.records_in = self.appended = self.rejected = self.duplicates = self.errors = 0
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.lag: int | None = None
        self.progress: dict[str, Any] = {}
        self.table_rows: int | None = None
        self.rejections: collections.deque[dict[str, Any]] = collections.deque(maxlen=RECENT_REJECTIONS)
        self.started_at = time.time()
        self._rates: collections.deque[tuple[float, int]] = collections.deque(maxlen=30)
        self.written_at = 0.0
        self._written_stamp: tuple[int, int] | None = None  # (inode, mtime) of the status.json written last
        self._written: set[tuple[Any, Any]] = set()  # (at, id) of the rejections in it

    def reject(self, stable_id: str, reason: str, raw: str) -> None:
        self.rejected += 1
        metrics.SOURCE_REJECTED.labels(self.source.name).inc()
        self.rejections.appendleft({"at": time.time(), "id": stable_id, "reason": reason, "raw": raw[:300]})

    def error(self, message: str) -> None:
        self.errors += 1
        metrics.SOURCE_ERRORS.labels(self.source.name).inc()
        self.last_error, self.last_error_at = message, time.time()

    def count(self, records_in: int, appended: int, duplicates: int) -> None:
        name = self.source.name
        self.records_in += records_in
        self.appended += appended
        self.duplicates += duplicates
        metrics.SOURCE_RECORDS.labels(name).inc(records_in)
        metrics.SOURCE_APPENDED.labels(name).inc(appended)
        if duplicates:
            metrics.SOURCE_DUPLICATES.labels(name).inc(duplicates)

    def rate(self) -> float:
        """Records per second over the last ~30 s."""
        if len(self._rates) < 2:
            return 0.0
        (t0, n0), (t1, n1) = self._rates[0], self._rates[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0

    def write(self, force: bool = False) -> None:
        now = time.time()
        if not force and now - self.written_at < WRITE_EVERY_S:
            return
        self.written_at = now
        self._rates.append((now, self.records_in))
        if self.lag is not None:
            metrics.SOURCE_LAG.labels(self.source.name).set(self.lag)
        source = self.source
        doc = {
            "name": source.name, "kind": source.kind, "format": source.format,
            "target": target_of(source),
            "state": self.state, "pid": os.getpid(), "started_at": self.started_at, "updated_at": now,
            "records_in": self.records_in, "appended": self.appended, "rejected": self.rejected,
            "duplicates": self.duplicates, "errors": self.errors, "rate": round(self.rate(), 1), "lag": self.lag,
            "last_error": self.last_error, "last_error_at": self.last_error_at, "table_rows": self.table_rows,
            "progress": self.progress, "recent_rejections": list(self.rejections),
        }  # fmt: skip
        with _locked(self.path):
            self._drop_erased()
            doc["recent_rejections"] = list(self.rejections)
            self._written_stamp = _write(self.path, doc)
            self._written = {(r["at"], r["id"]) for r in self.rejections}

    def _drop_erased(self) -> None:
        """Rejections that `erase_rejections` removed from the file since this process wrote it are
        removed from memory too (those recorded since were not in the file: they stay)."""
        try:
            if self._written_stamp is None or _stamp(self.path) == self._written_stamp:
                return
            kept = {(r.get("at"), r.get("id")) for r in orjson.loads(self.path.read_bytes())["recent_rejections"]}
        except (OSError, orjson.JSONDecodeError, KeyError, TypeError):
            return
        removed = self._written - kept
        if removed:
            self.rejections = collections.deque(
                [r for r in self.rejections if (r["at"], r["id"]) not in removed], maxlen=RECENT_REJECTIONS
            )


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on `status.lock` beside `path`: a source's writes and `erase_rejections` exclude
    each other, so neither undoes the other."""
    fd = os.open(path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns


def _write(path: Path, doc: dict[str, Any]) -> tuple[int, int]:
    """Write atomically; the new file's stamp (inode, mtime)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(orjson.dumps(doc, default=str))
    tmp.replace(path)
    return _stamp(path)


def erase_rejections(settings: Settings, ids: ErasureSet) -> dict[str, int]:
    """Remove the recent rejections that hold one of `ids` (in the rejected payload, id or reason) from
    every source's status.json; a running source drops them from memory at its next write. Rejections
    removed per source (sources with none removed are left out).

    Matching as in the log: a string equal to an id, or an id as a JSON string token in the raw text; an
    id in raw text that is not JSON (a CSV line) is not found (`quarantine` in the lake is matched alike)."""
    out: dict[str, int] = {}
    if not ids or not settings.sources_dir.is_dir():
        return out
    matcher = TokenMatcher(ids)
    for path in sorted(settings.sources_dir.glob("*/status.json")):
        with _locked(path):
            try:
                doc = orjson.loads(path.read_bytes())
            except (OSError, orjson.JSONDecodeError):
                continue
            recent = doc.get("recent_rejections") or []
            kept = [r for r in recent if not matcher.holds(r)]
            if len(kept) < len(recent):
                doc["recent_rejections"] = kept
                _write(path, doc)
                out[path.parent.name] = len(recent) - len(kept)
    return out


def read_status(settings: Settings, source: SourceSettings) -> dict[str, Any]:
    """The status a source last wrote; `state` is `not running` when it is missing or stale."""
    path: Path = settings.sources_dir / source.name / "status.json"
    base: dict[str, Any] = {
        "name": source.name, "kind": source.kind, "format": source.format, "enabled": source.enabled,
        "target": target_of(source),
    }  # fmt: skip
    try:
        doc = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {**base, "state": "not running"}
    if doc.get("state") not in ("stopped",) and time.time() - doc.get("updated_at", 0) > STALE_AFTER_S:
        doc["state"] = "not running"
    return {**doc, **base}
