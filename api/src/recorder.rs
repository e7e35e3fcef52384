//! Recording and publishing orders in batches: concurrent requests hand
//! their order to one background task, which writes everything that has
//! queued up meanwhile in a single transaction (one multi-row INSERT, one
//! commit), publishes it as one message per partition with confirms, and
//! answers each request. Under load this turns one commit and one message
//! per order into one of each per batch; alone, a request waits for nobody.

use crate::publisher::Publisher;
use shared::db::{self, orders::OrderRow};
use shared::domain::{OrderId, ProductId, Quantity};
use shared::message::OrderMessage;
use sqlx::MySqlPool;
use std::collections::HashSet;
use tokio::sync::{mpsc, oneshot};

/// Most orders one recording transaction takes.
const MAX_BATCH: usize = 500;

/// The recorded row, and whether its message was confirmed (if not, the
/// relay has it).
pub type Recorded = (OrderRow, bool);

type Reply = oneshot::Sender<Result<Recorded, sqlx::Error>>;

struct Job {
    order: (OrderId, ProductId, Quantity),
    reply: Reply,
}

/// Hands orders to the batching task. Cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    jobs: mpsc::Sender<Job>,
}

impl Recorder {
    /// Starts the batching task on `db` and `publisher`; it ends when every
    /// `Recorder` is dropped.
    pub fn start(db: MySqlPool, publisher: Publisher) -> Self {
        let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
        tokio::spawn(run(db, publisher, rx));
        Self { jobs: tx }
    }

    /// Records one PENDING order and publishes it; returns once it is
    /// committed and its message confirmed (or left to the relay).
    pub async fn record(
        &self,
        id: OrderId,
        product: ProductId,
        total: Quantity,
    ) -> Result<Recorded, sqlx::Error> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job {
                order: (id, product, total),
                reply,
            })
            .await
            .map_err(|_| sqlx::Error::PoolClosed)?;
        answer.await.map_err(|_| sqlx::Error::PoolClosed)?
    }
}

async fn run(db: MySqlPool, publisher: Publisher, mut jobs: mpsc::Receiver<Job>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while jobs.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let orders: Vec<_> = batch.iter().map(|j| j.order).collect();
        let mut rows = Vec::with_capacity(batch.len());
        match db::orders::insert_many(&db, &orders).await {
            Ok(recorded) => rows.extend(recorded.into_iter().map(Ok)),
            Err(e) if batch.len() == 1 => rows.push(Err(e)),
            // One bad order must not fail the others: record them one by one.
            Err(_) => {
                for (id, product, total) in &orders {
                    rows.push(db::orders::insert(&db, *id, *product, *total).await);
                }
            }
        }
        // Publish what was recorded, one message per partition.
        let messages: Vec<OrderMessage> = orders
            .iter()
            .zip(&rows)
            .filter(|(_, row)| row.is_ok())
            .map(|((id, product, total), _)| OrderMessage {
                order_id: *id,
                product_id: *product,
                total: *total,
            })
            .collect();
        let mut unconfirmed = HashSet::new();
        for (sent, result) in publisher.publish_all(messages).await {
            if let Err(e) = result {
                tracing::warn!(error = %e, orders = sent.len(), "orders recorded but not yet published; the relay has them");
                unconfirmed.extend(sent.iter().map(|o| o.order_id));
            }
        }
        for (job, row) in batch.drain(..).zip(rows) {
            let published = !unconfirmed.contains(&job.order.0);
            let _ = job.reply.send(row.map(|r| (r, published)));
        }
    }
}
