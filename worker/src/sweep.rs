//! The expiry sweeper: releases accepted orders nobody paid in time.

use crate::metrics::Metrics;
use shared::db::{self, DbError};
use shared::domain::OrderId;
use sqlx::MySqlPool;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Most orders one sweeping transaction expires.
const SWEEP_BATCH: u32 = 500;

/// Most orders the sweeper sets aside (they fail every expiry on their own).
const MAX_SET_ASIDE: usize = 256;
/// How long a set-aside order is left before it is tried again.
const SET_ASIDE_FOR: Duration = Duration::from_secs(600);

/// Every `interval`, expires ACCEPTED orders past `expires_at` (database
/// clock) and releases their units (with `events`, recording each
/// expiry's event); keeps going while a round fills a whole
/// batch. Safe with any number of workers: rows are claimed with
/// `FOR UPDATE SKIP LOCKED` and every transition is conditional.
///
/// A batch that fails one of our checks (not an outage: some order's rows
/// disagree with each other) is expired one by one; an order that fails on
/// its own is logged and set aside (left out of the batches for
/// [`SET_ASIDE_FOR`]), so it never holds back the others. Any other error
/// waits for the next round.
pub async fn run_sweeper(
    db: MySqlPool,
    interval: Duration,
    events: bool,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    // Orders set aside, with when; at most MAX_SET_ASIDE.
    let mut set_aside: Vec<(OrderId, Instant)> = Vec::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        set_aside.retain(|(_, since)| since.elapsed() < SET_ASIDE_FOR);
        loop {
            let skip: Vec<OrderId> = set_aside.iter().map(|(id, _)| *id).collect();
            match db::retry_lock_conflicts(|| {
                db::orders::expire_due(&db, SWEEP_BATCH, &skip, events)
            })
            .await
            {
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
                Err(e @ DbError::Inconsistent(_)) => {
                    tracing::error!(error = %e, "sweeping a batch failed a check; expiring its orders one by one");
                    let (expired, failed) = sweep_one_by_one(&db, &skip, events).await;
                    metrics
                        .expired
                        .fetch_add(expired, std::sync::atomic::Ordering::Relaxed);
                    let room = MAX_SET_ASIDE.saturating_sub(set_aside.len());
                    let progress = !failed.is_empty() && room > 0;
                    for id in failed.into_iter().take(room) {
                        tracing::error!(order_id = %id, "an order fails every expiry; set aside for 10 minutes");
                        set_aside.push((id, Instant::now()));
                    }
                    // With the culprits left out the batches work again;
                    // without any, the failure is not one order's: next round.
                    if !progress {
                        break;
                    }
                }
                // An outage, or the database refusing (read only during a
                // failover, a permission): the next round tries again.
                Err(e) => {
                    tracing::warn!(error = %e, "sweeping expired reservations failed; retrying next round");
                    break;
                }
            }
        }
    }
}

/// Expires the due orders of one batch (but `set_aside`), each in a
/// transaction of its own. Returns how many expired, and the orders that
/// failed one of our checks on their own (each logged); stops at any other
/// error.
async fn sweep_one_by_one(
    db: &MySqlPool,
    set_aside: &[OrderId],
    events: bool,
) -> (u64, Vec<OrderId>) {
    let due = match db::orders::due(db, SWEEP_BATCH, set_aside).await {
        Ok(due) => due,
        Err(e) => {
            tracing::warn!(error = %e, "reading the due reservations failed; retrying next round");
            return (0, Vec::new());
        }
    };
    let (mut expired, mut failed) = (0, Vec::new());
    for id in due {
        match db::retry_lock_conflicts(|| db::orders::expire_order(db, id, events)).await {
            Ok(true) => expired += 1,
            Ok(false) => {}
            Err(e @ DbError::Inconsistent(_)) => {
                tracing::error!(error = %e, order_id = %id, "an order could not be expired");
                failed.push(id);
            }
            Err(e) => {
                tracing::warn!(error = %e, "expiring one by one failed; retrying next round");
                break;
            }
        }
    }
    (expired, failed)
}
