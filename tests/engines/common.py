"""What the engine tests share: a known set of events with its ground truth, the questions asked of every
engine, Headwater's own answers, and the two deployments (embedded; Kafka + PostgreSQL + S3)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy

from tests.helpers import RunningHeadwater, child_env, make_keys


@dataclass(frozen=True)
class Sent:
    """One event of the known set, with its ground truth."""

    message_id: str
    user_id: str | None
    event: str
    time: str | int  # as sent
    utc: datetime  # as it must be stored: UTC, no zone, microseconds kept
    properties: dict[str, Any]

    def line(self) -> str:
        item: dict[str, Any] = {"event": self.event, "messageId": self.message_id, "timestamp": self.time}
        if self.user_id is None:
            item["anonymousId"] = f"anon-{self.message_id}"
        else:
            item["userId"] = self.user_id
        return orjson.dumps(item | self.properties).decode()


CART = {"cart": {"items": [{"sku": "A-1", "title": "Crème brûlée 🍮", "qty": 2}, {"sku": "B-2", "qty": 1}]}}
SENT = [
    Sent("m01", "ana", "signup", "2026-01-13T08:15:30.123456Z", datetime(2026, 1, 13, 8, 15, 30, 123456), {
        "plan": "free",
        "referrer": {"site": "news.example", "campaign": {"name": "winter", "tags": ["a", "ß"]}},
    }),
    Sent("m02", "ana", "view", "2026-01-13 23:59:59.999999", datetime(2026, 1, 13, 23, 59, 59, 999999), {
        "page": "/pricing"
    }),
    Sent("m03", "björn", "signup", "2026-01-14T00:00:00+00:00", datetime(2026, 1, 14, 0, 0, 0), {"plan": "pro"}),
    # an offset east of UTC: the local date is the 15th, the UTC date the 14th
    Sent("m04", "björn", "purchase", "2026-01-15T02:00:00.5+05:30", datetime(2026, 1, 14, 20, 30, 0, 500000), CART),
    Sent("m05", "李雷", "view", 1768471260123, datetime(2026, 1, 15, 10, 1, 0, 123000), {"page": "/首页", "n": 3}),
    Sent("m06", "李雷", "purchase", "2026-01-15T10:05:00.000001Z", datetime(2026, 1, 15, 10, 5, 0, 1), {
        "total": 12.5,
        "coupon": None,
        "emoji": "🚀",
    }),
    Sent("m07", None, "view", "2026-01-16T09:00:00Z", datetime(2026, 1, 16, 9, 0, 0), {"page": "/"}),
    Sent("m08", "ana", "logout", "2026-01-16T18:30:45.654321Z", datetime(2026, 1, 16, 18, 30, 45, 654321), {}),
]  # fmt: skip
INVALID = '{"event": "signup", "userId": "eve", "timestamp": "next tuesday"}'  # quarantined
INVALID_LINE = 5  # sent between the 4th and 5th events
PROBE_ID = "m04"  # the event whose timestamp and JSON property are compared one by one
PROBE_PATH = "$.cart.items[0].title"


def ground_truth() -> dict[str, Any]:
    """The answers every engine must give: computed from SENT, not from any engine."""
    days = Counter(sent.utc.strftime("%Y-%m-%d") for sent in SENT)
    return {
        "count": len(SENT),
        "days": [[day, n] for day, n in sorted(days.items())],
        "users": len({sent.user_id for sent in SENT if sent.user_id is not None}),
        "times": [[sent.message_id, sent.utc.strftime("%Y-%m-%d %H:%M:%S.%f")] for sent in SENT],
        "probe_time": "2026-01-14 20:30:00.500000",
        "probe_title": "Crème brûlée 🍮",
        "quarantine": 1,
    }


def headwater_answers(running: RunningHeadwater) -> dict[str, Any]:
    """The same questions through Headwater's own SQL API (DuckDB)."""
    us = "'%Y-%m-%d %H:%M:%S.%f'"
    probe = f"FROM events WHERE event_id = '{PROBE_ID}'"
    return {
        "count": running.sql("SELECT count(*) FROM events")[0][0],
        "days": running.sql("SELECT strftime(timestamp, '%Y-%m-%d') AS d, count(*) FROM events GROUP BY d ORDER BY d"),
        "users": running.sql("SELECT count(DISTINCT user_id) FROM events")[0][0],
        "times": running.sql(f"SELECT event_id, strftime(timestamp, {us}) FROM events ORDER BY event_id"),
        "probe_time": running.sql(f"SELECT strftime(timestamp, {us}) {probe}")[0][0],
        "probe_title": running.sql(f"SELECT properties->>'{PROBE_PATH}' {probe}")[0][0],
        "quarantine": running.sql("SELECT count(*) FROM quarantine")[0][0],
    }


@dataclass
class Deployment:
    """Where Headwater writes its lake; each engine derives its own catalog configuration from it."""

    kind: str  # "embedded" or "cluster"
    data_dir: Path
    settings: dict[str, str] = field(default_factory=dict)  # HEADWATER_* settings (cluster: from cluster_settings)

    @property
    def catalog_uri(self) -> str:
        """SQLAlchemy URI of the Iceberg SQL catalog (what pyiceberg uses)."""
        return self.settings.get("catalog_uri") or f"sqlite:///{self.data_dir}/catalog.db"

    @property
    def warehouse(self) -> str:
        return self.settings.get("warehouse") or f"file://{self.data_dir}/warehouse"

    def jdbc(self) -> tuple[str, str | None, str | None]:
        """The catalog as a JDBC URL, user and password."""
        url = sqlalchemy.engine.make_url(self.catalog_uri)
        if url.get_backend_name() == "sqlite":
            return f"jdbc:sqlite:{url.database}", None, None
        assert url.get_backend_name() == "postgresql", self.catalog_uri
        password = None if url.password is None else str(url.password)
        return f"jdbc:postgresql://{url.host}:{url.port or 5432}/{url.database}", url.username, password

    def catalog_columns(self) -> dict[str, list[str]]:
        """Columns of every table in the catalog database (to check that an engine changed nothing)."""
        engine = sqlalchemy.create_engine(self.catalog_uri)
        try:
            inspector = sqlalchemy.inspect(engine)
            return {name: [c["name"] for c in inspector.get_columns(name)] for name in inspector.get_table_names()}
        finally:
            engine.dispose()


def fill_lake(deployment: Deployment) -> dict[str, Any]:
    """Start `headwater up`, send the known events plus one invalid line, take Headwater's answers once the
    SQL API sees everything, and stop it gracefully (so nothing writes while another engine reads)."""
    app_db = deployment.settings.get("app_db_uri")  # keys live there when the deployment shares an account store
    keys = make_keys(deployment.data_dir, app_db) if app_db else make_keys(deployment.data_dir)
    env = child_env(deployment.data_dir, flush_interval_ms=200, **deployment.settings)
    running = RunningHeadwater(deployment.data_dir, env, keys=keys).start()
    try:
        lines = [sent.line() for sent in SENT]
        lines.insert(INVALID_LINE - 1, INVALID)
        response = running.post("/track", "\n".join(lines) + "\n", keys["write"])
        assert response.status_code == 200, response.text
        answer = response.json()
        assert (answer["accepted"], answer["quarantined"]) == (len(SENT), 1), answer
        rejected = answer["rejected"][0]
        assert rejected["line"] == INVALID_LINE and "timestamp" in rejected["error"], answer
        running.wait_rows("SELECT count(*) FROM events", [[len(SENT)]])
        running.wait_rows("SELECT count(*) FROM quarantine", [[1]])
        answers = headwater_answers(running)
    finally:
        code = running.stop()
    assert code == 0, running.log_text()  # graceful: the writer committed and stopped
    return answers
