"""Deletion requests: stored in the catalog database, claimed and advanced by the privacy worker.

A request keeps the ids it names (and the ids found to belong to the same people) only until it completes;
then they are replaced by their salted hashes (`headwater.core.erasure.hash_id`), which is all Headwater keeps
of a deleted person. `progress` records each finished step, so a worker killed at any point resumes where
the request stood (every step is idempotent).
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from headwater.core.database import create_tables
from headwater.core.erasure import hash_id

_METADATA = sa.MetaData()
DELETIONS = sa.Table(
    "headwater_deletions",
    _METADATA,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("state", sa.String(16), nullable=False, index=True),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
    sa.Column("updated_ms", sa.BigInteger, nullable=False),
    sa.Column("completed_ms", sa.BigInteger, nullable=True),
    sa.Column("requested_by", sa.String(255), nullable=False),
    sa.Column("address", sa.String(255), nullable=False, default=""),
    sa.Column("user_ids", sa.Text, nullable=False),  # JSON list; "[]" once completed
    sa.Column("anonymous_ids", sa.Text, nullable=False),
    sa.Column("ids_hashed", sa.Text, nullable=False, default="[]"),
    sa.Column("id_count", sa.Integer, nullable=False),
    sa.Column("suppress_days", sa.Float, nullable=False, default=0.0),
    sa.Column("progress", sa.Text, nullable=False, default="{}"),  # finished steps and their results
    sa.Column("error", sa.Text, nullable=False, default=""),
    sa.Column("holder", sa.String(255), nullable=False, default=""),
    sa.Column("heartbeat_ms", sa.BigInteger, nullable=False, default=0),
    sa.Column("due_ms", sa.BigInteger, nullable=False, default=0),  # when an expiring request may finish
)
PENDING, RUNNING, EXPIRING, COMPLETED, FAILED = "pending", "running", "expiring", "completed", "failed"
MAX_IDS = 10_000
STALE_MS = 60_000  # a running request whose worker has not been heard of for this long is taken over


@dataclass
class Deletion:
    id: str
    state: str
    created_ms: int
    updated_ms: int
    completed_ms: int | None
    requested_by: str
    address: str
    user_ids: list[str]
    anonymous_ids: list[str]
    ids_hashed: list[str]
    id_count: int
    suppress_days: float
    progress: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    due_ms: int = 0

    def public(self) -> dict[str, Any]:
        """What the API shows: state, counts and timings, never the ids."""
        tables = self.progress.get("tables", {})
        verified = self.progress.get("verify", {})
        rows = {
            name: s.get("rows_removed", 0) + verified.get(name, {}).get("rows_removed", 0) for name, s in tables.items()
        }
        return {
            "id": self.id,
            "state": self.state,
            "step": self.progress.get("step", ""),
            "created_at": _iso(self.created_ms),
            "completed_at": _iso(self.completed_ms) if self.completed_ms else None,
            "duration_s": round((self.completed_ms - self.created_ms) / 1000, 3) if self.completed_ms else None,
            "requested_by": self.requested_by,
            "ids_requested": self.id_count,
            "ids_deleted": len(self.progress.get("expand", {}).get("all", [])) or self.progress.get("ids_total", 0),
            "rows_removed": rows,
            "tables": tables,
            "log": self.progress.get("log", {}),
            "processors": self.progress.get("processors", {}),
            "persons_removed": self.progress.get("persons", {}).get("removed", 0),
            "files_deleted": self.progress.get("expire", {}).get("files_deleted", 0),
            "suppressed_days": self.suppress_days,
            "expires_at": _iso(self.due_ms) if self.state == EXPIRING else None,
            "notes": self.progress.get("notes", []),
            "error": self.error or None,
        }


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z")


def _now() -> int:
    return int(time.time() * 1000)


def validate_ids(doc: Any) -> tuple[list[str], list[str]]:
    """`user_ids` and `anonymous_ids` of a request body; ValueError naming the field otherwise."""
    if not isinstance(doc, dict):
        raise ValueError("body: expected a JSON object with user_ids and/or anonymous_ids")
    unknown = sorted(set(doc) - {"user_ids", "anonymous_ids", "suppress_days"})
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown field (expected user_ids, anonymous_ids, suppress_days)")
    out: list[list[str]] = []
    for name in ("user_ids", "anonymous_ids"):
        value = doc.get(name, [])
        if not isinstance(value, list):
            raise ValueError(f"{name}: expected a list of strings")
        for index, item in enumerate(value):
            if not isinstance(item, str) or not item.strip():
                raise ValueError(f"{name}[{index}]: expected a non-empty string")
            if len(item) > 255:
                raise ValueError(f"{name}[{index}]: longer than 255 characters")
        out.append(sorted(set(value)))
    total = len(out[0]) + len(out[1])
    if total == 0:
        raise ValueError("user_ids: give at least one id in user_ids or anonymous_ids")
    if total > MAX_IDS:
        raise ValueError(f"user_ids: at most {MAX_IDS} ids per request ({total} given); split the request")
    return out[0], out[1]


MAX_SUPPRESS_DAYS = 36_500


def check_days(value: Any) -> float:
    """A suppression period in days: a finite number from 0 to MAX_SUPPRESS_DAYS; ValueError naming the field."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= MAX_SUPPRESS_DAYS:
        raise ValueError(f"suppress_days: expected a number of days from 0 to {MAX_SUPPRESS_DAYS}")
    return float(value)


class DeletionStore:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        create_tables(engine, _METADATA)

    def in_progress(self) -> bool:
        """Whether a deletion is pending, running or expiring (table maintenance waits: a compaction replacing
        the files a deletion rewrites makes its commits conflict until it gives up)."""
        now = int(time.time() * 1000)
        due = sa.and_(DELETIONS.c.state == PENDING, DELETIONS.c.due_ms <= now)
        with self.engine.connect() as conn:
            found = conn.execute(
                sa.select(DELETIONS.c.id).where(sa.or_(DELETIONS.c.state.in_((RUNNING, EXPIRING)), due)).limit(1)
            ).first()
        return found is not None

    def create(
        self, user_ids: list[str], anonymous_ids: list[str], requested_by: str, address: str = "",
        suppress_days: float = 0.0,
    ) -> Deletion:  # fmt: skip
        now = _now()
        request_id = uuid.uuid4().hex[:16]
        row: dict[str, Any] = {
            "id": request_id, "state": PENDING, "created_ms": now, "updated_ms": now, "completed_ms": None,
            "requested_by": requested_by, "address": address, "user_ids": json.dumps(user_ids),
            "anonymous_ids": json.dumps(anonymous_ids), "ids_hashed": "[]",
            "id_count": len(set(user_ids) | set(anonymous_ids)), "suppress_days": suppress_days, "progress": "{}",
            "error": "", "holder": "", "heartbeat_ms": 0, "due_ms": 0,
        }  # fmt: skip
        with self.engine.begin() as conn:
            conn.execute(sa.insert(DELETIONS).values(**row))
        found = self.get(request_id)
        assert found is not None
        return found

    def get(self, request_id: str) -> Deletion | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(DELETIONS).where(DELETIONS.c.id == request_id)).mappings().first()
        return _deletion(row) if row else None

    def list(self, limit: int = 100) -> list[Deletion]:
        query = sa.select(DELETIONS).order_by(DELETIONS.c.created_ms.desc()).limit(limit)
        with self.engine.connect() as conn:
            return [_deletion(r) for r in conn.execute(query).mappings()]

    def claim(self, holder: str) -> Deletion | None:
        """The next request this worker should advance (oldest first): pending, expiring and due, or running
        under a worker not heard of for STALE_MS (killed); marked as held by `holder`."""
        now = _now()
        due = sa.or_(
            sa.and_(DELETIONS.c.state == PENDING, DELETIONS.c.due_ms <= now),
            sa.and_(DELETIONS.c.state == EXPIRING, DELETIONS.c.due_ms <= now),
            DELETIONS.c.state == RUNNING,
        )
        with self.engine.begin() as conn:
            rows = conn.execute(
                sa.select(DELETIONS.c.id, DELETIONS.c.updated_ms, DELETIONS.c.state, DELETIONS.c.holder,
                          DELETIONS.c.heartbeat_ms).where(due).order_by(DELETIONS.c.created_ms).limit(20)
            ).all()  # fmt: skip
            candidates = [
                (request_id, updated)
                for request_id, updated, state, owner, heartbeat in rows
                if state != RUNNING or owner == holder or heartbeat < now - STALE_MS or _dead_here(owner)
            ]
            for request_id, updated in candidates:
                taken = conn.execute(
                    sa.update(DELETIONS)
                    .where(DELETIONS.c.id == request_id, DELETIONS.c.updated_ms == updated)
                    .values(
                        state=RUNNING, holder=holder, heartbeat_ms=now, updated_ms=now + 1 if now == updated else now
                    )
                ).rowcount
                if taken:
                    break
            else:
                return None
        return self.get(str(request_id))

    def save(self, request: Deletion, state: str | None = None, **values: Any) -> None:
        """Store progress (and heartbeat); `state` moves the request on."""
        now = _now()
        fields: dict[str, Any] = {"progress": json.dumps(request.progress), "heartbeat_ms": now, "updated_ms": now}
        if state is not None:
            fields["state"] = request.state = state
        fields.update(values)
        with self.engine.begin() as conn:
            conn.execute(sa.update(DELETIONS).where(DELETIONS.c.id == request.id).values(**fields))

    def complete(self, request: Deletion, salt: str) -> None:
        """Completed: the ids are replaced by their salted hashes, everywhere in the request's record."""
        every = sorted(
            set(request.user_ids) | set(request.anonymous_ids) | set(request.progress.get("expand", {}).get("all", []))
        )
        hashed = sorted(hash_id(i, salt) for i in every)
        request.progress.pop("expand", None)
        request.progress["ids_total"] = len(every)
        request.completed_ms = _now()
        self.save(
            request, COMPLETED, completed_ms=request.completed_ms, user_ids="[]", anonymous_ids="[]",
            ids_hashed=json.dumps(hashed), holder="",
        )  # fmt: skip
        request.user_ids, request.anonymous_ids, request.ids_hashed = [], [], hashed

    def fail(self, request: Deletion, error: str, salt: str) -> None:
        """Failed for good: like a completed request it keeps only hashes of the ids (submit it again)."""
        expanded = request.progress.pop("expand", {}).get("all", [])
        every = sorted(set(request.user_ids) | set(request.anonymous_ids) | set(expanded))
        hashed = sorted(hash_id(i, salt) for i in every)
        self.save(
            request, FAILED, error=error[:2000], holder="", user_ids="[]", anonymous_ids="[]",
            ids_hashed=json.dumps(hashed),
        )  # fmt: skip
        request.user_ids, request.anonymous_ids, request.ids_hashed = [], [], hashed


def _dead_here(holder: str) -> bool:
    """Whether `holder` ("host:pid:tag") is a worker on this machine that is not running any more (killed)."""
    host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _deletion(row: Any) -> Deletion:
    return Deletion(
        id=row["id"], state=row["state"], created_ms=int(row["created_ms"]), updated_ms=int(row["updated_ms"]),
        completed_ms=row["completed_ms"], requested_by=row["requested_by"], address=row["address"],
        user_ids=json.loads(row["user_ids"]), anonymous_ids=json.loads(row["anonymous_ids"]),
        ids_hashed=json.loads(row["ids_hashed"]), id_count=int(row["id_count"]),
        suppress_days=float(row["suppress_days"]), progress=json.loads(row["progress"]), error=row["error"],
        due_ms=int(row["due_ms"]),
    )  # fmt: skip
