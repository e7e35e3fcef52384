//! Getting recorded orders onto the broker, and decisions back.
//!
//! - [`Publisher`]: publishes an order message with publisher confirms on the
//!   partition of its product; a message that was not confirmed is kept in
//!   memory for the relay.
//! - [`run_relay`]: republishes those at once when the broker is back, and
//!   every round scans for PENDING orders older than `RELAY_AFTER` (the api
//!   crashed between commit and publish, so memory was lost).
//! - [`run_decision_listener`]: hears the workers' decision announcements and
//!   wakes the requests waiting on them ([`Waiters`]).

use crate::metrics::Metrics;
use crate::recorder::SoldOut;
use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, PublisherConfirm};
use shared::broker::{BrokerLink, Topology, confirm_channel};
use shared::db;
use shared::domain::OrderId;
use shared::message::{DecidedOrder, DecisionNotice, OrderBatch, OrderMessage};
use shared::partition::partition_of;
use sqlx::MySqlPool;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// How long one publish may wait for the broker's confirm.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);
/// Most orders the relay republishes per round.
const RELAY_BATCH: u32 = 500;

/// Why a message could not be published now (the relay will retry it).
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// No broker connection at the moment.
    #[error("broker not connected")]
    NotConnected,
    /// The broker refused or failed.
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    /// The broker nacked the message.
    #[error("broker did not confirm the message")]
    Nacked,
    /// No confirm in time.
    #[error("broker confirm timed out")]
    Timeout,
}

/// Messages sent and awaiting their confirms: each message's orders, and
/// its channel and confirm (or why it could not be sent).
pub struct Sent(Vec<(Vec<OrderMessage>, Result<InFlight, PublishError>)>);

/// A sent message: its channel and the confirm to wait for.
type InFlight = (Channel, PublisherConfirm);

/// Each message's orders and whether the broker confirmed it.
pub type Published = Vec<(Vec<OrderMessage>, Result<(), PublishError>)>;

/// Publishes order messages with confirms. Cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    /// Counters shared with the rest of the api.
    pub metrics: Arc<Metrics>,
    link: BrokerLink,
    topology: Topology,
    channel: Arc<tokio::sync::Mutex<Option<Channel>>>,
    /// Recorded orders whose publish failed, for the relay.
    deferred: Arc<Mutex<Vec<OrderMessage>>>,
}

impl Publisher {
    /// A publisher over `link`.
    pub fn new(link: BrokerLink, topology: Topology) -> Self {
        Self {
            metrics: Arc::default(),
            link,
            topology,
            channel: Arc::default(),
            deferred: Arc::default(),
        }
    }

    /// Publishes `order`; when that fails, keeps it for the relay to
    /// publish once the broker is back.
    pub async fn publish_or_defer(&self, order: OrderMessage) -> Result<(), PublishError> {
        match self.publish_all(vec![order]).await.pop() {
            Some((_, Err(e))) => Err(e),
            _ => Ok(()),
        }
    }

    /// Whether the broker is reachable now.
    pub fn is_connected(&self) -> bool {
        self.link.is_connected()
    }

    /// Publishes `orders` as one message per partition (arrival order kept
    /// within each) and waits for the confirms together. Orders whose message
    /// failed are kept for the relay. Returns each message's orders and result.
    pub async fn publish_all(&self, orders: Vec<OrderMessage>) -> Published {
        let sent = self.send_all(orders).await;
        self.confirm_all(sent).await
    }

    /// Sends `orders` as one message per partition, without waiting for the
    /// confirms: the caller may record the next batch meanwhile, and the
    /// order of messages on the channel is the order of these calls.
    pub async fn send_all(&self, orders: Vec<OrderMessage>) -> Sent {
        let mut by_partition: std::collections::BTreeMap<u16, Vec<OrderMessage>> =
            Default::default();
        for order in orders {
            let p = partition_of(order.product_id, self.topology.partitions());
            by_partition.entry(p).or_default().push(order);
        }
        let mut sent = Vec::with_capacity(by_partition.len());
        for (p, batch) in by_partition {
            let confirm = self.send_batch(p, &batch).await;
            sent.push((batch, confirm));
        }
        Sent(sent)
    }

    /// Waits for the confirms of `sent`; orders whose message failed are
    /// kept for the relay.
    pub async fn confirm_all(&self, sent: Sent) -> Published {
        let results =
            futures::future::join_all(sent.0.into_iter().map(|(batch, sent)| async move {
                let result = match sent {
                    Ok((channel, confirm)) => self.confirmed(&channel, confirm).await,
                    Err(e) => Err(e),
                };
                (batch, result)
            }))
            .await;
        for (batch, result) in &results {
            if result.is_err() {
                self.deferred
                    .lock()
                    .expect("deferred lock")
                    .extend(batch.iter().copied());
            }
        }
        results
    }

    /// Sends one message holding `orders` to `partition`.
    async fn send_batch(
        &self,
        partition: u16,
        orders: &[OrderMessage],
    ) -> Result<InFlight, PublishError> {
        let channel = self.channel().await?;
        let payload = serde_json::to_vec(&OrderBatch {
            orders: orders.to_vec(),
        })
        .expect("an order batch serializes");
        let confirm = channel
            .basic_publish(
                self.topology.orders_exchange().into(),
                Topology::routing_key(partition).into(),
                BasicPublishOptions::default(),
                &payload,
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_content_type("application/json".into()),
            )
            .await;
        match confirm {
            Ok(c) => Ok((channel, c)),
            Err(e) => {
                self.forget(&channel).await;
                Err(e.into())
            }
        }
    }

    /// Waits for the broker's confirm of one message.
    async fn confirmed(
        &self,
        channel: &Channel,
        confirm: PublisherConfirm,
    ) -> Result<(), PublishError> {
        match tokio::time::timeout(CONFIRM_TIMEOUT, confirm).await {
            Ok(Ok(Confirmation::Ack(_))) => Ok(()),
            Ok(Ok(_)) => Err(PublishError::Nacked),
            Ok(Err(e)) => {
                self.forget(channel).await;
                Err(e.into())
            }
            Err(_) => Err(PublishError::Timeout),
        }
    }

    /// The confirm channel on the current connection, opened on first use.
    async fn channel(&self) -> Result<Channel, PublishError> {
        let mut slot = self.channel.lock().await;
        if let Some(ch) = slot.as_ref()
            && ch.status().connected()
        {
            return Ok(ch.clone());
        }
        let conn = self.link.connection().ok_or(PublishError::NotConnected)?;
        let ch = confirm_channel(&conn).await?;
        *slot = Some(ch.clone());
        Ok(ch)
    }

    async fn forget(&self, broken: &Channel) {
        let mut slot = self.channel.lock().await;
        if slot.as_ref().is_some_and(|c| c.id() == broken.id()) {
            *slot = None;
        }
    }
}

/// Every `interval`, while the broker is reachable: publishes the orders
/// this api could not publish, then the PENDING orders older than `after`
/// that nobody relayed within `after` (in batches while a batch fills).
/// Runs until `shutdown`.
pub async fn run_relay(
    db: MySqlPool,
    publisher: Publisher,
    interval: Duration,
    after: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        if !publisher.is_connected() {
            continue;
        }
        let deferred = std::mem::take(&mut *publisher.deferred.lock().expect("deferred lock"));
        if !deferred.is_empty() {
            republish(&publisher, deferred).await;
        }
        loop {
            let stale = match db::orders::stale_pending(&db, after, RELAY_BATCH).await {
                Ok(orders) => orders,
                Err(e) => {
                    tracing::warn!(error = %e, "relay could not read stale orders");
                    break;
                }
            };
            let full = stale.len() == RELAY_BATCH as usize;
            let ids: Vec<OrderId> = stale.iter().map(|o| o.order_id).collect();
            let failed = republish(&publisher, stale).await;
            if let Err(e) = db::orders::mark_relayed(&db, &ids).await {
                tracing::warn!(error = %e, "relay could not mark orders relayed");
            }
            if !full || failed > 0 || shutdown.is_cancelled() {
                break;
            }
        }
    }
}

/// Publishes `orders` (any that fail are kept for the next round) and
/// returns how many failed.
async fn republish(publisher: &Publisher, orders: Vec<OrderMessage>) -> usize {
    if orders.is_empty() {
        return 0;
    }
    let (mut published, mut failed) = (0, 0);
    for (batch, result) in publisher.publish_all(orders).await {
        *if result.is_ok() {
            &mut published
        } else {
            &mut failed
        } += batch.len();
    }
    publisher
        .metrics
        .relay_republished
        .fetch_add(published as u64, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(published, failed, "relay republished orders");
    failed
}

/// Requests waiting for decisions (`Prefer: wait`), by order id.
#[derive(Clone, Default)]
pub struct Waiters {
    inner: Arc<Mutex<HashMap<OrderId, Vec<oneshot::Sender<DecidedOrder>>>>>,
}

/// A registration; dropping it unregisters.
pub struct Waiting {
    id: OrderId,
    rx: Option<oneshot::Receiver<DecidedOrder>>,
    waiters: Waiters,
}

impl Waiting {
    /// Waits up to `timeout` for the decision.
    pub async fn decision(mut self, timeout: Duration) -> Option<DecidedOrder> {
        let rx = self.rx.take()?;
        tokio::time::timeout(timeout, rx).await.ok()?.ok()
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let mut map = self.waiters.inner.lock().expect("waiters lock");
        if let Some(list) = map.get_mut(&self.id) {
            list.retain(|tx| !tx.is_closed());
            if list.is_empty() {
                map.remove(&self.id);
            }
        }
    }
}

impl Waiters {
    /// Registers interest in `id`'s decision.
    pub fn register(&self, id: OrderId) -> Waiting {
        let (tx, rx) = oneshot::channel();
        self.inner
            .lock()
            .expect("waiters lock")
            .entry(id)
            .or_default()
            .push(tx);
        Waiting {
            id,
            rx: Some(rx),
            waiters: self.clone(),
        }
    }

    /// Wakes everyone waiting on the orders in `notice`.
    pub fn notify(&self, notice: &DecisionNotice, metrics: &Metrics) {
        for d in &notice.decisions {
            match d.status {
                shared::domain::OrderStatus::Accepted => Metrics::inc(&metrics.notified_accepted),
                _ => Metrics::inc(&metrics.notified_rejected),
            }
        }
        let mut map = self.inner.lock().expect("waiters lock");
        if map.is_empty() {
            return;
        }
        for decided in &notice.decisions {
            if let Some(list) = map.remove(&decided.order_id) {
                for tx in list {
                    let _ = tx.send(decided.clone());
                }
            }
        }
    }
}

/// Listens on the decisions fanout through a private, auto-deleted queue
/// and wakes waiting requests; re-subscribes after every reconnection.
pub async fn run_decision_listener(
    link: BrokerLink,
    topology: Topology,
    waiters: Waiters,
    sold_out: SoldOut,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    while let Some(conn) = link.connected(&shutdown).await {
        let consumer = async {
            let ch = conn.create_channel().await?;
            let queue = ch
                .queue_declare(
                    "".into(),
                    QueueDeclareOptions {
                        exclusive: true,
                        auto_delete: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            ch.queue_bind(
                queue.name().clone(),
                topology.decisions_exchange().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
            ch.basic_consume(
                queue.name().clone(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
        };
        let mut consumer = match consumer.await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "could not subscribe to decisions");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                delivery = consumer.next() => match delivery {
                    Some(Ok(d)) => match serde_json::from_slice::<DecisionNotice>(&d.data) {
                        Ok(notice) => {
                            sold_out.mark(&notice.sold_out);
                            waiters.notify(&notice, &metrics);
                        }
                        Err(e) => tracing::warn!(error = %e, "ignoring a malformed decision notice"),
                    },
                    _ => break,
                },
            }
        }
    }
}
