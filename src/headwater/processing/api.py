"""Declaring a processor: a `Pipeline` reads one stream and chains operators on `Stream`s.

Names follow Kafka Streams and Quix Streams: `filter`, `map`, `flat_map`, `map_key` (Kafka's
`selectKey`), `repartition`, `branch`, `tumbling_window(...).count().final()`, `join` (an interval join),
`join_table`, `process` (keyed state and timers), and outputs `to_stream`, `to_table`,
`to_state`, `to_sink`. A record is (key, value, timestamp): the key is a string or None, the
value any JSON value, the timestamp its event time in epoch milliseconds.

    p = Pipeline("page-counts")
    (p.source("events")
       .filter(lambda e: e["event"] == "page")
       .repartition(lambda e: e["properties"]["path"])
       .tumbling_window(minutes(1), grace=seconds(10))
       .count()
       .final()
       .to_state("page_counts")
       .to_table("page_counts"))
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Literal

from headwater.core.errors import ProcessingError
from headwater.processing import windows as w
from headwater.processing.nodes import Node, Push

if TYPE_CHECKING:
    from headwater.processing.joins import ReferenceTable
    from headwater.processing.state import StateKey
    from headwater.processing.task import Context, Task, Timer

NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


def seconds(n: float) -> int:
    return int(n * 1000)


def minutes(n: float) -> int:
    return int(n * 60_000)


def hours(n: float) -> int:
    return int(n * 3_600_000)


def days(n: float) -> int:
    return int(n * 86_400_000)


def _check_name(kind: str, name: str) -> str:
    if not NAME.match(name):
        raise ProcessingError(f"{kind} name {name!r}: use 1-63 lower-case letters, digits, '_' or '-'")
    return name


Migration = Callable[[int, "StateKey", Any], Any]
"""migrate_state(from_version, key, value) -> the value to keep (None deletes the entry)."""


class Pipeline:
    """One processor: a name, one input stream, the operators on it, and reference tables.

    `state_version` (default 1) is the version of the state this code reads and writes; the state
    file records the version it was written with. `migrate_state(from_version, key, value)` turns an
    entry of an older version into this one (see `processing.savepoints`)."""

    def __init__(
        self,
        name: str,
        *,
        description: str = "",
        on_error: Literal["dead-letter", "stop"] = "dead-letter",
        state_version: int = 1,
        migrate_state: Migration | None = None,
    ):
        self.name = _check_name("processor", name)
        self.description = description
        self.on_error = on_error
        self.parent: Pipeline | None = None
        """The pipeline a repartition stage belongs to (None: a pipeline of its own)."""
        self._state_version = _check_version(state_version)
        self._migrate_state = migrate_state
        self.root: Stream | None = None
        self.input = ""
        self.tables: dict[str, ReferenceTable] = {}
        self.stages: list[Pipeline] = []
        """Pipelines that read this one's repartition streams (run and tested with it)."""
        self._ids = 0

    @property
    def state_version(self) -> int:
        """Version of this pipeline's state (a stage has its pipeline's)."""
        return self.parent.state_version if self.parent is not None else self._state_version

    @state_version.setter
    def state_version(self, version: int) -> None:
        self._state_version = _check_version(version)

    @property
    def migrate_state(self) -> Migration | None:
        return self.parent.migrate_state if self.parent is not None else self._migrate_state

    @migrate_state.setter
    def migrate_state(self, fn: Migration | None) -> None:
        self._migrate_state = fn

    def migration(self, fn: Migration) -> Migration:
        """Decorator form of `migrate_state=`."""
        self._migrate_state = fn
        return fn

    def root_pipeline(self) -> Pipeline:
        """The pipeline this one is a stage of (itself when it is not a stage)."""
        return self if self.parent is None else self.parent.root_pipeline()

    def source(self, stream: str = "events") -> Stream:
        """The stream this processor reads: `events`, another processor's output, or a source's."""
        if self.root is not None:
            raise ProcessingError(
                f"processor {self.name}: reads one stream ({self.input}); to combine two streams, "
                "write both to one stream with to_stream() and read that"
            )
        self.input = stream
        self.root = Stream(self, None)
        return self.root

    def all(self) -> list[Pipeline]:
        """This pipeline and every stage after a repartition(), in order."""
        return [self, *(p for stage in self.stages for p in stage.all())]

    def table(self, table: ReferenceTable) -> ReferenceTable:
        """Register a reference table (see `processing.joins`) for join_table / lookups."""
        self.tables[table.name] = table
        return table

    def next_id(self, kind: str) -> str:
        self._ids += 1
        return f"{kind}{self._ids}"

    def walk(self) -> Iterable[Node]:
        """Every operator once (merged streams and joins are reached along several paths)."""
        seen: set[int] = set()
        for node in self.root.walk() if self.root is not None else ():
            if id(node) not in seen:
                seen.add(id(node))
                yield node

    def outputs(self) -> dict[str, list[str]]:
        """Names of output streams, Iceberg tables, state tables and sinks this pipeline writes."""
        found: dict[str, list[str]] = {"streams": [], "tables": [], "state_tables": [], "sinks": []}
        for node in self.walk():
            if isinstance(node, Output):
                found[node.kind].append(node.name)
        return found


def _check_version(version: int) -> int:
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ProcessingError(f"state_version {version!r}: use a whole number from 1")
    return version


class Stream(Node):
    """A stream of records inside a pipeline; every method adds an operator and returns its output."""

    def __init__(self, pipeline: Pipeline, op: Node | None) -> None:
        self.pipeline = pipeline
        self.op = op
        self.children: list[Node] = []

    def walk(self) -> Iterable[Node]:
        if self.op is not None:
            yield self.op
        for child in self.children:
            yield from child.walk()

    def compile(self, task: Task, downstream: Push | None = None) -> Push:
        return task.once(self, self._compile)

    def _compile(self, task: Task) -> Push:
        pushes = [child.compile(task, _noop) for child in self.children]
        if not pushes:
            return _noop
        if len(pushes) == 1:
            return pushes[0]

        def fan_out(key: str | None, value: Any, ts: int) -> None:
            for push in pushes:
                push(key, value, ts)

        return fan_out

    def _then(self, op: Node) -> Stream:
        out = Stream(self.pipeline, op)
        self.children.append(_Link(op, out))
        return out

    # -- stateless ------------------------------------------------------------------------------
    def filter(self, predicate: Callable[[Any], bool]) -> Stream:
        return self._then(_Filter(predicate))

    def map(self, fn: Callable[[Any], Any]) -> Stream:
        """Replace each value by fn(value)."""
        return self._then(_Map(fn))

    def flat_map(self, fn: Callable[[Any], Iterable[Any]]) -> Stream:
        """Replace each value by zero or more values."""
        return self._then(_FlatMap(fn))

    def map_key(self, fn: Callable[[Any], Any]) -> Stream:
        """Re-key each record by fn(value) (Kafka Streams' selectKey). Records stay in their input
        partition: follow with repartition() before windows, joins or state by the new key."""
        return self._then(_MapKey(fn))

    def repartition(self, key: Callable[[Any], Any] | None = None) -> Stream:
        """Send each record (re-keyed by `key` when given) to the partition of its key, through the
        stream `<processor>--r<n>`, so that what follows sees every record of a key in one place.

        What follows runs as a stage of this processor: a processor of its own named
        `<processor>--r<n>` (its stream time is the largest event time among records that arrived
        there from every upstream partition: during a backfill, size the grace period for it)."""
        stream = self.map_key(key) if key is not None else self
        self.pipeline._ids += 1
        name = f"{self.pipeline.name}--r{self.pipeline._ids}"
        stream.children.append(Output("streams", name))
        stage = Pipeline(name, description=f"stage of {self.pipeline.name}", on_error=self.pipeline.on_error)
        stage.parent = self.pipeline
        self.pipeline.stages.append(stage)
        return stage.source(name)

    def with_timestamp(self, fn: Callable[[Any], int]) -> Stream:
        """Take event time from the value (epoch ms) instead of the input record's."""
        return self._then(_WithTimestamp(fn))

    def peek(self, fn: Callable[[Any], None]) -> Stream:
        return self._then(_Peek(fn))

    def branch(self, **predicates: Callable[[Any], bool] | None) -> dict[str, Stream]:
        """Route each record to the first branch whose predicate holds (`default=None` catches the rest)."""
        names = list(predicates)
        node = _Branch([predicates[n] or _always for n in names])
        outs = {name: Stream(self.pipeline, None) for name in names}
        node.targets = [outs[n] for n in names]
        self.children.append(node)
        return outs

    def merge(self, *others: Stream) -> Stream:
        """One stream of the records of this stream and of `others` (of the same pipeline)."""
        out = Stream(self.pipeline, None)
        for stream in (self, *others):
            stream.children.append(out)
        return out

    # -- stateful -------------------------------------------------------------------------------
    def process(
        self,
        on_record: Callable[[Context, Any], None],
        on_timer: Callable[[Context, Timer], None] | None = None,
    ) -> Stream:
        """Arbitrary keyed logic: `on_record(ctx, value)` reads and writes `ctx.state` of the record's
        key, emits with `ctx.emit(...)` and schedules timers with `ctx.schedule(...)`, which call
        `on_timer(ctx, timer)` when event time (or the wall clock) passes them."""
        from headwater.processing.task import ProcessNode

        return self._then(ProcessNode(self.pipeline.next_id("process"), on_record, on_timer))

    def join(
        self,
        other: Stream,
        within: int | None = None,
        *,
        before: int | None = None,
        after: int | None = None,
        grace: int = 0,
        merge: Callable[[Any, Any], Any] | None = None,
        how: Literal["inner", "left"] = "inner",
    ) -> Stream:
        """Interval join with `other` on the key: a record of this stream at t meets the records of
        `other` between t - before and t + after (`within` sets both). `how="left"` also emits
        merge(value, None) for a record that met nothing once its interval has passed."""
        from headwater.processing.joins import IntervalJoin

        if other.pipeline is not self.pipeline:
            raise ProcessingError("join: both streams must come from the same pipeline")
        before = within if before is None else before
        after = within if after is None else after
        if before is None or after is None or before < 0 or after < 0:
            raise ProcessingError("join: give within=ms, or before= and after= (non-negative ms)")
        join = IntervalJoin(self.pipeline.next_id("join"), before, after, grace, merge, how)
        out = Stream(self.pipeline, None)
        join.output = out
        self.children.append(join.side("left"))
        other.children.append(join.side("right"))
        return out

    def join_table(
        self,
        table: ReferenceTable,
        *,
        key: Callable[[Any], Any] | None = None,
        merge: Callable[[Any, Any], Any] | None = None,
        how: Literal["inner", "left"] = "inner",
    ) -> Stream:
        """Look each record up in a reference table (by `key(value)`, default the record key); emit
        merge(value, row) for every matching row (`how="left"`: merge(value, None) when none)."""
        from headwater.processing.joins import TableJoin

        self.pipeline.table(table)
        return self._then(TableJoin(table.name, key, merge, how))

    def apply_rules(self, table: ReferenceTable, *, merge: Callable[[Any, Any], Any] | None = None) -> Stream:
        """Rules as data: emit merge(value, rule) for each row of `table` whose conditions hold
        (see `processing.rules` for the row format); rules change when the table is reloaded."""
        from headwater.processing.rules import RulesNode

        self.pipeline.table(table)
        return self._then(RulesNode(table.name, merge))

    # -- windows --------------------------------------------------------------------------------
    def tumbling_window(self, size: int, grace: int = 0) -> WindowedStream:
        return WindowedStream(self, w.Tumbling(size, grace))

    def hopping_window(self, size: int, step: int, grace: int = 0) -> WindowedStream:
        return WindowedStream(self, w.Hopping(size, step, grace))

    def sliding_window(self, size: int, grace: int = 0) -> WindowedStream:
        """A window [t - size, t] per distinct record time t, over the records of its key."""
        return WindowedStream(self, w.Sliding(size, grace))

    def session_window(self, gap: int, grace: int = 0) -> WindowedStream:
        """Records of a key less than `gap` apart share a session."""
        return WindowedStream(self, w.Session(gap, grace))

    # -- outputs --------------------------------------------------------------------------------
    def to_stream(self, name: str) -> Stream:
        """Append to the log stream `name` (readable by processors, the live view and sinks)."""
        self.children.append(Output("streams", name))
        return self

    def to_table(self, name: str) -> Stream:
        """Append to the Iceberg table `name` (queryable in SQL and insights)."""
        self.children.append(Output("tables", _check_name("table", name)))
        return self

    def to_state(
        self, name: str, *, key: Callable[[Any], Any] | None = None, value: Callable[[Any], Any] | None = None
    ) -> Stream:
        """Keep the latest value per key in the state table `name`, served by `GET /api/state/<name>/<key>`.
        A None value deletes the key."""
        self.children.append(Output("state_tables", _check_name("state table", name), key, value))
        return self

    def to_sink(self, name: str, spec: dict[str, Any]) -> Stream:
        """Deliver to an external system (webhook, Redis, PostgreSQL, Kafka): at-least-once, each
        record with an idempotency key; failures retried with backoff, then dead-lettered."""
        self.children.append(Output("sinks", _check_name("sink", name), spec=spec))
        return self


class WindowedStream:
    """A keyed window over a stream; pick an aggregation, then `.final()` or `.current()`."""

    def __init__(self, stream: Stream, window: w.WindowKind) -> None:
        self.stream, self.window = stream, window

    def _agg(self, agg: w.Aggregation) -> WindowedAggregate:
        return WindowedAggregate(self.stream, self.window, agg)

    def count(self) -> WindowedAggregate:
        return self._agg(w.count())

    def sum(self, fn: Callable[[Any], float] = lambda v: v) -> WindowedAggregate:
        return self._agg(w.total(fn))

    def min(self, fn: Callable[[Any], Any] = lambda v: v) -> WindowedAggregate:
        return self._agg(w.minimum(fn))

    def max(self, fn: Callable[[Any], Any] = lambda v: v) -> WindowedAggregate:
        return self._agg(w.maximum(fn))

    def mean(self, fn: Callable[[Any], float] = lambda v: v) -> WindowedAggregate:
        return self._agg(w.mean(fn))

    def distinct(self, fn: Callable[[Any], Any] = lambda v: v) -> WindowedAggregate:
        """Number of distinct fn(value) in the window."""
        return self._agg(w.distinct(fn))

    def collect(self, fn: Callable[[Any], Any] = lambda v: v) -> WindowedAggregate:
        return self._agg(w.collect(fn))

    def reduce(self, fn: Callable[[Any, Any], Any]) -> WindowedAggregate:
        """Fold values pairwise: fn(accumulated, value); the first value starts the fold."""
        return self._agg(w.reduce(fn))

    def aggregate(
        self, initializer: Callable[[], Any], adder: Callable[[Any, Any], Any], result: Callable[[Any], Any] = w.same
    ) -> WindowedAggregate:
        return self._agg(w.Aggregation(initializer, adder, result))


class WindowedAggregate:
    """`final()` and `current()` of one aggregate share its state (and report a late record once)."""

    def __init__(self, stream: Stream, window: w.WindowKind, agg: w.Aggregation) -> None:
        self.stream, self.window, self.agg = stream, window, agg
        self._node: w.WindowNode | None = None

    def _window_node(self) -> w.WindowNode:
        if self._node is None:
            self._node = w.WindowNode(self.stream.pipeline.next_id("window"), self.window, self.agg)
            self.stream.children.append(self._node)
        return self._node

    def final(self) -> Stream:
        """One result per window when it closes: {"start", "end", "value"}, timestamped end - 1."""
        node = self._window_node()
        if node.final_out is None:
            node.final_out = Stream(self.stream.pipeline, None)
        assert isinstance(node.final_out, Stream)
        return node.final_out

    def current(self) -> Stream:
        """A result on every record (and none at close), like Quix's current()."""
        node = self._window_node()
        if node.current_out is None:
            node.current_out = Stream(self.stream.pipeline, None)
        assert isinstance(node.current_out, Stream)
        return node.current_out


class Output(Node):
    """A terminal operator: the task buffers what reaches it and writes it at the checkpoint."""

    def __init__(
        self,
        kind: str,
        name: str,
        key: Callable[[Any], Any] | None = None,
        value: Callable[[Any], Any] | None = None,
        spec: dict[str, Any] | None = None,
    ) -> None:
        self.kind, self.name, self.key_fn, self.value_fn, self.spec = kind, name, key, value, spec or {}

    def compile(self, task: Task, downstream: Push) -> Push:
        return task.output(self)


class _Link(Node):
    """op -> stream: compiles the op with the stream's fan-out as its downstream."""

    def __init__(self, op: Node, stream: Stream) -> None:
        self.op, self.stream = op, stream

    def walk(self) -> Iterable[Node]:
        yield from self.stream.walk()

    def compile(self, task: Task, downstream: Push) -> Push:
        return self.op.compile(task, self.stream.compile(task))


class _Filter(Node):
    def __init__(self, predicate: Callable[[Any], bool]) -> None:
        self.predicate = predicate

    def compile(self, task: Task, downstream: Push) -> Push:
        predicate = self.predicate

        def push(key: str | None, value: Any, ts: int) -> None:
            if predicate(value):
                downstream(key, value, ts)

        return push


class _Map(Node):
    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn = fn

    def compile(self, task: Task, downstream: Push) -> Push:
        fn = self.fn
        return lambda key, value, ts: downstream(key, fn(value), ts)


class _FlatMap(Node):
    def __init__(self, fn: Callable[[Any], Iterable[Any]]) -> None:
        self.fn = fn

    def compile(self, task: Task, downstream: Push) -> Push:
        fn = self.fn

        def push(key: str | None, value: Any, ts: int) -> None:
            for item in fn(value):
                downstream(key, item, ts)

        return push


class _MapKey(Node):
    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn = fn

    def compile(self, task: Task, downstream: Push) -> Push:
        fn = self.fn

        def push(key: str | None, value: Any, ts: int) -> None:
            new = fn(value)
            downstream(None if new is None else str(new), value, ts)

        return push


class _WithTimestamp(Node):
    def __init__(self, fn: Callable[[Any], int]) -> None:
        self.fn = fn

    def compile(self, task: Task, downstream: Push) -> Push:
        fn = self.fn
        return lambda key, value, ts: downstream(key, value, int(fn(value)))


class _Peek(Node):
    def __init__(self, fn: Callable[[Any], None]) -> None:
        self.fn = fn

    def compile(self, task: Task, downstream: Push) -> Push:
        fn = self.fn

        def push(key: str | None, value: Any, ts: int) -> None:
            fn(value)
            downstream(key, value, ts)

        return push


class _Branch(Node):
    def __init__(self, predicates: list[Callable[[Any], bool]]) -> None:
        self.predicates = predicates
        self.targets: list[Stream] = []

    def walk(self) -> Iterable[Node]:
        yield self
        for target in self.targets:
            yield from target.walk()

    def compile(self, task: Task, downstream: Push) -> Push:
        routes = [(p, t.compile(task)) for p, t in zip(self.predicates, self.targets, strict=True)]

        def push(key: str | None, value: Any, ts: int) -> None:
            for predicate, target in routes:
                if predicate(value):
                    target(key, value, ts)
                    return

        return push


def _noop(key: str | None, value: Any, ts: int) -> None:
    return None


def _always(value: Any) -> bool:
    return True
