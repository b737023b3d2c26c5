"""Table maintenance: compact a day's small files, expire old snapshots, delete unreferenced files.

pyiceberg has no rewrite-data-files action, so compaction is done here: the small files of one
partition are read, sorted by time, written as one file, and swapped in by a single overwrite
snapshot (old files deleted, new file added). It runs in a writer's own loop, between flushes, and
only in the writer that holds the `maintenance` lease, so one writer maintains the tables at a
time. Every commit here is optimistic: when another writer appended in between, the catalog
refuses it (nothing is lost) and the next round tries again. Commits carry the log offsets the
table already recorded, so exactly-once bookkeeping survives compaction.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import fs
from pyiceberg.io.pyarrow import _dataframe_to_data_files
from pyiceberg.manifest import DataFile
from pyiceberg.table import Table

from headwater.core import metrics
from headwater.core.settings import Settings
from headwater.lake.coordination import ClaimStore, Lease
from headwater.lake.tables import carried_offsets

log = logging.getLogger(__name__)
MAX_SNAPSHOTS = 100
SORT_COLUMN = {"events": "timestamp", "quarantine": "received_at"}


class Maintenance:
    def __init__(
        self,
        settings: Settings,
        tables: dict[str, Table],
        lease: Lease | None = None,
        claims: ClaimStore | None = None,
    ) -> None:
        self.settings = settings
        self.tables = tables  # shared with the writer: pyiceberg refreshes a Table in place on commit
        self.lease = lease
        self.claims = claims
        self._last_sweep = 0.0
        self.sweep_interval_s = 600.0

    def run(self) -> bool:
        """One round, when this writer holds the lease; return whether it ran."""
        if self.lease is not None and not self.lease.acquire():
            return False
        for name in list(self.tables):
            self.tables[name].refresh()
            self.compact(name)
            self.expire(name)
        if time.monotonic() - self._last_sweep > self.sweep_interval_s:
            self._last_sweep = time.monotonic()
            for name in self.tables:
                self.sweep(name)
            if self.claims is not None:
                self.claims.purge()
        return True

    def compact(self, name: str, min_files: int | None = None) -> int:
        """Rewrite partitions holding at least `min_files` small files; return partitions compacted."""
        table = self.tables[name]
        min_files = min_files or self.settings.compact_min_files
        small_bytes = self.settings.compact_small_file_mb * 1024 * 1024
        groups: dict[str, list[DataFile]] = defaultdict(list)
        for task in table.scan().plan_files():
            if task.file.file_size_in_bytes < small_bytes:
                groups[repr(task.file.partition)].append(task.file)
        done = 0
        for files in groups.values():
            if len(files) < min_files:
                continue
            self._rewrite(name, files)
            done += 1
        return done

    def _rewrite(self, name: str, files: list[DataFile]) -> None:
        table = self.tables[name]

        parts = []
        for data_file in files:
            with table.io.new_input(data_file.file_path).open() as stream:
                parts.append(pq.read_table(stream))
        merged = pa.concat_tables(parts, promote_options="default").sort_by(SORT_COLUMN[name])
        new_files = list(_dataframe_to_data_files(table.metadata, merged, table.io))
        props = carried_offsets(table)  # of the version this rewrite commits on
        with (
            table.transaction() as tx,
            tx.update_snapshot(snapshot_properties=props).overwrite() as rewrite,
        ):
            for data_file in files:
                rewrite.delete_data_file(data_file)
            for data_file in new_files:
                rewrite.append_data_file(data_file)
        metrics.LAKE_COMPACTIONS.labels(name).inc()
        log.info("compacted %d files (%d rows) of %s", len(files), merged.num_rows, name)

    def expire(self, name: str) -> int:
        """Expire snapshots past retention (and beyond the newest MAX_SNAPSHOTS)."""
        table = self.tables[name]
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
        table = self.tables[name]
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


def _strip_scheme(uri: str) -> str:
    """'file:///a/b' -> '/a/b', 's3://bucket/key' -> 'bucket/key' (pyarrow's path forms)."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return parsed.path
    return parsed.netloc + parsed.path
