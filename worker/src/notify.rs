//! Announcing committed decisions on the decisions fanout, over a broker
//! connection of its own.
//!
//! The consume loops must never wait on a publish: when RabbitMQ raises a
//! memory or disk alarm it blocks every connection that publishes, and a
//! blocked consuming connection could no longer ack, so the backlog that
//! caused the alarm would never drain. Notices are best effort (a waiting
//! request reads the order when its wait runs out), so a notice that cannot
//! go out within [`PUBLISH_TIMEOUT`] is dropped and counted.
//!
//! The consume loops hand their notices to one publishing task, which sends
//! whatever has queued up meanwhile as one message: with many partitions
//! deciding at once, one message per round instead of one per partition.

use crate::metrics::Metrics;
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel};
use shared::broker::{BrokerLink, Topology};
use shared::message::DecisionNotice;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Longest a notice may wait to be handed to the broker.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(1);
/// Notices waiting for the publishing task, at most; past that a notice is
/// dropped and counted (a waiting request then reads its order).
const QUEUED_NOTICES: usize = 256;
/// Most decisions one message carries (a round's notices are split past it).
const MAX_DECISIONS: usize = 2_000;

/// Hands decision notices to the publishing task. Cheap to clone.
#[derive(Clone)]
pub struct Notifier {
    notices: mpsc::Sender<DecisionNotice>,
    metrics: Arc<Metrics>,
}

/// The publishing task's state.
struct Publisher {
    link: BrokerLink,
    topology: Topology,
    metrics: Arc<Metrics>,
    channel: Option<Channel>,
}

impl Notifier {
    /// A notifier publishing over `link`, which must not be the consuming
    /// one. Its task ends when every `Notifier` is dropped.
    pub fn new(link: BrokerLink, topology: Topology, metrics: Arc<Metrics>) -> Self {
        let (notices, queued) = mpsc::channel(QUEUED_NOTICES);
        let publisher = Publisher {
            link,
            topology,
            metrics: metrics.clone(),
            channel: None,
        };
        tokio::spawn(publisher.run(queued));
        Self { notices, metrics }
    }

    /// Queues `notice` for announcing, best effort: it is dropped (and
    /// counted) when the queue is full.
    pub fn announce(&self, notice: DecisionNotice) {
        if notice.decisions.is_empty() && notice.sold_out.is_empty() {
            return;
        }
        if self.notices.try_send(notice).is_err() {
            Metrics::inc(&self.metrics.notices_dropped);
        }
    }
}

impl Publisher {
    async fn run(mut self, mut queued: mpsc::Receiver<DecisionNotice>) {
        let mut taken = Vec::with_capacity(QUEUED_NOTICES);
        while queued.recv_many(&mut taken, QUEUED_NOTICES).await > 0 {
            let mut round = DecisionNotice::default();
            for notice in taken.drain(..) {
                if round.decisions.len() + notice.decisions.len() > MAX_DECISIONS
                    && !round.decisions.is_empty()
                {
                    self.announce(std::mem::take(&mut round)).await;
                }
                round.decisions.extend(notice.decisions);
                round.sold_out.extend(notice.sold_out);
            }
            self.announce(round).await;
        }
    }

    /// Announces `notice`, best effort, waiting at most [`PUBLISH_TIMEOUT`].
    async fn announce(&mut self, mut notice: DecisionNotice) {
        if notice.decisions.is_empty() && notice.sold_out.is_empty() {
            return;
        }
        notice.sold_out.sort_unstable();
        notice.sold_out.dedup();
        if self.link.is_blocked() {
            // The broker would hold the publish until its alarm clears: do
            // not slow the consumers down waiting for it.
            Metrics::inc(&self.metrics.notices_dropped);
            return;
        }
        let payload = serde_json::to_vec(&notice).expect("a notice serializes");
        match tokio::time::timeout(PUBLISH_TIMEOUT, self.publish(&payload)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                Metrics::inc(&self.metrics.notices_dropped);
                self.channel = None;
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

    async fn publish(&mut self, payload: &[u8]) -> Result<(), lapin::Error> {
        let channel = match self.channel.as_ref() {
            Some(ch) if ch.status().connected() => ch.clone(),
            _ => {
                let Some(conn) = self.link.connection() else {
                    return Err(lapin::ErrorKind::InvalidConnectionState(
                        lapin::ConnectionState::Closed,
                    )
                    .into());
                };
                let ch = conn.create_channel().await?;
                self.channel = Some(ch.clone());
                ch
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
