//! The expiry sweeper: releases accepted orders nobody paid in time.

use crate::metrics::Metrics;
use shared::db;
use sqlx::MySqlPool;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Most orders one sweeping transaction expires.
const SWEEP_BATCH: u32 = 500;

/// Every `interval`, expires ACCEPTED orders past `expires_at` (database
/// clock) and releases their units; keeps going while a round fills a whole
/// batch. Safe with any number of workers: rows are claimed with
/// `FOR UPDATE SKIP LOCKED` and every transition is conditional.
pub async fn run_sweeper(
    db: MySqlPool,
    interval: Duration,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        loop {
            match db::retry_lock_conflicts(|| db::orders::expire_due(&db, SWEEP_BATCH)).await {
                Ok(expired) if expired.is_empty() => break,
                Ok(expired) => {
                    metrics
                        .expired
                        .fetch_add(expired.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    tracing::info!(count = expired.len(), "expired unpaid reservations");
                    if expired.len() < SWEEP_BATCH as usize {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "sweeping expired reservations failed; retrying next round");
                    break;
                }
            }
        }
    }
}
