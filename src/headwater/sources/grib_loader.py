"""GRIB files straight into their gridded table: one Iceberg commit per file, exactly once.

A grid point is too small a thing to send through the log one by one (a 0.25-degree global field
is a million of them), and the dropped file is itself durable upstream. So a GRIB source lands each
file whole in one transaction whose snapshots carry the file's key (`headwater.source-file`); the
file's row in `headwater_source_files` is marked done after. A crash between the two is found on
the next start (the key is in the table's recent snapshots: mark done; else land it again).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
from pyiceberg.exceptions import NoSuchTableError, TableAlreadyExistsError
from pyiceberg.table import Table
from pyiceberg.transforms import DayTransform

from headwater.core.errors import SourceError
from headwater.core.settings import Settings
from headwater.core.source_settings import SourceSettings
from headwater.lake.tables import NAMESPACE, TABLE_PROPERTIES, open_catalog
from headwater.log.base import Producer
from headwater.sources.files import DroppedFile, FilesReader
from headwater.sources.grib import GRIB_SCHEMA, GribError, read_grib
from headwater.sources.status import SourceStatus

log = logging.getLogger(__name__)
FILE_PROPERTY = "headwater.source-file"
LOOKBACK_SNAPSHOTS = 200
TABLE_SCHEMA = pa.schema(
    [pa.field(f.name, pa.string() if pa.types.is_dictionary(f.type) else f.type, f.nullable) for f in GRIB_SCHEMA]
)


class GribLoader:
    def __init__(
        self,
        settings: Settings,
        source: SourceSettings,
        reader: FilesReader,
        quarantine: Producer,
        status: SourceStatus,
    ) -> None:
        assert source.table is not None
        self.source, self.reader, self.quarantine, self.status = source, reader, quarantine, status
        self.catalog = open_catalog(settings)
        self.table = self._table(source.table)
        self.rows = 0

    def _table(self, name: str) -> Table:
        with contextlib.suppress(Exception):
            self.catalog.create_namespace(NAMESPACE)
        try:
            return self.catalog.load_table((NAMESPACE, name))
        except NoSuchTableError:
            pass
        try:
            table = self.catalog.create_table((NAMESPACE, name), schema=TABLE_SCHEMA, properties=TABLE_PROPERTIES)
        except TableAlreadyExistsError:
            return self.catalog.load_table((NAMESPACE, name))
        with table.update_spec() as update:
            update.add_field("valid_time", DayTransform(), "valid_time_day")
        return table

    def _landed(self, key: str) -> bool:
        """Whether a recent snapshot of the table carries this file's key (landed before a crash)."""
        self.table = self.table.refresh()
        snapshot = self.table.current_snapshot()
        for _ in range(LOOKBACK_SNAPSHOTS):
            if snapshot is None:
                return False
            summary: Any = snapshot.summary
            if summary is not None and summary.additional_properties.get(FILE_PROPERTY) == key:
                return True
            if snapshot.parent_snapshot_id is None:
                return False
            snapshot = self.table.snapshot_by_id(snapshot.parent_snapshot_id)
        return False

    def step(self, timeout_s: float) -> int:
        """Land the next waiting file, if any; return 1 when a file was handled."""
        dropped = self.reader.next_file()
        if dropped is None:
            time.sleep(timeout_s)
            return 0
        row = self.reader.store.start(dropped.key, dropped.path, dropped.size)
        if row.records and self._landed(dropped.key):  # landed, then the crash came before `done`
            self.reader.finish(dropped.key, row.records)
            return 1
        self.reader.store.update(dropped.key, records=1)  # marks "a commit may exist" for the check above
        try:
            rows = self._land(dropped)
        except GribError as exc:
            self._fail(dropped, str(exc))
            return 1
        self.reader.finish(dropped.key, rows)  # done, and moved to `move_to` when set
        self.status.count(1, rows, 0)
        self.rows += rows
        log.info("source %s: %s landed, %d grid points", self.source.name, dropped.name, rows)
        return 1

    def _land(self, dropped: DroppedFile) -> int:
        with contextlib.ExitStack() as stack:
            if self.reader.local:
                path = Path(dropped.path)
            else:  # ecCodes reads local files: copy the object down first
                tmp = stack.enter_context(tempfile.NamedTemporaryFile(suffix=".grib"))
                with self.reader.fs.open_input_stream(dropped.path) as remote:
                    while chunk := remote.read(1 << 22):
                        tmp.write(chunk)
                tmp.flush()
                path = Path(tmp.name)
            rows = 0
            properties = {FILE_PROPERTY: dropped.key}

            def progress(_messages: int, read_bytes: int, _size: int) -> None:
                self.reader.showing(dropped, read_bytes)

            with self.table.transaction() as tx:  # an error leaves the transaction uncommitted: all or nothing
                for chunk in read_grib(path, dropped.name, progress=progress):
                    tx.append(chunk.cast(TABLE_SCHEMA), snapshot_properties=properties)
                    rows += chunk.num_rows
            self.table = self.table.refresh()
            self.reader.showing(None, 0)
            return rows

    def _fail(self, dropped: DroppedFile, reason: str) -> None:
        self.reader.showing(None, 0)
        meta = orjson.dumps({"src": self.source.name, "ep": "source.files", "ra": int(time.time() * 1000)})
        raw = f"file:{dropped.path}"
        body = b'{"m":' + meta + b',"q":' + orjson.dumps(reason) + b',"raw":' + orjson.dumps(raw) + b"}"
        self.quarantine.append([(None, body)], [(self.source.name, f"{dropped.key}:failed")]).result()
        self.status.reject(dropped.key, reason, raw)
        self.reader.store.update(dropped.key, state="failed", error=reason, finished_at=time.time())
        log.warning("source %s: %s", self.source.name, reason)


def grib_loader(
    settings: Settings, source: SourceSettings, reader: Any, quarantine: Producer, status: SourceStatus
) -> GribLoader:
    if not isinstance(reader, FilesReader):
        raise SourceError(f"source {source.name}: format grib reads dropped files (kind = files)")
    return GribLoader(settings, source, reader, quarantine, status)
