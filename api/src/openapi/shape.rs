//! The document as code generators read it (orval, openapi-typescript,
//! hey-api, openapi-python-client): a pass over the JSON utoipa derives.
//!
//! - Every body is a named component used by `$ref`: utoipa inlines the
//!   argument of a generic (`Envelope<Order>`), so an order in a 200 and the
//!   same order in a 400 would be two types; here `Envelope_Order` becomes
//!   `OrderEnvelope` whose `data` is `$ref Order`.
//! - Every operation declares the `x-request-id` it takes.
//! - Header parameters are plain strings (`Option<String>` makes them
//!   nullable, which generators turn into `string | null` that no HTTP
//!   client takes).
//! - Response headers the api always sends are `required`, and `Retry-After`
//!   is an integer.
//! - Every operation has a one-sentence `summary` and a `description`.
//! - Components nothing refers to are dropped.

use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet};

/// Runs every pass but [`name_envelopes`], which comes first, in order.
pub fn for_generators(doc: &mut Value) {
    request_id_parameter(doc);
    plain_header_parameters(doc);
    public_operations(doc);
    required_response_headers(doc);
    describe_operations(doc);
    drop_unused_components(doc);
}

/// `Envelope_X` → `XEnvelope` with `data: {$ref X}`, every reference
/// renamed. An `X` that utoipa only inlined becomes a component of its own.
pub fn name_envelopes(doc: &mut Value) {
    let Some(schemas) = doc["components"]["schemas"].as_object_mut() else {
        return;
    };
    let mut renamed = BTreeMap::new();
    let envelopes: Vec<String> = schemas
        .keys()
        .filter(|k| k.starts_with("Envelope_"))
        .cloned()
        .collect();
    for old in envelopes {
        let inner = old.trim_start_matches("Envelope_").to_owned();
        let name = match inner.as_str() {
            "ErrorBody" => "ErrorEnvelope".to_owned(),
            _ => format!("{inner}Envelope"),
        };
        let mut envelope = schemas.remove(&old).expect("listed above");
        let data = envelope["properties"]["data"].take();
        schemas.entry(inner.clone()).or_insert(data);
        schemas.insert(name.clone(), envelope_of(&inner));
        renamed.insert(schema_ref(&old), schema_ref(&name));
    }
    rename_refs(doc, &renamed);
}

/// `#/components/schemas/{name}`.
pub fn schema_ref(name: &str) -> String {
    format!("#/components/schemas/{name}")
}

/// "an `Order`", "a `Product`".
fn article(name: &str) -> String {
    let vowel = name.starts_with(['A', 'E', 'I', 'O', 'U']);
    format!("{} `{name}`", if vowel { "an" } else { "a" })
}

/// Replaces every `$ref` found in `renamed`.
pub fn rename_refs(value: &mut Value, renamed: &BTreeMap<String, String>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get_mut("$ref")
                && let Some(new) = renamed.get(r.as_str())
            {
                *r = new.clone();
            }
            map.values_mut().for_each(|v| rename_refs(v, renamed));
        }
        Value::Array(items) => items.iter_mut().for_each(|v| rename_refs(v, renamed)),
        _ => {}
    }
}

/// Every operation of every path, with its path and method.
pub fn operations_mut(doc: &mut Value) -> impl Iterator<Item = (String, &mut Map<String, Value>)> {
    doc["paths"]
        .as_object_mut()
        .into_iter()
        .flat_map(|paths| paths.iter_mut())
        .flat_map(|(path, item)| {
            item.as_object_mut()
                .into_iter()
                .flat_map(|methods| methods.iter_mut())
                .filter_map(move |(_, operation)| Some((path.clone(), operation.as_object_mut()?)))
        })
}

/// Every operation takes the caller's own `x-request-id` (echoed, and on
/// every log line of the request).
fn request_id_parameter(doc: &mut Value) {
    for (_, operation) in operations_mut(doc) {
        let parameters = operation.entry("parameters").or_insert_with(|| json!([]));
        if let Some(parameters) = parameters.as_array_mut() {
            parameters.push(json!({
                "name": "x-request-id",
                "in": "header",
                "required": false,
                "description": "The request's id, echoed in the answer and on every log line of the request: up to 64 letters, digits, `.`, `_` or `-` (anything else is replaced by a new UUID)",
                "schema": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"},
            }));
        }
    }
}

/// `security: []` on the operations anyone may call, so that no operation
/// leaves its security unsaid.
fn public_operations(doc: &mut Value) {
    for (_, operation) in operations_mut(doc) {
        operation.entry("security").or_insert_with(|| json!([]));
    }
}

/// Header parameters: `type: string`, never `null`.
fn plain_header_parameters(doc: &mut Value) {
    for (_, operation) in operations_mut(doc) {
        let Some(parameters) = operation
            .get_mut("parameters")
            .and_then(Value::as_array_mut)
        else {
            continue;
        };
        for parameter in parameters.iter_mut().filter(|p| p["in"] == "header") {
            let schema = &mut parameter["schema"];
            if let Some(types) = schema["type"].as_array() {
                let types: Vec<&Value> = types.iter().filter(|t| *t != "null").collect();
                if let [only] = types.as_slice() {
                    schema["type"] = (*only).clone();
                }
            }
        }
    }
}

/// Response headers sent on every answer that lists them, but for those
/// of [`SOMETIMES_SENT`].
const ALWAYS_SENT: [&str; 6] = [
    "x-request-id",
    "ETag",
    "Location",
    "Cache-Control",
    "WWW-Authenticate",
    "Allow",
];

/// The (operation, status, header)s of [`ALWAYS_SENT`] that are not: a 400
/// from `create_order` is a rejected order (with them) or malformed JSON
/// (without).
const SOMETIMES_SENT: [(&str, &str, &str); 2] = [
    ("create_order", "400", "Location"),
    ("create_order", "400", "Cache-Control"),
];

/// `required: true` on the headers always sent (and `Retry-After` on a
/// 503, which always says when to come back); `Retry-After` an integer.
fn required_response_headers(doc: &mut Value) {
    for (_, operation) in operations_mut(doc) {
        let id = operation["operationId"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let Some(responses) = operation
            .get_mut("responses")
            .and_then(Value::as_object_mut)
        else {
            continue;
        };
        for (status, response) in responses.iter_mut() {
            let Some(headers) = response.get_mut("headers").and_then(Value::as_object_mut) else {
                continue;
            };
            for (name, header) in headers.iter_mut() {
                let sometimes =
                    SOMETIMES_SENT.contains(&(id.as_str(), status.as_str(), name.as_str()));
                let always = (ALWAYS_SENT.contains(&name.as_str()) && !sometimes)
                    || (name == "Retry-After" && status == "503");
                if always {
                    header["required"] = true.into();
                }
                if name == "Retry-After" {
                    header["schema"] = json!({"type": "integer", "minimum": 0});
                }
            }
        }
    }
}

/// The first sentence of the handler's doc as `summary`, the whole as
/// `description`.
fn describe_operations(doc: &mut Value) {
    for (_, operation) in operations_mut(doc) {
        let text = match (operation.get("summary"), operation.get("description")) {
            (Some(Value::String(s)), Some(Value::String(d))) => format!("{s}\n\n{d}"),
            (Some(Value::String(s)), _) => s.clone(),
            _ => continue,
        };
        let text = text.trim().to_owned();
        let first = text
            .split_once(". ")
            .map(|(first, _)| first)
            .unwrap_or(&text)
            .trim_end_matches('.')
            .replace('\n', " ");
        operation.insert("summary".into(), first.into());
        operation.insert("description".into(), text.into());
    }
}

/// Drops the schemas nothing reaches from the paths.
fn drop_unused_components(doc: &mut Value) {
    let mut reached = BTreeSet::new();
    let mut pending: Vec<String> = Vec::new();
    collect_refs(&doc["paths"], &mut pending);
    while let Some(r) = pending.pop() {
        let Some(name) = r.strip_prefix("#/components/schemas/") else {
            continue;
        };
        if reached.insert(name.to_owned()) {
            collect_refs(&doc["components"]["schemas"][name], &mut pending);
        }
    }
    if let Some(schemas) = doc["components"]["schemas"].as_object_mut() {
        schemas.retain(|name, _| reached.contains(name));
    }
}

/// Every `$ref` under `value`.
fn collect_refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get("$ref") {
                out.push(r.clone());
            }
            map.values().for_each(|v| collect_refs(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

/// `create_order` → `CreateOrder`.
pub fn pascal_case(snake: &str) -> String {
    snake
        .split('_')
        .map(|word| {
            let mut chars = word.chars();
            chars
                .next()
                .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// An envelope around the component `data`. No examples: one envelope
/// serves several statuses (an order is 200, 201 or 202; an error 4xx or 5xx).
pub fn envelope_of(data: &str) -> Value {
    json!({
        "type": "object",
        "description": format!("The envelope of {}.", article(data)),
        "required": ["code", "status", "data"],
        "properties": {
            "code": {"type": "integer", "format": "int32", "minimum": 100, "maximum": 599,
                     "description": "The HTTP status code, repeated."},
            "status": {"type": "string", "description": "The status's reason phrase, such as `OK` or `Not Found`."},
            "data": {"$ref": schema_ref(data)},
        },
    })
}
