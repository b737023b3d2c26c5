"""GRIB1/GRIB2 weather grids to Arrow: one row per grid point, decoded with ecCodes, vectorised.

Each message is decoded whole into numpy arrays (values, and the latitudes/longitudes of its grid,
computed once per distinct grid and cached); the per-message columns (file, parameter, times, level)
are constant, built as dictionary or filled arrays, so no Python code runs per grid point. One
message is held at a time; tables of at most `max_rows` rows are yielded (a large message is split,
small ones are combined).

Columns (`GRIB_SCHEMA`):
- `file`: the caller's label for the file; `message`: 1-based position in the file (as `grib_ls`).
- `parameter`, `name`, `units`: ecCodes' shortName (`2t`), name and units (`K`).
- `level_type`, `level`: ecCodes' typeOfLevel (`heightAboveGround`, `isobaricInhPa`) and level.
- `reference_time`: the analysis / forecast start (dataDate, dataTime), UTC, naive.
- `valid_time`: the instant the value is valid for (validityDate, validityTime: the end of the step
  range for an accumulation), UTC, naive.
- `step`: whole hours from `reference_time` to `valid_time` (int32; a sub-hourly step is rounded
  down, `valid_time` stays exact); the start of an accumulation range (`0-6`) is not kept.
- `latitude`, `longitude`: degrees, as ecCodes gives them (longitudes 0..360 for most global grids).
- `value`: float64; a point missing in the message (bitmap, or missing-value management) is null.
The string columns are dictionary-encoded (one entry per message: cheap to build, and written as
Parquet dictionaries); cast to `pa.string()` where a consumer needs plain strings.

Errors: a file that is empty, holds no GRIB message, is truncated or holds a message ecCodes cannot
decode raises `GribError` naming the file and the message. It can be raised after tables of earlier
messages were yielded: a caller that wants a file all or nothing discards them.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

import eccodes
import numpy as np
import pyarrow as pa

from headwater.core.errors import SourceError

__all__ = ["GRIB_SCHEMA", "GribError", "read_grib"]

_TEXT = pa.dictionary(pa.int32(), pa.string())
GRIB_SCHEMA = pa.schema(
    [
        pa.field("file", _TEXT, nullable=False),
        pa.field("message", pa.int32(), nullable=False),
        pa.field("parameter", _TEXT, nullable=False),
        pa.field("name", _TEXT, nullable=False),
        pa.field("units", _TEXT, nullable=False),
        pa.field("level_type", _TEXT, nullable=False),
        pa.field("level", pa.float64(), nullable=False),
        pa.field("reference_time", pa.timestamp("us"), nullable=False),
        pa.field("step", pa.int32(), nullable=False),
        pa.field("valid_time", pa.timestamp("us"), nullable=False),
        pa.field("latitude", pa.float64(), nullable=False),
        pa.field("longitude", pa.float64(), nullable=False),
        pa.field("value", pa.float64(), nullable=True),
    ]
)

_MAGIC = b"GRIB"
_CHUNK = 1 << 20
_GRID_CACHE_SIZE = 4
_grids: OrderedDict[str, tuple[pa.Array, pa.Array, pa.Array]] = OrderedDict()
_grids_lock = threading.Lock()


class GribError(SourceError):
    """A GRIB file cannot be read whole: not GRIB, truncated, or a message that does not decode."""


class _MessageError(Exception):
    """Raised inside one message's decoding; becomes a GribError naming the file and the message."""


def read_grib(
    path: Path,
    file_label: str,
    *,
    max_rows: int = 2_000_000,
    progress: Callable[[int, int, int], None] | None = None,
) -> Iterator[pa.Table]:
    """Tables (`GRIB_SCHEMA`) of at most `max_rows` rows holding every grid point of every message.

    `progress(messages_decoded, bytes_decoded, file_bytes)` is called after each message.
    """
    if max_rows < 1:
        raise ValueError("max_rows must be at least 1")
    try:
        size = path.stat().st_size
        stream = path.open("rb")
    except OSError as exc:
        raise GribError(f"{file_label}: cannot open: {exc.strerror or exc}") from exc
    pending: list[pa.Table] = []
    pending_rows = 0
    with stream:
        if size == 0:
            raise GribError(f"{file_label}: empty file")
        number = 0
        end = 0  # where the previous message ended
        while True:
            position = number + 1
            try:
                handle = eccodes.codes_grib_new_from_file(stream)
            except (eccodes.CodesInternalError, ValueError, OSError) as exc:
                raise GribError(f"{file_label}: message {position}: {_reason(exc, truncated=True)}") from exc
            if handle is None:
                break
            number = position
            try:
                offset = int(eccodes.codes_get_message_offset(handle))
                length = int(eccodes.codes_get_message_size(handle))
                if offset > end and _holds_grib(stream, end, offset, at_end=False):
                    raise GribError(f"{file_label}: a damaged message before message {number} (at byte {end})")
                end = offset + length
                table = _message_table(handle, file_label, number)
            except _MessageError as exc:
                raise GribError(f"{file_label}: message {number}: {exc}") from exc
            except (eccodes.CodesInternalError, ValueError) as exc:
                raise GribError(f"{file_label}: message {number}: {_reason(exc)}") from exc
            finally:
                eccodes.codes_release(handle)
            if progress is not None:
                progress(number, end, size)
            while table.num_rows:
                take = min(max_rows - pending_rows, table.num_rows)
                pending.append(table.slice(0, take))
                pending_rows += take
                table = table.slice(take)
                if pending_rows == max_rows:
                    yield pa.concat_tables(pending)
                    pending, pending_rows = [], 0
        if number == 0:
            raise GribError(f"{file_label}: not a GRIB file (no GRIB message in {size} bytes)")
        if end < size and _holds_grib(stream, end, size, at_end=True):
            raise GribError(f"{file_label}: truncated after message {number} (a partial message at byte {end})")
    if pending:
        yield pa.concat_tables(pending)


def _reason(exc: Exception, truncated: bool = False) -> str:
    text = str(exc) or type(exc).__name__
    if truncated and isinstance(exc, eccodes.CodesInternalError):
        return f"truncated or damaged ({text})"
    return f"does not decode ({text})"


def _holds_grib(stream: BinaryIO, start: int, stop: int, at_end: bool) -> bool:
    """Do bytes [start, stop) hold the start of a GRIB message (`at_end`: or end with its first bytes)?

    Read with pread: ecCodes reads the same file through a FILE* of its own, whose position must not move.
    """
    fd = stream.fileno()
    carry = b""
    while start < stop:
        data = os.pread(fd, min(_CHUNK, stop - start), start)
        if not data:  # the file shrank while being read
            break
        start += len(data)
        chunk = carry + data
        if _MAGIC in chunk:
            return True
        carry = chunk[-3:]
    return at_end and any(carry.endswith(_MAGIC[:n]) for n in (1, 2, 3))


def _message_table(handle: Any, file_label: str, number: int) -> pa.Table:
    """One message as a table: numpy arrays from ecCodes, constant columns filled without Python loops."""
    values = eccodes.codes_get_values(handle)
    count = len(values)
    latitudes, longitudes, zeros = _grid(handle, count)
    valid = _valid_mask(handle, values)
    reference = _instant(eccodes.codes_get(handle, "dataDate"), eccodes.codes_get(handle, "dataTime"))
    valid_time = _instant(eccodes.codes_get(handle, "validityDate"), eccodes.codes_get(handle, "validityTime"))
    step = (valid_time - reference) // np.timedelta64(1, "h")
    level = eccodes.codes_get(handle, "level", ktype=float)
    columns = [
        _constant_text(file_label, zeros),
        pa.array(np.full(count, number, dtype=np.int32)),
        _constant_text(_text(handle, "shortName"), zeros),
        _constant_text(_text(handle, "name"), zeros),
        _constant_text(_text(handle, "units"), zeros),
        _constant_text(_text(handle, "typeOfLevel"), zeros),
        pa.array(np.full(count, level, dtype=np.float64)),
        pa.array(np.full(count, reference, dtype="datetime64[us]")),
        pa.array(np.full(count, step, dtype=np.int32)),
        pa.array(np.full(count, valid_time, dtype="datetime64[us]")),
        latitudes,
        longitudes,
        pa.array(values, mask=None if valid is None else ~valid),
    ]
    return pa.Table.from_arrays(columns, schema=GRIB_SCHEMA)


def _text(handle: Any, key: str) -> str:
    try:
        return str(eccodes.codes_get(handle, key, ktype=str))
    except eccodes.KeyValueNotFoundError:
        return "unknown"


def _constant_text(text: str, zeros: pa.Array) -> pa.DictionaryArray:
    """`text` on every row: a one-entry dictionary, with the grid's shared all-zero indices."""
    return pa.DictionaryArray.from_arrays(zeros, pa.array([text]))


def _instant(date: int, hhmm: int) -> np.datetime64:
    """ecCodes' YYYYMMDD and HHMM integers as a datetime64[us]."""
    try:
        moment = datetime(date // 10000, date // 100 % 100, date % 100, hhmm // 100, hhmm % 100)
    except ValueError as exc:
        raise _MessageError(f"invalid date/time {date} {hhmm:04d}") from exc
    return np.datetime64(moment, "us")


def _valid_mask(handle: Any, values: np.ndarray) -> np.ndarray | None:
    """True where the message has a value; None when it has no missing point."""
    if eccodes.codes_get(handle, "bitmapPresent"):
        bitmap = eccodes.codes_get_array(handle, "bitmap")
        if len(bitmap) != len(values):
            raise _MessageError(f"bitmap of {len(bitmap)} points for {len(values)} values")
        return np.asarray(bitmap, dtype=bool)
    try:  # missing values without a bitmap (complex packing's missing-value management)
        missing = eccodes.codes_get(handle, "numberOfMissing")
    except eccodes.KeyValueNotFoundError:
        return None
    if not missing:
        return None
    return np.asarray(values != eccodes.codes_get(handle, "missingValue", ktype=float))


def _grid(handle: Any, count: int) -> tuple[pa.Array, pa.Array, pa.Array]:
    """Latitudes and longitudes of every point, and int32 zeros as many, cached by the grid section's digest."""
    try:
        key = str(eccodes.codes_get(handle, "md5GridSection"))
    except eccodes.KeyValueNotFoundError:
        key = ""
    with _grids_lock:
        cached = _grids.get(key) if key else None
        if cached is not None:
            _grids.move_to_end(key)
    if cached is None:
        try:
            latitudes = eccodes.codes_get_array(handle, "latitudes")
            longitudes = eccodes.codes_get_array(handle, "longitudes")
        except eccodes.CodesInternalError as exc:
            grid = _text(handle, "gridType")
            raise _MessageError(f"no grid point coordinates for grid type {grid} ({exc})") from exc
        cached = (
            pa.array(np.asarray(latitudes, dtype=np.float64)),
            pa.array(np.asarray(longitudes, dtype=np.float64)),
            pa.array(np.zeros(len(latitudes), dtype=np.int32)),
        )
        if key:
            with _grids_lock:
                _grids[key] = cached
                while len(_grids) > _GRID_CACHE_SIZE:
                    _grids.popitem(last=False)
    if len(cached[0]) != count or len(cached[1]) != count:
        raise _MessageError(f"{count} values for a grid of {len(cached[0])} points")
    return cached
