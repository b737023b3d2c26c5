"""History for a scenario: generated and imported through the lake importer, with the lake writer's stages.

`backfill` hands the importer the rows the scenario's Segment events normalise to (`base.lake_rows`: the same
columns the importer makes of the JSON lines, built with Arrow kernels instead of parsing each line, about ten
times faster) as one import named after the scenario, seed, size and end: running it again resumes instead of
duplicating. With a stage factory (`headwater.runtime.stages.build_stages`) the history gets the same
enrichments and identity links as live events. `write_files` writes the same events as gzip'd NDJSON files
instead (for `headwater import`, or another tool).
"""

from __future__ import annotations

import gzip
import os
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from headwater.core.settings import Settings
from headwater.lake.importer import Importer, StageFactory
from headwater.loadgen.scenarios import SCENARIOS
from headwater.loadgen.scenarios.base import DAY_US, Scenario, lake_rows, render

ROWS_PER_FILE = 1_000_000  # the importer's commit size: one commit per file
RENDER_ROWS = 250_000
Progress = Callable[[str, int, int | None], None]  # (phase, done, total)


def now_us() -> int:
    return int(time.time()) * 1_000_000


def simulate(name: str, seed: int, users: int, days: float, end_us: int | None = None) -> Scenario:
    """The scenario `name` over the `days` before `end_us` (default now)."""
    if name not in SCENARIOS:
        raise ValueError(f"unknown scenario {name!r}: {', '.join(SCENARIOS)}")
    end = end_us or now_us()
    return SCENARIOS[name].generate(seed, users, end - int(days * DAY_US), end)


def write_files(scenario: Scenario, directory: Path, progress: Progress | None = None) -> list[Path]:
    """The events in time order, ROWS_PER_FILE per gzip'd NDJSON file; returns the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    events = scenario.events.sorted()
    name, seed = scenario.truth.scenario, scenario.truth.seed
    paths = []
    for number, first in enumerate(range(0, len(events), ROWS_PER_FILE)):
        path = directory / f"{name}-{seed}-{number:04d}.ndjson.gz"
        part = path.with_suffix(".part")
        with gzip.open(part, "wb", compresslevel=1) as out:
            for begin in range(first, min(first + ROWS_PER_FILE, len(events)), RENDER_ROWS):
                rows = np.arange(begin, min(begin + RENDER_ROWS, first + ROWS_PER_FILE, len(events)))
                lines = render(
                    events.take(rows), scenario.people, scenario.names, scenario.site, f"{name}-{seed}-{begin}"
                )
                out.write(_joined(lines))
                if progress:
                    progress("writing", len(rows), len(events))
        os.utime(part, (0, 1_000_000_000 + seed % 1_000_000))  # same bytes, same time: the same fingerprint
        part.rename(path)
        paths.append(path)
    return paths


def _joined(lines: pa.Array) -> bytes:
    """The lines as NDJSON bytes."""
    text = pc.binary_join_element_wise(lines, "\n", "").cast(pa.large_string())
    offsets = np.frombuffer(text.buffers()[1], dtype=np.int64)[text.offset : text.offset + len(text) + 1]
    return text.buffers()[2].to_pybytes()[offsets[0] : offsets[-1]]


def import_scenario(
    settings: Settings, scenario: Scenario, stages: StageFactory | None, source: str = "demo",
    progress: Progress | None = None, compact: bool = True,
) -> dict[str, int]:  # fmt: skip
    """Import the scenario's events in time order (resumable: see the module docstring)."""
    events = scenario.events.sorted()
    truth = scenario.truth
    end_s = int(datetime.fromisoformat(truth.end).timestamp())
    key = f"scenario-{truth.scenario}-{truth.seed}-{truth.users}-{end_s}"
    received = now_us()

    def rows() -> Iterator[pa.Table]:
        for begin in range(0, len(events), RENDER_ROWS):
            part = events.take(np.arange(begin, min(begin + RENDER_ROWS, len(events))))
            prefix = f"{truth.scenario}-{truth.seed}-{end_s}-{begin}"
            yield lake_rows(part, scenario.people, scenario.names, scenario.site, prefix, source, received, begin + 1)

    importer = Importer(settings, source, workers=1, stages=stages)
    try:
        counts = importer.import_rows(
            rows(), key, (lambda n: progress("importing", n, len(events))) if progress else None
        )
        if compact:
            counts["partitions_compacted"] = importer.compact()
    finally:
        importer.close()
    return counts


def import_files(
    settings: Settings, paths: list[Path], stages: StageFactory | None, source: str = "demo",
    progress: Progress | None = None, compact: bool = True,
) -> dict[str, int]:  # fmt: skip
    """Import `paths` in order (with the writer's stages); returns the importer's counts summed."""
    importer = Importer(settings, source, stages=stages)
    totals: dict[str, int] = {}
    try:
        for path in paths:
            counts = importer.import_file(path, (lambda n: progress("importing", n, None)) if progress else None)
            for key, value in counts.items():
                totals[key] = totals.get(key, 0) + value
        if compact:
            totals["partitions_compacted"] = importer.compact()
    finally:
        importer.close()
    return totals


def backfill(
    settings: Settings, name: str, seed: int, users: int, days: float, stages: StageFactory | None,
    end_us: int | None = None, progress: Progress | None = None, directory: Path | None = None,
) -> tuple[Scenario, dict[str, Any]]:  # fmt: skip
    """Generate `days` of the scenario and import them (through NDJSON files in `directory` when given);
    returns the scenario and timings and counts."""
    started = time.perf_counter()
    scenario = simulate(name, seed, users, days, end_us)
    simulated = time.perf_counter()
    if directory is not None:  # through files and the importer's JSON path
        paths = write_files(scenario, directory, progress)
        counts = import_files(settings, paths, stages, progress=progress)
    else:
        counts = import_scenario(settings, scenario, stages, progress=progress)
    done = time.perf_counter()
    report: dict[str, Any] = {
        **counts, "simulate_s": round(simulated - started, 2), "import_s": round(done - simulated, 2),
        "total_s": round(done - started, 2),
        "events_per_s": round(len(scenario.events) / (done - started), 1) if done > started else 0.0,
    }  # fmt: skip
    return scenario, report
