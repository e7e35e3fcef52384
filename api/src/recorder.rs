//! Recording and publishing orders in batches: concurrent requests hand
//! their order to one of two background loops, which writes everything that has
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
use std::sync::{Arc, RwLock};
use tokio::sync::{mpsc, oneshot};

/// Recording loops: while one waits on the database, the other records.
const LOOPS: usize = 2;
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

/// Products the workers reported sold out. Only a hint: for these the
/// recorder reads the stock before queueing, and an order for one that
/// still has nothing available is rejected on the spot; a product found
/// with stock again leaves the set.
#[derive(Clone, Default)]
pub struct SoldOut(Arc<RwLock<HashSet<ProductId>>>);

impl SoldOut {
    /// Notes products the workers found with nothing available.
    pub fn mark(&self, products: &[ProductId]) {
        if !products.is_empty() {
            self.0
                .write()
                .expect("sold-out lock")
                .extend(products.iter().copied());
        }
    }

    /// The hinted products among `products`, once each.
    fn among(&self, products: impl Iterator<Item = ProductId>) -> Vec<ProductId> {
        let hinted = self.0.read().expect("sold-out lock");
        if hinted.is_empty() {
            return Vec::new();
        }
        let mut found: Vec<ProductId> = products.filter(|p| hinted.contains(p)).collect();
        found.sort_unstable();
        found.dedup();
        found
    }

    /// Forgets products found with stock available.
    fn clear(&self, products: &[ProductId]) {
        if !products.is_empty() {
            let mut hinted = self.0.write().expect("sold-out lock");
            for p in products {
                hinted.remove(p);
            }
        }
    }
}

/// Hands orders to the batching task. Cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    jobs: mpsc::Sender<Job>,
}

impl Recorder {
    /// Starts the batching task on `db` and `publisher`; it ends when every
    /// `Recorder` is dropped.
    pub fn start(db: MySqlPool, publisher: Publisher, sold_out: SoldOut) -> Self {
        let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        for _ in 0..LOOPS {
            tokio::spawn(run(
                db.clone(),
                publisher.clone(),
                sold_out.clone(),
                rx.clone(),
            ));
        }
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

async fn run(
    db: MySqlPool,
    publisher: Publisher,
    sold_out: SoldOut,
    jobs: Arc<tokio::sync::Mutex<mpsc::Receiver<Job>>>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while jobs.lock().await.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let orders: Vec<_> = batch.iter().map(|j| j.order).collect();
        let check = sold_out.among(orders.iter().map(|(_, p, _)| *p));
        let mut rows = Vec::with_capacity(batch.len());
        let started = std::time::Instant::now();
        let inserted = db::orders::insert_many(&db, &orders, &check).await;
        let recorded_in = started.elapsed();
        match inserted {
            Ok(inserted) => {
                sold_out.clear(&inserted.available);
                rows.extend(inserted.rows.into_iter().map(Ok));
            }
            Err(e) if batch.len() == 1 => rows.push(Err(e)),
            // One bad order must not fail the others: record them one by one.
            Err(_) => {
                for (id, product, total) in &orders {
                    rows.push(db::orders::insert(&db, *id, *product, *total).await);
                }
            }
        }
        // Publish what was recorded as PENDING, one message per partition.
        let messages: Vec<OrderMessage> = orders
            .iter()
            .zip(&rows)
            .filter(|(_, row)| row.as_ref().is_ok_and(|r| r.status == "PENDING"))
            .map(|((id, product, total), _)| OrderMessage {
                order_id: *id,
                product_id: *product,
                total: *total,
            })
            .collect();
        if !messages.is_empty() {
            shared::fault::point(shared::fault::API_AFTER_RECORD);
        }
        // Send now, in order; wait for the confirms (and answer) on the side
        // while the next batch is recorded.
        let sent = publisher.send_all(messages).await;
        tracing::debug!(orders = orders.len(), ?recorded_in, sent_in = ?(started.elapsed() - recorded_in), "batch recorded and sent");
        let jobs = std::mem::replace(&mut batch, Vec::with_capacity(MAX_BATCH));
        let publisher = publisher.clone();
        tokio::spawn(async move {
            let mut unconfirmed = HashSet::new();
            for (sent, result) in publisher.confirm_all(sent).await {
                if let Err(e) = result {
                    tracing::warn!(error = %e, orders = sent.len(), "orders recorded but not yet published; the relay has them");
                    unconfirmed.extend(sent.iter().map(|o| o.order_id));
                }
            }
            for (job, row) in jobs.into_iter().zip(rows) {
                let published = !unconfirmed.contains(&job.order.0);
                let _ = job.reply.send(row.map(|r| (r, published)));
            }
        });
    }
}
