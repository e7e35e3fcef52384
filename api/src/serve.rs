//! Serving HTTP/1.1 so that no idle, slow or silent client can take the api
//! down.
//!
//! `axum::serve` installs no timer in hyper, and hyper-util's automatic
//! protocol choice reads the first bytes with no deadline at all. This
//! accept loop serves HTTP/1.1 only (no protocol sniff; an HTTP/2 preface is
//! refused at once, see README) with hyper's header timer, which runs from
//! the moment a connection is ready for a request head, so it bounds
//! accept-to-first-request and the idle time between kept-alive requests
//! alike: `HEADER_READ_TIMEOUT`. The body then has as long again (the
//! router's `receive` layer), and handling is bounded by `REQUEST_TIMEOUT`.
//!
//! At most `MAX_CONNECTIONS` are open; when all are, the connection idle
//! the longest is closed to make room (see [`crate::connections`]), so a
//! flood of silent sockets delays a real client by an accept, not by a
//! timeout.

use crate::connections::Registry;
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
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Serves `router` on `listener` until `stop` fires, then stops accepting,
/// lets in-flight requests finish (connections close once idle), and returns.
/// At most `max_connections` connections are open at once (each holds its
/// buffers); past that the one idle the longest is closed for a new one, or,
/// when all are busy, new ones wait in the kernel's accept queue.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    header_read_timeout: Duration,
    max_connections: usize,
    stop: CancellationToken,
) {
    let connections = TaskTracker::new();
    let registry = Arc::new(Registry::default());
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
    let mut builder = Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .max_buf_size(MAX_HEAD_BYTES);
    let builder = Arc::new(builder);
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, or a connection reset before it
                // was accepted: pause rather than spin.
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // A free slot, or the slot of the connection idle the longest.
        let slot = loop {
            if let Ok(slot) = slots.clone().try_acquire_owned() {
                break Some(slot);
            }
            // Every connection busy: wait for one to finish (or go idle).
            let pause = if registry.evict_oldest() {
                Duration::from_secs(1)
            } else {
                Duration::from_millis(10)
            };
            tokio::select! {
                _ = stop.cancelled() => break None,
                slot = slots.clone().acquire_owned() => break Some(slot.expect("the semaphore is never closed")),
                _ = tokio::time::sleep(pause) => {}
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
        connections.spawn(async move {
            let _slot = slot;
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    return;
                }
                // Idle, with nothing acted on: dropped at once.
                _ = registration.evicted() => return,
                _ = stop.cancelled() => conn.as_mut().graceful_shutdown(),
            }
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error while draining");
            }
            drop(registration);
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}
