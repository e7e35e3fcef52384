#!/usr/bin/env bash
# Runs the whole system on this machine without Docker: makes sure MariaDB
# and RabbitMQ answer (installing them on Debian as root, as
# scripts/services.sh does), builds the release binaries, starts the api and
# N workers (each with its own metrics port), prints where everything is,
# and stops everything it started on ctrl-c or SIGTERM.
#   bash scripts/run.sh [--workers N] [--debug]
# The environment is passed through (DATABASE_URL, AMQP_URL, API_ADDR, ...;
# see README.md); a .env file is read by the binaries themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
workers=1 profile=release
while [[ $# -gt 0 ]]; do
  case "$1" in
    --workers) workers=$2; shift 2 ;;
    --debug) profile=debug; shift ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown argument $1 (try --workers N, --debug)" >&2; exit 2 ;;
  esac
done
[[ $workers =~ ^[0-9]+$ ]] || { echo "run.sh: --workers takes a number" >&2; exit 2; }

bash scripts/services.sh
if [[ $profile == release ]]; then
  cargo build -q --release --bin api --bin worker
else
  cargo build -q --bin api --bin worker
fi
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
bin="$target_dir/$profile"

free_port() { python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"; }

pids=()
stop() {
  trap - INT TERM EXIT
  if ((${#pids[@]})); then
    echo "== stopping ${#pids[@]} processes"
    kill -TERM "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
  fi
  exit 0
}
trap stop INT TERM EXIT

api_addr=${API_ADDR:-0.0.0.0:3000}
api_port=${api_addr##*:}
API_ADDR=$api_addr "$bin/api" &
pids+=($!)
for _ in $(seq 120); do
  curl -sf "http://127.0.0.1:$api_port/healthz" >/dev/null && break
  kill -0 "${pids[0]}" 2>/dev/null || { echo "run.sh: the api exited; see its message above" >&2; exit 1; }
  sleep 0.5
done
# /metrics on the api's own port, or on API_METRICS_ADDR when that is set.
api_metrics="http://127.0.0.1:$api_port/metrics"
[[ -n ${API_METRICS_ADDR:-} ]] && api_metrics="http://127.0.0.1:${API_METRICS_ADDR##*:}/metrics"
metrics=()
for _ in $(seq "$workers"); do
  port=$(free_port)
  WORKER_METRICS_ADDR="127.0.0.1:$port" "$bin/worker" &
  pids+=($!)
  metrics+=("http://127.0.0.1:$port/metrics")
done

cat <<EOF
== flashstock is running ($profile build, 1 api, $workers worker(s))
   api             http://127.0.0.1:$api_port/api
   OpenAPI         http://127.0.0.1:$api_port/api/openapi.json
   api metrics     $api_metrics
   worker metrics  ${metrics[*]:-none}
   RabbitMQ UI     http://127.0.0.1:15672 (if the management plugin is enabled: rabbitmq-plugins enable rabbitmq_management)
   try:  curl -s -XPOST 127.0.0.1:$api_port/api/products -H 'content-type: application/json' -d '{"name":"Kaos","stock":100}'
         curl -s -XPOST 127.0.0.1:$api_port/api/orders -H 'content-type: application/json' -H 'Prefer: wait=5' -d '{"product_id":1,"total":1}'
   ctrl-c stops everything
EOF
# Until a signal, or until a process dies (then stop the rest).
wait -n "${pids[@]}" || true
echo "== a process exited; stopping the others" >&2
