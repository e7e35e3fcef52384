//! Getting recorded orders onto the broker, and decisions back.
//!
//! - [`Publisher`]: publishes an order message with publisher confirms on the
//!   partition of its product, then notes `published_at` in batches.
//! - [`run_relay`]: republishes orders recorded but never confirmed (the api
//!   crashed between commit and publish, or the broker was down).
//! - [`run_decision_listener`]: hears the workers' decision announcements and
//!   wakes the requests waiting on them ([`Waiters`]).

use crate::metrics::Metrics;
use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation};
use shared::broker::{BrokerLink, Topology, confirm_channel};
use shared::db;
use shared::domain::OrderId;
use shared::message::{DecidedOrder, DecisionNotice, OrderMessage};
use shared::partition::partition_of;
use sqlx::MySqlPool;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
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

/// Publishes order messages with confirms. Cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    /// Counters shared with the rest of the api.
    pub metrics: Arc<Metrics>,
    link: BrokerLink,
    topology: Topology,
    channel: Arc<tokio::sync::Mutex<Option<Channel>>>,
    published: mpsc::UnboundedSender<OrderId>,
}

impl Publisher {
    /// A publisher over `link`; confirmed orders get `published_at` set by a
    /// background task writing to `db` until `shutdown`.
    pub fn new(
        link: BrokerLink,
        topology: Topology,
        db: MySqlPool,
        shutdown: CancellationToken,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(mark_published(db, rx, shutdown));
        Self {
            metrics: Arc::default(),
            link,
            topology,
            channel: Arc::default(),
            published: tx,
        }
    }

    /// Whether the broker is reachable now.
    pub fn is_connected(&self) -> bool {
        self.link.is_connected()
    }

    /// Publishes `order` to its partition and waits for the broker's confirm.
    pub async fn publish(&self, order: &OrderMessage) -> Result<(), PublishError> {
        let channel = self.channel().await?;
        let partition = partition_of(order.product_id, self.topology.partitions());
        let payload = serde_json::to_vec(order).expect("an order message serializes");
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
        let confirm = match confirm {
            Ok(c) => c,
            Err(e) => {
                self.forget(&channel).await;
                return Err(e.into());
            }
        };
        match tokio::time::timeout(CONFIRM_TIMEOUT, confirm).await {
            Ok(Ok(Confirmation::Ack(_))) => {
                let _ = self.published.send(order.order_id);
                Ok(())
            }
            Ok(Ok(_)) => Err(PublishError::Nacked),
            Ok(Err(e)) => {
                self.forget(&channel).await;
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

/// Sets `published_at` for confirmed orders, many per statement. A mark
/// that is lost only means the relay publishes that order once more, which
/// the worker ignores.
async fn mark_published(
    db: MySqlPool,
    mut rx: mpsc::UnboundedReceiver<OrderId>,
    shutdown: CancellationToken,
) {
    let mut ids = Vec::with_capacity(512);
    loop {
        ids.clear();
        tokio::select! {
            n = rx.recv_many(&mut ids, 512) => if n == 0 { return },
            _ = shutdown.cancelled() => {
                // Drain what is already queued, then stop.
                while let Ok(id) = rx.try_recv() { ids.push(id) }
                let _ = db::orders::mark_published(&db, &ids).await;
                return;
            }
        }
        if let Err(e) = db::orders::mark_published(&db, &ids).await {
            tracing::warn!(error = %e, count = ids.len(), "could not mark orders published; the relay will republish them");
        }
    }
}

/// Every `interval`, republishes PENDING orders whose message was never
/// confirmed, oldest first. Runs until `shutdown`.
pub async fn run_relay(
    db: MySqlPool,
    publisher: Publisher,
    interval: Duration,
    shutdown: CancellationToken,
) {
    // Younger orders may still be on their way through the normal path (a
    // second publish of one would be harmless, only wasted).
    let min_age_ms = interval.as_millis() as u64 * 2;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        if !publisher.is_connected() {
            continue;
        }
        let orders = match db::orders::unpublished(&db, min_age_ms, RELAY_BATCH).await {
            Ok(orders) => orders,
            Err(e) => {
                tracing::warn!(error = %e, "relay could not read unpublished orders");
                continue;
            }
        };
        if orders.is_empty() {
            continue;
        }
        let results = futures::future::join_all(orders.iter().map(|o| publisher.publish(o))).await;
        let failed = results.iter().filter(|r| r.is_err()).count();
        publisher.metrics.relay_republished.fetch_add(
            (orders.len() - failed) as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        tracing::info!(
            republished = orders.len() - failed,
            failed,
            "relay republished orders recorded but not confirmed"
        );
    }
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
    pub fn notify(&self, notice: DecisionNotice, metrics: &Metrics) {
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
        for decided in notice.decisions {
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
                        Ok(notice) => waiters.notify(notice, &metrics),
                        Err(e) => tracing::warn!(error = %e, "ignoring a malformed decision notice"),
                    },
                    _ => break,
                },
            }
        }
    }
}
