#!/usr/bin/env bash
# Klarna's "replay past events in case of missing data in downstream systems", against a running
# examples/klarna/run.sh (same DATA_DIR):
#
# 1. a downstream consumer (consumer.py) reads the output stream `klarna-decisions` into downstream.jsonl;
# 2. it loses every decision taken in the last LOST_MINUTES minutes (this script deletes those lines);
# 3. `headwater process --replay klarna-decisions --from <time>` asks the running processor for a new run
#    from that time, into fresh state, while intake goes on;
# 4. the consumer reads on: it gets those decisions again (and drops, by decision_id, what it had).
#
# The new run rebuilds the variable store from what it replays, so the replay starts the store's window
# (KLARNA_WINDOW_DAYS, 30) before the loss: "the last N days" stay complete. Replays append to the
# Iceberg archive again: count decisions there with count(DISTINCT decision_id).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
hw="${HEADWATER:-$(command -v headwater || echo "$root/.venv/bin/headwater")}"
py="${PYTHON:-$(dirname "$hw")/python}"
data="${DATA_DIR:-.headwater-klarna}"
out="${OUT:-$data/downstream.jsonl}"
lost_minutes="${LOST_MINUTES:-2}"
window_days="${KLARNA_WINDOW_DAYS:-30}"

iso_ago() {  # ISO time $1 minutes ago
  "$py" -c 'import sys, datetime as d; print((d.datetime.now(d.UTC) - d.timedelta(minutes=float(sys.argv[1]))).isoformat(timespec="seconds"))' "$1"
}
lost_from="$(iso_ago "$lost_minutes")"
replay_from="$(iso_ago "$("$py" -c "print($lost_minutes + $window_days * 1440)")")"

echo "1. the downstream consumer catches up"
"$py" "$here/consumer.py" --data-dir "$data" --out "$out" --max-seconds 10

echo "2. it loses the decisions taken since $lost_from"
"$py" - "$out" "$lost_from" <<'PY'
import sys
from datetime import datetime
from pathlib import Path

import orjson

path, since = Path(sys.argv[1]), datetime.fromisoformat(sys.argv[2])
kept, lost = [], []
for line in path.read_bytes().splitlines():
    decision = orjson.loads(line)
    if datetime.fromisoformat(decision["decided_at"].replace("Z", "+00:00")) < since:
        kept.append(line)
    else:
        lost.append(decision["decision_id"])
path.write_bytes(b"".join(line + b"\n" for line in kept))
Path(f"{path}.lost").write_text("\n".join(lost))
print(f"   {len(lost)} of {len(kept) + len(lost)} decisions lost")
PY

echo "3. replay klarna-decisions from $replay_from (the store's window before the loss)"
"$hw" process --replay klarna-decisions --from "$replay_from" --data-dir "$data"
sleep 3  # the running processor looks for replay requests every second

echo "4. the consumer reads on"
"$py" "$here/consumer.py" --data-dir "$data" --out "$out" --max-seconds 20

"$py" - "$out" <<'PY'
import sys
from pathlib import Path

import orjson

path = Path(sys.argv[1])
ids = [orjson.loads(line)["decision_id"] for line in path.read_bytes().splitlines()]
lost = Path(f"{path}.lost").read_text().split()
back = len(set(lost) & set(ids))
print(f"5. {back} of the {len(lost)} lost decisions are back downstream; {len(ids)} decisions, "
      f"{len(ids) - len(set(ids))} of them twice")
sys.exit(0 if back == len(lost) and len(ids) == len(set(ids)) else 1)
PY
