"""Sources that land in a table of their own: schema evolution, type conflicts, GRIB grids."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import orjson
import pyarrow as pa
import pytest

from headwater.lake.tables import NAMESPACE, open_catalog
from headwater.loadgen.grib import Field, write_grib
from headwater.sources.file_store import FileStore
from headwater.sources.lander import SourceLander
from tests.sources.support import drain, log_envelopes, make_runner, quarantined, settled


def _land(runner: object) -> SourceLander:
    lander = SourceLander(open_catalog(runner.settings), runner.event_log, runner.source)  # type: ignore[attr-defined]
    while lander.poll(timeout_s=0.1):
        pass
    return lander


def test_new_fields_evolve_the_table_and_type_conflicts_are_quarantined(data_dir: Path, tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "a.ndjson").write_bytes(b"\n".join(orjson.dumps({"id": i, "name": f"n{i}"}) for i in range(5)))
    settled(drop / "a.ndjson")
    runner = make_runner(data_dir, kind="files", format="ndjson", path=str(drop), table="drops", poll_seconds=0.01)
    assert drain(runner) == 5
    lander = _land(runner)
    table = open_catalog(runner.settings).load_table((NAMESPACE, "drops"))
    assert [f.name for f in table.schema().fields][:2] == ["_source_id", "_received_at"]
    first_schema = table.schema().schema_id

    rows = [{"id": 5, "name": "n5", "score": 1.5, "tags": ["x"]}, {"id": "six", "name": "n6"}, {"id": 7, "name": None}]
    (drop / "b.ndjson").write_bytes(b"\n".join(orjson.dumps(r) for r in rows))
    settled(drop / "b.ndjson")
    assert drain(runner) == 3
    while lander.poll(timeout_s=0.1):
        pass
    table = table.refresh()
    assert table.schema().schema_id != first_schema  # a new schema version, recorded by Iceberg
    data = table.scan().to_arrow().sort_by("id")
    assert data.column("id").to_pylist() == [0, 1, 2, 3, 4, 5, 7]
    assert data.schema.field("id").type == pa.int64()
    assert data.column("score").to_pylist() == [None] * 5 + [1.5, None]
    assert data.column("tags").to_pylist()[5] == '["x"]'  # nested values as JSON text
    bad = quarantined(log_envelopes(runner.event_log))
    assert len(bad) == 1
    assert "column id is int64 in table drops; got 'six'" in bad[0]["q"]
    assert orjson.loads(bad[0]["raw"])["id"] == "six"
    # exactly once: a second lander on the same stream finds nothing left to land
    lander.close()
    again = _land(runner)
    assert again.rows == 0
    assert table.refresh().scan().to_arrow().num_rows == 7
    again.close()
    runner.close()


def test_records_of_different_shapes_in_one_batch_keep_every_field(data_dir: Path, tmp_path: Path) -> None:
    """A batch whose first record lacks fields that later ones have (frame types with other layouts)."""
    drop = tmp_path / "drop"
    drop.mkdir()
    rows = [{"kind": "start", "at": 1}, {"kind": "bet", "stake": 2.5, "horses": 3}, {"kind": "cancel", "reason": "x"}]
    (drop / "a.ndjson").write_bytes(b"\n".join(orjson.dumps(r) for r in rows))
    settled(drop / "a.ndjson")
    runner = make_runner(data_dir, kind="files", format="ndjson", path=str(drop), table="mixed")
    drain(runner)
    _land(runner).close()
    data = open_catalog(runner.settings).load_table((NAMESPACE, "mixed")).scan().to_arrow().sort_by("kind")
    assert data.select(["kind", "at", "stake", "horses", "reason"]).to_pylist() == [
        {"kind": "bet", "at": None, "stake": 2.5, "horses": 3, "reason": None},
        {"kind": "cancel", "at": None, "stake": None, "horses": None, "reason": "x"},
        {"kind": "start", "at": 1, "stake": None, "horses": None, "reason": None},
    ]
    runner.close()


def test_a_grib_drop_lands_as_a_gridded_table_once(data_dir: Path, tmp_path: Path) -> None:
    drop = tmp_path / "grib"
    drop.mkdir()
    ref = datetime(2026, 11, 20, 12)
    write_grib(drop / "a.grib2", [Field("2t", reference=ref, step=6), Field("10u", reference=ref, step=30)])
    (drop / "b.grib2").write_bytes((drop / "a.grib2").read_bytes()[:150])  # truncated
    for path in drop.iterdir():
        settled(path)
    runner = make_runner(data_dir, kind="files", format="grib", path=str(drop), table="weather", poll_seconds=0.01)
    drain(runner)
    table = open_catalog(runner.settings).load_table((NAMESPACE, "weather"))
    data = table.scan().to_arrow()
    assert data.num_rows == 24  # two 4 x 3 grids
    assert sorted(set(data.column("parameter").to_pylist())) == ["10u", "2t"]
    valid = sorted(set(data.column("valid_time").to_pylist()))
    assert valid == [datetime(2026, 11, 20, 18), datetime(2026, 11, 21, 18)]
    assert [f.name for f in table.spec().fields] == ["valid_time_day"]
    bad = quarantined(log_envelopes(runner.event_log))
    assert len(bad) == 1 and "b.grib2" in bad[0]["q"] and bad[0]["raw"].startswith("file:")
    store = FileStore(runner.settings.effective_catalog_uri, "src")
    assert store.counts() == {"done": 1, "failed": 1}
    # a crash after the commit and before `done`: the next run sees the file's key in the table
    key = next(r.file_key for r in store.recent() if r.state == "done")
    store.update(key, state="reading")
    runner.close()
    again = make_runner(data_dir, kind="files", format="grib", path=str(drop), table="weather", poll_seconds=0.01)
    drain(again)
    assert table.refresh().scan().to_arrow().num_rows == 24
    assert store.counts() == {"done": 1, "failed": 1}
    store.close()
    again.close()


def test_grib_needs_a_table(data_dir: Path) -> None:
    with pytest.raises(Exception, match="format grib needs kind = files and a `table`"):
        make_runner(data_dir, kind="files", format="grib", path=str(data_dir))
