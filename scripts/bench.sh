#!/usr/bin/env bash
# Runs the benchmark against a fresh api + N workers on this machine, each
# run on its own database and broker namespace, and removes them afterwards.
#   bash scripts/bench.sh [--debug] [--workers N] [--bin-dir DIR] -- <bench arguments>
# e.g. bash scripts/bench.sh -- flash-sale --stock 10000 --orders 100000
# --bin-dir runs the api, worker and bench binaries found in DIR instead of
# building them (to compare a copy of an earlier build, back to back).
set -euo pipefail
caller=$PWD
cd "$(dirname "$0")/.."
# An open-loop run (--rate) holds a socket per request in flight, on both
# sides: lift the soft open-files limit to the hard one for bench and servers.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
profile=release workers=1 bin=
while [[ $# -gt 0 ]]; do
  case "$1" in
    --debug) profile=debug; shift ;;
    --workers) workers=$2; shift 2 ;;
    --bin-dir) bin=$(cd "$caller" && cd "$2" && pwd); shift 2 ;;
    --) shift; break ;;
    *) break ;;
  esac
done
if [[ -z $bin ]]; then
  if [[ $profile == release ]]; then
    cargo build -q --release --bin api --bin worker --bin bench
  else
    cargo build -q --bin api --bin worker --bin bench
  fi
  target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
  bin="$target_dir/$profile"
fi
for b in api worker bench; do
  [[ -x $bin/$b ]] || { echo "no $b binary in $bin"; exit 1; }
done

name="fs_bench_$(date +%s)_$$"
port=$(python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
export DATABASE_URL="mysql://root@127.0.0.1:3306/$name" BROKER_NAMESPACE="$name" \
  API_ADDR="127.0.0.1:$port" RUST_LOG=${RUST_LOG:-warn} DATABASE_MAX_CONNECTIONS=${DATABASE_MAX_CONNECTIONS:-16}
logs=$(mktemp -d)
pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
  mysql --protocol=TCP -h 127.0.0.1 -u root -e "DROP DATABASE IF EXISTS \`$name\`" || true
  for q in $(rabbitmqctl list_queues -q name 2>/dev/null | grep "^$name\." || true); do
    rabbitmqctl delete_queue "$q" >/dev/null 2>&1 || true
  done
}
trap cleanup EXIT
"$bin/api" >"$logs/api.log" 2>&1 &
pids+=($!)
for _ in $(seq 60); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.5; done
for i in $(seq "$workers"); do
  WORKER_METRICS_ADDR=127.0.0.1:0 "$bin/worker" >"$logs/worker$i.log" 2>&1 &
  pids+=($!)
done
for _ in $(seq 60); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.5; done
watch=()
for pid in "${pids[@]}"; do watch+=(--watch-pid "$pid"); done
# The database and the broker are processes of this machine too: their CPU
# per order is part of the cost.
for server in mariadbd beam.smp; do
  for pid in $(pidof "$server" 2>/dev/null || true); do watch+=(--watch-pid "$pid"); done
done
status() {
  mysql --protocol=TCP -h 127.0.0.1 -u root -N -e "SHOW GLOBAL STATUS WHERE Variable_name REGEXP '^(Handler_|Innodb_rows_|Com_(insert|update|select|delete|commit|begin)$|Innodb_data_fsyncs|Innodb_log_writes)'"
}
before=$(mktemp)
status >"$before"
status=0
"$bin/bench" --base-url "http://127.0.0.1:$port" "${watch[@]}" "$@" || status=$?
# The database's own work per recorded order (every order of this run's
# database; other databases on the server add noise).
recorded=$(mysql --protocol=TCP -h 127.0.0.1 -u root -N -e "SELECT COUNT(*) FROM \`$name\`.orders" 2>/dev/null || echo 0)
status | python3 -c '
import sys
before = dict(l.split("\t") for l in open(sys.argv[1]).read().splitlines() if "\t" in l)
after = dict(l.split("\t") for l in sys.stdin.read().splitlines() if "\t" in l)
n = int(sys.argv[2])
if n:
    rows = [(k, int(after[k]) - int(before.get(k, 0))) for k in sorted(after) if after[k].isdigit()]
    rows = [(k, d) for k, d in rows if d > 0]
    print(f"database work per recorded order ({n} orders; SHOW GLOBAL STATUS deltas):", file=sys.stderr)
    print("  " + "  ".join(f"{k}={d / n:.2f}" for k, d in rows), file=sys.stderr)
' "$before" "$recorded"
exit "$status"
