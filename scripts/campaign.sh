#!/usr/bin/env bash
# Compares builds on the accepting path, in one sitting: each round runs the
# naive baseline (scripts/baseline.sh --naive-only), then every scenario on
# every build, so that the builds see the same machine; then prints the
# medians over the rounds, the ratios issue 12 asks for, and the CPU per
# decided order by process.
#   bash scripts/campaign.sh [--rounds N] [--out DIR] LABEL=BIN_DIR [LABEL=BIN_DIR ...]
# BIN_DIR holds a release build's api, worker and bench (see bench.sh
# --bin-dir); LABEL=current builds and runs this tree instead.
# Scenarios (64 clients, every order accepted): one product; 16 products;
# one product with Prefer: wait=10; one product with 1,024 clients.
set -euo pipefail
caller=$PWD
cd "$(dirname "$0")/.."
rounds=3 out=
while [[ $# -gt 0 ]]; do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) break ;;
  esac
done
[[ $# -gt 0 ]] || { echo "usage: $0 [--rounds N] [--out DIR] LABEL=BIN_DIR|current ..."; exit 2; }
out=${out:-$(mktemp -d /tmp/flashstock-campaign.XXXXXX)}
mkdir -p "$out"
builds=()
for spec in "$@"; do
  label=${spec%%=*} dir=${spec#*=}
  [[ $label =~ ^[A-Za-z0-9_]+$ && $spec == *=* ]] || { echo "not LABEL=BIN_DIR: $spec"; exit 2; }
  if [[ $dir == current ]]; then
    cargo build -q --release --bin api --bin worker --bin bench
    builds+=("$label=")
  else
    builds+=("$label=$(cd "$caller" && cd "$dir" && pwd)")
  fi
done
scenarios=(
  "one:--clients 64 flash-sale --stock 100000 --orders 100000"
  "many:--clients 64 many-products --products 16 --stock 10000 --orders 100000"
  "wait:--clients 64 --wait 10 flash-sale --stock 50000 --orders 50000"
  "clients1024:--clients 1024 flash-sale --stock 200000 --orders 200000"
)
for round in $(seq "$rounds"); do
  bash scripts/baseline.sh --naive-only | tee "$out/$round-naive.txt"
  for scenario in "${scenarios[@]}"; do
    name=${scenario%%:*} args=${scenario#*:}
    for build in "${builds[@]}"; do
      label=${build%%=*} dir=${build#*=}
      # shellcheck disable=SC2086 # the scenario's arguments, split on purpose
      if ! bash scripts/bench.sh ${dir:+--bin-dir "$dir"} -- --json $args >"$out/$round-$name-$label.txt" 2>&1; then
        echo "round $round $name $label: FAILED (see $out/$round-$name-$label.txt)"
        continue
      fi
      echo "round $round $name $label: done"
    done
  done
done
python3 - "$out" "${builds[@]%%=*}" <<'PY'
import glob, json, re, statistics, sys
out, labels = sys.argv[1], sys.argv[2:]
naive = [int(re.search(r"= (\d+) orders/s", open(f).read()).group(1))
         for f in sorted(glob.glob(f"{out}/*-naive.txt"))]
print(f"\nnaive conditional UPDATE: median {statistics.median(naive):.0f} tx/s {naive}")
def runs(name, label):
    found = []
    for f in sorted(glob.glob(f"{out}/*-{name}-{label}.txt")):
        lines = [l for l in open(f).read().splitlines() if l.startswith("{")]
        if lines:
            found.append(json.loads(lines[-1]))
    return found
median = {}
for name in ["one", "many", "wait", "clients1024"]:
    print(f"\n{name}")
    for label in labels:
        rs = runs(name, label)
        if not rs:
            print(f"  {label:12} no run"); continue
        rate = [round(r["decided_per_second"]) for r in rs]
        median[name, label] = statistics.median(rate)
        p99 = statistics.median(r["submit_latency_ms"]["p99"] for r in rs)
        cpu = {}
        for r in rs:
            for p in r["processes"]:
                cpu.setdefault(p["name"], []).append(p["cpu_us_per_decided_order"])
            cpu.setdefault("all", []).append(r["all_cpu_us_per_decided_order"])
        cpu_text = " ".join(f"{k} {statistics.median(v):.1f}" for k, v in cpu.items())
        ok = "ok" if all(r["ok"] for r in rs) else "CHECKS FAILED"
        print(f"  {label:12} {median[name, label]:8.0f} decided/s {rate}  submit p99 {p99:.1f} ms  shed {[r['shed'] for r in rs]}  {ok}")
        print(f"  {'':12} CPU us per decided order: {cpu_text}")
print("\nratios (medians)")
for label in labels:
    one = median.get(("one", label))
    if not one:
        continue
    parts = [f"one/naive {one / statistics.median(naive):.2f}"]
    for name, what in [("many", "16 products/one"), ("wait", "wait/async")]:
        if (name, label) in median:
            parts.append(f"{what} {median[name, label] / one:.2f}")
    if ("clients1024", label) in median:
        parts.append(f"1,024 clients {median['clients1024', label]:.0f}/s")
    print(f"  {label:12} " + "  ".join(parts))
print(f"\nevery run's output: {out}")
PY
