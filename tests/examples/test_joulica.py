"""The Joulica example (examples/joulica): per-minute counts against a plain-Python reference, and a
dashboard with the live figures next to the historical trend, end to end.

Reference: a `call_handled` event counts in its queue's minute [k*60 s, (k+1)*60 s) unless that
minute had closed when it arrived (minute end + 10 s grace <= stream time of its log partition,
counting the event itself); a minute's final figures are emitted once stream time passes its end
+ grace; the live figures of a queue are those of its newest minute.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from headwater.core.events import RAW_MAPPED
from headwater.processing import TestDriver
from headwater.processing.worker import load_pipelines
from tests.helpers import ROOT, RunningHeadwater, child_env, make_keys

EXAMPLE = ROOT / "examples" / "joulica"
T0 = 1_772_359_200_000  # 2026-03-01T10:00:00Z
MINUTE = 60_000


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"joulica_example_{name}", EXAMPLE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


calls = _load("calls")
generate = _load("generate")
dashboard = _load("dashboard")


def to_ms(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def as_event(line: dict[str, Any]) -> dict[str, Any]:
    return {
        "event_id": line["messageId"], "type": "track", "event": line["event"], "user_id": None,
        "anonymous_id": line["anonymousId"], "timestamp": line["timestamp"],
        "properties": {k: v for k, v in line.items() if k not in RAW_MAPPED and k != "_send_ms"},
    }  # fmt: skip


def feed(driver: TestDriver, lines: list[dict[str, Any]]) -> None:
    for line in lines:
        driver.send(as_event(line), key=line["anonymousId"], timestamp=line["timestamp"])


@dataclass
class Expected:
    finals: list[dict[str, Any]] = field(default_factory=list)
    live: dict[str, dict[str, Any]] = field(default_factory=dict)  # queue -> joulica_calls_now value
    late: set[str] = field(default_factory=set)  # event ids


def _row(queue: str, start: int, acc: list[float]) -> dict[str, Any]:
    return {
        "queue": queue, "minute": datetime.fromtimestamp(start / 1000, tz=UTC).isoformat(), "start_ms": start,
        "end_ms": start + MINUTE, "calls": int(acc[0]), "avg_handle_s": round(acc[1] / acc[0], 1),
    }  # fmt: skip


def reference(lines: list[dict[str, Any]], partitions: int = 1, flushed: bool = False) -> Expected:
    stream_time: dict[int, int] = {}
    windows: dict[tuple[str, int], list[float]] = {}
    partition_of: dict[str, int] = {}
    out = Expected()
    for line in lines:
        partition = zlib.crc32(line["anonymousId"].encode()) % partitions
        ts = to_ms(line["timestamp"])
        stream_time[partition] = max(stream_time.get(partition, ts), ts)
        if line["event"] != "call_handled":
            continue
        queue, start = line["queue"], ts - ts % MINUTE
        if start + MINUTE + calls.GRACE <= stream_time[partition]:
            out.late.add(line["messageId"])
            continue
        partition_of[queue] = partition
        acc = windows.setdefault((queue, start), [0, 0.0])
        acc[0] += 1
        acc[1] += float(line["handle_seconds"])
    for (queue, start), acc in sorted(windows.items()):
        if flushed or start + MINUTE + calls.GRACE <= stream_time[partition_of[queue]]:
            out.finals.append(_row(queue, start, acc))
    for queue in partition_of:
        start = max(s for q, s in windows if q == queue)
        out.live[queue] = _row(queue, start, windows[(queue, start)])
    return out


def _key(row: dict[str, Any]) -> tuple[str, int]:
    return row["queue"], row["start_ms"]


@pytest.mark.parametrize("partitions", [1, 4])
def test_generated_calls_give_exactly_the_reference(partitions: int) -> None:
    lines = generate.timeline(seed=8, start_ms=T0, seconds=900, rate=2, history_hours=6)
    driver = TestDriver(calls.build(), partitions=partitions)
    feed(driver, lines)
    flushed = partitions == 1
    if flushed:
        driver.advance_time(T0 + 10**9)
    expected = reference(lines, partitions, flushed)
    assert sorted(driver.values("joulica-calls-per-minute"), key=_key) == expected.finals
    assert sorted(driver.table("joulica_calls_per_minute"), key=_key) == expected.finals
    assert driver.state("joulica_calls_now") == expected.live
    # each window operator (current and final) reports the late calls it drops: compare the calls
    assert {r["value"]["event_id"] for r in driver.late()} == expected.late
    assert driver.errors() == []
    assert len(expected.late) >= 3 and len(expected.finals) >= 5 * 15 and len(expected.live) == 5


def _call(driver: TestDriver, t: int, queue: str = "sales", handle: float = 100.0) -> None:
    line = {"event": "call_handled", "anonymousId": f"queue-{queue}", "timestamp": generate.iso(t)}
    line.update(messageId=str(t), queue=queue, agent="agent-01", handle_seconds=handle, call_id=f"c{t}")
    feed(driver, [line])


def test_minutes_are_half_open_and_close_after_the_grace() -> None:
    driver = TestDriver(calls.build())
    _call(driver, T0, handle=100.0)
    _call(driver, T0 + MINUTE - 1, handle=200.0)  # last ms of the first minute
    _call(driver, T0 + MINUTE, handle=50.0)  # first ms of the next
    assert driver.values("joulica-calls-per-minute") == []
    _call(driver, T0 + MINUTE + calls.GRACE - 1, queue="support")
    driver.advance_time(T0 + MINUTE + calls.GRACE - 1)
    assert driver.values("joulica-calls-per-minute") == []
    driver.advance_time(T0 + MINUTE + calls.GRACE)
    [first] = driver.values("joulica-calls-per-minute")
    assert first == {
        "queue": "sales", "minute": "2026-03-01T10:00:00+00:00", "start_ms": T0, "end_ms": T0 + MINUTE,
        "calls": 2, "avg_handle_s": 150.0,
    }  # fmt: skip
    _call(driver, T0 + 30_000)  # its minute has closed: late, not lost
    assert {r["value"]["event_id"] for r in driver.late()} == {str(T0 + 30_000)}
    assert {r["reason"] for r in driver.late()} == {"1 of 1 window(s) closed (end + grace <= stream time)"}
    assert driver.state("joulica_calls_now", "sales")["calls"] == 1  # the second minute, running


def test_the_live_figures_stay_on_the_newest_minute() -> None:
    driver = TestDriver(calls.build())
    for i in range(3):
        _call(driver, T0 + i * 1000)
    _call(driver, T0 + MINUTE + 500)
    _call(driver, T0 + 59_000)  # a straggler for the first minute, within the grace
    assert driver.state("joulica_calls_now", "sales")["start_ms"] == T0 + MINUTE
    assert driver.state("joulica_calls_now", "sales")["calls"] == 1
    driver.advance_time(T0 + 3 * MINUTE)
    assert [(r["start_ms"], r["calls"]) for r in driver.values("joulica-calls-per-minute")] == [
        (T0, 4),
        (T0 + MINUTE, 1),
    ]
    assert [r["calls"] for r in driver.values("joulica-calls-now")] == [1, 2, 3, 1]


def test_the_trend_covers_the_requested_days() -> None:
    query = dashboard.trend(7, now=datetime(2026, 3, 1, 10, 17, tzinfo=UTC))
    assert query["date_to"] == "2026-03-01T11:00:00+00:00" and query["date_from"] == "2026-02-22T11:00:00+00:00"
    assert query["series"] == [{"event": "call_handled", "measure": "count"}] and query["breakdown"] == "queue"


def test_the_pipeline_loads_from_its_spec() -> None:
    [pipeline] = load_pipelines(f"{EXAMPLE / 'calls.py'}:pipeline")
    assert pipeline.name == "joulica-calls"
    assert pipeline.outputs()["state_tables"] == ["joulica_calls_now"]
    assert pipeline.outputs()["tables"] == ["joulica_calls_per_minute"]


# -- end to end -------------------------------------------------------------------------------------
def _get(hw: RunningHeadwater, path: str) -> httpx.Response:
    return httpx.get(hw.url + path, headers={"Authorization": f"Bearer {hw.keys['read']}"}, timeout=60)


def _live(hw: RunningHeadwater) -> dict[str, Any]:
    response = _get(hw, "/api/state/joulica_calls_now?limit=100")
    if response.status_code == 404:
        return {}
    assert response.status_code == 200, response.text
    return {row["key"]: row["value"] for row in response.json()["rows"]}


@pytest.mark.slow
def test_end_to_end_dashboard_next_to_history(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    keys = make_keys(data_dir)
    spec = json.dumps([f"{EXAMPLE / 'calls.py'}:pipeline"])
    env = child_env(data_dir, flush_interval_ms=200, log_partitions=4, processors=spec)
    hw = RunningHeadwater(data_dir, env, keys=keys).start()
    try:
        sent = tmp_path / "calls.jsonl"
        command = [sys.executable, str(EXAMPLE / "generate.py"), "--url", hw.url, "--key", keys["write"]]
        command += ["--seconds", "6", "--rate", "5", "--history-hours", "3", "--seed", "3", "--out", str(sent)]
        subprocess.run(command, check=True, timeout=180, cwd=tmp_path)
        lines = [json.loads(line) for line in sent.read_text().splitlines()]
        expected = reference(lines, partitions=4)
        assert len(expected.finals) >= 50 and len(expected.live) == 5

        # live: the state table over HTTP; history per minute: the Iceberg table in SQL
        deadline = time.monotonic() + 90
        while _live(hw) != expected.live and time.monotonic() < deadline:
            time.sleep(0.25)
        assert _live(hw) == expected.live
        queue, value = next(iter(expected.live.items()))
        assert _get(hw, f"/api/state/joulica_calls_now/{queue}").json()["value"] == value
        finals = [[r["queue"], r["start_ms"], r["calls"], r["avg_handle_s"]] for r in expected.finals]
        sql = "SELECT queue, start_ms, calls, avg_handle_s FROM joulica_calls_per_minute ORDER BY 1, 2"
        hw.wait_rows(sql, finals, 90)
        handled = sum(1 for line in lines if line["event"] == "call_handled")
        hw.wait_rows("SELECT count(*) FROM events WHERE event = 'call_handled'", [[handled]], 60)

        # the dashboard: a live tile beside the historical trend of the same measure
        command = [sys.executable, str(EXAMPLE / "dashboard.py"), "--url", hw.url, "--key", keys["read"]]
        made = json.loads(subprocess.run(command, check=True, timeout=120, capture_output=True).stdout)
        again = json.loads(subprocess.run(command, check=True, timeout=120, capture_output=True).stdout)
        assert (again["dashboard_id"], again["insight_id"]) == (made["dashboard_id"], made["insight_id"])
        board = _get(hw, f"/api/dashboards/{made['dashboard_id']}").json()
        live_tile, trend_tile = board["tiles"]
        if made["live_tile"] == "events":  # what the boards API takes today (see dashboard.py)
            assert live_tile["live"]["event"] == "call_handled"
        elif made["live_tile"] == "stream":
            assert live_tile["live"]["stream"] == "joulica-calls-now"
        else:
            assert live_tile["state"]["table"] == "joulica_calls_now"
        assert trend_tile["kind"] == "trend" and trend_tile["error"] is None
        totals = {line["breakdown"]: line["total"] for line in trend_tile["result"]}
        per_queue: dict[str, int] = {}
        for line in lines:
            if line["event"] == "call_handled":
                per_queue[line["queue"]] = per_queue.get(line["queue"], 0) + 1
        assert totals == per_queue
    finally:
        hw.stop()
