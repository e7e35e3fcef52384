//! RabbitMQ: names, topology, and a link that keeps one connection alive.
//!
//! Topology (every name under `BROKER_NAMESPACE`, written `{ns}` here):
//! - `{ns}.orders`: direct exchange; routing key = partition number.
//! - `{ns}.orders.{p}` for `p` in `0..ORDER_PARTITIONS`: durable quorum
//!   queues with single-active-consumer, a delivery limit and at-least-once
//!   dead-lettering to `{ns}.orders.dlx`.
//! - `{ns}.orders.dlx`: fanout exchange feeding the quorum queue `{ns}.orders.dead`.
//! - `{ns}.decisions`: fanout exchange on which workers announce decisions.
//!
//! `AMQP_URL` may name several nodes of one cluster ([`Addresses`]); the
//! link connects to the first that answers and, when it loses a node, to
//! the others first.

use backon::{BackoffBuilder, ExponentialBuilder};
use futures::StreamExt;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::uri::AMQPUri;
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
    /// `AMQP_URL` does not parse.
    #[error("AMQP_URL: {0}")]
    Address(String),
    /// No listed node answered in time.
    #[error("broker: {address} did not answer within {timeout:?}")]
    Timeout {
        /// The node tried (host and port, no credentials).
        address: String,
        /// How long it was given.
        timeout: Duration,
    },
    /// Any AMQP failure.
    #[error("broker: {0}")]
    Amqp(#[from] lapin::Error),
}

/// The nodes `AMQP_URL` names: one URL, or several separated by commas (the
/// nodes of one cluster). An entry without a scheme is `host[:port]` and
/// takes everything else (credentials, virtual host, options) from the
/// first entry, so `amqp://u:p@rabbit1:5672/%2f,rabbit2,rabbit3:5673`
/// names three nodes. Parsed once at start: one entry per listed node, and
/// nothing is ever added.
#[derive(Clone)]
pub struct Addresses(Vec<AMQPUri>);

impl Addresses {
    /// Parses `AMQP_URL`. Errors name entries by position and never repeat
    /// what was given, which may hold a password.
    pub fn parse(value: &str) -> Result<Self, String> {
        const COMMA: &str = "(a comma inside a password or virtual host is written %2C)";
        let mut uris: Vec<AMQPUri> = Vec::new();
        for (i, entry) in value.split(',').map(str::trim).enumerate() {
            let n = i + 1;
            if entry.is_empty() {
                return Err(format!(
                    "entry {n} is empty: separate the nodes with single commas {COMMA}"
                ));
            }
            // The URL parser reads an IPv6 literal as no host at all (then
            // connects to localhost), and drops tabs and line breaks
            // anywhere: refuse both, in either form of entry.
            if entry.contains('[') || entry.chars().any(char::is_control) {
                return Err(format!(
                    "entry {n}: IPv6 addresses and control characters are not supported; \
                     use a host name"
                ));
            }
            let uri = match uris.first() {
                Some(first) if !entry.contains("://") => {
                    let bare = |why: &str| {
                        format!("entry {n} is not host[:port] or an amqp:// URL: {why} {COMMA}")
                    };
                    if entry.contains(['/', '@', '?', ']', ' ']) {
                        return Err(bare(
                            "a bare entry is a host name or IPv4 address and a port",
                        ));
                    }
                    let (host, port) = match entry.split_once(':') {
                        Some((host, port)) => (
                            host,
                            port.parse::<u16>()
                                .ok()
                                .filter(|p| *p > 0)
                                .ok_or_else(|| bare("the port is not a number from 1 to 65535"))?,
                        ),
                        None => (entry, first.scheme.default_port()),
                    };
                    if host.is_empty() {
                        return Err(bare("the host is missing"));
                    }
                    let mut uri = first.clone();
                    uri.authority.host = host.to_owned();
                    uri.authority.port = port;
                    uri
                }
                _ => {
                    entry.parse::<AMQPUri>().map_err(|e| {
                        // Only the parser's own "Invalid URL: '<input>'" repeats the
                        // input; drop it by its prefix too, should its quoting change.
                        let why = if e.contains(entry) || e.starts_with("Invalid URL") {
                            "not a URL".to_owned()
                        } else {
                            e
                        };
                        format!("entry {n} is not an amqp:// or amqps:// URL: {why} {COMMA}")
                    })?
                }
            };
            uris.push(uri);
        }
        Ok(Self(uris))
    }

    /// How many nodes are listed.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Never: parsing refuses an empty list.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Node `i`'s host and port, without credentials, for logs.
    pub fn describe(&self, i: usize) -> String {
        let a = &self.0[i].authority;
        format!("{}:{}", a.host, a.port)
    }
}

impl std::fmt::Debug for Addresses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries((0..self.len()).map(|i| self.describe(i)))
            .finish()
    }
}

/// The names of everything this deployment declares on the broker.
#[derive(Debug, Clone)]
pub struct Topology {
    namespace: String,
    partitions: u16,
    delivery_limit: u32,
    max_length: u32,
    quorum_group_size: Option<u16>,
    events: EventsRetention,
}

/// How long and how large the events stream may grow.
#[derive(Debug, Clone, Copy)]
pub struct EventsRetention {
    /// Events older than this are dropped (a segment at a time).
    pub max_age: Duration,
    /// Past this size the oldest segments are dropped.
    pub max_bytes: u64,
}

impl Default for EventsRetention {
    fn default() -> Self {
        Self {
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_bytes: 2_000_000_000,
        }
    }
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
            quorum_group_size: None,
            events: EventsRetention::default(),
        }
    }

    /// Declares a new events stream with `retention`.
    pub fn with_events_retention(mut self, retention: EventsRetention) -> Self {
        self.events = retention;
        self
    }

    /// Declares new partition and dead-letter queues with `size` replicas
    /// (`x-quorum-initial-group-size`); `None` leaves it to the broker,
    /// whose default is every node of the cluster up to 3.
    pub fn with_quorum_group_size(mut self, size: Option<u16>) -> Self {
        self.quorum_group_size = size;
        self
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
        .with_quorum_group_size(config.quorum_initial_group_size)
        .with_events_retention(EventsRetention {
            max_age: config.events_max_age,
            max_bytes: config.events_max_bytes,
        })
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

    /// The stream of order events.
    pub fn events_stream(&self) -> String {
        format!("{}.events", self.namespace)
    }

    /// The deployment's name, which every name above starts with.
    pub fn namespace(&self) -> &str {
        &self.namespace
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
        let mut dead_args = FieldTable::default();
        dead_args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        self.add_group_size(&mut dead_args);
        let (mut ch, mut older) =
            declare_queue(conn, ch, &self.dead_letter_queue(), dead_args).await?;
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
        for p in (0..self.partitions).rev() {
            let other;
            (ch, other) = declare_queue(
                conn,
                ch,
                &self.partition_queue(p),
                self.partition_arguments(),
            )
            .await?;
            older |= other;
            ch.queue_bind(
                self.partition_queue(p).into(),
                self.orders_exchange().into(),
                Self::routing_key(p).into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        }
        let other;
        (ch, other) =
            declare_queue(conn, ch, &self.events_stream(), self.events_arguments()).await?;
        older |= other;
        if older {
            tracing::warn!(
                namespace = %self.namespace,
                "queues were declared with other arguments (an earlier version, or another \
                 QUEUE_MAX_LENGTH, DELIVERY_LIMIT or QUORUM_INITIAL_GROUP_SIZE); using them as they \
                 are: delete the queues while they are empty, or set a broker policy, to change them"
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
        self.add_group_size(&mut args);
        args
    }

    /// A stream, its retention bounded by age and size; replicated on as
    /// many nodes as the quorum queues.
    fn events_arguments(&self) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("stream".into()),
        );
        args.insert(
            "x-max-age".into(),
            AMQPValue::LongString(format!("{}s", self.events.max_age.as_secs().max(1)).into()),
        );
        let bytes = self.events.max_bytes.min(i64::MAX as u64);
        args.insert(
            "x-max-length-bytes".into(),
            AMQPValue::LongLongInt(bytes as i64),
        );
        // Retention drops whole segments: several per stream, so it keeps
        // close to the limit.
        let segment = (bytes / 8).clamp(100_000, 500_000_000);
        args.insert(
            "x-stream-max-segment-size-bytes".into(),
            AMQPValue::LongLongInt(segment as i64),
        );
        if let Some(size) = self.quorum_group_size {
            args.insert(
                "x-initial-cluster-size".into(),
                AMQPValue::LongInt(size.into()),
            );
        }
        args
    }

    fn add_group_size(&self, args: &mut FieldTable) {
        if let Some(size) = self.quorum_group_size {
            args.insert(
                "x-quorum-initial-group-size".into(),
                AMQPValue::LongInt(size.into()),
            );
        }
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

/// Declares the durable `queue` with `args` on `ch`. When it exists with
/// other arguments (an earlier version without the length limit, or another
/// QUEUE_MAX_LENGTH, DELIVERY_LIMIT or QUORUM_INITIAL_GROUP_SIZE), uses it as
/// it is: the refusal closed `ch`, so the channel to go on with is returned,
/// with whether that happened.
async fn declare_queue(
    conn: &Connection,
    ch: Channel,
    queue: &str,
    args: FieldTable,
) -> Result<(Channel, bool), BrokerError> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    match ch.queue_declare(queue.into(), durable, args).await {
        Ok(_) => Ok((ch, false)),
        Err(e) if e.to_string().contains("PRECONDITION_FAILED") => {
            let ch = conn.create_channel().await?;
            let passive = QueueDeclareOptions {
                passive: true,
                ..Default::default()
            };
            ch.queue_declare(queue.into(), passive, FieldTable::default())
                .await?;
            Ok((ch, true))
        }
        Err(e) => Err(e.into()),
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
        let addresses = Addresses::parse(&url).map_err(BrokerError::Address)?;
        let first = match open_any(&addresses, 0, &name, &topology).await {
            Ok((conn, node)) => Some((Arc::new(conn), node)),
            Err(e @ BrokerError::PartitionMismatch { .. }) => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "broker not reachable at start; will keep trying");
                None
            }
        };
        let node = first.as_ref().map_or(0, |(_, node)| *node);
        let (tx, rx) = watch::channel(first.map(|(conn, _)| conn));
        tokio::spawn(supervise(addresses, node, name, topology, tx, shutdown));
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

/// How long one node may take to accept a connection (TCP, TLS and the
/// AMQP handshake) before the next is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long declaring the topology on a node may take: quorum queues are
/// declared one by one, so it grows with the partition count.
fn declare_timeout(topology: &Topology) -> Duration {
    Duration::from_secs(30) + Duration::from_millis(50) * u32::from(topology.partitions)
}

/// Connects to node `node` of `addresses` and declares the topology on it,
/// each step within its time limit.
async fn open_node(
    addresses: &Addresses,
    node: usize,
    name: &str,
    topology: &Topology,
) -> Result<Connection, BrokerError> {
    let timeout = |limit| BrokerError::Timeout {
        address: addresses.describe(node),
        timeout: limit,
    };
    let props = ConnectionProperties::default().with_connection_name(name.into());
    let connecting = Connection::connect_uri(addresses.0[node].clone(), props);
    let conn = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| timeout(CONNECT_TIMEOUT))??;
    let limit = declare_timeout(topology);
    let declared = tokio::time::timeout(limit, topology.declare(&conn))
        .await
        .unwrap_or_else(|_| Err(timeout(limit)));
    if let Err(e) = declared {
        let close = conn.close(200, "topology not declared".into());
        let _ = tokio::time::timeout(Duration::from_secs(1), close).await;
        return Err(e);
    }
    Ok(conn)
}

/// Connects to one of `addresses`, trying them in turn from `start`, and
/// declares the topology; returns the connection and the index of its node.
async fn open_any(
    addresses: &Addresses,
    start: usize,
    name: &str,
    topology: &Topology,
) -> Result<(Connection, usize), BrokerError> {
    let mut last = None;
    for node in (0..addresses.len()).map(|i| (start + i) % addresses.len()) {
        match open_node(addresses, node, name, topology).await {
            Ok(conn) => {
                tracing::info!(node = %addresses.describe(node), "broker connected");
                return Ok((conn, node));
            }
            Err(e @ BrokerError::PartitionMismatch { .. }) => return Err(e),
            Err(e) => {
                if addresses.len() > 1 {
                    tracing::warn!(node = %addresses.describe(node), error = %e, "broker node did not answer");
                }
                last = Some(e);
            }
        }
    }
    Err(last.expect("Addresses is never empty"))
}

async fn supervise(
    addresses: Addresses,
    mut node: usize,
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
            tracing::warn!(node = %addresses.describe(node), "broker connection lost; reconnecting");
            tx.send_replace(None);
            // The other nodes first: the lost one is likely still down.
            node = (node + 1) % addresses.len();
        }
        // Reconnect with exponential backoff and jitter; each round tries
        // every listed node.
        let mut delays = retry_policy().build();
        loop {
            match open_any(&addresses, node, &name, &topology).await {
                Ok((conn, at)) => {
                    node = at;
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
        assert_eq!(t.events_stream(), "fs.events");
    }

    #[test]
    fn an_address_list_names_each_node_once() {
        let a =
            Addresses::parse("amqp://u:secret@rabbit1:5671/shop?heartbeat=5,rabbit2, rabbit3:5680")
                .unwrap();
        assert_eq!(a.len(), 3);
        assert_eq!(
            format!("{a:?}"),
            r#"["rabbit1:5671", "rabbit2:5672", "rabbit3:5680"]"#
        );
        // A bare node takes everything but its host and port from the first.
        let third = &a.0[2];
        assert_eq!(third.authority.userinfo.username, "u");
        assert_eq!(third.authority.userinfo.password, "secret");
        assert_eq!(third.vhost, "shop");
        assert_eq!(third.query.heartbeat, Some(5));
        let full = Addresses::parse("amqp://a:b@h1:1/%2f,amqp://c:d@h2:2/v").unwrap();
        assert_eq!(full.0[1].authority.userinfo.username, "c");
        assert_eq!(full.0[1].vhost, "v");
    }

    #[test]
    fn a_bad_address_is_refused_without_its_password() {
        for bad in [
            "",
            "amqp://u:hunter2@h/%2f,",
            "amqp://u:hunter2@h/%2f,h2:0",
            "amqp://u:hunter2@h/%2f,u:hunter2@h2",
            "amqp://u:hunter2@h/%2f,u:hunter2@h2:5672",
            "guest:hunter2@host:5672",
            "http://u:hunter2@h:5672/%2f",
            // A raw comma in the password splits the URL.
            "amqp://u:pa,hunter2@h/%2f",
            "amqp://u:hunter2,@h/%2f",
            // IPv6: the URL parser would quietly connect to localhost.
            "amqp://u:hunter2@[::1]:5672/%2f",
            "amqp://u:hunter2@\t[::1]:5672/%2f",
            "amqp://u:hunter2@h/%2f,[::1]:5672",
            "amqp://u:hunter2@h/%2f,::1",
        ] {
            let err = Addresses::parse(bad).expect_err(bad);
            assert!(!err.contains("hunter2"), "{bad:?}: {err}");
            assert!(err.starts_with("entry "), "{bad:?}: {err}");
        }
        // Written %2C, a comma belongs to the password.
        let a = Addresses::parse("amqp://u:pa%2Css@h/%2f,h2").unwrap();
        assert_eq!(a.0[1].authority.userinfo.password, "pa,ss");
    }
}
