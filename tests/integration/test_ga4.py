"""GA4 / Firebase BigQuery export import: `headwater import --format ga4` against a running `headwater up`.

Export files are generated in the real export schema (headwater.loadgen.ga4) as Parquet, Avro and NDJSON
(INT64 as strings, as BigQuery writes them); queries go through the server's /api/query.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import orjson

from headwater.core.erasure import Suppressor
from headwater.lake.coordination import open_engine
from headwater.lake.ga4 import Ga4Importer
from headwater.lake.ga4_read import ExportFile
from headwater.loadgen.ga4 import bigquery_json, export_name, ga4_day, intraday_of, write_export
from tests.helpers import RunningHeadwater, child_env, make_settings

ROWS = 1500


def hw(headwater: RunningHeadwater, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = child_env(headwater.data_dir, **headwater.settings)
    result = subprocess.run(
        [sys.executable, "-m", "headwater.cli.main", *args],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def ids_of(headwater: RunningHeadwater, source: str, day: str) -> list[str]:
    rows = headwater.sql(
        f"SELECT event_id FROM events WHERE source = '{source}' AND json_extract_string(context, '$.ga4.event_date') "
        f"= '{day}' ORDER BY 1"
    )
    return [r[0] for r in rows]


def day_files(folder: Path, day: dt.date, full_fmt: str = "parquet", intraday_fmt: str = "ndjson") -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    full = ga4_day(day, ROWS)
    daily = write_export(full, folder / export_name(day, full_fmt), full_fmt)
    intraday = write_export(intraday_of(full), folder / export_name(day, intraday_fmt, intraday=True), intraday_fmt)
    return daily, intraday


def test_intraday_then_daily_and_reruns_leave_exactly_the_daily_rows(
    headwater: RunningHeadwater, tmp_path: Path
) -> None:
    day = dt.date(2025, 1, 10)
    daily, intraday = day_files(tmp_path, day)
    hw(headwater, "import", "--format", "ga4", str(intraday))
    early = ids_of(headwater, "ga4", "20250110")
    assert len(early) == len(set(early)) == int(ROWS * 0.6)
    intraday_rows = "SELECT count(*) FROM events WHERE source = 'ga4' AND json_extract(context, '$.ga4.intraday')"
    assert headwater.sql(intraday_rows) == [[len(early)]]
    imported = orjson.loads(hw(headwater, "import", "--format", "ga4", str(daily)).stdout)
    assert imported["file_rows"] == imported["imported"] == ROWS
    assert imported["groups"][0]["rewrite"]["rows_removed"] == len(early)
    final = ids_of(headwater, "ga4", "20250110")
    assert len(final) == len(set(final)) == ROWS
    assert not set(final) & set(early)  # the intraday rows (no traffic source yet) are all gone
    for args in ([str(intraday)], [str(daily)], [str(intraday)], [str(daily), str(daily)]):
        out = orjson.loads(hw(headwater, "import", "--format", "ga4", *args).stdout)
        if str(daily) in args:
            assert ids_of(headwater, "ga4", "20250110") == final  # same rows, same ids: never doubled
    assert out["groups"][0]["files"] == [daily.name]  # a file given twice is read once
    both = orjson.loads(hw(headwater, "import", "--format", "ga4", str(intraday), str(daily)).stdout)
    assert both["groups"][0]["superseded"] == [intraday.name]
    assert ids_of(headwater, "ga4", "20250110") == final
    counts = headwater.sql(
        "SELECT count(*), count(DISTINCT event_id), min(timestamp), max(timestamp) FROM events WHERE source = 'ga4' "
        "AND event_id LIKE 'ga4-20250110-%'"
    )
    assert counts[0][:2] == [ROWS, ROWS] and headwater.sql(intraday_rows) == [[0]]


def test_params_and_nested_fields_are_queryable(headwater: RunningHeadwater, tmp_path: Path) -> None:
    day = dt.date(2025, 1, 11)
    full = ga4_day(day, ROWS)
    path = write_export(full, tmp_path / export_name(day, "avro"), "avro")
    hw(headwater, "import", "--format", "ga4", "--source", "web", str(path))
    export = full.to_pylist()
    purchases = [r for r in export if r["event_name"] == "purchase"]
    by_country: dict[str, int] = {}
    for row in export:
        by_country[row["geo"]["country"]] = by_country.get(row["geo"]["country"], 0) + 1
    rows = headwater.sql(
        "SELECT json_extract_string(context, '$.geo.country') AS country, count(*) FROM events WHERE source = 'web' "
        "GROUP BY 1 ORDER BY 1"
    )
    assert {r[0]: r[1] for r in rows} == by_country
    first = export[0]
    params = {p["key"]: next(v for v in p["value"].values() if v is not None) for p in first["event_params"]}
    found = headwater.sql(
        "SELECT json_extract_string(properties, '$.page_location'), "
        "json_extract_string(properties, '$.ga_session_id'), "
        "json_extract_string(context, '$.device.category'), json_extract_string(context, '$.traffic_source.medium'), "
        "json_extract_string(context, '$.ga4.privacy_info.analytics_storage'), anonymous_id, user_id, timestamp "
        f"FROM events WHERE source = 'web' AND timestamp = make_timestamp({first['event_timestamp']})"
    )
    assert found == [[
        params["page_location"], str(params["ga_session_id"]), first["device"]["category"],
        first["traffic_source"]["medium"], "Yes", first["user_pseudo_id"], first["user_id"],
        dt.datetime.fromtimestamp(first["event_timestamp"] / 1e6, dt.UTC).replace(tzinfo=None).isoformat(),
    ]]  # fmt: skip
    revenue = headwater.sql(
        "SELECT count(*), round(sum(CAST(json_extract(properties, '$.ecommerce.purchase_revenue') AS DOUBLE)), 2), "
        "count(DISTINCT json_extract_string(properties, '$.items[0].item_id')), "
        "sum(CAST(json_extract(properties, '$.items[0].item_params.bundle_size') AS INTEGER)) "
        "FROM events WHERE source = 'web' AND event = 'purchase'"
    )
    assert revenue[0][0] == len(purchases)
    assert revenue[0][1] == round(sum(r["ecommerce"]["purchase_revenue"] for r in purchases), 2)
    assert revenue[0][2] == len({r["items"][0]["item_id"] for r in purchases})
    assert revenue[0][3] == sum(r["items"][0]["quantity"] for r in purchases)
    traits = headwater.sql(
        "SELECT count(*) FROM events WHERE source = 'web' AND json_extract_string(traits, '$.plan') = 'pro'"
    )
    assert traits[0][0] == sum(
        1 for r in export for p in r["user_properties"] if p["key"] == "plan" and p["value"]["string_value"] == "pro"
    )


def test_parquet_avro_and_ndjson_give_the_same_rows(headwater: RunningHeadwater, tmp_path: Path) -> None:
    day = dt.date(2025, 1, 12)
    full = ga4_day(day, 600, seed=3)
    seen: dict[str, list[list[Any]]] = {}
    for fmt in ("parquet", "avro", "ndjson", "ndjson.gz"):
        path = write_export(full, tmp_path / export_name(day, fmt), fmt)
        source = "fmt-" + fmt.replace(".", "-")
        hw(headwater, "import", "--format", "ga4", "--source", source, str(path))
        seen[fmt] = headwater.sql(
            f"SELECT event_id, event, user_id, anonymous_id, timestamp, properties, traits, "
            f"json_extract(context, '$.device'), json_extract(context, '$.ga4.batch_event_index') "
            f"FROM events WHERE source = '{source}' ORDER BY event_id"
        )
    assert len(seen["parquet"]) == 600
    assert seen["avro"] == seen["parquet"] == seen["ndjson"] == seen["ndjson.gz"]


def test_reconciliation_from_the_cli_and_the_api(headwater: RunningHeadwater, tmp_path: Path) -> None:
    days = [dt.date(2025, 1, 20), dt.date(2025, 1, 21)]
    paths = [day_files(tmp_path / d.isoformat(), d, "ndjson.gz", "parquet") for d in days]
    hw(headwater, "import", "--format", "ga4", "--source", "app", *(str(p[0]) for p in paths))
    report = orjson.loads(hw(headwater, "import", "--format", "ga4", "--source", "app", "--report", "--json").stdout)
    assert report["mismatched"] == 0 and [d["event_date"] for d in report["days"]] == ["20250120", "20250121"]
    assert all(d["file_rows"] == d["expected"] == d["lake_rows"] == ROWS for d in report["days"])
    checked = hw(headwater, "import", "--format", "ga4", "--source", "app", "--report", "--json", str(paths[1][0]))
    assert orjson.loads(checked.stdout)["days"][0]["difference"] == 0
    api = httpx.get(
        headwater.url + "/api/imports/ga4/reconcile", params={"source": "app", "since": "2025-01-20"},
        headers={"Authorization": f"Bearer {headwater.keys['read']}"}, timeout=30,
    ).json()  # fmt: skip
    assert api["days"] == report["days"] and api["totals"]["lake_rows"] == 2 * ROWS
    # the intraday file of the second day, given now, holds fewer rows than the lake: the report says so
    stale = hw(headwater, "import", "--format", "ga4", "--source", "app", "--report", str(paths[1][1]), check=False)
    assert stale.returncode == 2 and "1 of 1 days differ" in stale.stderr
    hw(headwater, "import", "--format", "ga4", "--source", "app", str(paths[1][1]))  # the lake follows the files
    api = httpx.get(
        headwater.url + "/api/imports/ga4/reconcile", params={"source": "app", "until": "20250121"},
        headers={"Authorization": f"Bearer {headwater.keys['read']}"}, timeout=30,
    ).json()  # fmt: skip
    assert [(d["file_rows"], d["lake_rows"], d["intraday"]) for d in api["days"]] == [
        (ROWS, ROWS, False), (int(ROWS * 0.6), int(ROWS * 0.6), True)]  # fmt: skip
    refused = httpx.get(headwater.url + "/api/imports/ga4/reconcile", params={"since": "x"}, timeout=30)
    assert refused.status_code == 401


def test_bad_rows_go_to_quarantine_with_the_reason(headwater: RunningHeadwater, tmp_path: Path) -> None:
    day = dt.date(2025, 1, 25)
    rows = [bigquery_json(r) for r in ga4_day(day, 50).to_pylist()]
    rows[3].pop("event_timestamp")
    rows[7]["event_timestamp"] = "soon"
    rows[9]["event_params"][0]["value"] = {"int_value": "many"}
    rows[11]["event_timestamp"] = str(int(rows[11]["event_timestamp"]) + 5 * 86_400_000_000)
    rows[13]["event_date"] = "2025-01-25"
    lines = [orjson.dumps(r) for r in rows]
    lines[20] = lines[20][:-40]  # cut short
    path = tmp_path / export_name(day, "ndjson")
    path.write_bytes(b"\n".join(lines) + b"\n")
    out = orjson.loads(hw(headwater, "import", "--format", "ga4", "--source", "bad", str(path)).stdout)
    assert out["imported"] == 44 and out["quarantined"] == 4 and out["undated"] == 2
    assert len(ids_of(headwater, "bad", "20250125")) == 44
    reasons = headwater.sql(
        "SELECT log_offset, reason, raw FROM quarantine WHERE source = 'bad' AND endpoint = 'import.ga4' ORDER BY 1"
    )
    assert [r[0] for r in reasons] == [4, 8, 10, 12, 14, 21]
    text = {r[0]: r[1] for r in reasons}
    assert text[4] == f"{path.name} line 4: event_timestamp: required"
    assert text[8] == f"{path.name} line 8: event_timestamp: 'soon' is not an integer"
    assert text[10] == f"{path.name} line 10: event_params[].value.int_value: 'many' is not an integer"
    assert "is more than a day away from event_date 20250125" in text[12]
    assert text[14] == f"{path.name} line 14: event_date: expected a date as YYYYMMDD, got '2025-01-25'"
    assert text[21].startswith(f"{path.name} line 21: cannot be read: ")
    assert {r[0]: r[2] for r in reasons}[8] == lines[7].decode()  # the line as it was


def test_a_query_during_replaces_never_sees_the_day_empty_or_doubled(
    headwater: RunningHeadwater, tmp_path: Path
) -> None:
    day = dt.date(2025, 2, 1)
    daily, intraday = day_files(tmp_path, day, "parquet", "parquet")
    settings = make_settings(headwater.data_dir, **headwater.settings)
    importer = Ga4Importer(settings, "race")
    exports = [ExportFile.local(daily), ExportFile.local(intraday)]
    importer.import_files(exports[:1])
    seen: list[int] = []
    done = threading.Event()

    def watch() -> None:
        sql = "SELECT count(*) FROM events WHERE source = 'race' AND event_id LIKE 'ga4-20250201-%'"
        while not done.is_set():
            seen.append(headwater.sql(sql)[0][0])

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for round_ in range(8):
            importer.import_files(exports[round_ % 2 : round_ % 2 + 1])
    finally:
        done.set()
        watcher.join()
        importer.close()
    assert seen and set(seen) <= {ROWS, int(ROWS * 0.6)}, sorted(set(seen))


def test_people_under_suppression_are_not_imported_again(headwater: RunningHeadwater, tmp_path: Path) -> None:
    day = dt.date(2025, 2, 5)
    full = ga4_day(day, ROWS, users=400, seed=8)  # people 0-399: others in this module stay below 100
    export = [r for r in full.to_pylist() if r["user_id"] and int(r["user_id"].split("-")[1]) >= 100]
    deleted = max({r["user_id"] for r in export}, key=lambda u: sum(r["user_id"] == u for r in export))
    theirs = sum(1 for r in full.to_pylist() if r["user_id"] == deleted)
    settings = make_settings(headwater.data_dir, **headwater.settings)
    engine = open_engine(settings.effective_catalog_uri)
    try:
        Suppressor(engine, settings.privacy_salt or None).add([deleted], days=1)
    finally:
        engine.dispose()
    path = write_export(full, tmp_path / export_name(day, "parquet"), "parquet")
    out = orjson.loads(hw(headwater, "import", "--format", "ga4", "--source", "gdpr", str(path)).stdout)
    assert out["suppressed"] == theirs > 0 and out["imported"] == ROWS - theirs
    assert headwater.sql(f"SELECT count(*) FROM events WHERE user_id = '{deleted}'") == [[0]]
    report = orjson.loads(hw(headwater, "import", "--format", "ga4", "--source", "gdpr", "--report", "--json").stdout)
    assert report["days"][0]["suppressed"] == theirs and report["mismatched"] == 0
