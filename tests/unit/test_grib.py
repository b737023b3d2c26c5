"""GRIB1/GRIB2 files (written with ecCodes from its samples) decoded to Arrow rows."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import eccodes
import numpy as np
import pyarrow as pa
import pytest

from headwater.core.errors import SourceError
from headwater.loadgen.grib import Field, grib_message, write_grib
from headwater.sources.grib import GRIB_SCHEMA, GribError, read_grib

REFERENCE = datetime(2024, 1, 2, 6, 0)
FIELDS = [
    Field("2t", "heightAboveGround", 2, REFERENCE, step=0),
    Field("10u", "heightAboveGround", 10, REFERENCE, step=6, values=np.arange(12) * 0.5 - 3.0),
    Field("tp", "surface", 0, REFERENCE, step=12, ni=3, nj=2, lat0=60.0, lon0=10.0, increment=0.5),
    Field("t", "isobaricInhPa", 850, datetime(2024, 1, 1, 18, 0), step=9),
]
EXPECTED_META = [
    ("2t", "2 metre temperature", "K", "heightAboveGround", 2.0, REFERENCE, 0),
    ("10u", "10 metre U wind component", "m s**-1", "heightAboveGround", 10.0, REFERENCE, 6),
    ("tp", "Total precipitation", "m", "surface", 0.0, REFERENCE, 12),
    ("t", "Temperature", "K", "isobaricInhPa", 850.0, datetime(2024, 1, 1, 18, 0), 9),
]


def read_all(path: Path, label: str = "drop/f.grib", **kwargs: Any) -> pa.Table:
    tables = list(read_grib(path, label, **kwargs))
    for table in tables:
        assert table.schema == GRIB_SCHEMA
    return pa.concat_tables(tables)


def rows_of(table: pa.Table, message: int) -> list[dict[str, object]]:
    return [row for row in table.to_pylist() if row["message"] == message]


@pytest.mark.parametrize("edition", [1, 2])
def test_messages_become_rows(tmp_path: Path, edition: int) -> None:
    table = read_all(write_grib(tmp_path / "f.grib", FIELDS, edition))
    assert table.num_rows == 12 + 12 + 6 + 12
    assert table.column("message").to_pylist() == [1] * 12 + [2] * 12 + [3] * 6 + [4] * 12
    assert set(table.column("file").to_pylist()) == {"drop/f.grib"}
    for number, (parameter, name, units, level_type, level, reference, step) in enumerate(EXPECTED_META, 1):
        rows = rows_of(table, number)
        meta = {(r["parameter"], r["name"], r["units"], r["level_type"], r["level"]) for r in rows}
        assert meta == {(parameter, name, units, level_type, level)}
        times = {(r["reference_time"], r["step"], r["valid_time"]) for r in rows}
        assert times == {(reference, step, reference + timedelta(hours=step))}
    first = rows_of(table, 1)
    assert [r["value"] for r in first] == [273.0 + i for i in range(12)]
    # first point at 90N 0E, scanning west to east, then north to south, 1 degree apart
    assert [(r["latitude"], r["longitude"]) for r in first[:5]] == [(90, 0), (90, 1), (90, 2), (90, 3), (89, 0)]
    assert (first[-1]["latitude"], first[-1]["longitude"]) == (88.0, 3.0)
    assert [r["value"] for r in rows_of(table, 2)] == [i * 0.5 - 3.0 for i in range(12)]
    corners = [(r["latitude"], r["longitude"], r["value"]) for r in rows_of(table, 3)]
    assert corners == [
        (60, 10, 273),
        (60, 10.5, 274),
        (60, 11, 275),
        (59.5, 10, 276),
        (59.5, 10.5, 277),
        (59.5, 11, 278),
    ]
    assert table.column("value").null_count == 0


@pytest.mark.parametrize("edition", [1, 2])
def test_missing_points_are_null(tmp_path: Path, edition: int) -> None:
    values = np.array([1.5, np.nan, 3.25, 4, 5, 6, 7, 8, 9, 10, 11, np.nan])
    path = write_grib(tmp_path / "f.grib", [Field(values=values), Field(parameter="10v", level=10)], edition)
    table = read_all(path)
    assert rows_of(table, 1)[1]["latitude"] == 90.0
    assert [r["value"] for r in rows_of(table, 1)] == [1.5, None, 3.25, 4, 5, 6, 7, 8, 9, 10, 11, None]
    assert table.column("value").null_count == 2
    assert [r["value"] for r in rows_of(table, 2)] == [273.0 + i for i in range(12)]


def test_grib1_keeps_negative_longitudes_grib2_gives_0_to_360(tmp_path: Path) -> None:
    field = Field(ni=2, nj=1, lat0=45.0, lon0=-10.0, increment=0.5)
    one = read_all(write_grib(tmp_path / "1.grib", [field], edition=1))
    two = read_all(write_grib(tmp_path / "2.grib", [field], edition=2))
    assert one.column("longitude").to_pylist() == [-10.0, -9.5]
    assert two.column("longitude").to_pylist() == [350.0, 350.5]


@pytest.mark.parametrize("edition", [1, 2])
def test_steps_in_other_units(tmp_path: Path, edition: int) -> None:
    reference = datetime(2024, 5, 6, 23, 30)
    fields = [Field(reference=reference, step=30), Field(reference=reference, step=90, step_units="m"),
              Field(reference=reference, step=2, step_units="D")]  # fmt: skip
    table = read_all(write_grib(tmp_path / "f.grib", fields, edition))
    steps = [(r["step"], r["valid_time"]) for r in table.to_pylist() if r["latitude"] == 90 and r["longitude"] == 0]
    # whole hours, rounded down; valid_time is exact
    assert steps == [
        (30, datetime(2024, 5, 8, 5, 30)),
        (1, datetime(2024, 5, 7, 1, 0)),
        (48, datetime(2024, 5, 8, 23, 30)),
    ]


def test_tables_hold_at_most_max_rows(tmp_path: Path) -> None:
    path = write_grib(
        tmp_path / "f.grib", [Field(), Field(parameter="2d"), Field(parameter="msl", level_type="meanSea")]
    )
    sizes = [t.num_rows for t in read_grib(path, "f", max_rows=5)]
    assert sizes == [5, 5, 5, 5, 5, 5, 5, 1]
    assert [t.num_rows for t in read_grib(path, "f", max_rows=100)] == [36]
    split = read_all(path, max_rows=7)
    whole = read_all(path)
    assert split.to_pylist() == whole.to_pylist()
    with pytest.raises(ValueError):
        list(read_grib(path, "f", max_rows=0))


def test_progress_after_each_message(tmp_path: Path) -> None:
    path = write_grib(tmp_path / "f.grib", FIELDS)
    calls: list[tuple[int, int, int]] = []
    read_all(path, progress=lambda *args: calls.append(args))
    size = path.stat().st_size
    assert [c[0] for c in calls] == [1, 2, 3, 4]
    assert all(c[2] == size for c in calls) and calls[-1][1] == size
    assert 0 < calls[0][1] < calls[1][1] < calls[2][1] < size


def test_grids_of_different_shapes_in_one_file(tmp_path: Path) -> None:
    fields = [Field(ni=2, nj=2, lat0=10.0), Field(ni=3, nj=1, lat0=-20.0, lon0=100.0, increment=0.25), Field()]
    table = read_all(write_grib(tmp_path / "f.grib", fields))
    assert [(r["latitude"], r["longitude"]) for r in rows_of(table, 1)] == [(10, 0), (10, 1), (9, 0), (9, 1)]
    assert [(r["latitude"], r["longitude"]) for r in rows_of(table, 2)] == [(-20, 100), (-20, 100.25), (-20, 100.5)]
    assert len(rows_of(table, 3)) == 12


def test_bulletin_headers_between_messages_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "f.grib"
    first, second = grib_message(Field()), grib_message(Field(parameter="2d"))
    path.write_bytes(b"\x01\r\r\n123\r\r\nHEAD 1\r\r\n" + first + b"\r\r\n\x03" + second + b"\n")
    table = read_all(path)
    assert table.column("parameter").to_pylist() == ["2t"] * 12 + ["2d"] * 12


@pytest.mark.parametrize(
    ("cut", "reason"),
    [
        (lambda one, two: one + two[:-30], "message 2: truncated or damaged"),  # inside the second message
        (lambda one, two: one + two[:40], "message 2: truncated or damaged"),
        (lambda one, two: one + b"GRI", "truncated after message 1"),  # too short for ecCodes to notice
        (lambda one, two: one[:-10] + two, "message 1: truncated or damaged"),  # a length that lies
    ],
)
def test_truncated_files_raise(tmp_path: Path, cut: object, reason: str) -> None:
    one, two = grib_message(Field()), grib_message(Field(parameter="2d"))
    path = tmp_path / "cut.grib"
    path.write_bytes(cut(one, two))  # type: ignore[operator]
    with pytest.raises(GribError, match=rf"^drop/cut\.grib: {reason}"):
        read_all(path, "drop/cut.grib")


def test_damaged_message_raises_naming_it(tmp_path: Path) -> None:
    one, two = grib_message(Field()), bytearray(grib_message(Field(parameter="2d")))
    two[20:40] = b"\xff" * 20  # inside the identification and grid sections
    path = tmp_path / "bad.grib"
    path.write_bytes(one + bytes(two))
    with pytest.raises(GribError, match=r"^bad\.grib: message 2: does not decode"):
        read_all(path, "bad.grib")


def test_not_grib_files_raise(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("temperature,value\n2t,273\n")
    with pytest.raises(GribError, match=r"notes\.txt: not a GRIB file"):
        read_all(text, "notes.txt")
    empty = tmp_path / "empty.grib"
    empty.write_bytes(b"")
    with pytest.raises(GribError, match=r"empty\.grib: empty file"):
        read_all(empty, "empty.grib")
    with pytest.raises(SourceError, match=r"gone\.grib: cannot open"):
        read_all(tmp_path / "gone.grib", "gone.grib")


def test_other_grid_types(tmp_path: Path) -> None:
    """Coordinates of any grid ecCodes can iterate; a spectral field has none and is refused."""

    def sample(name: str) -> Path:
        handle = eccodes.codes_grib_new_from_samples(name)
        try:
            path = tmp_path / f"{name}.grib"
            path.write_bytes(eccodes.codes_get_message(handle))
        finally:
            eccodes.codes_release(handle)
        return path

    table = read_all(sample("reduced_gg_pl_grib2"))
    assert table.num_rows == 6114  # a reduced Gaussian grid: fewer points toward the poles
    latitudes = table.column("latitude").to_numpy()
    assert latitudes[0] == pytest.approx(87.8638, abs=1e-4) and latitudes[-1] == pytest.approx(-87.8638, abs=1e-4)
    with pytest.raises(GribError, match="message 1: no grid point coordinates for grid type sh"):
        read_all(sample("sh_ml_grib2"))
