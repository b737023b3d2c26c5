"""Publish PMU-like terminal frames to a RabbitMQ exchange, as the points of sale's message queues do.

Frames are binary EBCDIC (cp1147) laid out by the copybooks in `copybooks/` (see `frames.py`): bet
requests and responses, payments, cancellations, terminal starts, and 1 % damaged frames. Each is
published persistent, with publisher confirms, routing key = its frame type, message id = its position
in the run (so a re-run of the same seed is recognised as the same frames).

    python examples/pmu_frames/publish.py --url amqp://guest:guest@127.0.0.1:5672/%2F --frames 20000 --rate 2000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import pika

sys.path.insert(0, str(Path(__file__).resolve().parent))
from frames import generate

EXCHANGE = "itc.frames"


def publish(url: str, frames: list[bytes], rate: float, seed: int, exchange: str = EXCHANGE) -> Counter[str]:
    """Declare the exchange (topic, durable), publish every frame; return frames per routing key."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.exchange_declare(exchange, "topic", durable=True)
    channel.confirm_delivery()
    sent: Counter[str] = Counter()
    started = time.monotonic()
    for index, frame in enumerate(frames):
        kind = frame[:4].decode("cp1147", "replace").strip() or "unknown"
        key = kind if kind.isalnum() else "unknown"
        properties = pika.BasicProperties(message_id=f"pmu-{seed}-{index}", delivery_mode=2, type=key)
        channel.basic_publish(exchange, key, frame, properties)
        sent[key] += 1
        if rate > 0:
            ahead = (index + 1) / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
    connection.close()
    return sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="AMQP URL of the broker")
    parser.add_argument("--exchange", default=EXCHANGE)
    parser.add_argument("--frames", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=2_000, help="frames per second (0: as fast as possible)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    frames = generate(args.frames, seed=args.seed)
    sent = publish(args.url, frames, args.rate, args.seed, args.exchange)
    print(json.dumps({"published": sum(sent.values()), "by_type": dict(sorted(sent.items()))}), flush=True)


if __name__ == "__main__":
    main()
