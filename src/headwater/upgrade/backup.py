"""Copies of the SQLite databases an upgrade changes, taken before it changes them: `<data_dir>/backups/<name>/`.

Each database is copied with SQLite's online backup (a consistent copy, WAL content included) into a hidden
`.partial-<name>` folder that is renamed once every copy and BACKUP.json are on disk; a partial folder left by a
crash is deleted by the next attempt. Databases on a server (PostgreSQL catalog or app_db_uri) are not copied:
BACKUP.json names them so the operator knows to use the database's own tools.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from headwater.core.errors import UpgradeError
from headwater.upgrade.formats import WRITTEN_BY, fsync_dir

log = logging.getLogger(__name__)
SPARE_BYTES = 64 * 1024 * 1024  # what the disk must keep free besides the copies


def make_backup(
    data_dir: Path,
    files: list[Path],
    name: str,
    not_copied: list[str],
    format_before: dict[str, Any] | None,
    after_file: Callable[[int], None] | None = None,
) -> Path:
    """Copy `files` (SQLite databases) into backups/<name>/ keeping their paths under `data_dir`; return it."""
    folder = data_dir / "backups"
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(".partial-*"):
        shutil.rmtree(stale, ignore_errors=True)
    need = sum(_size(f) for f in files)
    free = shutil.disk_usage(folder).free
    if need + SPARE_BYTES > free:
        raise UpgradeError(
            f"the upgrade's backup needs {need / 1e6:.0f} MB and {folder} has {free / 1e6:.0f} MB free: free some "
            "space, or set upgrade_backup = false to upgrade without a backup"
        )
    tmp = folder / f".partial-{name}"
    tmp.mkdir()
    copied: list[str] = []
    for number, path in enumerate(files, 1):
        path, root = path.resolve(), data_dir.resolve()
        relative = path.relative_to(root) if path.is_relative_to(root) else Path("outside") / path.name
        target = tmp / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        _copy_database(path, target)
        copied.append(str(relative))
        if after_file is not None:
            after_file(number)
    restore = (
        "stop Headwater, copy these files back over the data directory's, put back FORMAT.json as it was "
        "(format_json_before; none: remove it), and run the Headwater that wrote them"
    )
    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    manifest = {"written_by": WRITTEN_BY, "at": at, "copied": copied, "not_copied": not_copied, "restore": restore,
                "format_json_before": format_before}  # fmt: skip
    (tmp / "BACKUP.json").write_text(json.dumps(manifest, indent=2) + "\n")
    for sub in sorted({p.parent for p in tmp.rglob("*")} | {tmp}, key=lambda p: len(p.parts), reverse=True):
        fsync_dir(sub)
    final = folder / name
    tmp.replace(final)
    fsync_dir(folder)
    log.info("backup of %d database(s) (%.1f MB) in %s", len(copied), need / 1e6, final)
    return final


def _copy_database(source: Path, target: Path) -> None:
    src = sqlite3.connect(source, timeout=30)
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)
        finally:
            dst.close()
    finally:
        src.close()
    with open(target, "rb+") as handle:
        os.fsync(handle.fileno())


def _size(path: Path) -> int:
    total = 0
    for candidate in (path, path.with_name(path.name + "-wal")):
        with contextlib.suppress(FileNotFoundError):
            total += candidate.stat().st_size
    return total
