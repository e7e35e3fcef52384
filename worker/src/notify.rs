//! Announcing committed decisions on the decisions fanout, over a broker
//! connection of its own.
//!
//! The consume loops must never wait on a publish: when RabbitMQ raises a
//! memory or disk alarm it blocks every connection that publishes, and a
//! blocked consuming connection could no longer ack, so the backlog that
//! caused the alarm would never drain. Notices are best effort (a waiting
//! request reads the order when its wait runs out), so a notice that cannot
//! go out within [`PUBLISH_TIMEOUT`] is dropped and counted.

use crate::metrics::Metrics;
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel};
use shared::broker::{BrokerLink, Topology};
use shared::message::DecisionNotice;
use std::sync::Arc;
use std::time::Duration;

/// Longest a notice may wait to be handed to the broker.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(1);

/// Publishes decision notices. Cheap to clone.
#[derive(Clone)]
pub struct Notifier {
    link: BrokerLink,
    topology: Topology,
    metrics: Arc<Metrics>,
    channel: Arc<tokio::sync::Mutex<Option<Channel>>>,
}

impl Notifier {
    /// A notifier publishing over `link`, which must not be the consuming one.
    pub fn new(link: BrokerLink, topology: Topology, metrics: Arc<Metrics>) -> Self {
        Self {
            link,
            topology,
            metrics,
            channel: Arc::default(),
        }
    }

    /// Announces `notice`, best effort, waiting at most [`PUBLISH_TIMEOUT`].
    pub async fn announce(&self, notice: &DecisionNotice) {
        if notice.decisions.is_empty() && notice.sold_out.is_empty() {
            return;
        }
        if self.link.is_blocked() {
            // The broker would hold the publish until its alarm clears: do
            // not slow the consumers down waiting for it.
            Metrics::inc(&self.metrics.notices_dropped);
            return;
        }
        let payload = serde_json::to_vec(notice).expect("a notice serializes");
        match tokio::time::timeout(PUBLISH_TIMEOUT, self.publish(&payload)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                Metrics::inc(&self.metrics.notices_dropped);
                *self.channel.lock().await = None;
                tracing::warn!(error = %e, "could not announce decisions");
            }
            Err(_) => {
                Metrics::inc(&self.metrics.notices_dropped);
                tracing::warn!(
                    blocked = self.link.is_blocked(),
                    "announcing decisions timed out; waiting requests will read their orders"
                );
            }
        }
    }

    async fn publish(&self, payload: &[u8]) -> Result<(), lapin::Error> {
        let channel = {
            let mut slot = self.channel.lock().await;
            match slot.as_ref() {
                Some(ch) if ch.status().connected() => ch.clone(),
                _ => {
                    let Some(conn) = self.link.connection() else {
                        return Err(lapin::ErrorKind::InvalidConnectionState(
                            lapin::ConnectionState::Closed,
                        )
                        .into());
                    };
                    let ch = conn.create_channel().await?;
                    *slot = Some(ch.clone());
                    ch
                }
            }
        };
        channel
            .basic_publish(
                self.topology.decisions_exchange().into(),
                "".into(),
                BasicPublishOptions::default(),
                payload,
                BasicProperties::default().with_content_type("application/json".into()),
            )
            .await
            .map(drop)
    }
}
