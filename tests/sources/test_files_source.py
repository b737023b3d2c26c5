"""File drops: every format and compression, mapping, quarantine, resume after a crash, done files."""

from __future__ import annotations

import base64
import csv
import gzip
import time
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from headwater.core.errors import SourceError, SourceUnavailable
from headwater.sources.file_store import FileStore
from tests.sources.support import drain, events_of, log_envelopes, make_runner, ndjson, quarantined, settled


def test_ndjson_plain_gzip_and_zstd_with_mapping(data_dir: Path, drop: Path) -> None:
    rows = [{"kind": "bet", "who": {"id": f"u{i}"}, "at": f"2026-11-2{i % 3}T10:00:00Z", "stake": i} for i in range(30)]
    (drop / "a.ndjson").write_bytes(ndjson(rows[:10]))
    (drop / "b.ndjson.gz").write_bytes(gzip.compress(ndjson(rows[10:20])))
    with pa.output_stream(str(drop / "c.ndjson.zst"), compression="zstd") as out:
        out.write(ndjson(rows[20:]))
    for path in drop.iterdir():
        settled(path)
    runner = make_runner(
        data_dir, kind="files", format="ndjson", path=str(drop),
        mapping={"event": "{kind}_placed", "user_id": "who.id", "timestamp": "at"},
    )  # fmt: skip
    assert drain(runner) == 30
    events = events_of(log_envelopes(runner.event_log))
    assert sorted(e["stake"] for e in events) == list(range(30))
    first = next(e for e in events if e["stake"] == 4)
    assert first["event"] == "bet_placed" and first["userId"] == "u4" and first["timestamp"] == "2026-11-21T10:00:00Z"
    assert first["kind"] == "bet" and first["who"] == {"id": "u4"}  # the record is kept whole as properties
    assert len({e["messageId"] for e in events}) == 30  # stable ids: file key + record number
    store = FileStore(runner.settings.effective_catalog_uri, "src")
    assert store.counts() == {"done": 3}
    store.close()
    runner.close()


def test_csv_parquet_and_json_files(data_dir: Path, drop: Path) -> None:
    with open(drop / "a.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["event", "user_id", "amount"])
        writer.writerows([["pay", f"u{i}", i * 1.5] for i in range(5)])
    pq.write_table(
        pa.table({"event": ["view"] * 4, "userId": ["p1", "p2", "p3", "p4"], "n": [1, 2, 3, 4]}), drop / "b.parquet"
    )
    (drop / "c.json").write_bytes(
        orjson.dumps([{"event": "j", "anonymousId": "a1"}, {"event": "j", "anonymousId": "a2"}])
    )
    for path in drop.iterdir():
        settled(path)
    total = 0
    for fmt, pattern in (("csv", "*.csv"), ("parquet", "*.parquet"), ("json", "*.json")):
        runner = make_runner(data_dir, kind="files", format=fmt, path=str(drop), pattern=pattern, name=f"f-{fmt}")
        total += drain(runner)
        runner.close()
    assert total == 11
    events = events_of(log_envelopes(runner.event_log))
    pays = sorted((e["userId"], e["amount"]) for e in events if e["event"] == "pay")
    assert pays == [(f"u{i}", i * 1.5) for i in range(5)]  # CSV types inferred
    assert sorted(e["n"] for e in events if e["event"] == "view") == [1, 2, 3, 4]
    assert sorted(e["anonymousId"] for e in events if e["event"] == "j") == ["a1", "a2"]


def test_bad_lines_and_a_corrupt_archive_are_quarantined_the_rest_lands(data_dir: Path, drop: Path) -> None:
    (drop / "a.ndjson").write_bytes(
        b'{"event":"ok","userId":"u1"}\n{broken\n{"userId":"u2"}\n{"event":"ok","userId":"u3"}\n'
        b'{"event":"ok","userId":"Ren\xe9"}\n'  # latin-1, not UTF-8: a wrong encoding
    )
    (drop / "b.ndjson.gz").write_bytes(gzip.compress(ndjson([{"event": "gz", "userId": "x"}] * 50))[:-30])  # truncated
    (drop / "c.ndjson").write_bytes(b'{"event":"ok","userId":"u4"}\n')
    for path in drop.iterdir():
        settled(path)
    runner = make_runner(data_dir, kind="files", format="ndjson", path=str(drop), mapping={"event": "event"})
    drain(runner)
    envelopes = log_envelopes(runner.event_log)
    assert sorted(e["userId"] for e in events_of(envelopes)) == ["u1", "u3", "u4"]  # nothing of the archive
    reasons = sorted(q["q"] for q in quarantined(envelopes))
    assert len(reasons) == 4, reasons
    assert reasons[0].startswith("a.ndjson record 2: invalid JSON")
    assert reasons[1].startswith("a.ndjson record 3: mapping.event: the record has no value at 'event'")
    assert reasons[2].startswith("a.ndjson record 5: invalid JSON: str is not valid UTF-8")
    assert reasons[3].startswith("file b.ndjson.gz:")
    assert all(q["m"]["src"] == "src" and q["m"]["ep"] == "source.files" for q in quarantined(envelopes))
    assert any(q["raw"] == "{broken" for q in quarantined(envelopes))
    latin = base64.b64encode(b'{"event":"ok","userId":"Ren\xe9"}').decode()
    assert any(q["raw"] == f"base64:{latin}" for q in quarantined(envelopes))  # the bytes kept exactly
    store = FileStore(runner.settings.effective_catalog_uri, "src")
    assert store.counts() == {"done": 2, "failed": 1}
    failed = next(r for r in store.recent() if r.state == "failed")
    assert failed.path.endswith("b.ndjson.gz") and failed.error and "b.ndjson.gz" in failed.error
    assert runner.status.rejected == 4
    store.close()
    runner.close()


class Crash(Exception):
    pass


def test_a_crash_between_append_and_acknowledge_repeats_nothing(data_dir: Path, drop: Path) -> None:
    """The worst crash point: records durable in the log, progress not saved; the next run re-reads them."""
    rows = [{"event": "e", "userId": f"u{i}", "n": i} for i in range(1000)]
    (drop / "big.ndjson").write_bytes(ndjson(rows))
    settled(drop / "big.ndjson")
    runner = make_runner(data_dir, kind="files", format="ndjson", path=str(drop), batch_size=64)
    acknowledge = runner.reader.acknowledge
    calls = 0

    def crash_on_fourth(deliveries: list) -> None:  # type: ignore[type-arg]
        nonlocal calls
        calls += 1
        if calls == 4:
            raise Crash
        acknowledge(deliveries)

    runner.reader.acknowledge = crash_on_fourth  # type: ignore[method-assign]
    with pytest.raises(Crash):
        drain(runner)
    runner.close()
    store = FileStore(runner.settings.effective_catalog_uri, "src")
    assert store.recent()[0].records == 3 * 64 and store.recent()[0].state == "reading"
    again = make_runner(data_dir, kind="files", format="ndjson", path=str(drop), batch_size=64)
    assert drain(again) == 1000 - 3 * 64  # resumed where the acknowledged progress stopped
    events = events_of(log_envelopes(again.event_log))
    assert sorted(e["n"] for e in events) == list(range(1000))  # the 4th batch is in the log once
    assert again.status.duplicates == 64  # ... because its re-append was dropped as a repeat
    assert store.counts() == {"done": 1}
    store.close()
    again.close()


def test_done_files_are_moved_and_never_read_twice(data_dir: Path, drop: Path, tmp_path: Path) -> None:
    (drop / "a.ndjson").write_bytes(ndjson([{"event": "e", "userId": "u"}]))
    settled(drop / "a.ndjson")
    done = tmp_path / "done"
    runner = make_runner(data_dir, kind="files", format="ndjson", path=str(drop), move_to=str(done), poll_seconds=0.01)
    assert drain(runner) == 1
    assert not (drop / "a.ndjson").exists() and (done / "a.ndjson").exists()
    (drop / "b.ndjson").write_bytes(ndjson([{"event": "e", "userId": "v"}]))
    settled(drop / "b.ndjson")
    assert drain(runner) == 1
    runner.close()
    again = make_runner(data_dir, kind="files", format="ndjson", path=str(drop))
    assert drain(again) == 0
    again.close()


def test_fresh_files_wait_and_temporary_names_are_skipped(data_dir: Path, drop: Path) -> None:
    (drop / "new.ndjson").write_bytes(ndjson([{"event": "e", "userId": "u"}]))  # modified just now
    (drop / ".hidden.ndjson").write_bytes(b"x")
    (drop / "part.ndjson.tmp").write_bytes(b"x")
    settled(drop / ".hidden.ndjson")
    settled(drop / "part.ndjson.tmp")
    runner = make_runner(data_dir, kind="files", format="ndjson", path=str(drop), poll_seconds=0.01)
    assert drain(runner) == 0
    settled(drop / "new.ndjson")
    time.sleep(0.02)
    assert drain(runner) == 1
    runner.close()


def test_a_missing_directory_is_a_clear_error(data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="is not a directory"):
        make_runner(data_dir, kind="files", format="ndjson", path=str(tmp_path / "nope"))


def test_a_failed_batch_is_retried_before_anything_newer_is_read(data_dir: Path, drop: Path) -> None:
    """Acknowledging a later batch would acknowledge the failed one too: it must go first, as it was."""
    (drop / "a.ndjson").write_bytes(ndjson([{"event": "e", "userId": f"u{i}", "n": i} for i in range(10)]) + b"{bad")
    settled(drop / "a.ndjson")
    runner = make_runner(data_dir, kind="files", format="ndjson", path=str(drop), batch_size=4)
    acknowledge = runner.reader.acknowledge
    failures = iter([True])
    read = runner.reader.read
    reads = 0

    def counting_read(max_records: int, timeout_s: float) -> list:  # type: ignore[type-arg]
        nonlocal reads
        reads += 1
        return read(max_records, timeout_s)

    def flaky(deliveries: list) -> None:  # type: ignore[type-arg]
        if deliveries[0].token[1] == 8 and next(failures, False):
            raise SourceUnavailable("connection lost")
        acknowledge(deliveries)

    runner.reader.read = counting_read  # type: ignore[method-assign]
    runner.reader.acknowledge = flaky  # type: ignore[method-assign]
    assert runner.step(0.05) == 4 and runner.step(0.05) == 4
    with pytest.raises(SourceUnavailable):
        runner.step(0.05)  # records 8..10 durable in the log, not acknowledged
    assert runner.step(0.05) == 3 and reads == 3  # the same three again, nothing new read
    drain(runner)
    events = events_of(log_envelopes(runner.event_log))
    assert sorted(e["n"] for e in events) == list(range(10))
    assert runner.status.rejected == 1 and runner.status.duplicates == 2  # counted once; re-append dropped
    runner.close()
