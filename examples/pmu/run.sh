#!/usr/bin/env bash
# PMU rewards in one command: `headwater up` with the rewards processor, then the terminals' frames.
#
#   examples/pmu/run.sh [SECONDS]      # bets for SECONDS (default 120); Headwater keeps running after
#
# Environment: PORT (8080), HEADWATER_DATA_DIR (.headwater/examples/pmu), RATE (bets per second, 20).
# Ctrl-C stops everything (intake first, then the processor's checkpoint, then the lake writer).
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-.venv/bin}
PORT=${PORT:-8080}
DATA=${HEADWATER_DATA_DIR:-.headwater/examples/pmu}
URL="http://127.0.0.1:$PORT"
RUN_FOR=${1:-120}
[ -x "$BIN/headwater" ] || make install
mkdir -p "$DATA"
STAMP=$(date +%s)
WRITE=$("$BIN/headwater" keys create "pmu-terminals-$STAMP" --role write --quiet --data-dir "$DATA")
READ=$("$BIN/headwater" keys create "pmu-reader-$STAMP" --role read --quiet --data-dir "$DATA")

HEADWATER_PROCESSORS='["examples/pmu/rewards.py:pipeline"]' \
    "$BIN/headwater" up --data-dir "$DATA" --port "$PORT" &
UP=$!
stop() { kill -INT "$UP" 2>/dev/null || true; wait "$UP" 2>/dev/null || true; }
trap stop EXIT
trap 'exit 130' INT TERM
"$BIN/python" - "$URL" <<'PY'
import sys, time, httpx
deadline = time.monotonic() + 60
while True:
    try:
        if httpx.get(sys.argv[1] + "/healthz", timeout=1).status_code == 200:
            break
    except httpx.HTTPError:
        pass
    if time.monotonic() > deadline:
        sys.exit("headwater did not start")
    time.sleep(0.2)
PY

"$BIN/python" examples/pmu/generate.py --url "$URL" --key "$WRITE" --seconds "$RUN_FOR" --rate "${RATE:-20}"

cat <<EOF

Frames sent. Read the results (read key: $READ):
  curl -s -H "Authorization: Bearer $READ" "$URL/api/state/pmu_coupons_by_bet?limit=5"
  curl -s -H "Authorization: Bearer $READ" "$URL/api/state/pmu_coupons_by_bet/<bet_id>"
  curl -s -H "Authorization: Bearer $READ" -d '{"sql": "SELECT campaign_id, count(*), sum(value) FROM pmu_coupons GROUP BY 1"}' $URL/api/query
  curl -s -H "Authorization: Bearer $READ" -d '{"sql": "SELECT * FROM pmu_coupon_revocations LIMIT 5"}' $URL/api/query
  $BIN/headwater query "SELECT count(*) FROM pmu_timeouts" --data-dir $DATA
Headwater keeps running at $URL (web app: Processors page). Ctrl-C to stop.
EOF
wait "$UP"
