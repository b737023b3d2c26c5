"""A downstream system of the decision store: reads the output stream `klarna-decisions` and keeps every
decision once, by `decision_id`, in a JSON-lines file (think: the S3 copy Klarna's consumers keep).

    python examples/klarna/consumer.py --data-dir .headwater --out downstream.jsonl          # until idle
    python examples/klarna/consumer.py --data-dir .headwater --out downstream.jsonl --follow # keep reading

It reads as the consumer group `klarna-downstream` of Headwater's log (embedded or Kafka, from the
settings), appends what it has not seen, then commits its offsets. Delivery to it is at-least-once
(a replay re-sends decisions it already has): deduplicating on `decision_id` is what makes it exact.
See README.md for the replay demo ("the consumer lost data; replay from a time").
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import orjson

from headwater.core.settings import load_settings
from headwater.log import open_log

STREAM = "klarna-decisions"


def known_ids(path: Path) -> set[str]:
    if not path.exists():
        return set()
    return {orjson.loads(line)["decision_id"] for line in path.read_bytes().splitlines() if line.strip()}


def consume(
    data_dir: Path | None, out: Path, group: str, follow: bool, idle_s: float, max_s: float | None = None
) -> int:
    """Append unseen decisions to `out` until idle for `idle_s` or `max_s` passed (or forever with `follow`);
    return how many were appended."""
    settings = load_settings(None, **({"data_dir": data_dir} if data_dir else {}))
    consumer = open_log(settings).stream(STREAM).consumer(group)
    seen = known_ids(out)
    appended = 0
    started = idle_since = time.monotonic()
    try:
        with out.open("ab") as sink:
            while follow or (
                time.monotonic() - idle_since < idle_s and (max_s is None or time.monotonic() - started < max_s)
            ):
                records = consumer.poll(1000, 0.2)
                if not records:
                    continue
                idle_since = time.monotonic()
                lines = []
                for record in records:
                    decision = orjson.loads(record.value)["v"]
                    if decision["decision_id"] not in seen:
                        seen.add(decision["decision_id"])
                        lines.append(orjson.dumps(decision) + b"\n")
                sink.write(b"".join(lines))
                sink.flush()
                consumer.commit()  # after the write: a crash in between re-reads (at-least-once)
                appended += len(lines)
    finally:
        consumer.close()
    return appended


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=None, help="Headwater's data directory")
    parser.add_argument("--out", type=Path, default=Path("downstream.jsonl"))
    parser.add_argument("--group", default="klarna-downstream")
    parser.add_argument("--follow", action="store_true", help="keep reading (default: exit once caught up)")
    parser.add_argument("--idle", type=float, default=3.0, help="seconds without records that mean caught up")
    parser.add_argument("--max-seconds", type=float, default=None, help="stop after this long (live traffic)")
    args = parser.parse_args(argv)
    appended = consume(args.data_dir, args.out, args.group, args.follow, args.idle, args.max_seconds)
    print(f"{args.out}: {appended} decisions appended, {len(known_ids(args.out))} in all", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
