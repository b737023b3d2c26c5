"""Carries a deletion request through its steps; every step is idempotent and recorded when done, so a worker
killed at any point (kill -9 included) resumes the request where it stood.

Steps, in this order because each closes a door the next relies on:
1. `expand`: the people's other ids, link by link: anonymous ids their identify events carry, ids their aliases
   link; their person keys; and, with `privacy_personal_properties` (and the properties active tracking plans
   declare `x-personal`), the values those properties had.
2. `suppress`: (optional) events carrying the ids are dropped at the collector from now on.
3. `log`: the embedded log's records holding an id become ERASED (retained and not yet consumed alike).
4. `consumers`: wait until the lake writer has committed past the log's end at step 3 (what it had read
   before the erasure is in the lake by then, where step 6 finds it).
5. `processors`: processors apply the erasure to their state (ack on the board); stopped ones are erased here.
6. `tables`: copy-on-write of only the files that can hold the rows, in every table of the lake.
Then the request waits `privacy_expire_after_minutes` (queries still reading older snapshots finish), and:
7. `verify`: step 6 again, for rows that raced in while it ran (e.g. a source landing a batch read earlier);
   files are chosen by the person keys found in step 1, so rows written since with those keys are found.
8. `persons`: the ids' rows of person keys are renamed to salted hashes (the keys stay reserved); their identity
   links and merges (`headwater.lake.identity`) and session state (`headwater.enrich.sessions`) are deleted.
9. `expire`: every snapshot but the current one is expired and the files only they referenced (the old data
   files, manifests) are deleted; the catalog database's write-ahead log is checkpointed.
Completed: the request keeps only salted hashes of the ids; an audit row records it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import sqlalchemy as sa
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import CommitFailedException, NoSuchTableError
from pyiceberg.table import Table

from headwater.core import metrics
from headwater.core.erasure import Erasure, ErasureBoard, ErasureSet, Suppressor, deployment_salt, hash_id
from headwater.core.settings import Settings
from headwater.enrich.sessions import forget_sessions
from headwater.lake.identity import IdentityMap
from headwater.lake.layout import FileWriter, file_writers
from headwater.lake.rewrite import Rewriter, RewriteStats, live_files
from headwater.lake.tables import NAMESPACE, SPECS, ensure_tables, open_catalog, upgrade_properties
from headwater.log import EventLog, open_log
from headwater.privacy.expiry import drop_deleted_entries, expire_all_but_current
from headwater.privacy.requests import EXPIRING, Deletion, DeletionStore
from headwater.privacy.rules import (
    ANONYMOUS_ID_FIELD,
    PREVIOUS_ID_FIELD,
    EventCandidates,
    EventRule,
    TextRule,
    every_file,
    has_values,
)

log = logging.getLogger(__name__)
LAKE_GROUP = "lake"
STATIC_GIVE_UP_S = 90.0  # the lake writer's offsets have not moved for this long (a long compaction included)
MAX_HOPS = 5  # links followed from the ids given (user -> anonymous id, alias -> alias, ...)
HEARTBEAT_S = 5.0


class Deleter:
    def __init__(self, settings: Settings, store: DeletionStore, catalog: Catalog | None = None) -> None:
        self.settings = settings
        self.store = store
        self.engine = store.engine
        self.catalog = catalog or open_catalog(settings)
        ensure_tables(self.catalog)
        self.board = ErasureBoard(self.engine)
        self.salt = deployment_salt(self.engine, settings.privacy_salt)
        self.suppressor = Suppressor(self.engine, self.salt)
        self.files = file_writers(settings, self.engine)
        self._log: EventLog | None = None
        self._saved = 0.0

    # --- driving
    def advance(self, request: Deletion) -> None:
        """Run the request's next steps: up to the expiry wait, or to completion when that wait is over."""
        progress = request.progress
        for name, step in (
            ("expand", self._expand), ("suppress", self._suppress), ("log", self._erase_log),
            ("consumers", self._wait_consumers), ("processors", self._processors), ("tables", self._tables),
        ):  # fmt: skip
            if name not in progress:
                self._run_step(request, name, step)
        if "due" not in progress:
            progress["due"] = int((time.time() + self.settings.privacy_expire_after_minutes * 60) * 1000)
            self.store.save(request, EXPIRING, due_ms=progress["due"], holder="")
            log.info("deletion %s: tables rewritten; completes after %s", request.id, progress["due"])
        if progress["due"] > time.time() * 1000:
            if request.state != EXPIRING:
                self.store.save(request, EXPIRING, due_ms=progress["due"], holder="")
            return
        for name, step in (("verify", self._verify), ("persons", self._persons), ("expire", self._expire)):
            if name not in progress:
                self._run_step(request, name, step)
        self.board.close(self._seq(request))  # first: a crash before `complete` repeats only idempotent steps
        self.store.complete(request, self.salt)
        _checkpoint(self.engine)  # the request's row held the ids until now: fold its old page images away
        metrics.PRIVACY_DELETIONS.labels("completed").inc()
        self.audit(request, "privacy.deletion_completed", {"rows_removed": request.public()["rows_removed"]})
        log.info(
            "deletion %s completed in %.1f s",
            request.id,
            (request.completed_ms or 0) / 1000 - request.created_ms / 1000,
        )

    def _run_step(self, request: Deletion, name: str, step: Callable[[Deletion], Any]) -> None:
        request.progress["step"] = name
        self.store.save(request)
        started = time.monotonic()
        request.progress[name] = step(request)
        request.progress.setdefault("seconds", {})[name] = round(time.monotonic() - started, 3)
        self.store.save(request)

    def heartbeat(self, request: Deletion) -> None:
        """Keep the request's claim alive during a long step (at most every HEARTBEAT_S)."""
        if time.monotonic() - self._saved >= HEARTBEAT_S:
            self._saved = time.monotonic()
            self.store.save(request)

    def audit(self, request: Deletion, action: str, details: dict[str, Any]) -> None:
        """An audit row about the request (its ids as salted hashes only); a failure to write it is logged."""
        try:
            from headwater.auth.audit import AuditLog

            AuditLog(self.engine).record(
                "system", action, target=request.id, actor_kind="system",
                details={"ids_hashed": request.ids_hashed, **details},
            )  # fmt: skip
        except Exception:
            log.exception("deletion %s: could not write the audit row", request.id)

    # --- the ids
    def _ids(self, request: Deletion) -> ErasureSet:
        return ErasureSet.of(request.progress["expand"]["all"])

    def _seq(self, request: Deletion) -> int:
        seq = request.progress.get("seq")
        if seq is None:
            seq = request.progress["seq"] = self.board.publish(request.id, request.progress["expand"]["all"])
        return int(seq)

    def _expand(self, request: Deletion) -> dict[str, Any]:
        """The people's other ids, hop by hop (at most MAX_HOPS): anonymous ids on their user ids' events
        (identify), and ids aliases link to theirs in either direction; their person keys, also those of rows
        an earlier deletion of the same ids renamed (a writer may still have written with them); and the
        values of personal properties on their events."""
        users, anons = set(request.user_ids), set(request.anonymous_ids)
        from headwater.plan.ingest import active_personal_properties  # the plans' x-personal properties

        personal = sorted({*self.settings.privacy_personal_properties, *active_personal_properties(self.engine)})
        table = self.catalog.load_table(f"{NAMESPACE}.events")
        persons, rollups = self.files["events"].persons, self.files["events"].rollups
        assert persons is not None and rollups is not None
        columns = ["user_id", "anonymous_id", "previous_id", *(("properties", "traits") if personal else ())]
        found: list[pa.Table] = []
        frontier, scanned = users | anons, 0
        for _hop in range(MAX_HOPS):
            if not frontier:
                break
            keys = self._keys(frontier)
            files = EventCandidates(rollups, keys)(table, live_files(table))
            if not personal:  # other ids come from rows with an anonymous or previous id: skip files with none
                files = [f for f in files if has_values(f, ANONYMOUS_ID_FIELD) or has_values(f, PREVIOUS_ID_FIELD)]
            wanted = pa.array(sorted(frontier), pa.string())

            def read(path: str, wanted: pa.Array = wanted) -> pa.Table:
                with table.io.new_input(path).open() as stream:
                    rows = pq.read_table(stream, columns=columns)
                mine = pc.or_(_member(rows.column("user_id"), wanted), _member(rows.column("previous_id"), wanted))
                return rows.filter(pc.or_(mine, _member(rows.column("anonymous_id"), wanted)))

            with ThreadPoolExecutor(2) as pool:
                parts = [part for part in pool.map(read, [f.file_path for f in files]) if part.num_rows]
            scanned += len(files)
            self.heartbeat(request)
            known = users | anons
            for rows in parts:
                found.append(rows)
                user_set = pa.array(sorted(users), pa.string())
                of_users = rows.filter(_member(rows.column("user_id"), user_set))
                anons |= {a for a in of_users.column("anonymous_id").to_pylist() if a}
                linked = {a for a in of_users.column("previous_id").to_pylist() if a}  # aliases: earlier ids
                renamed = rows.filter(_member(rows.column("previous_id"), pa.array(sorted(known), pa.string())))
                linked |= {u for u in renamed.column("user_id").to_pylist() if u}  # aliases: later ids
                users |= linked
                anons |= linked
            frontier = (users | anons) - known
        everyone = users | anons
        values: dict[str, list[str]] = {}
        if found and personal:  # from the rows that are theirs (not a shared device's other user's)
            rows = pa.concat_tables(found)
            values = _personal_values(
                rows.filter(EventRule(ErasureSet.of(users), ErasureSet.of(everyone)).remove(rows)), personal
            )
        return {
            "users": sorted(users), "anons": sorted(anons), "all": sorted(everyone), "personal": values,
            "keys": sorted(self._keys(everyone)), "files_scanned": scanned,
        }  # fmt: skip

    def _keys(self, ids: set[str]) -> set[int]:
        """Person keys of `ids`: their rows in `headwater_person_keys`, and rows an earlier deletion renamed."""
        persons = self.files["events"].persons
        assert persons is not None
        keys = set(persons.keys_of(ids).values())
        return keys | persons.erased_keys(self._erased_name(i) for i in ids)

    def _erased_name(self, person_id: str) -> str:
        return "erased:" + hash_id(person_id, self.salt)

    def _suppress(self, request: Deletion) -> dict[str, Any]:
        days = request.suppress_days or self.settings.privacy_suppress_days
        if days <= 0:
            return {"days": 0}
        added = self.suppressor.add(request.progress["expand"]["all"], days)
        time.sleep(self.suppressor.refresh_s + 1)  # every collector has re-read the list before the log is erased
        return {"days": days, "ids": added}

    # --- the log and the components reading it
    @property
    def event_log(self) -> EventLog:
        if self._log is None:
            self._log = open_log(self.settings)
        return self._log

    def _erase_log(self, request: Deletion) -> dict[str, Any]:
        self._seq(request)
        event_log = self.event_log
        ends = event_log.admin().end_offsets()
        out: dict[str, Any] = {"ends": {str(p): o for p, o in ends.items()}}
        if event_log.erasable:
            out["records_erased"] = event_log.erase(self._ids(request))
        else:
            out["records_erased"] = {}
            request.progress.setdefault("notes", []).append(
                "the Kafka topics keep these records until their retention deletes them (Kafka cannot erase a record)"
            )
        try:
            from headwater.sources.status import erase_rejections

            out["source_rejections_erased"] = erase_rejections(self.settings, self._ids(request))
        except ImportError:
            pass
        return out

    def _wait_consumers(self, request: Deletion) -> dict[str, Any]:
        ends = {int(p): int(o) for p, o in request.progress["log"]["ends"].items()}
        admin = self.event_log.admin()
        deadline = time.monotonic() + self.settings.privacy_wait_consumers_s
        last: dict[int, int] | None = None
        moved_at = time.monotonic()
        while True:
            committed = admin.group_offsets().get(LAKE_GROUP)
            if committed is None:
                return {"lake": "no lake writer has run yet"}
            behind = {p: end for p, end in ends.items() if end > 0 and committed.get(p, 0) < end}
            if not behind:
                return {"lake": "caught up"}
            if committed != last:
                last, moved_at = dict(committed), time.monotonic()
            if self.event_log.erasable and time.monotonic() - moved_at > STATIC_GIVE_UP_S:
                return {"lake": "not running (what it will read was erased)"}
            if time.monotonic() > deadline:
                note = f"the lake writer had not caught up after {self.settings.privacy_wait_consumers_s:.0f} s"
                request.progress.setdefault("notes", []).append(note)
                return {"lake": "timed out"}
            self.heartbeat(request)
            time.sleep(0.5)

    def _processors(self, request: Deletion) -> dict[str, Any]:
        """Processors apply the erasure to their state: running ones themselves (they acknowledge on the
        board), stopped ones here; waits up to privacy_wait_consumers_s for the running ones."""
        from headwater.processing.erasure import consumer_name, erase_stopped_processors
        from headwater.processing.savepoints import erase_savepoints

        seq = self._seq(request)
        self.board.mark_ready(seq)
        erasure = Erasure(seq, request.id, self._ids(request))
        saved = erase_savepoints(self.settings, erasure)  # savepoints hold state too (personal data)
        if saved["files"]:
            request.progress["savepoint_files_erased"] = saved["files"]
        deadline = time.monotonic() + self.settings.privacy_wait_consumers_s
        while True:
            found = erase_stopped_processors(self.settings, erasure, self.board)
            acks = self.board.acks(seq)
            waiting = sorted(name for name in found if consumer_name(name) not in acks)
            if not waiting:
                return {name: json.loads(acks[consumer_name(name)] or "{}") for name in found}
            if time.monotonic() > deadline:
                note = f"processors {', '.join(waiting)} had not applied the erasure; they do when they next run"
                request.progress.setdefault("notes", []).append(note)
                return {name: {"acked": consumer_name(name) in acks} for name in found}
            self.heartbeat(request)
            time.sleep(0.5)

    # --- the lake
    def _tables(self, request: Deletion) -> dict[str, Any]:
        return self._rewrite_tables(request, "tables")

    def _verify(self, request: Deletion) -> dict[str, Any]:
        return self._rewrite_tables(request, "verify")

    def _rewrite_tables(self, request: Deletion, step: str) -> dict[str, Any]:
        done: dict[str, Any] = request.progress.setdefault(f"{step}_partial", {})
        expand = request.progress["expand"]
        users, everyone = ErasureSet.of(expand["users"]), ErasureSet.of(expand["all"])
        personal = {k: ErasureSet.of(v) for k, v in expand.get("personal", {}).items()}
        values = [v for vs in expand.get("personal", {}).values() for v in vs]
        for name in self._table_names():
            if name in done:
                continue
            try:
                table = self.catalog.load_table(f"{NAMESPACE}.{name}")
            except NoSuchTableError:
                continue
            stats = self._rewrite_table(request, name, table, users, everyone, personal, values)
            done[name] = stats.as_dict()
            metrics.PRIVACY_ROWS_REMOVED.labels(name).inc(stats.rows_removed)
            self.store.save(request)
        request.progress.pop(f"{step}_partial", None)
        return done

    def _rewrite_table(
        self, request: Deletion, name: str, table: Table, users: ErasureSet, everyone: ErasureSet,
        personal: dict[str, ErasureSet], values: list[str],
    ) -> RewriteStats:  # fmt: skip
        with contextlib.suppress(CommitFailedException):  # a table made by an older Headwater: no id bounds
            upgrade_properties(table)
        writer = self.files.get(name) or FileWriter(name, self.settings.lake_file_target_mb)
        candidates: Any
        if name == "events":
            assert writer.rollups is not None and writer.persons is not None
            keys = request.progress["expand"]["keys"]
            candidates = EventCandidates(writer.rollups, keys, every_file=bool(personal))
            rule: Any = EventRule(users, everyone, personal)
        elif name == "quarantine":
            candidates, rule = every_file, TextRule(ErasureSet.of([*everyone.ids, *values]), ["raw"])
        else:
            candidates, rule = every_file, TextRule(everyone)
        rewriter = Rewriter(table, writer, threads=min(4, os.cpu_count() or 2))  # 3 threads on 2 cores: no faster
        stats = rewriter.run(rule, candidates, progress=lambda _done, _total: self.heartbeat(request))
        if stats.rows_removed or stats.rows_changed:
            log.info("deletion %s: %s: %s", request.id, name, json.dumps(stats.as_dict()))
        return stats

    def _table_names(self) -> list[str]:
        names = [ident[-1] for ident in self.catalog.list_tables(NAMESPACE)]
        return [*SPECS, *sorted(n for n in names if n not in SPECS)]

    def _persons(self, request: Deletion) -> dict[str, Any]:
        """Person keys renamed to salted hashes; the ids' identity links, merges and session state deleted."""
        persons = self.files["events"].persons
        assert persons is not None
        ids = request.progress["expand"]["all"]
        removed = persons.forget({i: self._erased_name(i) for i in ids})
        IdentityMap(self.engine).forget(ids)
        sessions = forget_sessions(self.engine, ids)
        return {"removed": removed, "sessions": sessions}

    def _expire(self, request: Deletion) -> dict[str, Any]:
        deleted = 0
        for name in self._table_names():
            try:
                table = self.catalog.load_table(f"{NAMESPACE}.{name}")
            except NoSuchTableError:
                continue
            for attempt in range(20):
                try:
                    drop_deleted_entries(table)
                    paths = expire_all_but_current(table)
                    break
                except CommitFailedException:
                    table.refresh()
                    time.sleep(0.05 * (attempt + 1))
            else:
                raise RuntimeError(f"{name}: could not expire its snapshots (the table is too busy)")
            deleted += len(paths)
            writer = self.files.get(name)
            if writer is not None and writer.rollups is not None:
                writer.rollups.delete(paths)
            self.heartbeat(request)
        _checkpoint(self.engine)
        return {"files_deleted": deleted, "upgrade_backups_deleted": self._drop_backups()}

    def _drop_backups(self) -> int:
        """Delete the upgrade backups of the data directory: copies of the databases and the log from before the
        deletion, they hold the people it deletes (a rollback to them would bring those people back)."""
        folder = self.settings.data_dir / "backups"
        if not folder.is_dir():
            return 0
        dropped = 0
        for backup in sorted(folder.iterdir()):
            if backup.is_dir():
                shutil.rmtree(backup)
                dropped += 1
        if dropped:
            log.warning("deletion: %d upgrade backup(s) in %s deleted (they held the deleted people)", dropped, folder)
        return dropped


def _member(column: pa.ChunkedArray, values: pa.Array) -> pa.ChunkedArray:
    return pc.fill_null(pc.is_in(column, value_set=values), False)


def _personal_values(rows: pa.Table, personal: list[str]) -> dict[str, list[str]]:
    """The values the people's events gave the personal properties (in properties or traits)."""
    con = duckdb.connect()
    try:
        con.register("mine", rows)
        out: dict[str, list[str]] = {}
        for key in personal:
            path = "$." + json.dumps(key)
            found = con.execute(
                "SELECT DISTINCT v FROM (SELECT json_extract_string(properties, ?) AS v FROM mine UNION ALL "
                "SELECT json_extract_string(traits, ?) FROM mine) WHERE v IS NOT NULL AND v <> ''",
                [path, path],
            ).fetchall()
            if found:
                out[key] = sorted(str(v) for (v,) in found)
        return out
    finally:
        con.close()


def _checkpoint(engine: sa.Engine) -> None:
    """Fold the SQLite write-ahead log into the database file, so old page images of erased rows go."""
    if engine.dialect.name != "sqlite":
        return
    with engine.connect() as conn:
        conn.execute(sa.text("PRAGMA wal_checkpoint(TRUNCATE)"))
