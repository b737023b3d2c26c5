#!/usr/bin/env bash
# Klarna's decision store in one command: `headwater up` with the processor examples/klarna/decisions.py,
# fed by the generator (45 days of past decisions first, then RATE decisions a second). Ctrl-C stops both.
#
#   examples/klarna/run.sh
#
# Environment: DATA_DIR (default ./.headwater-klarna), PORT (8000), RATE (50), RUN_SECONDS (0: until Ctrl-C),
# KLARNA_WINDOW_DAYS (30), HEADWATER (the headwater command; default: on PATH, else the repo's .venv), PYTHON.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
hw="${HEADWATER:-$(command -v headwater || echo "$root/.venv/bin/headwater")}"
py="${PYTHON:-$(dirname "$hw")/python}"
data="${DATA_DIR:-.headwater-klarna}"
port="${PORT:-8000}"
url="http://127.0.0.1:$port"

mkdir -p "$data"
if [ ! -s "$data/keys.env" ]; then  # a write key for the decision API, a read key for lookups and SQL
  write_key="$("$hw" keys create klarna-decision-api --role write --quiet --data-dir "$data")"
  read_key="$("$hw" keys create klarna-reader --role read --quiet --data-dir "$data")"
  printf 'WRITE_KEY=%s\nREAD_KEY=%s\n' "$write_key" "$read_key" >"$data/keys.env"
  chmod 600 "$data/keys.env"
fi
# shellcheck disable=SC1091
. "$data/keys.env"

HEADWATER_PROCESSORS="[\"$here/decisions.py:pipeline\"]" \
  "$hw" up --data-dir "$data" --port "$port" >>"$data/headwater.log" 2>&1 &
hw_pid=$!
trap 'kill "$hw_pid" 2>/dev/null || true; wait "$hw_pid" 2>/dev/null || true' EXIT
for _ in $(seq 600); do
  if curl -fsS "$url/healthz" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$hw_pid" 2>/dev/null; then tail -n 30 "$data/headwater.log"; exit 1; fi
  sleep 0.1
done

cat <<EOF
Klarna decision store on $url (data: $data, log: $data/headwater.log, keys: $data/keys.env)

  The variable store, decisions of a customer in the last ${KLARNA_WINDOW_DAYS:-30} days:
    curl -H 'x-api-key: $READ_KEY' $url/api/state/klarna_customer_decisions/cust-00042
  The archive (Iceberg) in SQL:
    curl -H 'x-api-key: $READ_KEY' -d '{"sql": "SELECT outcome, risk_band, count(*) AS n, round(sum(amount_eur)) AS eur FROM klarna_decisions GROUP BY ALL ORDER BY ALL"}' $url/api/query
  Dead letters (invalid decisions, with the reason):
    curl -H 'x-api-key: $READ_KEY' -d '{"sql": "SELECT event_time, reason FROM processor_errors WHERE processor = '"'"'klarna-decisions'"'"' ORDER BY event_time DESC LIMIT 5"}' $url/api/query
  A downstream consumer loses data, and a replay brings it back:
    DATA_DIR=$data examples/klarna/replay.sh

Sending decisions (Ctrl-C stops the generator and Headwater)...
EOF
"$py" "$here/generate.py" --url "$url" --key "$WRITE_KEY" --rate "${RATE:-50}" --seconds "${RUN_SECONDS:-0}" \
  --history-days 45
echo "generator done; Headwater keeps running (Ctrl-C stops it)"
wait "$hw_pid"
