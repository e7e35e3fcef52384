//! Webhook endpoints: where order events are POSTed, and how each request
//! is signed.
//!
//! Endpoints are configured by the admin in a JSON file (`WEBHOOKS_FILE`),
//! a list of objects:
//!
//! ```json
//! [{"name": "payments", "url": "https://pay.example/hooks/flashstock",
//!   "secrets": ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
//!   "types": ["flashstock.order.accepted"], "from": "next", "retry_for": "24h"}]
//! ```
//!
//! Requests follow the Standard Webhooks convention: `webhook-id` (the
//! event's id), `webhook-timestamp` (Unix seconds) and `webhook-signature`,
//! `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">` for each of the
//! endpoint's secrets (two during a rotation), separated by spaces.

use crate::events::{From, Kind};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use sha2::Sha256;
use std::time::Duration;

/// One endpoint events are delivered to.
#[derive(Clone)]
pub struct Endpoint {
    /// Its name: its progress, metrics and failures are kept under it.
    pub name: String,
    /// Where each event is POSTed (`http` or `https`).
    pub url: String,
    /// The keys requests are signed with (one, or two while rotating).
    pub secrets: Vec<Vec<u8>>,
    /// The event types it receives; `None`: all of them.
    pub types: Option<Vec<String>>,
    /// Where a new endpoint (no progress recorded yet) starts in the stream.
    pub from: From,
    /// How long one event is retried before it is given up on (and
    /// recorded in `webhook_failures`).
    pub retry_for: Duration,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("secrets", &format!("{} secret(s)", self.secrets.len()))
            .field("types", &self.types)
            .field("from", &self.from)
            .field("retry_for", &self.retry_for)
            .finish()
    }
}

impl Endpoint {
    /// Whether it receives events of `event_type`.
    pub fn wants(&self, event_type: &str) -> bool {
        self.types
            .as_ref()
            .is_none_or(|types| types.iter().any(|t| t == event_type))
    }

    /// The `webhook-signature` header for `body`, sent as event `id` at
    /// `timestamp` (Unix seconds).
    pub fn signature(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        self.secrets
            .iter()
            .map(|key| format!("v1,{}", sign(key, id, timestamp, body)))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Base64 of HMAC-SHA256 over `{id}.{timestamp}.{body}` with `key`.
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    BASE64.encode(mac.finalize().into_bytes())
}

/// The key of a `whsec_…` secret.
pub fn secret_key(secret: &str) -> Result<Vec<u8>, String> {
    let encoded = secret
        .strip_prefix("whsec_")
        .ok_or("a secret starts with whsec_")?;
    let key = BASE64
        .decode(encoded)
        .map_err(|_| "a secret is whsec_ and base64")?;
    if !(24..=64).contains(&key.len()) {
        return Err(format!(
            "a secret's key is 24 to 64 bytes (this one {})",
            key.len()
        ));
    }
    Ok(key)
}

/// An endpoint as the file writes it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Written {
    name: String,
    url: String,
    secrets: Vec<String>,
    #[serde(default)]
    types: Option<Vec<String>>,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    retry_for: Option<String>,
}

/// Parses the endpoints file's `text`; an error says which endpoint and
/// what is wrong, never a secret.
pub fn parse(text: &str) -> Result<Vec<Endpoint>, String> {
    let written: Vec<Written> =
        serde_json::from_str(text).map_err(|e| format!("not a list of endpoints: {e}"))?;
    let mut endpoints: Vec<Endpoint> = Vec::with_capacity(written.len());
    for (i, w) in written.into_iter().enumerate() {
        let at = |what: String| format!("endpoint {} ({:?}): {what}", i + 1, w.name);
        let name_ok = (1..=64).contains(&w.name.len())
            && w.name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'));
        if !name_ok {
            return Err(at("name: use 1 to 64 of A-Z a-z 0-9 - _".into()));
        }
        if endpoints.iter().any(|e| e.name == w.name) {
            return Err(at("name: used twice".into()));
        }
        let url_ok = (w.url.starts_with("http://") || w.url.starts_with("https://"))
            && w.url.len() > "https://".len()
            && !w.url.chars().any(char::is_whitespace);
        if !url_ok {
            return Err(at(format!("url {:?}: an http:// or https:// URL", w.url)));
        }
        if !(1..=2).contains(&w.secrets.len()) {
            return Err(at(
                "secrets: one, or two while rotating (both sign every request)".into(),
            ));
        }
        let secrets = w
            .secrets
            .iter()
            .map(|s| secret_key(s))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| at(format!("secrets: {e}")))?;
        if let Some(unknown) = w
            .types
            .iter()
            .flatten()
            .find(|t| Kind::of_type(t).is_none())
        {
            return Err(at(format!("types: {unknown:?} is not an event type")));
        }
        let from = match w.from.as_deref() {
            None => From::Next,
            Some(f) => From::parse(f).map_err(|e| at(format!("from: {e}")))?,
        };
        let retry_for = match w.retry_for.as_deref() {
            None => Duration::from_secs(24 * 3600),
            Some(r) => humantime::parse_duration(r)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| at(format!("retry_for {r:?}: a duration such as 24h")))?,
        };
        endpoints.push(Endpoint {
            name: w.name,
            url: w.url,
            secrets,
            types: w.types,
            from,
            retry_for,
        });
    }
    Ok(endpoints)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    #[test]
    fn the_signature_is_the_standard_webhooks_one() {
        // The Standard Webhooks specification's example: this secret, id,
        // timestamp and body sign to this signature.
        let key = secret_key(SECRET).unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            sign(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn a_rotation_signs_with_both_secrets() {
        let text = format!(
            r#"[{{"name": "pay", "url": "http://127.0.0.1:9/hook", "secrets": ["{SECRET}", "whsec_dGhpcyBpcyBhbm90aGVyIHNlY3JldCBrZXk="]}}]"#
        );
        let endpoints = parse(&text).unwrap();
        let signature = endpoints[0].signature("id", 1, b"{}");
        assert_eq!(signature.split(' ').count(), 2);
        assert!(signature.split(' ').all(|s| s.starts_with("v1,")));
        assert_eq!(endpoints[0].from, From::Next);
        assert!(endpoints[0].wants("flashstock.order.paid"));
    }

    #[test]
    fn a_bad_endpoint_is_refused_without_its_secret() {
        for bad in [
            r#"{}"#.to_owned(),
            r#"[{"name": "a b", "url": "http://x/", "secrets": ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]}]"#.to_owned(),
            r#"[{"name": "a", "url": "ftp://x/", "secrets": ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]}]"#.to_owned(),
            r#"[{"name": "a", "url": "http://x/", "secrets": []}]"#.to_owned(),
            r#"[{"name": "a", "url": "http://x/", "secrets": ["hunter2hunter2hunter2hunter2"]}]"#.to_owned(),
            r#"[{"name": "a", "url": "http://x/", "secrets": ["whsec_aHVudGVyMg=="]}]"#.to_owned(),
            r#"[{"name": "a", "url": "http://x/", "secrets": ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"], "types": ["order.paid"]}]"#.to_owned(),
            r#"[{"name": "a", "url": "http://x/", "secrets": ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"], "retry_for": "0s"}]"#.to_owned(),
            r#"[{"name": "a", "url": "http://x/", "secrets": ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"], "colour": "red"}]"#.to_owned(),
            format!(
                r#"[{{"name": "a", "url": "http://x/", "secrets": ["{SECRET}"]}}, {{"name": "a", "url": "http://y/", "secrets": ["{SECRET}"]}}]"#
            ),
        ] {
            let err = parse(&bad).expect_err(&bad);
            assert!(!err.contains("hunter2") && !err.contains("MfKQ9r8G"), "{err}");
        }
    }
}
