//! Partition ownership across workers: heartbeat, compute who should own
//! what over the live workers, take and renew leases, start and stop the
//! partition consumers accordingly.
//!
//! RabbitMQ 3.10 activates single-active consumers in registration order and
//! never rebalances, so the spreading happens here; single-active-consumer
//! stays on as a second guard, and the lease epoch fences every commit.

use crate::consume::{Context, run_partition};
use shared::db::leases::{self, Lease};
use shared::partition::assign;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// A partition this worker holds and consumes.
struct Held {
    lease: Lease,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Held {
    /// Stops the consumer (it finishes, commits and acks the batch in hand).
    async fn stop(self) -> Lease {
        self.stop.cancel();
        let _ = self.task.await;
        self.lease
    }
}

/// Runs until `shutdown`: every heartbeat, rebalances; at the end stops every
/// consumer, releases every lease and leaves the worker list, so the others
/// take over at once instead of after the lease expires.
pub async fn run_coordinator(ctx: Arc<Context>, shutdown: CancellationToken) {
    let me = ctx.worker_id.clone();
    let partitions = ctx.topology.partitions();
    let mut held: BTreeMap<u16, Held> = BTreeMap::new();
    loop {
        if let Err(e) = rebalance(&ctx, &me, partitions, &mut held, &shutdown).await {
            tracing::warn!(error = %e, "rebalancing failed; holding on to current leases");
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(ctx.config.heartbeat_interval) => {}
        }
    }
    for (_, h) in std::mem::take(&mut held) {
        let lease = h.stop().await;
        if let Err(e) = leases::release(&ctx.db, &lease).await {
            tracing::warn!(partition = lease.partition, error = %e,
                "could not release the partition; it passes on when its lease expires");
        }
    }
    ctx.metrics
        .partitions_owned
        .store(0, std::sync::atomic::Ordering::Relaxed);
    if let Err(e) = leases::remove_worker(&ctx.db, &me).await {
        tracing::warn!(error = %e,
            "could not leave the worker list; the others rebalance when the heartbeat expires");
    }
    tracing::info!("released every partition");
}

async fn rebalance(
    ctx: &Arc<Context>,
    me: &str,
    partitions: u16,
    held: &mut BTreeMap<u16, Held>,
    shutdown: &CancellationToken,
) -> Result<(), sqlx::Error> {
    let lease_duration = ctx.config.lease_duration;
    leases::heartbeat(&ctx.db, me).await?;
    leases::ensure_partitions(&ctx.db, partitions).await?;
    let live = leases::live_workers(&ctx.db, lease_duration).await?;
    let targets = assign(&live, partitions);

    // Consumers that ended on their own (lease lost, or shutdown begun while
    // this round ran) give their lease up: the release names the epoch, so a
    // lost lease is left to its new owner, and a held one passes on at once
    // instead of when it expires.
    let ended: Vec<u16> = held
        .iter()
        .filter(|(_, h)| h.task.is_finished())
        .map(|(p, _)| *p)
        .collect();
    for p in ended {
        let lease = held.remove(&p).expect("held").stop().await;
        leases::release(&ctx.db, &lease).await?;
    }
    let owned = &ctx.metrics.partitions_owned;
    for p in 0..partitions {
        let mine = targets[usize::from(p)] == Some(me);
        if let Some(h) = held.get(&p) {
            if mine && leases::renew(&ctx.db, &h.lease, lease_duration).await? {
                continue;
            }
            let lease = held.remove(&p).expect("held").stop().await;
            leases::release(&ctx.db, &lease).await?;
            tracing::info!(partition = p, epoch = lease.epoch, "released partition");
        } else if mine
            && !shutdown.is_cancelled()
            && let Some(lease) = leases::acquire(&ctx.db, p, me, lease_duration).await?
        {
            tracing::info!(partition = p, epoch = lease.epoch, "took partition");
            let stop = shutdown.child_token();
            let span = tracing::info_span!("partition", partition = p, epoch = lease.epoch);
            let task = tokio::spawn(
                run_partition(ctx.clone(), lease.clone(), stop.clone()).instrument(span),
            );
            held.insert(p, Held { lease, stop, task });
        }
        owned.store(held.len() as u64, std::sync::atomic::Ordering::Relaxed);
    }
    Ok(())
}
