//! The api's Prometheus counters, served as text at `GET /metrics`.

use shared::prometheus::{self, Writer};
use std::sync::atomic::AtomicU64;

/// Counters since the process started.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Orders recorded as PENDING (new, not idempotent replays).
    pub orders_recorded: AtomicU64,
    /// Orders rejected at submission because the product was sold out.
    pub orders_rejected_sold_out: AtomicU64,
    /// Submissions answered from an earlier order with the same idempotency key.
    pub orders_replayed: AtomicU64,
    /// Orders published and confirmed by the broker on the first try.
    pub orders_published: AtomicU64,
    /// Orders recorded but not published at once (left to the relay).
    pub publish_failures: AtomicU64,
    /// Orders the relay republished.
    pub relay_republished: AtomicU64,
    /// Orders answered 503 `OVERLOADED` and not recorded (past capacity,
    /// or refused by a full partition queue).
    pub orders_shed: AtomicU64,
    /// Decision notices received, by outcome.
    pub notified_accepted: AtomicU64,
    /// Decision notices received, by outcome.
    pub notified_rejected: AtomicU64,
}

/// Values read at scrape time.
#[derive(Debug, Default)]
pub struct Gauges {
    /// The broker connection is up.
    pub broker_up: bool,
    /// The broker blocked the connection.
    pub broker_blocked: bool,
    /// Admitted, undecided orders.
    pub undecided: usize,
    /// Orders with a request waiting.
    pub waiters: usize,
    /// Unpublished orders kept for the relay.
    pub deferred: usize,
    /// Ids not yet confirmed on the broker.
    pub unconfirmed: usize,
    /// Client connections open, and how many of them idle.
    pub connections: (usize, usize),
    /// Client connections closed to make room, ever.
    pub evicted: u64,
}

impl Metrics {
    /// Adds one to `counter`.
    pub fn inc(counter: &AtomicU64) {
        prometheus::inc(counter);
    }

    /// The Prometheus text exposition of every counter, plus the gauges.
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut w = Writer::new();
        w.counter(
            "flashstock_api_orders_recorded_total",
            "Orders recorded as PENDING.",
            &[("", &self.orders_recorded)],
        );
        w.counter(
            "flashstock_api_orders_rejected_sold_out_total",
            "Orders rejected at submission: the product was sold out (checked in the database), so they were never queued.",
            &[("", &self.orders_rejected_sold_out)],
        );
        w.counter(
            "flashstock_api_orders_replayed_total",
            "Submissions answered from an earlier order with the same Idempotency-Key.",
            &[("", &self.orders_replayed)],
        );
        w.counter(
            "flashstock_api_orders_published_total",
            "Orders published and confirmed by the broker at once.",
            &[("", &self.orders_published)],
        );
        w.counter(
            "flashstock_api_publish_failures_total",
            "Orders recorded but left to the relay because publishing failed.",
            &[("", &self.publish_failures)],
        );
        w.counter(
            "flashstock_api_relay_republished_total",
            "Orders the relay republished.",
            &[("", &self.relay_republished)],
        );
        w.counter(
            "flashstock_api_decisions_notified_total",
            "Decision notices received from workers.",
            &[
                ("status=\"ACCEPTED\"", &self.notified_accepted),
                ("status=\"REJECTED\"", &self.notified_rejected),
            ],
        );
        w.counter(
            "flashstock_api_orders_shed_total",
            "Orders answered 503 OVERLOADED and not recorded: past capacity, or refused by a full partition queue.",
            &[("", &self.orders_shed)],
        );
        w.gauge(
            "flashstock_api_broker_up",
            "Whether the broker connection is up.",
            u64::from(gauges.broker_up),
        );
        w.gauge(
            "flashstock_api_broker_blocked",
            "Whether the broker blocked this api's connection (a memory or disk alarm); orders are shed meanwhile.",
            u64::from(gauges.broker_blocked),
        );
        w.gauge(
            "flashstock_api_orders_undecided",
            "Orders this api admitted that are not decided yet.",
            gauges.undecided as u64,
        );
        w.gauge(
            "flashstock_api_waiters",
            "Orders with a request waiting for their decision (Prefer: wait).",
            gauges.waiters as u64,
        );
        w.gauge(
            "flashstock_api_deferred_orders",
            "Recorded orders whose publish failed, kept in memory for the relay.",
            gauges.deferred as u64,
        );
        w.gauge(
            "flashstock_api_unconfirmed_orders",
            "Order ids handed out whose orders are not yet confirmed by the broker.",
            gauges.unconfirmed as u64,
        );
        w.gauge(
            "flashstock_api_connections_open",
            "Client connections open on the public listener (at most MAX_CONNECTIONS; up to 256 more may be closing).",
            gauges.connections.0 as u64,
        );
        w.gauge(
            "flashstock_api_connections_idle",
            "Open client connections with no request in hand (the ones that give way at MAX_CONNECTIONS).",
            gauges.connections.1 as u64,
        );
        w.counter(
            "flashstock_api_connections_evicted_total",
            "Idle client connections closed to make room for new ones (MAX_CONNECTIONS reached, or out of file descriptors).",
            &[("", &std::sync::atomic::AtomicU64::new(gauges.evicted))],
        );
        w.process_memory();
        w.finish()
    }
}
