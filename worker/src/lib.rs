//! The flashstock worker: decides orders partition by partition.
//!
//! - [`decide`]: the core, `decide_batch`, a plain function over a transaction.
//! - [`consume`]: the loops that receive, decide, commit, ack and announce.
//! - [`decider`]: several partitions' batches decided in one transaction.
//! - [`ownership`]: partition leases across workers (heartbeat, rendezvous, fencing).
//! - [`notify`]: decision notices, published over a connection of their own.
//! - [`metrics`]: counters and histograms served at `/metrics`.
//! - [`sweep`]: expiry of accepted orders nobody paid in time.
//! - [`events`]: the events outbox published to the events stream (one worker at a time).
//! - [`webhooks`]: the events POSTed to the configured webhook endpoints.
//! - [`lock`]: a job one worker at a time does (a named lock in the database).
//! - [`tail`]: `worker events`, order events printed for operators.
//! - [`Worker`]: builds everything from the configuration and runs it.

pub mod backlog;
pub mod consume;
pub mod decide;
pub mod decider;
pub mod events;
pub mod lock;
pub mod metrics;
pub mod notify;
pub mod ownership;
pub mod sweep;
pub mod tail;
pub mod webhooks;

use consume::Context;
use shared::Config;
use shared::broker::{BrokerLink, Topology};
use std::sync::Arc;
use tokio::net::TcpListener;

/// Most connections the `/metrics` listener holds.
const METRICS_CONNECTIONS: usize = 64;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// A worker, connected and ready to consume.
pub struct Worker {
    ctx: Arc<Context>,
    /// Publishes the events outbox (when `ORDER_EVENTS` is on).
    events: Option<events::Publisher>,
    /// Delivers events to the webhook endpoints (when there are any).
    webhooks: Option<webhooks::Deliveries>,
    metrics_listener: TcpListener,
    shutdown: CancellationToken,
}

impl Worker {
    /// Connects to the database (creating and migrating it) and the broker
    /// (declaring the topology; refusing on a partition mismatch).
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let shutdown = CancellationToken::new();
        let db = shared::db::connect(&config).await?;
        let topology = Topology::from_config(&config);
        let worker_id = format!(
            "worker-{}-{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let link = BrokerLink::start(
            config.amqp_url.clone(),
            format!("flashstock {worker_id}"),
            topology.clone(),
            shutdown.clone(),
        )
        .await?;
        // Publishing on a connection of its own: a broker alarm blocks
        // publishing connections, and must not stop the consumers' acks.
        let notify_link = BrokerLink::start(
            config.amqp_url.clone(),
            format!("flashstock {worker_id} notices"),
            topology.clone(),
            shutdown.clone(),
        )
        .await?;
        let metrics: Arc<metrics::Metrics> = Arc::default();
        metrics.events_enabled.store(
            u64::from(config.order_events),
            std::sync::atomic::Ordering::Relaxed,
        );
        metrics.partition_count.store(
            u64::from(topology.partitions()),
            std::sync::atomic::Ordering::Relaxed,
        );
        let addr = config.worker_metrics_addr;
        let metrics_listener = TcpListener::bind(addr).await.map_err(|e| {
            anyhow::anyhow!(
                "cannot serve /metrics on {addr} (WORKER_METRICS_ADDR): {e}; give each worker on \
                 this host its own WORKER_METRICS_ADDR, such as 127.0.0.1:0 for any free port"
            )
        })?;
        let topology_for_notices = topology.clone();
        let webhooks = (!config.webhooks.is_empty()).then(|| webhooks::Deliveries {
            db: db.clone(),
            link: link.clone(),
            topology: topology.clone(),
            endpoints: config.webhooks.clone(),
            metrics: metrics.clone(),
        });
        let events = config.order_events.then(|| events::Publisher {
            db: db.clone(),
            link: notify_link.clone(),
            topology: topology.clone(),
            metrics: metrics.clone(),
        });
        let decider = decider::Decider::start(
            db.clone(),
            decide::Terms {
                reservation_ttl: config.reservation_ttl,
                events: config.order_events,
            },
        );
        Ok(Self {
            events,
            webhooks,
            ctx: Arc::new(Context {
                db,
                link,
                topology,
                config: Arc::new(config),
                worker_id,
                notifier: notify::Notifier::new(notify_link, topology_for_notices, metrics.clone()),
                decider,
                metrics,
            }),
            metrics_listener,
            shutdown,
        })
    }

    /// The port `/metrics` is served on.
    pub fn metrics_port(&self) -> u16 {
        self.metrics_listener
            .local_addr()
            .map(|a| a.port())
            .unwrap_or(0)
    }

    /// This worker's id.
    pub fn id(&self) -> &str {
        &self.ctx.worker_id
    }

    /// Consumes the partitions it holds leases for, the dead-letter queue, and
    /// sweeps expired reservations until `stop` fires; then each consumer
    /// finishes, commits and acks its batch in hand, and the leases are released.
    pub async fn run_until_stopped(self, stop: CancellationToken) {
        let mut tasks = JoinSet::new();
        tasks.spawn(ownership::run_coordinator(self.ctx.clone(), stop.clone()));
        tasks.spawn(consume::run_dead_letters(self.ctx.clone(), stop.clone()));
        tasks.spawn(backlog::run_backlog(self.ctx.clone(), stop.clone()));
        if let Some(events) = self.events {
            tasks.spawn(events.run(stop.clone()));
        }
        if let Some(webhooks) = self.webhooks {
            tasks.spawn(webhooks.run(stop.clone()));
        }
        tasks.spawn(sweep::run_sweeper(
            self.ctx.db.clone(),
            self.ctx.config.sweep_interval,
            self.ctx.config.order_events,
            self.ctx.metrics.clone(),
            stop.clone(),
        ));
        let metrics = self.ctx.metrics.clone();
        let router = axum::Router::new()
            .route(
                "/metrics",
                axum::routing::get(move || async move {
                    (
                        [("content-type", "text/plain; version=0.0.4")],
                        metrics.render(),
                    )
                }),
            )
            .layer(axum::middleware::from_fn(shared::http::busy_while_handled));
        // The api's accept loop: no idle or silent client can hold it (or
        // the worker's file descriptors); Prometheus needs one connection.
        let limits = shared::http::serve::Limits {
            header_read_timeout: self.ctx.config.header_read_timeout,
            max_connections: METRICS_CONNECTIONS,
        };
        let metrics_server = tokio::spawn(shared::http::serve(
            self.metrics_listener,
            router,
            limits,
            Arc::default(),
            stop.clone(),
        ));
        while tasks.join_next().await.is_some() {}
        let _ = metrics_server.await;
        self.shutdown.cancel();
        self.ctx.db.close().await;
    }
}
