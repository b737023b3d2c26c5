"""COBOL / EBCDIC frame decoding (issue #10 item 6's floor: >= 100 k frames/s of a 200-byte bet frame, 2 cores).

Two inputs from examples/pmu_frames: `bet200`, T031 bet requests of exactly 200 bytes (header + body
with 8 horses: 41 fields, 3 of them OCCURS DEPENDING ON lists, cp1147 text with accents, COMP-3
stakes and odds, a REDEFINES chosen by the direction), and `pmu_mix`, the generator's realistic mix
of T031 requests and responses (1-8 horses, so 8 lengths), T033 / T034 / T001 and 1% corrupt
frames. Unique frames are generated once (`--unique`) and repeated up to `--frames`.

For each input: `decode_arrow` (vectorised with numpy, one Arrow table per record type) in batches
of each `--batches` size, and `decode_batch` (one dict per frame) both frame by frame (`dicts`, the
path `decode_one` takes for a processor) and through Arrow then `to_pylist` (`dicts_via_arrow`, its
default from 32 frames on), single process; rates per wall second and per CPU second of the process (the steadier
figure when other work shares the cores). Then `decode_arrow` in `--processes` worker processes
(forked, each decoding its share in batches, clock from a common start barrier to the last done).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from typing import Any

from bench.common import emit

FRAMES: list[bytes] = []


def _progress(message: str) -> None:
    sys.stderr.write(f"[cobol] {message}\n")
    sys.stderr.flush()


def _rate(count: int, wall: float, cpu: float) -> dict[str, Any]:
    return {
        "frames": count,
        "seconds": round(wall, 3),
        "frames_per_s": round(count / wall),
        "frames_per_cpu_s": round(count / cpu) if cpu > 0 else None,
    }


def _arrow_run(frames: list[bytes], batch: int) -> dict[str, Any]:
    from examples.pmu_frames.frames import decoder

    d = decoder()
    d.decode_arrow(frames[: min(batch, 2000)])  # warm up: first compute call loads Arrow's kernels
    wall, cpu = time.perf_counter(), time.process_time()
    rows = errors = 0
    for start in range(0, len(frames), batch):
        out = d.decode_arrow(frames[start : start + batch])
        rows += sum(t.num_rows for t in out.tables.values())
        errors += len(out.errors)
    result = _rate(len(frames), time.perf_counter() - wall, time.process_time() - cpu)
    result.update(batch=batch, rows=rows, errors=errors)
    return result


def _dict_run(frames: list[bytes], vectorised: bool) -> dict[str, Any]:
    from examples.pmu_frames.frames import decoder

    d = decoder()
    d.decode_batch(frames[:200], vectorised=vectorised)
    wall, cpu = time.perf_counter(), time.process_time()
    out = d.decode_batch(frames, vectorised=vectorised)
    result = _rate(len(frames), time.perf_counter() - wall, time.process_time() - cpu)
    result["errors"] = len(out.errors)
    return result


def _worker(part: int, parts: int, batch: int, barrier: Any, queue: Any) -> None:
    from examples.pmu_frames.frames import decoder

    d = decoder()
    mine = FRAMES[part::parts]
    d.decode_arrow(mine[:2000])
    barrier.wait()
    cpu = time.process_time()
    for start in range(0, len(mine), batch):
        d.decode_arrow(mine[start : start + batch])
    queue.put((time.perf_counter(), time.process_time() - cpu, len(mine)))


def _processes(frames: list[bytes], processes: int, batch: int) -> dict[str, Any]:
    global FRAMES
    FRAMES = frames
    ctx = mp.get_context("fork")
    barrier, queue = ctx.Barrier(processes + 1), ctx.Queue()
    workers = [ctx.Process(target=_worker, args=(i, processes, batch, barrier, queue)) for i in range(processes)]
    for w in workers:
        w.start()
    barrier.wait()
    start = time.perf_counter()
    done = [queue.get() for _ in workers]
    for w in workers:
        w.join()
    wall = max(end for end, _, _ in done) - start
    result = _rate(sum(n for _, _, n in done), wall, sum(c for _, c, _ in done))
    result.update(processes=processes, batch=batch)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=400_000, help="frames decoded per Arrow run")
    parser.add_argument("--dict-frames", type=int, default=100_000, help="frames decoded per dict run")
    parser.add_argument("--unique", type=int, default=40_000, help="distinct frames generated per input")
    parser.add_argument("--batches", default="1000,10000,50000", help="frames per decode_arrow call")
    parser.add_argument("--processes", type=int, default=2, help="worker processes for the parallel run (0: skip)")
    args = parser.parse_args()
    from examples.pmu_frames.frames import bet_frames, generate

    result: dict[str, Any] = {"load_average_at_start": [round(x, 2) for x in os.getloadavg()]}
    batches = [int(b) for b in args.batches.split(",")]
    inputs = {
        "bet200": lambda: bet_frames(args.unique, seed=1),
        "pmu_mix": lambda: generate(args.unique, seed=1, corrupt_share=0.01),
    }
    for name, make in inputs.items():
        _progress(f"{name}: generating {args.unique} frames")
        unique = make()
        frames = (unique * (args.frames // len(unique) + 1))[: args.frames]
        entry: dict[str, Any] = {
            "mean_frame_bytes": round(sum(map(len, unique)) / len(unique), 1),
            "distinct_lengths": len({len(f) for f in unique}),
        }
        entry["arrow"] = []
        for batch in batches:
            _progress(f"{name}: decode_arrow, batches of {batch}")
            entry["arrow"].append(_arrow_run(frames, batch))
        _progress(f"{name}: decode_batch (dicts), frame by frame and through Arrow")
        entry["dicts"] = _dict_run(frames[: args.dict_frames], vectorised=False)
        entry["dicts_via_arrow"] = _dict_run(frames[: args.dict_frames], vectorised=True)
        if args.processes:
            batch = max(batches)
            _progress(f"{name}: decode_arrow in {args.processes} processes")
            entry["arrow_processes"] = _processes(frames, args.processes, min(batch, 10_000))
        result[name] = entry
    result["floor"] = "issue #10: >= 100 k frames/s of a 200-byte bet frame on 2 cores"
    result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    emit("cobol", result)


if __name__ == "__main__":
    main()
