"""`headwater plan check|push|diff|list|show|activate|deactivate`: tracking plans as code.

`check` needs nothing but the plan directory (for users' CI): it exits 1 on any error, and compares the version
with the one before it (as `push` will) on a running Headwater (`--server URL --key KEY`), in the catalog database
when one is there (data directory or `catalog_uri`), or with `--base DIR`. The other commands read and write the
catalog database of the data directory or `catalog_uri`, like `privacy`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table as RichTable

from headwater.cli.options import ConfigOpt, DataDirOpt

plan_app = typer.Typer(
    help="Tracking plans as code: check a plan directory (CI), push versions, diff and activate them.",
    no_args_is_help=True,
)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
CHECK_EPILOG = (
    "Exit status: 0 no error, 1 errors found (or warnings with --strict), 2 wrong usage.\n\n"
    "Examples: headwater plan check plan/ --against samples.ndjson;  "
    "headwater plan check plan/ --against-sql \"SELECT event, properties FROM events WHERE source = 'web' LIMIT 1000\""
)


def _out(payload: Any) -> None:
    sys.stdout.write(orjson.dumps(payload, option=orjson.OPT_INDENT_2, default=str).decode() + "\n")


def _print(text: str, style: str | None = None) -> None:
    Console(soft_wrap=True, highlight=False).print(escape(text), style=style)


def _catalog_present(settings: Any) -> bool:
    """Whether a catalog database is there to read (never creates one: `check` runs in CI without any)."""
    if settings.catalog_uri:
        return True
    return bool((settings.data_dir / "catalog.db").exists())


def register(app: typer.Typer) -> None:
    from headwater.cli.main import fail, settings_from

    app.add_typer(plan_app, name="plan")

    def open_store(config: Path | None, data_dir: Path | None, must: bool = True) -> Any:
        """The plan store of the catalog database (created when `must`; else None when there is none)."""
        from sqlalchemy.exc import SQLAlchemyError

        from headwater.plan.store import open_plan_store

        settings = settings_from(config, data_dir=data_dir)
        if not must and not _catalog_present(settings):
            return None
        try:
            return open_plan_store(settings.effective_catalog_uri)
        except SQLAlchemyError as exc:
            if must:
                fail(f"cannot open the catalog database: {str(exc).strip().splitlines()[0]}")
            reason = str(exc).strip().splitlines()[0]
            Console(stderr=True).print(f"note: catalog database unreachable: {escape(reason)}", highlight=False)
            return None

    def load_ref(store: Any, ref: str) -> Any:
        """A plan from a directory, `name@M-R-A` or `M-R-A`."""
        from headwater.plan.load import PlanError, load_plan

        try:
            if Path(ref).is_dir():
                return load_plan(ref)[0]
            if store is None:
                fail(f"{ref}: not a directory, and no catalog database to find a pushed version in")
            name, version = store.resolve(ref)
            return store.get(name, version)
        except PlanError as exc:
            _problems(exc.problems)
            fail(str(exc))

    @plan_app.command("check", epilog=CHECK_EPILOG)
    def check(
        directory: Annotated[Path, typer.Argument(help="The plan directory (plan.json, definitions.json, events/).")],
        against: Annotated[
            list[Path] | None,
            typer.Option("--against", help="NDJSON sample events as sent (/track or Segment shape); repeatable."),
        ] = None,
        against_sql: Annotated[
            str | None,
            typer.Option("--against-sql", help="A SELECT over the lake returning event and properties columns."),
        ] = None,
        base: Annotated[
            Path | None,
            typer.Option("--base", help="Compare with this plan directory (default: the version before it)."),
        ] = None,
        server: Annotated[
            str | None,
            typer.Option("--server", help="Compare with the active plan of this Headwater (URL; needs --key)."),
        ] = None,
        key: Annotated[
            str | None, typer.Option("--key", help="An API key (read is enough) for --server.", envvar="HEADWATER_KEY")
        ] = None,
        strict: Annotated[bool, typer.Option("--strict", help="Warnings fail the check too.")] = False,
        as_json: JsonOpt = False,
        config: ConfigOpt = None,
        data_dir: DataDirOpt = None,
    ) -> None:
        """Validate and lint a plan directory, check its version against the one pushed before it, and samples."""
        from headwater.plan.compat import version_problems
        from headwater.plan.lint import check_files
        from headwater.plan.load import PlanError, Problem, read_files

        report: dict[str, Any] = {"directory": str(directory), "plan": None, "compared_with": None, "changes": []}
        notes: list[str] = []
        try:
            files = read_files(directory)
        except PlanError as exc:
            return _finish(report, exc.problems or [Problem("error", "file", str(exc))], notes, strict, as_json)
        loaded = check_files(files)
        problems = list(loaded.problems)
        plan = loaded.plan
        if plan is None or loaded.errors:
            return _finish(report, problems, notes, strict, as_json)
        report["plan"] = f"{plan.name}@{plan.version}"
        report["events"] = len(plan.events)
        old, label = None, None
        if base is not None:
            try:
                old, label = load_plan_dir(base), f"{base}"
            except PlanError as exc:
                problems.append(Problem("error", "base", f"--base {base}: {exc}"))
        elif server is not None:
            try:
                old, label, more = _stored_base(RemotePlans(server, key), plan, files)
                problems += more
            except PlanError as exc:
                problems.append(Problem("error", "server", f"--server {server}: {exc}"))
            if old is None and not any(p.rule == "server" for p in problems):
                notes.append(f"nothing to compare with on {server}")
        else:
            store = open_store(config, data_dir, must=data_dir is not None)
            if store is None:
                notes.append("no data directory or catalog database: not compared with an active version "
                             "(give --server URL --key KEY, --data-dir, or --base DIR)")  # fmt: skip
            else:
                try:
                    old, label, more = _stored_base(store, plan, files)
                    problems += more
                finally:
                    store.close()
                if old is None:
                    notes.append(f"nothing to compare with: {plan.name} {plan.version} is pushed as it is, or no "
                                 "earlier version is")  # fmt: skip
        if old is not None:
            changes, more = version_problems(old, plan)
            problems += more
            report["compared_with"] = label
            report["changes"] = [c.public() for c in changes]
            notes.append(f"compared with {label}: {len(changes)} change(s)")
        samples = []
        for path in against or []:
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                problems.append(Problem("error", "sample", f"cannot read: {exc}", str(path)))
                continue
            samples.append(_samples_from_text(plan, text, str(path), problems))
        if against_sql:
            samples.append(_samples_from_sql(plan, against_sql, config, data_dir, problems))
        if samples:
            report["samples"] = samples
        return _finish(report, problems, notes, strict, as_json)

    def load_plan_dir(path: Path) -> Any:
        from headwater.plan.load import load_plan

        return load_plan(path)[0]

    def _samples_from_sql(plan: Any, sql: str, config: Path | None, data_dir: Path | None, problems: list[Any]) -> Any:
        from headwater.core.errors import HeadwaterError
        from headwater.plan.lint import sample_problems
        from headwater.plan.load import Problem, rows_table
        from headwater.query.engine import QueryEngine

        settings = settings_from(config, data_dir=data_dir)
        if not _catalog_present(settings):
            problems.append(Problem("error", "sample", f"--against-sql needs the lake: no data in {settings.data_dir}"))
            return {"sql": sql, "events": 0}
        try:
            engine = QueryEngine(settings)
            try:
                result = engine.execute(sql)
            finally:
                engine.close()
            events, labels = rows_table(result.columns, result.rows)
        except HeadwaterError as exc:
            problems.append(Problem("error", "sample", f"--against-sql: {exc}"))
            return {"sql": sql, "events": 0}
        found = sample_problems(plan, events, labels)
        problems += found
        return {"sql": sql, "events": events.num_rows, "violations": sum(p.level == "error" for p in found)}

    @plan_app.command("push")
    def push(
        directory: Annotated[Path, typer.Argument(help="The plan directory.")],
        activate: Annotated[
            str | None, typer.Option("--activate", help="Also make it the plan of this source (* for every source).")
        ] = None,
        force: Annotated[
            bool, typer.Option("--force", help="Push even when the version does not fit the changes.")
        ] = False,
        as_json: JsonOpt = False,
        config: ConfigOpt = None,
        data_dir: DataDirOpt = None,
    ) -> None:
        """Publish a plan version (checked first, as `plan check` does); versions are kept forever."""
        import socket

        from headwater.auth.audit import cli_actor
        from headwater.plan.load import PlanError, read_files
        from headwater.plan.store import publish

        store = open_store(config, data_dir)
        try:
            files = read_files(directory)
            done = publish(store, files, activate=activate, force=force, actor=cli_actor(),
                           address=socket.gethostname(), actor_kind="cli")  # fmt: skip
        except PlanError as exc:
            _problems(exc.problems)
            fail(str(exc))
            return
        finally:
            store.close()
        if as_json:
            return _out(done)
        what = "pushed" if done["stored"] else "already pushed (same files)"
        _print(f"{done['plan']}: {what}" + (f", active for {activate}" if activate else ""))
        if done["compared_with"]:
            _print(f"compared with {done['name']}@{done['compared_with']}: {len(done['changes'])} change(s)")
        for warning in done["warnings"]:
            _print(_problem_text(warning), "yellow")

    @plan_app.command("diff")
    def diff(
        a: Annotated[str, typer.Argument(help="name@M-R-A, M-R-A (of the active plan) or a plan directory.")],
        b: Annotated[str, typer.Argument(help="The same forms; the newer one.")],
        as_json: JsonOpt = False,
        config: ConfigOpt = None,
        data_dir: DataDirOpt = None,
    ) -> None:
        """Every change from A to B with its SchemaVer class (ADDITION, REVISION, MODEL) and the version B needs."""
        from headwater.plan.compat import bump, check_version, top_level
        from headwater.plan.compat import diff as plan_diff

        needs_store = not (Path(a).is_dir() and Path(b).is_dir())
        store = open_store(config, data_dir) if needs_store else None
        try:
            old, new = load_ref(store, a), load_ref(store, b)
        finally:
            if store is not None:
                store.close()
        changes = plan_diff(old, new)
        level = top_level(changes)
        verdict = check_version(old, new, changes)
        summary = {"a": f"{old.name}@{old.version}", "b": f"{new.name}@{new.version}", "level": level,
                   "needs": bump(old.version, level) if level else None, "version_ok": verdict is None,
                   "problem": verdict, "changes": [c.public() for c in changes]}  # fmt: skip
        if as_json:
            return _out(summary)
        _print(f"{summary['a']} → {summary['b']}: {len(changes)} change(s)")
        for change in changes:
            _print("  " + change.text(), {"MODEL": "red", "REVISION": "yellow"}.get(change.level))
        if level:
            _print(f"highest class: {level}; needs version {summary['needs']} or later")
        if verdict:
            _print(verdict, "red")

    @plan_app.command("list")
    def list_versions(
        name: Annotated[str | None, typer.Argument(help="Only this plan's versions.")] = None,
        as_json: JsonOpt = False,
        config: ConfigOpt = None,
        data_dir: DataDirOpt = None,
    ) -> None:
        """Pushed versions (newest first) and the sources each one is active for."""
        store = open_store(config, data_dir)
        try:
            rows, active = store.versions(name), store.active()
        finally:
            store.close()
        if as_json:
            return _out({"versions": rows, "active": active})
        table = RichTable("plan", "version", "pushed (UTC)", "by", "active for")
        for row in rows:
            pushed = (row["pushed_at"] or "").replace("T", " ").rstrip("Z")
            table.add_row(row["name"], row["version"], pushed, row["pushed_by"], ", ".join(row["active_for"]))
        Console(soft_wrap=True).print(table)
        if not rows:
            _print("no plan pushed yet: headwater plan push DIR")

    @plan_app.command("show")
    def show(
        ref: Annotated[
            str | None, typer.Argument(help="name@M-R-A, M-R-A or a directory (default: the plan active for *).")
        ] = None,
        as_json: JsonOpt = False,
        config: ConfigOpt = None,
        data_dir: DataDirOpt = None,
    ) -> None:
        """A version's events and properties (type, required, personal data, description)."""
        from headwater.plan.store import DEFAULT_SOURCE, plan_json

        store = open_store(config, data_dir, must=ref is None or not Path(ref).is_dir())
        try:
            if ref is None:
                active = store.active()
                if DEFAULT_SOURCE not in active:
                    fail("no plan is active for every source (*): give name@version (see `headwater plan list`)")
                ref = f"{active[DEFAULT_SOURCE]['name']}@{active[DEFAULT_SOURCE]['version']}"
            plan = load_ref(store, ref)
            sources = [s for s, r in (store.active().items() if store else ()) if (r["name"], r["version"]) ==
                       (plan.name, plan.version)]  # fmt: skip
        finally:
            if store is not None:
                store.close()
        doc = plan_json(plan, sources)
        if as_json:
            return _out(doc)
        where = f" (active for {', '.join(sources)})" if sources else ""
        _print(f"{doc['ref']}{where}: {doc['description'] or ''}")
        _print(f"enforcement {doc['enforcement']}, unplanned events {doc['unplanned']}, naming {doc['naming']}")
        for event in doc["events"]:
            table = RichTable("property", "type", "required", "personal", "description", title=None)
            for p in event["properties"]:
                table.add_row(p["path"], "/".join(p["types"]) or "any", "yes" if p["required"] else "",
                              p["personal"] or "", p["description"] or "")  # fmt: skip
            _print(f"\n{event['name']} [{event['mode']}] {event['description'] or ''}", "bold")
            Console(soft_wrap=True).print(table)

    @plan_app.command("activate")
    def activate(
        ref: Annotated[str, typer.Argument(help="name@M-R-A (or M-R-A of the plan already active).")],
        source: Annotated[str, typer.Option("--source", "-s", help="The source it applies to (* for all).")] = "*",
        config: ConfigOpt = None,
        data_dir: DataDirOpt = None,
    ) -> None:
        """Make a pushed version the plan of a source (events keep the version they were validated with)."""
        import socket

        from headwater.auth.audit import cli_actor
        from headwater.plan.load import PlanError

        store = open_store(config, data_dir)
        try:
            name, version = store.resolve(ref)
            store.activate(source, name, version, actor=cli_actor(), address=socket.gethostname(), actor_kind="cli")
        except PlanError as exc:
            fail(str(exc))
        finally:
            store.close()
        _print(f"{name}@{version} is active for {source}")

    @plan_app.command("deactivate")
    def deactivate(
        source: Annotated[str, typer.Option("--source", "-s", help="The source (* for the default plan).")] = "*",
        config: ConfigOpt = None,
        data_dir: DataDirOpt = None,
    ) -> None:
        """Stop enforcing a plan for a source (it falls back to the plan for *, if any)."""
        from headwater.auth.audit import cli_actor

        store = open_store(config, data_dir)
        try:
            removed = store.deactivate(source, actor=cli_actor(), actor_kind="cli")
        finally:
            store.close()
        _print(f"no plan active for {source} any more" if removed else f"no plan was active for {source}")


class RemotePlans:
    """The reading side of a PlanStore over the HTTP API of a running Headwater (for `check --server`)."""

    def __init__(self, url: str, key: str | None) -> None:
        import httpx

        self.client = httpx.Client(base_url=url.rstrip("/"), timeout=30,
                                   headers={"Authorization": f"Bearer {key}"} if key else {})  # fmt: skip
        self._listing: dict[str, Any] | None = None

    def _get(self, path: str) -> Any:
        import httpx

        from headwater.plan.load import PlanError

        try:
            answer = self.client.get(path)
        except httpx.HTTPError as exc:
            raise PlanError(f"cannot reach it: {exc}") from None
        if answer.status_code != 200:
            try:
                reason = answer.json().get("error", answer.text)
            except ValueError:
                reason = answer.text[:200]
            raise PlanError(f"{path}: HTTP {answer.status_code}: {reason}")
        return answer.json()

    def _versions(self) -> dict[str, Any]:
        if self._listing is None:
            self._listing = self._get("/api/plans")
        return self._listing

    def active(self) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = self._versions()["active"]
        return found

    def versions(self, name: str) -> list[dict[str, Any]]:
        return [v for v in self._versions()["versions"] if v["name"] == name]

    def files(self, name: str, version: str) -> dict[str, str]:
        from urllib.parse import quote

        found: dict[str, str] = self._get(f"/api/plans/{quote(name)}/{quote(version)}?files=1")["files"]
        return found

    def get(self, name: str, version: str) -> Any:
        from headwater.plan.load import plan_from_files

        return plan_from_files(self.files(name, version))

    def predecessor(self, name: str, version: str) -> str | None:
        from headwater.plan.compat import parse_version

        below = [v["version"] for v in self.versions(name) if parse_version(v["version"]) < parse_version(version)]
        return max(below, key=parse_version, default=None)


def _stored_base(store: Any, plan: Any, files: dict[str, str]) -> tuple[Any, str | None, list[Any]]:
    """The version to compare with, as `plan push` will: this very version when it was pushed with other files,
    else the highest pushed below it (normally the active one); and a warning when a source runs a newer one."""
    from headwater.plan.compat import parse_version
    from headwater.plan.load import Problem

    active: dict[str, list[str]] = {}
    for source, row in store.active().items():
        if row["name"] == plan.name:
            active.setdefault(row["version"], []).append(source)
    problems = [
        Problem("warning", "version", f"{plan.name} {version} is active for {', '.join(sorted(sources))}: this "
                f"plan's version {plan.version} is older", "plan.json", path="$.version")
        for version, sources in active.items()
        if parse_version(version) > parse_version(plan.version)
    ]  # fmt: skip
    stored = {v["version"] for v in store.versions(plan.name)}
    if plan.version in stored:
        if store.files(plan.name, plan.version) == files:
            return None, None, problems  # this very version, as pushed
        return store.get(plan.name, plan.version), f"{plan.name}@{plan.version} (pushed before)", problems
    below = store.predecessor(plan.name, plan.version)
    if below is None:
        return None, None, problems
    where = f"active for {', '.join(sorted(active[below]))}" if below in active else "pushed"
    return store.get(plan.name, below), f"{plan.name}@{below} ({where})", problems


def _samples_from_text(plan: Any, text: str, name: str, problems: list[Any]) -> dict[str, Any]:
    from headwater.plan.lint import sample_problems
    from headwater.plan.load import read_samples

    events, labels, refused = read_samples(text, name)
    problems += refused
    found = sample_problems(plan, events, labels) if events.num_rows else []
    problems += found
    return {"file": name, "events": events.num_rows, "violations": sum(p.level == "error" for p in found)}


def _problem_text(problem: dict[str, Any]) -> str:
    """A problem given as a dict (as `publish` returns them) as a line."""
    from headwater.plan.load import Problem

    return Problem(**problem).text()


def _problems(problems: list[Any]) -> None:
    for problem in problems:
        _print(problem.text(), "red" if problem.level == "error" else "yellow")


def _finish(report: dict[str, Any], problems: list[Any], notes: list[str], strict: bool, as_json: bool) -> None:
    from headwater.plan.compat import Change

    errors = sum(p.level == "error" for p in problems)
    warnings = len(problems) - errors
    ok = errors == 0 and not (strict and warnings)
    report.update(ok=ok, errors=errors, warnings=warnings, notes=notes, problems=[p.public() for p in problems])
    if as_json:
        _out(report)
    else:
        head = report["plan"] or report["directory"]
        _print(f"{head}: {report.get('events', 0)} events" if report["plan"] else f"{head}:")
        _problems(problems)
        for change in report["changes"]:
            _print("  " + Change(**change).text())
        for note in notes:
            _print(note)
        for sample in report.get("samples", []):
            _print(f"samples {sample.get('file') or 'from SQL'}: {sample['events']} events, "
                   f"{sample.get('violations', 0)} violation(s)")  # fmt: skip
        verdict = "ok" if ok else "failed"
        _print(f"{verdict}: {errors} error(s), {warnings} warning(s)", "green" if ok else "red")
    if not ok:
        raise typer.Exit(1)
