"""A processor under `headwater up`, read over HTTP: served state by key and prefix, /api/processors,
the live view of its output stream, and its Iceberg tables in SQL (schema growing while it runs)."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pyarrow as pa
import pytest
from pyiceberg.types import StringType

from headwater.auth.users import UserStore
from headwater.core.errors import QueryError
from headwater.lake.tables import NAMESPACE, close_catalog, open_catalog
from headwater.query.engine import QueryEngine
from tests.helpers import RunningHeadwater, child_env, make_keys, make_settings

PIPELINE = """
from headwater.processing.api import Pipeline


def on_record(ctx, value):
    props = value["properties"]
    if props["item"] == "boom":
        raise ValueError("boom items are refused")
    count = ctx.state.get("count", 0) + 1
    total = ctx.state.get("total", 0) + props["amount"]
    ctx.state.set("count", count)
    ctx.state.set("total", total)
    out = {"count": count, "total": total, "last_item": props["item"]}
    if props["item"].startswith("vip"):
        out["vip"] = True  # a field that appears later: a new column of buyer_updates
    ctx.emit(out)


p = Pipeline("buyers", description="purchases per buyer")
(
    p.source("events")
    .filter(lambda e: e["event"] == "Purchased")
    .process(on_record)
    .to_state("buyer_totals")
    .to_table("buyer_updates")
    .to_stream("buyer-updates")
)
pipeline = p
"""
PASSWORD = "viewer-password-1"
ODD_USER = "odd/key ü 1"
Purchase = tuple[str, str, int, int]  # user, item, amount, event time (ms)


@pytest.fixture(scope="module")
def hw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHeadwater]:
    data_dir = tmp_path_factory.mktemp("processors")
    pipeline = data_dir / "buyers.py"
    pipeline.write_text(PIPELINE)
    keys = make_keys(data_dir)
    users = UserStore(data_dir / "users.db")
    users.create("vic", "viewer", PASSWORD)
    users.close()
    env = child_env(data_dir, flush_interval_ms=200, processors=json.dumps([f"{pipeline}:pipeline"]))
    running = RunningHeadwater(data_dir, env, keys=keys)
    try:
        yield running.start()
    finally:
        if running.proc is not None:  # also when it never became healthy: no server left behind
            running.stop()


def send(hw: RunningHeadwater, purchases: list[Purchase], views: int = 0) -> None:
    """POST the purchases (and some page views the processor filters out), in order."""
    lines = []
    for user, item, amount, ts in purchases:
        when = datetime.fromtimestamp(ts / 1000, tz=UTC).isoformat(timespec="milliseconds")
        line = {"event": "Purchased", "userId": user, "timestamp": when, "item": item, "amount": amount}
        lines.append(json.dumps(line))
        if views:
            views -= 1
            lines.append(json.dumps({"event": "Viewed", "userId": user, "timestamp": when, "path": "/shop"}))
    response = hw.post("/track", "\n".join(lines), hw.keys["write"])
    assert response.status_code == 200 and response.json()["accepted"] == len(lines), response.text


def reference(purchases: list[Purchase]) -> dict[str, dict[str, Any]]:
    """What buyer_totals must hold: per user, the last emitted value and its event time."""
    out: dict[str, dict[str, Any]] = {}
    for user, item, amount, ts in purchases:
        if item == "boom":
            continue
        before = out.get(user, {"value": {"count": 0, "total": 0}})["value"]
        value = {"count": before["count"] + 1, "total": before["total"] + amount, "last_item": item}
        if item.startswith("vip"):
            value["vip"] = True
        out[user] = {"value": value, "event_time": ts}
    return out


def generate(users: list[str], items: list[str], seed: int, start_ms: int) -> list[Purchase]:
    rng = random.Random(seed)
    purchases = [(user, rng.choice(items), rng.randint(1, 100)) for user in users for _ in range(rng.randint(2, 6))]
    rng.shuffle(purchases)
    return [(user, item, amount, start_ms + 1000 * i) for i, (user, item, amount) in enumerate(purchases)]


def get(hw: RunningHeadwater, path: str, key: str | None = "read", **params: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {hw.keys[key]}"} if key else {}
    return httpx.get(hw.url + path, params=params, headers=headers, timeout=30)


def state(hw: RunningHeadwater, table: str, key: str) -> httpx.Response:
    return get(hw, f"/api/state/{table}/{quote(key, safe='')}")


def query(hw: RunningHeadwater, sql: str) -> list[list[Any]] | str:
    """Rows, or the error (a column or table appears only with the first commit that has it)."""
    headers = {"Authorization": f"Bearer {hw.keys['read']}"}
    response = httpx.post(hw.url + "/api/query", json={"sql": sql}, headers=headers, timeout=60)
    return response.json()["rows"] if response.status_code == 200 else response.json()["error"]


def wait_query(hw: RunningHeadwater, sql: str, expected: list[list[Any]], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while (answer := query(hw, sql)) != expected:
        assert time.monotonic() < deadline, f"{sql!r} gave {answer!r}, expected {expected!r}"
        time.sleep(0.2)


def wait_for(check: Any, what: str, timeout: float = 60) -> Any:
    """Poll `check()` until it returns something truthy (processors and table writers run on their own)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"{what}: still {last!r} after {timeout} s")


FIRST_USERS = [f"buyer-a-{i:02d}" for i in range(10)] + [f"buyer-b-{i:02d}" for i in range(10)] + [ODD_USER]


@pytest.fixture(scope="module")
def first(hw: RunningHeadwater) -> list[Purchase]:
    """The first batch, applied: every user's state is there."""
    start = (int(time.time()) - 3600) * 1000
    purchases = generate(FIRST_USERS, ["book", "pen", "lamp"], 8, start)
    purchases.insert(len(purchases) // 2, ("buyer-b-03", "boom", 1, purchases[len(purchases) // 2][3]))
    send(hw, purchases, views=15)
    expected = reference(purchases)
    wait_for(lambda: all(state(hw, "buyer_totals", u).status_code == 200 for u in expected), "state of every buyer")
    wait_for(lambda: all(state(hw, "buyer_totals", u).json()["value"] == e["value"] for u, e in expected.items()),
             "final state of every buyer")  # fmt: skip
    return purchases


def test_state_lookups_equal_the_reference(hw: RunningHeadwater, first: list[Purchase]) -> None:
    for user, expected in reference(first).items():
        response = state(hw, "buyer_totals", user)
        assert response.status_code == 200, response.text
        assert response.json() == {"table": "buyer_totals", "key": user, **expected}
    odd = state(hw, "buyer_totals", ODD_USER).json()
    assert odd["key"] == ODD_USER  # '/', space and non-ASCII survive the path


def test_prefix_scan_in_key_order_with_pages(hw: RunningHeadwater, first: list[Purchase]) -> None:
    expected = reference(first)
    a_users = sorted(u for u in expected if u.startswith("buyer-a-"))
    whole = get(hw, "/api/state/buyer_totals", prefix="buyer-a-", limit=1000).json()
    assert whole["next"] is None
    assert whole["rows"] == [{"key": u, **expected[u]} for u in a_users]
    pages, start = [], None
    while True:
        params = {"prefix": "buyer-a-", "limit": 4, **({"start": start} if start else {})}
        page = get(hw, "/api/state/buyer_totals", **params).json()
        pages.append([row["key"] for row in page["rows"]])
        start = page["next"]
        if start is None:
            break
    assert pages == [a_users[0:4], a_users[4:8], a_users[8:10]]
    everything = get(hw, "/api/state/buyer_totals").json()["rows"]
    assert [row["key"] for row in everything] == sorted(expected)
    assert get(hw, "/api/state/buyer_totals", prefix="nobody-").json() == {"rows": [], "next": None}


def test_auth_errors_and_bad_requests(hw: RunningHeadwater, first: list[Purchase]) -> None:
    user = first[0][0]
    assert get(hw, f"/api/state/buyer_totals/{user}", key=None).status_code == 401
    assert get(hw, "/api/state/buyer_totals", key=None).status_code == 401
    assert get(hw, "/api/processors", key=None).status_code == 401
    assert get(hw, f"/api/state/buyer_totals/{user}", key="write").status_code == 403
    assert get(hw, f"/api/state/buyer_totals/{user}", key="admin").status_code == 200
    with httpx.Client(base_url=hw.url, timeout=30) as web:  # a signed-in viewer may read too
        assert web.post("/api/login", json={"name": "vic", "password": PASSWORD}).status_code == 200
        assert web.get(f"/api/state/buyer_totals/{user}").json()["value"] == reference(first)[user]["value"]

    missing_table = get(hw, "/api/state/no_such_table/x")
    assert missing_table.status_code == 404 and "no_such_table" in missing_table.json()["error"]
    assert "buyer_totals" in missing_table.json()["error"]  # names what exists
    assert get(hw, "/api/state/no_such_table").status_code == 404
    missing_key = get(hw, "/api/state/buyer_totals/nobody-here")
    assert missing_key.status_code == 404 and "nobody-here" in missing_key.json()["error"]
    for limit in ("0", "1001", "ten", "-1"):
        bad = get(hw, "/api/state/buyer_totals", limit=limit)
        assert bad.status_code == 400 and "limit" in bad.json()["error"], limit
    assert get(hw, "/api/state/buyer_totals", limit="1000").status_code == 200


def test_processors_lists_counters_outputs_and_errors(hw: RunningHeadwater, first: list[Purchase]) -> None:
    sent = len(first) + 15

    def listed() -> dict[str, Any] | None:
        response = get(hw, "/api/processors")
        assert response.status_code == 200, response.text
        found = {p["name"]: p for p in response.json()["processors"]}.get("buyers")
        return found if found and (found["records_in"] or 0) >= sent and found["errors"] else None

    buyers = wait_for(listed, "buyers in /api/processors with its counters")
    assert buyers["description"] == "purchases per buyer" and buyers["input"] == "events"
    assert buyers["outputs"]["state_tables"] == ["buyer_totals"]
    assert buyers["outputs"]["streams"] == ["buyer-updates"] and buyers["outputs"]["tables"] == ["buyer_updates"]
    assert buyers["errors"] == 1 and "boom items are refused" in buyers["last_error"]
    assert buyers["records_out"] > 0 and buyers["lag"] == 0 and buyers["state_bytes"] > 0
    assert buyers["stale"] is False and buyers["run"] and buyers["updated_at"] > 0


def test_live_view_of_the_output_stream(hw: RunningHeadwater, first: list[Purchase]) -> None:
    successful = [p for p in first if p[1] != "boom"]
    page = get(hw, "/api/live", stream="buyer-updates", limit=1000).json()
    rows = [row for row in page["events"] if row["key"] in FIRST_USERS]
    assert len(rows) == len(successful)
    assert {(r["key"], r["value"]["count"]) for r in rows} == {
        (user, n) for user, e in reference(first).items() for n in range(1, e["value"]["count"] + 1)
    }
    assert all(r["time"] and r["id"].startswith("buyers/") for r in rows)
    one = get(hw, "/api/live", stream="buyer-updates", user="buyer-a-01", limit=1000).json()["events"]
    assert one and {r["key"] for r in one} == {"buyer-a-01"}
    unknown = get(hw, "/api/live", stream="nope")
    assert unknown.status_code == 400 and "buyer-updates" in unknown.json()["error"]
    assert get(hw, "/api/live", key=None, stream="buyer-updates").status_code == 401


def test_iceberg_outputs_in_sql_with_a_growing_schema(hw: RunningHeadwater, first: list[Purchase]) -> None:
    expected = reference(first)
    counts: dict[str, int] = {}
    for user, item, _, _ in first:
        if item != "boom":
            counts[user] = counts.get(user, 0) + 1
    rows = [[u, counts[u], e["value"]["count"], e["value"]["total"]] for u, e in sorted(expected.items())]
    sql = "SELECT key, count(*), max(\"count\"), max(total) FROM buyer_updates WHERE key NOT LIKE 'vip-%' "
    hw.wait_rows(sql + "GROUP BY key ORDER BY key", rows, timeout=60)
    hw.wait_rows("SELECT key, reason LIKE '%boom items are refused%' FROM processor_errors", [["buyer-b-03", True]])

    # a later batch adds the field `vip`: a new column, NULL in the files written before it
    start = (int(time.time()) - 1800) * 1000
    later = generate([f"vip-{i}" for i in range(5)], ["vip-box", "pen"], 9, start)
    send(hw, later)
    vip = reference(later)
    vip_rows = [[u, sum(1 for p in later if p[0] == u and p[1] == "vip-box"), e["value"]["total"]]
                for u, e in sorted(vip.items())]  # fmt: skip
    vip_sql = "SELECT key, count(vip), max(total) FROM buyer_updates WHERE key LIKE 'vip-%' GROUP BY key ORDER BY key"
    wait_query(hw, vip_sql, vip_rows)
    assert hw.sql("SELECT count(*) FROM buyer_updates WHERE vip IS NOT NULL AND key LIKE 'buyer-%'") == [[0]]
    for user, e in vip.items():
        assert state(hw, "buyer_totals", user).json()["value"] == e["value"]
    refused = httpx.post(hw.url + "/api/query", json={"sql": "SELECT * FROM read_csv('/etc/passwd')"},
                         headers={"Authorization": f"Bearer {hw.keys['read']}"}, timeout=30)  # fmt: skip
    assert refused.status_code == 403  # the sandbox still holds


def test_state_file_absent_is_a_clear_404(hw: RunningHeadwater) -> None:
    """A manifest whose state file is gone (e.g. deleted by hand) answers 404 naming the processor."""
    folder = hw.data_dir / "processors" / "ghost"
    folder.mkdir(parents=True)
    manifest = {"processor": "ghost", "run": "r1", "input": "events", "started_at": 1,
                "outputs": {"streams": [], "tables": [], "state_tables": ["ghost_table"], "sinks": []}}  # fmt: skip
    (folder / "manifest.json").write_text(json.dumps(manifest))
    response = get(hw, "/api/state/ghost_table/k")
    assert response.status_code == 404 and "ghost" in response.json()["error"]
    ghost = next(p for p in get(hw, "/api/processors").json()["processors"] if p["name"] == "ghost")
    assert ghost["stale"] is True and ghost["records_in"] is None


def test_engine_views_follow_output_tables(data_dir: Path) -> None:
    """In-process: a table appears as a view, is empty with its columns, grows a column (older files
    read it as NULL), and its view goes when the table is dropped; `events` is untouched."""
    settings = make_settings(data_dir)
    engine = QueryEngine(settings)
    catalog = open_catalog(settings)
    try:
        first = pa.table(
            {"key": ["a"], "event_time": [datetime(2026, 1, 1, tzinfo=UTC)], "n": pa.array([1], pa.int64())}
        )
        table = catalog.create_table((NAMESPACE, "my-counts"), schema=first.schema)
        result = engine.execute('SELECT * FROM "my-counts"')
        assert result.rows == [] and result.columns == ["key", "event_time", "n"]
        table.append(first)
        with table.update_schema() as update:
            update.add_column("note", StringType())
        later = pa.table({"key": ["b"], "event_time": [datetime(2026, 1, 1, tzinfo=UTC) + timedelta(hours=1)],
                          "n": pa.array([2], pa.int64()), "note": ["new"]})  # fmt: skip
        table.append(later.cast(table.schema().as_arrow()))
        rows = engine.execute('SELECT key, n, note, event_time::VARCHAR FROM "my-counts" ORDER BY key').rows
        assert rows == [["a", 1, None, "2026-01-01 00:00:00+00"], ["b", 2, "new", "2026-01-01 01:00:00+00"]]
        assert engine.execute("SELECT count(*) FROM events").rows == [[0]]
        catalog.drop_table((NAMESPACE, "my-counts"))
        with pytest.raises(QueryError) as gone:
            engine.execute('SELECT * FROM "my-counts"')
        assert "my-counts" in str(gone.value)
    finally:
        engine.close()
        close_catalog(catalog)
