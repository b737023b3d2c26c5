"""Rows to Arrow for the tables streams land in (processor outputs, source feeds)."""

from __future__ import annotations

import pyarrow as pa

from headwater.lake.stream_table import normalise_types, rows_table
from headwater.processing.tables import rows_to_arrow


def test_every_key_of_every_row_is_a_column() -> None:
    """pa.Table.from_pylist keeps only the first row's keys: outputs of several shapes lost fields."""
    table = rows_table([{"a": 1}, {"a": 2, "b": "x"}, {"c": 1.5}])
    assert table.to_pylist() == [
        {"a": 1, "b": None, "c": None},
        {"a": 2, "b": "x", "c": None},
        {"a": None, "b": None, "c": 1.5},
    ]


def test_processor_outputs_of_several_shapes_keep_their_fields() -> None:
    rows = rows_to_arrow([("k1", {"kind": "coupon"}, 0, "o1"), ("k2", {"kind": "bet", "value": 3}, 1, "o2")])
    assert rows.column("value").to_pylist() == [None, 3]
    assert rows.schema.field("value").type == pa.int64()


def test_types_are_normalised() -> None:
    table = normalise_types(
        pa.table({"i": pa.array([1], pa.int8()), "n": pa.nulls(1), "f": pa.array([1.0], pa.float32())})
    )
    assert [f.type for f in table.schema] == [pa.int64(), pa.string(), pa.float64()]
