//! Publishing the events outbox to the events stream.
//!
//! Every worker runs this loop; one at a time publishes, the one holding
//! the database's named lock for it ([`NamedLock`], released the moment
//! that worker dies or its connection is cut). The publisher reads the oldest
//! outbox rows, publishes them as CloudEvents batches on the stream with
//! publisher confirms, in outbox order, and deletes them once confirmed:
//! a crash in between publishes them again (the same ids), never loses
//! one.
//!
//! Order is kept per order and per product even across a change of
//! publisher: a later transition's row is only visible once the earlier
//! one's is (see the `order_events` migration), and a row is deleted only
//! after it was confirmed, so whichever publisher first publishes the later
//! event has published the earlier one before it.

use crate::lock::NamedLock;
use crate::metrics::Metrics;
use backon::BackoffBuilder as _;
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel, Confirmation};
use shared::broker::{BrokerLink, Topology, confirm_channel, retry_policy};
use shared::db::events as outbox;
use shared::events::{BATCH_CONTENT_TYPE, CloudEvent};
use sqlx::MySqlPool;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Most outbox rows one round reads (a deciding transaction's outcome is
/// one row)...
const ROUND_ROWS: u32 = 1_000;
/// ...and about how many events it publishes.
const ROUND_EVENTS: usize = 5_000;
/// Most events one stream entry carries.
const EVENTS_PER_ENTRY: usize = 500;
/// How long the publisher waits before reading again when the last round
/// was not full: events are at most this late, and rounds gather.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// The job's lock ([`NamedLock`]).
const LOCK: &str = "events";
/// How often the outbox's size is read for the metrics.
const BACKLOG_INTERVAL: Duration = Duration::from_secs(5);
/// Longest a confirm may take before the round is published again.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);

/// The events publisher of one worker.
pub struct Publisher {
    /// The database.
    pub db: MySqlPool,
    /// A publishing broker connection (not the consuming one: an alarm
    /// blocks publishers, and must not stop the acks).
    pub link: BrokerLink,
    /// Where the stream is.
    pub topology: Topology,
    /// Served at `/metrics`.
    pub metrics: Arc<Metrics>,
}

impl Publisher {
    /// Takes the publisher's lock when it is free and publishes while it
    /// holds it, until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        let source = shared::events::source(self.topology.namespace());
        loop {
            let Some(lock) = NamedLock::take(&self.db, LOCK, &stop).await else {
                return;
            };
            tracing::info!("publishing order events");
            self.metrics.events_publisher.store(1, Ordering::Relaxed);
            self.publish_while_holding(&lock, &source, &stop).await;
            // What only the publisher measures is not this worker's to
            // show any more.
            for gauge in [
                &self.metrics.events_publisher,
                &self.metrics.events_outbox,
                &self.metrics.events_outbox_oldest,
                &self.metrics.events_stream_entries,
            ] {
                gauge.store(0, Ordering::Relaxed);
            }
            lock.release().await;
            if stop.is_cancelled() {
                return;
            }
            tracing::warn!("stopped publishing order events; another worker may take over");
        }
    }

    /// Publishes until `stop` or until the lock is lost.
    async fn publish_while_holding(
        &self,
        lock: &NamedLock,
        source: &str,
        stop: &CancellationToken,
    ) {
        let mut channel: Option<Channel> = None;
        let mut measured: Option<Instant> = None;
        let mut delays = retry_policy().build();
        while !stop.is_cancelled() && !lock.lost().is_cancelled() {
            if measured.is_none_or(|at| at.elapsed() >= BACKLOG_INTERVAL) {
                if let Ok((count, oldest)) = outbox::backlog(&self.db).await {
                    self.metrics.events_outbox.store(count, Ordering::Relaxed);
                    self.metrics
                        .events_outbox_oldest
                        .store(oldest.as_secs(), Ordering::Relaxed);
                }
                if let Some(entries) = self.stream_entries().await {
                    self.metrics
                        .events_stream_entries
                        .store(entries, Ordering::Relaxed);
                }
                measured = Some(Instant::now());
            }
            let pause = match self.round(&mut channel, source).await {
                Ok(true) => {
                    delays = retry_policy().build();
                    continue;
                }
                Ok(false) => {
                    delays = retry_policy().build();
                    POLL_INTERVAL
                }
                Err(e) => {
                    Metrics::inc(&self.metrics.events_failures);
                    channel = None;
                    let delay = delays.next().unwrap_or(Duration::from_secs(5));
                    tracing::warn!(error = %e, ?delay, "publishing order events failed; retrying");
                    delay
                }
            };
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = lock.lost().cancelled() => {}
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// The entries the stream holds now, as the broker counts them (a
    /// passive declare on a channel of its own; `None` when it cannot say).
    async fn stream_entries(&self) -> Option<u64> {
        let conn = self.link.connection()?;
        let channel = conn.create_channel().await.ok()?;
        let passive = lapin::options::QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let declared = channel
            .queue_declare(
                self.topology.events_stream().as_str().into(),
                passive,
                Default::default(),
            )
            .await
            .ok();
        let _ = channel.close(200, "counted".into()).await;
        declared.map(|q| u64::from(q.message_count()))
    }

    /// Publishes the oldest outbox rows and deletes them once confirmed.
    /// Returns whether the round was full (more may be waiting).
    async fn round(&self, channel: &mut Option<Channel>, source: &str) -> anyhow::Result<bool> {
        let round = outbox::oldest(&self.db, source, ROUND_ROWS, ROUND_EVENTS).await?;
        if let Some(seq) = round.blocked {
            // Every round until a newer worker publishes it: keep it quiet.
            tracing::debug!(
                seq,
                "an outbox row of a kind this version does not know waits for a newer worker"
            );
        }
        if round.seqs.is_empty() {
            return Ok(false);
        }
        if round.missing > 0 {
            // Deleted by hand: nothing can be told of them.
            tracing::warn!(
                orders = round.missing,
                "outbox rows name orders that no longer exist; their events are dropped"
            );
        }
        let full = round.seqs.len() >= ROUND_ROWS as usize || round.events.len() >= ROUND_EVENTS;
        if !round.events.is_empty() {
            let ch = match channel {
                Some(ch) if ch.status().connected() => ch.clone(),
                _ => {
                    let conn = self
                        .link
                        .connection()
                        .ok_or_else(|| anyhow::anyhow!("broker not connected"))?;
                    let ch = confirm_channel(&conn).await?;
                    *channel = Some(ch.clone());
                    ch
                }
            };
            self.publish(&ch, &round.events, &round.ages).await?;
            shared::fault::point(shared::fault::EVENTS_AFTER_CONFIRM);
        }
        outbox::forget(&self.db, &round.seqs).await?;
        self.metrics
            .events_published
            .fetch_add(round.events.len() as u64, Ordering::Relaxed);
        Ok(full)
    }

    /// Publishes `events` in order, `EVENTS_PER_ENTRY` to a stream entry,
    /// and waits until the broker confirmed every entry.
    async fn publish(
        &self,
        channel: &Channel,
        events: &[CloudEvent],
        ages: &[Duration],
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        let stream = self.topology.events_stream();
        let mut confirms = Vec::new();
        for chunk in events.chunks(EVENTS_PER_ENTRY) {
            let payload = serde_json::to_vec(chunk)?;
            let confirm = channel
                .basic_publish(
                    "".into(),
                    stream.as_str().into(),
                    BasicPublishOptions::default(),
                    &payload,
                    BasicProperties::default()
                        .with_delivery_mode(2)
                        .with_content_type(BATCH_CONTENT_TYPE.into())
                        .with_app_id("flashstock".into()),
                )
                .await?;
            confirms.push(confirm);
        }
        for confirm in confirms {
            match tokio::time::timeout(CONFIRM_TIMEOUT, confirm).await {
                Ok(Ok(Confirmation::Ack(_))) => {}
                Ok(Ok(_)) => anyhow::bail!("the events stream refused a batch"),
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => {
                    anyhow::bail!("the events stream did not confirm within {CONFIRM_TIMEOUT:?}")
                }
            }
        }
        let publishing = started.elapsed();
        for age in ages {
            self.metrics
                .events_lag
                .observe((*age + publishing).as_secs_f64());
        }
        Ok(())
    }
}
