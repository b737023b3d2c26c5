"""Shared by the enrichment tests: batches shaped like the lake writer's (EVENTS_SCHEMA + stage inputs)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from headwater.core.events import EVENTS_SCHEMA, TS
from headwater.core.settings import Settings
from headwater.core.stages import INPUT_COLUMNS, StageBatch
from headwater.enrich import enrichment_stages
from headwater.enrich.common import per_distinct, set_column
from headwater.lake.coordination import open_engine

T0 = datetime(2025, 3, 1, 12, 0, 0)


def events_table(rows: list[dict[str, Any]]) -> pa.Table:
    """A batch from partial rows: defaults for the required columns, NULL elsewhere."""
    columns: dict[str, list[Any]] = {name: [] for name in (*EVENTS_SCHEMA.names, *INPUT_COLUMNS)}
    for index, row in enumerate(rows):
        full = {
            "event_id": f"e{index}",
            "type": "track",
            "event": "Clicked",
            "timestamp": T0 + timedelta(seconds=index),
            "received_at": T0,
            "source": "web",
            "_endpoint": "track",
            "_log_partition": 0,
            "_log_offset": index,
            **row,
        }
        unknown = set(full) - set(columns)
        assert not unknown, unknown
        for name, values in columns.items():
            values.append(full.get(name))
    schema = pa.schema([*EVENTS_SCHEMA, *(pa.field(n, t) for n, t in INPUT_COLUMNS.items())])
    arrays = [pa.array(columns[f.name], f.type if f.type != TS else TS) for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def run(stages: list[Any], table: pa.Table) -> pa.Table:
    batch = StageBatch(table)
    for stage in stages:
        batch = stage.apply(batch)
        assert batch.events.num_rows == table.num_rows
    return batch.events


def test_per_distinct_maps_each_value_once_and_keeps_nulls() -> None:
    calls: list[Any] = []

    def fn(value: Any) -> tuple[Any, ...]:
        calls.append(value)
        return (None if value is None else value.upper(), 0 if value is None else len(value))

    column = pa.chunked_array([["ab", None, "c"], ["ab", "c", None]])
    upper, length = per_distinct(column, fn, [pa.string(), pa.int64()])
    assert upper.to_pylist() == ["AB", None, "C", "AB", "C", None]
    assert length.to_pylist() == [2, 0, 1, 2, 1, 0]
    assert sorted(calls, key=str) == sorted(["ab", None, "c"], key=str)


def test_set_column_replaces_or_appends() -> None:
    table = pa.table({"a": [1, 2]})
    table = set_column(table, "b", pa.array(["x", "y"]))
    table = set_column(table, "a", pa.array([3, 4]))
    assert table.column_names == ["a", "b"]
    assert table.column("a").to_pylist() == [3, 4]


def test_stages_in_order_and_disabled_ones_skipped(tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    engine = open_engine(f"sqlite:///{tmp_path / 'catalog.db'}")
    try:
        caplog.set_level("INFO", logger="headwater.enrich")
        stages = enrichment_stages(Settings(data_dir=tmp_path), engine)
        assert [s.name for s in stages] == [
            "enrich_user_agent", "enrich_bots", "enrich_ip", "enrich_referrer", "enrich_sessions",
        ]  # fmt: skip
        assert "no enrich_geoip_database" in caplog.text and "ua-parser-rs" in caplog.text
        none = Settings(
            data_dir=tmp_path,
            enrich_user_agent=False,
            enrich_bots=False,
            enrich_referrer=False,
            enrich_sessions=False,
            enrich_ip="keep",
        )
        assert [s.name for s in enrichment_stages(none, engine)] == ["enrich_ip"]
    finally:
        engine.dispose()


def test_each_enrichment_disabled_leaves_its_columns_out(tmp_path: Any) -> None:
    from headwater.enrich import bots, referrer, useragent

    table = events_table(
        [
            {
                "anonymous_id": "a1",
                "_user_agent": "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
                "_ip": "203.0.113.9",
                "_url": "https://shop.example/?utm_source=news&utm_medium=email",
            }
        ]
    )
    everything = {*useragent.COLUMNS, *bots.COLUMNS, *referrer.COLUMNS, "session_id", "ip"}
    switches = {
        "enrich_user_agent": set(useragent.COLUMNS),
        "enrich_bots": set(bots.COLUMNS),
        "enrich_referrer": set(referrer.COLUMNS),
        "enrich_sessions": {"session_id"},
    }
    engine = open_engine(f"sqlite:///{tmp_path / 'catalog.db'}")
    try:
        for switch, columns in switches.items():
            stages = enrichment_stages(Settings(data_dir=tmp_path, **{switch: False}), engine)
            out = set(run(stages, table).column_names)
            assert not out & columns, switch
            assert everything - columns <= out, switch
        geo = {"country", "region", "city"}
        assert not geo & set(run(enrichment_stages(Settings(data_dir=tmp_path), engine), table).column_names)
    finally:
        engine.dispose()


def test_an_empty_batch_goes_through_every_stage(tmp_path: Any) -> None:
    engine = open_engine(f"sqlite:///{tmp_path / 'catalog.db'}")
    try:
        out = run(enrichment_stages(Settings(data_dir=tmp_path), engine), events_table([]))
        assert out.num_rows == 0 and {"browser", "is_bot", "ip", "channel", "session_id"} <= set(out.column_names)
    finally:
        engine.dispose()


TEXT = st.one_of(st.none(), st.text(max_size=60), st.sampled_from(["", " ", '{"ip":"', "::", "1.2.3.4", "http://"]))


@pytest.fixture(scope="module")
def all_stages(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Any]]:
    path = tmp_path_factory.mktemp("fuzz")
    engine = open_engine(f"sqlite:///{path / 'catalog.db'}")
    yield enrichment_stages(Settings(data_dir=path), engine)
    engine.dispose()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(
        st.fixed_dictionaries(
            {
                "_user_agent": TEXT,
                "_ip": TEXT,
                "_url": TEXT,
                "_referrer": TEXT,
                "_endpoint": st.sampled_from(["page", "track", "track-raw", "identify"]),
                "context": st.one_of(TEXT, st.dictionaries(st.sampled_from(["ip", "a"]), TEXT).map(json.dumps)),
                "properties": TEXT,
                "anonymous_id": st.one_of(st.none(), st.sampled_from(["a", "b", ""])),
                "user_id": st.one_of(st.none(), st.sampled_from(["u", "", "ü 1"])),
                "timestamp": st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
            }
        ),
        max_size=12,
    )
)
def test_any_input_goes_through_every_stage(all_stages: list[Any], rows: list[dict[str, Any]]) -> None:
    out = run(all_stages, events_table(rows))
    assert out.column("is_bot").null_count == 0
    assert out.column("session_id").null_count == sum(1 for r in rows if not (r["anonymous_id"] or r["user_id"]))
