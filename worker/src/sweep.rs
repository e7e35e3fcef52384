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
                Err(e) if e.is_transient() => {
                    tracing::warn!(error = %e, "sweeping expired reservations failed; retrying next round");
                    break;
                }
                // Not an outage: one order's rows break a check. Expire the
                // batch one by one, so that one order never holds back the rest.
                Err(e) => {
                    tracing::error!(error = %e, "sweeping a batch failed a check; expiring its orders one by one");
                    let expired = sweep_one_by_one(&db).await;
                    metrics
                        .expired
                        .fetch_add(expired, std::sync::atomic::Ordering::Relaxed);
                    break;
                }
            }
        }
    }
}

/// Expires the due orders of one batch, each in a transaction of its own;
/// an order that fails is logged and left (the next round tries it again,
/// one by one if it still fails the batch). Returns how many expired.
async fn sweep_one_by_one(db: &MySqlPool) -> u64 {
    let due = match db::orders::due(db, SWEEP_BATCH).await {
        Ok(due) => due,
        Err(e) => {
            tracing::warn!(error = %e, "reading the due reservations failed; retrying next round");
            return 0;
        }
    };
    let mut expired = 0;
    for id in due {
        match db::retry_lock_conflicts(|| db::orders::expire_order(db, id)).await {
            Ok(true) => expired += 1,
            Ok(false) => {}
            Err(e) => tracing::error!(error = %e, order_id = %id, "an order could not be expired"),
        }
    }
    expired
}
