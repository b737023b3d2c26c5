"""ITC decoder: PMU's decode-on-demand, as a Headwater processor.

The source `itc-headers` decodes only the header of each frame (type, direction, terminal, time) and
keeps the frame itself in `_frame`. This processor keeps the frames the rewards need (bet requests
and responses, cancellations), decodes just those in full with the same copybooks
(`CobolDecoder.decode_one`), and writes them as the events `examples/pmu/rewards.py` reads to the
stream `itc-bets` (run rewards with `PMU_INPUT=itc-bets`). Payments and terminal starts are never
decoded in full here; the full decode of every frame lands in the table `pmu_frames` through the
source `itc-frames`. A frame that does not decode, or whose stake is corrupt, is a dead letter
(`processor_errors`, with the reason).
"""

from __future__ import annotations

import base64
import sys
from pathlib import Path
from typing import Any

from headwater.processing import Pipeline

sys.path.insert(0, str(Path(__file__).resolve().parent))
from frames import decoder

KINDS = {("T031", "Q"): "bet_request", ("T031", "R"): "bet_response", ("T034", "Q"): "bet_cancelled"}
BET_TYPES = {  # the terminals' bet types, as the campaign table names them
    "SIMPLE GAGN": "simple_gagnant", "SIMPLE PLACE": "simple_place", "COUPLE": "couple", "TRIO": "trio",
    "MULTI": "multi", "QUINTE+": "quinte_plus", "2SUR4": "deux_sur_quatre", "TIERCE": "tierce",
}  # fmt: skip
DECODER = decoder()


def wanted(event: dict[str, Any]) -> bool:
    props = event["properties"]
    return (props.get("_record_type"), props.get("direction")) in KINDS


def to_bet_event(event: dict[str, Any]) -> dict[str, Any]:
    """The header-only event, decoded in full, as a rewards input event."""
    props = event["properties"]
    frame = DECODER.decode_one(base64.b64decode(props["_frame"]))
    if frame["_corrupt_fields"]:
        raise ValueError(f"frame fields do not decode: {', '.join(frame['_corrupt_fields'])}")
    kind = KINDS[(frame["_record_type"], frame["direction"])]
    terminal = frame["terminal_id"]
    out: dict[str, Any] = {"bet_id": str(frame["bet_id"]), "terminal": terminal, "frame": frame["_record_type"]}
    if kind == "bet_request":
        out.update(
            bet_type=BET_TYPES.get(frame["bet_type"], frame["bet_type"].lower()),
            stake=float(frame["stake"]),
            race=f"R{frame['reunion']}C{frame['course']}",
            at=event["timestamp"],
            point_of_sale=frame["point_of_sale"],
        )
    elif kind == "bet_response":
        out["status"] = "accepted" if frame["status_code"] == "OK" else "refused"
    return {"event": kind, "anonymous_id": terminal, "timestamp": event["timestamp"], "properties": out}


p = Pipeline("itc-decoder", description="PMU: full decode of the bet frames only, for the rewards")
p.source("itc-headers").filter(wanted).map(to_bet_event).to_stream("itc-bets")
pipeline = p
