"""`prepare(settings)`: what every Headwater process calls first, before it opens anything in the data directory.

1. Read every format marker (`status.inspect`); refuse anything newer than this version knows (UpgradeError).
2. Nothing to write (the usual start): return. Otherwise take an exclusive fcntl lock on `<data_dir>/upgrade.lock`
   (processes started together wait; the first one upgrades, the others find it done) and read the markers again.
3. Upgrade: record the upgrade in FORMAT.json ({"format": old, "upgrade": {...}}), back up the local databases the
   pending steps change (`upgrade_backup`), run each pending step and record it, give new directories and
   databases their markers, and last write FORMAT.json with the current format. A kill -9 anywhere leaves either
   the old format with a recorded upgrade in progress or the new one: the next start resumes (every step is
   idempotent; database steps commit with their version row).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from headwater.core.errors import UpgradeError
from headwater.core.settings import Settings
from headwater.upgrade.backup import make_backup
from headwater.upgrade.formats import (
    CURRENT,
    WRITTEN_BY,
    create_format_table,
    engine_on,
    is_local_sqlite,
    log_files,
    read_format_file,
    write_database_format,
    write_format_file,
)
from headwater.upgrade.status import Component, Status, inspect
from headwater.upgrade.steps import Step

log = logging.getLogger(__name__)
LOCK_FILE = "upgrade.lock"
PAUSE_ENV = "HEADWATER_TEST_UPGRADE_PAUSE"  # tests: hang at this point ("backup", "step:<id>") to be killed there
Progress = Callable[[str], None]


def prepare(settings: Settings, progress: Progress | None = None) -> Status:
    """Refuse newer formats, upgrade older ones, mark new ones; return the final status."""
    data_dir = settings.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    status = _checked(settings)
    if not status.needs_write:
        return status
    with upgrade_lock(data_dir):
        status = _checked(settings)
        if status.needs_write:
            _upgrade(settings, status, progress or (lambda message: log.info("%s", message)))
            status = _checked(settings)
    return status


def check(settings: Settings) -> Status:
    """The status without writing anything (refusing nothing either): `headwater upgrade --check`."""
    return inspect(settings)


@contextlib.contextmanager
def upgrade_lock(data_dir: Path) -> Iterator[None]:
    """Exclusive lock of the data directory's upgrade (released by the kernel if the holder dies)."""
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("another process is upgrading %s; waiting for it", data_dir)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _checked(settings: Settings) -> Status:
    status = inspect(settings)
    if status.newer:
        raise UpgradeError("\n".join(status.newer))
    return status


def _upgrade(settings: Settings, status: Status, say: Progress) -> None:
    data_dir = settings.data_dir
    old = next(c for c in status.components if c.name == "data_dir").found.version
    document: dict[str, Any] = dict(status.document or {"format": old or CURRENT["data_dir"]})
    if status.pending:
        _run_steps(settings, status, document, say)
    for component in status.components:  # new databases get their markers
        if component.name in ("catalog", "accounts") and component.uri and component.found.version is None:
            _stamp_database(component.uri, component.name)
    history = list(document.get("history", []))
    upgrade = document.get("upgrade")
    if upgrade is None and old is not None and old < CURRENT["data_dir"]:  # nothing to change but the marker
        upgrade = {"from": old, "to": CURRENT["data_dir"], "by": WRITTEN_BY, "steps_done": [], "started": _now()}
    if upgrade is not None:
        history.append({**upgrade, "finished": _now()})
    final: dict[str, Any] = {"format": CURRENT["data_dir"], "components": dict(CURRENT), "written_by": WRITTEN_BY,
                             "history": history}  # fmt: skip
    if old is None or "created" in document:
        final["created"] = document.get("created") or _now()
    write_format_file(data_dir, final)
    if upgrade is not None:
        say(f"{data_dir} is now in format {CURRENT['data_dir']} ({len(upgrade['steps_done'])} step(s) done)")


def _run_steps(settings: Settings, status: Status, document: dict[str, Any], say: Progress) -> None:
    """Record the upgrade, back up, run and record each pending step (FORMAT.json rewritten after each)."""
    data_dir = settings.data_dir
    upgrade = document.setdefault(
        "upgrade", {"from": document["format"], "to": CURRENT["data_dir"], "by": WRITTEN_BY, "steps_done": [],
                    "started": _now()},
    )  # fmt: skip
    write_format_file(data_dir, document)
    say(f"upgrading {data_dir} (format {upgrade['from']} -> {upgrade['to']}): {len(status.pending)} step(s)")
    if settings.upgrade_backup and "backup" not in upgrade:
        upgrade["backup"] = _backup(settings, status, upgrade, say)
        write_format_file(data_dir, document)
    _pause("backup-done")
    for component in status.components:
        for step in component.steps:
            say(f"step {step.id}: {step.description}" + (f" ({component.where})" if component.uri else ""))
            _run(settings, component, step)
            upgrade["steps_done"].append(step.id if component.uri is None else f"{step.id} {component.where}")
            write_format_file(data_dir, document)
            _pause(f"step:{step.id}")


def _backup(settings: Settings, status: Status, upgrade: dict[str, Any], say: Progress) -> str:
    files: list[Path] = []
    not_copied: list[str] = []
    for component in status.components:
        if not component.steps:
            continue
        if component.name == "log":
            files += log_files(settings.data_dir)
        elif component.uri:
            local = is_local_sqlite(component.uri)
            if local is not None:
                files.append(local)
            else:
                not_copied.append(f"{component.name}: {component.where} (back it up with the database's tools)")
                log.warning("the %s database %s is not copied by the upgrade's backup", component.name, component.where)
    name = f"{upgrade['from']}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    say(f"backing up {len(files)} database(s) to {settings.data_dir / 'backups' / name}")
    before = {k: v for k, v in status.document.items() if k != "upgrade"} if status.document else None
    files = list(dict.fromkeys(files))
    path = make_backup(settings.data_dir, files, name, not_copied, before, lambda n: _pause("backup"))
    return str(path.relative_to(settings.data_dir))


def _run(settings: Settings, component: Component, step: Step) -> None:
    if component.name == "log":
        step.run(settings.data_dir)
        return
    assert component.uri is not None
    with engine_on(component.uri) as engine:
        create_format_table(engine)
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":  # nodes sharing the database: one runs the step
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": 0x68777570})
            done = conn.execute(
                sa.text("SELECT version FROM headwater_format WHERE component = :c"), {"c": component.name}
            ).scalar()
            if done is not None and int(done) > step.from_version:
                return  # another node (or an earlier attempt) did it
            step.run(conn)
            write_database_format(conn, component.name, step.from_version + 1)
            write_database_format(conn, f"step:{step.id}", step.from_version + 1)


def _stamp_database(uri: str, component: str) -> None:
    with engine_on(uri) as engine:
        create_format_table(engine)
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": 0x68777570})
            found = conn.execute(
                sa.text("SELECT version FROM headwater_format WHERE component = :c"), {"c": component}
            ).scalar()
            if found is None:
                write_database_format(conn, component, CURRENT[component])


def _pause(point: str) -> None:
    """Tests: stop here until killed when HEADWATER_TEST_UPGRADE_PAUSE names this point."""
    if os.environ.get(PAUSE_ENV) == point:
        log.warning("upgrade paused at %s (%s)", point, PAUSE_ENV)
        print(f"upgrade paused at {point}", flush=True)
        while True:
            time.sleep(3600)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


__all__ = ["PAUSE_ENV", "check", "prepare", "read_format_file", "upgrade_lock"]
