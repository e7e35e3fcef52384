#!/usr/bin/env bash
# Validates asyncapi.json (the order events) with the AsyncAPI CLI, pinned, from npm.
#   bash scripts/check-asyncapi.sh [FILE]   (FILE relative to the repository root)
# The CLI is installed once into ${XDG_CACHE_HOME:-~/.cache}/flashstock/
# (outside the clone), so reruns only validate. Errors and warnings
# fail the check; information (the "3.1.0 exists" notice) does not. Then every
# message example is checked against its schemas.
set -euo pipefail
cd "$(dirname "$0")/.."
ASYNCAPI_CLI_VERSION=4.1.1 # the newest release that runs on Node 20 (5.x needs Node 24)
file=${1:-asyncapi.json}

prefix=${XDG_CACHE_HOME:-$HOME/.cache}/flashstock/asyncapi-cli-$ASYNCAPI_CLI_VERSION
# No usage metrics and no first-run notice: the CLI sends none when CI=true or
# its analytics config (ASYNCAPI_METRICS_CONFIG_PATH, else ~/.asyncapi-analytics,
# which it would create) says disabled. Its config lives beside it, not in $HOME.
export CI=true ASYNCAPI_METRICS_CONFIG_PATH=$prefix/asyncapi-analytics.json
cli=$prefix/node_modules/.bin/asyncapi
if [[ ! -x $cli ]]; then
  echo "== installing @asyncapi/cli@$ASYNCAPI_CLI_VERSION into $prefix"
  # Into a scratch folder first: an interrupted install is never taken for a done one.
  rm -rf -- "$prefix.partial"
  mkdir -p "$prefix.partial"
  npm install --prefix "$prefix.partial" --no-audit --no-fund --loglevel=error \
    "@asyncapi/cli@$ASYNCAPI_CLI_VERSION" >/dev/null
  rm -rf -- "$prefix"
  mv -- "$prefix.partial" "$prefix"
fi
[[ -f $ASYNCAPI_METRICS_CONFIG_PATH ]] \
  || echo '{"analyticsEnabled":"false","infoMessageShown":"true","userID":"flashstock-check"}' >"$ASYNCAPI_METRICS_CONFIG_PATH"

echo "== asyncapi validate $file (@asyncapi/cli $ASYNCAPI_CLI_VERSION)"
"$cli" validate "$file" --fail-severity=warn </dev/null

# The CLI's AsyncAPI 3 rules check neither message examples against their
# schemas nor what the Rust test that validates real events relies on: check
# both with the Ajv (draft-07, formats) the CLI installed.
echo "== message examples vs. components.schemas (Ajv)"
node - "$file" "$prefix/node_modules" <<'JS'
const [file, modules] = process.argv.slice(2);
const Ajv = require(`${modules}/ajv`).default;
const addFormats = require(`${modules}/ajv-formats`).default;
const doc = JSON.parse(require("fs").readFileSync(file, "utf8"));
const schemas = doc.components?.schemas ?? {};
const problems = [];
for (const name of ["OrderEvent", "ProductEvent", "Event", "EventBatch", "OrderEventData", "ProductEventData", "Timestamp"])
  if (!schemas[name]) problems.push(`components.schemas.${name} is missing`);
(function refs(node, at) {
  if (node && typeof node === "object")
    for (const [k, v] of Object.entries(node)) {
      if (k === "$ref" && !(/^#\/components\/schemas\/[A-Za-z0-9_]+$/.test(v) && schemas[v.split("/").pop()]))
        problems.push(`${at}: $ref ${v} is not one of #/components/schemas/<Name>`);
      refs(v, `${at}.${k}`);
    }
})(schemas, "components.schemas");
if (problems.length) { console.log(problems.join("\n")); process.exit(1); }
const ajv = new Ajv({ strict: true, strictTypes: false, allErrors: true });
addFormats(ajv);
ajv.addKeyword("components"); // the wrapper below, so refs resolve as in the document
ajv.addSchema({ $id: "https://flashstock.invalid/asyncapi.json", components: { schemas } });
let checked = 0;
for (const [name, message] of Object.entries(doc.components?.messages ?? {})) {
  if (!message.examples?.length) problems.push(`components.messages.${name} has no example`);
  for (const [i, example] of (message.examples ?? []).entries())
    for (const part of ["payload", "headers"]) {
      if (!(part in example)) continue;
      const ref = message[part]?.$ref;
      if (!ref?.startsWith("#/components/schemas/")) {
        problems.push(`components.messages.${name}.${part} is not a $ref to #/components/schemas/<Name>`);
        continue;
      }
      const validate = ajv.getSchema(`https://flashstock.invalid/asyncapi.json${ref}`);
      checked++;
      if (!validate(example[part]))
        problems.push(`components.messages.${name}.examples[${i}].${part}: ` +
          validate.errors.map((e) => `${e.instancePath || "/"} ${e.message}`).join("; "));
    }
}
if (problems.length) { console.log(problems.join("\n")); process.exit(1); }
console.log(`ok -- ${checked} message example parts match their schemas; every schema $ref is #/components/schemas/<Name>`);
JS
