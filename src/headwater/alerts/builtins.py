"""The built-in alert rules, on by default; thresholds come from the `alert_*` settings, `for` from `alert_for_s`."""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
import sqlalchemy as sa

from headwater.alerts.conditions import BaseCondition, Context, Finding
from headwater.core.errors import LogError
from headwater.core.settings import Settings
from headwater.sources.status import read_status

log = logging.getLogger(__name__)
LAG_TREND_S = 60.0  # lake_lag: "not shrinking" compares with the lag this long ago
RATE_WINDOW_S = 300.0  # error_rate and dead_letters look at the last 5 minutes
ERROR_RATE_MIN_EVENTS = 50  # fewer events in the window: no error_rate alert (3 bad of 4 is no spike)
DISK_SCAN_S = 30.0  # the data directory's size is measured at most this often
KAFKA_RETENTION_CACHE_S = 3600.0
LAKE_GROUP = "lake"


def _count(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() else f"{value:,.3g}"


class LakeLag(BaseCondition):
    def evaluate(self, ctx: Context) -> list[Finding] | None:
        if not ctx.metrics.up:
            return None
        lag = ctx.metrics.value("headwater_consumer_lag", {"group": LAKE_GROUP})
        if lag is None or lag <= ctx.settings.alert_lake_lag_events:
            return []
        before = ctx.metrics.value_at("headwater_consumer_lag", ctx.now - LAG_TREND_S, {"group": LAKE_GROUP})
        if before is not None and lag < before:
            return []  # catching up
        return [Finding({}, lag, f"lake writer {_count(lag)} events behind and not catching up")]


def stale_group(settings: Settings, group: str) -> bool:
    """A processor's consumer group of an earlier run (a replay started a new one): nobody reads it any more."""
    if not group.startswith("processor."):
        return False
    _, _, rest = group.partition(".")
    name, _, run = rest.rpartition(".")
    try:
        manifest = orjson.loads((settings.processors_dir / name / "manifest.json").read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return False
    current = manifest.get("run_id") if isinstance(manifest, dict) else None
    return current is not None and str(current) != run


class ProcessorLag(BaseCondition):
    def evaluate(self, ctx: Context) -> list[Finding] | None:
        if not ctx.metrics.up:
            return None
        found = []
        for labels, lag in sorted(ctx.metrics.series("headwater_consumer_lag").items()):
            group = dict(labels).get("group", "")
            if not group.startswith("processor.") or lag <= ctx.settings.alert_lake_lag_events:
                continue
            if stale_group(ctx.settings, group):
                continue
            before = ctx.metrics.value_at("headwater_consumer_lag", ctx.now - LAG_TREND_S, {"group": group})
            if before is not None and lag < before:
                continue
            processor = group.split(".")[1]
            summary = f"processor {processor} {_count(lag)} records behind and not catching up"
            found.append(Finding({"processor": processor}, lag, summary))
        return found


def oldest_unread(ctx: Context) -> dict[str, float]:
    """Per consumer group with unread records: the log time (unix s) of its oldest unread record."""
    if "oldest_unread" in ctx.cache:
        cached: dict[str, float] = ctx.cache["oldest_unread"]
        return cached
    out: dict[str, float] = {}
    lags = ctx.metrics.series("headwater_consumer_lag")
    if ctx.metrics.up and not any(v > 0 for v in lags.values()):
        ctx.cache["oldest_unread"] = out  # nothing unread anywhere: no need to read the log
        return out
    event_log = ctx.open_log()
    admin, reader = event_log.admin(), event_log.reader()
    try:
        ends = admin.end_offsets()
        stamps: dict[tuple[int, int], float | None] = {}
        for group, committed in admin.group_offsets().items():
            if stale_group(ctx.settings, group):
                continue
            for partition, end in ends.items():
                position = committed.get(partition, 0)
                if position >= end:
                    continue
                if (partition, position) not in stamps:
                    records = reader.read(partition, position, 1)
                    stamps[(partition, position)] = records[0].timestamp_ms / 1000 if records else None
                stamp = stamps[(partition, position)]
                if stamp is not None:
                    out[group] = min(stamp, out.get(group, stamp))
    finally:
        admin.close()
        reader.close()
    ctx.cache["oldest_unread"] = out
    return out


@dataclass
class RetentionRisk(BaseCondition):
    _kafka_retention: tuple[float, float | None] | None = field(default=None, repr=False)

    def retention_s(self, settings: Settings, now: float) -> float | None:
        """The log's time retention (None: none, or unknown)."""
        if settings.log_backend != "kafka":
            return settings.log_retention_hours * 3600 or None
        if self._kafka_retention is None or now - self._kafka_retention[0] > KAFKA_RETENTION_CACHE_S:
            self._kafka_retention = (now, kafka_retention_s(settings))
        return self._kafka_retention[1]

    def evaluate(self, ctx: Context) -> list[Finding] | None:
        retention = self.retention_s(ctx.settings, ctx.now)
        if retention is None:
            return []
        limit = ctx.settings.alert_retention_fraction * retention
        found = []
        for group, stamp in sorted(oldest_unread(ctx).items()):
            age = ctx.now - stamp
            if age > limit:
                summary = (f"consumer group {group}: oldest unread record is {age / 3600:.2f} h old, "
                           f"{100 * age / retention:.0f}% of the log's {retention / 3600:g} h retention")  # fmt: skip
                found.append(Finding({"group": group}, age, summary))
        return found


def kafka_retention_s(settings: Settings) -> float | None:
    """The topic's retention.ms in seconds (None: infinite or unknown)."""
    from confluent_kafka.admin import AdminClient, ConfigResource

    conf: dict[str, str | int | float | bool] = {
        **settings.kafka_client_options,
        "bootstrap.servers": settings.kafka_bootstrap_servers,
    }
    resource = ConfigResource("topic", settings.kafka_topic)
    try:
        admin = AdminClient(conf)  # kept referenced until the answer came: a dropped client cancels its requests
        configs = admin.describe_configs([resource], request_timeout=10)[resource].result(15)
        millis = float(configs["retention.ms"].value)
    except Exception:  # unreachable brokers, or no right to describe: the rule cannot tell
        log.warning("cannot read retention.ms of Kafka topic %s", settings.kafka_topic, exc_info=True)
        return None
    return None if millis < 0 else millis / 1000


class ErrorRate(BaseCondition):
    BAD = ("headwater_events_rejected_total", "headwater_events_quarantined_by_plan_total",
           "headwater_source_rejected_total")  # fmt: skip
    ALL = ("headwater_events_accepted_total", "headwater_events_rejected_total", "headwater_source_records_total")

    def evaluate(self, ctx: Context) -> list[Finding] | None:
        window = ctx.metrics
        if not window.up or not window.has_window(RATE_WINDOW_S):
            return None
        bad = sum(sum(window.increase(m, RATE_WINDOW_S).values()) for m in self.BAD)
        total = sum(sum(window.increase(m, RATE_WINDOW_S).values()) for m in self.ALL)
        if total < ERROR_RATE_MIN_EVENTS:
            return []
        rate = bad / total
        if rate <= ctx.settings.alert_error_rate:
            return []
        return [Finding({}, rate, f"{100 * rate:.1f}% of events refused or quarantined over 5 minutes "
                                  f"({_count(bad)} of {_count(total)})")]  # fmt: skip


class DeadLetters(BaseCondition):
    SERIES = (("headwater_sink_dead_letters_total", "sink"), ("headwater_processor_errors_total", "processor"))

    def evaluate(self, ctx: Context) -> list[Finding] | None:
        window = ctx.metrics
        if not window.up or not window.has_window(RATE_WINDOW_S):
            return None
        found = []
        for metric, label in self.SERIES:
            for labels, grew in sorted(window.increase(metric, RATE_WINDOW_S).items()):
                if grew > 0:
                    who = dict(labels).get(label, "")
                    what = "records dead-lettered by sink" if label == "sink" else "records failed in processor"
                    found.append(Finding({label: who}, grew, f"{_count(grew)} {what} {who} in 5 minutes"))
        return found


@dataclass
class SourceStalled(BaseCondition):
    _progress: dict[str, tuple[Any, float]] = field(default_factory=dict, repr=False)

    def evaluate(self, ctx: Context) -> list[Finding] | None:
        found = []
        lags = {dict(k).get("source"): v for k, v in ctx.metrics.series("headwater_source_lag").items()}
        for source in ctx.settings.sources:
            status = read_status(ctx.settings, source)
            state = status.get("state")
            if not source.enabled and "updated_at" not in status:
                continue  # not run by `up` and never run by hand
            records = status.get("records_in")
            seen = self._progress.get(source.name)
            if seen is None or seen[0] != records:
                self._progress[source.name] = seen = (records, ctx.now)
            labels = {"source": source.name}
            if state == "failed":
                found.append(Finding(labels, None, f"source {source.name} failed: {status.get('last_error')}"))
                continue
            behind = (status.get("lag") or 0) > 0 or (lags.get(source.name) or 0) > 0
            behind = behind or state in ("reconnecting", "not running")
            idle = ctx.now - seen[1]
            if behind and idle >= ctx.settings.alert_source_stalled_s:
                why = status.get("last_error") or f"state {state}"
                found.append(Finding(labels, idle, f"source {source.name} read nothing for {idle:.0f} s ({why})"))
        return found


def _latest_rows(ctx: Context, table: str, key: str, order: str, columns: list[str]) -> list[dict[str, Any]]:
    """The newest row (largest `order`, an autoincrement id) per `key` of a catalog table; none when the table
    does not exist yet (no model or check ran)."""
    if not sa.inspect(ctx.catalog).has_table(table):
        return []
    t = sa.table(table, *(sa.column(c) for c in dict.fromkeys([key, order, *columns])))
    newest = sa.select(sa.func.max(t.c[order])).group_by(t.c[key]).scalar_subquery()
    query = sa.select(*(t.c[c] for c in dict.fromkeys([key, *columns]))).where(t.c[order].in_(newest))
    with ctx.catalog.connect() as conn:
        return [{str(k): v for k, v in r._mapping.items()} for r in conn.execute(query).fetchall()]


class ModelFailed(BaseCondition):
    """The latest build of a model failed (`headwater_model_runs`, written by headwater.models)."""

    def evaluate(self, ctx: Context) -> list[Finding] | None:
        found = []
        for row in sorted(_latest_rows(ctx, "headwater_model_runs", "model", "run_id", ["status", "error"]),
                          key=lambda r: str(r["model"])):  # fmt: skip
            if row["status"] == "failed":
                summary = f"model {row['model']} failed: {row['error'] or 'no error message'}"
                found.append(Finding({"model": str(row["model"])}, None, summary[:500]))
        return found


class CheckFailed(BaseCondition):
    """The latest run of a data check failed or could not run (`headwater_check_results`)."""

    def evaluate(self, ctx: Context) -> list[Finding] | None:
        columns = ["table", "kind", "severity", "status", "failing"]
        found = []
        for row in sorted(_latest_rows(ctx, "headwater_check_results", "check", "id", columns),
                          key=lambda r: str(r["check"])):  # fmt: skip
            if row["status"] in ("fail", "error"):
                what = "could not run" if row["status"] == "error" else f"found {row['failing']} failing rows"
                summary = f"check {row['check']} ({row['kind']} on {row['table']}) {what}"
                severity = "critical" if row["severity"] == "error" else "warning"
                labels = {"check": str(row["check"]), "table": str(row["table"])}
                failing = None if row["failing"] is None else float(row["failing"])
                found.append(Finding(labels, failing, summary, severity))
        return found


def directory_bytes(path: str) -> int:
    """Bytes of the regular files under `path` (symbolic links not followed; vanishing files skipped)."""
    total, stack = 0, [path]
    while stack:
        try:
            entries = os.scandir(stack.pop())
        except OSError:
            continue
        with entries:
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    elif entry.is_file(follow_symlinks=False):
                        total += entry.stat(follow_symlinks=False).st_size
                except OSError:
                    continue
    return total


@dataclass
class Disk(BaseCondition):
    scan_every_s: float = DISK_SCAN_S
    _size: tuple[float, int] | None = field(default=None, repr=False)

    def evaluate(self, ctx: Context) -> list[Finding] | None:
        data_dir = str(ctx.settings.data_dir)
        usage = shutil.disk_usage(data_dir)
        found = []
        free = 100 * usage.free / usage.total if usage.total else 100.0
        if free < ctx.settings.alert_disk_free_percent:
            found.append(Finding({"check": "free"}, free, f"{free:.1f}% free on the data directory's disk"))
        budget = ctx.settings.alert_disk_budget_mb
        if budget is not None:
            if self._size is None or abs(ctx.now - self._size[0]) >= self.scan_every_s:
                started = time.monotonic()
                self._size = (ctx.now, directory_bytes(data_dir))
                log.debug("data directory size measured in %.2f s", time.monotonic() - started)
            size_mb = self._size[1] / 1024 / 1024
            if size_mb > budget:
                summary = f"data directory holds {size_mb:,.1f} MB, over its {budget:,} MB budget"
                found.append(Finding({"check": "budget"}, size_mb, summary))
        return found


class Freshness(BaseCondition):
    """Events wait longer than the SLO: the lake writer lags, and both its last commit to `events` and the oldest
    event it has not committed are older than `freshness_slo_s` (an event that just arrived after a quiet hour
    is not late)."""

    def evaluate(self, ctx: Context) -> list[Finding] | None:
        if not ctx.metrics.up:
            return None
        lag = ctx.metrics.value("headwater_consumer_lag", {"group": LAKE_GROUP})
        if not lag:
            return []
        slo = ctx.settings.freshness_slo_s
        last = ctx.metrics.value("headwater_lake_last_commit_timestamp_seconds", {"table": "events"})
        if last is not None and ctx.now - last <= slo:
            return []
        try:
            oldest = oldest_unread(ctx).get(LAKE_GROUP)
        except LogError:
            oldest = None
        stamps = [t for t in (last, oldest) if t is not None]
        if not stamps:
            return None
        age = ctx.now - max(stamps)
        if age <= slo:
            return []
        return [Finding({}, age, f"events wait {age:.0f} s to reach the lake ({_count(lag)} waiting; "
                                 f"freshness SLO {slo:g} s)")]  # fmt: skip


class ServerDown(BaseCondition):
    def evaluate(self, ctx: Context) -> list[Finding] | None:
        latest = ctx.metrics.latest
        if latest is None or latest.values is not None:
            return []
        return [Finding({}, None, f"Headwater server metrics unreachable: {latest.error}")]


def builtin_conditions(settings: Settings) -> list[BaseCondition]:
    """The built-in rules with their settings (names are part of the API: notifications, silences)."""
    f = settings.alert_for_s
    return [
        LakeLag("lake_lag", "warning", "lake writer lagging and not catching up", f),
        ProcessorLag("processor_lag", "warning", "a stream processor lagging and not catching up", f),
        RetentionRisk("log_retention_risk", "critical", "unread records approach the log's retention", f),
        ErrorRate("error_rate", "warning", "share of refused or quarantined events above the limit", f),
        DeadLetters("dead_letters", "warning", "records dead-lettered by a sink or failed in a processor", f),
        SourceStalled("source_stalled", "warning", "a source is behind and reads nothing, or failed", f),
        ModelFailed("model_failed", "warning", "the latest build of a model failed", f),
        CheckFailed("check_failed", "warning", "the latest run of a data check failed", f),
        Disk("disk", "critical", "the data directory's disk is filling up", f),
        Freshness("freshness", "warning", "events take longer than the freshness SLO to be queryable", f),
        ServerDown("server_down", "critical", "the server's /metrics cannot be reached", f),
    ]


def thresholds(settings: Settings) -> dict[str, dict[str, Any]]:
    """The settings each built-in rule reads (shown with its definition)."""
    return {
        "lake_lag": {"alert_lake_lag_events": settings.alert_lake_lag_events, "trend_s": LAG_TREND_S},
        "processor_lag": {"alert_lake_lag_events": settings.alert_lake_lag_events, "trend_s": LAG_TREND_S},
        "log_retention_risk": {
            "alert_retention_fraction": settings.alert_retention_fraction,
            "log_retention_hours": settings.log_retention_hours
            if settings.log_backend != "kafka"
            else "topic retention.ms",
        },
        "error_rate": {
            "alert_error_rate": settings.alert_error_rate,
            "window_s": RATE_WINDOW_S,
            "min_events": ERROR_RATE_MIN_EVENTS,
        },
        "dead_letters": {"window_s": RATE_WINDOW_S},
        "source_stalled": {"alert_source_stalled_s": settings.alert_source_stalled_s},
        "disk": {
            "alert_disk_free_percent": settings.alert_disk_free_percent,
            "alert_disk_budget_mb": settings.alert_disk_budget_mb,
        },
        "freshness": {"freshness_slo_s": settings.freshness_slo_s},
    }
