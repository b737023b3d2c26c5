"""Expire every snapshot but the current one, and delete the files only the expired ones referenced.

After a deletion has rewritten a table, older snapshots still reference the files that hold the deleted rows
(time travel would bring them back). Expiring them and deleting exactly the files that no remaining snapshot
references (data files, manifests, manifest lists) is what makes the deletion physical. Files a remaining
snapshot references are never touched, so a concurrent commit (which builds on the current snapshot) is safe.
"""

from __future__ import annotations

import logging
from urllib.parse import urlparse

from pyiceberg.table import Table
from pyiceberg.table.snapshots import Snapshot

from headwater.lake.tables import carried_offsets

log = logging.getLogger(__name__)


def _files_of(table: Table, snapshots: list[Snapshot]) -> tuple[set[str], set[str]]:
    """(metadata files, live data files) the snapshots reference."""
    metadata: set[str] = set()
    data: set[str] = set()
    seen: set[str] = set()
    for snapshot in snapshots:
        metadata.add(snapshot.manifest_list)
        for manifest in snapshot.manifests(table.io):
            metadata.add(manifest.manifest_path)
            if manifest.manifest_path in seen:
                continue
            seen.add(manifest.manifest_path)
            for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True):
                data.add(entry.data_file.file_path)
    return metadata, data


def drop_deleted_entries(table: Table) -> bool:
    """Commit an empty append when the current snapshot still lists removed files (a rewrite's manifest of
    deleted entries keeps their column statistics, which in tables written before Headwater stopped writing id
    bounds hold prefixes of ids): an append keeps only manifests with live files. Returns whether it did."""
    table.refresh()
    current = table.current_snapshot()
    if current is None or not any((m.deleted_files_count or 0) > 0 for m in current.manifests(table.io)):
        return False
    with table.transaction() as tx, tx.update_snapshot(snapshot_properties=carried_offsets(table)).fast_append():
        pass
    return True


def expire_all_but_current(table: Table) -> list[str]:
    """Expire every snapshot except the current one; delete what only they referenced; return those paths."""
    table.refresh()
    current = table.current_snapshot()
    if current is None:
        return []
    old = [s for s in table.metadata.snapshots if s.snapshot_id != current.snapshot_id]
    if not old:
        return []
    old_meta, old_data = _files_of(table, old)
    table.maintenance.expire_snapshots().by_ids([s.snapshot_id for s in old]).commit()
    table.refresh()
    keep_meta, keep_data = _files_of(table, list(table.metadata.snapshots))
    doomed = sorted((old_meta - keep_meta) | (old_data - keep_data))
    deleted = []
    for path in doomed:
        try:
            table.io.delete(path)
            deleted.append(path)
        except FileNotFoundError:
            continue
        except OSError as exc:  # e.g. already gone on an object store that reports it differently
            log.warning("could not delete %s: %s", urlparse(path).path, exc)
    return deleted
