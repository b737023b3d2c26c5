"""The one typed settings object: `headwater.toml`, then `HEADWATER_*` env, then CLI flags."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import quote

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from headwater.core.alert_settings import AlertRule
from headwater.core.errors import ConfigError
from headwater.core.source_settings import SourceSettings

SECRET_FIELDS = frozenset({"catalog_uri", "app_db_uri", "demo_key", "s3_secret_access_key", "privacy_salt"})
SECRET_OPTION_WORDS = ("password", "secret", "jaas", "key.pem", "ssl.key", "token")  # in kafka_client_options
LogBackend = Literal["embedded", "kafka"]
AppStore = Literal["keys", "users", "app"]  # API keys, web users and sessions, saved insights and dashboards


class Settings(BaseSettings):
    """Every Headwater setting. Field descriptions are the user-facing documentation."""

    model_config = SettingsConfigDict(env_prefix="HEADWATER_", extra="forbid")
    config_file: ClassVar[Path | None] = None

    # --- where and how to listen
    data_dir: Path = Field(Path(".headwater"), description="Directory for the log, keys, catalog and warehouse.")
    host: str = Field("127.0.0.1", description="Address the HTTP server binds to.")
    port: int = Field(8080, ge=0, le=65535, description="Port of the HTTP server (0 picks a free one).")
    server_workers: int = Field(
        1,
        ge=0,
        le=64,
        description="HTTP server processes sharing the port (0 = one per core; on 2 cores 1 is fastest).",
    )
    cors_origins: str = Field(
        "*", description="Comma-separated origins allowed by CORS on the collector endpoints ('*' for any)."
    )
    api_cors_origins: str = Field(
        "",
        description="Comma-separated origins allowed by CORS on `/api/*` (default none: only the app served "
        "from this server); never '*', since the API answers to session cookies.",
    )
    metrics_token: str | None = Field(
        None,
        description="Bearer token `/metrics` requires; unset, `/metrics` answers only clients on this machine "
        "(loopback addresses).",
    )
    startup_timeout_s: float = Field(
        120.0, gt=0, description="How long `up` waits for every child process to report ready before giving up."
    )
    restart_max: int = Field(
        5,
        ge=1,
        description="`up` restarts a child that crashes after a healthy start (with back-off 1, 2, 4 … 30 s); "
        "after more than this many crashes within `restart_window_s` it stops everything and exits non-zero.",
    )
    restart_window_s: float = Field(300.0, gt=0, description="The window `restart_max` counts crashes in.")
    sql_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="Port of the PostgreSQL wire-protocol SQL server `up` also runs, for BI tools and psql "
        "(unset: not run; 0 picks a free one); it binds to `host`. User: a read key's name or a web user's; "
        "password: the key or the user's password.",
    )
    sql_tls_cert: Path | None = Field(
        None, description="PEM certificate for TLS on the SQL server (with `sql_tls_key`); unset, no TLS."
    )
    sql_tls_key: Path | None = Field(None, description="PEM private key of `sql_tls_cert`.")
    json_logs: bool = Field(False, description="Write process logs as JSON lines instead of text.")
    log_level: str = Field("info", description="Process log level: debug, info, warning, error.")

    # --- collector limits
    max_request_bytes: int = Field(
        5_000_000, ge=1024, description="Largest request body after decompression; larger gets 413."
    )
    max_event_bytes: int = Field(65_536, ge=256, description="Largest single event; larger ones are quarantined.")
    max_batch_events: int = Field(2_500, ge=1, description="Most events in one request; more gets 413.")
    dedupe_window_hours: float = Field(
        72.0,
        ge=0,
        description="Same messageId from the same source within this window is stored once (0 disables); at "
        "least lateness_bound_hours, so a retry of a late event is still stored once.",
    )
    lateness_bound_hours: float = Field(
        72.0,
        ge=0,
        description="How late an event may arrive and still be de-duplicated and counted as late (SumUp: 72 h); "
        "older ones are stored too, in their own day, and counted in the metric's `beyond` bucket.",
    )

    # --- event log
    log_backend: LogBackend = Field(
        "embedded",
        description="Event log: 'embedded' (SQLite in data_dir) or 'kafka' (an Apache Kafka cluster).",
    )
    kafka_bootstrap_servers: str = Field(
        "", description="Kafka brokers, comma-separated host:port (log_backend = 'kafka')."
    )
    kafka_topic: str = Field("headwater.events", description="Kafka topic of the event log; created when missing.")
    kafka_partitions: int = Field(
        12, ge=1, le=10_000, description="Partitions of the Kafka topic when Headwater creates it."
    )
    kafka_replication_factor: int = Field(
        -1, ge=-1, le=32, description="Replication factor of a created topic (-1 = the broker's default)."
    )
    kafka_client_options: dict[str, str] = Field(
        default_factory=dict,
        description="Extra librdkafka options for every Kafka client (SASL/TLS, e.g. security.protocol); "
        "env: a JSON object.",
    )
    kafka_ack_timeout_ms: int = Field(
        10_000, ge=1000, description="An HTTP request fails with 503 when Kafka has not acknowledged it by then."
    )
    log_partitions: int = Field(
        4,
        ge=1,
        le=256,
        description="Partitions of the embedded event log (events are keyed by user id, else anonymous id).",
    )
    log_retention_hours: float = Field(24.0, ge=0, description="Consumed log batches older than this are deleted.")
    log_retention_mb: int = Field(
        1_024, ge=1, description="Consumed log batches beyond this size are deleted, oldest first, whatever their age."
    )
    log_disk_budget_mb: int = Field(
        4_096,
        ge=1,
        description="When the log is over this size the collector answers 503 with Retry-After.",
    )
    group_commit_wait_ms: float = Field(
        1.0,
        ge=0,
        description="How long the log appender waits to gather concurrent requests into one fsync.",
    )

    # --- lake writer
    catalog_uri: str | None = Field(
        None, description="SQLAlchemy URI of the Iceberg SQL catalog (default: SQLite in data_dir)."
    )
    warehouse: str | None = Field(
        None,
        description="Warehouse location for table files: a path or s3://bucket/prefix (default: data_dir/warehouse).",
    )
    s3_endpoint: str = Field("", description="S3-compatible endpoint URL (empty: AWS's default for the region).")
    s3_region: str = Field("us-east-1", description="S3 region.")
    s3_access_key_id: str = Field("", description="S3 access key id (empty: the AWS default credential chain).")
    s3_secret_access_key: str = Field("", description="S3 secret access key.")
    flush_events: int = Field(
        200_000,
        ge=1,
        description="Lake writer commits when this many events are buffered (Firehose's buffer size).",
    )
    flush_interval_ms: int = Field(
        500,
        ge=10,
        description="Lake writer commits buffered events at least this often (Firehose's buffer interval).",
    )
    max_lake_lag_events: int = Field(
        5_000_000,
        ge=1000,
        description="When the lake writer lags by more events than this the collector answers 503.",
    )
    lake_file_target_mb: int = Field(
        256,
        ge=1,
        description="Size the lake aims at for a data file: import and compaction write files of about this size.",
    )
    compact_min_files: int = Field(
        24, ge=2, description="A day partition with at least this many small files is compacted at once."
    )
    compact_small_file_mb: int = Field(
        64, ge=1, description="Files under this size are small: candidates for compaction (see compact_after_minutes)."
    )
    compact_after_minutes: float = Field(
        10.0,
        ge=0,
        description="A day partition with two or more small files, the newest older than this, is compacted.",
    )
    rollup_cache_mb: int = Field(
        512, ge=1, description="Memory a query server keeps for parsed rollups (exact counts and people per day)."
    )
    snapshot_retention_minutes: float = Field(
        30.0,
        ge=1,
        description="Snapshots older than this are expired and files no longer referenced are deleted.",
    )
    maintenance_interval_s: float = Field(10.0, ge=0.1, description="How often the writer runs table maintenance.")
    shred_max_columns: int = Field(
        256,
        ge=0,
        le=4096,
        description="Most columns the lake writer adds to `events` for frequently used properties (0 = no "
        "shredding): `p_<name>` with the property's text, and `n_<name>` as a number for numeric properties.",
    )
    shred_min_share: float = Field(
        0.01,
        gt=0,
        le=1,
        description="A top-level scalar property gets its columns once it is in at least this share of the "
        "events of a written batch.",
    )
    shred_properties: list[str] = Field(
        default_factory=list,
        description="Properties shredded whenever they are seen, whatever their share (still within "
        "shred_max_columns); env: a JSON list.",
    )

    # --- privacy and lifecycle
    privacy_expire_after_minutes: float = Field(
        5.0,
        ge=0,
        le=1440,
        description="After a deletion has rewritten the tables, snapshots that still hold the deleted rows are "
        "expired and their files deleted once this much time has passed (queries running on them finish first); "
        "the request completes then.",
    )
    privacy_suppress_days: float = Field(
        0.0,
        ge=0,
        le=36_500,
        description="Days during which events carrying a deleted id are dropped at the collector and counted "
        "(0 = no suppression; a request may ask for its own period).",
    )
    privacy_personal_properties: list[str] = Field(
        default_factory=list,
        description="Properties holding personal data (e.g. email): a deletion also removes the deleted people's "
        "values of them from everyone else's events; env: a JSON list.",
    )
    privacy_wait_consumers_s: float = Field(
        300.0,
        ge=0,
        description="How long a deletion waits for the lake writer, processors and sources to get past the log "
        "records it erased before it rewrites the tables.",
    )
    privacy_salt: str | None = Field(
        None,
        description="Salt of the hashes that stand for deleted ids in the audit trail and the suppression list "
        "(default: generated once and kept in the catalog database).",
    )
    events_retention_days: int = Field(
        0, ge=0, description="Day partitions of `events` older than this are dropped whole (0 = keep forever)."
    )
    quarantine_retention_days: int = Field(
        30, ge=0, description="Day partitions of `quarantine` older than this are dropped whole (0 = keep forever)."
    )
    table_retention_days: dict[str, int] = Field(
        default_factory=dict,
        description="Retention in days of other lake tables (processor outputs, sources' own tables) by name; "
        "env: a JSON object.",
    )

    # --- tracking plans, enrichment, identity
    plan_refresh_s: float = Field(
        5.0, gt=0, description="How often collectors and lake writers re-read the active tracking plans."
    )
    consent_field: str | None = Field(
        None,
        description="Dotted path of an object of consent categories -> true/false in each event (e.g. "
        "'context.consent.categoryPreferences'); properties a plan tags with a category given false are dropped "
        "at the collector.",
    )
    consent_required: str | None = Field(
        None,
        description="Consent category an event must not have set to false to be kept (e.g. 'analytics'); events "
        "that opt out are dropped at the collector and counted (needs consent_field).",
    )
    enrich_user_agent: bool = Field(True, description="Browser, OS and device type from the user agent.")
    enrich_geoip_database: Path | None = Field(
        None,
        description="MaxMind-format (.mmdb) database for country/region/city from the IP (none: the step is "
        "skipped, and the writer's log says so).",
    )
    enrich_ip: Literal["keep", "anonymise", "drop"] = Field(
        "anonymise",
        description="How the client IP is stored (column `ip` and `context.ip`): whole, anonymised (last octet / "
        "last 80 bits zeroed) or not at all. Geolocation uses the whole address before this applies.",
    )
    enrich_referrer: bool = Field(
        True, description="Channel (search, social, email, paid, direct…), UTM fields and click ids from page URLs."
    )
    enrich_bots: bool = Field(True, description="Flag bots and crawlers (`is_bot`, `bot_reason`); never dropped.")
    enrich_sessions: bool = Field(True, description="A `session_id` per person by inactivity timeout.")
    session_timeout_minutes: float = Field(30.0, gt=0, le=1440, description="Inactivity that ends a session.")
    enrich_functions: list[str] = Field(
        default_factory=list,
        description="User enrichments, each 'path/to/file.py:name' or 'package.module:name' naming a function "
        "that takes and returns a pyarrow.Table of events (adding columns); env: a JSON list.",
    )
    identity_stitching: bool = Field(
        True,
        description="Link anonymous ids to user ids (identify, alias) into persons, and count persons rather "
        "than raw ids in insights by default.",
    )
    collector_trust_forwarded: bool = Field(
        False,
        description="Take the client address from the last X-Forwarded-For entry (the one your proxy adds; run "
        "behind exactly one proxy) rather than the connection.",
    )

    # --- query
    query_timeout_s: float = Field(30.0, gt=0, description="Queries running longer than this are cancelled.")
    query_max_rows: int = Field(
        10_000,
        ge=1,
        description="Most rows a query returns; the answer says when it was truncated.",
    )
    query_fast_path: bool = Field(
        True,
        description="Answer counts and distinct people by day/event from rollups and table metadata when a query "
        "has that shape (exactly the raw answer; the answer's `answered_by` says which path ran).",
    )
    query_threads: int = Field(0, ge=0, description="DuckDB threads for queries (0 = number of cores).")
    query_memory_limit: str = Field("4GB", description="DuckDB memory limit for queries.")
    query_concurrency: int = Field(
        4, ge=1, le=256, description="Queries (SQL and insights) a server process runs at once; more wait in line."
    )
    query_queue: int = Field(
        16, ge=0, description="Queries that may wait for a slot; beyond it, and after query_queue_wait_s, 429."
    )
    query_queue_wait_s: float = Field(
        10.0, ge=0, description="How long a query waits for a slot before it is refused (429 with Retry-After)."
    )
    query_nice: int = Field(
        10,
        ge=0,
        le=19,
        description="Niceness of the threads that run queries (DuckDB's included): the collector in the same "
        "process and the lake writer are served first when the cores are busy.",
    )
    background_nice: int = Field(
        10,
        ge=0,
        le=19,
        description="Niceness of background work (compaction, deletions, model builds, checks, alerting): the "
        "OS runs ingestion first when the cores are busy.",
    )

    # --- operations: SQL models, data checks, alerting
    models_dir: Path | None = Field(
        None,
        description="Directory of SQL models (`name.sql`, one table each) and data checks (`checks.toml`); "
        "`headwater up` builds them on their schedules (unset: no models).",
    )
    models_threads: int = Field(1, ge=1, description="DuckDB threads of one model build or check run.")
    models_memory_limit: str = Field("1GB", description="DuckDB memory limit of one model build or check run.")
    models_poll_s: float = Field(
        30.0, gt=0, description="How often the scheduler looks for due models (cron times, changed inputs)."
    )
    alerts_enabled: bool = Field(True, description="Evaluate the built-in and user alert rules inside `up`.")
    alert_interval_s: float = Field(15.0, gt=0, description="How often alert rules are evaluated.")
    alert_webhooks: list[str] = Field(
        default_factory=list,
        description="URLs that receive a JSON POST when an alert fires and when it resolves (every alert is also "
        "a log line); env: a JSON list.",
    )
    webhook_allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Hosts, addresses or networks (`hooks.internal`, `hooks.internal:8443`, `10.1.0.0/16`, `*` for "
        "any) that trend-alert webhooks may call although they are loopback, private or link-local; public "
        "addresses need no entry (see SECURITY.md); env: a JSON list.",
    )
    alert_rules: list[AlertRule] = Field(
        default_factory=list,
        description="User alert rules on any metric of /metrics (`[[alert_rules]]` tables); their fields: "
        "`headwater config docs --alerts`.",
    )
    alert_for_s: float = Field(
        60.0, ge=0, description="How long a built-in rule's condition must hold before it fires."
    )
    alert_lake_lag_events: int = Field(
        100_000, ge=1, description="Built-in rule: lake writer lag above this many events and not shrinking."
    )
    alert_retention_fraction: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Built-in rule: the oldest record a consumer has not read is older than this share of the "
        "log's retention (Zoom's near miss).",
    )
    alert_error_rate: float = Field(
        0.05,
        gt=0,
        le=1,
        description="Built-in rule: share of events refused or quarantined over the last 5 minutes above this.",
    )
    alert_source_stalled_s: float = Field(
        600.0, gt=0, description="Built-in rule: a running source has read nothing for this long while behind."
    )
    alert_disk_free_percent: float = Field(
        10.0, ge=0, le=100, description="Built-in rule: free space of the data directory's disk below this."
    )
    alert_disk_budget_mb: int | None = Field(
        None, ge=1, description="Built-in rule: the data directory grew past this size (unset: free space only)."
    )
    freshness_slo_s: float = Field(
        60.0, gt=0, description="Events should be queryable within this; the built-in freshness rule fires beyond."
    )

    # --- upgrades
    config_version: int = Field(
        1,
        ge=1,
        description="Format version of this settings file (`config_version = 1`); a file from a newer Headwater "
        "is refused with a message rather than misread.",
    )
    upgrade_backup: bool = Field(
        True,
        description="Copy the databases an upgrade changes to `<data_dir>/backups/<version>/` before migrating "
        "an older data directory.",
    )

    # --- accounts and saved work
    app_db_uri: str | None = Field(
        None,
        description="SQLAlchemy URI of the database for API keys, web users and sessions, saved insights and "
        "dashboards (default: SQLite files in data_dir). Give every server the same one to share them.",
    )

    # --- web users
    session_hours: float = Field(12.0, gt=0, description="Web sessions expire after this many hours.")
    login_free_failures: int = Field(
        5,
        ge=1,
        description="Failed sign-ins allowed per user name and per client address before each further one "
        "must wait (1 s, doubling up to `login_backoff_max_s`; 429 with Retry-After meanwhile).",
    )
    login_backoff_max_s: float = Field(900.0, gt=0, description="Longest wait imposed after repeated failed sign-ins.")

    # --- stream processors
    processors: list[str] = Field(
        default_factory=list,
        description="Processors `headwater up` runs, each 'path/to/file.py:name' or 'package.module:name' "
        "naming a Pipeline (or a list of them).",
    )
    processor_checkpoint_ms: int = Field(
        50, ge=10, description="How often a processor writes its outputs, state and input offsets (latency bound)."
    )
    processor_max_batch: int = Field(5_000, ge=1, description="Most input records a processor reads at once.")

    # --- sources beyond HTTP
    sources: list[SourceSettings] = Field(
        default_factory=list,
        description="Sources `headwater up` runs (`[[sources]]` tables: Kafka topics, RabbitMQ queues, file "
        "drops); their fields: `headwater config docs --sources`.",
    )

    # --- demo
    demo_rate: float = Field(
        50.0, ge=0, description="Events per second sent by `headwater up --demo` after its history (0: none)."
    )
    demo_key: str | None = Field(None, description="Admin key printed by `up --demo` (created when absent).")
    demo_scenario: Literal["shop", "betting", "app"] = Field(
        "shop",
        description="What `headwater up --demo` generates (`headwater generate --scenario`): `shop` (web shop: "
        "signup, activation, purchases, an A/B test), `betting` (PMU's shape: bets, cancellations, race results) "
        "or `app` (a mobile app).",
    )
    demo_days: int = Field(
        30, ge=0, le=400, description="Days of history `up --demo` backfills (through the importer) on first start."
    )
    demo_seed: int = Field(7, description="Seed of the demo generator: the same seed gives the same users and events.")

    @field_validator("sources")
    @classmethod
    def _unique_sources(cls, value: list[SourceSettings]) -> list[SourceSettings]:
        names = [s.name for s in value]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"sources: names must be unique; repeated: {', '.join(repeated)}")
        tables = [s.table for s in value if s.table]
        shared = sorted({t for t in tables if tables.count(t) > 1})
        if shared:
            raise ValueError(f"sources: one source per table; shared: {', '.join(shared)}")
        return value

    @model_validator(mode="after")
    def _dedupe_covers_lateness(self) -> Settings:
        """A retry of a late event must still meet its original within the de-duplication window."""
        if 0 < self.dedupe_window_hours < self.lateness_bound_hours:
            raise ValueError(
                f"dedupe_window_hours = {self.dedupe_window_hours:g} is shorter than lateness_bound_hours = "
                f"{self.lateness_bound_hours:g}: a retry of a late event could be stored twice; raise it, or set "
                "it to 0 to turn de-duplication off"
            )
        return self

    @field_validator("log_level")
    @classmethod
    def _check_level(cls, value: str) -> str:
        value = value.lower()
        if value not in {"debug", "info", "warning", "error"}:
            raise ValueError("log_level must be one of debug, info, warning, error")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = cls.config_file
        if path is not None and path.exists():
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    # --- derived paths
    @property
    def log_path(self) -> Path:
        return self.data_dir / "log" / "events.db"

    @property
    def offsets_path(self) -> Path:
        return self.data_dir / "log" / "offsets.db"

    def source(self, name: str) -> SourceSettings:
        """The configured source `name`."""
        for source in self.sources:
            if source.name == name:
                return source
        known = ", ".join(s.name for s in self.sources) or "none configured"
        raise ConfigError(f"no source named {name!r} in the settings ({known}); add a [[sources]] table")

    @property
    def sources_dir(self) -> Path:
        """Status and local state of sources."""
        return self.data_dir / "sources"

    @property
    def processors_dir(self) -> Path:
        """State, manifests and status of stream processors."""
        return self.data_dir / "processors"

    def store_uri(self, store: AppStore) -> str:
        """SQLAlchemy URI of an account store: `app_db_uri` (shared by all three), else `<data_dir>/<store>.db`."""
        if self.app_db_uri:
            return self.app_db_uri
        path = (self.data_dir / f"{store}.db").resolve()
        return "sqlite:///" + quote(str(path), safe="/")

    @property
    def warehouse_path(self) -> Path:
        return Path(self.warehouse) if self.warehouse else self.data_dir / "warehouse"

    @property
    def effective_catalog_uri(self) -> str:
        if self.catalog_uri:
            return self.catalog_uri
        return f"sqlite:///{(self.data_dir / 'catalog.db').resolve()}"

    def masked(self) -> dict[str, Any]:
        """Effective settings with secrets masked, for `config show`."""
        out: dict[str, Any] = {}
        for name, value in self.model_dump().items():
            if name in SECRET_FIELDS and value:
                out[name] = "****"
            elif isinstance(value, dict):
                out[name] = {k: "****" if any(w in k for w in SECRET_OPTION_WORDS) else v for k, v in value.items()}
            else:
                out[name] = str(value) if isinstance(value, Path) else value
        return out


CONFIG_VERSION = 1
"""Format of the settings file this version reads; a file without `config_version` is version 1."""


def load_settings(config: Path | None = None, **overrides: Any) -> Settings:
    """Build settings from the config file, the environment, then explicit overrides (CLI flags).

    A file written for a newer Headwater (`config_version` above CONFIG_VERSION) is refused before its fields are
    read, so that a renamed or new setting is reported as what it is rather than as an unknown field."""
    path = config or Path(os.environ.get("HEADWATER_CONFIG", "headwater.toml"))
    if config is not None and not config.exists():
        raise ConfigError(f"config file {config} does not exist")
    Settings.config_file = path
    _check_config_version(path, overrides.get("config_version") or os.environ.get("HEADWATER_CONFIG_VERSION"))
    clean = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**clean)
    except ValidationError as exc:
        raise ConfigError(f"invalid settings: {exc}") from exc


def _check_config_version(path: Path, override: Any) -> None:
    """Refuse settings of a newer format (file, HEADWATER_CONFIG_VERSION or a flag)."""
    where, found = "HEADWATER_CONFIG_VERSION / the flags", override
    if found is None and path.is_file():
        try:
            document = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"config file {path}: {exc}") from exc
        where, found = f"config file {path}", document.get("config_version")
    if found is None:
        return
    try:
        version = int(found)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: config_version = {found!r} is not a whole number") from None
    if version > CONFIG_VERSION:
        from headwater import __version__

        raise ConfigError(
            f"{where} has config_version = {version}: it was written for a newer Headwater; this is Headwater "
            f"{__version__}, which reads settings up to config_version = {CONFIG_VERSION}. Run the Headwater that "
            "wrote it, or rewrite the file for this version (`headwater config docs` lists its settings)."
        )
