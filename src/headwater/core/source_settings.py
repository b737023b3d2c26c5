"""The typed settings of one source (`[[sources]]` tables in headwater.toml); part of `Settings`."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

SourceKind = Literal["kafka", "rabbitmq", "files"]
SourceFormat = Literal["json", "ndjson", "csv", "parquet", "avro", "cobol", "grib", "ga4"]
NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
TABLE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
MAPPED_COLUMNS = ("event", "user_id", "anonymous_id", "timestamp", "message_id")
RESERVED_TABLES = frozenset({"events", "quarantine"})


class SourceSettings(BaseModel):
    """One source: where records come from, how they are read, and where they land.

    Field descriptions are the user-facing documentation (`headwater config docs --sources`).
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Name of the source: the `source` column of its rows, its metrics label.")
    kind: SourceKind = Field(description="kafka (a topic), rabbitmq (a queue) or files (a directory or S3 prefix).")
    format: SourceFormat = Field(
        "json",
        description="How one record is encoded (files: the file format; ga4: GA4 / Firebase BigQuery export files, "
        "each day replaced whole, the last 3 days re-checked on each arrival).",
    )
    enabled: bool = Field(True, description="Run it inside `headwater up` (`headwater source NAME` runs it anyway).")
    # --- where it lands
    table: str | None = Field(
        None,
        description="Land in this Iceberg table of its own (schema from the records, evolved as new fields "
        "arrive) instead of `events`.",
    )
    stream: str = Field(
        "events",
        description="Log stream that receives the records as events: 'events' (landed in the events table, "
        "shown live) or a stream of its own that processors read. Ignored with `table`.",
    )
    mapping: dict[str, str] = Field(
        default_factory=dict,
        description="Event columns from record fields (dotted paths; '=text' is a constant, '{field}' a template): "
        "event, user_id, anonymous_id, timestamp, message_id. Other fields become properties.",
    )
    timestamp_format: str | None = Field(
        None,
        description="strptime format of the mapped timestamp when it is not ISO-8601 or epoch (mainframe "
        "'%Y%m%d%H%M%S%f'); read as UTC unless it has %z.",
    )
    flatten: str | None = Field(
        None, description="Dotted path of an array in each record whose items are the events (Zoom: 7-25 a message)."
    )
    id_field: str | None = Field(
        None, description="Record field that identifies a record upstream (dedup key); default: its position."
    )
    # --- kafka
    bootstrap_servers: str = Field("", description="kafka: brokers, host:port,...")
    topic: str = Field("", description="kafka: the topic to consume.")
    group: str = Field("", description="kafka: consumer group (default: headwater-source-NAME).")
    start: str = Field(
        "earliest", description="kafka: where a new group starts: earliest, latest, or an ISO-8601 time."
    )
    client_options: dict[str, str] = Field(default_factory=dict, description="kafka: extra librdkafka options.")
    avro_schema: str | None = Field(None, description="avro: the writer schema (JSON text or a file path).")
    schema_registry_url: str | None = Field(
        None, description="avro: Confluent Schema Registry URL (records carry the schema id)."
    )
    # --- rabbitmq
    url: str = Field("", description="rabbitmq: amqp://user:password@host:port/vhost")
    queue: str = Field("", description="rabbitmq: queue to consume (declared durable when `exchange` is set).")
    exchange: str | None = Field(
        None, description="rabbitmq: bind `queue` (created, durable) to this existing exchange: a copy of its flow."
    )
    routing_key: str = Field("#", description="rabbitmq: binding key for `exchange`.")
    prefetch: int = Field(2_000, ge=1, le=65_535, description="rabbitmq: unacknowledged messages in flight.")
    # --- files
    path: str = Field("", description="files: a local directory or s3://bucket/prefix to watch.")
    pattern: str = Field("*", description="files: glob of file names to take (e.g. '*.ndjson.gz').")
    move_to: str | None = Field(
        None, description="files: move done files into this directory (or s3://bucket/prefix, on the same store)."
    )
    poll_seconds: float = Field(1.0, gt=0, description="files: how often to look for new files.")
    csv_delimiter: str = Field(",", min_length=1, max_length=1, description="csv: field delimiter.")
    # --- cobol
    cobol: dict[str, Any] = Field(
        default_factory=dict,
        description="cobol: copybook, copybooks {type = path}, header_copybook, type_field, code_page, redefines, "
        "record_format (fixed|rdw|bdw), record_length, decode (full|header).",
    )
    # --- batching
    batch_size: int = Field(2_000, ge=1, le=100_000, description="Most records appended to the log at once.")
    max_wait_ms: int = Field(200, ge=1, description="Longest a partial batch waits before it is appended.")

    @model_validator(mode="after")
    def _check(self) -> SourceSettings:
        def need(field: str, why: str) -> None:
            if not getattr(self, field):
                raise ValueError(f"source {self.name!r}: `{field}` is required ({why})")

        if not NAME.match(self.name):
            raise ValueError(f"source name {self.name!r}: use lower-case letters, digits, '_' and '-'")
        if self.kind == "kafka":
            need("bootstrap_servers", "kind = kafka")
            need("topic", "kind = kafka")
        elif self.kind == "rabbitmq":
            need("url", "kind = rabbitmq")
            need("queue", "kind = rabbitmq")
        else:
            need("path", "kind = files")
        if self.table is not None and (not TABLE_NAME.match(self.table) or self.table in RESERVED_TABLES):
            raise ValueError(
                f"source {self.name!r}: table {self.table!r} must be lower-case letters, digits and '_' "
                "and not events or quarantine"
            )
        if self.format == "grib" and (self.kind != "files" or self.table is None):
            raise ValueError(f"source {self.name!r}: format grib needs kind = files and a `table`")
        if self.format == "ga4" and (self.kind != "files" or self.table is not None or self.move_to):
            raise ValueError(
                f"source {self.name!r}: format ga4 needs kind = files, no `table` (it lands in events) and no "
                "`move_to` (the folder keeps the files a day is re-imported from)"
            )
        if self.format in ("csv", "parquet") and self.kind != "files":
            raise ValueError(f"source {self.name!r}: format {self.format} is for kind = files")
        if self.format == "avro" and self.kind == "files":
            raise ValueError(f"source {self.name!r}: format avro is for kafka and rabbitmq messages")
        if self.format == "avro" and not (self.avro_schema or self.schema_registry_url):
            raise ValueError(f"source {self.name!r}: format avro needs `avro_schema` or `schema_registry_url`")
        if self.format == "cobol" and not (self.cobol.get("copybook") or self.cobol.get("copybooks")):
            raise ValueError(f"source {self.name!r}: format cobol needs cobol.copybook or cobol.copybooks")
        unknown = set(self.mapping) - set(MAPPED_COLUMNS)
        if unknown:
            raise ValueError(
                f"source {self.name!r}: mapping {sorted(unknown)} unknown; map {', '.join(MAPPED_COLUMNS)}"
            )
        if self.start not in ("earliest", "latest"):
            from datetime import datetime

            try:
                datetime.fromisoformat(self.start)
            except ValueError:
                raise ValueError(
                    f"source {self.name!r}: start {self.start!r} is not earliest, latest or an ISO-8601 time"
                ) from None
        return self

    @property
    def consumer_group(self) -> str:
        return self.group or f"headwater-source-{self.name}"

    @property
    def feed_stream(self) -> str | None:
        """The log stream a table-bound source appends to (its lander reads it)."""
        return f"source.{self.name}" if self.table is not None and self.format != "grib" else None
