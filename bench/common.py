"""Shared by the benchmarks: machine description, a local Headwater, JSON output."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers import RunningHeadwater, child_env, make_keys  # noqa: E402

__all__ = ["RunningHeadwater", "child_env", "emit", "machine", "make_keys", "need_wrk"]


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem_gib, 1), "python": platform.python_version()}


def need_wrk() -> str:
    """wrk from Debian; installed on first use when running as root."""
    path = shutil.which("wrk")
    if path:
        return path
    if os.geteuid() == 0:
        subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, capture_output=True)
        path = shutil.which("wrk")
    if not path:
        raise SystemExit("the ingest benchmark needs wrk: apt-get install wrk")
    return path


def emit(name: str, result: dict[str, Any]) -> None:
    """Print the result as JSON and keep a copy in bench/results/NAME.json."""
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    text = orjson.dumps({"benchmark": name, "machine": machine(), **result}, option=orjson.OPT_INDENT_2)
    (out / f"{name}.json").write_bytes(text + b"\n")
    sys.stdout.write(text.decode() + "\n")
