//! Deciding across partitions: the partition consumers hand their batches
//! to a decider loop, which decides whatever has queued up meanwhile, from
//! every partition, in one fenced transaction and one commit. With many
//! products spread over many partitions this turns one commit per
//! partition batch into one per round.
//!
//! One loop, not several: a transaction is three round trips, and while it
//! runs the next round gathers. Two loops measured no faster and split the
//! rounds (more commits and statements per order).
//!
//! Each consumer waits for its answer before it acks and takes its next
//! batch, so a partition's orders are still decided in arrival order.

use crate::decide::{Decided, Group, Terms, decide_fenced, decide_fenced_groups};
use shared::db::DbError;
use shared::db::leases::Lease;
use shared::message::OrderMessage;
use sqlx::MySqlPool;
use tokio::sync::{mpsc, oneshot};

/// Most partition batches one transaction takes.
const MAX_GROUPS: usize = 16;

/// What a consumer gets back: the decisions, `None` when its lease is lost,
/// or the database's error (a combined transaction that failed is retried
/// batch by batch, so each error is that batch's own).
pub type Answer = Result<Option<Decided>, DbError>;

struct Request {
    orders: Vec<OrderMessage>,
    lease: Lease,
    reply: oneshot::Sender<Answer>,
}

/// Hands batches to the decider loops. Cheap to clone.
#[derive(Clone)]
pub struct Decider {
    requests: mpsc::Sender<Request>,
}

impl Decider {
    /// Starts the loop on `db`; it ends when every `Decider` is dropped.
    pub fn start(db: MySqlPool, terms: Terms) -> Self {
        // One request in flight per partition consumer at most.
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(run(db, terms, rx));
        Self { requests: tx }
    }

    /// Decides `orders` of the partition `lease` holds, fenced by it.
    pub async fn decide(&self, orders: &[OrderMessage], lease: &Lease) -> Answer {
        let (reply, answer) = oneshot::channel();
        let request = Request {
            orders: orders.to_vec(),
            lease: lease.clone(),
            reply,
        };
        self.requests
            .send(request)
            .await
            .map_err(|_| DbError::Sql(sqlx::Error::PoolClosed))?;
        answer
            .await
            .map_err(|_| DbError::Sql(sqlx::Error::PoolClosed))?
    }
}

async fn run(db: MySqlPool, ttl: Terms, mut requests: mpsc::Receiver<Request>) {
    let mut batch = Vec::with_capacity(MAX_GROUPS);
    while requests.recv_many(&mut batch, MAX_GROUPS).await > 0 {
        let taken: Vec<Request> = std::mem::take(&mut batch);
        if let [one] = taken.as_slice() {
            let answer = decide_fenced(&db, &one.orders, ttl, &one.lease).await;
            let request = taken.into_iter().next().expect("one request");
            let _ = request.reply.send(answer);
            continue;
        }
        let groups: Vec<Group<'_>> = taken
            .iter()
            .map(|r| Group {
                orders: &r.orders,
                lease: &r.lease,
            })
            .collect();
        let combined = decide_fenced_groups(&db, &groups, ttl).await;
        drop(groups);
        match combined {
            Ok(answers) => {
                for (request, answer) in taken.into_iter().zip(answers) {
                    let _ = request.reply.send(Ok(answer));
                }
            }
            // Nothing was committed: each batch on its own, so that an error
            // (and the retrying or isolating it leads to) is its own.
            Err(e) => {
                tracing::debug!(error = %e, batches = taken.len(), "a combined decision failed; deciding batch by batch");
                for request in taken {
                    let answer = decide_fenced(&db, &request.orders, ttl, &request.lease).await;
                    let _ = request.reply.send(answer);
                }
            }
        }
    }
}
