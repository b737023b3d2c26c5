"""Quarantine replay: quarantined events sent through the pipeline again, once the plan or the sender is fixed.

`replay(settings, reason=..., since=...)` reads the `quarantine` rows received in [since, until) whose reason
contains `reason` (and of `source`, when given), checks each raw event as the collector would, and appends the
valid ones to the event log as `{"m": {"src", "ep", "ra", "rp": "P:O"}, "e": event}`: `ra` is the original
receive time and `rp` the row's original log position, with the idempotency key `(source, "replay:P:O")`. So a
second replay of the same rows appends nothing (the embedded log drops repeated keys; on Kafka the lake writer
claims `replay:P:O`), and the writer gives an event without messageId the event_id of its original position: a
replayed event lands exactly once, with the id it would have had. It then meets the plan active now.

The idempotency key only lasts `dedupe_window_hours`, so every replayed position is also recorded for good in
`headwater_quarantine_replays` (catalog database) once its append is acknowledged; a later replay skips those
(counted as `already`). A crash between the append and that record is covered by the key.

Events the collector rejected (invalid JSON, a missing field) never met the ingest transforms (personal data,
consent): they meet them now. Events a plan quarantined were transformed before they reached the log and are
appended as they are. Quarantine keeps its rows (the history of what was refused).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from headwater.collector.parsing import ParsedBatch
from headwater.core.database import create_tables
from headwater.core.events import RAW_TRACK, InvalidEvent, check_raw_track, check_segment
from headwater.core.settings import Settings
from headwater.log.base import Producer

CHUNK = 1000  # records per append
_METADATA = sa.MetaData()
REPLAYS = sa.Table(
    "headwater_quarantine_replays",
    _METADATA,
    sa.Column("source", sa.String(255), primary_key=True),
    sa.Column("position", sa.String(64), primary_key=True),  # "P:O": the quarantined row's log position
    sa.Column("replayed_at", sa.DateTime, nullable=False),
)
PLAN_REASON = "plan "  # reasons of rows a tracking plan quarantined (headwater.plan.enforce.reason_for)
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d|w)$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
Transform = Callable[[ParsedBatch, str], int]


def parse_when(value: str, now: datetime | None = None) -> datetime:
    """A UTC time from ISO 8601 (UTC unless an offset is given), epoch ms, or an age (`90m`, `2h`, `7d`)."""
    text = value.strip()
    found = _RELATIVE.match(text)
    if found is not None:
        return (now or datetime.now(UTC)) - timedelta(seconds=float(found.group(1)) * _UNITS[found.group(2)])
    if text.isdigit():
        return datetime.fromtimestamp(int(text) / 1000, UTC)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{value!r} is not a time: give ISO 8601 (2026-05-01T12:00:00Z), epoch ms or an age (2h, 7d)"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


@dataclass
class ReplayResult:
    """What a replay did (counts of quarantined rows)."""

    matched: int = 0  # rows of the time range, reason and source
    replayed: int = 0  # appended to the log now
    already: int = 0  # appended by an earlier replay (or twice in these rows): nothing appended
    invalid: int = 0  # still refused by the collector's checks; left in quarantine
    dropped: int = 0  # dropped by the ingest transforms (no consent)
    dry_run: bool = False
    problems: dict[str, int] = field(default_factory=dict)  # why rows are still invalid -> how many

    def public(self) -> dict[str, Any]:
        return asdict(self)


def quarantined_rows(settings: Settings, since: datetime, until: datetime | None, reason: str,
                     source: str | None = None) -> pa.Table:  # fmt: skip
    """The quarantine rows received in [since, until) whose reason contains `reason` (oldest first)."""
    from headwater.lake.tables import open_catalog

    table = open_catalog(settings).load_table("headwater.quarantine")
    condition = f"received_at >= '{_iceberg_time(since)}'"
    if until is not None:
        condition += f" AND received_at < '{_iceberg_time(until)}'"
    rows = table.scan(row_filter=condition).to_arrow()
    keep = pc.match_substring(rows.column("reason"), reason) if reason else pa.array([True] * rows.num_rows)
    if source is not None:
        keep = pc.and_(keep, pc.equal(rows.column("source"), source))
    rows = rows.filter(keep)
    order = pc.sort_indices(
        rows, [("received_at", "ascending"), ("log_partition", "ascending"), ("log_offset", "ascending")]
    )
    return rows.take(order)


def _iceberg_time(moment: datetime) -> str:
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds")


def records_of(rows: pa.Table, result: ReplayResult, transform: Transform | None = None) -> ParsedBatch:
    """Log records (with idempotency keys) of the quarantined rows the collector's checks accept now."""
    out = ParsedBatch()
    by_source: dict[str, ParsedBatch] = {}
    for row in rows.to_pylist():
        try:
            event = orjson.loads(row["raw"])
            endpoint = row["endpoint"]
            key, _ = check_raw_track(event) if endpoint == RAW_TRACK else check_segment(
                event, None if endpoint == "batch" else endpoint)  # fmt: skip
        except (orjson.JSONDecodeError, InvalidEvent) as exc:
            problem = f"invalid JSON: {exc}" if isinstance(exc, orjson.JSONDecodeError) else str(exc)
            result.invalid += 1
            result.problems[problem[:200]] = result.problems.get(problem[:200], 0) + 1
            continue
        position = f"{row['log_partition']}:{row['log_offset']}"
        received_ms = int(row["received_at"].replace(tzinfo=UTC).timestamp() * 1000)
        meta = {"src": row["source"], "ep": endpoint, "ra": received_ms, "rp": position}
        target = out if transform is None or row["reason"].startswith(PLAN_REASON) else by_source.setdefault(
            row["source"], ParsedBatch())  # fmt: skip
        target.records.append((key.encode(), orjson.dumps({"m": meta, "e": event})))
        target.idempotency.append((row["source"], f"replay:{position}"))
    for source, parsed in by_source.items():
        assert transform is not None
        result.dropped += transform(parsed, source)
        out.records += parsed.records
        out.idempotency += parsed.idempotency
    return out


def replay(
    settings: Settings,
    reason: str,
    since: datetime,
    until: datetime | None = None,
    source: str | None = None,
    **options: Any,
) -> ReplayResult:
    """Replay the matching quarantined events (see the module docstring; options: those of replay_rows)."""
    return replay_rows(settings, quarantined_rows(settings, since, until, reason, source), **options)


def replay_rows(
    settings: Settings,
    rows: pa.Table,
    *,
    dry_run: bool = False,
    transform: Transform | None = None,
    producer: Producer | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ReplayResult:
    """Append quarantined `rows` to the log (through `producer`, else one opened here); `progress(done, total)`."""
    result = ReplayResult(matched=rows.num_rows, dry_run=dry_run)
    from headwater.lake.coordination import open_engine

    engine = open_engine(settings.effective_catalog_uri)
    create_tables(engine, _METADATA)
    done = _replayed(engine, rows)
    if done:
        keep = [(s, f"{p}:{o}") not in done for s, p, o in zip(
            rows.column("source").to_pylist(), rows.column("log_partition").to_pylist(),
            rows.column("log_offset").to_pylist(), strict=True)]  # fmt: skip
        result.already += keep.count(False)
        rows = rows.filter(pa.array(keep))
    parsed = records_of(rows, result, None if dry_run else transform)
    total = len(parsed.records)
    if progress is not None:
        progress(0, total)
    if dry_run or not total:
        return result
    own = producer is None
    if producer is None:
        from headwater.log import open_log

        producer = open_log(settings).producer()
    try:
        for start in range(0, total, CHUNK):
            chunk = slice(start, start + CHUNK)
            written = producer.append(parsed.records[chunk], parsed.idempotency[chunk]).result()
            _record(engine, [key for key in parsed.idempotency[chunk] if key is not None])
            duplicates = len(written.duplicates)
            result.already += duplicates
            result.replayed += len(parsed.records[chunk]) - duplicates
            if progress is not None:
                progress(min(start + CHUNK, total), total)
    finally:
        if own:
            producer.close()
    return result


def _replayed(engine: sa.Engine, rows: pa.Table) -> set[tuple[str, str]]:
    """The (source, position) of `rows` replayed before."""
    if rows.num_rows == 0:
        return set()
    positions = sorted({f"{p}:{o}" for p, o in zip(
        rows.column("log_partition").to_pylist(), rows.column("log_offset").to_pylist(), strict=True)})  # fmt: skip
    found: set[tuple[str, str]] = set()
    with engine.connect() as conn:
        for start in range(0, len(positions), 500):
            query = sa.select(REPLAYS.c.source, REPLAYS.c.position).where(
                REPLAYS.c.position.in_(positions[start : start + 500])
            )
            found.update((str(s), str(p)) for s, p in conn.execute(query))
    return found


def _record(engine: sa.Engine, keys: list[tuple[str, str]]) -> None:
    """Record appended replays for good (keys: (source, "replay:P:O"))."""
    if not keys:
        return
    now = datetime.now(UTC).replace(tzinfo=None)
    values = [{"source": s, "position": k.removeprefix("replay:"), "replayed_at": now} for s, k in keys]
    with engine.begin() as conn:
        module: Any = postgresql if conn.dialect.name == "postgresql" else sqlite
        conn.execute(module.insert(REPLAYS).values(values).on_conflict_do_nothing())
