#!/usr/bin/env bash
# Encored's GRIB drop in one command: `headwater up` with a file source watching a directory; forecast
# files dropped there land in the Iceberg table `weather_grid` within seconds, queryable in SQL.
#
#   examples/encored/run.sh            # drop FILES forecast runs, show queries, keep running (Ctrl-C stops)
#   examples/encored/run.sh --once     # the same, then stop (what the test runs)
#
# Environment: DATA_DIR (default ./.headwater-encored), PORT (8000), FILES (4), INTERVAL (3 s), STEPS (16),
# HEADWATER (the headwater command; default: on PATH, else the repo's .venv), PYTHON.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
hw="${HEADWATER:-$(command -v headwater || echo "$root/.venv/bin/headwater")}"
py="${PYTHON:-$(dirname "$hw")/python}"
data="$(mkdir -p "${DATA_DIR:-.headwater-encored}" && cd "${DATA_DIR:-.headwater-encored}" && pwd)"
port="${PORT:-8000}"
url="http://127.0.0.1:$port"
files="${FILES:-4}"
steps="${STEPS:-16}"
mkdir -p "$data/drop" "$data/done"
cat >"$data/headwater.toml" <<TOML
[[sources]]
name = "kma-forecasts"
kind = "files"
format = "grib"
path = "$data/drop"
pattern = "*.grib2"
move_to = "$data/done"
table = "weather_grid"
poll_seconds = 0.5
TOML

if [ ! -s "$data/keys.env" ]; then
  read_key="$("$hw" keys create encored-analyst --role read --quiet --data-dir "$data")"
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

echo "Headwater on $url (data: $data); dropping $files forecast files into $data/drop ..."
"$py" "$here/generate.py" "$data/drop" --files "$files" --interval "${INTERVAL:-3}" --steps "$steps"
expected=$((files * steps * 5 * 71 * 61))
for _ in $(seq 600); do
  got="$(curl -fsS -H "x-api-key: $READ_KEY" -d '{"sql": "SELECT count(*) FROM weather_grid"}' "$url/api/query" 2>/dev/null \
    | "$py" -c 'import json,sys; print(json.load(sys.stdin)["rows"][0][0])' 2>/dev/null || echo 0)"
  if [ "$got" = "$expected" ]; then break; fi
  sleep 0.2
done
echo "weather_grid holds $got grid points (expected $expected)"
echo "Grid points per parameter:"
sql "SELECT parameter, units, count(*) AS points, round(avg(value), 2) AS mean FROM weather_grid GROUP BY 1, 2 ORDER BY 1"
echo "Mean solar radiation over the Seoul area per valid time (first 8):"
sql "SELECT valid_time, round(avg(value) / 3600, 1) AS w_per_m2 FROM weather_grid WHERE parameter = 'ssrd' AND latitude BETWEEN 37 AND 38 AND longitude BETWEEN 126.5 AND 127.5 GROUP BY 1 ORDER BY 1 LIMIT 8"
echo "Files taken (headwater sources):"
"$hw" sources --config "$data/headwater.toml" --data-dir "$data"
[ "$got" = "$expected" ] || { echo "not every grid point landed" >&2; exit 1; }
if [ "${1:-}" = "--once" ]; then exit 0; fi
echo "Headwater keeps running; drop more files into $data/drop (Ctrl-C stops)"
wait "$hw_pid"
