"""Edge cases found by review: values that do not fit their column, flattened ids, CSV surprises, odd types."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from headwater.lake.tables import NAMESPACE, open_catalog
from headwater.sources import files
from headwater.sources.file_store import FileStore
from headwater.sources.lander import SourceLander
from headwater.sources.runner import SourceRunner
from tests.sources.support import (
    drain,
    events_of,
    log_envelopes,
    make_runner,
    ndjson,
    put_file,
    quarantined,
    settled,
)  # fmt: skip

ONE_PARTITION = {"log_partitions": 1}  # records reach the lander in the order they were written


def _landed(runner: SourceRunner) -> list[dict[str, Any]]:
    lander = SourceLander(open_catalog(runner.settings), runner.event_log, runner.source)
    while lander.poll(timeout_s=0.1):
        pass
    lander.close()
    assert runner.source.table is not None
    table = open_catalog(runner.settings).load_table((NAMESPACE, runner.source.table))
    return sorted(table.scan().to_arrow().to_pylist(), key=lambda r: r.get("n") or 0)


def test_values_that_do_not_fit_their_column_never_stop_the_table(data_dir: Path, drop: Path) -> None:
    rows = [{"zip": "2A004", "n": 1}, {"zip": 75001, "n": 2}, {"zip": True, "n": 3}, {"n": 2**64 - 1, "zip": "x"},
            {"": "empty name", "_source_id": "upstream-7", "n": 5}]  # fmt: skip
    put_file(drop, "a.ndjson", ndjson(rows))
    runner = make_runner(data_dir, ONE_PARTITION, kind="files", format="ndjson", path=str(drop), table="zips")
    drain(runner)
    landed = _landed(runner)
    assert [(r["n"], r["zip"]) for r in landed] == [(1, "2A004"), (2, "75001"), (3, "true"), (5, None)]
    assert landed[-1]["_field"] == "empty name" and landed[-1]["_source_id_"] == "upstream-7"
    bad = quarantined(log_envelopes(runner.event_log))
    assert len(bad) == 1 and "18446744073709551615" in bad[0]["q"]
    put_file(drop, "b.ndjson", ndjson([{"zip": "75002", "n": 6}]))  # and the table goes on
    runner.reader.scan()
    time.sleep(1.1)
    drain(runner)
    assert sorted(r["n"] for r in _landed(runner)) == [1, 2, 3, 5, 6]
    runner.close()


def test_items_of_a_flattened_message_keep_apart_when_the_message_has_an_id(data_dir: Path, drop: Path) -> None:
    message = {"messageId": "zoom-1", "meeting": "m", "logs": [{"event": "join", "userId": u} for u in "abc"]}
    put_file(drop, "a.ndjson", ndjson([message]))
    runner = make_runner(data_dir, kind="files", format="ndjson", path=str(drop), flatten="logs")
    drain(runner)
    events = events_of(log_envelopes(runner.event_log))
    assert sorted(e["messageId"] for e in events) == ["zoom-1#0", "zoom-1#1", "zoom-1#2"]
    assert runner.status.duplicates == 0
    runner.close()


def test_a_record_id_dedupes_copies_in_a_table_of_its_own(data_dir: Path, drop: Path) -> None:
    put_file(drop, "a.ndjson", ndjson([{"bet": "B-1", "stake": 2}, {"bet": "B-2", "stake": 3}]))
    put_file(drop, "b.ndjson", ndjson([{"bet": "B-1", "stake": 2}]))  # the same bet sent again
    runner = make_runner(data_dir, kind="files", format="ndjson", path=str(drop), table="bets", id_field="bet")
    drain(runner)
    assert sorted(r["bet"] for r in _landed(runner)) == ["B-1", "B-2"]
    runner.close()


def test_a_null_message_id_is_replaced_not_repeated(data_dir: Path, drop: Path) -> None:
    put_file(drop, "a.ndjson", b'{"event":"e","userId":"u","messageId":null}\n')
    runner = make_runner(data_dir, kind="files", format="ndjson", path=str(drop))
    drain(runner)
    raw = [r for r in log_envelopes(runner.event_log)]
    assert raw[0]["e"]["messageId"].endswith(":0")
    runner.close()


def test_csv_with_a_late_surprise_and_a_malformed_row(
    data_dir: Path, drop: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(files, "CSV_BLOCK_BYTES", 64)  # types inferred from the first 64 bytes
    lines = ["zip,n"] + [f"{75000 + i},{i}" for i in range(20)] + ["2A004,20", "1,2,3", "75021,21"]
    put_file(drop, "a.csv", ("\n".join(lines) + "\n").encode())
    runner = make_runner(
        data_dir, kind="files", format="csv", path=str(drop), mapping={"event": "=zip", "user_id": "n"}
    )
    drain(runner)
    envelopes = log_envelopes(runner.event_log)
    events = events_of(envelopes)
    assert sorted(int(e["userId"]) for e in events) == list(range(22))  # every good row, once
    assert {str(e["zip"]) for e in events} >= {"75000", "2A004", "75021"}
    bad = quarantined(envelopes)
    assert len(bad) == 1 and bad[0]["q"] == "a.csv line 23: expected 2 columns, got 3" and bad[0]["raw"] == "1,2,3"
    store = FileStore(runner.settings.effective_catalog_uri, "src")
    assert store.counts() == {"done": 1}
    store.close()
    runner.close()


def test_parquet_durations_and_a_byte_order_mark(data_dir: Path, drop: Path) -> None:
    table = pa.table({"event": ["a"], "userId": ["u"], "took": pa.array([dt.timedelta(seconds=90)])})
    pq.write_table(table, drop / "a.parquet")
    settled(drop / "a.parquet")
    runner = make_runner(data_dir, kind="files", format="parquet", path=str(drop))
    drain(runner)
    assert events_of(log_envelopes(runner.event_log))[0]["took"] == 90.0
    runner.close()
    bom = drop / "bom"
    bom.mkdir()
    put_file(
        bom, "b.ndjson", b"\xef\xbb\xbf" + ndjson([{"event": "e", "userId": "u1"}, {"event": "e", "userId": "u2"}])
    )
    runner = make_runner(data_dir, kind="files", format="ndjson", path=str(bom), name="bom")
    drain(runner)
    assert len(events_of(log_envelopes(runner.event_log))) == 3 and not quarantined(log_envelopes(runner.event_log))
    runner.close()


def test_an_archived_name_is_never_overwritten(data_dir: Path, drop: Path, tmp_path: Path) -> None:
    done = tmp_path / "done"
    runner = make_runner(data_dir, kind="files", format="ndjson", path=str(drop), move_to=str(done), poll_seconds=0.01)
    put_file(drop, "daily.ndjson", ndjson([{"event": "e", "userId": "u", "day": 1}]))
    drain(runner)
    put_file(drop, "daily.ndjson", ndjson([{"event": "e", "userId": "u", "day": 2}]))
    drain(runner)
    archived = sorted(p.name for p in done.iterdir())
    assert len(archived) == 2 and "daily.ndjson" in archived
    runner.close()
