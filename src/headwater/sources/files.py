"""File drops: a local directory or an S3 prefix, each new file ingested once, resumable mid-file.

Files are taken oldest first; one is read at a time, as a stream (bounded memory, whatever the
size), and its progress (records acknowledged) is kept in `headwater_source_files`: after a crash
the file is read again from where the log stopped taking it, and the records in between carry the
same stable ids (`<file key>:<record number>`), which the log drops as repeats. A file is `done`
once its last record is acknowledged (then moved to `move_to`, when set). A compressed file is
checked whole before its first record is read, so a corrupt archive is quarantined whole with the
reason and nothing of it lands; a file that fails later (a CSV cell that does not convert) keeps
what was read before and is marked failed at the record that broke it.
Names starting with `.` or `_`, or ending `.tmp` / `.part`, are being written and are skipped, as are
local files modified in the last second.
"""

from __future__ import annotations

import base64
import codecs
import collections
import fnmatch
import hashlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from headwater.core.errors import ImportFileError, LakeError, SourceError, SourceUnavailable
from headwater.core.settings import Settings
from headwater.core.source_settings import SourceSettings
from headwater.sources.base import Delivery
from headwater.sources.file_store import FileRow, FileStore
from headwater.sources.formats import decode_json

log = logging.getLogger(__name__)
CHUNK = 1 << 20
CSV_BLOCK_BYTES = 16 << 20
"""CSV column types are inferred from the first block this size (a later surprise: text columns)."""
SETTLE_S = 1.0
_SKIP_SUFFIXES = (".tmp", ".part", ".crdownload", ".partial")


FileRecord = tuple[int, bytes, dict[str, Any] | None]
"""(record number, payload, decoded value) of one record of a file."""


@dataclass(slots=True)
class BadRecord:
    """A row a file reader could not split into fields (a CSV line with too many columns)."""

    after: int
    """Number of the last good record before it (the resume point that covers it)."""
    where: str
    reason: str
    raw: bytes


@dataclass(slots=True)
class DroppedFile:
    path: str
    size: int
    mtime_ns: int

    @property
    def key(self) -> str:
        """Identifies this version of the file: a file rewritten in place is a new file."""
        return hashlib.sha1(f"{self.path}|{self.size}|{self.mtime_ns}".encode()).hexdigest()[:24]

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


def open_filesystem(location: str, settings: Settings) -> tuple[pafs.FileSystem, str]:
    """(filesystem, base path) for a local directory or an s3://bucket/prefix (the s3_* settings)."""
    if location.startswith("s3://"):
        endpoint = settings.s3_endpoint
        options: dict[str, Any] = {"region": settings.s3_region}
        if endpoint:
            scheme, _, host = endpoint.partition("://")
            options.update(endpoint_override=host or scheme, scheme=scheme if host else "https")
        if settings.s3_access_key_id:
            options.update(access_key=settings.s3_access_key_id, secret_key=settings.s3_secret_access_key)
        return pafs.S3FileSystem(**options), location.removeprefix("s3://").rstrip("/")
    from pathlib import Path

    base = Path(location).expanduser().resolve()
    if not base.is_dir():
        raise SourceError(f"files source: {base} is not a directory; create it or fix `path`")
    return pafs.LocalFileSystem(), str(base)


def _compression(head: bytes) -> str | None:
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if head[:4] == b"\x28\xb5\x2f\xfd":
        return "zstd"
    return None


class FilesReader:
    """SourceReader over a directory or prefix (`kind = files`)."""

    def __init__(self, source: SourceSettings, settings: Settings) -> None:
        self.source = source
        self.fs, self.base = open_filesystem(source.path, settings)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        self.store = FileStore(settings.effective_catalog_uri, source.name)
        self._records: Iterator[Delivery] | None = None
        self._current: DroppedFile | None = None
        self._row: FileRow | None = None
        self._last_index: dict[str, int] = {}  # file key -> index of its last record, once read to the end
        self._read_bytes = 0
        self._yielded = -1
        self._next_scan = 0.0
        self._pending: list[DroppedFile] = []
        self._raw: pa.NativeFile | None = None
        self._rejected: collections.Counter[str] = collections.Counter()
        self._ga4 = Ga4Folder(self, settings) if source.format == "ga4" else None

    # --- finding files
    def scan(self) -> list[DroppedFile]:
        """Files not taken yet (new, or `reading` when the source stopped), oldest first."""
        known = self.store.known()
        return [f for f in self.listing() if known.get(f.key) in (None, "reading")]

    def listing(self) -> list[DroppedFile]:
        """Every file of the folder that matches `pattern` and is not being written, oldest first."""
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.base, recursive=False))
        except (OSError, pa.ArrowException) as exc:
            raise SourceUnavailable(f"cannot list {self.source.path}: {exc}") from exc
        now_ns = time.time_ns()
        found = []
        for info in infos:
            name = info.base_name
            if info.type != pafs.FileType.File or name.startswith((".", "_")) or name.endswith(_SKIP_SUFFIXES):
                continue
            if not fnmatch.fnmatch(name, self.source.pattern):
                continue
            mtime_ns = info.mtime_ns or 0
            if self.local and now_ns - mtime_ns < SETTLE_S * 1e9:
                continue  # still being written, probably
            found.append(DroppedFile(info.path, info.size or 0, mtime_ns))
        found.sort(key=lambda f: (f.mtime_ns, f.path))
        return found

    def next_file(self) -> DroppedFile | None:
        if not self._pending and time.monotonic() >= self._next_scan:
            self._pending = self.scan()
            self._next_scan = time.monotonic() + self.source.poll_seconds
        return self._pending.pop(0) if self._pending else None

    # --- reading
    def read(self, max_records: int, timeout_s: float) -> list[Delivery]:
        if self._ga4 is not None:  # export files land whole, by day (Ga4Folder): nothing goes through the log
            self._ga4.step(timeout_s)
            return []
        deadline = time.monotonic() + timeout_s
        while self._records is None:
            dropped = self.next_file()
            if dropped is not None:
                self._open(dropped)
                break
            if time.monotonic() >= deadline:
                return []
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        assert self._records is not None and self._current is not None
        out: list[Delivery] = []
        for delivery in self._records:
            out.append(delivery)
            if delivery.error is None:
                self._yielded = delivery.token[1]
            if len(out) >= max_records:
                return out
        # the file is read to its end: its last record decides when it is done
        key = self._current.key
        last = self._yielded
        self._last_index[key] = last
        self._records, self._current = None, None
        if not out:  # nothing left to acknowledge (empty file, or every record taken before a crash)
            self.finish(key, last + 1)
        return out

    def _open(self, dropped: DroppedFile) -> None:
        self._current = dropped
        self._row = self.store.start(dropped.key, dropped.path, dropped.size)
        self._read_bytes = 0
        self._yielded = self._row.records - 1
        self._records = self._deliveries(dropped, self._row.records)

    def _deliveries(self, dropped: DroppedFile, skip: int) -> Iterator[Delivery]:
        now = int(time.time() * 1000)
        key, name = dropped.key, dropped.name
        index = -1
        try:
            for item in self._file_records(dropped):
                if isinstance(item, BadRecord):  # quarantined alone; the file goes on
                    if item.after < skip:
                        continue
                    token = (key, max(index, skip - 1), name)
                    yield Delivery(item.raw, f"{key}:bad:{item.where}", token, None, now, error=f"{name} {item.reason}")
                    continue
                index, payload, value = item
                if index < skip:
                    continue
                yield Delivery(payload, f"{key}:{index}", (key, index, name), value, now)
        except (OSError, pa.ArrowException, SourceError, ValueError, EOFError) as exc:
            reason = f"file {dropped.name}: {exc}"
            if index >= 0:
                reason += f" (after {index + 1} records, which were kept)"
            partial = getattr(exc, "data", None)  # a truncated fixed/RDW record: its bytes
            raw = "base64:" + base64.b64encode(partial).decode() if partial else f"file:{dropped.path}"
            yield Delivery(
                raw.encode(), f"{key}:failed", (key, max(index + 1, skip), name, "failed"),
                received_ms=now, error=reason,
            )  # fmt: skip

    def _stream(self, dropped: DroppedFile) -> pa.NativeFile:
        """The file's bytes, decompressed; `self._raw` is the underlying stream (progress = its position)."""
        raw = self.fs.open_input_stream(dropped.path, compression=None)
        head = raw.read(4)
        raw.close()
        raw = self.fs.open_input_stream(dropped.path, compression=None)
        codec = _compression(head)
        self._raw = raw
        if codec is None:
            return raw
        check = pa.CompressedInputStream(raw, codec)
        while check.read(CHUNK * 8):  # a corrupt or truncated archive fails here, before any record
            pass
        check.close()
        self._raw = self.fs.open_input_file(dropped.path)  # random access: its position is the progress
        return pa.CompressedInputStream(self._raw, codec)

    def _file_records(self, dropped: DroppedFile) -> Iterator[FileRecord | BadRecord]:
        fmt = self.source.format
        if fmt == "parquet":
            parquet = pq.ParquetFile(self.fs.open_input_file(dropped.path))
            total = parquet.metadata.num_rows or 1
            index = 0
            for batch in parquet.iter_batches(batch_size=8_192):
                for row in batch.to_pylist():
                    yield index, b"", row
                    index += 1
                self._read_bytes = int(dropped.size * index / total)
            return
        stream = self._stream(dropped)
        try:
            if fmt == "csv":
                yield from self._csv(dropped, stream)
            elif fmt == "json":
                doc = stream.read()
                self._read_bytes = len(doc)
                for index, obj in enumerate(decode_json(doc)):
                    yield index, b"", obj
            elif fmt == "cobol":
                yield from self._frames(stream)
            else:  # ndjson: one record per line; a payload with a bad line is quarantined alone
                limit = dropped.size if stream is self._raw else None  # a file that grows is read as listed
                yield from self._lines(stream, limit)
        finally:
            stream.close()
            self._raw = None

    def _position(self, fallback: int) -> int:
        raw = self._raw
        try:
            return raw.tell() if raw is not None else fallback
        except (OSError, pa.ArrowException):
            return fallback

    def _lines(self, stream: pa.NativeFile, limit: int | None) -> Iterator[FileRecord]:
        index = 0
        tail = b""
        taken = 0
        first = True
        while True:
            chunk = stream.read(CHUNK if limit is None else min(CHUNK, limit - taken))
            if not chunk:
                break
            taken += len(chunk)
            if first and chunk.startswith(codecs.BOM_UTF8):
                chunk, first = chunk[len(codecs.BOM_UTF8) :], False
            first = False
            self._read_bytes = self._position(taken)
            lines = (tail + chunk).split(b"\n")
            tail = lines.pop()
            for line in lines:
                if line.strip():
                    yield index, line, None
                    index += 1
        if tail.strip():
            yield index, tail, None

    def _csv(self, dropped: DroppedFile, stream: pa.NativeFile) -> Iterator[FileRecord | BadRecord]:
        """Rows with the types pyarrow infers from the first block; if a later block does not convert (a
        zip code `2A004` in a column of numbers), the rest of the file is read again with text columns."""
        bad: list[BadRecord] = []
        index = 0

        def invalid(row: Any) -> str:
            where = f"line {row.number}" if row.number is not None else f"a row after record {index}"
            reason = f"{where}: expected {row.expected_columns} columns, got {row.actual_columns}"
            bad.append(BadRecord(index - 1, str(row.number or f"r{index}"), reason, (row.text or "").encode()))
            return "skip"

        parse = pa_csv.ParseOptions(delimiter=self.source.csv_delimiter, invalid_row_handler=invalid)
        read = pa_csv.ReadOptions(block_size=CSV_BLOCK_BYTES, use_threads=False)
        convert = pa_csv.ConvertOptions()
        while True:
            reader = pa_csv.open_csv(stream, parse_options=parse, read_options=read, convert_options=convert)
            skip, index = index, 0
            try:
                for batch in reader:
                    self._read_bytes = self._position(self._read_bytes + batch.nbytes)
                    yield from (b for b in bad if b.after + 1 >= skip)  # (a second pass saw them already)
                    bad.clear()
                    for row in batch.to_pylist():
                        if index >= skip:
                            yield index, b"", row
                        index += 1
                yield from (b for b in bad if b.after + 1 >= skip)
                return
            except pa.ArrowInvalid as exc:
                if "conversion error" not in str(exc) or convert.column_types:
                    raise
                log.info("%s: %s; reading the rest with text columns", dropped.name, exc)
                convert = pa_csv.ConvertOptions(column_types={name: pa.string() for name in reader.schema.names})
                stream.close()
                stream = self._stream(dropped)
                bad.clear()
                index = max(index, skip)

    def _frames(self, stream: pa.NativeFile) -> Iterator[FileRecord]:
        from headwater.sources.cobol_format import split_frames

        taken = 0
        for index, frame in enumerate(split_frames(stream, self.source.cobol)):
            taken += len(frame)
            self._read_bytes = self._position(taken)
            yield index, frame, None

    # --- acknowledging
    def acknowledge(self, deliveries: list[Delivery]) -> None:
        done: dict[str, int] = {}
        failed: dict[str, tuple[int, str]] = {}
        for delivery in deliveries:
            key, index = delivery.token[0], delivery.token[1]
            if len(delivery.token) > 3:  # the file itself failed
                failed[key] = (index, delivery.error or "failed")
            else:  # a record, or a bad row (its token: the record before it)
                done[key] = max(done.get(key, 0), index + 1)
        for key, records in done.items():
            if key in failed:
                continue
            rejected = self._rejected.pop(key, 0)
            if self._last_index.get(key) == records - 1:
                self.finish(key, records, rejected)
            else:
                self.store.update(key, rejected, records=records)
        for key, (records, error) in failed.items():
            self._last_index.pop(key, None)
            rejected = self._rejected.pop(key, 0)
            self.store.update(key, rejected, records=records, state="failed", error=error, finished_at=time.time())

    def finish(self, key: str, records: int, more_rejected: int = 0) -> None:
        """Mark the file done (and move it to `move_to`; an archived file of the same name is kept)."""
        self._last_index.pop(key, None)
        self.store.update(key, more_rejected, records=records, state="done", finished_at=time.time())
        row = self.store.get(key)
        if self.source.move_to and row is not None:
            folder = self.source.move_to.removeprefix("s3://").rstrip("/")
            target = folder + "/" + row.path.rsplit("/", 1)[-1]
            try:
                self.fs.create_dir(folder, recursive=True)
                if self.fs.get_file_info(target).type != pafs.FileType.NotFound:
                    stem, dot, suffix = target.rpartition("/")[2].partition(".")
                    target = f"{folder}/{stem}-{key[:8]}{dot}{suffix}"
                self.fs.move(row.path, target)
            except (OSError, pa.ArrowException) as exc:
                self.store.update(key, error=f"done, but not moved to {self.source.move_to}: {exc}")

    def describe(self, delivery: Delivery) -> str:
        """Where a delivery came from, for quarantine reasons: `file.ndjson record 12`."""
        return f"{delivery.token[2]} record {delivery.token[1] + 1}"

    def showing(self, dropped: DroppedFile | None, read_bytes: int) -> None:
        """Progress of a file read elsewhere (GRIB files are landed whole by `grib_loader`)."""
        self._current, self._read_bytes = dropped, read_bytes

    def add_rejected(self, key: str, count: int) -> None:
        """Count records of a file that go to quarantine (saved with the batch's acknowledgement)."""
        self._rejected[key] += count

    def lag(self) -> int | None:
        """Files waiting (a file drop has no record count ahead of time)."""
        return len(self._pending) + (1 if self._current is not None else 0)

    def progress(self) -> dict[str, Any]:
        current = None
        if self._current is not None:
            current = {
                "path": self._current.path, "size": self._current.size, "read_bytes": self._read_bytes,
                "share": round(min(1.0, self._read_bytes / self._current.size), 4) if self._current.size else None,
            }  # fmt: skip
        recent = [
            {"path": r.path, "state": r.state, "records": r.records, "rejected": r.rejected, "error": r.error,
             "started_at": r.started_at, "finished_at": r.finished_at}
            for r in self.store.recent(10)
        ]  # fmt: skip
        return {"current": current, "files": self.store.counts(), "recent": recent, "waiting": len(self._pending)}

    def close(self) -> None:
        if self._ga4 is not None:
            self._ga4.close()
        self.store.close()


class Ga4Folder:
    """`format = "ga4"`: GA4 / Firebase BigQuery export files dropped into the folder land by day replace.

    On each arrival (a file not seen before: a new name, or a file rewritten in place), the days to bring in
    line are the arrival's day and the last LOOKBACK_DAYS event dates present (SumUp re-pulls the last 3 days:
    BigQuery corrects daily tables for up to 72 hours). A day is imported from every file present for it (its
    daily files, else its intraday ones: headwater.lake.ga4.plan), so shards arriving one by one add up, an
    intraday file is superseded by the daily table, and a re-import is idempotent. A day whose files are the
    ones its last import recorded is skipped (re-importing it would change nothing, except bring back rows a
    privacy deletion removed). Files need the export's table name (`events_YYYYMMDD`,
    `events_intraday_YYYYMMDD`) in theirs; a file without one, or a day that fails to import (a truncated
    file), is marked failed with the reason and a quarantine record, and the day keeps its rows until a new
    arrival for it imports."""

    LOOKBACK_DAYS = 3

    def __init__(self, reader: FilesReader, settings: Settings) -> None:
        self.reader = reader
        self.settings = settings
        self._importer: Any = None
        self._next_scan = 0.0
        self._paths: dict[str, str] = {}

    @property
    def importer(self) -> Any:
        """The source's Ga4Importer, opened on first use (`headwater doctor` opens a reader and only lists)."""
        if self._importer is None:
            from headwater.lake.ga4 import Ga4Importer

            self._importer = Ga4Importer(self.settings, self.reader.source.name, endpoint="source.files")
        return self._importer

    def _export(self, dropped: DroppedFile) -> Any:
        from headwater.lake.ga4_read import ExportFile, name_day

        day, intraday = name_day(dropped.name)
        self._paths[dropped.key] = dropped.path
        path = dropped.path if self.reader.local else None
        fs = self.reader.fs
        return ExportFile(
            dropped.name, lambda: fs.open_input_file(dropped.path), dropped.key, dropped.size, day, intraday, path
        )

    def step(self, timeout_s: float) -> None:
        """Bring the due days in line with the folder, when a file arrived; else wait up to `timeout_s`."""
        wait = self._next_scan - time.monotonic()
        if wait > 0:
            time.sleep(min(timeout_s, wait))
            return
        self._next_scan = time.monotonic() + self.reader.source.poll_seconds
        from headwater.lake.ga4 import plan

        present = [self._export(f) for f in self.reader.listing()]
        known = self.reader.store.known()
        new = [e for e in present if known.get(e.key) not in ("done", "failed")]
        if not new:
            return
        for export in [e for e in new if e.day is None]:
            self._fail([export], f"{export.name}: no events_YYYYMMDD or events_intraday_YYYYMMDD in the file name")
        dated = sorted({e.day for e in present if e.day is not None})
        due = {e.day for e in new if e.day is not None} | set(dated[-self.LOOKBACK_DAYS :])
        for day in sorted(d for d in due if d is not None):
            group = plan([e for e in present if e.day == day])[0]
            arrivals = [e for e in new if e.day == day]
            recorded = self.importer.store.files_of(self.importer.source, day)
            if not arrivals and recorded is not None and {f["key"] for f in recorded} == {e.key for e in group.files}:
                continue  # its files are the ones imported last time
            self._import(group, arrivals)

    def _import(self, group: Any, arrivals: list[Any]) -> None:
        rows: collections.Counter[str] = collections.Counter()
        for export in arrivals:
            self.reader.store.start(export.key, self._paths.get(export.key, export.name), export.size)

        def progress(name: str, n: int) -> None:
            rows[name] += n

        try:
            self.importer.import_group(group, progress)
        except LakeError as exc:  # the table stayed busy, storage away: the arrivals are taken again next time
            raise SourceUnavailable(f"day {group.day}: {exc}") from exc
        except (ImportFileError, OSError, pa.ArrowException, ValueError) as exc:
            self._fail(arrivals, f"day {group.day}: {exc}")
            return
        for export in arrivals:
            self.reader.store.update(export.key, records=rows[export.name], state="done", finished_at=time.time())
        log.info("source %s: day %s imported from %s", self.reader.source.name, group.day,
                 ", ".join(e.name for e in group.files))  # fmt: skip

    def _fail(self, exports: list[Any], reason: str) -> None:
        log.warning("source %s: %s", self.reader.source.name, reason)
        self.importer.quarantine_records([(reason, f"file:{e.name}", 0) for e in exports], int(time.time() * 1e6))
        for export in exports:
            self.reader.store.start(export.key, self._paths.get(export.key, export.name), export.size)
            self.reader.store.update(export.key, state="failed", error=reason, finished_at=time.time())

    def close(self) -> None:
        if self._importer is not None:
            self._importer.close()
