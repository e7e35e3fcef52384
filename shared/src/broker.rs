//! RabbitMQ: names, topology, and a link that keeps one connection alive.
//!
//! Topology (every name under `BROKER_NAMESPACE`, written `{ns}` here):
//! - `{ns}.orders`: direct exchange; routing key = partition number.
//! - `{ns}.orders.{p}` for `p` in `0..ORDER_PARTITIONS`: durable quorum
//!   queues with single-active-consumer, a delivery limit and at-least-once
//!   dead-lettering to `{ns}.orders.dlx`.
//! - `{ns}.orders.dlx`: fanout exchange feeding the quorum queue `{ns}.orders.dead`.
//! - `{ns}.decisions`: fanout exchange on which workers announce decisions.

use backon::{BackoffBuilder, ExponentialBuilder};
use futures::StreamExt;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Errors while setting up the broker.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The broker already has a different number of partition queues.
    #[error(
        "ORDER_PARTITIONS={configured} but the broker has {declared} partition queues under \
         namespace {namespace:?}; start every api and worker with the same ORDER_PARTITIONS"
    )]
    PartitionMismatch {
        /// The namespace checked.
        namespace: String,
        /// What this process was configured with.
        configured: u16,
        /// What the broker has (a lower bound when more exist).
        declared: String,
    },
    /// Any AMQP failure.
    #[error("broker: {0}")]
    Amqp(#[from] lapin::Error),
}

/// The names of everything this deployment declares on the broker.
#[derive(Debug, Clone)]
pub struct Topology {
    namespace: String,
    partitions: u16,
    delivery_limit: u32,
    max_length: u32,
}

impl Topology {
    /// The topology of `namespace` with `partitions` partition queues, each
    /// dead-lettering after `delivery_limit` deliveries and refusing
    /// publishes past `max_length` messages.
    pub fn new(namespace: &str, partitions: u16, delivery_limit: u32, max_length: u32) -> Self {
        Self {
            namespace: namespace.to_owned(),
            partitions,
            delivery_limit,
            max_length,
        }
    }

    /// The topology `config` describes (`BROKER_NAMESPACE`, `ORDER_PARTITIONS`,
    /// `DELIVERY_LIMIT`, `QUEUE_MAX_LENGTH`).
    pub fn from_config(config: &crate::Config) -> Self {
        Self::new(
            &config.broker_namespace,
            config.order_partitions,
            config.delivery_limit,
            config.queue_max_length,
        )
    }

    /// Number of partition queues.
    pub fn partitions(&self) -> u16 {
        self.partitions
    }

    /// The direct exchange orders are published to.
    pub fn orders_exchange(&self) -> String {
        format!("{}.orders", self.namespace)
    }

    /// The queue of partition `p`.
    pub fn partition_queue(&self, p: u16) -> String {
        format!("{}.orders.{p}", self.namespace)
    }

    /// The routing key of partition `p`.
    pub fn routing_key(p: u16) -> String {
        p.to_string()
    }

    /// Where messages past their delivery limit (or rejected) go.
    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.orders.dlx", self.namespace)
    }

    /// The queue of dead-lettered order messages.
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.orders.dead", self.namespace)
    }

    /// The fanout exchange for decision announcements.
    pub fn decisions_exchange(&self) -> String {
        format!("{}.decisions", self.namespace)
    }

    /// Declares everything, idempotently. Refuses when the broker already has
    /// a different number of partition queues in this namespace.
    pub async fn declare(&self, conn: &Connection) -> Result<(), BrokerError> {
        self.check_partition_count(conn).await?;
        let ch = conn.create_channel().await?;
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.exchange_declare(
            self.orders_exchange().into(),
            ExchangeKind::Direct,
            durable,
            FieldTable::default(),
        )
        .await?;
        ch.exchange_declare(
            self.dead_letter_exchange().into(),
            ExchangeKind::Fanout,
            durable,
            FieldTable::default(),
        )
        .await?;
        ch.exchange_declare(
            self.decisions_exchange().into(),
            ExchangeKind::Fanout,
            durable,
            FieldTable::default(),
        )
        .await?;
        let durable_queue = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let mut dead_args = FieldTable::default();
        dead_args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        ch.queue_declare(self.dead_letter_queue().into(), durable_queue, dead_args)
            .await?;
        ch.queue_bind(
            self.dead_letter_queue().into(),
            self.dead_letter_exchange().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        // Highest first: queue 0 exists only once every other one does, so a
        // process starting alongside sees either no partition queues or all.
        let mut ch = ch;
        let mut older = false;
        for p in (0..self.partitions).rev() {
            let declared = ch
                .queue_declare(
                    self.partition_queue(p).into(),
                    durable_queue,
                    self.partition_arguments(),
                )
                .await;
            match declared {
                Ok(_) => {}
                // Declared with other arguments (an earlier version without
                // the length limit, or another QUEUE_MAX_LENGTH or
                // DELIVERY_LIMIT): use it as it is, and say so. The refusal
                // closed the channel.
                Err(e) if e.to_string().contains("PRECONDITION_FAILED") => {
                    older = true;
                    ch = conn.create_channel().await?;
                    let passive = QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    };
                    ch.queue_declare(
                        self.partition_queue(p).into(),
                        passive,
                        FieldTable::default(),
                    )
                    .await?;
                }
                Err(e) => return Err(e.into()),
            }
            ch.queue_bind(
                self.partition_queue(p).into(),
                self.orders_exchange().into(),
                Self::routing_key(p).into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        }
        if older {
            tracing::warn!(
                namespace = %self.namespace,
                "the partition queues were declared with other arguments (an earlier version, or another \
                 QUEUE_MAX_LENGTH or DELIVERY_LIMIT); using them as they are: delete the queues while \
                 they are empty, or set a broker policy, to change them"
            );
        }
        let _ = ch.close(200, "declared".into()).await;
        Ok(())
    }

    fn partition_arguments(&self) -> FieldTable {
        let mut args = self.partition_arguments_before_length_limit();
        args.insert(
            "x-max-length".into(),
            AMQPValue::LongInt(self.max_length.min(i32::MAX as u32) as i32),
        );
        args
    }

    /// The arguments earlier versions declared partition queues with.
    fn partition_arguments_before_length_limit(&self) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongInt(self.delivery_limit as i32),
        );
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(self.dead_letter_exchange().into()),
        );
        args.insert(
            "x-dead-letter-strategy".into(),
            AMQPValue::LongString("at-least-once".into()),
        );
        // at-least-once dead-lettering requires reject-publish overflow; a
        // publish past the length limit is nacked, and the api sheds it.
        args.insert(
            "x-overflow".into(),
            AMQPValue::LongString("reject-publish".into()),
        );
        args
    }

    /// Partition queues are numbered `0..n` and declared from the highest
    /// down: queue `n` must not exist, and when queue `0` exists (a finished
    /// declaration), queue `n-1` must too.
    async fn check_partition_count(&self, conn: &Connection) -> Result<(), BrokerError> {
        let n = self.partitions;
        let mismatch = |declared: String| BrokerError::PartitionMismatch {
            namespace: self.namespace.clone(),
            configured: n,
            declared,
        };
        if queue_exists(conn, &self.partition_queue(n)).await? {
            return Err(mismatch(format!("more than {n}")));
        }
        if queue_exists(conn, &self.partition_queue(0)).await?
            && !queue_exists(conn, &self.partition_queue(n - 1)).await?
        {
            return Err(mismatch(format!("fewer than {n}")));
        }
        Ok(())
    }
}

/// Whether `queue` exists, by a passive declare on a throwaway channel (a
/// missing queue closes the channel it was asked on).
async fn queue_exists(conn: &Connection, queue: &str) -> Result<bool, BrokerError> {
    let ch = conn.create_channel().await?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    match ch
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
    {
        Ok(_) => {
            let _ = ch.close(200, "checked".into()).await;
            Ok(true)
        }
        Err(e) if is_not_found(&e) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

fn is_not_found(e: &lapin::Error) -> bool {
    e.to_string().contains("NOT_FOUND") || e.to_string().contains("404")
}

/// Opens one connection to the broker, named so operators can tell
/// processes apart in the management UI.
pub async fn connect(url: &str, name: &str) -> Result<Connection, lapin::Error> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    Connection::connect(url, props).await
}

/// Keeps one broker connection alive: connects, declares the topology,
/// publishes the live connection on a watch channel, and reconnects with
/// exponential backoff and jitter whenever it drops.
#[derive(Clone)]
pub struct BrokerLink {
    current: watch::Receiver<Option<Arc<Connection>>>,
}

impl BrokerLink {
    /// Connects once and declares the topology, so a process can refuse to
    /// start on a partition mismatch; then keeps the connection alive in the
    /// background until `shutdown` fires. When the broker does not answer at
    /// start, the link starts disconnected and keeps trying.
    pub async fn start(
        url: String,
        name: String,
        topology: Topology,
        shutdown: CancellationToken,
    ) -> Result<Self, BrokerError> {
        let first = match open(&url, &name, &topology).await {
            Ok(conn) => Some(Arc::new(conn)),
            Err(e @ BrokerError::PartitionMismatch { .. }) => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "broker not reachable at start; will keep trying");
                None
            }
        };
        let (tx, rx) = watch::channel(first);
        tokio::spawn(supervise(url, name, topology, tx, shutdown));
        Ok(Self { current: rx })
    }

    /// The live connection, if there is one now.
    pub fn connection(&self) -> Option<Arc<Connection>> {
        self.current
            .borrow()
            .clone()
            .filter(|c| c.status().connected())
    }

    /// Whether the broker is reachable now.
    pub fn is_connected(&self) -> bool {
        self.connection().is_some()
    }

    /// Whether the broker has blocked this connection (a memory or disk
    /// alarm): publishes on it wait until the alarm clears.
    pub fn is_blocked(&self) -> bool {
        self.current
            .borrow()
            .as_ref()
            .is_some_and(|c| c.status().blocked())
    }

    /// A receiver that changes whenever the connection is replaced or lost.
    pub fn watch(&self) -> watch::Receiver<Option<Arc<Connection>>> {
        self.current.clone()
    }

    /// Waits until a live connection exists (or `shutdown` fires).
    pub async fn connected(&self, shutdown: &CancellationToken) -> Option<Arc<Connection>> {
        let mut rx = self.current.clone();
        loop {
            if let Some(conn) = rx.borrow_and_update().clone()
                && conn.status().connected()
            {
                return Some(conn);
            }
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                changed = rx.changed() => if changed.is_err() { return None },
                // The supervisor may not have noticed a drop yet.
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
        }
    }
}

async fn open(url: &str, name: &str, topology: &Topology) -> Result<Connection, BrokerError> {
    let conn = connect(url, name).await?;
    topology.declare(&conn).await?;
    Ok(conn)
}

async fn supervise(
    url: String,
    name: String,
    topology: Topology,
    tx: watch::Sender<Option<Arc<Connection>>>,
    shutdown: CancellationToken,
) {
    loop {
        // Wait while the current connection is healthy.
        let current = tx.borrow().clone();
        if let Some(conn) = current {
            let mut events = conn.events_listener();
            loop {
                if !conn.status().connected() {
                    break;
                }
                tokio::select! {
                    _ = shutdown.cancelled() => {
                        let _ = conn.close(200, "shutting down".into()).await;
                        return;
                    }
                    event = events.next() => match event {
                        None | Some(lapin::Event::Error(_)) => break,
                        Some(lapin::Event::ConnectionBlocked(reason)) => {
                            tracing::warn!(%reason, "the broker blocked this connection: publishes wait until its alarm clears");
                        }
                        Some(lapin::Event::ConnectionUnblocked) => {
                            tracing::info!("the broker unblocked this connection");
                        }
                        Some(_) => {}
                    },
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
            tracing::warn!("broker connection lost; reconnecting");
            tx.send_replace(None);
        }
        // Reconnect with exponential backoff and jitter.
        let mut delays = retry_policy().build();
        loop {
            match open(&url, &name, &topology).await {
                Ok(conn) => {
                    tracing::info!("broker connected");
                    tx.send_replace(Some(Arc::new(conn)));
                    break;
                }
                Err(e) => {
                    let delay = delays.next().unwrap_or(Duration::from_secs(5));
                    tracing::warn!(error = %e, ?delay, "broker connection failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }
}

/// The backoff used for every retry against the broker or the database:
/// 100 ms doubling to 5 s, with jitter, without end.
pub fn retry_policy() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
}

/// Opens a channel with publisher confirms on `conn`.
pub async fn confirm_channel(conn: &Connection) -> Result<Channel, lapin::Error> {
    let ch = conn.create_channel().await?;
    ch.confirm_select(Default::default()).await?;
    Ok(ch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_live_under_the_namespace() {
        let t = Topology::new("fs", 4, 10, 1000);
        assert_eq!(t.orders_exchange(), "fs.orders");
        assert_eq!(t.partition_queue(3), "fs.orders.3");
        assert_eq!(t.dead_letter_queue(), "fs.orders.dead");
        assert_eq!(t.decisions_exchange(), "fs.decisions");
    }
}
