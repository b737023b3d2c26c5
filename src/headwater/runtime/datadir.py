"""The data directory at rest: one `headwater up` per directory (an flock), private permissions.

`up` holds an exclusive lock on `<data_dir>/run/up.lock` for its whole life and writes who holds it
(pid, host, URL, start time) into the same file, so a second `up` on the directory is refused at once
with a message naming the first. The lock goes with the process (also on kill -9); the file stays.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import stat
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

from headwater.core.errors import ConfigError

LOCK_NAME = "up.lock"
UMASK = 0o077  # files and folders Headwater creates: owner only


class DataDirInUse(ConfigError):
    """Another `headwater up` holds the data directory."""


def create(data_dir: Path) -> None:
    """Create the data directory (and its parents) private to the owner; an existing one is left as it is."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)


def lock_path(data_dir: Path) -> Path:
    return data_dir / "run" / LOCK_NAME


def _describe(raw: bytes) -> str:
    """'pid N, http://host:port, started …' from the lock file's content (what is known of it)."""
    try:
        info = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return "pid unknown"
    parts = [f"pid {info.get('pid', '?')}"]
    if info.get("url"):
        parts.append(str(info["url"]))
    elif info.get("hostname"):
        parts.append(f"on {info['hostname']}")
    if info.get("started"):
        parts.append(f"started {info['started']}")
    return ", ".join(parts)


@dataclass
class UpLock:
    """The held lock of one `up` on one data directory (close() or process exit releases it)."""

    data_dir: Path
    fd: int
    info: dict[str, object]

    def note_url(self, url: str) -> None:
        """Record the URL `up` serves at, once the server bound its port."""
        self.info["url"] = url
        self._write()

    def _write(self) -> None:
        data = orjson.dumps(self.info, option=orjson.OPT_APPEND_NEWLINE)
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)

    def close(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, 0)
            os.close(self.fd)  # releases the flock
            self.fd = -1


def _open(data_dir: Path) -> int:
    path = lock_path(data_dir)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o600)  # not inheritable: children do not hold it


def _held_message(data_dir: Path, fd: int) -> str:
    raw = os.pread(fd, 4096, 0)
    return f"data directory {data_dir.resolve()} is in use by headwater up ({_describe(raw)}); stop it first"


def hold(data_dir: Path, host: str) -> UpLock:
    """Lock `data_dir` for this `up`, or raise DataDirInUse naming the `up` holding it."""
    fd = _open(data_dir)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        message = _held_message(data_dir, fd)
        os.close(fd)
        raise DataDirInUse(message) from None
    info: dict[str, object] = {
        "pid": os.getpid(),
        "hostname": socket.gethostname(),
        "host": host,
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    lock = UpLock(data_dir, fd, info)
    lock._write()
    return lock


def refuse_if_held(data_dir: Path) -> None:
    """Raise DataDirInUse when a `headwater up` holds `data_dir` (a standalone process would fight it)."""
    path = lock_path(data_dir)
    if not path.exists():
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DataDirInUse(_held_message(data_dir, fd)) from None
    finally:
        os.close(fd)


@dataclass(frozen=True)
class LooseMode:
    """A path whose permissions let the group or others in, and the command that fixes it."""

    path: Path
    mode: int
    is_dir: bool

    @property
    def fix(self) -> str:
        return f"chmod {'-R ' if self.is_dir else ''}go-rwx {self.path}"

    def __str__(self) -> str:
        kind = "directory" if self.is_dir else "file"
        return f"{kind} {self.path} is open to group/others (mode {self.mode:04o}); fix: {self.fix}"


def loose_modes(data_dir: Path) -> list[LooseMode]:
    """The data directory and its top-level files and folders (keys.db, users.db, catalog, log, …) whose mode gives
    the group or others any access; symbolic links are not followed (their target is someone else's choice)."""
    if not data_dir.is_dir():
        return []
    found: list[LooseMode] = []
    for path in [data_dir, *sorted(data_dir.iterdir())]:
        try:
            st = path.lstat()
        except FileNotFoundError:  # e.g. a SQLite -journal gone meanwhile
            continue
        if stat.S_ISLNK(st.st_mode):
            continue
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            found.append(LooseMode(path.resolve(), mode, stat.S_ISDIR(st.st_mode)))
    return found
