"""Table maintenance: compact a day's small files, expire old snapshots, delete unreferenced files.

pyiceberg has no rewrite-data-files action, so compaction is done here: the small files of one
partition are read, sorted by time, written as one file, and swapped in by a single overwrite
snapshot (old files deleted, new file added). It runs in the writer's own loop, between flushes,
so it never races the writer's appends.
"""

from __future__ import annotations

import logging
import os
import time
from collections import defaultdict
from pathlib import Path
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.parquet as pq
from pyiceberg.io.pyarrow import _dataframe_to_data_files
from pyiceberg.manifest import DataFile
from pyiceberg.table import Table

from headwater.core import metrics
from headwater.core.settings import Settings
from headwater.lake.tables import offsets_property

log = logging.getLogger(__name__)
MAX_SNAPSHOTS = 100
SORT_COLUMN = {"events": "timestamp", "quarantine": "received_at"}


class Maintenance:
    def __init__(self, settings: Settings, tables: dict[str, Table]) -> None:
        self.settings = settings
        self.tables = tables  # shared with the writer: pyiceberg refreshes a Table in place on commit
        self._last_sweep = 0.0
        self.sweep_interval_s = 600.0

    def run(self, table_offsets: dict[str, dict[int, int]]) -> None:
        for name in list(self.tables):
            self.compact(name, table_offsets.get(name, {}))
            self.expire(name)
        if time.monotonic() - self._last_sweep > self.sweep_interval_s:
            self._last_sweep = time.monotonic()
            for name in self.tables:
                self.sweep(name)

    def compact(self, name: str, offsets: dict[int, int], min_files: int | None = None) -> int:
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
            self._rewrite(name, files, offsets)
            done += 1
        return done

    def _rewrite(self, name: str, files: list[DataFile], offsets: dict[int, int]) -> None:
        table = self.tables[name]
        parts = []
        for data_file in files:
            with table.io.new_input(data_file.file_path).open() as stream:
                parts.append(pq.read_table(stream))
        merged = pa.concat_tables(parts, promote_options="default").sort_by(SORT_COLUMN[name])
        new_files = list(_dataframe_to_data_files(table.metadata, merged, table.io))
        props = offsets_property(offsets) if offsets else {}
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
        """Delete files under a local table location that no snapshot references any more."""
        table = self.tables[name]
        location = urlparse(table.location())
        if location.scheme not in ("", "file"):
            return 0  # object stores: left to the store's lifecycle rules
        root = Path(location.path)
        grace = grace_s if grace_s is not None else self.settings.snapshot_retention_minutes * 60 + 600
        referenced: set[str] = {urlparse(table.metadata_location).path}
        referenced.update(urlparse(entry.metadata_file).path for entry in table.metadata.metadata_log)
        seen_manifests: set[str] = set()
        for snapshot in table.metadata.snapshots:
            referenced.add(urlparse(snapshot.manifest_list).path)
            for manifest in snapshot.manifests(table.io):
                path = urlparse(manifest.manifest_path).path
                referenced.add(path)
                if path in seen_manifests:
                    continue
                seen_manifests.add(path)
                for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True):
                    referenced.add(urlparse(entry.data_file.file_path).path)
        cutoff = time.time() - grace
        deleted = 0
        for directory, _, names in os.walk(root):
            for file_name in names:
                path = os.path.join(directory, file_name)
                if path in referenced:
                    continue
                try:
                    if os.stat(path).st_mtime < cutoff:
                        os.remove(path)
                        deleted += 1
                except FileNotFoundError:
                    continue
        return deleted
