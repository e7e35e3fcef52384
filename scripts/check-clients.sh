#!/usr/bin/env bash
# Checks that apispec.json makes usable clients: the spec validates, Redocly's
# `recommended` rules find nothing (no error, no warning), and four generators
# make code that type-checks strictly with no generator warning:
#   1. openapi-spec-validator
#   2. redocly lint, `recommended` (a config of only `extends: [recommended]`)
#   3. openapi-typescript types + an openapi-fetch caller, tsc --strict
#   4. orval, fetch client, header parameters as arguments, tsc --strict
#   5. @hey-api/openapi-ts with its fetch client, tsc --strict; no type name
#      it had to number to avoid a clash (`CreateOrderError2`)
#   6. openapi-python-client (--meta none): every module imports, mypy --strict,
#      no header parameter typed as accepting None (httpx rejects a None
#      header), and an order is placed through httpx with and without `Prefer`
#   7. storefront: clients/python/storefront.py (the example README points
#      client developers to) and its harness pass mypy --strict with that
#      package, and the harness runs the storefront on it against a live api
#      and worker (cargo's debug binaries, wherever `cargo metadata` says its
#      target folder is: build them first; MariaDB and RabbitMQ on their standard
#      ports): buy, pay, cancel, the long poll's latency, a 503 OVERLOADED
#      retried with the same Idempotency-Key. CLIENTS_STOREFRONT=0 skips it.
#   bash scripts/check-clients.sh [FILE]   (FILE relative to the repository root)
# Every step runs, whatever the ones before it found; the script fails, naming
# the steps that did, if any did.
# The tools, pinned, are installed once into ${XDG_CACHE_HOME:-~/.cache}/flashstock/
# (outside the clone), keyed by their versions, so reruns only check. The
# generated code goes to a temporary folder that is removed afterwards
# (CLIENTS_KEEP=1 keeps it and says where).
set -euo pipefail
cd "$(dirname "$0")/.."
# The newest releases that run on Node 20 and Python 3.11:
REDOCLY_CLI_VERSION=2.77.0
OPENAPI_TYPESCRIPT_VERSION=7.13.0 # its peer is typescript ^5
OPENAPI_FETCH_VERSION=0.17.0
ORVAL_VERSION=7.13.2              # 7.14+ (and 8.x) need Node 22.18
HEY_API_OPENAPI_TS_VERSION=0.95.0 # 0.96+ need Node 22.13; it bundles @hey-api/client-fetch
TYPESCRIPT_VERSION=5.9.3          # 6.x and 7.x are outside openapi-typescript's peer range
OPENAPI_PYTHON_CLIENT_VERSION=0.29.1
RUFF_VERSION=0.15.22              # its post-generation hook; 0.16+ enable more rules by default,
                                  # and the PYI036 fix turns client.py's `*args: Any` into `object`, which mypy rejects
MYPY_VERSION=2.4.1
OPENAPI_SPEC_VALIDATOR_VERSION=0.9.0
HTTPX_VERSION=0.28.1              # the generated client asks for httpx <0.29
ATTRS_VERSION=26.1.0
PYTHON_DATEUTIL_VERSION=4.0.0     # clients of older generators import it; 0.29 uses datetime.fromisoformat
file=${1:-apispec.json}
[[ -f $file ]] || { echo "no such file: $file"; exit 1; }
file=$(realpath -- "$file")

npm_packages=(
  "@redocly/cli@$REDOCLY_CLI_VERSION" "openapi-typescript@$OPENAPI_TYPESCRIPT_VERSION"
  "openapi-fetch@$OPENAPI_FETCH_VERSION" "orval@$ORVAL_VERSION"
  "@hey-api/openapi-ts@$HEY_API_OPENAPI_TS_VERSION" "typescript@$TYPESCRIPT_VERSION"
)
python=$(command -v python3.11 || command -v python3)
# The generated client uses enum.StrEnum.
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "needs Python 3.11 or later: $python"; exit 1; }
pip_packages=(
  "openapi-python-client==$OPENAPI_PYTHON_CLIENT_VERSION" "ruff==$RUFF_VERSION" "mypy==$MYPY_VERSION"
  "openapi-spec-validator==$OPENAPI_SPEC_VALIDATOR_VERSION" "httpx==$HTTPX_VERSION"
  "attrs==$ATTRS_VERSION" "python-dateutil==$PYTHON_DATEUTIL_VERSION"
)
cache=${XDG_CACHE_HOME:-$HOME/.cache}/flashstock
key() { printf '%s\n' "$@" | sha256sum | cut -c1-12; }
npm_prefix=$cache/client-tools-npm-$(key "$(node --version)" "${npm_packages[@]}")
venv=$cache/client-tools-py-$(key "$("$python" -c 'import sys; print(sys.version)')" "${pip_packages[@]}")
bin=$npm_prefix/node_modules/.bin

if [[ ! -x $bin/tsc ]]; then
  echo "== installing ${npm_packages[*]} into $npm_prefix"
  # Into a scratch folder first: an interrupted install is never taken for a done one.
  rm -rf -- "$npm_prefix.partial"
  mkdir -p "$npm_prefix.partial"
  npm install --prefix "$npm_prefix.partial" --no-audit --no-fund --loglevel=error \
    "${npm_packages[@]}" >/dev/null
  rm -rf -- "$npm_prefix"
  mv -- "$npm_prefix.partial" "$npm_prefix"
fi
# A venv cannot be moved (its scripts name its path): a marker, written last, says it is done.
if [[ ! -f $venv/.installed ]]; then
  echo "== installing ${pip_packages[*]} into $venv"
  rm -rf -- "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check --no-input "${pip_packages[@]}"
  touch "$venv/.installed"
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/flashstock-clients.XXXXXX")
if [[ ${CLIENTS_KEEP:-} == 1 ]]; then
  trap 'echo "(generated code kept in $work)"' EXIT
else
  trap 'rm -rf -- "$work"' EXIT
fi
ln -s "$npm_prefix/node_modules" "$work/node_modules" # so the callers below resolve openapi-fetch
# No colours (the warning checks read the output), no telemetry, no update notices.
export NO_COLOR=1 FORCE_COLOR=0 REDOCLY_TELEMETRY=off REDOCLY_SUPPRESS_UPDATE_NOTICE=true

# Runs a generator; its output is shown, and any warning in it fails the step.
generate() {
  local out=$work/$1.log; shift
  local rc=0
  "$@" >"$out" 2>&1 </dev/null || rc=$?
  sed -i 's/\x1b\[[0-9;]*m//g' "$out" # colours that NO_COLOR did not switch off
  if ((rc)); then
    cat "$out"; echo "FAILED: $(basename "$1") exited with an error"; return 1
  fi
  cat "$out"
  if grep -qiE 'warn|⚠|❗' "$out"; then
    echo "FAILED: $(basename "$1") printed warnings (above)"; return 1
  fi
}
# Type-checks TypeScript as strictly as a careful client project would.
typecheck() {
  (cd "$work" && "$bin/tsc" --noEmit --strict --noUnusedLocals --noUnusedParameters \
    --noFallthroughCasesInSwitch --forceConsistentCasingInFileNames \
    --target es2022 --lib es2022,dom,dom.iterable --module esnext --moduleResolution bundler "$@")
}
# Runs one step in a subshell with errexit (which an `if` around it would switch
# off), and notes it when it fails.
failed=()
step() {
  local title=$1; shift
  echo "== $title"
  set +e; ( set -e; "$@" ); local rc=$?; set -e
  ((rc == 0)) || failed+=("$title")
}

spec_validator() {
  "$venv/bin/openapi-spec-validator" "$file"
}

redocly_lint() {
  # A config of its own, so neither a redocly.yaml nor an ignore file in the
  # clone can switch a rule off or hide a problem.
  printf 'extends:\n  - recommended\n' >"$work/redocly.yaml"
  "$bin/redocly" lint --config "$work/redocly.yaml" --format=json --max-problems=10000 "$file" \
    >"$work/redocly.json" 2>"$work/redocly.err" </dev/null || true
  node - "$work/redocly.json" "$work/redocly.err" <<'JS'
const fs = require("fs");
const [json, err] = process.argv.slice(2);
let report;
try { report = JSON.parse(fs.readFileSync(json, "utf8")); }
catch { console.log(fs.readFileSync(err, "utf8")); console.log("FAILED: redocly gave no report"); process.exit(1); }
for (const p of report.problems)
  console.log(`${p.severity.padEnd(5)} ${p.ruleId}  ${p.location.map((l) => l.pointer).join(", ")}  ${p.message}`);
const { errors, warnings, ignored } = report.totals;
console.log(`${errors} errors, ${warnings} warnings, ${ignored} ignored`);
process.exit(errors + warnings + ignored ? 1 : 0);
JS
}

openapi_typescript() {
  local rc=0
  mkdir -p "$work/openapi-typescript"
  generate openapi-typescript "$bin/openapi-typescript" "$file" -o "$work/openapi-typescript/schema.d.ts" || rc=1
  cat >"$work/openapi-typescript/main.ts" <<'TS'
import createClient from "openapi-fetch";
import type { paths } from "./schema";

const client = createClient<paths>({ baseUrl: "http://localhost:3000" });

export async function demo(): Promise<string> {
  const products = await client.GET("/api/products", { params: { query: { page: 1, per_page: 10 } } });
  const first = products.data?.data.items[0];
  const order = await client.POST("/api/orders", {
    params: { header: { Prefer: "wait=5", "Idempotency-Key": "0123456789abcdef" } },
    body: { product_id: first?.id ?? 1, total: 1 },
  });
  if (order.error) {
    // a 400 after `Prefer: wait` carries the rejected order, any other error an error body
    const body = order.error.data;
    return "message" in body ? `${body.error}: ${body.message}` : `${body.status} ${body.reason ?? ""}`;
  }
  const again = await client.GET("/api/orders/{id}", { params: { path: { id: order.data.data.id } } });
  return `${first?.name ?? "-"} ${order.data.data.status} ${again.data?.data.status ?? "-"}`;
}
TS
  [[ ! -f $work/openapi-typescript/schema.d.ts ]] || typecheck openapi-typescript/main.ts || rc=1
  return $rc
}

orval_client() {
  local rc=0
  mkdir -p "$work/orval"
  cat >"$work/orval/orval.config.cjs" <<'JS'
module.exports = {
  flashstock: {
    input: { target: process.env.SPEC },
    output: {
      target: "./out/client.ts",
      schemas: "./out/model",
      client: "fetch",
      mode: "split",
      headers: true, // header parameters become a typed argument (an output option, not an override)
      prettier: false,
    },
  },
};
JS
  (cd "$work/orval" && export SPEC=$file && generate orval "$bin/orval" --config orval.config.cjs) || rc=1
  cat >"$work/orval/main.ts" <<'TS'
import { createOrder, listProducts } from "./out/client";

export async function demo(): Promise<string> {
  const products = await listProducts({ page: 1, per_page: 10 });
  const first = products.status === 200 ? products.data.data.items[0] : undefined;
  const order = await createOrder({ product_id: first?.id ?? 1, total: 1 }, { Prefer: "wait=5" });
  return `${first?.name ?? "-"} ${order.status}`;
}
TS
  [[ ! -f $work/orval/out/client.ts ]] || typecheck orval/main.ts orval/out/client.ts orval/out/model/index.ts || rc=1
  return $rc
}

hey_api() {
  local rc=0
  (cd "$work" && generate hey-api "$bin/openapi-ts" -i "$file" -o hey-api/out -c @hey-api/client-fetch --no-log-file) || rc=1
  [[ -f $work/hey-api/out/types.gen.ts ]] || return 1
  # It numbers a type whose name is taken (a schema `create_order_error` and the
  # operation's own `CreateOrderError` make `CreateOrderError2`): a silent clash.
  node - "$work/hey-api/out/types.gen.ts" <<'JS' || rc=1
const src = require("fs").readFileSync(process.argv[2], "utf8");
const names = new Set([...src.matchAll(/^export (?:type|const|enum|interface) (\w+)/gm)].map((m) => m[1]));
const clashes = [...names].filter((n) => /\d$/.test(n) && names.has(n.replace(/\d+$/, "")));
if (clashes.length) {
  console.log(`names @hey-api/openapi-ts numbered to avoid a clash: ${clashes.join(", ")}`);
  process.exit(1);
}
JS
  cat >"$work/hey-api/main.ts" <<'TS'
import { createOrder, listProducts } from "./out";
import { client } from "./out/client.gen";

client.setConfig({ baseUrl: "http://localhost:3000" });

export async function demo(): Promise<string> {
  const products = await listProducts({ query: { page: 1, per_page: 10 } });
  const first = products.data?.data.items[0];
  const order = await createOrder({ body: { product_id: first?.id ?? 1, total: 1 }, headers: { Prefer: "wait=5" } });
  return `${first?.name ?? "-"} ${order.data?.data.status ?? order.response.status}`;
}
TS
  typecheck hey-api/main.ts || rc=1
  return $rc
}

python_client() {
  local rc=0
  mkdir -p "$work/python"
  # The venv on PATH for its ruff hooks (without ruff it warns and skips them).
  (export PATH=$venv/bin:$PATH && generate openapi-python-client "$venv/bin/openapi-python-client" generate \
    --path "$file" --meta none --output-path "$work/python/flashstock_client") || rc=1
  [[ -d $work/python/flashstock_client ]] || return 1
  (cd "$work/python" && "$venv/bin/python" - <<'PY'
import importlib, inspect, json, pkgutil, re

import httpx

pkg = importlib.import_module("flashstock_client")
modules = [importlib.import_module(m.name) for m in pkgutil.walk_packages(pkg.__path__, "flashstock_client.")]
problems = []
# A header parameter typed as accepting None: httpx raises TypeError for it.
for mod in modules:
    kwargs = getattr(mod, "_get_kwargs", None)
    if kwargs is None:
        continue
    params = inspect.signature(kwargs).parameters
    for header, var in re.findall(r'headers\["([^"]+)"\] = (\w+)$', inspect.getsource(kwargs), re.M):
        if var in params and "None" in str(params[var].annotation):
            problems.append(f"{mod.__name__}: header {header} (`{var}: {params[var].annotation}`) accepts None")
# Place an order through httpx: `Prefer` left out (UNSET), then given.
create_order = next(m for m in modules if m.__name__.endswith(".create_order"))
sent = []
def answer(request: httpx.Request) -> httpx.Response:
    sent.append(request)
    order = {"id": "0b5e3a5e-8d5e-4c4f-9a51-3f1f6c2b7c11", "product_id": 1, "total": 1,
             "status": "PENDING", "created_at": "2026-01-01T00:00:00Z"}
    return httpx.Response(202, json={"code": 202, "status": "Accepted", "data": order})
client = pkg.Client(base_url="http://flashstock.invalid", httpx_args={"transport": httpx.MockTransport(answer)})
body = inspect.signature(create_order.sync_detailed).parameters["body"].annotation.from_dict({"product_id": 1, "total": 1})
for prefer in (None, "wait=5"):
    try:
        response = create_order.sync_detailed(client=client, body=body, **({"prefer": prefer} if prefer else {}))
    except Exception as e:
        problems.append(f"create_order with prefer={prefer!r}: {type(e).__name__}: {e}")
        continue
    if response.status_code != 202 or response.parsed is None:
        problems.append(f"create_order with prefer={prefer!r}: not parsed: {response}")
    if sent[-1].headers.get("Prefer") != prefer:
        problems.append(f"create_order with prefer={prefer!r} sent Prefer: {sent[-1].headers.get('Prefer')!r}")
    if json.loads(sent[-1].content) != {"product_id": 1, "total": 1}:
        problems.append(f"create_order sent the body {sent[-1].content!r}")
print("\n".join(problems) or f"ok -- {len(modules)} modules import; no header parameter accepts None; "
      "create_order sends Prefer only when given")
raise SystemExit(1 if problems else 0)
PY
  ) || rc=1
  (cd "$work/python" && "$venv/bin/mypy" --strict --cache-dir "$work/mypy-cache" flashstock_client) || rc=1
  return $rc
}

# The example storefront and its harness, on the package step 6 generated.
storefront() {
  [[ -d $work/python/flashstock_client ]] || { echo "FAILED: no generated Python client (step 6)"; return 1; }
  local rc=0
  (cd clients/python && MYPYPATH=$work/python "$venv/bin/mypy" --strict --cache-dir "$work/mypy-cache" \
    storefront.py check_storefront.py) || rc=1
  # The debug binaries wherever cargo puts them (CARGO_TARGET_DIR or ./target).
  local target_dir
  target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
  FLASHSTOCK_BIN_DIR=$target_dir/debug PYTHONPATH=$work/python PYTHONDONTWRITEBYTECODE=1 \
    "$venv/bin/python" clients/python/check_storefront.py || rc=1
  return $rc
}

step "openapi-spec-validator $OPENAPI_SPEC_VALIDATOR_VERSION: ${file#"$PWD/"}" spec_validator
step "redocly lint (@redocly/cli $REDOCLY_CLI_VERSION, recommended): no error, no warning" redocly_lint
step "openapi-typescript $OPENAPI_TYPESCRIPT_VERSION + openapi-fetch $OPENAPI_FETCH_VERSION, tsc $TYPESCRIPT_VERSION --strict" openapi_typescript
step "orval $ORVAL_VERSION (fetch client, headers as arguments), tsc --strict" orval_client
step "@hey-api/openapi-ts $HEY_API_OPENAPI_TS_VERSION (@hey-api/client-fetch), tsc --strict" hey_api
step "openapi-python-client $OPENAPI_PYTHON_CLIENT_VERSION (--meta none): import, httpx, mypy $MYPY_VERSION --strict" python_client
if [[ ${CLIENTS_STOREFRONT:-1} == 0 ]]; then
  echo "== storefront: skipped (CLIENTS_STOREFRONT=0)"
else
  storefront_ran=1
  step "storefront: clients/python on the generated client, mypy --strict, against a live api and worker" storefront
fi

if ((${#failed[@]})); then
  printf 'FAILED: %s\n' "${failed[@]}"
  exit 1
fi
echo "ok -- the spec validates, Redocly finds nothing, all four clients type-check strictly${storefront_ran:+, and the storefront runs on the Python one}"
