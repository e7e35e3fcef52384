#!/usr/bin/env bash
# The test command: brings up MariaDB and RabbitMQ if they are not answering,
# then runs formatting, lints, every test, and the schemathesis contract check.
#   bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS

bash scripts/services.sh

echo "== removing leftovers of interrupted test runs"
for db in $(mysql --protocol=TCP -h 127.0.0.1 -u root -N -e "SHOW DATABASES LIKE 'fs\\_test\\_%'"); do
  mysql --protocol=TCP -h 127.0.0.1 -u root -e "DROP DATABASE \`$db\`" || true
done
if command -v rabbitmqctl >/dev/null; then
  for q in $(rabbitmqctl list_queues -q name 2>/dev/null | grep '^fs_test_' || true); do
    rabbitmqctl delete_queue "$q" >/dev/null 2>&1 || true
  done
fi
# Servers started by fault-test processes that were killed: RabbitMQ clusters
# (tests/src/cluster.rs, folders flashstock-cluster-<test pid>-<random>,
# node*/pid) and MariaDB primaries and replicas (tests/src/mariadb.rs,
# flashstock-mariadb-<test pid>-<random>, server*/pid). A server is killed
# only if its command line names its folder.
tmp=${TMPDIR:-/tmp}; tmp=${tmp%/}
remove_abandoned() { # PREFIX PIDFILE_GLOB
  local dir owner pidfile pid
  for dir in "$tmp/$1"-*; do
    [[ -d $dir && -O $dir ]] || continue
    owner=${dir##*/"$1"-}; owner=${owner%%-*}
    [[ -d /proc/$owner ]] && continue
    for pidfile in "$dir"/$2; do
      [[ -f $pidfile ]] || continue
      pid=$(cat "$pidfile" 2>/dev/null || true)
      [[ $pid =~ ^[0-9]+$ ]] && grep -qF -- "$dir/" "/proc/$pid/cmdline" 2>/dev/null \
        && kill -KILL "$pid" 2>/dev/null || true
    done
    rm -rf -- "$dir" 2>/dev/null || true
  done
}
remove_abandoned flashstock-cluster 'node*/pid'
remove_abandoned flashstock-mariadb 'server*/pid'

command -v cargo-nextest >/dev/null || cargo install --locked cargo-nextest

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== docker-compose.yml"
bash scripts/check-compose.sh
echo "== asyncapi.json"
bash scripts/check-asyncapi.sh
echo "== building the binaries (the multi-process tests and the storefront check start them)"
cargo build --bins
echo "== apispec.json as client generators read it, and the storefront on the Python client"
bash scripts/check-clients.sh
echo "== tests"
results=$(mktemp)
cargo nextest run --workspace --no-fail-fast 2>&1 | tee "$results"
echo "== fault suite (stops and restarts MariaDB and RabbitMQ, runs MariaDB primaries and replicas of its own: alone, after the rest)"
faults=$(mktemp)
fault_status=0
cargo nextest run --workspace --profile faults --no-fail-fast --no-capture 2>&1 | tee "$faults" || fault_status=$?
# Each fault test restarts what it stopped, but a test killed on timeout
# cannot: make sure both servers answer before going on.
bash scripts/services.sh
if ((fault_status != 0)); then
  echo "== the fault suite failed"
  exit "$fault_status"
fi
echo "== contract check"
bash scripts/schemathesis.sh 100 120
echo "== contract check with buyers' tokens verified, as a buyer"
BUYER_JWT_SECRET=schemathesis-buyer-secret-0123456789 PAYMENT_TOKEN=schemathesis-payment-0123456789abcdef ADMIN_TOKEN=schemathesis-admin-0123456789abcdef \
  bash scripts/schemathesis.sh 50 60
echo "== benchmark smoke run (the harness and its checks, not a speed gate)"
bash scripts/bench.sh --debug -- --json --max-seconds 120 flash-sale --stock 500 --orders 3000 --clients 32
bash scripts/bench.sh --debug -- --json --max-seconds 120 many-products --products 8 --stock 100 --orders 2000 --skewed
BUYER_JWT_SECRET=bench-smoke-buyer-secret-0123456789 PAYMENT_TOKEN=bench-smoke-payment-0123456789abcdef ADMIN_TOKEN=bench-smoke-admin-0123456789abcdef \
  bash scripts/bench.sh --debug -- --json --max-seconds 120 --buyers 50 --max-per-buyer 2 flash-sale --stock 500 --orders 1000 --clients 16
echo "== scripts/run.sh end to end (an order placed with curl is decided; SIGTERM leaves no process)"
bash scripts/run-check.sh
echo "== monitoring: promtool checks and rule tests, every rule and dashboard query against a live Prometheus"
bash scripts/check-monitoring.sh
echo "== done"
grep -E '^ *Summary .* tests run' "$results" | tail -1
grep -E '^ *Summary .* tests run' "$faults" | tail -1
grep '^fault report: ' "$faults" || true
echo "scripts/test.sh finished in $((SECONDS - started))s"
