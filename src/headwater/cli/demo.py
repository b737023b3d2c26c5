"""`up --demo` (history, dashboard, live visits) and `generate --scenario`: the demo scenarios from the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import multiprocessing
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson
from rich.markup import escape

from headwater.cli.main import _progress, console, fail, settings_from
from headwater.core.settings import Settings


def start_demo(settings: Settings, url: str, stop: threading.Event, key: str) -> None:
    """Demo traffic: on first start, backfill `demo_days` of `demo_scenario` and create the demo dashboard
    (marker `<data_dir>/demo.json`, holding the ground truth), then send live visits at `demo_rate`."""
    console.print(f"Demo admin key: [bold]{key}[/bold]")
    event = '{"type":"track","event":"Signed Up","userId":"joe1","properties":{"plan":"pro"}}'
    console.print(f"Send:  curl -u '{key}:' -H 'content-type: application/json' -d '{event}' {url}/v1/track")
    sql = "SELECT event, count(*) AS n, count(DISTINCT person_id) AS people FROM events GROUP BY event ORDER BY n DESC"
    body = orjson.dumps({"sql": sql}).decode()
    console.print(f"Query: curl -H 'Authorization: Bearer {key}' -d '{body}' {url}/api/query")
    console.print(f'   or: headwater query "{sql}" --data-dir {settings.data_dir}')

    def run() -> None:
        from headwater.loadgen.scenarios.live import send_live

        try:
            scenario = _demo_history(settings, url)
        except Exception as exc:  # the platform keeps running without the demo history
            console.print(f"demo backfill failed: {escape(str(exc))}")
            return
        while settings.demo_rate > 0 and not stop.is_set():  # demo_rate 0: the history only
            try:
                asyncio.run(send_live(url, key, scenario, settings.demo_seed, settings.demo_rate, stop=stop.is_set))
            except Exception as exc:
                console.print(f"demo generator: {escape(str(exc))}")
                stop.wait(1)

    threading.Thread(target=run, daemon=True, name="demo").start()


DEMO_EVENTS = 150_000  # history `up --demo` imports on first start: sized to show the dashboard within a minute


def _demo_history(settings: Settings, url: str) -> Any:
    """The demo scenario: on first start backfilled (with the dashboard) by a child process at a lower CPU
    priority (the platform stays responsive meanwhile), then simulated again here (same seed and end: the same
    people) to continue live."""
    from headwater.loadgen.scenarios.backfill import simulate

    marker = settings.data_dir / "demo.json"
    if not marker.exists():
        child = multiprocessing.get_context("spawn").Process(
            target=_first_start, args=(settings, url, os.getpid()), name="demo-backfill", daemon=True
        )
        child.start()
        child.join()
        if not marker.exists():
            raise RuntimeError(f"the backfill process ended with code {child.exitcode}")
    saved = orjson.loads(marker.read_bytes())
    return simulate(saved["scenario"], saved["seed"], saved["users"], saved["days"], saved["end_us"])


def _first_start(settings: Settings, url: str, parent: int) -> None:
    """Backfill `demo_days`, create the dashboard, write the marker. The end of the history is kept in
    `demo-pending.json` first: interrupted, the next start imports the same events and the importer resumes.
    It dies with `up` (even killed with -9) and holds `demo.lock`, so two backfills never run at once."""
    _die_with(parent)
    lock = (settings.data_dir / "demo.lock").open("w")
    fcntl.flock(lock, fcntl.LOCK_EX)  # held until this process exits
    if (settings.data_dir / "demo.json").exists():  # another start finished it while this one waited
        return
    _backfill_and_board(settings, url)


def _die_with(parent: int) -> None:
    """Have the kernel kill this process when its parent dies (Linux), and exit if the parent is gone already."""
    with contextlib.suppress(OSError, AttributeError):  # not Linux: the lock still keeps two backfills apart
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        sys.exit(0)


PR_SET_PDEATHSIG = 1


def _backfill_and_board(settings: Settings, url: str) -> None:
    from headwater.loadgen.scenarios import SCENARIOS
    from headwater.loadgen.scenarios.backfill import backfill, simulate
    from headwater.loadgen.scenarios.demo_board import create_demo_board
    from headwater.runtime.stages import build_stages

    os.nice(5)
    name = settings.demo_scenario if settings.demo_scenario in SCENARIOS else "shop"
    days = settings.demo_days
    users = int(DEMO_EVENTS / SCENARIOS[name].events_per_user)
    started = time.monotonic()
    pending = settings.data_dir / "demo-pending.json"
    if pending.exists():
        end_us = int(orjson.loads(pending.read_bytes())["end_us"])
    else:
        end_us = int(time.time()) * 1_000_000
        pending.write_bytes(orjson.dumps({"end_us": end_us}))
    shown = {"writing": 0, "importing": 0}

    def progress(phase: str, done: int, total: int | None) -> None:
        before = shown[phase]
        shown[phase] += done
        if shown[phase] // 50_000 > before // 50_000:
            console.print(f"demo: {phase} {shown[phase]:,} events" + (f" of {total:,}" if total else ""))

    if days > 0:
        console.print(f"demo: backfilling {days} days of the {name} scenario (seed {settings.demo_seed})…")
        scenario, report = backfill(
            settings, name, settings.demo_seed, users, days, build_stages, end_us=end_us, progress=progress
        )
    else:  # no history: live visits only
        scenario, report = simulate(name, settings.demo_seed, users, 1, end_us), {"events": 0}
    board = create_demo_board(settings, name, max(days, 1))
    saved = {
        "scenario": name, "seed": settings.demo_seed, "users": users, "days": max(days, 1), "end_us": end_us,
        "dashboard_id": board["id"], "backfill": report, "truth": scenario.truth.as_dict(),
    }  # fmt: skip
    (settings.data_dir / "demo.json.part").write_bytes(orjson.dumps(saved, option=orjson.OPT_INDENT_2))
    (settings.data_dir / "demo.json.part").rename(settings.data_dir / "demo.json")
    pending.unlink(missing_ok=True)
    console.print(
        f"demo: {report['events']:,} events of history in {time.monotonic() - started:.1f} s; "
        f"dashboard: {url}/#/dashboard/{board['id']}"
    )


def generate_scenario(
    name: str, url: str, key: str, rate: float, users: int, days: int, duration: float | None, seed: int | None,
    live: bool, truth: Path | None, config: Path | None, data_dir: Path | None,
) -> None:  # fmt: skip
    from headwater.loadgen.scenarios import SCENARIOS
    from headwater.loadgen.scenarios.backfill import backfill, simulate
    from headwater.loadgen.scenarios.live import send_live
    from headwater.runtime.stages import build_stages

    if name not in SCENARIOS:
        fail(f"--scenario: one of {', '.join(SCENARIOS)}")
    if live and not key:
        fail("--key is required to send live events (or --no-live)")
    seed = 7 if seed is None else seed
    users = users or 20_000
    report: dict[str, Any] = {"scenario": name, "seed": seed, "users": users}
    if days > 0:
        settings = settings_from(config, data_dir=data_dir)
        with _progress() as progress:
            tasks: dict[str, Any] = {}

            def advance(phase: str, done: int, total: int | None) -> None:
                if phase not in tasks:
                    tasks[phase] = progress.add_task(phase, total=total)
                progress.advance(tasks[phase], done)

            made, report["backfill"] = backfill(settings, name, seed, users, days, build_stages, progress=advance)
    else:
        made = simulate(name, seed, users, 1)
    if truth is not None:
        truth.write_bytes(orjson.dumps(made.truth.as_dict(), option=orjson.OPT_INDENT_2))
    if live:
        with _progress() as progress:
            task = progress.add_task("sending live", total=None)
            summary = asyncio.run(
                send_live(url, key, made, seed, rate, duration, progress=lambda n: progress.advance(task, n))
            )
        report["live"] = summary.as_dict()
    sys.stdout.write(orjson.dumps(report).decode() + "\n")
