"""Compaction in the ops worker (its own view of the tables) while the lake writer keeps committing."""

from __future__ import annotations

from pathlib import Path

import pytest
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.table import Table

from headwater.lake.maintenance import Maintenance
from headwater.lake.tables import snapshot_offsets
from headwater.lake.writer import LakeWriter
from tests.unit.test_lake import count, envelope, pump, setup


def ops_view(writer: LakeWriter) -> dict[str, Table]:
    """The tables as another process loaded them (they do not see the writer's later commits)."""
    return {name: writer.catalog.load_table(f"headwater.{name}") for name in writer.tables}


def data_files(table: Table) -> set[str]:
    return {task.file.file_path for task in table.scan().plan_files()}


def test_compaction_commits_after_the_writer_appended_meanwhile(data_dir: Path) -> None:
    _, producer, writer = setup(data_dir, compact_min_files=4)
    for round_ in range(4):
        producer.append([(b"u", envelope(round_ * 10 + i)) for i in range(10)]).result()
        pump(writer)
    maintenance = Maintenance(writer.settings, ops_view(writer), writer.files)
    producer.append([(b"u", envelope(100 + i)) for i in range(10)]).result()
    pump(writer)  # a commit the ops worker's tables have not seen
    assert maintenance.compact("events") == 1
    table = maintenance.tables["events"]
    assert len(data_files(table)) == 2  # the four compacted into one, and the writer's newer file
    assert snapshot_offsets(table) == writer.table_offsets["events"]  # the offsets of the version it committed on
    assert count(data_dir, "SELECT count(*), count(DISTINCT event_id) FROM events") == [[50, 50]]
    producer.close()


def test_a_stale_compaction_of_files_already_replaced_commits_nothing(data_dir: Path) -> None:
    _, producer, writer = setup(data_dir, compact_min_files=4)
    for round_ in range(4):
        producer.append([(b"u", envelope(round_ * 10 + i)) for i in range(10)]).result()
        pump(writer)
    stale = Maintenance(writer.settings, ops_view(writer), writer.files)
    assert Maintenance(writer.settings, writer.tables, writer.files).compact("events") == 1  # the writer's own
    writer.tables["events"].refresh()
    before = data_files(writer.tables["events"])
    data_root = Path(writer.tables["events"].location().removeprefix("file://")) / "data"
    on_disk = set(data_root.rglob("*.parquet"))
    with pytest.raises(CommitFailedException):
        stale.compact("events")
    assert data_files(stale.tables["events"]) == before
    assert set(data_root.rglob("*.parquet")) == on_disk  # its own files were discarded at once
    assert count(data_dir, "SELECT count(*), count(DISTINCT event_id) FROM events") == [[40, 40]]
    producer.close()
