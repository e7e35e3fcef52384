//! Logging setup shared by both binaries.

use std::fmt::Debug;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

/// Installs the global tracing subscriber: level from `RUST_LOG` (default
/// `info`), JSON lines when `json` is true. Safe to call more than once.
pub fn init(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(ExpectedRefusals);
    let _ = if json {
        registry.with(fmt.json().flatten_event(true)).try_init()
    } else {
        registry.with(fmt).try_init()
    };
}

/// Drops lapin's own ERROR line for a channel the broker closed because a
/// queue does not exist. Every start asks for a queue that must not exist
/// (the partition-count check in `broker`), and lapin logs the broker's
/// answer as an error before our code handles it; an operator who learns to
/// ignore ERROR misses the real ones. Any other refusal still logs, and our
/// own code logs every error it gets back.
struct ExpectedRefusals;

impl<S: Subscriber> Layer<S> for ExpectedRefusals {
    fn event_enabled(&self, event: &Event<'_>, _ctx: Context<'_, S>) -> bool {
        let meta = event.metadata();
        if *meta.level() != Level::ERROR || !meta.target().starts_with("lapin") {
            return true;
        }
        let mut missing_queue = MissingQueue(false);
        event.record(&mut missing_queue);
        !missing_queue.0
    }
}

/// Whether an event's fields say NOT_FOUND for a queue.
struct MissingQueue(bool);

impl Visit for MissingQueue {
    fn record_debug(&mut self, _field: &Field, value: &dyn Debug) {
        let text = format!("{value:?}");
        if text.contains("NOT_FOUND") && text.contains("no queue") {
            self.0 = true;
        }
    }
}
