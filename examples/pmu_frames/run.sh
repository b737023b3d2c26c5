#!/usr/bin/env bash
# PMU's betting terminals end to end with one command: binary EBCDIC frames (COBOL copybooks) published
# to a RabbitMQ exchange; Headwater binds two queues of its own to it (a copy of the flow, the other
# consumers untouched):
#   - source `itc-frames` decodes every frame in full into the Iceberg table `pmu_frames` (typed rows);
#   - source `itc-headers` decodes only the headers into the stream `itc-headers`, where the processor
#     `itc-decoder` (decoder.py) decodes the bet frames on demand for the rewards processor
#     (examples/pmu/rewards.py), which issues coupons into `pmu_coupons`.
#
#   examples/pmu_frames/run.sh --start-rabbitmq          # with a RabbitMQ of its own (Debian's rabbitmq-server)
#   PMU_AMQP_URL=amqp://... examples/pmu_frames/run.sh   # with yours
#   add --once to stop after the queries (what the test runs)
#
# Environment: DATA_DIR (default ./.headwater-pmu-frames), PORT (8000), FRAMES (20000), RATE (2000 frames/s),
# PMU_AMQP_URL, HEADWATER (the headwater command; default: on PATH, else the repo's .venv), PYTHON.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
hw="${HEADWATER:-$(command -v headwater || echo "$root/.venv/bin/headwater")}"
py="${PYTHON:-$(dirname "$hw")/python}"
data="$(mkdir -p "${DATA_DIR:-.headwater-pmu-frames}" && cd "${DATA_DIR:-.headwater-pmu-frames}" && pwd)"
port="${PORT:-8000}"
url="http://127.0.0.1:$port"
frames="${FRAMES:-20000}"
once=0
start_rabbit=0
for arg in "$@"; do
  case "$arg" in
    --once) once=1 ;;
    --start-rabbitmq) start_rabbit=1 ;;
    *) echo "unknown option $arg" >&2; exit 2 ;;
  esac
done

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

if [ "$start_rabbit" = 1 ]; then
  rm -f "$data/rabbit.url"
  "$py" - "$data/rabbit.url" "$root" >"$data/rabbitmq.log" 2>&1 <<'PY' &
import signal, sys
sys.path.insert(0, sys.argv[2])
from tests.services import RabbitServer  # the tested recipe: free ports, its own epmd, as the rabbitmq user
server = RabbitServer(sys.argv[1] + ".d").start()
open(sys.argv[1], "w").write(server.url)
signal.sigwait({signal.SIGTERM, signal.SIGINT})
server.close()
PY
  pids+=($!)
  for _ in $(seq 600); do [ -s "$data/rabbit.url" ] && break; sleep 0.1; done
  [ -s "$data/rabbit.url" ] || { cat "$data/rabbitmq.log"; exit 1; }
  PMU_AMQP_URL="$(cat "$data/rabbit.url")"
fi
amqp="${PMU_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2F}"

# the exchange must exist before Headwater binds its queues to it (in production it does)
"$py" -c "import pika, sys; c = pika.BlockingConnection(pika.URLParameters(sys.argv[1])); \
c.channel().exchange_declare('itc.frames', 'topic', durable=True); c.close()" "$amqp"

cobol="header_copybook = \"$here/copybooks/header.cpy\"
type_field = \"FRAME-TYPE\"
code_page = \"cp1147\"
copybooks = { T001 = \"$here/copybooks/t001.cpy\", T031 = \"$here/copybooks/t031.cpy\", T033 = \"$here/copybooks/t033.cpy\", T034 = \"$here/copybooks/t034.cpy\" }
redefines = { REQUEST-DATA = { field = \"DIRECTION\", cases = { Q = \"REQUEST-DATA\", R = \"RESPONSE-DATA\" } }, PAYMENT-REF = { field = \"PAYMENT-METHOD\", cases = { C = \"CARD-PAYMENT\", K = \"CASH-PAYMENT\" } } }"
cat >"$data/headwater.toml" <<TOML
processors = ["$here/decoder.py:pipeline", "$root/examples/pmu/rewards.py:pipeline"]

[[sources]]
name = "itc-frames"
kind = "rabbitmq"
url = "$amqp"
exchange = "itc.frames"
queue = "headwater.itc-frames"
format = "cobol"
table = "pmu_frames"
max_wait_ms = 100
[sources.cobol]
$cobol

[[sources]]
name = "itc-headers"
kind = "rabbitmq"
url = "$amqp"
exchange = "itc.frames"
queue = "headwater.itc-headers"
format = "cobol"
stream = "itc-headers"
mapping = { event = "{_record_type}-{direction}", anonymous_id = "terminal_id", timestamp = "{ts_datetime}{ts_millis:03d}" }
timestamp_format = "%Y%m%d%H%M%S%f"
max_wait_ms = 100
[sources.cobol]
$cobol
decode = "header"
TOML

if [ ! -s "$data/keys.env" ]; then
  read_key="$("$hw" keys create pmu-analyst --role read --quiet --data-dir "$data")"
  printf 'READ_KEY=%s\n' "$read_key" >"$data/keys.env"
  chmod 600 "$data/keys.env"
fi
# shellcheck disable=SC1091
. "$data/keys.env"

PMU_INPUT=itc-bets "$hw" up --config "$data/headwater.toml" --data-dir "$data" --port "$port" \
  >>"$data/headwater.log" 2>&1 &
hw_pid=$!
pids=("$hw_pid" "${pids[@]}")  # Headwater stops before the broker
for _ in $(seq 600); do
  if curl -fsS "$url/healthz" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$hw_pid" 2>/dev/null; then tail -n 30 "$data/headwater.log"; exit 1; fi
  sleep 0.1
done
for _ in $(seq 300); do  # the sources have bound their queues
  "$hw" sources --json --config "$data/headwater.toml" --data-dir "$data" | grep -q '"state": "running"' && break
  sleep 0.1
done
sleep 1

sql() {
  curl -fsS -H "x-api-key: $READ_KEY" --data-binary "$(printf '{"sql": "%s"}' "$1")" "$url/api/query" \
    | "$py" -c 'import json,sys; d=json.load(sys.stdin); print("  " + " | ".join(d["columns"])); [print("  " + " | ".join(map(str, r))) for r in d["rows"]]'
}
count() {
  curl -fsS -H "x-api-key: $READ_KEY" --data-binary "$(printf '{"sql": "%s"}' "$1")" "$url/api/query" 2>/dev/null \
    | "$py" -c 'import json,sys; print(json.load(sys.stdin)["rows"][0][0])' 2>/dev/null || echo 0
}

echo "Headwater on $url (data: $data); publishing $frames frames to $amqp ..."
"$py" "$here/publish.py" --url "$amqp" --frames "$frames" --rate "${RATE:-2000}"
expected="$("$py" -c "import sys; sys.path.insert(0, '$here'); from frames import decoder, generate; \
b = decoder().decode_batch(generate($frames, seed=1)); print(len(b.records) - len(b.errors), len(b.errors))")"
rows="${expected% *}"
bad="${expected#* }"
for _ in $(seq 900); do
  got="$(count "SELECT count(*) FROM pmu_frames")"
  quarantined="$(count "SELECT count(*) FROM quarantine WHERE source = 'itc-frames'")"
  if [ "$got" = "$rows" ] && [ "$quarantined" = "$bad" ]; then break; fi
  sleep 0.2
done
echo "pmu_frames holds $got typed rows (expected $rows); $quarantined frames quarantined (expected $bad)"
echo "Frames per type and direction:"
sql "SELECT _record_type, direction, count(*) AS frames, count(stake) AS with_stake, sum(stake) AS stakes_eur FROM pmu_frames GROUP BY 1, 2 ORDER BY 1, 2"
echo "A few bets (packed decimals as exact decimals, accents from cp1147):"
sql "SELECT bet_id, terminal_id, bet_type, stake, point_of_sale, bettor_name, horse_count FROM pmu_frames WHERE _record_type = 'T031' AND direction = 'Q' ORDER BY bet_id LIMIT 4"
echo "Frames with a field that did not decode (kept, the field null):"
sql "SELECT _record_type, _corrupt_fields, count(*) FROM pmu_frames WHERE _corrupt_fields <> '[]' GROUP BY 1, 2"
echo "Quarantined frames (raw bytes in base64):"
sql "SELECT reason, count(*) FROM quarantine WHERE source = 'itc-frames' GROUP BY 1 ORDER BY 2 DESC"
for _ in $(seq 300); do
  coupons="$(count "SELECT count(*) FROM pmu_coupons")"
  [ "$coupons" != "0" ] && break
  sleep 0.2
done
echo "Coupons issued by the rewards processor from the decoded frames: $coupons"
sql "SELECT campaign_id, count(*) AS coupons, sum(value) AS value FROM pmu_coupons GROUP BY 1 ORDER BY 1"
"$hw" sources --config "$data/headwater.toml" --data-dir "$data"
[ "$got" = "$rows" ] && [ "$quarantined" = "$bad" ] || { echo "not every frame landed" >&2; exit 1; }
[ "$coupons" != "0" ] || { echo "no coupon came out of the rewards processor" >&2; exit 1; }
if [ "$once" = 1 ]; then exit 0; fi
echo "Headwater keeps running; publish more with: $py $here/publish.py --url '$amqp' --seed 2 (Ctrl-C stops)"
wait "$hw_pid"
