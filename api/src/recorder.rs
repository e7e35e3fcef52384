//! Recording and publishing orders in batches: concurrent requests hand
//! their order to a background loop, which writes everything that has
//! queued up meanwhile with one multi-row INSERT in one round trip (orders
//! with an `Idempotency-Key` one by one, since their unique key decides),
//! sends it as messages per partition, and leaves the confirms and the
//! answers to a task of the batch's own while it records the next batch.
//! Under load this turns one commit and one message per order into one of
//! each per batch; alone, a request waits for nobody.
//!
//! One loop, not several: a recording is a single round trip, and while
//! it runs the next batch gathers. A second loop measured slower (it halved
//! the batches, so twice the statements and messages per order).
//!
//! An order whose client has gone before its batch starts is not recorded.
//! Once a batch is taken its requests are *claimed*: the api answers them
//! with what was recorded, whatever the request's own timeout says.

use crate::metrics::Metrics;
use crate::outbox::{NewId, Outbox};
use crate::publisher::{PublishError, Publisher};
use crate::sold_out::SoldOut;
use futures::StreamExt;
use shared::db::orders::{IdempotencyKey, NewOrder, OrderRow};
use shared::db::{self, DbError};
use shared::domain::{OrderId, ProductId, Quantity};
use shared::message::OrderMessage;
use sqlx::MySqlPool;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use tokio::sync::{mpsc, oneshot};

/// Most orders one recording transaction takes.
const MAX_BATCH: usize = 500;
/// Submissions with an `Idempotency-Key` recorded at once (each takes a
/// pooled connection for its transaction).
const KEYED_AT_ONCE: usize = 8;

/// What became of a submission.
#[derive(Debug)]
pub enum Recorded {
    /// A new order was recorded (PENDING, or REJECTED on the spot when its
    /// product was sold out).
    New(OrderRow),
    /// The idempotency key was used before with the same request: that order.
    Existing(OrderRow),
    /// The idempotency key was used before with a different request.
    KeyReused,
    /// Not recorded: the recording queue was full, or the broker refused the
    /// order's message (its partition queue is full) and the order was
    /// removed again. The client is told to come back.
    Shed,
}

impl From<db::orders::Recorded> for Recorded {
    fn from(recorded: db::orders::Recorded) -> Self {
        match recorded {
            db::orders::Recorded::New(row) => Self::New(row),
            db::orders::Recorded::Existing(row) => Self::Existing(row),
            db::orders::Recorded::KeyReused => Self::KeyReused,
        }
    }
}

impl Submission {
    fn new_order(&self) -> NewOrder {
        NewOrder {
            id: self.id.get(),
            product: self.product,
            total: self.total,
            buyer: self.buyer.clone(),
        }
    }
}

/// A submission for the recorder.
pub struct Submission {
    /// The new order's id, unconfirmed in the outbox until published.
    pub id: NewId,
    /// The product.
    pub product: ProductId,
    /// Units.
    pub total: Quantity,
    /// The buyer, when buyers have identities.
    pub buyer: Option<String>,
    /// The product's sale may not have started: check it while recording.
    pub opening: bool,
    /// The scoped idempotency key, if the client sent one.
    pub key: Option<IdempotencyKey>,
    /// Set when the recorder takes the submission.
    pub claimed: Claimed,
}

/// Who won a request: the recorder, which takes its order (from then on
/// the order may be recorded, so the request waits for the answer rather
/// than time out; the rest of the way is bounded by the database's and the
/// broker's own timeouts), or the request-timeout layer, which gives up on
/// it (then the recorder leaves the order alone). Exactly one of them wins.
/// The request-timeout layer puts one in every request's extensions.
#[derive(Debug, Clone, Default)]
pub struct Claimed(Arc<AtomicU8>);

const OPEN: u8 = 0;
const TAKEN: u8 = 1;
const ABANDONED: u8 = 2;

impl Claimed {
    /// The recorder takes the order; false when the request was abandoned.
    fn take(&self) -> bool {
        self.0
            .compare_exchange(OPEN, TAKEN, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// The request gives up; false when its order was already taken (then
    /// the request must wait for its answer).
    pub fn abandon(&self) -> bool {
        self.0
            .compare_exchange(OPEN, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

type Reply = oneshot::Sender<Result<Recorded, DbError>>;

struct Job {
    submission: Submission,
    reply: Reply,
}

/// Hands orders to the batching loops. Cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    jobs: mpsc::Sender<Job>,
}

/// The recording loop and the tasks that settle its batches.
#[derive(Clone)]
struct Loop {
    db: MySqlPool,
    publisher: Publisher,
    outbox: Outbox,
    sold_out: SoldOut,
    api_id: Arc<str>,
    /// Whether orders rejected on the spot get their events (`ORDER_EVENTS`).
    events: bool,
}

impl Recorder {
    /// Starts the batching loop; it ends when every `Recorder` is dropped.
    pub fn start(
        db: MySqlPool,
        publisher: Publisher,
        outbox: Outbox,
        sold_out: SoldOut,
        api_id: &str,
        events: bool,
    ) -> Self {
        // Four batches' worth may wait (a few tens of milliseconds of
        // recording): past that, recording is the bottleneck, and a new
        // order is shed at once instead of queueing. Two batches' worth shed
        // 5 % of the orders of 1,024 clients that the loop then kept up with.
        let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
        let recording = Loop {
            db,
            publisher,
            outbox,
            sold_out,
            api_id: api_id.into(),
            events,
        };
        tokio::spawn(recording.run(rx));
        Self { jobs: tx }
    }

    /// Records `submission` and publishes it; returns once it is committed
    /// and its message confirmed (or left to the relay). [`Recorded::Shed`]
    /// at once, recording nothing, when the recording queue is full.
    pub async fn record(&self, submission: Submission) -> Result<Recorded, DbError> {
        let (reply, answer) = oneshot::channel();
        match self.jobs.try_send(Job { submission, reply }) {
            Ok(()) => {}
            // Dropping the job forgets its id: nothing was recorded.
            Err(mpsc::error::TrySendError::Full(_)) => return Ok(Recorded::Shed),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return Err(DbError::Sql(sqlx::Error::PoolClosed));
            }
        }
        answer
            .await
            .map_err(|_| DbError::Sql(sqlx::Error::PoolClosed))?
    }
}

impl Loop {
    async fn run(self, mut jobs: mpsc::Receiver<Job>) {
        let mut taken = Vec::with_capacity(MAX_BATCH);
        while jobs.recv_many(&mut taken, MAX_BATCH).await > 0 {
            // Clients gone (or timed out) before their batch started:
            // nothing is recorded for them (their ids leave the outbox as
            // the jobs drop).
            let batch: Vec<Job> = taken
                .drain(..)
                .filter(|j| !j.reply.is_closed() && j.submission.claimed.take())
                .collect();
            if !batch.is_empty() {
                self.record_batch(batch).await;
            }
        }
    }

    async fn record_batch(&self, batch: Vec<Job>) {
        let started = std::time::Instant::now();
        let (plain, keyed): (Vec<Job>, Vec<Job>) =
            batch.into_iter().partition(|j| j.submission.key.is_none());
        let mut results: Vec<(Job, Result<Recorded, DbError>)> = Vec::new();
        self.insert_plain(plain, &mut results).await;
        // Each keyed submission is a transaction of its own: several at once
        // (their results kept in arrival order), so a batch of them does not
        // take one round trip after another. Two with the same key meet at
        // its unique index: the second waits for the first and finds it.
        let keyed: Vec<(Job, Result<Recorded, DbError>)> = futures::stream::iter(keyed)
            .map(|job| async move {
                let s = &job.submission;
                let recorded =
                    db::orders::record(&self.db, &s.new_order(), s.key.as_ref(), &self.api_id)
                        .await
                        .map(Recorded::from);
                (job, recorded)
            })
            .buffered(KEYED_AT_ONCE)
            .collect()
            .await;
        results.extend(keyed);
        // Publish what was newly recorded as PENDING, messages per partition.
        let messages: Vec<OrderMessage> = results
            .iter()
            .filter_map(|(job, r)| match r {
                Ok(Recorded::New(row)) if row.status == "PENDING" => Some(OrderMessage {
                    order_id: job.submission.id.get(),
                    product_id: job.submission.product,
                    total: job.submission.total,
                }),
                _ => None,
            })
            .collect();
        if !messages.is_empty() {
            shared::fault::point(shared::fault::API_AFTER_RECORD);
        }
        // Send now, in order; wait for the confirms (and answer) on the side
        // while the next batch is recorded.
        let sent = self.publisher.send_all(messages).await;
        tracing::debug!(orders = results.len(), elapsed = ?started.elapsed(), "batch recorded and sent");
        let this = self.clone();
        tokio::spawn(async move {
            let published = this.publisher.confirm_all(sent).await;
            this.settle(results, published).await;
        });
    }

    /// Records submissions without a key with one INSERT; when that
    /// fails, one by one, so one bad order does not fail the others.
    async fn insert_plain(
        &self,
        plain: Vec<Job>,
        results: &mut Vec<(Job, Result<Recorded, DbError>)>,
    ) {
        if plain.is_empty() {
            return;
        }
        let orders: Vec<NewOrder> = plain.iter().map(|j| j.submission.new_order()).collect();
        let check = self.sold_out.among(orders.iter().map(|o| o.product));
        let mut opening: Vec<ProductId> = plain
            .iter()
            .filter(|j| j.submission.opening)
            .map(|j| j.submission.product)
            .collect();
        opening.sort_unstable();
        opening.dedup();
        match db::orders::insert_many(
            &self.db,
            &orders,
            &check,
            &opening,
            &self.api_id,
            self.events,
        )
        .await
        {
            Ok(inserted) => {
                self.sold_out.clear(&inserted.available);
                for (job, row) in plain.into_iter().zip(inserted.rows) {
                    results.push((job, Ok(Recorded::New(row))));
                }
            }
            Err(e) if plain.len() == 1 => {
                let job = plain.into_iter().next().expect("one job");
                results.push((job, Err(e)));
            }
            // The database is down: one by one would only wait longer.
            // Cut under its commit, the batch may be recorded: each answer
            // then looks for its order once a primary answers.
            Err(e) if e.is_unavailable() => {
                tracing::warn!(error = %e, orders = plain.len(), "could not record a batch");
                let uncertain = e.is_uncertain();
                results.extend(plain.into_iter().map(|job| {
                    let e = if uncertain {
                        DbError::Uncertain(sqlx::Error::Io(std::io::Error::other(
                            "connection lost while a batch committed",
                        )))
                    } else {
                        DbError::Sql(sqlx::Error::PoolTimedOut)
                    };
                    (job, Err(e))
                }));
            }
            Err(_) => {
                for job in plain {
                    if job.reply.is_closed() {
                        // Gone while the batch failed: not recorded again,
                        // but the failed batch may have committed after all.
                        self.outbox.lose_track(vec![job.submission.id]);
                        continue;
                    }
                    let s = &job.submission;
                    let row = db::orders::insert(&self.db, &s.new_order(), &self.api_id)
                        .await
                        .map(Recorded::New);
                    results.push((job, row));
                }
            }
        }
    }

    /// Settles each submission with the broker's answer: confirmed orders
    /// leave the outbox; refused ones are removed and shed; the rest stay
    /// with the relay. Then answers every request.
    async fn settle(
        &self,
        results: Vec<(Job, Result<Recorded, DbError>)>,
        published: crate::publisher::Published,
    ) {
        let metrics = &self.publisher.metrics;
        let mut unpublished: HashMap<OrderId, OrderMessage> = HashMap::new();
        let mut refused: Vec<OrderId> = Vec::new();
        for (orders, result) in published {
            match result {
                Ok(()) => metrics
                    .orders_published
                    .fetch_add(orders.len() as u64, Ordering::Relaxed),
                Err(PublishError::Nacked) => {
                    refused.extend(orders.iter().map(|o| o.order_id));
                    unpublished.extend(orders.into_iter().map(|o| (o.order_id, o)));
                    0
                }
                Err(e) => {
                    tracing::warn!(error = %e, orders = orders.len(), "orders recorded but not yet published; the relay has them");
                    unpublished.extend(orders.into_iter().map(|o| (o.order_id, o)));
                    0
                }
            };
        }
        // Refused orders whose removal was cut and not settled: recorded or
        // not, nobody can say yet.
        let mut unknown: std::collections::HashSet<OrderId> = Default::default();
        let shed: std::collections::HashSet<OrderId> = if refused.is_empty() {
            Default::default()
        } else {
            match db::orders::delete_unqueued(&self.db, &refused).await {
                Ok(deleted) => {
                    // Not deleted: decided meanwhile (it reached the broker
                    // another way), so nothing is owed for it either.
                    for id in &refused {
                        if !deleted.contains(id) {
                            unpublished.remove(id);
                        }
                    }
                    deleted.into_iter().collect()
                }
                // Cut under its commit: what is gone was deleted (shed),
                // what was decided meanwhile is owed nothing, the rest is
                // still recorded (the relay has it).
                Err(e) if e.is_uncertain() => {
                    let settled = crate::settle::until_answered(|| async {
                        Ok(db::orders::decided_among(&self.db, &refused, true).await?)
                    })
                    .await;
                    match settled {
                        Ok((decided, recorded)) => {
                            for id in &decided {
                                unpublished.remove(id);
                            }
                            refused
                                .iter()
                                .filter(|id| !recorded.contains(*id))
                                .copied()
                                .collect()
                        }
                        // Unknown still: no answer may say recorded or not.
                        Err(_) => {
                            unknown = refused.iter().copied().collect();
                            Default::default()
                        }
                    }
                }
                // Still recorded: the relay publishes them later.
                Err(e) => {
                    tracing::warn!(error = %e, "could not remove orders the broker refused; the relay has them");
                    Default::default()
                }
            }
        };
        let (mut deferred, mut deferred_ids, mut lost) = (Vec::new(), Vec::new(), Vec::new());
        for (job, result) in results {
            let Job { submission, reply } = job;
            let id = submission.id.get();
            let answer = match result {
                Ok(Recorded::New(_)) if shed.contains(&id) => Ok(Recorded::Shed),
                // Its answer looks for it once more (the relay has it if it exists).
                Ok(Recorded::New(_)) if unknown.contains(&id) => {
                    lost.push(submission.id);
                    Err(DbError::Uncertain(sqlx::Error::Io(std::io::Error::other(
                        "connection lost while removing an order the broker refused",
                    ))))
                }
                Ok(recorded) => {
                    if let Some(order) = unpublished.remove(&id) {
                        Metrics::inc(&metrics.publish_failures);
                        deferred.push(order);
                        deferred_ids.push(submission.id);
                    }
                    Ok(recorded)
                }
                Err(e) => {
                    // The commit may have happened all the same: the relay
                    // looks in the database from this id on.
                    lost.push(submission.id);
                    Err(e)
                }
            };
            let _ = reply.send(answer);
        }
        if !deferred.is_empty() {
            self.outbox.defer(deferred, deferred_ids);
        }
        if !lost.is_empty() {
            self.outbox.lose_track(lost);
        }
    }
}
