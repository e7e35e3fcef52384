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

/// Drops two of lapin's own ERROR lines that describe expected events:
/// - a channel the broker closed because a queue does not exist: every
///   start asks for a queue that must not exist (the partition-count check
///   in `broker`), and lapin logs the broker's answer before our code
///   handles it;
/// - a channel.close arriving for a channel that is closing already (both
///   ends closed it at once, as at shutdown): lapin turns it into a
///   connection error; the supervisor logs the lost connection at WARN and
///   reconnects.
///
/// An operator who learns to ignore ERROR misses the real ones. Any other
/// refusal still logs, and our own code logs every error it gets back.
struct ExpectedRefusals;

impl<S: Subscriber> Layer<S> for ExpectedRefusals {
    fn event_enabled(&self, event: &Event<'_>, _ctx: Context<'_, S>) -> bool {
        let meta = event.metadata();
        if *meta.level() != Level::ERROR || !meta.target().starts_with("lapin") {
            return true;
        }
        let mut expected = Expected(false);
        event.record(&mut expected);
        !expected.0
    }
}

/// Whether an event's fields describe one of the expected refusals.
struct Expected(bool);

impl Visit for Expected {
    fn record_debug(&mut self, _field: &Field, value: &dyn Debug) {
        let text = format!("{value:?}");
        let missing_queue = text.contains("NOT_FOUND") && text.contains("no queue");
        let closed_twice = text.contains("invalid channel state: Closing (channel.close)");
        if missing_queue || closed_twice {
            self.0 = true;
        }
    }
}
