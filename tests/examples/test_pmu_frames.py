"""PMU's terminal frames (examples/pmu_frames): the decode-on-demand processor on the TestDriver, fed by
what the header-only COBOL source produces, then `run.sh` whole on a real RabbitMQ (slow)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from headwater.core.source_settings import SourceSettings
from headwater.processing import TestDriver
from headwater.sources.formats import RecordFormat
from tests.helpers import ROOT
from tests.services import free_ports

EXAMPLE = ROOT / "examples" / "pmu_frames"


def load(name: str, folder: Path = EXAMPLE) -> ModuleType:
    module_name = f"pmu_frames_example_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, folder / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


frames_lib = load("frames")
decoder_pipeline = load("decoder")
HEADER_SOURCE = SourceSettings(
    name="itc-headers", kind="rabbitmq", url="amqp://x", queue="q", format="cobol", stream="itc-headers",
    cobol={**frames_lib.DECODER_OPTIONS, "decode": "header"},
    mapping={"event": "{_record_type}-{direction}", "anonymous_id": "terminal_id",
             "timestamp": "{ts_datetime}{ts_millis:03d}"},
    timestamp_format="%Y%m%d%H%M%S%f",
)  # fmt: skip


def header_events(frames: list[bytes]) -> list[dict[str, Any]]:
    """What processors see on `itc-headers`: the header-only source's records, through its mapping."""
    from headwater.sources.mapping import EventMapper

    decoded = RecordFormat(HEADER_SOURCE, EXAMPLE).decode(frames)
    mapper = EventMapper(HEADER_SOURCE)
    out = []
    for index, records in enumerate(decoded):
        if isinstance(records, Exception):
            continue  # quarantined by the source
        _, _, event = mapper.event(records[0], f"m{index}")
        out.append({
            "event": event["event"], "anonymous_id": event["anonymousId"], "timestamp": event["timestamp"],
            "properties": {k: v for k, v in event.items() if k not in ("event", "anonymousId", "timestamp")},
        })  # fmt: skip
    return out


def test_only_bet_frames_are_decoded_in_full_into_rewards_events() -> None:
    frames = frames_lib.generate(3_000, seed=3)
    full = frames_lib.decoder().decode_batch(frames)
    events = header_events(frames)
    unreadable = sum(1 for i, r in full.errors.items() if "unknown record type" in r or len(frames[i]) < 40)
    assert len(events) == len(frames) - unreadable  # no type, or shorter than the 40-byte header
    driver = TestDriver(decoder_pipeline.pipeline)
    calls = Counter()
    decode_one = decoder_pipeline.DECODER.decode_one

    def counting(frame: bytes) -> dict[str, Any]:
        calls[frame[:4].decode("cp1147")] += 1
        return decode_one(frame)

    decoder_pipeline.DECODER.decode_one = counting
    try:
        for event in events:
            driver.send(event, key=event["anonymous_id"])
    finally:
        decoder_pipeline.DECODER.decode_one = decode_one
    assert set(calls) == {"T031", "T034"}  # payments and terminal starts never decoded in full
    out = driver.values("itc-bets")
    expected = Counter()
    for record in full.records:
        if record is not None and not record["_corrupt_fields"]:
            kind = decoder_pipeline.KINDS.get((record["_record_type"], record["direction"]))
            if kind:
                expected[kind] += 1
    assert Counter(e["event"] for e in out) == expected
    request = next(e for e in out if e["event"] == "bet_request")
    assert set(request["properties"]) >= {"bet_id", "terminal", "bet_type", "stake", "race", "at"}
    assert isinstance(request["properties"]["stake"], float)
    assert {e["properties"]["status"] for e in out if e["event"] == "bet_response"} == {"accepted", "refused"}
    errors = driver.errors()  # truncated bet frames (header intact) and corrupt stakes: dead letters, not lost
    assert errors and len(out) + len(errors) == sum(calls.values())


@pytest.mark.slow
@pytest.mark.services
def test_run_sh_lands_typed_frames_and_issues_coupons(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEADWATER_")}
    env.update(
        DATA_DIR=str(tmp_path / "data"), PORT=str(free_ports()[0]), FRAMES="3000", RATE="0",
        HEADWATER=str(Path(sys.executable).parent / "headwater"), PYTHON=sys.executable,
    )  # fmt: skip
    done = subprocess.run(
        [str(EXAMPLE / "run.sh"), "--start-rabbitmq", "--once"],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    batch = frames_lib.decoder().decode_batch(frames_lib.generate(3000, seed=1))
    rows, bad = len(batch.records) - len(batch.errors), len(batch.errors)
    assert f"pmu_frames holds {rows} typed rows (expected {rows}); {bad} frames quarantined (expected {bad})" in (
        done.stdout
    )
    assert "Coupons issued by the rewards processor from the decoded frames: 0" not in done.stdout
    assert "Café" in done.stdout or "é" in done.stdout  # cp1147 text came through
