"""Table maintenance: compact a day's small files, expire old snapshots, delete unreferenced files.

pyiceberg has no rewrite-data-files action, so compaction is done here: the small files of one day partition
are read and written again through `headwater.lake.layout` (sorted, cut to the target file size, with
rollups), and swapped in by a single overwrite snapshot. A partition is compacted when it holds
`compact_min_files` small files, or two or more whose newest is older than `compact_after_minutes` (so a day
that stopped receiving events ends as few large files). It runs in a writer's own loop, between flushes, and
only in the writer that holds the `maintenance` lease, so one writer maintains the tables at a time. Every
commit here is optimistic: when another writer appended in between, the catalog refuses it (nothing is lost)
and the next round tries again. Commits carry the log offsets the table already recorded, so exactly-once
bookkeeping survives compaction. Each round first drops the day partitions past retention
(`headwater.lake.retention`); other tables with a retention are expired and swept with the writer's own.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import fs
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.manifest import DataFile
from pyiceberg.table import Table

from headwater.core import metrics
from headwater.core.settings import Settings
from headwater.lake.coordination import ClaimStore, Lease
from headwater.lake.layout import FileWriter
from headwater.lake.retention import Retention
from headwater.lake.rollups import compute_rollup
from headwater.lake.tables import carried_offsets

log = logging.getLogger(__name__)
MAX_SNAPSHOTS = 100
COMPACT_COMMIT_ATTEMPTS = 5  # a compaction re-commits its files on a newer version this often


class Maintenance:
    def __init__(
        self,
        settings: Settings,
        tables: dict[str, Table],
        files: dict[str, FileWriter],
        lease: Lease | None = None,
        claims: ClaimStore | None = None,
    ) -> None:
        self.settings = settings
        self.tables = tables  # shared with the writer: pyiceberg refreshes a Table in place on commit
        self.files = files
        self.lease = lease
        self.claims = claims
        self._last_sweep = 0.0
        self.sweep_interval_s = 600.0
        self.retention = Retention(settings, tables)

    def run(self) -> bool:
        """One round, when this writer holds the lease; return whether it ran."""
        if self.lease is not None and not self.lease.acquire():
            return False
        for name in list(self.tables):
            self.tables[name].refresh()
        self.retention.run()  # before compaction: a partition about to go is not compacted first
        for name in list(self.tables):
            self.compact(name)
            self.expire(name)
        if time.monotonic() - self._last_sweep > self.sweep_interval_s:
            self._last_sweep = time.monotonic()
            for name in self.tables:
                self.sweep(name)
            self.backfill_rollups()
            if self.claims is not None:
                self.claims.purge()
            for name in list(self.retention.others):  # their own writers commit meanwhile: a lost race waits
                try:
                    self.expire(name)
                    self.sweep(name)
                except CommitFailedException:
                    log.info("expiring snapshots of %s lost a race with a commit; next sweep tries again", name)
        return True

    def compact(self, name: str, min_files: int | None = None, force: bool = False) -> int:
        """Rewrite the day partitions that are due (see the module docstring); return how many.

        `force`: every partition with two or more small files (import does this when it is done)."""
        table = self.tables[name]
        min_files = min_files or self.settings.compact_min_files
        small_bytes = self.settings.compact_small_file_mb * 1024 * 1024
        groups: dict[str, list[DataFile]] = defaultdict(list)
        for task in table.scan().plan_files():
            if task.file.file_size_in_bytes < small_bytes and not task.delete_files:
                groups[repr(task.file.partition)].append(task.file)
        candidates = [files for files in groups.values() if len(files) >= 2]
        rollups = self.files[name].rollups
        if candidates and not force and rollups is not None:
            ages = rollups.created_ms(f.file_path for files in candidates for f in files)
            settled = int((time.time() - self.settings.compact_after_minutes * 60) * 1000)
            candidates = [
                files
                for files in candidates
                if len(files) >= min_files or max(ages.get(f.file_path, 0) for f in files) < settled
            ]
        elif not force:
            candidates = [files for files in candidates if len(files) >= min_files]
        for files in candidates:
            self._rewrite(name, files)
        return len(candidates)

    def _rewrite(self, name: str, files: list[DataFile]) -> None:
        table = self.tables[name]
        parts = []
        for data_file in files:
            with table.io.new_input(data_file.file_path).open() as stream:
                parts.append(pq.read_table(stream))
        merged = pa.concat_tables(parts, promote_options="default")
        writer = self.files[name]
        new_files = writer.write(table, merged)
        for attempt in range(1, COMPACT_COMMIT_ATTEMPTS + 1):
            try:
                writer.replace(table, files, new_files, carried_offsets(table))  # offsets of the version it commits on
                break
            except CommitFailedException:  # certainly not committed
                # another writer appended meanwhile (the lake writer, when maintenance runs in the ops worker):
                # the same swap still holds on the new version while every file it replaces is there unchanged
                table.refresh()
                if attempt < COMPACT_COMMIT_ATTEMPTS and _all_live(table, files):
                    metrics.LAKE_COMMIT_CONFLICTS.labels(name).inc()
                    continue
                writer.discard(table, new_files)  # their rows must not outlive a deletion on disk
                raise
        metrics.LAKE_COMPACTIONS.labels(name).inc()
        log.info("compacted %d files (%d rows) of %s into %d", len(files), merged.num_rows, name, len(new_files))

    def backfill_rollups(self, name: str = "events") -> int:
        """Compute the rollups of the table's files that have none (written before rollups, or by another
        engine); return how many."""
        writer = self.files[name]
        if writer.rollups is None or writer.persons is None:
            return 0
        table = self.tables[name]
        paths = [task.file.file_path for task in table.scan().plan_files()]
        have = writer.rollups.created_ms(paths)
        missing = [p for p in paths if p not in have]
        for path in missing:
            with table.io.new_input(path).open() as stream:
                rows = pq.read_table(stream)
            writer.rollups.put(name, {path: compute_rollup(rows, writer.persons)})
        return len(missing)

    def expire(self, name: str) -> int:
        """Expire snapshots past retention (and beyond the newest MAX_SNAPSHOTS)."""
        table = self._table(name)
        snapshots = sorted(table.metadata.snapshots, key=lambda s: s.timestamp_ms)
        current = table.current_snapshot()
        cutoff = int((time.time() - self.settings.snapshot_retention_minutes * 60) * 1000)
        if len(snapshots) > MAX_SNAPSHOTS:
            cutoff = max(cutoff, snapshots[-MAX_SNAPSHOTS].timestamp_ms)
        ids = [
            s.snapshot_id
            for s in snapshots
            if s.timestamp_ms < cutoff and (current is None or s.snapshot_id != current.snapshot_id)
        ]
        if ids:
            table.maintenance.expire_snapshots().by_ids(ids).commit()
        return len(ids)

    def sweep(self, name: str, grace_s: float | None = None) -> int:
        """Delete files under the table's location that no snapshot references any more.

        Works on local disk and object stores alike (pyarrow's filesystem for the location); only
        files older than snapshot retention plus a grace period go, so a file a concurrent commit
        is about to reference is never touched.
        """
        table = self._table(name)
        location = table.location()
        filesystem = self._object_store() if urlparse(location).scheme in ("s3", "s3a") else fs.LocalFileSystem()
        root = _strip_scheme(location)
        grace = grace_s if grace_s is not None else self.settings.snapshot_retention_minutes * 60 + 600
        referenced: set[str] = {_strip_scheme(table.metadata_location)}
        referenced.update(_strip_scheme(entry.metadata_file) for entry in table.metadata.metadata_log)
        seen_manifests: set[str] = set()
        for snapshot in table.metadata.snapshots:
            referenced.add(_strip_scheme(snapshot.manifest_list))
            for manifest in snapshot.manifests(table.io):
                path = _strip_scheme(manifest.manifest_path)
                referenced.add(path)
                if path in seen_manifests:
                    continue
                seen_manifests.add(path)
                for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True):
                    referenced.add(_strip_scheme(entry.data_file.file_path))
        cutoff = time.time() - grace
        rollups = self.files[name].rollups if name in self.files else None
        if rollups is not None:  # rollups of files that no snapshot references any more
            stale = [p for p in rollups.paths(name) if _strip_scheme(p) not in referenced]
            created = rollups.created_ms(stale)
            rollups.delete(p for p in stale if created.get(p, 0) < cutoff * 1000)
        deleted = 0
        try:
            infos = filesystem.get_file_info(fs.FileSelector(root, recursive=True, allow_not_found=True))
        except OSError:
            log.exception("cannot list %s", root)
            return 0
        for info in infos:
            if info.type != fs.FileType.File or info.path in referenced or info.mtime is None:
                continue
            if info.mtime.timestamp() < cutoff:
                try:
                    filesystem.delete_file(info.path)
                    deleted += 1
                except FileNotFoundError:
                    continue
        return deleted

    def _table(self, name: str) -> Table:
        """The writer's table `name`, or another table retention keeps trimmed."""
        return self.tables[name] if name in self.tables else self.retention.others[name]

    def _object_store(self) -> fs.FileSystem:
        s = self.settings
        endpoint = urlparse(s.s3_endpoint) if s.s3_endpoint else None
        return fs.S3FileSystem(
            access_key=s.s3_access_key_id or None,
            secret_key=s.s3_secret_access_key or None,
            region=s.s3_region,
            endpoint_override=endpoint.netloc if endpoint else None,
            scheme=endpoint.scheme if endpoint else "https",
        )


def _all_live(table: Table, files: list[DataFile]) -> bool:
    """Whether every one of `files` is still in the table's current version, without delete files (a deletion or
    retention that rewrote or dropped one of them since makes a compaction of them stale)."""
    live = {task.file.file_path for task in table.scan().plan_files() if not task.delete_files}
    return all(f.file_path in live for f in files)


def _strip_scheme(uri: str) -> str:
    """'file:///a/b' -> '/a/b', 's3://bucket/key' -> 'bucket/key' (pyarrow's path forms)."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return parsed.path
    return parsed.netloc + parsed.path
