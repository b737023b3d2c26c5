#!/usr/bin/env bash
# Real-time next to historical in one command: `headwater up` with the per-minute counts processor,
# 48 h of past calls, the dashboard, then live calls.
#
#   examples/joulica/run.sh [SECONDS]   # live calls for SECONDS (default 600); Headwater keeps running after
#
# Environment: PORT (8080), HEADWATER_DATA_DIR (.headwater/examples/joulica), RATE (live calls per second, 3),
# HISTORY_HOURS (48). Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-.venv/bin}
PORT=${PORT:-8080}
DATA=${HEADWATER_DATA_DIR:-.headwater/examples/joulica}
URL="http://127.0.0.1:$PORT"
RUN_FOR=${1:-600}
[ -x "$BIN/headwater" ] || make install
mkdir -p "$DATA"
STAMP=$(date +%s)
WRITE=$("$BIN/headwater" keys create "contact-centre-$STAMP" --role write --quiet --data-dir "$DATA")
READ=$("$BIN/headwater" keys create "joulica-analyst-$STAMP" --role read --quiet --data-dir "$DATA")

HEADWATER_PROCESSORS='["examples/joulica/calls.py:pipeline"]' \
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

"$BIN/python" examples/joulica/generate.py --url "$URL" --key "$WRITE" --seconds 0 --history-hours "${HISTORY_HOURS:-48}"
"$BIN/python" examples/joulica/dashboard.py --url "$URL" --key "$READ"
cat <<EOF

Open the dashboard above (sign in as admin with the password printed at start-up). Live figures by key:
  curl -s -H "Authorization: Bearer $READ" "$URL/api/state/joulica_calls_now?limit=10"
  curl -s -H "Authorization: Bearer $READ" "$URL/api/state/joulica_calls_now/support"
  curl -s -H "Authorization: Bearer $READ" -d '{"sql": "SELECT queue, minute, calls, avg_handle_s FROM joulica_calls_per_minute ORDER BY start_ms DESC LIMIT 10"}' $URL/api/query
Sending live calls for $RUN_FOR s…
EOF
"$BIN/python" examples/joulica/generate.py --url "$URL" --key "$WRITE" --seconds "$RUN_FOR" --rate "${RATE:-3}" --history-hours 0
echo "Live calls done; Headwater keeps running at $URL. Ctrl-C to stop."
wait "$UP"
