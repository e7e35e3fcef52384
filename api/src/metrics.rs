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
    /// Decision notices received, by outcome.
    pub notified_accepted: AtomicU64,
    /// Decision notices received, by outcome.
    pub notified_rejected: AtomicU64,
}

impl Metrics {
    /// Adds one to `counter`.
    pub fn inc(counter: &AtomicU64) {
        prometheus::inc(counter);
    }

    /// The Prometheus text exposition of every counter, plus `broker_up`.
    pub fn render(&self, broker_up: bool) -> String {
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
        w.gauge(
            "flashstock_api_broker_up",
            "Whether the broker connection is up.",
            u64::from(broker_up),
        );
        w.finish()
    }
}
