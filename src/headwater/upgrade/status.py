"""What a data directory and its databases hold: each component's format, what is newer, what steps are pending."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from headwater.core.settings import CONFIG_VERSION, Settings
from headwater.upgrade.formats import (
    CURRENT,
    FORMAT_FILE,
    Found,
    log_files,
    newer_message,
    read_database_format,
    read_format_file,
    user_version,
)
from headwater.upgrade.steps import Step, steps_from

DATA_DIR_CONTENT = ("log", "catalog.db", "keys.db", "users.db", "app.db", "warehouse", "processors", "sources")


@dataclass
class Component:
    """One row of `headwater upgrade --check`."""

    name: str  # data_dir, log, catalog, accounts, settings
    where: str
    found: Found
    current: int
    steps: list[Step] = field(default_factory=list)
    uri: str | None = None  # the database of a catalog / accounts component

    @property
    def state(self) -> str:
        if self.found.version is None:
            return "new"
        if self.found.version > self.current:
            return "newer"
        return "upgrade" if self.found.version < self.current else "current"

    def as_dict(self) -> dict[str, Any]:
        return {"component": self.name, "where": self.where, "found": self.found.version, "current": self.current,
                "written_by": self.found.written_by, "state": self.state,
                "steps": [{"id": s.id, "description": s.description} for s in self.steps]}  # fmt: skip


@dataclass
class Status:
    data_dir: Path
    document: dict[str, Any] | None  # FORMAT.json as found
    components: list[Component]

    @property
    def newer(self) -> list[str]:
        return [newer_message(c.name, c.where, c.found, c.current) for c in self.components if c.state == "newer"]

    @property
    def pending(self) -> list[Step]:
        return [s for c in self.components for s in c.steps]

    @property
    def needs_write(self) -> bool:
        """Something to migrate or to stamp (a new directory or database gets its markers)."""
        if self.document is None or self.document.get("format") != CURRENT["data_dir"] or "upgrade" in self.document:
            return True
        return any(c.state in ("new", "upgrade") for c in self.components if c.name in ("catalog", "accounts"))

    def as_dict(self) -> dict[str, Any]:
        return {"data_dir": str(self.data_dir), "components": [c.as_dict() for c in self.components],
                "pending_steps": [s.id for s in self.pending], "in_progress": (self.document or {}).get("upgrade"),
                "backups": [str(p) for p in backups(self.data_dir)]}  # fmt: skip


def inspect(settings: Settings) -> Status:
    """Read every marker (nothing is written; a missing SQLite file is not created)."""
    data_dir = settings.data_dir
    document = read_format_file(data_dir)
    components = [_data_dir(data_dir, document), _log(data_dir, document)]
    components.append(_database("catalog", settings.effective_catalog_uri))
    for uri in dict.fromkeys(settings.store_uri(s) for s in ("keys", "users", "app")):  # one when app_db_uri
        components.append(_database("accounts", uri))
    components.append(
        Component("settings", str(settings.config_file or "(none)"), Found(settings.config_version), CONFIG_VERSION)
    )
    return Status(data_dir, document, components)


def backups(data_dir: Path) -> list[Path]:
    folder = data_dir / "backups"
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")) if folder.is_dir() else []


def _data_dir(data_dir: Path, document: dict[str, Any] | None) -> Component:
    where = str(data_dir / FORMAT_FILE)
    if document is not None:
        found = Found(int(document["format"]), document.get("written_by"), where)
    elif any((data_dir / name).exists() for name in DATA_DIR_CONTENT):
        found = Found(1, "headwater before format versions (up to d913ae1)", where)
    else:
        found = Found(None, where=where)
    return Component("data_dir", where, found, CURRENT["data_dir"])


def _log(data_dir: Path, document: dict[str, Any] | None) -> Component:
    """The oldest log database decides; user_version 0 means the format FORMAT.json gives the log (1 without)."""
    where = str(data_dir / "log")
    base = int((document or {}).get("components", {}).get("log", 1))
    versions = [(user_version(path) or base, path) for path in log_files(data_dir)]
    if not versions:
        return Component("log", where, Found(None, where=where), CURRENT["log"])
    newest, path = max(versions)
    if newest > CURRENT["log"]:  # what wrote it is not recorded in the file
        return Component("log", str(path), Found(newest, None, str(path)), CURRENT["log"])
    oldest = min(v for v, _ in versions)
    component = Component("log", where, Found(oldest, where=where), CURRENT["log"])
    if oldest < CURRENT["log"]:
        component.steps = steps_from("log", oldest, CURRENT["log"])
    return component


def _database(name: str, uri: str) -> Component:
    found = read_database_format(uri, name)
    component = Component(name, found.where, found, CURRENT[name], uri=uri)
    if found.version is not None and found.version < CURRENT[name]:
        component.steps = steps_from(name, found.version, CURRENT[name])
    return component
