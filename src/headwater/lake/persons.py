"""Integer person keys: one small integer per distinct user or anonymous id, shared by every writer.

Rollups (`headwater.lake.rollups`) keep the exact set of active people per day as Roaring bitmaps, which
hold 32-bit integers, so every id string that appears in `user_id` or `anonymous_id` gets a key from
`headwater_person_keys` in the catalog's database (SQLite on one machine, PostgreSQL in a cluster: every
writer and import shares one numbering). Keys are never reused or changed (a privacy deletion renames an id's
row to a salted hash and keeps the key: `forget`); a string `"42"` used as a
user id and as an anonymous id is one key, as `count(DISTINCT coalesce(user_id, anonymous_id))` counts it
once.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa

from headwater.core.database import create_tables

_METADATA = sa.MetaData()
PERSON_KEYS = sa.Table(
    "headwater_person_keys",
    _METADATA,
    sa.Column("person_key", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("person_id", sa.String, nullable=False, unique=True),
)
_BATCH = "CREATE TEMPORARY TABLE IF NOT EXISTS hw_person_batch (person_id VARCHAR)"
_ASSIGN = (
    "INSERT INTO headwater_person_keys (person_id) SELECT DISTINCT person_id FROM hw_person_batch WHERE true "
    "ON CONFLICT DO NOTHING"
)  # `WHERE true`: SQLite's parser needs it between a SELECT and ON CONFLICT
_READ = (
    "SELECT k.person_id, k.person_key FROM hw_person_batch b JOIN headwater_person_keys k ON k.person_id = b.person_id"
)
MAX_CACHED = 4_000_000  # ids kept in memory per process (about 0.5 GB at the limit); past it the cache restarts


class PersonKeys:
    """Maps id strings to their keys, assigning new keys in one round trip per batch of new ids."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        create_tables(engine, _METADATA)
        self._cache: dict[str, int] = {}

    def _ensure(self, ids: Iterable[str]) -> None:
        """Assign (one round trip) and cache the keys of the ids not cached yet."""
        cache = self._cache
        missing = [i for i in ids if i not in cache]
        if missing:
            if len(cache) + len(missing) > MAX_CACHED:
                cache.clear()
                missing = list(set(ids))
            cache.update(self._assign(missing))

    def _assign(self, ids: list[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        with self.engine.begin() as conn:
            conn.execute(sa.text(_BATCH))
            conn.execute(sa.text("DELETE FROM hw_person_batch"))
            self._load(conn, ids)
            conn.execute(sa.text(_ASSIGN))
            found = {str(pid): int(key) for pid, key in conn.execute(sa.text(_READ))}
        return found

    def _load(self, conn: sa.Connection, ids: list[str]) -> None:
        if self.engine.dialect.name == "postgresql":
            driver: Any = conn.connection.driver_connection
            with driver.cursor() as cursor, cursor.copy("COPY hw_person_batch (person_id) FROM STDIN") as copy:
                for pid in ids:
                    copy.write_row((pid,))
            return
        conn.execute(sa.text("INSERT INTO hw_person_batch VALUES (:p)"), [{"p": p} for p in ids])

    def prepare(self, *columns: pa.ChunkedArray | pa.Array) -> None:
        """Assign keys for every id in `columns` in one round trip (before the per-file work)."""
        ids: set[str] = set()
        for column in columns:
            ids.update(v for v in pc.unique(column).to_pylist() if v is not None)
        self._ensure(ids)

    def key_array(self, column: pa.ChunkedArray | pa.Array) -> np.ndarray:
        """Keys for a string column, aligned with it; -1 where the id is NULL."""
        encoded = pc.dictionary_encode(column)
        chunks = encoded.chunks if isinstance(encoded, pa.ChunkedArray) else [encoded]
        out = []
        for chunk in chunks:
            names = chunk.dictionary.to_pylist()
            self._ensure(names)
            lookup = np.fromiter(map(self._cache.__getitem__, names), dtype=np.int64, count=len(names))
            indices = pc.fill_null(chunk.indices, 0).to_numpy(zero_copy_only=False)
            keys = lookup[indices] if len(lookup) else np.zeros(len(chunk), dtype=np.int64)
            if chunk.null_count:
                keys = np.where(chunk.is_null().to_numpy(zero_copy_only=False), -1, keys)
            out.append(keys.astype(np.int64))
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)

    def keys_of(self, ids: Iterable[str]) -> dict[str, int]:
        """The keys of the ids that have one (an id never seen in `events` has none), read without assigning any."""
        wanted = sorted(set(ids))
        found: dict[str, int] = {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            with self.engine.connect() as conn:
                query = sa.select(PERSON_KEYS.c.person_id, PERSON_KEYS.c.person_key).where(
                    PERSON_KEYS.c.person_id.in_(chunk)
                )
                found.update({str(p): int(k) for p, k in conn.execute(query)})
        return found

    def erased_keys(self, names: Iterable[str]) -> set[int]:
        """Keys of rows `forget` renamed to one of `names`: a writer that still had such an id cached went on
        writing rows with its old key, which a later deletion of the same person must find."""
        wanted = sorted(set(names))
        found: set[int] = set()
        for start in range(0, len(wanted), 100):
            ranges = [
                sa.and_(PERSON_KEYS.c.person_id >= f"{n}:", PERSON_KEYS.c.person_id < f"{n};")
                for n in wanted[start : start + 100]
            ]
            with self.engine.connect() as conn:
                found.update(
                    int(k) for (k,) in conn.execute(sa.select(PERSON_KEYS.c.person_key).where(sa.or_(*ranges)))
                )
        return found

    def known_keys(self, ids: Iterable[str]) -> dict[str, int]:
        """Keys of the ids, from the cache or the database, never assigning one."""
        wanted = set(ids)
        found = {i: self._cache[i] for i in wanted if i in self._cache}
        missing = wanted - set(found)
        if missing:
            found.update(self.keys_of(missing))
        return found

    def forget(self, names: dict[str, str]) -> int:
        """A privacy deletion: each id's row keeps its key, its name becomes `<names[id]>:<key>` (names are salted
        hashes), so the key is never given to another id and the id itself is gone. Returns rows changed.

        On SQLite the old bytes are overwritten (`secure_delete`), not left in free pages."""
        changed = 0
        wanted = sorted(names)
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            with self.engine.begin() as conn:
                if conn.dialect.name == "sqlite":
                    conn.execute(sa.text("PRAGMA secure_delete = ON"))
                query = sa.select(PERSON_KEYS.c.person_key, PERSON_KEYS.c.person_id)
                for key, pid in conn.execute(query.where(PERSON_KEYS.c.person_id.in_(chunk))).all():
                    renamed = f"{names[str(pid)]}:{key}"
                    conn.execute(
                        sa.update(PERSON_KEYS).where(PERSON_KEYS.c.person_key == key).values(person_id=renamed)
                    )
                    changed += 1
        for pid in wanted:
            self._cache.pop(pid, None)
        return changed
