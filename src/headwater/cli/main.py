"""`headwater`: up, server, writer, doctor, query, generate, import, keys, users, audit, config."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from pydantic import BaseModel
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table as RichTable

from headwater.cli.audit import record_cli
from headwater.cli.options import ConfigOpt, DataDirOpt
from headwater.core.errors import HeadwaterError
from headwater.core.settings import Settings, load_settings

app = typer.Typer(help="Headwater: self-hosted event analytics.", no_args_is_help=True, add_completion=False)
config_app = typer.Typer(help="Inspect settings.", no_args_is_help=True)
app.add_typer(config_app, name="config")
console = Console(stderr=True, soft_wrap=True)


@app.callback()
def _private_files() -> None:
    # what Headwater creates (databases, keys, the log, table files) is its owner's only: README "Data at rest"
    from headwater.runtime.datadir import UMASK

    os.umask(UMASK)


HostOpt = Annotated[str | None, typer.Option("--host", help="Address to bind.")]
PortOpt = Annotated[int | None, typer.Option("--port", "-p", help="Port to listen on (0 = any free port).")]


def settings_from(config: Path | None, formats: bool = True, **flags: Any) -> Settings:
    """The settings of a command; with `formats`, the data directory's formats too: a newer one is refused before
    the command touches anything, an older one is upgraded first (what every process does at start). A data
    directory that does not exist is left so (`plan check` in a user's checkout must create nothing)."""
    try:
        settings = load_settings(config, **flags)
        if formats and settings.data_dir.exists():
            from headwater.upgrade import prepare

            prepare(settings)
        return settings
    except HeadwaterError as exc:
        fail(str(exc))
        raise  # unreachable


@contextlib.contextmanager
def account_store(kind: str, config: Path | None, data_dir: Path | None) -> Iterator[Any]:
    """The key store (`keys`) or user store (`users`) in `app_db_uri` or the data dir, closed after; errors exit
    cleanly."""
    from sqlalchemy.exc import SQLAlchemyError

    from headwater.auth.keys import KeyStore
    from headwater.auth.users import UserStore

    settings = settings_from(config, data_dir=data_dir)
    store: Any = None
    try:
        store = KeyStore(settings.store_uri("keys")) if kind == "keys" else UserStore(settings.store_uri("users"))
    except SQLAlchemyError as exc:
        fail(f"cannot open the account database: {str(exc).strip().splitlines()[0]}")
    try:
        yield store
    except HeadwaterError as exc:
        fail(str(exc))
    finally:
        store.close()


def fail(message: str, code: int = 1) -> None:
    from headwater.runtime.readiness import report_failure

    report_failure(message)  # a child of `up` stopping at start-up: `up` shows this line and stops
    console.print(f"[red]error:[/red] {escape(message)}")  # a message is text, not markup ([[sources]])
    raise typer.Exit(code)


@app.command()
def up(
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    host: HostOpt = None,
    port: PortOpt = None,
    demo: Annotated[bool, typer.Option("--demo", help="Also send demo traffic and print how to query it.")] = False,
) -> None:
    """Run everything on one machine: collector, log, lake writer, maintenance, query API."""
    from headwater.cli.accounts import ensure_first_admin
    from headwater.runtime import datadir
    from headwater.runtime.supervisor import Supervisor
    from headwater.upgrade import prepare

    settings = settings_from(config, formats=False, data_dir=data_dir, host=host, port=port)
    try:
        datadir.create(settings.data_dir)
        lock = datadir.hold(settings.data_dir, settings.host)  # one `up` per data directory, refused at once
        prepare(settings)  # refuses a newer data directory; upgrades an older one (after a backup)
    except HeadwaterError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot use the data directory {settings.data_dir}: {exc.strerror or exc}")
    for loose in datadir.loose_modes(settings.data_dir):
        console.print(f"[yellow]warning:[/yellow] {escape(str(loose))}")
    first_password = ensure_first_admin(settings)
    supervisor = Supervisor(settings, config)
    stop = threading.Event()

    def on_signal(*_: object) -> None:
        stop.set()
        supervisor.stopping.set()  # also ends a start-up still waiting for its children

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    try:
        bound = supervisor.start()
    except HeadwaterError as exc:
        supervisor.stop()
        if stop.is_set():
            console.print("stopped during start-up")
            return
        fail(str(exc))
    url = f"http://{settings.host}:{bound}"
    lock.note_url(url)
    console.print(f"[green]Headwater is up[/green] at {url}  (data in {settings.data_dir.resolve()})")
    sql_port = supervisor.sql_port()
    if sql_port is not None:
        console.print(f"SQL (PostgreSQL protocol): psql -h {settings.host} -p {sql_port} -U <key name>")
    if first_password:
        console.print(f"First run: web user [bold]admin[/bold], password [bold]{first_password}[/bold] (shown once)")
    watcher = threading.Thread(target=supervisor.watch, args=(stop,), daemon=True)
    watcher.start()
    if demo:
        _start_demo(settings, url, stop)
    running = [s.name for s in settings.sources if s.enabled]
    if running:
        console.print(f"Sources: {escape(', '.join(running))} (state: headwater sources, or the Sources page)")
    console.print("Stop with Ctrl-C (intake stops first, then buffered events are committed).")
    stop.wait()
    if supervisor.failure is None:
        console.print("stopping: closing intake, committing buffered events…")
    supervisor.stop()
    lock.close()
    if supervisor.failure is not None:
        fail(supervisor.failure)
    console.print("stopped")


def _demo_key(settings: Settings) -> str:
    from headwater.auth.keys import KeyStore

    if settings.demo_key:
        return settings.demo_key
    path = settings.data_dir / "demo.key"
    if path.exists():
        return path.read_text().strip()
    store = KeyStore(settings.store_uri("keys"))
    try:
        name = f"demo-admin-{int(time.time())}"
        key = store.create(name, "admin")
    finally:
        store.close()
    record_cli(settings, "key.created", name, {"role": "admin", "prefix": key[:9], "by": "up --demo"})
    path.write_text(key)
    path.chmod(0o600)
    return key


def _start_demo(settings: Settings, url: str, stop: threading.Event) -> None:
    from headwater.cli.demo import start_demo

    start_demo(settings, url, stop, _demo_key(settings))


@app.command()
def server(
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    host: HostOpt = None,
    port: PortOpt = None,
    port_file: Annotated[Path | None, typer.Option(help="Write the bound port to this file once listening.")] = None,
) -> None:
    """Run only the HTTP server: collector, query API, /healthz, /metrics."""
    from headwater.runtime.processes import serve

    try:
        settings = settings_from(config, formats=False, data_dir=data_dir, host=host, port=port)
        _refuse_beside_up(settings)
        serve(settings, port_file)  # upgrades an older data directory itself
    except HeadwaterError as exc:
        fail(str(exc))


def _refuse_beside_up(settings: Settings) -> None:
    """A standalone server or writer on a data directory a running `up` holds would fight it: refuse."""
    if "HEADWATER_CHILD" not in os.environ:  # not one of up's own children
        from headwater.runtime.datadir import refuse_if_held

        refuse_if_held(settings.data_dir)


@app.command()
def writer(config: ConfigOpt = None, data_dir: DataDirOpt = None) -> None:
    """Run only the lake writer and table maintenance."""
    from headwater.runtime.processes import run_writer

    try:
        settings = settings_from(config, formats=False, data_dir=data_dir)
        _refuse_beside_up(settings)
        run_writer(settings)  # upgrades an older data directory itself
    except HeadwaterError as exc:
        fail(str(exc))


@app.command()
def ops(config: ConfigOpt = None, data_dir: DataDirOpt = None) -> None:
    """Build SQL models, run data checks and evaluate alert rules until stopped (`headwater up` runs this)."""
    from headwater.runtime.processes import run_ops

    run_ops(settings_from(config, data_dir=data_dir))


@app.command()
def process(
    specs: Annotated[
        list[str] | None,
        typer.Argument(
            help="Pipelines to run, 'file.py:name' or 'module:name' (default: the `processors` setting); or "
            "'savepoint NAME' to take a savepoint of processor NAME (running or not), 'savepoints NAME' to list them."
        ),
    ] = None,
    replay: Annotated[
        str | None, typer.Option("--replay", help="Re-run this processor into fresh state (a new run).")
    ] = None,
    start: Annotated[
        str,
        typer.Option(
            "--from",
            help="With --replay or --reset-state: 'earliest', 'latest', offsets 'P:O,P:O', an ISO time (event time), "
            "'lake' / 'lake:ISO time' to read the events table first (what the log no longer holds), or "
            "'savepoint:ID'.",
        ),
    ] = "earliest",
    from_savepoint: Annotated[
        str | None,
        typer.Option(
            "--from-savepoint",
            help="Start the processor holding savepoint ID (and its stages) from it, as a new run: its state, then "
            "its input from the saved positions. With --replay NAME and no pipelines: ask the running one.",
        ),
    ] = None,
    reset_state: Annotated[
        bool,
        typer.Option(
            "--reset-state", help="Start the pipelines given as new runs with empty state, reading from --from."
        ),
    ] = False,
    savepoint_id: Annotated[
        str | None, typer.Option("--id", help="With 'savepoint NAME': the savepoint's id (default: the time).")
    ] = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Run stream processors on the log (a consumer group each; parallel by partition)."""
    from headwater.runtime.processes import request_replay, run_processors

    settings = settings_from(config, data_dir=data_dir)
    try:
        if specs and specs[0] in ("savepoint", "savepoints"):
            _savepoint_command(settings, specs, savepoint_id)
            return
        if from_savepoint is not None:
            start = f"savepoint:{from_savepoint}"
        if replay is not None and not specs:
            where = request_replay(settings, replay, start)
            console.print(f"replay of {replay} from {start} requested; the running processor picks it up ({where})")
            return
        run_processors(
            settings, specs or settings.processors, replay=replay, start=start,
            from_savepoint=from_savepoint, reset_state=reset_state,
        )  # fmt: skip
    except HeadwaterError as exc:
        fail(str(exc))


def _savepoint_command(settings: Settings, args: list[str], savepoint_id: str | None) -> None:
    """`process savepoint NAME [--id ID]` and `process savepoints NAME`."""
    from headwater.log import open_log
    from headwater.processing import savepoints

    if len(args) != 2:
        fail(f"usage: headwater process {args[0]} NAME")
    if args[0] == "savepoints":
        found = savepoints.list_savepoints(settings.processors_dir, args[1])
        for meta in found:
            print(savepoints.describe(meta))
        if not found:
            console.print(f"no savepoints of {args[1]}")
        return
    meta = savepoints.request(settings, open_log(settings), args[1], savepoint_id)
    console.print(
        f"savepoint {meta['id']} of {args[1]} taken: {settings.processors_dir / args[1] / 'savepoints' / meta['id']}"
    )
    print(meta["id"])


@app.command()
def doctor(config: ConfigOpt = None, data_dir: DataDirOpt = None) -> None:
    """Check the configured event log, catalog, warehouse and query engine; say what to fix."""
    from headwater.runtime.doctor import run_checks

    settings = settings_from(config, data_dir=data_dir)
    out = Console(soft_wrap=True)
    results = run_checks(settings)
    for check in results:
        mark = "[green]ok[/green]  " if check.ok else "[red]FAIL[/red]"
        out.print(f"{mark} {check.name}: {check.detail}", highlight=False)
        if check.fix:
            out.print(f"       fix: {check.fix}", highlight=False)
    if not all(check.ok for check in results):
        raise typer.Exit(1)


@app.command()
def query(
    sql: Annotated[str, typer.Argument(help="One SELECT over `events`, `quarantine` and the tables processors write.")],
    output: Annotated[str, typer.Option("--format", "-f", help="table, csv or json.")] = "table",
    max_rows: Annotated[int | None, typer.Option(help="Row cap (default: query_max_rows).")] = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Run SQL over the lake (read-only) and print the result."""
    from headwater.query.engine import QueryEngine

    if output not in ("table", "csv", "json"):
        fail("--format must be table, csv or json")
    settings = settings_from(config, data_dir=data_dir)
    try:
        engine = QueryEngine(settings)
        result = engine.execute(sql, max_rows)
    except HeadwaterError as exc:
        fail(str(exc))
    if output == "json":
        sys.stdout.write(orjson.dumps(result.as_dict(), default=str).decode() + "\n")
    elif output == "csv":
        buffer = io.StringIO()
        writer_ = csv.writer(buffer)
        writer_.writerow(result.columns)
        writer_.writerows(result.rows)
        sys.stdout.write(buffer.getvalue())
    else:
        table = RichTable(*result.columns)
        for row in result.rows:
            table.add_row(*("" if v is None else str(v) for v in row))
        Console().print(table)
        console.print(
            f"{len(result.rows)} rows in {result.elapsed_ms:.0f} ms" + (" (truncated)" if result.truncated else "")
        )


@app.command()
def insight(
    spec: Annotated[str, typer.Argument(help='Insight as JSON, or @FILE: {"kind": "funnel", "steps": [...], ...}.')],
    sql_only: Annotated[bool, typer.Option("--sql", help="Print only the SQL the insight compiles to.")] = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Run a trend, funnel, retention, journey, timeline or catalog insight; prints JSON with its SQL."""
    from headwater.cohorts.store import CohortStore
    from headwater.insights.engine import InsightEngine, compile_query, parse
    from headwater.query.engine import QueryEngine

    try:
        text = Path(spec[1:]).read_text() if spec.startswith("@") else spec
        document = orjson.loads(text)
    except (OSError, orjson.JSONDecodeError) as exc:
        fail(f"spec: {exc}")
    if not isinstance(document, dict):
        fail('spec: expected a JSON object such as {"kind": "catalog"}')
    settings = settings_from(config, data_dir=data_dir)
    cohorts = CohortStore(settings.store_uri("app"))  # `$cohort` filters and breakdowns name saved cohorts
    try:
        if sql_only:
            sys.stdout.write(compile_query(parse(document), cohorts=cohorts.resolver) + "\n")
            return
        answer = InsightEngine(QueryEngine(settings), cohorts=cohorts.resolver).run(document)
    except HeadwaterError as exc:
        fail(str(exc))
    finally:
        cohorts.close()
    sys.stdout.write(orjson.dumps(answer, default=str, option=orjson.OPT_INDENT_2).decode() + "\n")


@app.command()
def generate(
    url: Annotated[str, typer.Option(help="Base URL of the collector.")] = "http://127.0.0.1:8080",
    key: Annotated[str, typer.Option(help="Write key.", envvar="HEADWATER_KEY")] = "",
    rate: Annotated[float, typer.Option(help="Events per second (0 = as fast as possible).")] = 400.0,
    batch: Annotated[int, typer.Option(help="Events per request (the seed uses 100).")] = 100,
    users: Annotated[
        int, typer.Option(help="Distinct users (0 = the seed's 210 names; with --scenario: 20,000 visitors).")
    ] = 0,
    days: Annotated[
        int, typer.Option(help="Spread event times over the last N days (--scenario: import N days of history).")
    ] = 0,
    total: Annotated[int | None, typer.Option(help="Stop after this many events.")] = None,
    duration: Annotated[float | None, typer.Option(help="Stop after this many seconds.")] = None,
    concurrency: Annotated[int, typer.Option(help="Requests in flight.")] = 4,
    message_ids: Annotated[bool, typer.Option(help="Give every event a messageId.")] = False,
    scenario: Annotated[
        str | None,
        typer.Option(help="shop | betting | app: realistic Segment events (absent: the seed's LOGIN-like events)."),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed: the same seed gives the same people and events.")] = None,
    live: Annotated[bool, typer.Option("--live/--no-live", help="--scenario: then send live visits at --rate.")] = True,
    truth: Annotated[Path | None, typer.Option(help="--scenario: write the ground truth (JSON) to this file.")] = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Send LOGIN-like events to /track like the seed's perl generator, with a progress bar; with --scenario,
    import --days of a realistic scenario into the lake (this machine's data directory), then send it live."""
    if scenario is not None:
        from headwater.cli.demo import generate_scenario

        generate_scenario(scenario, url, key, rate, users, days, duration, seed, live, truth, config, data_dir)
        return
    from headwater.loadgen.generate import GenerateOptions
    from headwater.loadgen.generate import generate as run_generate

    if not key:
        fail("--key is required (a write key: `headwater keys create NAME --role write`)")
    if total is None and duration is None:
        fail("give --total N or --duration SECONDS")
    options = GenerateOptions(url, key, rate, batch, users, days, total, duration, concurrency, message_ids, seed)
    with _progress() as progress:
        task = progress.add_task("sending", total=total)
        summary = asyncio.run(run_generate(options, lambda n: progress.advance(task, n)))
    sys.stdout.write(orjson.dumps(summary.as_dict()).decode() + "\n")
    if summary.errors and not summary.accepted:
        raise typer.Exit(1)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=False,
    )  # fmt: skip


@app.command("import")
def import_files(
    files: Annotated[
        list[Path] | None, typer.Argument(help="NDJSON / JSON / CSV / Parquet files; GA4: Parquet, Avro or NDJSON.")
    ] = None,
    source: Annotated[str | None, typer.Option(help="Value of the `source` column (default import, ga4).")] = None,
    fmt: Annotated[
        str,
        typer.Option("--format", help="events (rows as /track events) or ga4 (GA4 / Firebase BigQuery export)."),
    ] = "events",
    report: Annotated[
        bool,
        typer.Option(
            help="ga4: import nothing; compare rows per event_date of FILES (or of the recorded imports) with the lake."
        ),
    ] = False,
    since: Annotated[str | None, typer.Option(help="ga4 --report without files: first day (YYYYMMDD).")] = None,
    until: Annotated[str | None, typer.Option(help="ga4 --report without files: last day (YYYYMMDD).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="ga4 --report: print JSON.")] = False,
    stages: Annotated[
        bool,
        typer.Option(
            "--stages/--no-stages",
            help="Run the lake writer's stages (tracking plan, enrichments, identity links) on the rows, as live.",
        ),
    ] = True,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Backfill files into the lake through the same validation and normalisation as live events.

    With --format ga4, each day of the files replaces that day of the source in one commit (headwater.lake.ga4)."""
    if fmt not in ("events", "ga4"):
        fail("--format must be events or ga4")
    if fmt == "ga4" or report:
        if fmt != "ga4":
            fail("--report is for --format ga4")
        from headwater.cli.ga4 import import_ga4

        import_ga4(
            files or [], source or "ga4", report, since, until, as_json, settings_from(config, data_dir=data_dir)
        )
        return
    if not files:
        fail("give the files to import")
    from headwater.lake.importer import Importer
    from headwater.runtime.stages import build_stages

    settings = settings_from(config, data_dir=data_dir)
    importer = Importer(settings, source or "import", stages=build_stages if stages else None)
    totals: dict[str, int] = {}
    started = time.monotonic()
    with _progress() as progress:
        for path in files or []:
            task = progress.add_task(path.name, total=None)

            def advance(n: int, task_id: Any = task) -> None:
                progress.advance(task_id, n)

            try:
                counts = importer.import_file(path, advance)
            except HeadwaterError as exc:
                fail(str(exc))
            for name, value in counts.items():
                totals[name] = totals.get(name, 0) + value
        task = progress.add_task("compacting day partitions", total=None)
        totals["partitions_compacted"] = importer.compact()
        progress.update(task, completed=1, total=1)
    importer.close()
    elapsed = time.monotonic() - started
    totals_out: dict[str, Any] = dict(totals)
    totals_out["elapsed_s"] = round(elapsed, 2)
    totals_out["rows_per_s"] = round(totals.get("rows", 0) / elapsed, 1) if elapsed else 0
    sys.stdout.write(orjson.dumps(totals_out).decode() + "\n")


@config_app.command("show")
def config_show(
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    host: HostOpt = None,
    port: PortOpt = None,
) -> None:
    """Print the effective settings (file, then HEADWATER_* env, then flags), secrets masked."""
    settings = settings_from(config, formats=False, data_dir=data_dir, host=host, port=port)
    for name, value in settings.masked().items():
        sys.stdout.write(f"{name} = {orjson.dumps(value).decode()}\n")


@config_app.command("docs")
def config_docs(
    sources: Annotated[
        bool,
        typer.Option("--sources", help="The fields of a source table (\\[\\[sources]] in headwater.toml) instead."),
    ] = False,
    alerts: Annotated[
        bool,
        typer.Option("--alerts", help="The fields of a user alert rule (\\[\\[alert_rules]]) instead."),
    ] = False,
) -> None:
    """Print every setting with its default and meaning, as a Markdown table."""
    from headwater.core.alert_settings import AlertRule
    from headwater.core.source_settings import SourceSettings

    if sources:
        sys.stdout.write(fields_markdown(SourceSettings, "source field"))
    elif alerts:
        sys.stdout.write(fields_markdown(AlertRule, "rule field"))
    else:
        sys.stdout.write(settings_markdown())


def settings_markdown() -> str:
    lines = ["| setting | env | default | meaning |", "|---|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        shown = "" if default is None else str(default)
        lines.append(f"| `{name}` | `HEADWATER_{name.upper()}` | `{shown}` | {field.description} |")
    return "\n".join(lines) + "\n"


def fields_markdown(model: type[BaseModel], title: str) -> str:
    """The fields of a settings table (a source, an alert rule) as Markdown."""
    lines = [f"| {title} | default | meaning |", "|---|---|---|"]
    for name, field in model.model_fields.items():
        default = "(required)" if field.is_required() else field.get_default(call_default_factory=True)
        shown = "" if default is None else str(default)
        lines.append(f"| `{name}` | `{shown}` | {field.description} |")
    return "\n".join(lines) + "\n"


def source_settings_markdown() -> str:
    from headwater.core.source_settings import SourceSettings

    return fields_markdown(SourceSettings, "source field")


def _register_commands() -> None:
    from headwater.cli import accounts, audit, models, plan, privacy, quarantine, sources, sqlserver, upgrade

    accounts.register(app)
    sources.register(app)
    audit.register(app)
    privacy.register(app)
    plan.register(app)
    quarantine.register(app)
    upgrade.register(app)
    models.register(app)
    sqlserver.register(app)


_register_commands()

if __name__ == "__main__":
    app()
