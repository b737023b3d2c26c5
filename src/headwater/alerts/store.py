"""Alert state in the catalog database (shared by a cluster; works on SQLite and PostgreSQL).

- `headwater_alerts`: one row per alert instance (rule + labels) that is pending or firing now.
- `headwater_alert_history`: every firing and resolved transition, with its delivery outcome per webhook
  (`delivery`: pending → delivered | failed | silenced | none). Rows are written before anything is sent, so a
  crash between the two re-sends (at least once; receivers de-duplicate by `id`) and never forgets.
- `headwater_alert_silences`: matchers (rule and labels) with a time range; a silenced alert changes state and
  is recorded, but is not sent.
- `headwater_alert_rules`: the rules the evaluator ran last (definitions, last outcome), for the API and page.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
import sqlalchemy as sa

METADATA = sa.MetaData()
ALERTS = sa.Table(
    "headwater_alerts", METADATA,
    sa.Column("rule", sa.String(128), primary_key=True),
    sa.Column("fingerprint", sa.String(40), primary_key=True),
    sa.Column("labels", sa.Text, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # pending | firing
    sa.Column("severity", sa.String(16), nullable=False),
    sa.Column("summary", sa.Text, nullable=False),
    sa.Column("value", sa.Float),
    sa.Column("active_since", sa.Float, nullable=False),  # the condition became true
    sa.Column("fired_at", sa.Float),
    sa.Column("updated_at", sa.Float, nullable=False),
)  # fmt: skip
HISTORY = sa.Table(
    "headwater_alert_history", METADATA,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.Float, nullable=False, index=True),
    sa.Column("rule", sa.String(128), nullable=False),
    sa.Column("fingerprint", sa.String(40), nullable=False),
    sa.Column("labels", sa.Text, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # firing | resolved
    sa.Column("severity", sa.String(16), nullable=False),
    sa.Column("summary", sa.Text, nullable=False),
    sa.Column("value", sa.Float),
    sa.Column("since", sa.Float, nullable=False),
    sa.Column("silenced", sa.Boolean, nullable=False, default=False),
    sa.Column("delivery", sa.String(16), nullable=False, index=True),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("deliveries", sa.Text, nullable=False, default="{}"),  # {url: {"ok", "status", "error", "at"}}
    sa.Column("targets", sa.Text, nullable=False, default="[]"),  # webhook URLs this notification goes to
    sa.Column("dashboard_url", sa.Text, nullable=False, default=""),
    sa.Column("delivered_at", sa.Float),
)  # fmt: skip
SILENCES = sa.Table(
    "headwater_alert_silences", METADATA,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("rule", sa.String(128), nullable=False),  # a rule name, or * for every rule
    sa.Column("labels", sa.Text, nullable=False, default="{}"),  # label values an alert must have
    sa.Column("starts_at", sa.Float, nullable=False),
    sa.Column("ends_at", sa.Float, nullable=False),
    sa.Column("comment", sa.Text, nullable=False, default=""),
    sa.Column("created_by", sa.String(200), nullable=False, default=""),
    sa.Column("created_at", sa.Float, nullable=False),
)  # fmt: skip
RULES = sa.Table(
    "headwater_alert_rules", METADATA,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("kind", sa.String(32), nullable=False),  # builtin | metric | a condition source's own kind
    sa.Column("definition", sa.Text, nullable=False),
    sa.Column("evaluated_at", sa.Float),
    sa.Column("error", sa.Text),
)  # fmt: skip


def create(engine: sa.Engine) -> None:
    """Create the alert tables when missing (safe when several processes start at once)."""
    from headwater.core.database import create_tables

    create_tables(engine, METADATA)


def fingerprint(labels: dict[str, str]) -> str:
    """A stable id of a label set (one alert instance of a rule per label set)."""
    return hashlib.sha1(orjson.dumps(labels, option=orjson.OPT_SORT_KEYS)).hexdigest()


def silence_matches(silence: dict[str, Any], rule: str, labels: dict[str, str], now: float) -> bool:
    if not silence["starts_at"] <= now < silence["ends_at"]:
        return False
    if silence["rule"] not in ("*", rule):
        return False
    wanted: dict[str, str] = silence["labels"]
    return all(labels.get(k) == v for k, v in wanted.items())


def _plain(row: Any) -> dict[str, Any]:
    """A row as a dict with plain `str` keys (SQLAlchemy's quoted names are a subclass orjson refuses)."""
    return {str(k): v for k, v in row._mapping.items()}


def _alert_row(row: Any) -> dict[str, Any]:
    doc = _plain(row)
    doc["labels"] = orjson.loads(doc["labels"])
    return doc


def _history_row(row: Any) -> dict[str, Any]:
    doc = _plain(row)
    for key in ("labels", "deliveries", "targets"):
        doc[key] = orjson.loads(doc[key])
    doc["silenced"] = bool(doc["silenced"])
    return doc


def _silence_row(row: Any) -> dict[str, Any]:
    doc = _plain(row)
    doc["labels"] = orjson.loads(doc["labels"])
    return doc


class AlertStore:
    """Reads and writes of the alert tables (the evaluator writes state; the API reads it and edits silences)."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        create(engine)

    # --- current state
    def current(self) -> list[dict[str, Any]]:
        """Pending and firing alerts, firing first, then by rule."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(ALERTS).order_by(ALERTS.c.rule, ALERTS.c.fingerprint)).fetchall()
        alerts = [_alert_row(r) for r in rows]
        return sorted(alerts, key=lambda a: (a["state"] != "firing", a["rule"]))

    # --- history
    def history(self, limit: int = 100, rule: str | None = None) -> list[dict[str, Any]]:
        query = sa.select(HISTORY).order_by(HISTORY.c.id.desc()).limit(limit)
        if rule:
            query = query.where(HISTORY.c.rule == rule)
        with self.engine.connect() as conn:
            return [_history_row(r) for r in conn.execute(query).fetchall()]

    def undelivered(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(HISTORY).where(HISTORY.c.delivery == "pending").order_by(HISTORY.c.id)
            ).fetchall()
        return [_history_row(r) for r in rows]

    def record_delivery(
        self, entry_id: int, delivery: str, attempts: int, deliveries: dict[str, Any], delivered_at: float | None
    ) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(HISTORY).where(HISTORY.c.id == entry_id).values(
                    delivery=delivery, attempts=attempts, deliveries=orjson.dumps(deliveries).decode(),
                    delivered_at=delivered_at,
                )
            )  # fmt: skip

    def prune(self, before: float) -> int:
        """Forget history entries (delivered or given up) and silences that ended before `before`."""
        with self.engine.begin() as conn:
            gone = conn.execute(
                sa.delete(HISTORY).where(HISTORY.c.at < before).where(HISTORY.c.delivery != "pending")
            ).rowcount
            gone += conn.execute(sa.delete(SILENCES).where(SILENCES.c.ends_at < before)).rowcount
        return int(gone)

    # --- silences
    def silences(self, now: float, include_expired: bool = False) -> list[dict[str, Any]]:
        query = sa.select(SILENCES).order_by(SILENCES.c.id.desc())
        if not include_expired:
            query = query.where(SILENCES.c.ends_at > now)
        with self.engine.connect() as conn:
            return [_silence_row(r) for r in conn.execute(query).fetchall()]

    def add_silence(
        self, rule: str, labels: dict[str, str], starts_at: float, ends_at: float, comment: str, created_by: str,
        now: float,
    ) -> dict[str, Any]:  # fmt: skip
        values = {
            "rule": rule, "labels": orjson.dumps(labels, option=orjson.OPT_SORT_KEYS).decode(),
            "starts_at": starts_at, "ends_at": ends_at, "comment": comment, "created_by": created_by,
            "created_at": now,
        }  # fmt: skip
        with self.engine.begin() as conn:
            new_id = conn.execute(sa.insert(SILENCES).values(**values)).inserted_primary_key[0]  # type: ignore[index]
        return {"id": int(new_id), **values, "labels": labels}

    def delete_silence(self, silence_id: int) -> bool:
        with self.engine.begin() as conn:
            return bool(conn.execute(sa.delete(SILENCES).where(SILENCES.c.id == silence_id)).rowcount)

    # --- rules
    def rules(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(RULES).order_by(RULES.c.kind, RULES.c.name)).fetchall()
        out = []
        for row in rows:
            doc = _plain(row)
            doc["definition"] = orjson.loads(doc["definition"])
            out.append(doc)
        return out
