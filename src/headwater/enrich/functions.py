"""User enrichments (setting `enrich_functions`): Python functions over Arrow batches.

Each entry is `'path/to/file.py:name'` or `'package.module:name'` naming a function
`fn(events: pyarrow.Table) -> pyarrow.Table`. It receives the batch as the earlier stages left it (the lake
columns, the enriched ones, and the `_`-prefixed inputs `_ip`, `_user_agent`, `_url`, `_referrer`, `_endpoint`)
and returns a table with the same number of rows, in the same order, that may add columns. Only the added
columns are taken (the function cannot change or drop existing ones); they must be lower-case identifiers
(`[a-z][a-z0-9_]*`), not one of the fixed columns (the events schema, the enrichments', `plan_version`,
`plan_violations`, `person_id`), of a scalar Arrow type (no lists, structs or maps; dictionaries are decoded,
an all-NULL column is typed like before or as a string). A column keeps the type of its first batch; later
batches are cast to it. Functions run in the order given; each sees the columns the ones before added.

A function that cannot be imported stops the writer at start (ConfigError); one that raises or returns
something unusable fails the batch with an EnrichmentError naming the function and the problem (the writer
retries the batch; nothing is lost). Functions should be vectorised (pyarrow.compute, numpy, DuckDB): they run
on every flush of the lake writer.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pyarrow as pa

from headwater.core.errors import ConfigError
from headwater.core.loading import load_named
from headwater.core.stages import StageBatch
from headwater.enrich.common import FIXED_COLUMNS, EnrichmentError

NAME = re.compile(r"[a-z][a-z0-9_]*")
UserFunction = Callable[[pa.Table], pa.Table]


def load_function(spec: str) -> UserFunction:
    """Import 'file.py:name' or 'module:name' and return the function it names."""
    found = load_named(spec, "enrich_functions:", ConfigError)
    if not callable(found):
        raise ConfigError(f"enrich_functions: {spec!r}: {spec.rpartition(':')[2]} is not a function")
    function: UserFunction = found
    return function


class FunctionStage:
    """Runs the user's functions in order, keeping the columns each adds."""

    name = "enrich_functions"

    def __init__(self, specs: list[str]) -> None:
        self.functions = [(spec, load_function(spec)) for spec in specs]
        self.describe = f"user functions ({', '.join(specs)})"
        self.types: dict[str, pa.DataType] = {}  # column -> type of its first batch

    def apply(self, batch: StageBatch) -> StageBatch:
        events = batch.events
        for spec, function in self.functions:
            events = self._run(spec, function, events)
        batch.events = events
        return batch

    def _run(self, spec: str, function: UserFunction, events: pa.Table) -> pa.Table:
        try:
            out = function(events)
        except Exception as exc:
            raise EnrichmentError(f"enrichment function {spec}: raised {type(exc).__name__}: {exc}") from exc
        if not isinstance(out, pa.Table):
            raise EnrichmentError(f"enrichment function {spec}: returned {type(out).__name__}, not a pyarrow.Table")
        if out.num_rows != events.num_rows:
            raise EnrichmentError(
                f"enrichment function {spec}: returned {out.num_rows} rows for {events.num_rows}; "
                "it must keep every row, in order"
            )
        for name in out.column_names:
            if name in events.column_names:
                continue
            events = events.append_column(name, self._checked(spec, name, out.column(name)))
        return events

    def _checked(self, spec: str, name: str, column: pa.ChunkedArray) -> pa.ChunkedArray:
        """The added column, validated and typed like its first batch."""
        if not NAME.fullmatch(name):
            raise EnrichmentError(
                f"enrichment function {spec}: column {name!r} is not a lower-case identifier ([a-z][a-z0-9_]*)"
            )
        if name in FIXED_COLUMNS:
            raise EnrichmentError(f"enrichment function {spec}: column {name!r} is a fixed column; choose another name")
        kind = column.type
        if pa.types.is_dictionary(kind):
            column, kind = column.cast(kind.value_type), kind.value_type
        if pa.types.is_nested(kind):
            raise EnrichmentError(
                f"enrichment function {spec}: column {name!r} is {kind}; use scalar types (JSON text for nested data)"
            )
        known = self.types.get(name)
        if pa.types.is_null(kind):
            kind = known or pa.string()
        if known is not None and kind != known:
            try:
                return column.cast(known)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise EnrichmentError(
                    f"enrichment function {spec}: column {name!r} was {known} and is now {column.type}, "
                    f"which does not cast: {exc}"
                ) from exc
        self.types.setdefault(name, kind)
        return column.cast(kind) if column.type != kind else column

    def close(self) -> None:
        pass
