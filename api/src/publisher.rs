//! Getting recorded orders onto the broker: one message per partition (at
//! most [`MAX_ORDERS_PER_MESSAGE`] orders each, so no message nears the
//! broker's size limit), published with confirms. What to do with a message
//! that was not confirmed is the caller's call (see `recorder` and `relay`).

use crate::metrics::Metrics;
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel, Confirmation, PublisherConfirm};
use shared::broker::{BrokerLink, Topology, confirm_channel};
use shared::message::{OrderBatch, OrderMessage};
use shared::partition::partition_of;
use std::sync::Arc;
use std::time::Duration;

/// Most orders one message carries.
pub const MAX_ORDERS_PER_MESSAGE: usize = 500;
/// How long handing one message to the broker may take (a connection the
/// broker blocked during an alarm would otherwise hold the publish forever).
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one publish may wait for the broker's confirm.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a message could not be published now (the relay will retry it).
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// No broker connection at the moment.
    #[error("broker not connected")]
    NotConnected,
    /// The broker refused or failed.
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    /// The broker refused the message (its queue is at its length limit).
    #[error("broker refused the message")]
    Nacked,
    /// No confirm in time, or the broker did not take the message in time.
    #[error("broker timed out")]
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
}

impl Publisher {
    /// A publisher over `link`.
    pub fn new(link: BrokerLink, topology: Topology) -> Self {
        Self {
            metrics: Arc::default(),
            link,
            topology,
            channel: Arc::default(),
        }
    }

    /// Whether the broker is reachable now.
    pub fn is_connected(&self) -> bool {
        self.link.is_connected()
    }

    /// Whether the broker blocked our connection (a memory or disk alarm).
    pub fn is_blocked(&self) -> bool {
        self.link.is_blocked()
    }

    /// Publishes `orders` as messages per partition (arrival order kept
    /// within each) and waits for the confirms together. Returns each
    /// message's orders and result.
    pub async fn publish_all(&self, orders: Vec<OrderMessage>) -> Published {
        let sent = self.send_all(orders).await;
        self.confirm_all(sent).await
    }

    /// Sends `orders` as messages per partition, without waiting for the
    /// confirms: the caller may record the next batch meanwhile, and the
    /// order of messages on the channel is the order of these calls.
    ///
    /// The messages are handed to the connection together: each publish
    /// waits for lapin's I/O thread to write it, and one after the other
    /// that was a thread hop per partition (16 for a batch over 16
    /// products). Polled in order, they are queued in order, so each
    /// partition's messages keep their order.
    pub async fn send_all(&self, orders: Vec<OrderMessage>) -> Sent {
        let mut by_partition: std::collections::BTreeMap<u16, Vec<OrderMessage>> =
            Default::default();
        for order in orders {
            let p = partition_of(order.product_id, self.topology.partitions());
            by_partition.entry(p).or_default().push(order);
        }
        let chunks: Vec<(u16, Vec<OrderMessage>)> = by_partition
            .into_iter()
            .flat_map(|(p, orders)| {
                orders
                    .chunks(MAX_ORDERS_PER_MESSAGE)
                    .map(|chunk| (p, chunk.to_vec()))
                    .collect::<Vec<_>>()
            })
            .collect();
        if chunks.is_empty() {
            return Sent(Vec::new());
        }
        let channel = match self.channel().await {
            Ok(channel) => channel,
            Err(e) => {
                let mut errors =
                    std::iter::once(e).chain(std::iter::repeat_with(|| PublishError::NotConnected));
                return Sent(
                    chunks
                        .into_iter()
                        .map(|(_, chunk)| (chunk, Err(errors.next().expect("endless"))))
                        .collect(),
                );
            }
        };
        let sends = chunks
            .iter()
            .map(|(p, chunk)| self.send_batch(&channel, *p, chunk));
        let results = futures::future::join_all(sends).await;
        Sent(
            chunks
                .into_iter()
                .zip(results)
                .map(|((_, chunk), result)| (chunk, result))
                .collect(),
        )
    }

    /// Waits for the confirms of `sent`.
    pub async fn confirm_all(&self, sent: Sent) -> Published {
        futures::future::join_all(sent.0.into_iter().map(|(batch, sent)| async move {
            let result = match sent {
                Ok((channel, confirm)) => self.confirmed(&channel, confirm).await,
                Err(e) => Err(e),
            };
            (batch, result)
        }))
        .await
    }

    /// Sends one message holding `orders` to `partition` on `channel`.
    async fn send_batch(
        &self,
        channel: &Channel,
        partition: u16,
        orders: &[OrderMessage],
    ) -> Result<InFlight, PublishError> {
        let payload = serde_json::to_vec(&OrderBatch {
            orders: orders.to_vec(),
        })
        .expect("an order batch serializes");
        let publish = channel.basic_publish(
            self.topology.orders_exchange().into(),
            Topology::routing_key(partition).into(),
            BasicPublishOptions::default(),
            &payload,
            BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into()),
        );
        match tokio::time::timeout(PUBLISH_TIMEOUT, publish).await {
            Ok(Ok(c)) => Ok((channel.clone(), c)),
            Ok(Err(e)) => {
                self.forget(channel).await;
                Err(e.into())
            }
            Err(_) => Err(PublishError::Timeout),
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
