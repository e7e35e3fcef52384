//! Answers checked against the served OpenAPI document, strictly, the way a
//! generated client reads them:
//! - every header of ours an answer carries is listed for its operation and
//!   status;
//! - every field a schema calls `required` is there, and every header a
//!   response calls `required`;
//! - no field is `null` unless its schema allows `null`, and no field is
//!   sent that its schema does not list;
//! - enums hold, and every `date-time` has six fractional digits and `Z`;
//! - a nullable field is `required` (sent as `null`, never left out), and
//!   a field left out is not nullable;
//! - after a walk, a field that was sent in every answer seen is `required`
//!   (a generator would otherwise make it optional).

use serde_json::Value;
use std::collections::BTreeMap;

/// A walk through answers of one spec.
pub struct Walk {
    spec: Value,
    /// Per schema and field: answers that had it, answers seen.
    presence: BTreeMap<(String, String), (usize, usize)>,
    /// What broke, with where.
    pub findings: Vec<String>,
    /// Answers checked.
    pub answers: usize,
    /// Headers of ours seen on answers (each listed, or a finding).
    pub headers: usize,
}

/// The headers the api sets itself.
const OURS: [&str; 10] = [
    "location",
    "retry-after",
    "etag",
    "cache-control",
    "idempotent-replayed",
    "preference-applied",
    "link",
    "www-authenticate",
    "allow",
    "x-request-id",
];

impl Walk {
    /// A walk against `spec` (the served `/api/openapi.json`).
    pub fn new(spec: Value) -> Self {
        Self {
            spec,
            presence: BTreeMap::new(),
            findings: Vec::new(),
            answers: 0,
            headers: 0,
        }
    }

    /// Checks an answer of `method template` (`GET`, `/api/orders/{id}`):
    /// its status is documented, its required headers are there, and its
    /// body (if JSON) matches the documented schema. Returns the body.
    pub async fn check(&mut self, method: &str, template: &str, r: reqwest::Response) -> Value {
        let status = r.status().as_u16().to_string();
        let at = format!("{method} {template} {status}");
        let documented =
            self.spec["paths"][template][method.to_lowercase()]["responses"][&status].clone();
        let headers = r.headers().clone();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        self.answers += 1;
        if !documented.is_object() {
            self.findings.push(format!("{at}: status not in the spec"));
            return body;
        }
        let listed: Vec<String> = documented["headers"]
            .as_object()
            .map(|h| h.keys().map(|k| k.to_lowercase()).collect())
            .unwrap_or_default();
        for name in OURS.iter().filter(|h| headers.contains_key(**h)) {
            self.headers += 1;
            if !listed.iter().any(|l| l == name) {
                self.findings
                    .push(format!("{at}: sends {name}, which the spec does not list"));
            }
        }
        for (name, header) in documented["headers"].as_object().into_iter().flatten() {
            match headers.get(name.as_str()).map(|v| v.to_str()) {
                None if header["required"] == true => self
                    .findings
                    .push(format!("{at}: required header {name} not sent")),
                Some(Ok(value))
                    if header["schema"]["type"] == "integer" && value.parse::<u64>().is_err() =>
                {
                    self.findings
                        .push(format!("{at}: header {name}: {value:?} is not an integer"));
                }
                _ => {}
            }
        }
        let schema = &documented["content"]["application/json"]["schema"];
        if schema.is_object() {
            let schema = schema.clone();
            self.body(&at, &body, &schema);
        } else if !body.is_null() {
            self.findings
                .push(format!("{at}: a body where the spec has none"));
        }
        body
    }

    /// Checks `body` (of the answer `at`) against `schema`.
    pub fn body(&mut self, at: &str, body: &Value, schema: &Value) {
        self.value(at, "", body, schema);
    }

    /// Fields sent in every answer seen but not `required`: what the walk
    /// adds to [`Walk::findings`] at its end.
    pub fn finish(mut self) -> Vec<String> {
        for ((schema, field), (present, seen)) in &self.presence {
            let required = self.spec["components"]["schemas"][schema]["required"]
                .as_array()
                .is_some_and(|r| r.iter().any(|f| f == field.as_str()));
            if *present == *seen && !required {
                self.findings.push(format!(
                    "{schema}.{field} was sent in all {seen} answers seen but is not required"
                ));
            }
        }
        self.findings
    }

    /// Checks `value` at `path` against `schema`.
    fn value(&mut self, at: &str, path: &str, value: &Value, schema: &Value) {
        if let Some(r) = schema["$ref"].as_str() {
            let name = r.trim_start_matches("#/components/schemas/").to_owned();
            let target = self.spec["components"]["schemas"][&name].clone();
            if value.is_object() && target["properties"].is_object() {
                self.observe(&name, value, &target);
            }
            return self.value(at, path, value, &target);
        }
        if let Some(branches) = schema["oneOf"].as_array() {
            let fits = branches
                .iter()
                .filter(|b| {
                    let mut trial = Walk::new(self.spec.clone());
                    trial.value(at, path, value, b);
                    trial.findings.is_empty()
                })
                .count();
            if fits != 1 {
                self.findings.push(format!(
                    "{at} {path}: fits {fits} of the oneOf branches, not one"
                ));
            }
            return;
        }
        let types: Vec<&str> = match &schema["type"] {
            Value::String(t) => vec![t.as_str()],
            Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        let kind = match value {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        };
        let fits = types.is_empty()
            || types.contains(&kind)
            || (kind == "integer" && types.contains(&"number"));
        if !fits {
            self.findings.push(format!(
                "{at} {path}: {kind} where the spec says {types:?} ({value})"
            ));
            return;
        }
        if let Some(allowed) = schema["enum"].as_array()
            && !allowed.contains(value)
        {
            self.findings
                .push(format!("{at} {path}: {value} is not one of {allowed:?}"));
        }
        if schema["format"] == "date-time"
            && let Some(text) = value.as_str()
            && !six_digits_utc(text)
        {
            self.findings.push(format!(
                "{at} {path}: {text} is not a time with six fractional digits and Z"
            ));
        }
        match value {
            Value::Object(fields) => {
                let properties = schema["properties"]
                    .as_object()
                    .cloned()
                    .unwrap_or_default();
                for required in schema["required"].as_array().into_iter().flatten() {
                    let name = required.as_str().unwrap_or_default();
                    if !fields.contains_key(name) {
                        self.findings
                            .push(format!("{at} {path}: required field {name} not sent"));
                    }
                }
                for (name, field) in fields {
                    match properties.get(name) {
                        Some(s) => self.value(at, &format!("{path}.{name}"), field, s),
                        None if schema["additionalProperties"].is_object() => {}
                        None => self.findings.push(format!(
                            "{at} {path}: field {name} is sent but not in the spec"
                        )),
                    }
                }
                for (name, field) in &properties {
                    let nullable = match &field["type"] {
                        Value::Array(ts) => ts.iter().any(|t| t == "null"),
                        _ => false,
                    };
                    let required = schema["required"]
                        .as_array()
                        .is_some_and(|r| r.iter().any(|f| f == name.as_str()));
                    if nullable && !required {
                        self.findings.push(format!(
                            "{at} {path}: {name} is nullable but not required (null or left out?)"
                        ));
                    }
                }
            }
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    self.value(at, &format!("{path}[{i}]"), item, &schema["items"]);
                }
            }
            _ => {}
        }
    }

    /// Counts which of `schema`'s fields `value` carries.
    fn observe(&mut self, name: &str, value: &Value, schema: &Value) {
        for field in schema["properties"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, _)| k)
        {
            let entry = self
                .presence
                .entry((name.to_owned(), field.clone()))
                .or_default();
            entry.1 += 1;
            if value.get(field).is_some() {
                entry.0 += 1;
            }
        }
    }
}

/// `2026-12-04T10:00:00.123456Z`: RFC 3339, UTC, six fractional digits.
pub fn six_digits_utc(text: &str) -> bool {
    let Some(rest) = text.strip_suffix('Z') else {
        return false;
    };
    let Some((seconds, fraction)) = rest.rsplit_once('.') else {
        return false;
    };
    fraction.len() == 6
        && fraction.bytes().all(|b| b.is_ascii_digit())
        && chrono::NaiveDateTime::parse_from_str(seconds, "%Y-%m-%dT%H:%M:%S").is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec() -> Value {
        json!({"components": {"schemas": {
            "Order": {"type": "object", "required": ["id", "at"], "properties": {
                "id": {"type": "string"},
                "at": {"type": "string", "format": "date-time"},
                "reason": {"type": "string", "enum": ["OUT_OF_STOCK"]},
                "note": {"type": ["string", "null"]},
                "total": {"type": "integer"},
            }},
        }}})
    }

    fn findings(bodies: &[Value]) -> Vec<String> {
        let mut walk = Walk::new(spec());
        for body in bodies {
            walk.body(
                "GET /",
                body,
                &json!({"$ref": "#/components/schemas/Order"}),
            );
        }
        walk.finish()
    }

    #[test]
    fn each_lie_of_a_schema_is_found() {
        let at = "2026-12-04T10:00:00.000000Z";
        let found = findings(&[
            json!({"id": "a", "at": at, "total": 1}),
            json!({"id": "b", "at": at, "total": 2, "reason": "OUT_OF_STOCK"}),
        ]);
        // `note` may be null or absent: a generator cannot tell; `total`
        // was in every answer but is optional.
        assert_eq!(found.len(), 3, "{found:#?}");
        assert!(
            found[0].contains("note is nullable but not required"),
            "{found:#?}"
        );
        assert!(
            found[2].contains("Order.total was sent in all 2"),
            "{found:#?}"
        );
        let found = findings(&[
            json!({"id": null, "extra": 1, "reason": "NOPE"}),
            json!({"id": "c", "at": "2026-12-04T10:00:00.5Z"}),
        ]);
        for expected in [
            "required field",
            "null where the spec says",
            "six fractional digits",
            "field extra is sent but not in the spec",
            "is not one of",
        ] {
            assert!(
                found.iter().any(|f| f.contains(expected)),
                "{expected}: {found:#?}"
            );
        }
    }

    #[test]
    fn times_have_six_digits_and_z() {
        assert!(six_digits_utc("2026-12-04T10:00:00.123456Z"));
        assert!(!six_digits_utc("2026-12-04T10:00:00Z"));
        assert!(!six_digits_utc("2026-12-04T10:00:00.123Z"));
        assert!(!six_digits_utc("2026-12-04T10:00:00.123456+00:00"));
    }
}
