//! The public API, as the bench uses it.

use crate::stats::Latencies;
use anyhow::Context;
use futures::StreamExt;
use indicatif::ProgressBar;
use serde::Deserialize;
use serde_json::{Value, json};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// An order id (a UUID) in 16 bytes rather than a 36-character string, so
/// that hundreds of thousands of admitted orders stay cheap to hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderKey(u128);

impl OrderKey {
    /// Parses the canonical hyphenated form (or 32 bare hex digits).
    pub fn parse(text: &str) -> Option<Self> {
        let hex: String = text.chars().filter(|&c| c != '-').collect();
        if hex.len() != 32 {
            return None;
        }
        u128::from_str_radix(&hex, 16).ok().map(Self)
    }
}

impl fmt::Display for OrderKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = format!("{:032x}", self.0);
        write!(
            f,
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }
}

/// The orders' timestamps, all the decision latency needs.
#[derive(Deserialize)]
struct OrderTimes {
    created_at: Option<String>,
    decided_at: Option<String>,
}

#[derive(Deserialize)]
struct Envelope<T> {
    data: T,
}

/// What reading the sampled orders found.
#[derive(Debug, Default)]
pub struct DecisionReading {
    /// `decided_at - created_at` of every order read, overall.
    pub overall: Latencies,
    /// The same, by the second (of the run) in which the order was submitted.
    pub per_second: Vec<Latencies>,
    /// Orders read.
    pub read: usize,
    /// Orders read without a `decided_at`.
    pub undecided: usize,
    /// Orders that could not be read.
    pub failed: usize,
}

/// The bench's credentials towards the api.
#[derive(Clone, Default)]
pub struct Credentials {
    /// Sent when creating products and reading orders, summaries and the
    /// invariant check: the admin token, or else the payment token.
    pub service: Option<Arc<str>>,
    /// Buyers' tokens; order `n` is buyer `n % len`. Empty: orders are
    /// anonymous.
    pub buyers: Arc<Vec<String>>,
}

impl Credentials {
    fn service(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.service {
            Some(token) => req.bearer_auth(token),
            None => req,
        }
    }
}

/// A client of the public API.
#[derive(Clone)]
pub struct Api {
    base: String,
    http: reqwest::Client,
    credentials: Credentials,
}

impl Api {
    /// A client keeping at most `idle` idle keep-alive connections.
    pub fn new(base: &str, idle: usize, credentials: &Credentials) -> anyhow::Result<Self> {
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(idle)
                .timeout(Duration::from_secs(30))
                .build()?,
            credentials: credentials.clone(),
        })
    }

    /// `data` of a GET.
    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let req = self.http.get(format!("{}{path}", self.base));
        let body: Value = self.credentials.service(req).send().await?.json().await?;
        Ok(body["data"].clone())
    }

    /// Creates a product with `stock` units (and at most `max_per_buyer`
    /// units per buyer); its id.
    pub async fn product(
        &self,
        name: &str,
        stock: i64,
        max_per_buyer: Option<u32>,
    ) -> anyhow::Result<u64> {
        let req = self
            .http
            .post(format!("{}/api/products", self.base))
            .json(&json!({"name": name, "stock": stock, "max_per_buyer": max_per_buyer}));
        let r = self.credentials.service(req).send().await?;
        let body: Value = r.json().await?;
        body["data"]["id"]
            .as_u64()
            .with_context(|| format!("creating a product: {body}"))
    }

    /// `decided_at - created_at` (database clock) of `orders`, each with the
    /// second of the run it was submitted in; at most `concurrency` requests
    /// at a time, each answer folded in as it comes (nothing else is kept).
    pub async fn decision_latencies(
        &self,
        orders: &[(OrderKey, u32)],
        concurrency: usize,
        progress: &ProgressBar,
    ) -> DecisionReading {
        let mut reading = DecisionReading::default();
        let mut answers = futures::stream::iter(orders)
            .map(|&(key, second)| async move { (second, self.order_times(key).await) })
            .buffer_unordered(concurrency.max(1));
        while let Some((second, times)) = answers.next().await {
            progress.inc(1);
            let Ok(times) = times else {
                reading.failed += 1;
                continue;
            };
            reading.read += 1;
            let parse = |t: &Option<String>| {
                t.as_deref()
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            };
            match (parse(&times.created_at), parse(&times.decided_at)) {
                (Some(created), Some(decided)) => {
                    let latency = (decided - created).to_std().unwrap_or_default();
                    reading.overall.push(latency);
                    let s = second as usize;
                    if reading.per_second.len() <= s {
                        reading.per_second.resize_with(s + 1, Latencies::default);
                    }
                    reading.per_second[s].push(latency);
                }
                _ => reading.undecided += 1,
            }
        }
        reading
    }

    async fn order_times(&self, key: OrderKey) -> anyhow::Result<OrderTimes> {
        let req = self.http.get(format!("{}/api/orders/{key}", self.base));
        let r = self
            .credentials
            .service(req)
            .send()
            .await?
            .error_for_status()?;
        Ok(r.json::<Envelope<OrderTimes>>().await?.data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_keys_round_trip() {
        let text = "0190f3a2-7c1e-7b3d-9a4f-0123456789ab";
        let key = OrderKey::parse(text).unwrap();
        assert_eq!(key.to_string(), text);
        assert_eq!(OrderKey::parse("not-a-uuid"), None);
    }
}
