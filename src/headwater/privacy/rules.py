"""Which rows of which files a deletion removes (or changes), per kind of table.

`events`: a row is the person's when its `user_id` is one of their user ids, or it has no user id and its
`anonymous_id` is one of their ids, or its `previous_id` (an alias) is one of their ids. An anonymous id that
another signed-in user also used (a shared device) stays on that user's rows: they are that user's data.
Candidate files come from the rollups: a file whose set of people does not meet the deleted people's keys is
not read at all (files without a rollup, and files with aliases, are read).
`quarantine`: a row goes when its raw payload holds one of the ids as a JSON string.
Other tables (processor outputs, sources' own tables): a row goes when any text column equals one of the ids
or holds one as a JSON string.
Personal properties (`privacy_personal_properties`): in everyone else's events, such a property is removed
where its value is one the deleted people had.
"""

from __future__ import annotations

from collections.abc import Iterable

import orjson
import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.manifest import DataFile
from pyiceberg.table import Table

from headwater.core.erasure import ErasureSet
from headwater.lake.rollups import RollupStore, people_of

ANONYMOUS_ID_FIELD, PREVIOUS_ID_FIELD = 5, 7  # `anonymous_id`, `previous_id` in the events schema (lake/tables.py)
PERSONAL_COLUMNS = ("properties", "traits", "context")


class EventRule:
    def __init__(self, users: ErasureSet, everyone: ErasureSet, personal: dict[str, ErasureSet] | None = None) -> None:
        self.users = users
        self.everyone = everyone
        self.personal = {k: v for k, v in (personal or {}).items() if len(v)}
        self._values = ErasureSet.of(i for v in self.personal.values() for i in v.ids)

    def columns(self, schema: pa.Schema) -> list[str] | None:
        """Read whole at once: the rollups choose files that hold the people (a first pass would be wasted),
        except that personal properties may be anywhere."""
        if not self.personal:
            return None
        return [n for n in ("user_id", "anonymous_id", "previous_id", *PERSONAL_COLUMNS) if n in schema.names]

    def remove(self, rows: pa.Table) -> pa.Array | pa.ChunkedArray:
        user = rows.column("user_id")
        mask = pc.or_(
            self.users.equal(user),
            pc.and_(pc.is_null(user), self.everyone.equal(rows.column("anonymous_id"))),
        )
        return pc.or_(mask, self.everyone.equal(rows.column("previous_id")))

    def change(self, rows: pa.Table) -> tuple[pa.Table, int] | None:
        if not self.personal or rows.num_rows == 0:
            return None
        changed = 0
        for name in PERSONAL_COLUMNS:
            if name not in rows.column_names:
                continue
            column = rows.column(name)
            hits = self._values.in_text(column)
            if not pc.any(hits).as_py():
                continue
            values = column.to_pylist()
            for index in pc.indices_nonzero(hits).to_pylist():
                cleaned = self._clean(values[index])
                if cleaned is not None:
                    values[index] = cleaned
                    changed += 1
            position = rows.column_names.index(name)
            rows = rows.set_column(position, rows.field(name), pa.array(values, type=column.type))
        return (rows, changed) if changed else None

    def _clean(self, text: str | None) -> str | None:
        """`text` (a JSON object) without the personal properties that hold a deleted person's value."""
        if not text:
            return None
        try:
            doc = orjson.loads(text)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(doc, dict):
            return None
        gone = [k for k, values in self.personal.items() if isinstance(doc.get(k), str) and doc[k] in values]
        if not gone:
            return None
        for key in gone:
            del doc[key]
        return orjson.dumps(doc).decode()


class TextRule:
    """A row goes when one of `columns` (every text column when None) equals an id or holds one as JSON."""

    def __init__(self, ids: ErasureSet, columns: Iterable[str] | None = None) -> None:
        self.ids = ids
        self.names = tuple(columns) if columns is not None else None

    def columns(self, schema: pa.Schema) -> list[str] | None:
        text = [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
        return [n for n in text if self.names is None or n in self.names]

    def remove(self, rows: pa.Table) -> pa.Array | pa.ChunkedArray:
        names = self.columns(rows.schema) or []
        mask: pa.Array | pa.ChunkedArray = pa.array([False] * rows.num_rows)
        for name in names:
            if name in rows.column_names:
                column = rows.column(name)
                mask = pc.or_(mask, pc.or_(self.ids.equal(column), self.ids.in_text(column)))
        return mask

    def change(self, rows: pa.Table) -> tuple[pa.Table, int] | None:
        return None


class EventCandidates:
    """The `events` files that can hold the people: their rollup's people meet `keys`, or they have no rollup,
    or they hold aliases (`previous_id` is not in the rollups)."""

    def __init__(self, rollups: RollupStore, keys: Iterable[int], every_file: bool = False) -> None:
        from pyroaring import BitMap

        self.rollups = rollups
        self.keys = BitMap(sorted(set(keys)))
        self.every_file = every_file
        self._people: dict[str, object] = {}  # path -> BitMap, parsed once per deletion

    def __call__(self, table: Table, files: list[DataFile]) -> list[DataFile]:
        if self.every_file:
            return files
        missing = [f.file_path for f in files if f.file_path not in self._people]
        for path, data in self.rollups.raw(missing).items():
            self._people[path] = people_of(data)
        chosen = []
        for data_file in files:
            people = self._people.get(data_file.file_path)
            if people is None or has_values(data_file, PREVIOUS_ID_FIELD) or self.keys.intersect(people):  # type: ignore[arg-type]
                chosen.append(data_file)
        return chosen


def has_values(data_file: DataFile, field_id: int) -> bool:
    """Whether the file may hold a non-NULL value in the column (by its statistics; True without them)."""
    values = (data_file.value_counts or {}).get(field_id)
    nulls = (data_file.null_value_counts or {}).get(field_id)
    if values is None or nulls is None:
        return True
    return values > nulls


def every_file(table: Table, files: list[DataFile]) -> list[DataFile]:
    return files
