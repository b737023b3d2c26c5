"""`headwater process`: load pipelines, run each with its table writers and sinks, in one process.

A pipeline is named in settings as 'path/to/file.py:attr' or 'package.module:attr', where attr
is a Pipeline or a list of them.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import orjson

from headwater.core.errors import ProcessingError
from headwater.core.loading import load_named
from headwater.core.settings import Settings
from headwater.log.base import EventLog
from headwater.processing import savepoints
from headwater.processing.api import Output, Pipeline
from headwater.processing.runtime import ProcessorRunner
from headwater.processing.task import output_stream

log = logging.getLogger(__name__)
LATE_TABLE = "processor_late"
ERRORS_TABLE = "processor_errors"


def load_pipelines(spec: str) -> list[Pipeline]:
    """Import 'file.py:attr' or 'module:attr' and return the Pipeline(s) it names."""
    attr = spec.rpartition(":")[2]
    found: Any = load_named(spec, "processor", ProcessingError)
    if callable(found) and not isinstance(found, Pipeline):
        found = found()
    pipelines = found if isinstance(found, list | tuple) else [found]
    if not pipelines or not all(isinstance(p, Pipeline) for p in pipelines):
        raise ProcessingError(f"processor {spec!r}: {attr} is not a Pipeline (or a list of them)")
    return [stage for pipeline in pipelines for stage in pipeline.all()]


def table_streams(pipeline: Pipeline) -> dict[str, str]:
    """Stream -> lake table for everything the pipeline lands in Iceberg (late and failed records too)."""
    out = {f"{pipeline.name}.late": LATE_TABLE, f"{pipeline.name}.errors": ERRORS_TABLE}
    for node in pipeline.walk():
        if isinstance(node, Output) and node.kind == "tables":
            out[str(output_stream(pipeline.name, node))] = node.name
    return out


class ProcessorWorker:
    """Runs pipelines (a thread each), the table writers of their outputs and their sinks."""

    def __init__(self, settings: Settings, event_log: EventLog, pipelines: list[Pipeline]) -> None:
        self.settings, self.event_log, self.pipelines = settings, event_log, pipelines
        names = [p.name for p in pipelines]
        if len(set(names)) != len(names):
            raise ProcessingError(f"two processors share a name: {sorted(names)}")
        self.runners = []
        starts = {p.name: self._read_request(settings.processors_dir / p.name / "replay.json") for p in pipelines}
        for p in pipelines:  # a pipeline started from a savepoint: its stages too
            if p.parent is None and (starts[p.name] or "").startswith(savepoints.PREFIX):
                starts.update({stage.name: starts[p.name] for stage in p.all()})
        for p in pipelines:
            request = settings.processors_dir / p.name / "replay.json"
            start = starts[p.name]
            self.runners.append(
                ProcessorRunner(
                    p, event_log, settings.processors_dir, new_run=start is not None, start=start or "earliest",
                    settings=settings,
                    checkpoint_interval_ms=settings.processor_checkpoint_ms, max_batch=settings.processor_max_batch,
                )
            )  # fmt: skip
            request.unlink(missing_ok=True)  # only once the new run's manifest is written
        self._threads: list[threading.Thread] = []
        self.failures: list[str] = []

    @staticmethod
    def _read_request(path: Path) -> str | None:
        """The `--from` of a replay request (`headwater process --replay`), or None."""
        try:
            return str(orjson.loads(path.read_bytes())["from"])
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):
            log.error("ignoring a malformed replay request %s", path)
            path.unlink(missing_ok=True)
            return None

    def _table_writers(self, stop: threading.Event) -> None:
        from headwater.lake.tables import open_catalog
        from headwater.processing.tables import SIDE_SCHEMA, OutputTableWriter

        catalog = open_catalog(self.settings)
        for pipeline in self.pipelines:
            for stream, table in table_streams(pipeline).items():
                side = table in (LATE_TABLE, ERRORS_TABLE)
                writer = OutputTableWriter(catalog, self.event_log, stream, table, SIDE_SCHEMA if side else None)
                self._spawn(f"table-{table}", writer.run, stop)

    def _sinks(self, stop: threading.Event) -> None:
        for pipeline in self.pipelines:
            for node in pipeline.walk():
                if isinstance(node, Output) and node.kind == "sinks":
                    self._start_sink(pipeline, node, stop)

    def _start_sink(self, pipeline: Pipeline, node: Output, stop: threading.Event) -> None:
        from headwater.processing.sinks import SinkRecord, SinkRunner, sink_from_config

        stream = str(output_stream(pipeline.name, node))
        errors = self.event_log.stream(f"{pipeline.name}.errors").producer()

        def dead_letter(record: SinkRecord, reason: str, attempts: int) -> None:
            row = {
                "processor": pipeline.name, "key": record.key, "value": record.value,
                "event_time": record.timestamp_ms, "reason": f"sink {node.name}: {reason} (after {attempts} attempts)",
                "partition": record.partition, "offset": record.offset,
            }  # fmt: skip
            body = {"k": record.key, "v": row, "t": record.timestamp_ms, "id": f"sink/{node.name}/{record.id}"}
            errors.append([(None, orjson.dumps(body, default=str))]).result()

        runner = SinkRunner(
            sink_from_config(node.spec), self.event_log.stream(stream).consumer(f"sink.{pipeline.name}.{node.name}"),
            dead_letter,
        )  # fmt: skip

        def run(stop: threading.Event) -> None:
            try:
                runner.run(stop)
            finally:
                runner.close()
                errors.close()

        self._spawn(f"sink-{node.name}", run, stop)

    def _spawn(self, name: str, target: Any, stop: threading.Event) -> None:
        def guarded() -> None:
            try:
                target(stop)
            except Exception as exc:
                log.exception("%s failed", name)
                self.failures.append(f"{name}: {exc}")
                stop.set()

        thread = threading.Thread(target=guarded, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _start_runner(self, index: int, stop: threading.Event) -> threading.Event:
        runner_stop = threading.Event()
        runner = self.runners[index]

        def run(_: threading.Event) -> None:
            try:
                runner.run(runner_stop)
            finally:
                runner.close()

        self._spawn(f"processor-{runner.pipeline.name}", run, stop)
        self._runner_threads[index] = self._threads[-1]
        return runner_stop

    def run(self, stop: threading.Event) -> None:
        """Run until `stop`; a `replay.json` in a processor's folder restarts it as a new run, a
        `savepoint-request.json` pauses its pipeline (stages too) at a checkpoint for a savepoint."""
        self._table_writers(stop)
        self._sinks(stop)
        self._runner_threads: dict[int, threading.Thread] = {}
        self._stops = {i: self._start_runner(i, stop) for i in range(len(self.runners))}
        while not stop.wait(1.0):
            for index, runner in enumerate(self.runners):
                if runner.pipeline.parent is None:
                    sp_id = savepoints.read_request(self.settings.processors_dir, runner.pipeline.name)
                    if sp_id is not None and savepoints.claim(self.settings.processors_dir, runner.pipeline.name):
                        self._savepoint(index, sp_id, stop)
                request = runner.manifest.folder / "replay.json"
                start = self._read_request(request)
                if start is None:
                    continue
                log.info("processor %s: replay from %s into a new run", runner.pipeline.name, start)
                group = self._group(index) if start.startswith(savepoints.PREFIX) else [index]
                self._restart(group, stop, new_run=True, start=start)
                request.unlink(missing_ok=True)  # only once the new run's manifest is written
        for event in self._stops.values():
            event.set()
        for thread in self._threads:
            thread.join(timeout=30)
        if self.failures:
            raise ProcessingError("; ".join(self.failures))

    def _group(self, index: int) -> list[int]:
        """Runner indexes of the pipeline at `index` and its repartition stages (upstream first)."""
        names = {p.name for p in self.runners[index].pipeline.all()}
        return [i for i, r in enumerate(self.runners) if r.pipeline.name in names]

    def _restart(self, group: list[int], stop: threading.Event, *, new_run: bool, start: str) -> None:
        """Stop the runners of `group` (each checkpoints and closes), then start them again in order."""
        for index in group:
            self._stops[index].set()
        for index in group:
            self._runner_threads[index].join()
        for index in group:
            runner = self.runners[index]
            self.runners[index] = ProcessorRunner(
                runner.pipeline, self.event_log, self.settings.processors_dir, new_run=new_run, start=start,
                settings=self.settings,
                checkpoint_interval_ms=self.settings.processor_checkpoint_ms,
                max_batch=self.settings.processor_max_batch,
            )  # fmt: skip
        for index in group:
            self._stops[index] = self._start_runner(index, stop)

    def _savepoint(self, index: int, sp_id: str, stop: threading.Event) -> None:
        group = self._group(index)
        name = self.runners[index].pipeline.name
        log.info("processor %s: taking savepoint %s", name, sp_id)
        for i in group:
            self._stops[i].set()
        for i in group:
            self._runner_threads[i].join()
        try:
            savepoints.answer_request(self.settings, self.event_log, name, sp_id)
        finally:
            self._restart(group, stop, new_run=False, start="earliest")
