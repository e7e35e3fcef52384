//! The worker's Prometheus metrics, served as text at `GET /metrics` on
//! `WORKER_METRICS_ADDR`.

use crate::backlog::PartitionBacklog;
use shared::prometheus::{self, Histogram, Writer};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

static LATENCY_BOUNDS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
static BATCH_BOUNDS: [f64; 8] = [1.0, 5.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0];

/// Counters since the process started.
#[derive(Debug)]
pub struct Metrics {
    /// Orders accepted.
    pub accepted: AtomicU64,
    /// Orders rejected by a deciding transaction.
    pub rejected: AtomicU64,
    /// Deliveries of orders already decided or cancelled, acked without effect.
    pub already_decided: AtomicU64,
    /// Deliveries RabbitMQ marked as redelivered.
    pub redeliveries: AtomicU64,
    /// Malformed messages sent to the dead-letter queue.
    pub poison: AtomicU64,
    /// Orders rejected because their message was dead-lettered.
    pub dead_lettered_rejected: AtomicU64,
    /// Batches abandoned because the partition lease was lost.
    pub fenced: AtomicU64,
    /// Orders rejected `DECISION_FAILED`: their own transaction failed for a
    /// reason that is not transient.
    pub decision_failed: AtomicU64,
    /// Decision notices that could not be published in time (dropped).
    pub notices_dropped: AtomicU64,
    /// Reservations expired by this worker's sweeper.
    pub expired: AtomicU64,
    /// Partitions this worker holds now.
    pub partitions_owned: AtomicU64,
    /// The configured partition count (`ORDER_PARTITIONS`).
    pub partition_count: AtomicU64,
    /// The held partitions' backlogs, as last read (one entry per held
    /// partition at most).
    pub backlog: Mutex<Vec<PartitionBacklog>>,
    /// Whether the last backlog read reached the database.
    pub database_up: AtomicU64,
    /// Seconds from recording to decision (database clock).
    pub decision_latency: Histogram,
    /// Orders per deciding transaction.
    pub batch_size: Histogram,
    /// Events published to the events stream and confirmed.
    pub events_published: AtomicU64,
    /// Rounds of events the broker did not confirm (kept, published again).
    pub events_failures: AtomicU64,
    /// Whether this worker is the one publishing events (1) or not (0).
    pub events_publisher: AtomicU64,
    /// Whether events are on (`ORDER_EVENTS`).
    pub events_enabled: AtomicU64,
    /// Events waiting in the outbox, as last read by the publisher.
    pub events_outbox: AtomicU64,
    /// Seconds since the oldest event waiting in the outbox happened.
    pub events_outbox_oldest: AtomicU64,
    /// Entries the events stream holds, as the broker last counted them.
    pub events_stream_entries: AtomicU64,
    /// Seconds from a transition's commit to its event's confirmation.
    pub events_lag: Histogram,
    /// Per webhook endpoint (one entry per configured endpoint).
    pub webhooks: Mutex<BTreeMap<String, WebhookStats>>,
}

/// One webhook endpoint's deliveries by this worker.
#[derive(Debug, Clone, Default)]
pub struct WebhookStats {
    /// Whether this worker is the one delivering to it.
    pub delivering: bool,
    /// Events it acknowledged (2xx).
    pub delivered: u64,
    /// POSTs it did not acknowledge.
    pub failures: u64,
    /// POSTs sent again after a failure.
    pub retries: u64,
    /// Events given up on after the endpoint's retry period.
    pub given_up: u64,
    /// Seconds since the oldest event in hand happened (0 when caught up).
    pub lag_seconds: f64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            accepted: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            already_decided: AtomicU64::new(0),
            redeliveries: AtomicU64::new(0),
            poison: AtomicU64::new(0),
            dead_lettered_rejected: AtomicU64::new(0),
            fenced: AtomicU64::new(0),
            decision_failed: AtomicU64::new(0),
            notices_dropped: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            partitions_owned: AtomicU64::new(0),
            partition_count: AtomicU64::new(0),
            backlog: Mutex::new(Vec::new()),
            database_up: AtomicU64::new(1),
            decision_latency: Histogram::new(&LATENCY_BOUNDS),
            batch_size: Histogram::new(&BATCH_BOUNDS),
            events_published: AtomicU64::new(0),
            events_failures: AtomicU64::new(0),
            events_publisher: AtomicU64::new(0),
            events_enabled: AtomicU64::new(0),
            events_outbox: AtomicU64::new(0),
            events_outbox_oldest: AtomicU64::new(0),
            events_stream_entries: AtomicU64::new(0),
            events_lag: Histogram::new(&LATENCY_BOUNDS),
            webhooks: Mutex::new(BTreeMap::new()),
        }
    }
}

impl Metrics {
    /// Adds one to `counter`.
    pub fn inc(counter: &AtomicU64) {
        prometheus::inc(counter);
    }

    /// Changes endpoint `name`'s stats with `change`.
    pub fn webhook(&self, name: &str, change: impl FnOnce(&mut WebhookStats)) {
        let mut webhooks = self.webhooks.lock().expect("webhook stats");
        if let Some(stats) = webhooks.get_mut(name) {
            change(stats);
        } else {
            change(webhooks.entry(name.to_owned()).or_default());
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut w = Writer::new();
        w.counter(
            "flashstock_worker_orders_decided_total",
            "Orders decided, by outcome.",
            &[
                ("outcome=\"accepted\"", &self.accepted),
                ("outcome=\"rejected\"", &self.rejected),
            ],
        );
        w.counter(
            "flashstock_worker_already_decided_total",
            "Deliveries of orders already decided or cancelled, acked without effect.",
            &[("", &self.already_decided)],
        );
        w.counter(
            "flashstock_worker_redeliveries_total",
            "Deliveries RabbitMQ marked as redelivered.",
            &[("", &self.redeliveries)],
        );
        w.counter(
            "flashstock_worker_poison_messages_total",
            "Malformed messages sent to the dead-letter queue.",
            &[("", &self.poison)],
        );
        w.counter(
            "flashstock_worker_dead_letters_total",
            "Orders rejected DEAD_LETTERED after their message passed the delivery limit.",
            &[("", &self.dead_lettered_rejected)],
        );
        w.counter(
            "flashstock_worker_fenced_batches_total",
            "Batches abandoned because the partition lease was lost.",
            &[("", &self.fenced)],
        );
        w.counter(
            "flashstock_worker_decision_failed_total",
            "Orders rejected DECISION_FAILED: their own deciding transaction failed for a reason that is not transient.",
            &[("", &self.decision_failed)],
        );
        w.counter(
            "flashstock_worker_notices_dropped_total",
            "Decision notices not published in time (broker blocked or down); waiting requests read their orders instead.",
            &[("", &self.notices_dropped)],
        );
        w.counter(
            "flashstock_worker_expired_total",
            "Reservations expired by this worker's sweeper.",
            &[("", &self.expired)],
        );
        w.gauge(
            "flashstock_worker_partitions_owned",
            "Partitions this worker holds a lease on.",
            self.partitions_owned.load(Ordering::Relaxed),
        );
        w.gauge(
            "flashstock_worker_partition_count",
            "The configured partition count (ORDER_PARTITIONS).",
            self.partition_count.load(Ordering::Relaxed),
        );
        let backlog = self.backlog.lock().expect("backlog lock").clone();
        let label = |b: &PartitionBacklog| format!("partition=\"{}\"", b.partition);
        w.gauges(
            "flashstock_worker_backlog_orders",
            "Orders waiting for a decision (PENDING) per partition this worker holds, read from the database every 5 s.",
            &backlog
                .iter()
                .map(|b| (label(b), b.waiting as f64))
                .collect::<Vec<_>>(),
        );
        w.gauges(
            "flashstock_worker_backlog_oldest_seconds",
            "Seconds since the oldest order waiting for a decision was recorded, per partition this worker holds (0 when none waits).",
            &backlog
                .iter()
                .map(|b| (label(b), b.oldest_seconds))
                .collect::<Vec<_>>(),
        );
        w.gauge(
            "flashstock_worker_database_up",
            "Whether the last backlog read reached the database.",
            self.database_up.load(Ordering::Relaxed),
        );
        w.process_memory();
        w.histogram(
            "flashstock_worker_decision_latency_seconds",
            "Seconds from an order's recording to its decision (database clock).",
            &self.decision_latency,
        );
        w.histogram(
            "flashstock_worker_batch_size",
            "Orders per deciding transaction.",
            &self.batch_size,
        );
        w.counter(
            "flashstock_events_published_total",
            "Order events published to the events stream and confirmed by the broker.",
            &[("", &self.events_published)],
        );
        w.counter(
            "flashstock_events_publish_failures_total",
            "Rounds of events the broker did not confirm in time (kept in the outbox and published again).",
            &[("", &self.events_failures)],
        );
        w.gauge(
            "flashstock_events_enabled",
            "Whether order events are on (ORDER_EVENTS): 1, or 0.",
            self.events_enabled.load(Ordering::Relaxed),
        );
        w.gauge(
            "flashstock_events_publisher",
            "Whether this worker is the one publishing order events (1) or not (0).",
            self.events_publisher.load(Ordering::Relaxed),
        );
        w.gauge(
            "flashstock_events_outbox",
            "Order events waiting in the outbox, as last read by the publishing worker (every 5 s).",
            self.events_outbox.load(Ordering::Relaxed),
        );
        w.gauge(
            "flashstock_events_outbox_oldest_seconds",
            "Seconds since the oldest event waiting in the outbox happened, as last read by the publishing worker.",
            self.events_outbox_oldest.load(Ordering::Relaxed),
        );
        let webhooks = self.webhooks.lock().expect("webhook stats").clone();
        let per_endpoint = |value: &dyn Fn(&WebhookStats) -> f64| -> Vec<(String, f64)> {
            webhooks
                .iter()
                .map(|(name, s)| (format!("endpoint=\"{name}\""), value(s)))
                .collect()
        };
        for (name, help, value) in [
            (
                "flashstock_webhook_delivered_total",
                "Events a webhook endpoint acknowledged (2xx), delivered by this worker.",
                &(|s: &WebhookStats| s.delivered as f64) as &dyn Fn(&WebhookStats) -> f64,
            ),
            (
                "flashstock_webhook_failures_total",
                "POSTs a webhook endpoint did not acknowledge (error, timeout, not 2xx).",
                &|s: &WebhookStats| s.failures as f64,
            ),
            (
                "flashstock_webhook_retries_total",
                "POSTs sent again to a webhook endpoint after a failure.",
                &|s: &WebhookStats| s.retries as f64,
            ),
            (
                "flashstock_webhook_given_up_total",
                "Events given up on after the endpoint's retry period (recorded in webhook_failures).",
                &|s: &WebhookStats| s.given_up as f64,
            ),
        ] {
            w.counters_f64(name, help, &per_endpoint(value));
        }
        w.gauges(
            "flashstock_webhook_lag_seconds",
            "Seconds since the oldest event a webhook endpoint has not acknowledged happened (0 when caught up), as seen by the worker delivering to it.",
            &per_endpoint(&|s| s.lag_seconds),
        );
        w.gauges(
            "flashstock_webhook_delivering",
            "Whether this worker is the one delivering to a webhook endpoint (1) or not (0).",
            &per_endpoint(&|s| f64::from(u8::from(s.delivering))),
        );
        w.gauge(
            "flashstock_events_stream_entries",
            "Entries (of up to 500 events each) the events stream holds, as the broker counts them, read every 5 s by the worker publishing events (0 on the others).",
            self.events_stream_entries.load(Ordering::Relaxed),
        );
        w.histogram(
            "flashstock_events_lag_seconds",
            "Seconds from a transition (its event's time, database clock) to its event's confirmation by the events stream.",
            &self.events_lag,
        );
        w.finish()
    }
}
