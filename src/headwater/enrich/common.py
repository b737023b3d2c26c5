"""What every enrichment shares: per-distinct-value mapping, column replacement, the fixed column names."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

import pyarrow as pa
import pyarrow.compute as pc

from headwater.core.errors import HeadwaterError
from headwater.core.events import EVENTS_SCHEMA

# columns the built-in stages add (headwater.enrich), the plan stage and identity add; user functions may not
# use these names
ENRICHED_COLUMNS = (
    "browser", "browser_version", "os", "os_version", "device_type",
    "is_bot", "bot_reason",
    "country", "region", "city",
    "ip",
    "channel", "referrer_domain", "utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content", "click_id",
    "session_id",
)  # fmt: skip
OTHER_STAGE_COLUMNS = ("plan_version", "plan_violations", "person_id")
FIXED_COLUMNS = frozenset((*EVENTS_SCHEMA.names, *ENRICHED_COLUMNS, *OTHER_STAGE_COLUMNS))

Column: TypeAlias = pa.ChunkedArray | pa.Array


class EnrichmentError(HeadwaterError):
    """An enrichment failed on a batch (a user function raised or returned something unusable)."""


def flat(column: Column) -> pa.Array:
    """One contiguous array (stages see one flush at a time, well under Arrow's 2 GB per string array)."""
    if isinstance(column, pa.ChunkedArray):
        return column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    return column


def per_distinct(column: Column, fn: Callable[[Any], Sequence[Any]], types: Sequence[pa.DataType]) -> list[pa.Array]:
    """Apply `fn` once per distinct value of `column` (NULL included: `fn(None)`), returning one array per
    output (`fn` returns a tuple of len(types)), aligned with `column` again (a take through the dictionary)."""
    encoded = pc.dictionary_encode(flat(column), null_encoding="encode")
    results = [fn(value) for value in encoded.dictionary.to_pylist()]
    outputs = list(zip(*results, strict=True)) if results else [() for _ in types]
    return [pc.take(pa.array(values, type=kind), encoded.indices) for values, kind in zip(outputs, types, strict=True)]


def map_dictionary(column: Column, fn: Callable[[pa.Array], pa.Array]) -> pa.Array:
    """Apply the vectorised `fn` to the distinct values of `column` only, then take back to its rows."""
    encoded = pc.dictionary_encode(flat(column), null_encoding="encode")
    return pc.take(fn(encoded.dictionary), encoded.indices)


def set_column(table: pa.Table, name: str, values: Column) -> pa.Table:
    """`table` with column `name` replaced, or appended when new."""
    field = pa.field(name, values.type)
    index = table.schema.get_field_index(name)
    if index >= 0:
        return table.set_column(index, field, values)
    return table.append_column(field, values)


def column_or_nulls(table: pa.Table, name: str) -> pa.Array:
    """A string input column, or NULLs when the batch lacks it (e.g. a table written without stage inputs)."""
    if name in table.column_names:
        return flat(table.column(name))
    return pa.nulls(table.num_rows, pa.string())
