#!/usr/bin/env bash
# Checks deploy/prometheus and the Grafana dashboard for real, with no Docker
# engine (Debian's prometheus package provides prometheus and promtool):
#   1. promtool check config, promtool check rules, promtool test rules;
#   2. starts the system with scripts/run.sh (debug build, 2 workers) on a
#      database and broker namespace of its own, and a real Prometheus that
#      scrapes it with the repo's alert rules; places orders;
#   3. runs every PromQL expression of the rules and of the dashboard through
#      Prometheus's HTTP API, and fails on any that is invalid, names a
#      metric the binaries do not export, or a rule that does not evaluate.
#   bash scripts/check-monitoring.sh
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "== installing prometheus (Debian's package)"
    install() { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
    install || { apt-get update -qq && install; }
  else
    echo "prometheus and promtool are missing (apt-get install prometheus)"; exit 1
  fi
fi

echo "== promtool check config / rules, promtool test rules"
promtool check config deploy/prometheus/prometheus.yml
promtool check rules deploy/prometheus/alerts.yml
promtool test rules deploy/prometheus/alerts.test.yml

free_port() { python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"; }
name="fs_test_monitoring_$$"
api_port=$(free_port)
api_metrics_port=$(free_port)
prom_port=$(free_port)
work=$(mktemp -d)
runner="" prom=""
cleanup() {
  [[ -n $prom ]] && kill -TERM "$prom" 2>/dev/null && wait "$prom" 2>/dev/null
  [[ -n $runner ]] && kill -TERM "$runner" 2>/dev/null && wait "$runner" 2>/dev/null
  mysql --protocol=TCP -h 127.0.0.1 -u root -e "DROP DATABASE IF EXISTS \`$name\`" || true
  for q in $(rabbitmqctl list_queues -q name 2>/dev/null | grep "^$name\." || true); do
    rabbitmqctl delete_queue "$q" >/dev/null 2>&1 || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

echo "== a live system: scripts/run.sh --debug --workers 2"
# /metrics on a listener of its own, as compose runs it (API_METRICS_ADDR);
# a webhook endpoint nobody answers, so the per-endpoint metrics exist.
cat >"$work/webhooks.json" <<'JSON'
[{"name": "monitoring-check", "url": "http://127.0.0.1:9/hook",
  "secrets": ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"], "from": "first", "retry_for": "1m"}]
JSON
DATABASE_URL="mysql://root@127.0.0.1:3306/$name" BROKER_NAMESPACE="$name" API_ADDR="127.0.0.1:$api_port" \
  API_METRICS_ADDR="127.0.0.1:$api_metrics_port" WEBHOOKS_FILE="$work/webhooks.json" \
  bash scripts/run.sh --debug --workers 2 >"$work/run.log" 2>&1 &
runner=$!
for _ in $(seq 120); do grep -q "is running" "$work/run.log" && break; sleep 1; done
grep -q "is running" "$work/run.log" || { cat "$work/run.log"; echo "run.sh did not come up"; exit 1; }
workers=$(grep -oE 'worker metrics .*' "$work/run.log" | grep -oE '127\.0\.0\.1:[0-9]+' | sed 's/.*/"&"/' | paste -sd, -)

cat >"$work/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - $PWD/deploy/prometheus/alerts.yml
scrape_configs:
  - job_name: api
    static_configs: [{targets: ["127.0.0.1:$api_metrics_port"]}]
  - job_name: worker
    static_configs: [{targets: [$workers]}]
EOF
echo "== a real Prometheus on 127.0.0.1:$prom_port, scraping the api and workers $workers"
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/data" \
  --web.listen-address="127.0.0.1:$prom_port" >"$work/prometheus.log" 2>&1 &
prom=$!
for _ in $(seq 60); do curl -sf "127.0.0.1:$prom_port/-/ready" >/dev/null && break; sleep 0.5; done
curl -sf "127.0.0.1:$prom_port/-/ready" >/dev/null || { cat "$work/prometheus.log"; echo "prometheus did not start"; exit 1; }

# Decisions of both kinds, so every histogram and counter has samples.
curl -sf -XPOST "127.0.0.1:$api_port/api/products" -H 'content-type: application/json' -d '{"name":"Kaos","stock":2}' >/dev/null
for _ in 1 2 3; do
  curl -s -XPOST "127.0.0.1:$api_port/api/orders" -H 'content-type: application/json' -H 'Prefer: wait=10' \
    -d '{"product_id":1,"total":1}' >/dev/null
done

PROM="http://127.0.0.1:$prom_port" python3 - <<'PY'
import json, os, re, sys, time, urllib.parse, urllib.request

prom = os.environ["PROM"]
def get(path, **params):
    url = f"{prom}{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        return json.load(e)

# Every target up and every rule evaluated at least once.
deadline = time.time() + 60
while True:
    targets = get("/api/v1/targets")["data"]["activeTargets"]
    rules = [r for g in get("/api/v1/rules")["data"]["groups"] for r in g["rules"]]
    up = all(t["health"] == "up" for t in targets) and len(targets) == 3
    evaluated = rules and all(r["lastEvaluation"] > "0001-01-01T00:00:00Z" for r in rules)
    if up and evaluated and time.time() > deadline - 50:
        break
    if time.time() > deadline:
        sys.exit(f"targets or rules not ready: {json.dumps(targets)[:2000]}")
    time.sleep(1)

exported = set(get("/api/v1/label/__name__/values")["data"])
rules_yaml = open("deploy/prometheus/alerts.yml").read()
exprs = [("rule " + a, e.strip()) for a, e in re.findall(r"alert: (\w+)\n\s+expr: (.+)", rules_yaml)]
dashboard = json.load(open("deploy/grafana/dashboards/flashstock.json"))
exprs += [(f"panel '{p['title']}'", t["expr"]) for p in dashboard["panels"] for t in p["targets"]]
keywords = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset",
            "sum", "min", "max", "avg", "count", "group", "stddev", "stdvar", "topk", "bottomk", "quantile", "count_values"}
problems = []
for where, expr in exprs:
    answer = get("/api/v1/query", query=expr)
    if answer.get("status") != "success":
        problems.append(f"{where}: {expr!r} is invalid: {answer.get('error')}")
    # Names outside {...} and not followed by '(' are metric names.
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\"[^\"]*\"", "", expr)
    names = {n for n in re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", bare)
             if n not in keywords and not re.fullmatch(r"[0-9.e]+", n)}
    # Labels inside by (...) / on (...) are not metric names.
    labels = set(re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", bare))
    label_names = {l.strip() for group in labels for l in group.split(",")}
    for n in sorted(names - label_names):
        if n not in exported:
            problems.append(f"{where}: names {n}, which nothing exports")
unhealthy = [f"rule {r['name']}: {r.get('lastError')}" for r in rules if r["health"] != "ok"]
problems += unhealthy
firing = [r["name"] for r in rules if r["state"] == "firing"]
if problems:
    sys.exit("\n".join(problems))
print(f"ok -- {len(exprs)} expressions ({len(rules)} rules, {sum(len(p['targets']) for p in dashboard['panels'])} panel queries) "
      f"valid against a live system; {len(exported)} metric names scraped; rules firing: {firing or 'none'}")
PY
