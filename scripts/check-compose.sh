#!/usr/bin/env bash
# Validates docker-compose.yml without a Docker engine:
#   1. `docker-compose config -q` (Debian's docker-compose package),
#   2. check-jsonschema against the compose-spec schema (PyPI, in .venv),
#   3. the environment passed to api and worker matches what the binaries
#      read (shared/src/config.rs): no unknown variable, none required missing;
#   4. the `cluster` profile: its nodes are the ones deploy/rabbitmq/cluster.conf
#      names, share one cookie and config, and api and worker list them all;
#      the `replica` profile: a MySQL replica with the primary's image and
#      settings (deploy/mysql/flashstock.cnf: GTIDs, semi-sync AFTER_SYNC),
#      attached by deploy/mysql/replica-init.sh, and DATABASE_URL lists both
#      with DATABASE_REPLICAS set as .env.example says (one server without);
#   5. what is exposed: the secrets are required (compose refuses to start
#      without them), nothing but the api is published beyond the host's
#      loopback, RabbitMQ's management UI not at all, and Prometheus scrapes
#      the api's private metrics listener.
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

# The secrets compose requires (.env would hold them): any values do here.
secrets=(ADMIN_TOKEN=check-compose-admin-0123456789abcdef PAYMENT_TOKEN=check-compose-payment-0123456789abcdef
  GRAFANA_ADMIN_PASSWORD=check-compose-grafana RABBITMQ_ERLANG_COOKIE=check-compose-cookie)
echo "== docker-compose config -q (and with --profile cluster, --profile replica)"
env "${secrets[@]}" docker-compose config -q
env "${secrets[@]}" docker-compose --profile cluster config -q
env "${secrets[@]}" docker-compose --profile replica config -q
bash -n deploy/mysql/replica-init.sh
# The replica profile as .env.example says to run it, rendered for the checks below.
rendered=$(mktemp)
trap 'rm -f "$rendered"' EXIT
env "${secrets[@]}" DATABASE_REPLICAS=,mysql-replica:3306 docker-compose --profile replica config >"$rendered"
export RENDERED_REPLICA="$rendered"
echo "== docker-compose refuses to start without each secret"
for secret in "${secrets[@]}"; do
  others=()
  for s in "${secrets[@]}"; do [[ $s == "$secret" ]] || others+=("$s"); done
  if env -u "${secret%%=*}" "${others[@]}" docker-compose --env-file /dev/null config -q 2>/dev/null; then
    echo "docker-compose.yml starts without ${secret%%=*}"; exit 1
  fi
done
echo "ok -- ${secrets[*]%%=*} are required"
echo "== check-jsonschema --builtin-schema vendor.compose-spec"
.venv/bin/check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml
echo "== compose environment vs. the variables the binaries read"
.venv/bin/python - <<'PY'
import re, sys
from ruamel.yaml import YAML
read = set(re.findall(r'get\(\s*"([A-Z_]+)"', open("shared/src/config.rs").read())) | {"RUST_LOG"}
compose = YAML(typ="safe").load(open("docker-compose.yml"))
both = {"DATABASE_URL", "AMQP_URL", "BROKER_NAMESPACE", "ORDER_PARTITIONS", "RESERVATION_TTL"}
required = {"api": both | {"API_ADDR", "API_METRICS_ADDR", "ADMIN_TOKEN", "PAYMENT_TOKEN"},
            "worker": both | {"WORKER_METRICS_ADDR"}}
problems = []
for service, needed in required.items():
    env = set((compose["services"][service].get("environment") or {}).keys())
    problems += [f"{service}: {v} is not read by the binaries" for v in sorted(env - read)]
    problems += [f"{service}: {v} is not passed" for v in sorted(needed - env)]
if problems:
    print("\n".join(problems)); sys.exit(1)
print(f"ok -- api and worker get only variables the binaries read ({len(read)} known)")

# The cluster profile: the nodes the peer discovery config names are the
# services' hostnames, all share one cookie and the config, and api and
# worker are given every node.
conf = open("deploy/rabbitmq/cluster.conf").read()
named = re.findall(r"classic_config\.nodes\.\d+\s*=\s*rabbit@(\S+)", conf)
services = compose["services"]
nodes = [n for n, s in services.items() if s.get("image", "").startswith("rabbitmq:")]
hosts = [services[n].get("hostname") for n in nodes]
if sorted(hosts) != sorted(named) or len(named) != 3:
    problems.append(f"cluster: hostnames {hosts} are not the nodes cluster.conf names {named}")
for n in nodes:
    s = services[n]
    if n != "rabbitmq" and s.get("profiles") != ["cluster"]:
        problems.append(f"{n}: not in the cluster profile only")
    if "./deploy/rabbitmq/cluster.conf:/etc/rabbitmq/conf.d/20-cluster.conf:ro" not in s.get("volumes", []):
        problems.append(f"{n}: does not mount deploy/rabbitmq/cluster.conf into /etc/rabbitmq/conf.d")
    env = s.get("environment") or {}
    if env != (services["rabbitmq"].get("environment") or {}):
        problems.append(f"{n}: environment (cookie, users) differs from rabbitmq's")
    server, cli = env.get("RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS", ""), env.get("RABBITMQ_CTL_ERL_ARGS", "")
    if "-setcookie" not in server or server != cli:
        problems.append(f"{n}: the server and its CLI do not get the same -setcookie")
for service in ("api", "worker"):
    url = services[service]["environment"]["AMQP_URL"]
    listed = [re.sub(r"^.*@", "", e).split("/")[0].split(":")[0] for e in url.split(",")]
    if listed != ["rabbitmq", "rabbitmq-2", "rabbitmq-3"]:
        problems.append(f"{service}: AMQP_URL lists {listed}, not the three nodes")
if problems:
    print("\n".join(problems)); sys.exit(1)
print(f"ok -- the cluster profile's nodes {hosts} match cluster.conf; api and worker list them all")

# The replica profile: the same image and settings file as the primary,
# distinct server ids, the replica attached (semi-sync on at the primary,
# super_read_only on itself) by its init script, and DATABASE_URL listing
# both as flashstock reads several servers (every later entry host[:port]).
primary, replica = services["mysql"], services.get("mysql-replica", {})
cnf_mount = "./deploy/mysql/flashstock.cnf:/etc/mysql/conf.d/flashstock.cnf:ro"
cnf = dict(re.findall(r"^(\w+)\s*=\s*(\S+)", open("deploy/mysql/flashstock.cnf").read(), re.M))
for key, value in {"gtid_mode": "ON", "enforce_gtid_consistency": "ON",
                   "rpl_semi_sync_source_wait_point": "AFTER_SYNC"}.items():
    if cnf.get(key) != value:
        problems.append(f"deploy/mysql/flashstock.cnf: {key} is {cnf.get(key)}, not {value}")
if replica.get("profiles") != ["replica"]:
    problems.append("mysql-replica: not in the replica profile only")
if replica.get("image") != primary.get("image"):
    problems.append(f"mysql-replica: image {replica.get('image')} is not the primary's {primary.get('image')}")
for name, s in (("mysql", primary), ("mysql-replica", replica)):
    if cnf_mount not in s.get("volumes", []):
        problems.append(f"{name}: does not mount deploy/mysql/flashstock.cnf")
ids = [re.findall(r"--server-id=(\d+)", " ".join(s.get("command", []))) for s in (primary, replica)]
if any(len(i) != 1 for i in ids) or ids[0] == ids[1]:
    problems.append(f"mysql, mysql-replica: server ids {ids} are not one each and distinct")
if "--rpl-semi-sync-replica-enabled=ON" not in replica.get("command", []):
    problems.append("mysql-replica: semi-sync is not enabled on the replica side")
if "./deploy/mysql/replica-init.sh:/docker-entrypoint-initdb.d/replica-init.sh:ro" not in replica.get("volumes", []):
    problems.append("mysql-replica: deploy/mysql/replica-init.sh is not its init script")
init = open("deploy/mysql/replica-init.sh").read()
for needed in ("SOURCE_HOST = 'mysql'", "SOURCE_AUTO_POSITION = 1", "START REPLICA",
               "SET PERSIST super_read_only = ON", "-h mysql", "SET PERSIST rpl_semi_sync_source_enabled = ON"):
    if needed not in init:
        problems.append(f"deploy/mysql/replica-init.sh: no {needed!r}")
import os
rendered = YAML(typ="safe").load(open(os.environ["RENDERED_REPLICA"]))["services"]
for service in ("api", "worker"):
    if not services[service]["environment"]["DATABASE_URL"].endswith("/flashstock${DATABASE_REPLICAS:-}"):
        problems.append(f"{service}: DATABASE_URL does not end with ${{DATABASE_REPLICAS:-}} (empty: one server)")
    url = rendered[service]["environment"]["DATABASE_URL"]
    first, *rest = url.split(",")
    hosts = [re.sub(r"^.*@", "", first).split("/")[0].split(":")[0]] + [e.split(":")[0] for e in rest]
    if hosts != ["mysql", "mysql-replica"] or not all(re.fullmatch(r"[\w.-]+(:\d+)?", e) for e in rest):
        problems.append(f"{service}: with DATABASE_REPLICAS, DATABASE_URL lists {hosts}, not mysql and mysql-replica")
if "DATABASE_REPLICAS=" not in open(".env.example").read():
    problems.append(".env.example: no DATABASE_REPLICAS")
if problems:
    print("\n".join(problems)); sys.exit(1)
print("ok -- the replica profile's server has the primary's image and settings, is attached semi-synchronously, and DATABASE_URL lists both with DATABASE_REPLICAS")

# What is exposed.
api_env = services["api"]["environment"]
for token in ("ADMIN_TOKEN", "PAYMENT_TOKEN"):
    if not re.fullmatch(r"\$\{" + token + r":\?[^}]+\}", str(api_env.get(token, ""))):
        problems.append(f"api: {token} is not required from .env (${{{token}:?...}})")
for name, s in services.items():
    for port in s.get("ports") or []:
        published = str(port)
        if name != "api" and not published.startswith("127.0.0.1:"):
            problems.append(f"{name}: {published} is published beyond the host's loopback")
        if published.split(":")[-1] == "15672":
            problems.append(f"{name}: the management UI is published")
prometheus = YAML(typ="safe").load(open("deploy/prometheus/prometheus.yml"))
scraped = {job["job_name"]: job["dns_sd_configs"][0]["port"] for job in prometheus["scrape_configs"]}
metrics_port = int(str(api_env.get("API_METRICS_ADDR", ":0")).rsplit(":", 1)[1])
if scraped.get("api") != metrics_port:
    problems.append(f"prometheus scrapes the api on {scraped.get('api')}, its metrics listen on {metrics_port}")
if any(str(p).split(":")[-1] == str(metrics_port) for p in services["api"].get("ports") or []):
    problems.append("api: the metrics port is published")
if problems:
    print("\n".join(problems)); sys.exit(1)
print("ok -- secrets required; only the api is public; Prometheus scrapes the api's private metrics listener")
PY
