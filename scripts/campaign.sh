#!/usr/bin/env bash
# Compares builds on the accepting path, in one sitting: each round runs the
# naive baseline (scripts/baseline.sh --naive-only), then every scenario on
# every build (the builds' order rotating from round to round), so that the
# builds see the same machine; then prints the medians over the rounds, the
# ratios issue 12 asks for, and the CPU per decided order by process.
#   bash scripts/campaign.sh [--rounds N] [--out DIR] LABEL=BIN_DIR[,VAR=value...] ...
#   bash scripts/campaign.sh --summary DIR      (the summary of an earlier campaign)
# BIN_DIR holds a release build's api, worker and bench (see bench.sh
# --bin-dir); LABEL=current builds this tree once and runs that build;
# ,VAR=value after it runs that label's api and workers with those variables
# (off=current,ORDER_EVENTS=off).
# Scenarios (64 clients, every order accepted): one product; 16 products;
# one product with Prefer: wait=10; one product with 1,024 clients.
set -euo pipefail
caller=$PWD
cd "$(dirname "$0")/.."

summary() {
  python3 - "$1" <<'PY'
import glob, json, os, re, statistics, sys
out = sys.argv[1]
def round_of(path):
    return int(re.match(r"(?:naive-)?(\d+)", os.path.basename(path)).group(1))
naive = []
for f in sorted(glob.glob(f"{out}/naive-*.txt"), key=round_of):
    m = re.search(r"= (\d+) orders/s", open(f).read())
    if m:
        naive.append(int(m.group(1)))
labels = open(f"{out}/labels").read().split()
if naive:
    print(f"\nnaive conditional UPDATE: median {statistics.median(naive):.0f} tx/s {naive}")
else:
    print("\nnaive conditional UPDATE: no run")
def runs(name, label):
    found = []
    for f in sorted(glob.glob(f"{out}/[0-9]*-{name}-{label}.txt"), key=round_of):
        lines = [l for l in open(f).read().splitlines() if l.startswith("{")]
        if lines:
            found.append(json.loads(lines[-1]))
    return found
def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None
median = {}
for name in ["one", "many", "wait", "clients1024"]:
    print(f"\n{name}")
    for label in labels:
        rs = runs(name, label)
        if not rs:
            print(f"  {label:12} no run")
            continue
        rate = [round(r["decided_per_second"]) for r in rs]
        median[name, label] = statistics.median(rate)
        p99 = med(r["submit_latency_ms"]["p99"] for r in rs)
        cpu = {}
        for r in rs:
            for p in r["processes"]:
                cpu.setdefault(p["name"], []).append(p["cpu_us_per_decided_order"])
            cpu.setdefault("all", []).append(r["all_cpu_us_per_decided_order"])
        cpu_text = " ".join(
            f"{k} {m:.1f}" for k, m in ((k, med(v)) for k, v in cpu.items()) if m is not None
        )
        ok = "ok" if all(r["ok"] for r in rs) else "CHECKS FAILED"
        print(f"  {label:12} {median[name, label]:8.0f} decided/s {rate}  submit p99 {p99:.1f} ms"
              f"  shed {[r['shed'] for r in rs]}  {ok}")
        print(f"  {'':12} CPU us per decided order: {cpu_text}")
        lags = [r["event_lag_ms"]["p99"] for r in rs if r.get("event_lag_ms")]
        if lags:
            heard = [r.get("events_heard") for r in rs]
            print(f"  {'':12} event lag p99 {statistics.median(lags):.1f} ms {lags}  events heard {heard}")
print("\nratios (medians)")
for label in labels:
    one = median.get(("one", label))
    if not one:
        continue
    parts = [f"one/naive {one / statistics.median(naive):.2f}"] if naive else []
    for name, what in [("many", "16 products/one"), ("wait", "wait/async")]:
        if (name, label) in median:
            parts.append(f"{what} {median[name, label] / one:.2f}")
    if ("clients1024", label) in median:
        parts.append(f"1,024 clients {median['clients1024', label]:.0f}/s")
    print(f"  {label:12} " + "  ".join(parts))
if len(labels) > 1:
    print(f"\nthroughput against {labels[0]} (medians)")
    for label in labels[1:]:
        parts = [
            f"{name} {median[name, label] / median[name, labels[0]]:.2f}"
            for name in ["one", "many", "wait", "clients1024"]
            if median.get((name, label)) and median.get((name, labels[0]))
        ]
        print(f"  {label:12} " + "  ".join(parts))
print(f"\nevery run's output: {out}")
PY
}

rounds=3 out=
while [[ $# -gt 0 ]]; do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --summary) summary "$2"; exit 0 ;;
    *) break ;;
  esac
done
[[ $# -gt 0 ]] || { echo "usage: $0 [--rounds N] [--out DIR] LABEL=BIN_DIR|current ... | --summary DIR"; exit 2; }
[[ $rounds =~ ^[1-9][0-9]*$ ]] || { echo "--rounds must be a positive number, got $rounds"; exit 2; }
if [[ -n $out ]]; then
  mkdir -p "$out"
  [[ -z $(ls -A "$out") ]] || { echo "--out $out is not empty: its runs would mix with these"; exit 2; }
else
  out=$(mktemp -d /tmp/flashstock-campaign.XXXXXX)
  # Removed again if the arguments stop the campaign before any run.
  trap '[[ -n $(ls -A "$out") ]] || rmdir "$out"' EXIT
fi
labels=() dirs=() envs=()
for spec in "$@"; do
  label=${spec%%=*} dir=${spec#*=}
  # LABEL=BIN_DIR,VAR=value,...: that build run with those variables.
  settings=
  if [[ $dir == *,* ]]; then
    settings=${dir#*,} dir=${dir%%,*}
  fi
  [[ $spec == *=* && $label =~ ^[A-Za-z0-9_]+$ && -n $dir ]] || { echo "not LABEL=BIN_DIR: $spec"; exit 2; }
  for setting in ${settings//,/ }; do
    [[ $setting =~ ^[A-Z][A-Z0-9_]*=[^[:space:]]*$ ]] || { echo "$label: not VAR=value: $setting"; exit 2; }
  done
  if [[ $dir == current ]]; then
    # Built once, and copied: edits to the tree during the campaign do not
    # change what runs.
    cargo build -q --release --bin api --bin worker --bin bench
    target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
    dir="$out/bin-$label"
    mkdir -p "$dir"
    cp "$target_dir"/release/{api,worker,bench} "$dir/"
  else
    dir=$(cd "$caller" && cd "$dir" && pwd)
  fi
  for b in api worker bench; do
    [[ -x $dir/$b ]] || { echo "$label: no $b binary in $dir"; exit 2; }
  done
  labels+=("$label") dirs+=("$dir") envs+=("${settings//,/ }")
done
echo "${labels[*]}" >"$out/labels"
scenarios=(
  "one:--clients 64 flash-sale --stock 100000 --orders 100000"
  "many:--clients 64 many-products --products 16 --stock 10000 --orders 100000"
  "wait:--clients 64 --wait 10 flash-sale --stock 50000 --orders 50000"
  "clients1024:--clients 1024 flash-sale --stock 200000 --orders 200000"
)
for round in $(seq "$rounds"); do
  if bash scripts/baseline.sh --naive-only >"$out/naive-$round.txt" 2>&1; then
    tail -1 "$out/naive-$round.txt"
  else
    echo "round $round naive: FAILED (see $out/naive-$round.txt)"
  fi
  for scenario in "${scenarios[@]}"; do
    name=${scenario%%:*} args=${scenario#*:}
    for i in "${!labels[@]}"; do
      # Each round starts one build further on, so none always runs first.
      j=$(( (i + round - 1) % ${#labels[@]} ))
      label=${labels[$j]} dir=${dirs[$j]} settings=${envs[$j]}
      # shellcheck disable=SC2086 # the scenario's arguments and the label's settings, split on purpose
      if env $settings bash scripts/bench.sh --bin-dir "$dir" -- --json $args >"$out/$round-$name-$label.txt" 2>&1; then
        echo "round $round $name $label: done"
      else
        echo "round $round $name $label: FAILED (see $out/$round-$name-$label.txt)"
      fi
    done
  done
done
summary "$out"
