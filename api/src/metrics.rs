//! The api's Prometheus counters, served as text at `GET /metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters since the process started.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Orders recorded as PENDING (new, not idempotent replays).
    pub orders_recorded: AtomicU64,
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
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition of every counter, plus `broker_up`.
    pub fn render(&self, broker_up: bool) -> String {
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, labels: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name}{labels} {value}"
            );
        };
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        counter(
            "flashstock_api_orders_recorded_total",
            "Orders recorded as PENDING.",
            "",
            get(&self.orders_recorded),
        );
        counter(
            "flashstock_api_orders_replayed_total",
            "Submissions answered from an earlier order with the same Idempotency-Key.",
            "",
            get(&self.orders_replayed),
        );
        counter(
            "flashstock_api_orders_published_total",
            "Orders published and confirmed by the broker at once.",
            "",
            get(&self.orders_published),
        );
        counter(
            "flashstock_api_publish_failures_total",
            "Orders recorded but left to the relay because publishing failed.",
            "",
            get(&self.publish_failures),
        );
        counter(
            "flashstock_api_relay_republished_total",
            "Orders the relay republished.",
            "",
            get(&self.relay_republished),
        );
        let _ = writeln!(
            out,
            "# HELP flashstock_api_decisions_notified_total Decision notices received from workers.\n\
             # TYPE flashstock_api_decisions_notified_total counter\n\
             flashstock_api_decisions_notified_total{{status=\"ACCEPTED\"}} {}\n\
             flashstock_api_decisions_notified_total{{status=\"REJECTED\"}} {}",
            get(&self.notified_accepted),
            get(&self.notified_rejected)
        );
        let _ = writeln!(
            out,
            "# HELP flashstock_api_broker_up Whether the broker connection is up.\n\
             # TYPE flashstock_api_broker_up gauge\nflashstock_api_broker_up {}",
            u8::from(broker_up)
        );
        out
    }
}
