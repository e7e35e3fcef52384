//! The accept loop.
//!
//! `axum::serve` installs no timer in hyper, and hyper-util's automatic
//! protocol choice reads the first bytes with no deadline at all. This loop
//! serves HTTP/1.1 only (no protocol sniff; an HTTP/2 preface is refused at
//! once, see README, Security) with hyper's header timer, which runs from
//! the moment a connection is ready for a request head, so it bounds
//! accept-to-first-request and the idle time between kept-alive requests
//! alike (`HEADER_READ_TIMEOUT`). The router bounds the rest: the api's
//! `receive` layer the body, its `REQUEST_TIMEOUT` layer the handling.
//!
//! At most `max_connections` are open; when all are, the connections idle
//! the longest (for at least [`super::connections::MIN_IDLE`]; or, when
//! none is idle, whose answers their clients have not taken for
//! `HEADER_READ_TIMEOUT`) are closed to make room, a few at once (see
//! [`super::connections`]), and more every 10 ms until a slot frees, so a flood of silent sockets delays
//! a real client by a few accepts, not by a timeout. Running out of file
//! descriptors is met the same way.

use super::connections::Registry;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Largest request head (and read buffer) a connection may hold: hyper's
/// default is about 400 KiB per connection. Heads past it are answered 431.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// How long a connection closed to make room may take to finish writing an
/// answer already produced (hyper flushes it, then closes).
const EVICTION_GRACE: Duration = Duration::from_secs(1);
/// Most connections given that grace at once; past it they are dropped at
/// once. Closing ones hold no slot, so they never slow a newcomer (but they
/// hold file descriptors: count them when sizing against the open-file limit).
pub const MAX_CLOSING: usize = 256;
/// How often the accept loop, waiting for a slot, closes more idle
/// connections.
const EVICTION_PACE: Duration = Duration::from_millis(10);
/// Idle connections closed each time the accept loop finds no free slot.
const EVICT_AT_ONCE: usize = 8;

/// How a listener treats its connections.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `HEADER_READ_TIMEOUT`: from the connection's opening, or its previous
    /// answer, to a whole request head; and how long a client may take to
    /// read an answer before its connection may be closed for a newcomer.
    pub header_read_timeout: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
}

/// Serves `router` on `listener` until `stop` fires, then stops accepting,
/// lets in-flight requests finish (connections close once idle), and returns.
/// `registry` records the connections (its counts are the caller's to
/// report).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    registry: Arc<Registry>,
    stop: CancellationToken,
) {
    let connections = TaskTracker::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let closing = Arc::new(tokio::sync::Semaphore::new(MAX_CLOSING));
    let mut builder = Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_HEAD_BYTES);
    let builder = Arc::new(builder);
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) if crate::limits::is_out_of_files(&e) => {
                // Out of file descriptors: the connections idle the longest
                // give theirs back, as at MAX_CONNECTIONS.
                let mut evicted = 0;
                while evicted < EVICT_AT_ONCE && registry.evict_oldest(limits.header_read_timeout) {
                    evicted += 1;
                }
                if evicted == 0 {
                    tracing::warn!(error = %e, "out of file descriptors with every connection busy");
                }
                tokio::time::sleep(EVICTION_PACE).await;
                continue;
            }
            Err(e) => {
                // A connection reset before it was accepted is routine;
                // anything else (out of memory or buffers) is worth a line.
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::ConnectionReset
                ) {
                    tracing::debug!(error = %e, "a connection went away before it was accepted");
                } else {
                    tracing::warn!(error = %e, "accepting a connection failed");
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        // A free slot, or the slot of the connection idle the longest (or
        // whose answer waits longest for its client).
        let slot = loop {
            if let Ok(slot) = slots.clone().try_acquire_owned() {
                break Some(slot);
            }
            // A few at once: a flood's next accepts then find their slots
            // free instead of each waiting for one connection to close.
            for _ in 0..EVICT_AT_ONCE {
                if !registry.evict_oldest(limits.header_read_timeout) {
                    break;
                }
            }
            tokio::select! {
                _ = stop.cancelled() => break None,
                slot = slots.clone().acquire_owned() => break Some(slot.expect("the semaphore is never closed")),
                _ = tokio::time::sleep(EVICTION_PACE) => {}
            }
        };
        let Some(slot) = slot else { break };
        // Answers are small and latency matters: no Nagle delay.
        let _ = stream.set_nodelay(true);
        let registration = registry.open();
        let activity = registration.activity();
        let service = TowerToHyperService::new(tower::util::MapRequest::new(
            router.clone(),
            move |mut request: axum::http::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(activity.clone());
                request
            },
        ));
        let stop = stop.clone();
        let builder = builder.clone();
        let closing = closing.clone();
        connections.spawn(async move {
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let draining = tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    false
                }
                // Idle: nothing of it is being acted on. An answer it was
                // given may still be in the socket's buffer: hyper finishes
                // writing that (closing at once if there is none), within
                // a grace, outside the slots.
                _ = registration.evicted() => {
                    let answered = registration.answered();
                    drop(registration);
                    drop(slot);
                    let permit = closing.try_acquire_owned().ok().filter(|_| answered);
                    if let Some(_permit) = permit {
                        conn.as_mut().graceful_shutdown();
                        let _ = tokio::time::timeout(EVICTION_GRACE, conn).await;
                    }
                    return;
                }
                _ = stop.cancelled() => true,
            };
            if draining {
                conn.as_mut().graceful_shutdown();
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "connection ended with an error while draining");
                }
            }
            // Out of the registry before the slot frees, so the registry
            // never holds more than the slots.
            drop(registration);
            drop(slot);
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}
