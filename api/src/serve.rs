//! Serving HTTP with a deadline on request headers.
//!
//! `axum::serve` installs no timer in hyper, so hyper's header-read timeout
//! never fires and a client trickling a request head holds its connection
//! forever (slowloris). This accept loop is `axum::serve` plus that timer:
//! a connection that has not delivered a complete request head within
//! `HEADER_READ_TIMEOUT` is closed. Slow bodies and slow handlers are bounded
//! by the `REQUEST_TIMEOUT` middleware in the router instead.

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Serves `router` on `listener` until `stop` fires, then stops accepting,
/// lets in-flight requests finish (connections close once idle), and returns.
/// At most `max_connections` connections are open at once (each holds its
/// buffers); past that, new ones wait in the kernel's accept queue.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    header_read_timeout: Duration,
    max_connections: usize,
    stop: CancellationToken,
) {
    let connections = TaskTracker::new();
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(max_connections));
    loop {
        let slot = tokio::select! {
            _ = stop.cancelled() => break,
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
        };
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
        // Answers are small and latency matters: no Nagle delay.
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let stop = stop.clone();
        connections.spawn(async move {
            let _slot = slot;
            let mut builder = Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(header_read_timeout);
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    return;
                }
                _ = stop.cancelled() => conn.as_mut().graceful_shutdown(),
            }
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error while draining");
            }
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}
