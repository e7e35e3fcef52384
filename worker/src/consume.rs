//! The consume loops: one per owned partition, plus the dead-letter queue.
//! They only receive, hand their batches to the [`Decider`] (which decides
//! and commits), ack and announce.

use crate::decide::{Decided, Decision, Outcome, reject_dead_lettered, reject_undecidable};
use crate::decider::Decider;
use crate::metrics::Metrics;
use crate::notify::Notifier;
use backon::BackoffBuilder;
use futures::{FutureExt, StreamExt};
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, message::Delivery};
use shared::Config;
use shared::broker::{BrokerLink, Topology, retry_policy};
use shared::db::leases::Lease;
use shared::message::{DecidedOrder, DecisionNotice, OrderMessage, parse_orders};
use sqlx::MySqlPool;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Attempts at a batch that keeps failing for a reason that is not
/// transient, before it is split to find the order at fault.
const MAX_PERMANENT_FAILURES: u32 = 3;
/// How long a committed delivery waits for the next batches' acks to join its own
/// (see [`Unacked`]).
const ACK_DELAY: Duration = Duration::from_millis(20);

/// What every consume loop needs.
pub struct Context {
    /// The database.
    pub db: MySqlPool,
    /// The broker connection.
    pub link: BrokerLink,
    /// Queue and exchange names.
    pub topology: Topology,
    /// Configuration.
    pub config: Arc<Config>,
    /// This worker's id, for consumer tags and logs.
    pub worker_id: String,
    /// Counters served at `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Announces decisions, over a connection of its own.
    pub notifier: Notifier,
    /// Decides batches, several partitions' per transaction.
    pub decider: Decider,
}

/// Why a consume session ended early.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error("consumer stream ended")]
    Closed,
    #[error("the partition lease was lost")]
    Fenced,
    #[error("an order could be neither decided nor rejected")]
    Undecidable,
}

/// Consumes the partition of `lease` until `shutdown` or until the lease
/// turns out lost, reconnecting as needed.
pub async fn run_partition(ctx: Arc<Context>, lease: Lease, shutdown: CancellationToken) {
    let partition = lease.partition;
    let queue = ctx.topology.partition_queue(partition);
    let mut delays = retry_policy().build();
    while let Some(conn) = ctx.link.connected(&shutdown).await {
        match partition_session(&ctx, &conn, &queue, &lease, &shutdown).await {
            Ok(()) => return,
            Err(SessionError::Fenced) => {
                tracing::warn!(
                    partition,
                    epoch = lease.epoch,
                    "lease lost; stopped deciding this partition"
                );
                return;
            }
            Err(e) => {
                let delay = delays.next().unwrap_or(Duration::from_secs(5));
                tracing::warn!(partition, error = %e, ?delay, "partition consumer stopped; restarting");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// One channel's life consuming `queue`: batch, decide, commit, ack, announce.
/// Returns `Ok` only on shutdown, after the batch in hand is committed and acked.
async fn partition_session(
    ctx: &Context,
    conn: &Connection,
    queue: &str,
    lease: &Lease,
    shutdown: &CancellationToken,
) -> Result<(), SessionError> {
    let batch_size = usize::from(ctx.config.worker_batch_size);
    let ch = conn.create_channel().await?;
    // Each message may carry many orders: a modest prefetch suffices.
    let prefetch = (batch_size * 2).min(256);
    ch.basic_qos(prefetch as u16, BasicQosOptions::default())
        .await?;
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            format!("{}:{queue}", ctx.worker_id).into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    tracing::info!(queue, "consuming");
    let mut unacked = Unacked::default();
    loop {
        let first = tokio::select! {
            // A due ack first, so that steady deliveries never hold it back.
            biased;
            _ = shutdown.cancelled() => {
                let _ = unacked.settle(&ch).await;
                let _ = ch.close(200, "worker shutting down".into()).await;
                return Ok(());
            }
            _ = unacked.due() => {
                unacked.settle(&ch).await?;
                continue;
            }
            next = consumer.next() => next,
        };
        let mut batch = match first {
            Some(Ok(d)) => vec![d],
            ended => {
                // The channel may still take the ack of what was committed.
                let _ = unacked.settle(&ch).await;
                return Err(match ended {
                    Some(Err(e)) => e.into(),
                    _ => SessionError::Closed,
                });
            }
        };
        // Take whatever else has already arrived, without waiting.
        while batch.len() < batch_size {
            match consumer.next().now_or_never() {
                Some(Some(Ok(d))) => batch.push(d),
                _ => break,
            }
        }
        let deliveries = batch.len();
        match process_batch(ctx, &ch, batch, lease, shutdown).await {
            Ok(Some(tag)) => {
                unacked.committed(tag, deliveries);
                // Never let deferred acks use up the prefetch.
                if unacked.deliveries * 2 >= prefetch {
                    unacked.settle(&ch).await?;
                }
            }
            Ok(None) => {}
            Err(e) => {
                // What was committed is acked; the rest returns to the queue
                // for the next owner.
                let _ = unacked.settle(&ch).await;
                let _ = ch.close(200, "partition released".into()).await;
                return Err(e);
            }
        }
    }
}

/// Committed deliveries not yet acked. An ack is a command in the quorum
/// queue's log, as a message is, so a batch's ack waits for the next
/// batches' to go with it as one multiple-ack: until [`ACK_DELAY`] has
/// passed and the batch in hand (if any) is decided, or half the prefetch
/// is unacked, or the session ends (RabbitMQ's CPU per order: a fifth less
/// with `Prefer: wait`, a tenth less with 16 products). Deferring it
/// changes nothing else: the orders are committed, and if the ack is lost
/// the redelivery finds them decided.
#[derive(Default)]
struct Unacked {
    /// The newest committed delivery's tag, and when the oldest is due.
    newest: Option<(u64, tokio::time::Instant)>,
    /// Deliveries taken since the last ack (they hold the prefetch).
    deliveries: usize,
}

impl Unacked {
    /// `deliveries` more were committed, up to `tag`.
    fn committed(&mut self, tag: u64, deliveries: usize) {
        let due = self
            .newest
            .map_or_else(|| tokio::time::Instant::now() + ACK_DELAY, |(_, due)| due);
        self.newest = Some((tag, due));
        self.deliveries += deliveries;
    }

    /// Resolves when the oldest is due; never while there is none.
    async fn due(&self) {
        match self.newest {
            Some((_, due)) => tokio::time::sleep_until(due).await,
            None => std::future::pending().await,
        }
    }

    /// Acks every committed delivery with one multiple-ack on the newest.
    /// Rejected tags below it were settled already and are skipped by the
    /// broker; the ack's own tag is always one that was not rejected.
    async fn settle(&mut self, ch: &Channel) -> Result<(), SessionError> {
        self.deliveries = 0;
        if let Some((tag, _)) = self.newest.take() {
            ch.basic_ack(tag, BasicAckOptions { multiple: true })
                .await?;
        }
        Ok(())
    }
}

/// Decides one batch of deliveries: malformed messages are rejected to the
/// dead-letter queue at once; every other one's orders are committed, and
/// the last readable delivery's tag is returned for the caller to ack
/// (`None` when there is none). A tag is settled once: a rejected tag is
/// never the one acked, so the broker never sees an unknown tag.
async fn process_batch(
    ctx: &Context,
    ch: &Channel,
    batch: Vec<Delivery>,
    lease: &Lease,
    shutdown: &CancellationToken,
) -> Result<Option<u64>, SessionError> {
    let mut ack_tag = None;
    let mut orders = Vec::with_capacity(batch.len());
    for d in &batch {
        if d.redelivered {
            Metrics::inc(&ctx.metrics.redeliveries);
        }
        match parse_orders(&d.data) {
            Ok(batch) => {
                orders.extend(batch);
                ack_tag = Some(d.delivery_tag);
            }
            Err(e) => {
                Metrics::inc(&ctx.metrics.poison);
                // Poison: straight to the dead-letter queue, the partition flows on.
                tracing::warn!(error = %e, bytes = d.data.len(), "dead-lettering a malformed message");
                ch.basic_reject(d.delivery_tag, BasicRejectOptions { requeue: false })
                    .await?;
            }
        }
    }
    let Some(ack_tag) = ack_tag else {
        return Ok(None);
    };

    // Messages carry several orders each: decide at most a batch per
    // transaction (each announced as it commits, see `committed`), and
    // acknowledge only once every one has committed. If the ack is lost,
    // the redelivery finds the orders decided and changes nothing.
    for chunk in orders.chunks(usize::from(ctx.config.worker_batch_size)) {
        decide_isolating(ctx, ch, chunk, lease, shutdown, MAX_PERMANENT_FAILURES).await?;
    }
    shared::fault::point(shared::fault::WORKER_AFTER_COMMIT);
    Ok(Some(ack_tag))
}

/// Counts and announces what one transaction committed, at once (handed to
/// the notifier's task, so this never waits on the broker): a later
/// transaction of the same deliveries may still be fenced or fail, and
/// these decisions must be heard all the same; their redelivery finds them
/// decided and says nothing.
fn committed(ctx: &Context, mut decided: Decided) {
    record(&ctx.metrics, &decided.decisions);
    decided.sold_out.sort_unstable();
    decided.sold_out.dedup();
    ctx.notifier.announce(DecisionNotice {
        decisions: decided
            .decisions
            .iter()
            .filter_map(Decision::notice)
            .collect(),
        sold_out: decided.sold_out,
    });
}

/// Decides `orders` in arrival order. When their transaction keeps failing
/// for a reason that is not transient (after `attempts` tries), the batch is
/// split in halves, each decided in turn, down to the one order at fault,
/// which is rejected `DECISION_FAILED`: one bad order never holds back, or
/// dead-letters, the healthy ones around it.
async fn decide_isolating(
    ctx: &Context,
    ch: &Channel,
    orders: &[OrderMessage],
    lease: &Lease,
    shutdown: &CancellationToken,
    attempts: u32,
) -> Result<(), SessionError> {
    if let Some(decided) = decide_with_retry(ctx, ch, orders, lease, shutdown, attempts).await? {
        committed(ctx, decided);
        return Ok(());
    }
    if let [order] = orders {
        committed(ctx, reject_failed(ctx, order, lease).await?);
        return Ok(());
    }
    let (first, second) = orders.split_at(orders.len() / 2);
    Box::pin(decide_isolating(ctx, ch, first, lease, shutdown, 1)).await?;
    Box::pin(decide_isolating(ctx, ch, second, lease, shutdown, 1)).await
}

/// Rejects one order that cannot be decided (`DECISION_FAILED`), fenced like
/// any decision. If even that fails, the session ends and the broker
/// redelivers, and in the end dead-letters, the message.
async fn reject_failed(
    ctx: &Context,
    order: &OrderMessage,
    lease: &Lease,
) -> Result<Decided, SessionError> {
    tracing::error!(order_id = %order.order_id, product_id = %order.product_id, "an order cannot be decided; rejecting it DECISION_FAILED");
    match reject_undecidable(&ctx.db, order.order_id, lease, ctx.config.order_events).await {
        Ok(Some(decision)) => {
            Metrics::inc(&ctx.metrics.decision_failed);
            Ok(Decided {
                decisions: vec![decision],
                sold_out: Vec::new(),
            })
        }
        Ok(None) => {
            Metrics::inc(&ctx.metrics.fenced);
            Err(SessionError::Fenced)
        }
        Err(e) => {
            tracing::error!(error = %e, order_id = %order.order_id, "could not reject an undecidable order");
            Err(SessionError::Undecidable)
        }
    }
}

/// One fenced deciding transaction for `orders`, retried with backoff while
/// the database is unavailable. `None` after `attempts` failures that are
/// not transient.
async fn decide_with_retry(
    ctx: &Context,
    ch: &Channel,
    orders: &[OrderMessage],
    lease: &Lease,
    shutdown: &CancellationToken,
    attempts: u32,
) -> Result<Option<Decided>, SessionError> {
    let mut delays = retry_policy().build();
    let mut permanent_failures = 0;
    loop {
        match ctx.decider.decide(orders, lease).await {
            Ok(Some(decisions)) => return Ok(Some(decisions)),
            Ok(None) => {
                Metrics::inc(&ctx.metrics.fenced);
                return Err(SessionError::Fenced);
            }
            Err(e) => {
                if !e.is_transient() {
                    permanent_failures += 1;
                    tracing::warn!(error = %e, orders = orders.len(), "deciding a batch failed");
                    if permanent_failures >= attempts {
                        return Ok(None);
                    }
                } else {
                    tracing::warn!(error = %e, "database unavailable while deciding; retrying");
                }
                if !ch.status().connected() {
                    // Unacked deliveries go back to the queue; nothing of this
                    // transaction was committed.
                    return Err(SessionError::Closed);
                }
                let delay = delays.next().unwrap_or(Duration::from_secs(5));
                tokio::select! {
                    // Nothing committed: the broker redelivers these later.
                    _ = shutdown.cancelled() => return Err(SessionError::Closed),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

fn record(metrics: &Metrics, decisions: &[Decision]) {
    metrics.batch_size.observe(decisions.len() as f64);
    for d in decisions {
        let counter = match d.outcome {
            Outcome::Accepted => &metrics.accepted,
            Outcome::Rejected(_) => &metrics.rejected,
            Outcome::AlreadyDecided => &metrics.already_decided,
            Outcome::Unknown => continue,
        };
        Metrics::inc(counter);
        if matches!(d.outcome, Outcome::Accepted | Outcome::Rejected(_)) {
            metrics.decision_latency.observe(d.waited.as_secs_f64());
        }
    }
    tracing::debug!(orders = decisions.len(), "batch decided");
}

/// Consumes the dead-letter queue: each order whose message died is decided
/// REJECTED (`DEAD_LETTERED`) if it is still PENDING; unreadable messages
/// are logged and dropped.
pub async fn run_dead_letters(ctx: Arc<Context>, shutdown: CancellationToken) {
    let queue = ctx.topology.dead_letter_queue();
    while let Some(conn) = ctx.link.connected(&shutdown).await {
        let result: Result<(), SessionError> = async {
            let ch = conn.create_channel().await?;
            ch.basic_qos(64, BasicQosOptions::default()).await?;
            let mut consumer = ch
                .basic_consume(
                    queue.as_str().into(),
                    format!("{}:dead", ctx.worker_id).into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            loop {
                let delivery = tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    next = consumer.next() => match next {
                        Some(Ok(d)) => d,
                        Some(Err(e)) => return Err(e.into()),
                        None => return Err(SessionError::Closed),
                    },
                };
                handle_dead_letter(&ctx, &ch, &delivery, &shutdown).await?;
            }
        }
        .await;
        match result {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, "dead-letter consumer stopped; restarting");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
}

async fn handle_dead_letter(
    ctx: &Context,
    ch: &Channel,
    delivery: &Delivery,
    shutdown: &CancellationToken,
) -> Result<(), SessionError> {
    let orders = match parse_orders(&delivery.data) {
        Ok(orders) => orders,
        Err(e) => {
            let preview = String::from_utf8_lossy(&delivery.data[..delivery.data.len().min(200)])
                .into_owned();
            tracing::error!(error = %e, %preview, "dropping an unreadable dead-lettered message");
            Vec::new()
        }
    };
    for order in orders {
        let mut delays = retry_policy().build();
        loop {
            match reject_dead_lettered(
                &ctx.db,
                order.order_id,
                &ctx.worker_id,
                ctx.config.order_events,
            )
            .await
            {
                Ok(rejected) => {
                    tracing::warn!(order_id = %order.order_id, product_id = %order.product_id, rejected, "order dead-lettered");
                    if rejected {
                        Metrics::inc(&ctx.metrics.dead_lettered_rejected);
                        let notice = DecidedOrder {
                            order_id: order.order_id,
                            status: shared::domain::OrderStatus::Rejected,
                            reason: Some(shared::domain::reason::DEAD_LETTERED.to_owned()),
                            decided_at: None,
                            expires_at: None,
                        };
                        let notice = DecisionNotice {
                            decisions: vec![notice],
                            sold_out: Vec::new(),
                        };
                        ctx.notifier.announce(notice);
                    }
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not reject a dead-lettered order; retrying");
                    let delay = delays.next().unwrap_or(Duration::from_secs(5));
                    tokio::select! {
                        // Unacked: the message stays in the dead-letter queue.
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }
    ch.basic_ack(delivery.delivery_tag, BasicAckOptions::default())
        .await?;
    Ok(())
}
