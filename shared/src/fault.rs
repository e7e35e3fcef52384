//! Fault points for the fault-injection tests: places where a test can have
//! a process SIGKILL itself, at a moment no outside signal could hit reliably
//! (after a commit, before the ack that follows it).
//!
//! Armed by `FLASHSTOCK_FAULT=<point>@<n>`: the `n`-th time the process
//! reaches `<point>` (counting from 1; `@<n>` defaults to 1), it sends itself
//! SIGKILL; with `:stop` after it (`<point>@<n>:stop`), SIGSTOP instead, so
//! that the test can do something at that very moment (kill the database
//! primary under a commit) and then let it go on with SIGCONT. Only debug
//! builds have them: in a release build [`point`] is an empty function and
//! the variable is never read.

/// The api recorded PENDING orders (committed) and has not published them:
/// a recording batch, or one order sent with an `Idempotency-Key`.
pub const API_AFTER_RECORD: &str = "api-after-record";
/// A worker wrote its decisions and has not committed them.
pub const WORKER_BEFORE_COMMIT: &str = "worker-before-commit";
/// A worker committed its decisions and has not acknowledged the messages.
pub const WORKER_AFTER_COMMIT: &str = "worker-after-commit";
/// The api is about to send the statement that commits what it writes: a
/// recording (a batch, one order, or one with a key), a pay or a cancel.
pub const API_BEFORE_COMMIT: &str = "api-before-commit";
/// The events publisher had a round of events confirmed by the stream and
/// has not deleted them from the outbox.
pub const EVENTS_AFTER_CONFIRM: &str = "events-after-confirm";

/// Kills (or stops) this process if the fault point `name` is armed and
/// this is the arrival it is armed for.
#[cfg(debug_assertions)]
pub fn point(name: &str) {
    use std::sync::LazyLock;
    use std::sync::atomic::{AtomicU64, Ordering};

    static ARMED: LazyLock<Option<(String, u64, bool)>> = LazyLock::new(|| {
        let spec = std::env::var("FLASHSTOCK_FAULT").ok()?;
        let (spec, stop) = match spec.strip_suffix(":stop") {
            Some(spec) => (spec.to_owned(), true),
            None => (spec, false),
        };
        let (point, nth) = spec.split_once('@').unwrap_or((&spec, "1"));
        Some((point.to_owned(), nth.parse().unwrap_or(1), stop))
    });
    static ARRIVALS: AtomicU64 = AtomicU64::new(0);

    let Some((armed, nth, stop)) = ARMED.as_ref() else {
        return;
    };
    if armed != name || ARRIVALS.fetch_add(1, Ordering::SeqCst) + 1 != *nth {
        return;
    }
    let signal = if *stop { "-STOP" } else { "-KILL" };
    tracing::warn!(point = name, signal, "fault point reached");
    let _ = std::process::Command::new("kill")
        .arg(signal)
        .arg(std::process::id().to_string())
        .status();
    if *stop {
        // Stopped by the time `kill` exits; here again after SIGCONT.
        tracing::warn!(point = name, "fault point: continued");
        return;
    }
    // `kill` has delivered SIGKILL by the time it exits; never go on.
    loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

/// Release builds have no fault points.
#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn point(_name: &str) {}
