//! The worker's core: deciding a batch of orders in one transaction.
//!
//! Plain database code, callable from tests without RabbitMQ.

use chrono::{DateTime, Utc};
use shared::db::leases::{self, Lease};
use shared::db::{padded, padded_len, placeholders};
use shared::domain::{OrderId, OrderStatus, ProductId, reason};
use shared::message::{DecidedOrder, OrderMessage};
use sqlx::{AssertSqlSafe, MySqlConnection};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;
use uuid::Uuid;

/// What became of one order of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Units reserved.
    Accepted,
    /// Rejected, with the reason.
    Rejected(&'static str),
    /// Decided (or cancelled) before: a redelivery, left as it was.
    AlreadyDecided,
    /// No such order in the database: nothing to decide.
    Unknown,
}

/// One order's outcome, in the batch's arrival order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The order.
    pub order_id: OrderId,
    /// Its outcome.
    pub outcome: Outcome,
    /// From recording to this decision, by the database clock (zero for an
    /// unknown order).
    pub waited: Duration,
}

impl Decision {
    /// The announcement for a newly decided order; `None` for a redelivery
    /// or an unknown order.
    pub fn notice(&self) -> Option<DecidedOrder> {
        let (status, reason) = match self.outcome {
            Outcome::Accepted => (OrderStatus::Accepted, None),
            Outcome::Rejected(r) => (OrderStatus::Rejected, Some(r.to_owned())),
            Outcome::AlreadyDecided | Outcome::Unknown => return None,
        };
        Some(DecidedOrder {
            order_id: self.order_id,
            status,
            reason,
        })
    }
}

/// What one deciding transaction did.
#[derive(Debug, Default)]
pub struct Decided {
    /// One per distinct order, in arrival order.
    pub decisions: Vec<Decision>,
    /// Products left with nothing available: the hint the api uses to check
    /// stock before queueing further orders for them.
    pub sold_out: Vec<ProductId>,
}

/// One partition's orders, in arrival order, and the lease they are decided
/// under.
#[derive(Debug, Clone, Copy)]
pub struct Group<'a> {
    /// The orders.
    pub orders: &'a [OrderMessage],
    /// The partition's lease (recorded on each decision; the fence).
    pub lease: &'a Lease,
}

impl Decided {
    /// Adds `later`'s decisions (decided after these) and sold-out products.
    pub fn append(&mut self, later: Decided) {
        self.decisions.extend(later.decisions);
        self.sold_out.extend(later.sold_out);
    }
}

/// Decides `orders` (in arrival order) inside the caller's transaction `tx`,
/// recording `decider` (the lease's owner and epoch) on each decision:
/// locks the order rows and the product rows involved, accepts each order
/// while the running availability covers it and rejects it otherwise, then
/// writes every decision and each product's new `reserved_stock`.
///
/// The caller commits, and only then acknowledges the messages. Orders no
/// longer PENDING (redeliveries, cancellations) are left untouched.
pub async fn decide_batch(
    tx: &mut MySqlConnection,
    orders: &[OrderMessage],
    reservation_ttl: Duration,
    decider: &Lease,
) -> Result<Decided, sqlx::Error> {
    let group = Group {
        orders,
        lease: decider,
    };
    Ok(decide_groups(tx, &[group], reservation_ttl)
        .await?
        .pop()
        .unwrap_or_default())
}

/// [`decide_batch`] for several partitions' groups in one transaction: one
/// locking read of all their orders, one of all their products (in id
/// order), each group decided in its own arrival order (partitions never
/// share a product, so groups never compete), one conditional UPDATE per
/// outcome and lease, one UPDATE per product. Returns one [`Decided`] per
/// group, in the order given.
pub async fn decide_groups(
    tx: &mut MySqlConnection,
    groups: &[Group<'_>],
    reservation_ttl: Duration,
) -> Result<Vec<Decided>, sqlx::Error> {
    // The database row is the truth; the message only names the order.
    // Each order once, in its group, first come first.
    let mut seen = HashSet::new();
    let group_ids: Vec<Vec<Uuid>> = groups
        .iter()
        .map(|g| {
            g.orders
                .iter()
                .map(|o| o.order_id.uuid())
                .filter(|id| seen.insert(*id))
                .collect()
        })
        .collect();
    let ids: Vec<Uuid> = group_ids.iter().flatten().copied().collect();
    if ids.is_empty() {
        return Ok(groups.iter().map(|_| Decided::default()).collect());
    }
    let sql = format!(
        "SELECT id, product_id, total, status, \
                CAST(TIMESTAMPDIFF(MICROSECOND, created_at, NOW(6)) AS SIGNED), buyer_id, created_at \
         FROM orders FORCE INDEX (uq_orders_id) WHERE id IN ({}) FOR UPDATE",
        placeholders(padded_len(ids.len()))
    );
    type Selected = (Uuid, u64, u32, String, i64, Option<String>, DateTime<Utc>);
    let mut q = sqlx::query_as::<_, Selected>(AssertSqlSafe(sql));
    for id in padded(&ids) {
        q = q.bind(id);
    }
    let mut waited: HashMap<Uuid, Duration> = HashMap::new();
    let rows: HashMap<Uuid, Row> = q
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(|(id, product, total, status, micros, buyer, created_at)| {
            waited.insert(id, Duration::from_micros(micros.max(0) as u64));
            let row = Row {
                product,
                total,
                pending: status == "PENDING",
                buyer,
                created_at,
            };
            (id, row)
        })
        .collect();

    let mut products: Vec<u64> = rows
        .values()
        .filter(|r| r.pending)
        .map(|r| r.product)
        .collect();
    products.sort_unstable();
    products.dedup();
    // product -> (stored, reserved), locked in id order so that concurrent
    // transactions on the same products cannot deadlock.
    let mut stock: BTreeMap<u64, (i64, i64)> = BTreeMap::new();
    if !products.is_empty() {
        let sql = format!(
            "SELECT product_id, stored_stock, reserved_stock FROM inventories \
             WHERE product_id IN ({}) ORDER BY product_id FOR UPDATE",
            placeholders(padded_len(products.len()))
        );
        let mut q = sqlx::query_as::<_, (u64, i64, i64)>(AssertSqlSafe(sql));
        for p in padded(&products) {
            q = q.bind(p);
        }
        for (product, stored, reserved) in q.fetch_all(&mut *tx).await? {
            stock.insert(product, (stored, reserved));
        }
    }
    let before: BTreeMap<u64, i64> = stock.iter().map(|(p, (_, r))| (*p, *r)).collect();
    let rules = sale_rules(tx, &products).await?;
    let mut held = held_by_buyers(tx, &rules, rows.values().filter(|r| r.pending)).await?;

    let mut out = Vec::with_capacity(groups.len());
    for (group, ids) in groups.iter().zip(group_ids) {
        let mut decisions = Vec::with_capacity(ids.len());
        let mut touched = Vec::new();
        for id in ids {
            let order_id = OrderId::from(id);
            let outcome = match rows.get(&id) {
                None => Outcome::Unknown,
                Some(row) if !row.pending => Outcome::AlreadyDecided,
                Some(row) => {
                    touched.push(row.product);
                    let rule = rules.get(&row.product);
                    let limit = rule.and_then(|r| r.max_per_buyer);
                    let holding = row
                        .buyer
                        .as_ref()
                        .filter(|_| limit.is_some())
                        .map(|b| held.entry((row.product, b.clone())).or_default());
                    let total = i64::from(row.total);
                    match stock.get_mut(&row.product) {
                        None => Outcome::Rejected(reason::PRODUCT_NOT_FOUND),
                        Some(_) if rule.is_some_and(|r| r.not_started(row.created_at)) => {
                            Outcome::Rejected(reason::SALE_NOT_STARTED)
                        }
                        Some(_) if rule.is_some_and(|r| r.ended(row.created_at)) => {
                            Outcome::Rejected(reason::SALE_ENDED)
                        }
                        Some(_)
                            if holding
                                .as_ref()
                                .zip(limit)
                                .is_some_and(|(h, l)| **h + total > i64::from(l)) =>
                        {
                            Outcome::Rejected(reason::BUYER_LIMIT)
                        }
                        Some((stored, reserved)) => {
                            if *stored - *reserved >= total {
                                *reserved += total;
                                if let Some(h) = holding {
                                    *h += total;
                                }
                                Outcome::Accepted
                            } else {
                                Outcome::Rejected(reason::OUT_OF_STOCK)
                            }
                        }
                    }
                }
            };
            decisions.push(Decision {
                order_id,
                outcome,
                waited: waited.get(&id).copied().unwrap_or_default(),
            });
        }
        write_decisions(tx, &decisions, reservation_ttl, group.lease).await?;
        touched.sort_unstable();
        touched.dedup();
        out.push((decisions, touched));
    }
    for (product, (_, reserved)) in &stock {
        let delta = reserved - before[product];
        if delta > 0 {
            sqlx::query(
                "UPDATE inventories SET reserved_stock = reserved_stock + ? WHERE product_id = ?",
            )
            .bind(delta)
            .bind(product)
            .execute(&mut *tx)
            .await?;
        }
    }
    Ok(out
        .into_iter()
        .map(|(decisions, touched)| Decided {
            decisions,
            sold_out: touched
                .into_iter()
                .filter(|p| {
                    stock
                        .get(p)
                        .is_some_and(|(stored, reserved)| stored - reserved <= 0)
                })
                .filter_map(|p| ProductId::new(p as i64).ok())
                .collect(),
        })
        .collect())
}

/// An order row as the deciding transaction locked it.
struct Row {
    product: u64,
    total: u32,
    pending: bool,
    buyer: Option<String>,
    /// When it was recorded (database clock): the time the window is
    /// judged by, so an order placed in time is not refused for waiting in
    /// the queue, and one placed early never gets in by waiting.
    created_at: DateTime<Utc>,
}

/// A product's sale rules.
#[derive(Debug, Clone, Copy)]
struct SaleRule {
    max_per_buyer: Option<u32>,
    starts_at: Option<DateTime<Utc>>,
    ends_at: Option<DateTime<Utc>>,
}

impl SaleRule {
    fn not_started(&self, placed: DateTime<Utc>) -> bool {
        self.starts_at.is_some_and(|start| placed < start)
    }

    fn ended(&self, placed: DateTime<Utc>) -> bool {
        self.ends_at.is_some_and(|end| placed >= end)
    }
}

/// The rules of those `products` that have any. A plain read: locking the
/// product rows would block the recording inserts (their foreign-key
/// checks share-lock them); the rules only change by an admin's PATCH.
async fn sale_rules(
    tx: &mut MySqlConnection,
    products: &[u64],
) -> Result<HashMap<u64, SaleRule>, sqlx::Error> {
    if products.is_empty() {
        return Ok(HashMap::new());
    }
    let sql = format!(
        "SELECT id, max_per_buyer, sale_starts_at, sale_ends_at \
         FROM products WHERE id IN ({}) \
           AND (max_per_buyer IS NOT NULL OR sale_starts_at IS NOT NULL OR sale_ends_at IS NOT NULL)",
        placeholders(padded_len(products.len()))
    );
    type Selected = (
        u64,
        Option<u32>,
        Option<DateTime<Utc>>,
        Option<DateTime<Utc>>,
    );
    let mut q = sqlx::query_as::<_, Selected>(AssertSqlSafe(sql));
    for p in padded(products) {
        q = q.bind(p);
    }
    Ok(q.fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(|(p, max_per_buyer, starts_at, ends_at)| {
            let rule = SaleRule {
                max_per_buyer,
                starts_at,
                ends_at,
            };
            (p, rule)
        })
        .collect())
}

/// Units each buyer of `orders` already holds (ACCEPTED or PAID) of each
/// product that has a `max_per_buyer`. Only this partition accepts orders
/// for these products, in order, so nothing can add to them meanwhile; a
/// cancel or expiry meanwhile only lowers them.
async fn held_by_buyers<'r>(
    tx: &mut MySqlConnection,
    rules: &HashMap<u64, SaleRule>,
    orders: impl Iterator<Item = &'r Row>,
) -> Result<HashMap<(u64, String), i64>, sqlx::Error> {
    let pairs: HashSet<(u64, &str)> = orders
        .filter(|r| {
            rules
                .get(&r.product)
                .is_some_and(|r| r.max_per_buyer.is_some())
        })
        .filter_map(|r| Some((r.product, r.buyer.as_deref()?)))
        .collect();
    if pairs.is_empty() {
        return Ok(HashMap::new());
    }
    // Padded like every list here, so the statement cache keeps a few shapes.
    let pairs: Vec<(u64, &str)> = pairs.into_iter().collect();
    let condition = vec!["(buyer_id = ? AND product_id = ?)"; padded_len(pairs.len())].join(" OR ");
    let sql = format!(
        "SELECT product_id, buyer_id, CAST(SUM(total) AS SIGNED) FROM orders \
         WHERE status IN ('ACCEPTED', 'PAID') AND ({condition}) GROUP BY product_id, buyer_id"
    );
    let mut q = sqlx::query_as::<_, (u64, String, i64)>(AssertSqlSafe(sql));
    for (product, buyer) in padded(&pairs) {
        q = q.bind(*buyer).bind(*product);
    }
    Ok(q.fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(|(p, b, units)| ((p, b), units))
        .collect())
}

/// One conditional UPDATE per outcome: the accepted, and the rejected per reason.
async fn write_decisions(
    tx: &mut MySqlConnection,
    decisions: &[Decision],
    reservation_ttl: Duration,
    decider: &Lease,
) -> Result<(), sqlx::Error> {
    let mut groups: BTreeMap<Option<&'static str>, Vec<Uuid>> = BTreeMap::new();
    for d in decisions {
        match d.outcome {
            Outcome::Accepted => groups.entry(None).or_default().push(d.order_id.uuid()),
            Outcome::Rejected(r) => groups.entry(Some(r)).or_default().push(d.order_id.uuid()),
            Outcome::AlreadyDecided | Outcome::Unknown => {}
        }
    }
    for (reason, ids) in groups {
        let list = placeholders(padded_len(ids.len()));
        let result = match reason {
            None => {
                let sql = format!(
                    "UPDATE orders SET status = 'ACCEPTED', decided_at = NOW(6), decided_by = ?, decided_epoch = ?, \
                     expires_at = NOW(6) + INTERVAL ? MICROSECOND \
                     WHERE status = 'PENDING' AND id IN ({list})"
                );
                let mut q = sqlx::query(AssertSqlSafe(sql))
                    .bind(&decider.owner)
                    .bind(decider.epoch)
                    .bind(reservation_ttl.as_micros() as u64);
                for id in padded(&ids) {
                    q = q.bind(id);
                }
                q.execute(&mut *tx).await?
            }
            Some(reason) => {
                let sql = format!(
                    "UPDATE orders SET status = 'REJECTED', reason = ?, decided_at = NOW(6), \
                     decided_by = ?, decided_epoch = ? WHERE status = 'PENDING' AND id IN ({list})"
                );
                let mut q = sqlx::query(AssertSqlSafe(sql))
                    .bind(reason)
                    .bind(&decider.owner)
                    .bind(decider.epoch);
                for id in padded(&ids) {
                    q = q.bind(id);
                }
                q.execute(&mut *tx).await?
            }
        };
        // The rows are locked by this transaction: every one must change.
        if result.rows_affected() != ids.len() as u64 {
            return Err(sqlx::Error::Protocol(format!(
                "decided {} of {} locked orders",
                result.rows_affected(),
                ids.len()
            )));
        }
    }
    Ok(())
}

/// Decides `orders` in a transaction of its own and commits it, fenced by
/// `lease`: `None` (nothing written) when the partition is no longer this
/// worker's. The fence row stays share-locked until the commit, so the
/// partition cannot change hands in between.
pub async fn decide_fenced(
    db: &sqlx::MySqlPool,
    orders: &[OrderMessage],
    reservation_ttl: Duration,
    lease: &Lease,
) -> Result<Option<Decided>, sqlx::Error> {
    let group = Group { orders, lease };
    Ok(decide_fenced_groups(db, &[group], reservation_ttl)
        .await?
        .pop()
        .flatten())
}

/// [`decide_fenced`] for several partitions' groups in one transaction and
/// one commit: a group whose lease is lost is left out (`None`), the others
/// decided.
pub async fn decide_fenced_groups(
    db: &sqlx::MySqlPool,
    groups: &[Group<'_>],
    reservation_ttl: Duration,
) -> Result<Vec<Option<Decided>>, sqlx::Error> {
    let mut tx = db.begin().await?;
    let mut fenced = Vec::with_capacity(groups.len());
    for group in groups {
        fenced.push(leases::check_fence(&mut tx, group.lease).await?);
    }
    let live: Vec<Group<'_>> = groups
        .iter()
        .zip(&fenced)
        .filter(|(_, held)| **held)
        .map(|(g, _)| *g)
        .collect();
    let mut decided = if live.is_empty() {
        Vec::new()
    } else {
        decide_groups(&mut tx, &live, reservation_ttl).await?
    }
    .into_iter();
    shared::fault::point(shared::fault::WORKER_BEFORE_COMMIT);
    tx.commit().await?;
    Ok(fenced
        .into_iter()
        .map(|held| if held { decided.next() } else { None })
        .collect())
}

/// Rejects an order whose deciding transaction fails on its own for a
/// reason that is not transient (`DECISION_FAILED`), in a transaction fenced
/// by `lease`: `Ok(None)` when the partition is no longer this worker's;
/// `AlreadyDecided` when it is no longer PENDING.
pub async fn reject_undecidable(
    db: &sqlx::MySqlPool,
    order: OrderId,
    lease: &Lease,
) -> Result<Option<Decision>, sqlx::Error> {
    let mut tx = db.begin().await?;
    if !leases::check_fence(&mut tx, lease).await? {
        return Ok(None);
    }
    let result = sqlx::query(
        "UPDATE orders SET status = 'REJECTED', reason = ?, decided_at = NOW(6), decided_by = ?, \
         decided_epoch = ? WHERE id = ? AND status = 'PENDING'",
    )
    .bind(reason::DECISION_FAILED)
    .bind(&lease.owner)
    .bind(lease.epoch)
    .bind(order.uuid())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Some(Decision {
        order_id: order,
        outcome: if result.rows_affected() == 1 {
            Outcome::Rejected(reason::DECISION_FAILED)
        } else {
            Outcome::AlreadyDecided
        },
        waited: Duration::ZERO,
    }))
}

/// Rejects a dead-lettered order if it is still PENDING; true when it was.
pub async fn reject_dead_lettered(
    db: &sqlx::MySqlPool,
    order: OrderId,
    decider: &str,
) -> Result<bool, sqlx::Error> {
    let result = sqlx::query(
        "UPDATE orders SET status = 'REJECTED', reason = ?, decided_at = NOW(6), decided_by = ? \
         WHERE id = ? AND status = 'PENDING'",
    )
    .bind(reason::DEAD_LETTERED)
    .bind(decider)
    .bind(order.uuid())
    .execute(db)
    .await?;
    Ok(result.rows_affected() == 1)
}
