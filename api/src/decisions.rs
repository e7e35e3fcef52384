//! Hearing the workers' decision notices: wakes the requests waiting on
//! them, frees their admission, and notes sold-out products.

use crate::admission::Admission;
use crate::metrics::Metrics;
use crate::sold_out::SoldOut;
use crate::waiters::Waiters;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
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

/// Most notices an api's queue holds while the api falls behind; past it
/// the oldest are dropped (waiting requests then read their orders, and the
/// reconciler finds what admission missed).
pub const NOTICE_QUEUE_MAX: u32 = 10_000;
/// The same bound in bytes (a notice carries up to a batch of decisions).
pub const NOTICE_QUEUE_MAX_BYTES: u32 = 64 * 1024 * 1024;
/// Notices delivered to the api and not yet acknowledged: all it buffers.
const PREFETCH: u16 = 64;
/// Longest a handled notice waits for its acknowledgement.
const ACK_DELAY: Duration = Duration::from_millis(20);

/// Listens on the decisions fanout through `{namespace}.decisions.{api_id}`
/// and hands each notice to `listeners`; re-subscribes after every
/// reconnection.
pub async fn run_decision_listener(
    link: BrokerLink,
    topology: Topology,
    api_id: String,
    listeners: Listeners,
    shutdown: CancellationToken,
) {
    let queue = format!("{}.{api_id}", topology.decisions_exchange());
    listen(link, topology, queue, |n| listeners.hear(n), shutdown).await
}

/// Listens on the decisions fanout through `{queue}.{n}`, the `n`-th
/// subscription's queue (exclusive to this api's broker connection, deleted
/// with it) and calls `hear` with each notice, until
/// `shutdown`; re-subscribes after every reconnection.
///
/// Bounded at both ends: the queue holds at most [`NOTICE_QUEUE_MAX`]
/// notices (dropping the oldest), and the broker delivers at most
/// [`PREFETCH`] unacknowledged ones, so an api that falls behind never
/// buffers more than that in memory (with automatic acks the broker would
/// push everything, and the client would buffer it all).
pub async fn listen(
    link: BrokerLink,
    topology: Topology,
    queue: String,
    mut hear: impl FnMut(&DecisionNotice),
    shutdown: CancellationToken,
) {
    let mut subscriptions = 0u64;
    while let Some(conn) = link.connected(&shutdown).await {
        // Exclusive: this connection's own, deleted with it (RabbitMQ 4
        // refuses transient queues that are not), and named for it: a
        // half-open earlier connection the broker has not dropped yet still
        // holds the earlier name.
        subscriptions += 1;
        let name = format!("{queue}.{subscriptions}");
        let subscribed = async {
            let ch = conn.create_channel().await?;
            let mut arguments = FieldTable::default();
            arguments.insert("x-max-length".into(), AMQPValue::LongUInt(NOTICE_QUEUE_MAX));
            arguments.insert(
                "x-max-length-bytes".into(),
                AMQPValue::LongUInt(NOTICE_QUEUE_MAX_BYTES),
            );
            arguments.insert(
                "x-overflow".into(),
                AMQPValue::LongString("drop-head".into()),
            );
            ch.queue_declare(
                name.as_str().into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                arguments,
            )
            .await?;
            ch.queue_bind(
                name.as_str().into(),
                topology.decisions_exchange().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
            ch.basic_qos(PREFETCH, BasicQosOptions::default()).await?;
            let consumer = ch
                .basic_consume(
                    name.as_str().into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            Ok::<_, lapin::Error>((ch, consumer))
        };
        let (ch, mut consumer) = match subscribed.await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "could not subscribe to decisions");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        // Handled notices are acknowledged together (one multiple-ack),
        // once half the prefetch is handled or ACK_DELAY has passed: an
        // ack is work for the broker too.
        let mut unacked: Option<(u64, tokio::time::Instant)> = None;
        let mut handled = 0u16;
        loop {
            let due = async {
                match unacked {
                    Some((_, due)) => tokio::time::sleep_until(due).await,
                    None => std::future::pending().await,
                }
            };
            let delivery = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = due => None,
                delivery = consumer.next() => match delivery {
                    Some(Ok(d)) => Some(d),
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "the decision listener's channel failed; subscribing again");
                        break;
                    }
                    None => break,
                },
            };
            if let Some(d) = delivery {
                match serde_json::from_slice::<DecisionNotice>(&d.data) {
                    Ok(notice) => hear(&notice),
                    Err(e) => tracing::warn!(error = %e, "ignoring a malformed decision notice"),
                }
                let due =
                    unacked.map_or_else(|| tokio::time::Instant::now() + ACK_DELAY, |(_, due)| due);
                unacked = Some((d.delivery_tag, due));
                handled += 1;
                if handled < PREFETCH / 2 {
                    continue;
                }
            }
            if let Some((tag, _)) = unacked.take() {
                handled = 0;
                if ch
                    .basic_ack(tag, BasicAckOptions { multiple: true })
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }
    }
}
