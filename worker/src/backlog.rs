//! The backlog gauges: for each partition this worker holds, the orders
//! waiting for a decision (PENDING, published or not) and the age of the
//! oldest, read from the database every [`INTERVAL`]. A partition whose
//! consumer is stuck shows here while the decision latency says nothing,
//! since that only moves when orders are decided.

use crate::consume::Context;
use shared::db;
use shared::domain::ProductId;
use shared::partition::partition_of;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the backlog is read.
pub const INTERVAL: Duration = Duration::from_secs(5);
/// Products read per query.
const PAGE: u32 = 1_000;

/// One partition's backlog.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PartitionBacklog {
    /// The partition.
    pub partition: u16,
    /// Orders waiting for a decision.
    pub waiting: u64,
    /// Seconds since the oldest waiting order was recorded (0 when none).
    pub oldest_seconds: f64,
}

/// Every [`INTERVAL`] until `shutdown`, reads the backlog of the partitions
/// this worker holds into its metrics; a failed read marks the database down.
pub async fn run_backlog(ctx: Arc<Context>, shutdown: CancellationToken) {
    loop {
        match read(&ctx).await {
            Ok(backlog) => {
                *ctx.metrics.backlog.lock().expect("backlog lock") = backlog;
                ctx.metrics.database_up.store(1, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading the backlog failed");
                ctx.metrics.backlog.lock().expect("backlog lock").clear();
                ctx.metrics.database_up.store(0, Ordering::Relaxed);
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(INTERVAL) => {}
        }
    }
}

async fn read(ctx: &Context) -> Result<Vec<PartitionBacklog>, sqlx::Error> {
    let partitions = ctx.topology.partitions();
    let held = db::leases::held_by(&ctx.db, &ctx.worker_id).await?;
    let mut backlog: BTreeMap<u16, PartitionBacklog> = held
        .iter()
        .map(|&partition| {
            let zero = PartitionBacklog {
                partition,
                waiting: 0,
                oldest_seconds: 0.0,
            };
            (partition, zero)
        })
        .collect();
    if backlog.is_empty() {
        return Ok(Vec::new());
    }
    let mut after = 0;
    loop {
        let page = db::products::ids_after(&ctx.db, after, PAGE).await?;
        let Some(&last) = page.last() else { break };
        after = last;
        let mine: Vec<u64> = page
            .into_iter()
            .filter(|&id| {
                ProductId::new(id as i64)
                    .is_ok_and(|p| backlog.contains_key(&partition_of(p, partitions)))
            })
            .collect();
        for (product, waiting, age) in db::orders::pending_by_product(&ctx.db, &mine).await? {
            let Ok(p) = ProductId::new(product as i64) else {
                continue;
            };
            if let Some(b) = backlog.get_mut(&partition_of(p, partitions)) {
                b.waiting += waiting;
                b.oldest_seconds = b.oldest_seconds.max(age);
            }
        }
    }
    Ok(backlog.into_values().collect())
}
