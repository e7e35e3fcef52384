#!/usr/bin/env bash
# The simplest correct design, measured against flashstock in one sitting:
#   1. the naive baseline: one conditional UPDATE per order on one hot stock
#      row, autocommit, 16 connections, no HTTP and no broker (mariadb-slap);
#   2. flashstock: the all-accepted flash sale through the api and a worker
#      (scripts/bench.sh, release build, 64 clients);
# and prints flashstock's decided orders/s as a multiple of the baseline.
#   bash scripts/baseline.sh [ORDERS]     (default 100000)
#   bash scripts/baseline.sh --naive-only [ORDERS]   (step 1 alone)
set -euo pipefail
cd "$(dirname "$0")/.."
naive_only=false
if [[ ${1:-} == --naive-only ]]; then naive_only=true; shift; fi
orders=${1:-100000}
slap=$(command -v mariadb-slap || command -v mysqlslap)
name="fs_baseline_$(date +%s)_$$"
mysql=(mysql --protocol=TCP -h 127.0.0.1 -u root)
trap '"${mysql[@]}" -e "DROP DATABASE IF EXISTS \`$name\`" || true' EXIT

echo "== naive: $orders conditional UPDATEs on one row, 16 connections"
"${mysql[@]}" -e "CREATE DATABASE \`$name\`;
  CREATE TABLE \`$name\`.inventories (product_id BIGINT UNSIGNED PRIMARY KEY,
    stored_stock BIGINT NOT NULL, reserved_stock BIGINT NOT NULL) ENGINE=InnoDB;
  INSERT INTO \`$name\`.inventories VALUES (1, $orders, 0);"
started=$(date +%s.%N)
"$slap" --protocol=TCP -h 127.0.0.1 -u root --create-schema="$name" --concurrency=16 \
  --number-of-queries="$orders" --iterations=1 --silent \
  --query="UPDATE inventories SET reserved_stock = reserved_stock + 1 WHERE product_id = 1 AND stored_stock - reserved_stock >= 1" >/dev/null
elapsed=$(python3 -c "import time; print(time.time() - $started)")
reserved=$("${mysql[@]}" -N -e "SELECT reserved_stock FROM \`$name\`.inventories")
naive=$(python3 -c "print(round($reserved / $elapsed))")
echo "naive: $reserved reserved in ${elapsed}s = $naive orders/s"
$naive_only && exit 0

echo "== flashstock: flash sale, every order accepted, 64 clients"
out=$(bash scripts/bench.sh -- --json --clients 64 flash-sale --stock "$orders" --orders "$orders")
flash=$(python3 -c "import json,sys; print(round(json.loads(sys.argv[1].splitlines()[-1])['decided_per_second']))" "$out")
echo "flashstock: $flash decided orders/s"
python3 -c "print(f'ratio: flashstock / naive = {$flash / $naive:.2f}')"
