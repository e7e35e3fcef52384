#!/usr/bin/env bash
# Contract check: runs schemathesis (from PyPI, in .venv) against a running
# api + worker on a throwaway database and namespace, with a bounded number
# of examples. Fails on any 5xx or any response that breaks apispec.json.
#   bash scripts/schemathesis.sh [MAX_EXAMPLES [MAX_SECONDS]]
# With no arguments, 25 examples per operation (a quick check); CI runs
#   bash scripts/schemathesis.sh 100 120
# and the deeper run RELIABILITY.md reports is
#   bash scripts/schemathesis.sh 200 300
# (MAX_SECONDS: fuzzing and the stateful phase, which follows the spec's
# links from product to order to payment, repeat until it is spent).
# With BUYER_JWT_SECRET (and PAYMENT_TOKEN) in the environment, the api
# verifies buyers' tokens and every request carries a buyer's token signed
# with that secret; CI runs both modes.
set -euo pipefail
cd "$(dirname "$0")/.."
MAX_EXAMPLES=${1:-${SCHEMATHESIS_EXAMPLES:-25}}
MAX_SECONDS=${2:-}
SCHEMATHESIS_VERSION=4.32.5

if [[ ! -x .venv/bin/st ]] || ! .venv/bin/st --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
  echo "== installing schemathesis $SCHEMATHESIS_VERSION into .venv"
  python3 -m venv .venv
  .venv/bin/pip install -q "schemathesis==$SCHEMATHESIS_VERSION"
fi

cargo build -q --bin api --bin worker
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')

name="fs_test_st_$(date +%s)_$$"
port=$(python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
export DATABASE_URL="mysql://root@127.0.0.1:3306/$name" BROKER_NAMESPACE="$name" ORDER_PARTITIONS=2 \
  API_ADDR="127.0.0.1:$port" WORKER_METRICS_ADDR=127.0.0.1:0 RUST_LOG=warn
logs=$(mktemp -d)
"$target_dir/debug/worker" >"$logs/worker.log" 2>&1 &
worker_pid=$!
"$target_dir/debug/api" >"$logs/api.log" 2>&1 &
api_pid=$!
cleanup() {
  kill "$api_pid" "$worker_pid" 2>/dev/null || true
  wait "$api_pid" "$worker_pid" 2>/dev/null || true
  mysql --protocol=TCP -h 127.0.0.1 -u root -e "DROP DATABASE IF EXISTS \`$name\`" || true
  for q in $(rabbitmqctl list_queues -q name 2>/dev/null | grep "^$name\." || true); do
    rabbitmqctl delete_queue "$q" >/dev/null 2>&1 || true
  done
}
trap cleanup EXIT

for _ in $(seq 60); do
  curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break
  sleep 0.5
done
curl -sf "http://127.0.0.1:$port/readyz" >/dev/null || { cat "$logs/api.log"; exit 1; }

echo "== schemathesis: $MAX_EXAMPLES examples per operation against apispec.json${MAX_SECONDS:+, for $MAX_SECONDS s}${BUYER_JWT_SECRET:+, as a buyer}"
auth=()
if [[ -n ${BUYER_JWT_SECRET:-} ]]; then
  # A buyer's HS256 token, signed here with the api's secret (stdlib only).
  token=$(python3 - <<'PY'
import base64, hashlib, hmac, json, os, time
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
claims = b64(json.dumps({"sub": "schemathesis", "exp": int(time.time()) + 3600}).encode())
signed = f"{header}.{claims}".encode()
mac = hmac.new(os.environ["BUYER_JWT_SECRET"].encode(), signed, hashlib.sha256).digest()
print(f"{header}.{claims}.{b64(mac)}")
PY
)
  auth=(-H "Authorization: Bearer $token")
fi
status=0
.venv/bin/st run apispec.json ${MAX_SECONDS:+--max-time "$MAX_SECONDS"} \
  --url "http://127.0.0.1:$port" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance \
  --max-examples "$MAX_EXAMPLES" \
  "${auth[@]}" \
  --seed 1 \
  --no-color || status=$?
# lapin logs the broker's answer to the passive declares of the start-up
# partition check (NOT_FOUND) as an error; anything else is one.
errors=$(grep -hE ' ERROR |panicked' "$logs/api.log" "$logs/worker.log" | grep -v "NOT_FOUND - no queue" || true)
if [[ -n "$errors" ]]; then
  echo "== errors in the server logs:"; echo "$errors" | head -20; status=1
fi
exit $status
