#!/usr/bin/env bash
# Checks scripts/run.sh as a user would: starts it (debug build, 2 workers)
# on a database and broker namespace of its own, creates a product and
# places an order with curl, expects it ACCEPTED, sends SIGTERM, and fails
# if any process it started is left behind.
set -euo pipefail
cd "$(dirname "$0")/.."
name="fs_test_runsh_$$"
port=$(python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
log=$(mktemp)
cleanup() {
  kill -TERM "$runner" 2>/dev/null || true
  mysql --protocol=TCP -h 127.0.0.1 -u root -e "DROP DATABASE IF EXISTS \`$name\`" || true
  for q in $(rabbitmqctl list_queues -q name 2>/dev/null | grep "^$name\." || true); do
    rabbitmqctl delete_queue "$q" >/dev/null 2>&1 || true
  done
}
DATABASE_URL="mysql://root@127.0.0.1:3306/$name" BROKER_NAMESPACE="$name" API_ADDR="127.0.0.1:$port" \
  bash scripts/run.sh --debug --workers 2 >"$log" 2>&1 &
runner=$!
trap cleanup EXIT
for _ in $(seq 120); do grep -q "is running" "$log" && break; sleep 1; done
grep -q "is running" "$log" || { cat "$log"; echo "run.sh did not come up"; exit 1; }
curl -sf -XPOST "127.0.0.1:$port/api/products" -H 'content-type: application/json' -d '{"name":"Kaos","stock":5}' >/dev/null
answer=$(curl -s -XPOST "127.0.0.1:$port/api/orders" -H 'content-type: application/json' -H 'Prefer: wait=20' -d '{"product_id":1,"total":1}')
echo "$answer" | grep -q '"status":"ACCEPTED"' || { cat "$log"; echo "the order was not accepted: $answer"; exit 1; }
children=$(pgrep -P "$runner" || true)
kill -TERM "$runner"
wait "$runner" || true
sleep 1
for pid in $children; do
  if kill -0 "$pid" 2>/dev/null; then echo "run.sh left process $pid behind"; exit 1; fi
done
grep -q "ERROR" "$log" && { grep "ERROR" "$log"; echo "run.sh logged errors"; exit 1; }
echo "ok -- run.sh: the order was accepted, everything it started stopped, no ERROR logged"
