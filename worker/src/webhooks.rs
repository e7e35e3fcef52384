//! Delivering order events to webhook endpoints (`WEBHOOKS_FILE`).
//!
//! Every worker runs a courier per endpoint; one at a time delivers to
//! each endpoint, the one holding its lock ([`NamedLock`]). A courier reads
//! the events stream from the endpoint's saved progress (`webhook_progress`:
//! the next entry's offset) and delivers it entry by entry: each event one
//! signed POST (Standard Webhooks headers, [`shared::webhooks`]), the events
//! of one order (or product) one after another, different orders side by
//! side; a failed POST is retried with exponential backoff and jitter until
//! the endpoint's `retry_for` has passed, and then recorded in
//! `webhook_failures` and given up on. Once every event of an entry is
//! acknowledged or given up on, the next offset is saved: a restart resumes
//! there, sending again only the entry that was in hand.
//!
//! Couriers are tasks of their own, each with its own stream consumer: a
//! slow or dead endpoint holds back only itself, and never the deciding.

use crate::lock::NamedLock;
use crate::metrics::Metrics;
use backon::BackoffBuilder as _;
use futures::StreamExt;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use lapin::options::BasicAckOptions;
use shared::broker::{BrokerLink, Topology, retry_policy};
use shared::events::{CloudEvent, From};
use shared::webhooks::Endpoint;
use sqlx::MySqlPool;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Longest one POST may take, answer included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Most of an answer's body read (the rest is dropped with the connection).
const ANSWER_LIMIT: usize = 64 * 1024;
/// POSTs in flight at once per endpoint (each for a different order).
const CONCURRENCY: usize = 16;
/// Stream entries a courier holds unacknowledged (up to 500 events each).
const PREFETCH: u16 = 4;
/// With no entry for this long, the endpoint is caught up (lag 0).
const IDLE: Duration = Duration::from_secs(1);
/// First and longest pause between retries of one event (with jitter).
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(10);

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The couriers of one worker.
pub struct Deliveries {
    /// The database (progress, failures, locks).
    pub db: MySqlPool,
    /// A broker connection to read the stream on.
    pub link: BrokerLink,
    /// Where the stream is.
    pub topology: Topology,
    /// The endpoints (`WEBHOOKS_FILE`).
    pub endpoints: Vec<Endpoint>,
    /// Served at `/metrics`.
    pub metrics: Arc<Metrics>,
}

impl Deliveries {
    /// Runs a courier per endpoint until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        let client = match http_client() {
            Ok(client) => client,
            Err(e) => {
                tracing::error!(error = %e, "cannot deliver webhooks: no HTTP client");
                return;
            }
        };
        let mut couriers = JoinSet::new();
        for endpoint in self.endpoints {
            self.metrics.webhook(&endpoint.name, |_| {});
            let courier = Courier {
                db: self.db.clone(),
                link: self.link.clone(),
                stream: self.topology.events_stream(),
                endpoint: Arc::new(endpoint),
                client: client.clone(),
                metrics: self.metrics.clone(),
            };
            couriers.spawn(courier.run(stop.clone()));
        }
        while couriers.join_next().await.is_some() {}
    }
}

/// HTTP/1.1 over TCP or TLS (ring, with the Mozilla roots built in: no
/// dependence on the image's certificate store).
fn http_client() -> anyhow::Result<HttpClient> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(provider)?
        .https_or_http()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

/// Delivers to one endpoint.
struct Courier {
    db: MySqlPool,
    link: BrokerLink,
    stream: String,
    endpoint: Arc<Endpoint>,
    client: HttpClient,
    metrics: Arc<Metrics>,
}

/// What became of one event.
#[derive(PartialEq)]
enum Fate {
    Delivered,
    GivenUp,
    Stopped,
}

/// An event as it is POSTed.
struct Outgoing {
    id: String,
    event_type: String,
    subject: String,
    time: String,
    body: Vec<u8>,
}

impl Courier {
    async fn run(self, stop: CancellationToken) {
        let job = format!("webhook/{}", self.endpoint.name);
        loop {
            let Some(lock) = NamedLock::take(&self.db, &job, &stop).await else {
                return;
            };
            tracing::info!(endpoint = %self.endpoint.name, "delivering webhooks");
            self.metrics
                .webhook(&self.endpoint.name, |s| s.delivering = true);
            // Deliveries halt on `stop`, and the moment the lock is lost
            // (another worker then delivers), even in the middle of an entry.
            let halt = CancellationToken::new();
            let watcher = tokio::spawn({
                let (halt, stop, lost) = (halt.clone(), stop.clone(), lock.lost().clone());
                async move {
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = lost.cancelled() => {}
                    }
                    halt.cancel();
                }
            });
            self.deliver_until(&halt).await;
            self.metrics.webhook(&self.endpoint.name, |s| {
                s.delivering = false;
                s.lag_seconds = 0.0;
            });
            lock.release().await;
            let _ = watcher.await;
            if stop.is_cancelled() {
                return;
            }
            tracing::warn!(endpoint = %self.endpoint.name, "stopped delivering webhooks; another worker may take over");
        }
    }

    /// Delivers until `halt`, resuming from the saved progress after an
    /// error.
    async fn deliver_until(&self, halt: &CancellationToken) {
        let mut delays = retry_policy().build();
        while !halt.is_cancelled() {
            if let Err(e) = self.session(halt).await {
                let delay = delays.next().unwrap_or(Duration::from_secs(5));
                tracing::warn!(endpoint = %self.endpoint.name, error = %e, ?delay, "webhook deliveries interrupted; resuming from the saved progress");
                tokio::select! {
                    _ = halt.cancelled() => {}
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }

    /// Reads the stream from the saved progress and delivers it entry by
    /// entry, saving the progress after each, until `halt`.
    async fn session(&self, halt: &CancellationToken) -> anyhow::Result<()> {
        let from = self.start().await?;
        let saved = match from {
            From::Offset(next) => Some(next),
            _ => None,
        };
        let conn = self
            .link
            .connection()
            .ok_or_else(|| anyhow::anyhow!("broker not connected"))?;
        let tag = format!("flashstock-webhook-{}", self.endpoint.name);
        let mut consumer =
            shared::events::subscribe(&conn, &self.stream, from, PREFETCH, &tag).await?;
        let mut first = true;
        loop {
            let next = tokio::select! {
                _ = halt.cancelled() => return Ok(()),
                next = tokio::time::timeout(IDLE, consumer.next()) => next,
            };
            let delivery = match next {
                Err(_) => {
                    self.metrics
                        .webhook(&self.endpoint.name, |s| s.lag_seconds = 0.0);
                    continue;
                }
                Ok(None) => anyhow::bail!("the events stream consumer was closed"),
                Ok(Some(delivery)) => delivery?,
            };
            let offset = shared::events::offset_of(&delivery.properties)
                .ok_or_else(|| anyhow::anyhow!("a stream entry without its offset"))?;
            // A consumer starting at an offset gets that entry's whole chunk.
            if saved.is_some_and(|next| offset < next) {
                delivery.ack(BasicAckOptions::default()).await?;
                continue;
            }
            if first && let Some(next) = saved.filter(|next| offset > *next) {
                // Retention dropped entries this endpoint never got.
                let missed = format!("stream entries {next} to {}", offset - 1);
                tracing::error!(endpoint = %self.endpoint.name, %missed, "events expired from the stream before this endpoint got them");
                self.record_gap(&missed).await;
                self.metrics
                    .webhook(&self.endpoint.name, |s| s.given_up += 1);
            }
            first = false;
            let events = outgoing(&delivery.data);
            if self.deliver_entry(events, halt).await == Fate::Stopped {
                return Ok(());
            }
            self.save_progress(offset + 1).await?;
            delivery.ack(BasicAckOptions::default()).await?;
        }
    }

    /// Delivers the events of one entry this endpoint wants: each order's
    /// (or product's) one after another, up to [`CONCURRENCY`] at once.
    async fn deliver_entry(&self, events: Vec<Outgoing>, stop: &CancellationToken) -> Fate {
        let wanted: Vec<Outgoing> = events
            .into_iter()
            .filter(|e| self.endpoint.wants(&e.event_type))
            .collect();
        if let Some(oldest) = wanted.first() {
            self.observe_lag(&oldest.time);
        }
        let mut chains: Vec<Vec<Outgoing>> = Vec::new();
        let mut chain_of: std::collections::HashMap<String, usize> = Default::default();
        for event in wanted {
            let n = *chain_of.entry(event.subject.clone()).or_insert_with(|| {
                chains.push(Vec::new());
                chains.len() - 1
            });
            chains[n].push(event);
        }
        let fates: Vec<Fate> = futures::stream::iter(chains)
            .map(|chain| async move {
                for event in &chain {
                    if self.deliver(event, stop).await == Fate::Stopped {
                        return Fate::Stopped;
                    }
                }
                Fate::Delivered
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        if fates.contains(&Fate::Stopped) {
            Fate::Stopped
        } else {
            Fate::Delivered
        }
    }

    /// POSTs `event` until the endpoint acknowledges it (2xx) or its retry
    /// period has passed.
    async fn deliver(&self, event: &Outgoing, stop: &CancellationToken) -> Fate {
        let name = &self.endpoint.name;
        // The retry period runs from the transition, so neither a restart
        // nor the events queued before this one extend it.
        let deadline = event_deadline(&event.time, self.endpoint.retry_for);
        let mut delays = backon::ExponentialBuilder::default()
            .with_min_delay(RETRY_MIN)
            .with_max_delay(RETRY_MAX)
            .with_jitter()
            .without_max_times()
            .build();
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let error = match self.post(event).await {
                Ok(()) => {
                    self.metrics.webhook(name, |s| s.delivered += 1);
                    return Fate::Delivered;
                }
                Err(e) => e,
            };
            self.metrics.webhook(name, |s| s.failures += 1);
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::error!(endpoint = %name, event_id = %event.id, attempts, %error, "webhook given up on");
                self.record_failure(event, attempts, &error).await;
                self.metrics.webhook(name, |s| s.given_up += 1);
                return Fate::GivenUp;
            }
            let delay = delays.next().unwrap_or(RETRY_MAX).min(left);
            tracing::debug!(endpoint = %name, event_id = %event.id, attempts, %error, ?delay, "webhook failed; retrying");
            self.metrics.webhook(name, |s| s.retries += 1);
            tokio::select! {
                _ = stop.cancelled() => return Fate::Stopped,
                _ = tokio::time::sleep(delay) => {}
            }
            self.observe_lag(&event.time);
        }
    }

    /// One signed POST; `Err` says why it was not acknowledged.
    async fn post(&self, event: &Outgoing) -> Result<(), String> {
        let timestamp = chrono::Utc::now().timestamp();
        let signature = self.endpoint.signature(&event.id, timestamp, &event.body);
        let request = hyper::Request::post(self.endpoint.url.as_str())
            .header(hyper::header::CONTENT_TYPE, "application/cloudevents+json")
            .header(hyper::header::USER_AGENT, "flashstock-webhooks")
            .header("webhook-id", event.id.as_str())
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(Full::new(Bytes::from(event.body.clone())))
            .map_err(|e| format!("cannot build the request: {e}"))?;
        let answered = tokio::time::timeout(REQUEST_TIMEOUT, async {
            let response = self.client.request(request).await.map_err(|e| {
                // The connection error itself (refused, reset, TLS), not
                // just "client error".
                let mut text = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    text = format!("{text}: {s}");
                    source = s.source();
                }
                text
            })?;
            let status = response.status();
            // Read (a bounded part of) the answer, so the connection can be
            // used again.
            let _ = Limited::new(response.into_body(), ANSWER_LIMIT)
                .collect()
                .await;
            Ok::<_, String>(status)
        })
        .await
        .map_err(|_| format!("no answer within {REQUEST_TIMEOUT:?}"))??;
        if answered.is_success() {
            Ok(())
        } else {
            Err(format!("HTTP {answered}"))
        }
    }

    fn observe_lag(&self, time: &str) {
        if let Ok(at) = chrono::DateTime::parse_from_rfc3339(time) {
            let lag = (chrono::Utc::now() - at.with_timezone(&chrono::Utc))
                .to_std()
                .unwrap_or_default();
            self.metrics
                .webhook(&self.endpoint.name, |s| s.lag_seconds = lag.as_secs_f64());
        }
    }

    /// Where to read from: the saved offset of the next entry; else the
    /// saved start of a new endpoint; else its `from`, saved first when it
    /// names "now" (`next`, `last`), so that a restart before the first
    /// entry does not skip what came meanwhile.
    async fn start(&self) -> Result<From, sqlx::Error> {
        let saved: Option<(Option<u64>, Option<chrono::DateTime<chrono::Utc>>)> =
            sqlx::query_as("SELECT next_offset, start_at FROM webhook_progress WHERE endpoint = ?")
                .bind(&self.endpoint.name)
                .fetch_optional(&self.db)
                .await?;
        match saved {
            Some((Some(next), _)) => return Ok(From::Offset(next)),
            Some((None, Some(at))) => return Ok(From::Time(at)),
            _ => {}
        }
        if !matches!(self.endpoint.from, From::Next | From::Last) {
            return Ok(self.endpoint.from);
        }
        let (at,): (chrono::DateTime<chrono::Utc>,) =
            sqlx::query_as("SELECT NOW(6)").fetch_one(&self.db).await?;
        sqlx::query(
            "INSERT INTO webhook_progress (endpoint, start_at, updated_at) VALUES (?, ?, NOW(6)) \
             ON DUPLICATE KEY UPDATE updated_at = updated_at",
        )
        .bind(&self.endpoint.name)
        .bind(at)
        .execute(&self.db)
        .await?;
        Ok(From::Time(at))
    }

    /// Saves `next` as the endpoint's progress; never moves it back (a
    /// courier that lost its lock finishing late).
    async fn save_progress(&self, next: u64) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO webhook_progress (endpoint, next_offset, updated_at) VALUES (?, ?, NOW(6)) \
             ON DUPLICATE KEY UPDATE next_offset = GREATEST(COALESCE(next_offset, 0), VALUES(next_offset)), \
             updated_at = NOW(6)",
        )
        .bind(&self.endpoint.name)
        .bind(next)
        .execute(&self.db)
        .await?;
        Ok(())
    }

    /// Records entries the endpoint will never get (expired from the
    /// stream before it got them).
    async fn record_gap(&self, missed: &str) {
        let recorded = sqlx::query(
            "INSERT INTO webhook_failures (endpoint, event_id, event_type, event, attempts, last_error) \
             VALUES (?, ?, 'gap', '', 0, 'expired from the events stream before delivery')",
        )
        .bind(&self.endpoint.name)
        .bind(missed)
        .execute(&self.db)
        .await;
        if let Err(e) = recorded {
            tracing::error!(endpoint = %self.endpoint.name, error = %e, "could not record a gap");
        }
    }

    /// Records an event given up on; retried a few times (it is the only
    /// trace of it), then logged only.
    async fn record_failure(&self, event: &Outgoing, attempts: u32, error: &str) {
        let error: String = error.chars().take(500).collect();
        for _ in 0..3 {
            let recorded = sqlx::query(
                "INSERT INTO webhook_failures (endpoint, event_id, event_type, event, attempts, last_error) \
                 VALUES (?, ?, ?, ?, ?, ?)",
            )
            .bind(&self.endpoint.name)
            .bind(&event.id)
            .bind(&event.event_type)
            .bind(String::from_utf8_lossy(&event.body).as_ref())
            .bind(attempts)
            .bind(&error)
            .execute(&self.db)
            .await;
            if recorded.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        tracing::error!(endpoint = %self.endpoint.name, event_id = %event.id, "could not record a webhook given up on");
    }
}

/// When an event that happened at `time` is given up on.
fn event_deadline(time: &str, retry_for: Duration) -> Instant {
    let age = chrono::DateTime::parse_from_rfc3339(time)
        .ok()
        .and_then(|at| {
            (chrono::Utc::now() - at.with_timezone(&chrono::Utc))
                .to_std()
                .ok()
        })
        .unwrap_or_default();
    Instant::now() + retry_for.saturating_sub(age)
}

/// The events of a stream entry, each with the body it is POSTed with;
/// what is not a CloudEvent of ours is skipped.
fn outgoing(entry: &[u8]) -> Vec<Outgoing> {
    let Ok(raw) = serde_json::from_slice::<Vec<serde_json::Value>>(entry) else {
        tracing::warn!("a stream entry that is not a JSON array; skipped");
        return Vec::new();
    };
    raw.into_iter()
        .filter_map(|value| {
            let body = serde_json::to_vec(&value).ok()?;
            let event: CloudEvent = serde_json::from_value(value).ok()?;
            Some(Outgoing {
                id: event.id,
                event_type: event.event_type,
                subject: event.subject,
                time: event.time,
                body,
            })
        })
        .collect()
}
