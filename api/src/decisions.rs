//! Hearing the workers' decision notices: wakes the requests waiting on
//! them, frees their admission, and notes sold-out products.

use crate::admission::Admission;
use crate::metrics::Metrics;
use crate::sold_out::SoldOut;
use crate::waiters::Waiters;
use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use shared::broker::{BrokerLink, Topology};
use shared::domain::OrderId;
use shared::message::DecisionNotice;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Where a notice goes.
#[derive(Clone)]
pub struct Listeners {
    /// Requests waiting with `Prefer: wait`.
    pub waiters: Waiters,
    /// The sold-out hint.
    pub sold_out: SoldOut,
    /// Admission control's count of undecided orders.
    pub admission: Admission,
    /// Counters.
    pub metrics: Arc<Metrics>,
}

impl Listeners {
    fn hear(&self, notice: &DecisionNotice) {
        self.sold_out.mark(&notice.sold_out);
        let ids: Vec<OrderId> = notice.decisions.iter().map(|d| d.order_id).collect();
        self.admission.decided(&ids);
        self.waiters.notify(notice, &self.metrics);
    }
}

/// Listens on the decisions fanout through a private, auto-deleted queue
/// and hands each notice to `listeners`; re-subscribes after every
/// reconnection.
pub async fn run_decision_listener(
    link: BrokerLink,
    topology: Topology,
    listeners: Listeners,
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
                        Ok(notice) => listeners.hear(&notice),
                        Err(e) => tracing::warn!(error = %e, "ignoring a malformed decision notice"),
                    },
                    _ => break,
                },
            }
        }
    }
}
