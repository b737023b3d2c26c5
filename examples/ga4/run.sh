#!/usr/bin/env bash
# Moving off Google Analytics (SumUp): GA4 / Firebase BigQuery export files dropped into a folder land in
# `events` by day replace (the intraday table first, then the daily table, which replaces it), and the
# reconciliation compares rows per day between the export files and the lake.
#
#   examples/ga4/run.sh            # drop DAYS days of exports, show queries and the reconciliation, keep running
#   examples/ga4/run.sh --once     # the same, then stop (what the test runs)
#
# Environment: DATA_DIR (default ./.headwater-ga4), PORT (8000), DAYS (3), ROWS (5000 per day), FORMAT (avro),
# INTERVAL (1 s), HEADWATER (the headwater command; default: on PATH, else the repo's .venv), PYTHON.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
hw="${HEADWATER:-$(command -v headwater || echo "$root/.venv/bin/headwater")}"
py="${PYTHON:-$(dirname "$hw")/python}"
data="$(mkdir -p "${DATA_DIR:-.headwater-ga4}" && cd "${DATA_DIR:-.headwater-ga4}" && pwd)"
port="${PORT:-8000}"
url="http://127.0.0.1:$port"
days="${DAYS:-3}"
rows="${ROWS:-5000}"
mkdir -p "$data/export"
cat >"$data/headwater.toml" <<TOML
[[sources]]
name = "ga4"
kind = "files"
format = "ga4"
path = "$data/export"
pattern = "events_*"
poll_seconds = 0.5
TOML

if [ ! -s "$data/keys.env" ]; then
  read_key="$("$hw" keys create ga4-analyst --role read --quiet --data-dir "$data")"
  printf 'READ_KEY=%s\n' "$read_key" >"$data/keys.env"
  chmod 600 "$data/keys.env"
fi
# shellcheck disable=SC1091
. "$data/keys.env"

"$hw" up --config "$data/headwater.toml" --data-dir "$data" --port "$port" >>"$data/headwater.log" 2>&1 &
hw_pid=$!
trap 'kill "$hw_pid" 2>/dev/null || true; wait "$hw_pid" 2>/dev/null || true' EXIT
for _ in $(seq 600); do
  if curl -fsS "$url/healthz" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$hw_pid" 2>/dev/null; then tail -n 30 "$data/headwater.log"; exit 1; fi
  sleep 0.1
done

sql() {
  curl -fsS -H "x-api-key: $READ_KEY" --data-binary "$(printf '{"sql": "%s"}' "$1")" "$url/api/query" \
    | "$py" -c 'import json,sys; d=json.load(sys.stdin); print("  " + " | ".join(d["columns"])); [print("  " + " | ".join(map(str, r))) for r in d["rows"]]'
}

echo "Headwater on $url (data: $data); exporting $days days of GA4 into $data/export ..."
"$py" "$here/generate.py" "$data/export" --days "$days" --rows "$rows" --format "${FORMAT:-avro}" \
  --interval "${INTERVAL:-1}"
expected=$((days * rows))
for _ in $(seq 600); do
  got="$(curl -fsS -H "x-api-key: $READ_KEY" -d '{"sql": "SELECT count(*) FROM events WHERE source = '"'ga4'"' AND NOT json_extract(context, '"'$.ga4.intraday'"')::BOOLEAN"}' "$url/api/query" 2>/dev/null \
    | "$py" -c 'import json,sys; print(json.load(sys.stdin)["rows"][0][0])' 2>/dev/null || echo 0)"
  if [ "$got" = "$expected" ]; then break; fi
  sleep 0.2
done
echo "events holds $got rows of the daily tables (expected $expected)"
echo "Events per day and name (params flattened into properties):"
sql "SELECT json_extract_string(context, '\$.ga4.event_date') AS day, event, count(*) AS n, count(DISTINCT anonymous_id) AS people FROM events WHERE source = 'ga4' GROUP BY 1, 2 ORDER BY 1, 3 DESC LIMIT 12"
echo "Revenue by country (ecommerce and geo, nested fields):"
sql "SELECT json_extract_string(context, '\$.geo.country') AS country, round(sum(CAST(json_extract(properties, '\$.ecommerce.purchase_revenue') AS DOUBLE)), 2) AS revenue FROM events WHERE source = 'ga4' AND event = 'purchase' GROUP BY 1 ORDER BY 2 DESC"
echo "Reconciliation (rows per day: the files imported vs the lake):"
"$hw" import --format ga4 --source ga4 --report --config "$data/headwater.toml" --data-dir "$data"
[ "$got" = "$expected" ] || { echo "not every row landed" >&2; exit 1; }
if [ "${1:-}" = "--once" ]; then exit 0; fi
echo "Headwater keeps running; drop more export files into $data/export (Ctrl-C stops)"
wait "$hw_pid"
