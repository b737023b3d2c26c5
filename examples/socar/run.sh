#!/usr/bin/env bash
# SOCAR's fleet in one command: `headwater up` with the processors of examples/socar/fleet.py, fed by the
# GPS generator; the latest state per car lands in Redis. Ctrl-C stops everything this script started.
#
#   examples/socar/run.sh --start-redis     # also start a redis-server of its own (Debian's redis-server)
#   examples/socar/run.sh                   # use the Redis at SOCAR_REDIS_URL (redis://127.0.0.1:6379/0)
#
# Environment: DATA_DIR (default ./.headwater-socar), PORT (8000), REDIS_PORT (6390, with --start-redis),
# RATE (100 readings/s), CARS (50), RUN_SECONDS (0: until Ctrl-C), SOCAR_GRACE_S (10),
# HEADWATER (the headwater command; default: on PATH, else the repo's .venv), PYTHON.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
hw="${HEADWATER:-$(command -v headwater || echo "$root/.venv/bin/headwater")}"
py="${PYTHON:-$(dirname "$hw")/python}"
data="${DATA_DIR:-.headwater-socar}"
port="${PORT:-8000}"
url="http://127.0.0.1:$port"
mkdir -p "$data"

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

if [ "${1:-}" = "--start-redis" ]; then
  redis_port="${REDIS_PORT:-6390}"
  mkdir -p "$data/redis"
  redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$data/redis" --save "" --appendonly yes \
    >"$data/redis.log" 2>&1 &
  pids+=($!)
  export SOCAR_REDIS_URL="redis://127.0.0.1:$redis_port/0"
fi
export SOCAR_REDIS_URL="${SOCAR_REDIS_URL:-redis://127.0.0.1:6379/0}"

if [ ! -s "$data/keys.env" ]; then  # a write key for the cars, a read key for lookups and SQL
  write_key="$("$hw" keys create socar-cars --role write --quiet --data-dir "$data")"
  read_key="$("$hw" keys create socar-reader --role read --quiet --data-dir "$data")"
  printf 'WRITE_KEY=%s\nREAD_KEY=%s\n' "$write_key" "$read_key" >"$data/keys.env"
  chmod 600 "$data/keys.env"
fi
# shellcheck disable=SC1091
. "$data/keys.env"

HEADWATER_PROCESSORS="[\"$here/fleet.py:pipelines\"]" \
  "$hw" up --data-dir "$data" --port "$port" >>"$data/headwater.log" 2>&1 &
hw_pid=$!
pids=("$hw_pid" "${pids[@]}")  # Headwater stops first (its sink delivers what it holds), Redis after
for _ in $(seq 600); do
  if curl -fsS "$url/healthz" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$hw_pid" 2>/dev/null; then tail -n 30 "$data/headwater.log"; exit 1; fi
  sleep 0.1
done

redis_cli="redis-cli -u $SOCAR_REDIS_URL"
cat <<EOF
SOCAR fleet on $url (data: $data, log: $data/headwater.log, keys: $data/keys.env), Redis at $SOCAR_REDIS_URL

  The latest state of a car, in Redis and over HTTP:
    $redis_cli HGETALL socar:car:car-0007
    curl -H 'x-api-key: $READ_KEY' $url/api/state/socar_cars/car-0007
  Per area and minute (Iceberg; a minute closes ${SOCAR_GRACE_S:-10} s after it ends):
    curl -H 'x-api-key: $READ_KEY' -d '{"sql": "SELECT area, minute, readings, mean_speed, cars FROM socar_area_minutes ORDER BY minute DESC, area LIMIT 12"}' $url/api/query
  Invalid readings (dead letters, with the reason):
    curl -H 'x-api-key: $READ_KEY' -d '{"sql": "SELECT processor, reason FROM processor_errors ORDER BY event_time DESC LIMIT 5"}' $url/api/query

Sending GPS readings (Ctrl-C stops the generator, Headwater and the Redis started here)...
EOF
"$py" "$here/generate.py" --url "$url" --key "$WRITE_KEY" --rate "${RATE:-100}" --cars "${CARS:-50}" \
  --seconds "${RUN_SECONDS:-0}"
echo "generator done; Headwater keeps running (Ctrl-C stops it)"
wait "$hw_pid"
