"""Prometheus metrics of every component (multiprocess-safe when PROMETHEUS_MULTIPROC_DIR is set)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter("headwater_http_requests", "HTTP requests by route and status", ["route", "status"])
EVENTS_ACCEPTED = Counter("headwater_events_accepted", "Events durably appended to the log", ["endpoint"])
EVENTS_REJECTED = Counter("headwater_events_rejected", "Events quarantined as invalid", ["endpoint"])
EVENTS_DUPLICATE = Counter("headwater_events_duplicate", "Events dropped as duplicates of a recent messageId")
REQUEST_BYTES = Counter("headwater_request_bytes", "Request body bytes received (after decompression)")
BACKPRESSURE = Counter("headwater_backpressure_responses", "503 answers sent because of back-pressure", ["reason"])
APPEND_SECONDS = Histogram(
    "headwater_log_append_seconds", "Time from request parsed to log fsync",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0),
)  # fmt: skip
LAKE_COMMITS = Counter("headwater_lake_commits", "Iceberg commits by table", ["table"])
LAKE_ROWS = Counter("headwater_lake_rows", "Rows committed to Iceberg by table", ["table"])
LAKE_COMMIT_SECONDS = Histogram(
    "headwater_lake_commit_seconds", "Iceberg commit latency",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)  # fmt: skip
LAKE_LAST_COMMIT = Gauge(
    "headwater_lake_last_commit_timestamp_seconds",
    "Unix time of the lake writers' last commit to a table",
    ["table"],
    multiprocess_mode="max",
)
LAKE_COMMIT_CONFLICTS = Counter(
    "headwater_lake_commit_conflicts", "Iceberg commits retried because another writer committed first", ["table"]
)
LAKE_COMPACTIONS = Counter("headwater_lake_compactions", "Partitions compacted", ["table"])
RETENTION_PARTITIONS = Counter(
    "headwater_retention_dropped_partitions", "Day partitions dropped by retention", ["table"]
)
RETENTION_ROWS = Counter("headwater_retention_dropped_rows", "Rows in day partitions dropped by retention", ["table"])
LATE_EVENTS = Counter(
    "headwater_late_events",
    "Events committed to the lake an hour or more after their event time, by age (received_at - timestamp)",
    ["table", "age"],
)
QUERY_SECONDS = Histogram(
    "headwater_query_seconds",
    "Query latency",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
QUERIES_RUNNING = Gauge("headwater_queries_running", "Queries holding a slot", multiprocess_mode="livesum")
QUERIES_WAITING = Gauge("headwater_queries_waiting", "Queries waiting for a slot", multiprocess_mode="livesum")
QUERY_ERRORS = Counter("headwater_query_errors", "Queries refused or failed", ["kind"])
QUERY_FAST_PATH = Counter(
    "headwater_query_fast_answers", "Queries answered from rollups or table metadata instead of the raw data", ["path"]
)
PROCESSOR_RECORDS_IN = Counter("headwater_processor_records_in", "Input records applied", ["processor"])
PROCESSOR_RECORDS_OUT = Counter("headwater_processor_records_out", "Records emitted to outputs", ["processor"])
PROCESSOR_LATE = Counter("headwater_processor_late", "Records later than their window's grace", ["processor"])
PROCESSOR_ERRORS = Counter("headwater_processor_errors", "Records that raised (dead-lettered)", ["processor"])
PROCESSOR_LAG = Gauge(
    "headwater_processor_lag", "Input records not yet applied", ["processor"], multiprocess_mode="livemax"
)
PROCESSOR_STATE_BYTES = Gauge(
    "headwater_processor_state_bytes", "Size of the state store", ["processor"], multiprocess_mode="livemax"
)
PROCESSOR_CHECKPOINT_SECONDS = Histogram(
    "headwater_processor_checkpoint_seconds", "Time to write outputs, state and offsets",
    ["processor"], buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)  # fmt: skip
SINK_DELIVERED = Counter("headwater_sink_delivered", "Records delivered to external sinks", ["sink"])
SINK_RETRIES = Counter("headwater_sink_retries", "Sink batches retried", ["sink"])
SINK_DEAD_LETTERS = Counter("headwater_sink_dead_letters", "Records a sink gave up on", ["sink"])
SOURCE_RECORDS = Counter("headwater_source_records", "Records read from a source (before decoding)", ["source"])
SOURCE_APPENDED = Counter("headwater_source_appended", "Records a source appended to the log", ["source"])
SOURCE_REJECTED = Counter("headwater_source_rejected", "Source records quarantined", ["source"])
SOURCE_DUPLICATES = Counter(
    "headwater_source_duplicates", "Re-delivered source records the log already held", ["source"]
)
SOURCE_ERRORS = Counter("headwater_source_errors", "Upstream failures (connection lost, listing failed)", ["source"])
SOURCE_LAG = Gauge(
    "headwater_source_lag", "Records (files, for file drops) waiting upstream", ["source"], multiprocess_mode="livemax"
)
PRIVACY_DELETIONS = Counter("headwater_privacy_deletions", "Deletion requests by how they ended", ["state"])
PRIVACY_ROWS_REMOVED = Counter("headwater_privacy_rows_removed", "Rows deletions removed, by table", ["table"])
EVENTS_SUPPRESSED = Counter(
    "headwater_events_suppressed", "Events dropped at the collector because they carry a deleted id", ["source"]
)
EVENTS_QUARANTINED_BY_STAGE = Counter(
    "headwater_events_quarantined_by_plan",
    "Valid events the lake writer's stages sent to quarantine (a tracking plan in quarantine mode)",
)
