#!/usr/bin/env bash
# Runs the benchmark against a fresh api + N workers on this machine, each
# run on its own database and broker namespace, and removes them afterwards.
#   bash scripts/bench.sh [--debug] [--workers N] -- <bench arguments>
# e.g. bash scripts/bench.sh -- flash-sale --stock 10000 --orders 100000
set -euo pipefail
cd "$(dirname "$0")/.."
# An open-loop run (--rate) holds a socket per request in flight, on both
# sides: lift the soft open-files limit to the hard one for bench and servers.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
profile=release workers=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --debug) profile=debug; shift ;;
    --workers) workers=$2; shift 2 ;;
    --) shift; break ;;
    *) break ;;
  esac
done
if [[ $profile == release ]]; then
  cargo build -q --release --bin api --bin worker --bin bench
else
  cargo build -q --bin api --bin worker --bin bench
fi
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
bin="$target_dir/$profile"

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
"$bin/bench" --base-url "http://127.0.0.1:$port" "${watch[@]}" "$@"
