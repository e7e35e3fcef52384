#!/usr/bin/env bash
# Validates docker-compose.yml without a Docker engine:
#   1. `docker-compose config -q` (Debian's docker-compose package),
#   2. check-jsonschema against the compose-spec schema (PyPI, in .venv),
#   3. the environment passed to api and worker matches what the binaries
#      read (shared/src/config.rs): no unknown variable, none required missing.
#   bash scripts/check-compose.sh
set -euo pipefail
cd "$(dirname "$0")/.."
CHECK_JSONSCHEMA_VERSION=0.39.0

if ! command -v docker-compose >/dev/null; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "== installing docker-compose"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null \
      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null; }
  else
    echo "docker-compose is missing (apt-get install docker-compose)"; exit 1
  fi
fi
[[ -x .venv/bin/python ]] || python3 -m venv .venv
.venv/bin/pip install -q "check-jsonschema==$CHECK_JSONSCHEMA_VERSION"

echo "== docker-compose config -q"
docker-compose config -q
echo "== check-jsonschema --builtin-schema vendor.compose-spec"
.venv/bin/check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml
echo "== compose environment vs. the variables the binaries read"
.venv/bin/python - <<'PY'
import re, sys
from ruamel.yaml import YAML
read = set(re.findall(r'get\("([A-Z_]+)"', open("shared/src/config.rs").read())) | {"RUST_LOG"}
compose = YAML(typ="safe").load(open("docker-compose.yml"))
both = {"DATABASE_URL", "AMQP_URL", "BROKER_NAMESPACE", "ORDER_PARTITIONS", "RESERVATION_TTL"}
required = {"api": both | {"API_ADDR"}, "worker": both | {"WORKER_METRICS_ADDR"}}
problems = []
for service, needed in required.items():
    env = set((compose["services"][service].get("environment") or {}).keys())
    problems += [f"{service}: {v} is not read by the binaries" for v in sorted(env - read)]
    problems += [f"{service}: {v} is not passed" for v in sorted(needed - env)]
if problems:
    print("\n".join(problems)); sys.exit(1)
print(f"ok -- api and worker get only variables the binaries read ({len(read)} known)")
PY
