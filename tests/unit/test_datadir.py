"""The data directory lock (one `up` per directory) and the permission check, on real files and processes."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from headwater.runtime import datadir

HOLDER = """
import sys, time
from pathlib import Path
from headwater.runtime import datadir
lock = datadir.hold(Path(sys.argv[1]), "127.0.0.1")
lock.note_url("http://127.0.0.1:4321")
print("held", flush=True)
time.sleep(600)
"""


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding tmp_path/data like a running `up`."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "data")], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


def test_create_is_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        datadir.create(tmp_path / "a" / "data")
    finally:
        os.umask(old)
    assert (tmp_path / "a" / "data").stat().st_mode & 0o777 == 0o700
    (tmp_path / "kept").mkdir(mode=0o755)
    (tmp_path / "kept").chmod(0o755)
    datadir.create(tmp_path / "kept")  # an existing one is the user's: left as it is
    assert (tmp_path / "kept").stat().st_mode & 0o777 == 0o755


def test_second_holder_is_refused_naming_the_first(tmp_path: Path, holder: subprocess.Popen[str]) -> None:
    data_dir = tmp_path / "data"
    with pytest.raises(datadir.DataDirInUse) as refused:
        datadir.hold(data_dir, "127.0.0.1")
    message = str(refused.value)
    assert message.startswith(f"data directory {data_dir.resolve()} is in use by headwater up (pid {holder.pid}, ")
    assert "http://127.0.0.1:4321, started " in message and message.endswith("; stop it first")
    with pytest.raises(datadir.DataDirInUse, match=f"pid {holder.pid}"):
        datadir.refuse_if_held(data_dir)
    assert (data_dir / "run" / "up.lock").stat().st_mode & 0o777 == 0o600


def test_lock_goes_with_the_process(tmp_path: Path, holder: subprocess.Popen[str]) -> None:
    holder.kill()  # kill -9: no clean-up ran
    holder.wait()
    lock = datadir.hold(tmp_path / "data", "0.0.0.0")
    try:
        assert f'"pid":{os.getpid()}' in (tmp_path / "data" / "run" / "up.lock").read_text()
        datadir.refuse_if_held(tmp_path / "other")  # nothing there: nothing to refuse
    finally:
        lock.close()
    datadir.refuse_if_held(tmp_path / "data")  # released
    datadir.hold(tmp_path / "data", "0.0.0.0").close()


def test_lock_is_not_inherited_by_children(tmp_path: Path) -> None:
    lock = datadir.hold(tmp_path / "data", "127.0.0.1")
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(600)"],
        close_fds=False,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "started"  # exec'd: fds settled
        lock.close()
        datadir.hold(tmp_path / "data", "127.0.0.1").close()  # the child did not keep it
    finally:
        child.kill()
        child.wait()
        assert child.stdout is not None
        child.stdout.close()


def test_unreadable_lock_content_still_refuses(tmp_path: Path, holder: subprocess.Popen[str]) -> None:
    (tmp_path / "data" / "run" / "up.lock").write_text("garbage")
    with pytest.raises(datadir.DataDirInUse, match="pid unknown"):
        datadir.hold(tmp_path / "data", "127.0.0.1")


def test_loose_modes_names_each_path_and_its_fix(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)
    for name in ("keys.db", "users.db"):
        (data_dir / name).write_text("x")
        (data_dir / name).chmod(0o600)
    (data_dir / "catalog").mkdir(mode=0o700)
    assert datadir.loose_modes(data_dir) == []
    (data_dir / "keys.db").chmod(0o640)
    (data_dir / "catalog").chmod(0o755)
    data_dir.chmod(0o711)
    (data_dir / "link").symlink_to("/etc/passwd")  # not followed
    found = {str(loose.path.name): loose for loose in datadir.loose_modes(data_dir)}
    assert set(found) == {"data", "keys.db", "catalog"}
    assert str(found["keys.db"]) == (
        f"file {data_dir.resolve() / 'keys.db'} is open to group/others (mode 0640); "
        f"fix: chmod go-rwx {data_dir.resolve() / 'keys.db'}"
    )
    assert found["catalog"].fix == f"chmod -R go-rwx {data_dir.resolve() / 'catalog'}"
    assert found["data"].mode == 0o711
    for loose in found.values():
        subprocess.run(loose.fix.split(), check=True)  # the printed command really fixes it
    assert datadir.loose_modes(data_dir) == []
    assert datadir.loose_modes(tmp_path / "absent") == []


def test_cli_sets_a_private_umask(tmp_path: Path) -> None:
    """Any `headwater` command runs with umask 077 (what it creates is the owner's only)."""
    old = os.umask(0o022)
    try:
        out = subprocess.run(
            [sys.executable, "-m", "headwater.cli.main", "keys", "list", "--data-dir", str(tmp_path / "d")],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        os.umask(old)
    assert out.returncode == 0, out.stderr
    created = [p for p in (tmp_path / "d").rglob("*")] + [tmp_path / "d"]
    assert created and all(p.stat().st_mode & 0o077 == 0 for p in created), [
        (str(p), oct(p.stat().st_mode)) for p in created
    ]
