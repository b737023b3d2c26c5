"""What every component needs to erase people: the set of ids to erase, how to match it, and the board that
tells running components (processors, sources) which erasures to apply.

An `ErasureSet` matches ids exactly: a string equal to one of them (a column value, a state key, a string
anywhere inside a JSON value), never a substring of a longer id. In text that is not parsed (quarantine's raw
payloads, log records before they are decoded) an id is found as a JSON string token: the id between double
quotes, as orjson writes it or with non-ASCII characters escaped (`"\\u00e9"`), as other senders do.

The board (`headwater_erasures` in the catalog database, shared by every process of a deployment) lists the
erasures in progress. The privacy worker publishes one per deletion request, marks it `ready` once the log
no longer holds the ids (so nothing read afterwards can bring them back), and waits for the acknowledgements
of the components that keep their own copies (processor state); it clears the ids when the request is done.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, AnyStr

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa

from headwater.core.database import create_tables, open_store

_METADATA = sa.MetaData()
ERASURES = sa.Table(
    "headwater_erasures",
    _METADATA,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.String(64), nullable=False, unique=True),
    sa.Column("ids", sa.Text, nullable=False),  # JSON list; "[]" once the request is done
    sa.Column("ready", sa.Boolean, nullable=False, default=False),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
)
ACKS = sa.Table(
    "headwater_erasure_acks",
    _METADATA,
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("consumer", sa.String(255), primary_key=True),
    sa.Column("acked_ms", sa.BigInteger, nullable=False),
    sa.Column("detail", sa.Text, nullable=False, default=""),
)
SECRETS = sa.Table(
    "headwater_secrets",
    _METADATA,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(255), nullable=False),
)
ERASED = b'{"x":1}'
"""A log record whose person was erased: its value is replaced by this; every reader skips it."""


def trie_pattern(words: Iterable[str]) -> str:
    """A regex matching any of `words`, shaped as a trie (`(?:a(?:b|c)|d)` rather than `ab|ac|d`): Python's `re`
    tries the branches of a flat alternation one after the other (2 s per 3 MB with 1,000 ids) and RE2 builds a
    larger automaton; a trie walks each position once (20 ms). Per character: valid text for RE2."""
    return _trie([[re.escape(c) for c in word] for word in words], "", "(?:", "|", ")", "?", "(?!)")


def trie_pattern_bytes(words: Iterable[bytes]) -> bytes:
    """`trie_pattern` per byte, for byte strings that need not be text (pickled state keys)."""
    return _trie([[re.escape(bytes([b])) for b in word] for word in words], b"", b"(?:", b"|", b")", b"?", b"(?!)")


def _trie(words: list[list[AnyStr]], empty: AnyStr, start: AnyStr, bar: AnyStr, end: AnyStr, optional: AnyStr,
          never: AnyStr) -> AnyStr:  # fmt: skip
    root: dict[Any, Any] = {}
    for word in words:
        node = root
        for unit in word:
            node = node.setdefault(unit, {})
        node[None] = {}  # a word ends here

    def build(node: dict[Any, Any]) -> AnyStr:
        parts = [unit + build(child) for unit, child in sorted((k, v) for k, v in node.items() if k is not None)]
        if not parts:
            return empty
        body = parts[0] if len(parts) == 1 and None not in node else start + bar.join(parts) + end
        return body + optional if None in node else body  # the rest is optional where a word ends

    return build(root) if root else never


def is_erased(envelope: dict[str, Any]) -> bool:
    """Whether a decoded log record is an erased one (see ERASED)."""
    return "x" in envelope


@dataclass(frozen=True)
class ErasureSet:
    """The ids of one erasure (user ids, anonymous ids and any other id of the same people), matched exactly."""

    ids: tuple[str, ...]
    _lookup: frozenset[str] = field(init=False, repr=False, compare=False)
    _value_set: pa.Array = field(init=False, repr=False, compare=False)
    _pattern: str = field(init=False, repr=False, compare=False)
    _token_re: re.Pattern[bytes] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ids = tuple(sorted({i for i in self.ids if i}))
        object.__setattr__(self, "ids", ids)
        object.__setattr__(self, "_lookup", frozenset(ids))
        object.__setattr__(self, "_value_set", pa.array(ids, type=pa.string()))
        bodies = {t.decode()[1:-1] for i in ids for t in json_tokens(i)}
        pattern = '"' + trie_pattern(bodies) + '"' if bodies else "(?!)"
        object.__setattr__(self, "_pattern", pattern)
        object.__setattr__(self, "_token_re", re.compile(pattern.encode()))

    @classmethod
    def of(cls, ids: Iterable[str]) -> ErasureSet:
        return cls(tuple(ids))

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, value: object) -> bool:
        return value in self._lookup

    @property
    def value_set(self) -> pa.Array:
        """The ids as an Arrow string array (for `pc.is_in`)."""
        return self._value_set

    def equal(self, column: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
        """Per value of a string column: is it one of the ids (NULL counts as no)."""
        return pc.fill_null(pc.is_in(column, value_set=self._value_set), False)

    def in_text(self, column: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
        """Per value of a text or binary column: does it hold one of the ids as a JSON string token."""
        if not self.ids:
            return pa.array(np.zeros(len(column), dtype=bool))
        return pc.fill_null(pc.match_substring_regex(column, self._pattern), False)

    def in_bytes(self, payload: bytes) -> bool:
        """Whether raw bytes hold one of the ids as a JSON string token (a quick test before parsing)."""
        return bool(self.ids) and self._token_re.search(payload) is not None

    def within(self, value: Any) -> bool:
        """Whether a decoded JSON-like value (dict, list, tuple, str, ...) holds one of the ids as a string."""
        if isinstance(value, str):
            return value in self._lookup
        if isinstance(value, dict):
            return any(self.within(k) or self.within(v) for k, v in value.items())
        if isinstance(value, list | tuple | set | frozenset):
            return any(self.within(v) for v in value)
        return False


_HTML_ESCAPES = {"&": ("\\u0026",), "<": ("\\u003c", "\\u003C"), ">": ("\\u003e", "\\u003E")}


def json_tokens(value: str) -> set[bytes]:
    """The ways JSON writers spell `value` as a string: raw UTF-8 (orjson), `\\u00e9` and `\\u00E9` escapes (Python,
    .NET), `\\/` for a slash (PHP) and `\\u0026`-style escapes of `& < >` (Go)."""
    spellings = {orjson.dumps(value).decode(), json.dumps(value, ensure_ascii=True)}
    spellings |= {re.sub(r"\\u([0-9a-f]{4})", lambda m: "\\u" + m.group(1).upper(), t) for t in spellings}
    if "/" in value:
        spellings |= {t.replace("/", "\\/") for t in spellings}
    for char, escapes in _HTML_ESCAPES.items():
        if char in value:
            spellings |= {t.replace(char, e) for t in spellings for e in escapes}
    return {t.encode() for t in spellings}


def hash_id(value: str, salt: str) -> str:
    """The salted hash that stands for a deleted id wherever it must be remembered (audit, suppression)."""
    return hashlib.blake2b(value.encode(), key=salt.encode()[:64], digest_size=16).hexdigest()


def open_board(uri: str) -> sa.Engine:
    """An engine on the catalog database with the erasure tables created."""
    return open_store(uri, _METADATA)


def ensure_tables(engine: sa.Engine) -> None:
    create_tables(engine, _METADATA)


def deployment_salt(engine: sa.Engine, configured: str | None = None) -> str:
    """`configured`, else the deployment's salt: generated once, kept in `headwater_secrets`."""
    if configured:
        return configured
    with engine.begin() as conn:
        found = conn.execute(sa.select(SECRETS.c.value).where(SECRETS.c.name == "privacy_salt")).scalar()
        if found:
            return str(found)
    try:
        with engine.begin() as conn:
            conn.execute(sa.insert(SECRETS).values(name="privacy_salt", value=secrets.token_hex(32)))
    except sa.exc.IntegrityError:
        pass  # another process made it first
    with engine.begin() as conn:
        return str(conn.execute(sa.select(SECRETS.c.value).where(SECRETS.c.name == "privacy_salt")).scalar_one())


@dataclass(frozen=True)
class Erasure:
    seq: int
    request_id: str
    ids: ErasureSet


class ErasureBoard:
    """The erasures in progress (see the module docstring)."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        ensure_tables(engine)

    def publish(self, request_id: str, ids: Sequence[str]) -> int:
        """Add (or find) the erasure of a request; return its sequence number."""
        with self.engine.begin() as conn:
            found = conn.execute(sa.select(ERASURES.c.seq).where(ERASURES.c.request_id == request_id)).scalar()
            if found is not None:
                conn.execute(sa.update(ERASURES).where(ERASURES.c.seq == found).values(ids=json.dumps(list(ids))))
                return int(found)
            result = conn.execute(
                sa.insert(ERASURES).values(
                    request_id=request_id, ids=json.dumps(list(ids)), ready=False, created_ms=int(time.time() * 1000)
                )
            )
            return int(result.inserted_primary_key[0])  # type: ignore[index]

    def mark_ready(self, seq: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.update(ERASURES).where(ERASURES.c.seq == seq).values(ready=True))

    def ready_after(self, seq: int) -> list[Erasure]:
        """Erasures to apply after `seq`, oldest first, up to the first one not ready yet: a component that
        remembers the last sequence number it applied then never skips one that became ready later."""
        query = (
            sa.select(ERASURES.c.seq, ERASURES.c.request_id, ERASURES.c.ids, ERASURES.c.ready)
            .where(ERASURES.c.seq > seq)
            .order_by(ERASURES.c.seq)
        )
        out = []
        with self.engine.connect() as conn:
            for number, request_id, ids, ready in conn.execute(query):
                if not ready:
                    break
                out.append(Erasure(int(number), str(request_id), ErasureSet.of(json.loads(ids))))
        return out

    def ack(self, seq: int, consumer: str, detail: str = "") -> None:
        """Record that `consumer` has applied erasure `seq` (idempotent)."""
        now = int(time.time() * 1000)
        with self.engine.begin() as conn:
            conn.execute(sa.delete(ACKS).where(ACKS.c.seq == seq, ACKS.c.consumer == consumer))
            conn.execute(sa.insert(ACKS).values(seq=seq, consumer=consumer, acked_ms=now, detail=detail))

    def acks(self, seq: int) -> dict[str, str]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(ACKS.c.consumer, ACKS.c.detail).where(ACKS.c.seq == seq))
            return {str(c): str(d) for c, d in rows}

    def close(self, seq: int) -> None:
        """The request is done (or failed): forget its ids (the board keeps only that it happened); it counts
        as ready, so it never holds back the erasures after it."""
        with self.engine.begin() as conn:
            conn.execute(sa.update(ERASURES).where(ERASURES.c.seq == seq).values(ids="[]", ready=True))

    def last_seq(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.max(ERASURES.c.seq))).scalar() or 0)


SUPPRESSED = sa.Table(
    "headwater_suppressed_ids",
    _METADATA,
    sa.Column("id_hash", sa.String(64), primary_key=True),
    sa.Column("until_ms", sa.BigInteger, nullable=False),
)


class Suppressor:
    """The ids whose events are dropped at the collector (deleted people, for a period), as salted hashes.

    The list is re-read from the catalog database at most every `refresh_s`; while it is empty (the usual
    case) checking an event costs one comparison. The database is first touched on the first check, and a
    database that is away keeps the last list (the collector never fails because of it)."""

    def __init__(self, engine: sa.Engine, salt: str | None = None, refresh_s: float = 5.0) -> None:
        self.engine = engine
        self.configured_salt = salt
        self.refresh_s = refresh_s
        self._salt: str | None = None
        self._hashes: frozenset[str] = frozenset()
        self._loaded = -refresh_s

    @property
    def salt(self) -> str:
        if self._salt is None:
            ensure_tables(self.engine)
            self._salt = deployment_salt(self.engine, self.configured_salt)
        return self._salt

    def add(self, ids: Iterable[str], days: float) -> int:
        """Suppress `ids` for `days` from now (keeping a longer period already there); return how many."""
        until = int((time.time() + days * 86_400) * 1000)
        salt = self.salt
        hashes = sorted({hash_id(i, salt) for i in ids})
        with self.engine.begin() as conn:
            existing: dict[str, int] = {}
            for start in range(0, len(hashes), 500):
                chunk = hashes[start : start + 500]
                query = sa.select(SUPPRESSED.c.id_hash, SUPPRESSED.c.until_ms).where(SUPPRESSED.c.id_hash.in_(chunk))
                existing.update({str(h): int(u) for h, u in conn.execute(query)})
                conn.execute(sa.delete(SUPPRESSED).where(SUPPRESSED.c.id_hash.in_(chunk)))
            if hashes:
                rows = [{"id_hash": h, "until_ms": max(until, existing.get(h, 0))} for h in hashes]
                conn.execute(sa.insert(SUPPRESSED), rows)
        self._loaded = -self.refresh_s
        return len(hashes)

    def active(self) -> bool:
        """Whether any id is suppressed now (re-read at most every refresh_s)."""
        now = time.monotonic()
        if now - self._loaded >= self.refresh_s:
            self._loaded = now
            try:
                salt = self.salt
                with self.engine.connect() as conn:
                    query = sa.select(SUPPRESSED.c.id_hash).where(SUPPRESSED.c.until_ms > int(time.time() * 1000))
                    hashes = frozenset(str(h) for (h,) in conn.execute(query))
                self._hashes = hashes if salt else frozenset()
            except sa.exc.SQLAlchemyError:
                pass  # the catalog database is away: keep the last list
        return bool(self._hashes)

    def blocked(self, *ids: object) -> bool:
        """Whether any of `ids` is suppressed (numbers as the event model stores them: `12345` is "12345").
        Call `active()` first per batch."""
        hashes = self._hashes
        if not hashes or self._salt is None:
            return False
        salt = self._salt
        for value in ids:
            if isinstance(value, int | float) and not isinstance(value, bool):
                value = str(value)
            if isinstance(value, str) and value and hash_id(value, salt) in hashes:
                return True
        return False

    def purge(self) -> int:
        """Forget suppressions whose period ended."""
        with self.engine.begin() as conn:
            ended = SUPPRESSED.c.until_ms <= int(time.time() * 1000)
            return conn.execute(sa.delete(SUPPRESSED).where(ended)).rowcount or 0
