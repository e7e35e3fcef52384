//! The worker's core: deciding a batch of orders in one transaction.
//!
//! Plain database code, callable from tests without RabbitMQ.

use chrono::{DateTime, Utc};
use shared::db::events as db_events;
use shared::db::leases::{self, Lease};
use shared::db::script::{Answer, Script, Session};
use shared::db::{DbError, padded, padded_len};
use shared::domain::{OrderId, OrderStatus, ProductId, reason};
use shared::events::Kind;
use shared::message::{DecidedOrder, OrderMessage};
use sqlx::mysql::MySqlRow;
use sqlx::{AssertSqlSafe, MySqlConnection, Row as _};
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
    /// When it was written, and until when an accepted order holds its
    /// units (database clock), when known: the api answers a waiting
    /// request from these without reading the order.
    pub times: Option<(DateTime<Utc>, Option<DateTime<Utc>>)>,
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
            decided_at: self.times.map(|(at, _)| at),
            expires_at: self.times.and_then(|(_, until)| until),
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

/// What every deciding transaction is told.
#[derive(Debug, Clone, Copy)]
pub struct Terms {
    /// How long an accepted order holds its units (`RESERVATION_TTL`).
    pub reservation_ttl: Duration,
    /// Whether each decision (and each product it sells out) is recorded
    /// in the events outbox (`ORDER_EVENTS`).
    pub events: bool,
}

impl Terms {
    /// Reservations held for `reservation_ttl`, events recorded.
    pub fn new(reservation_ttl: Duration) -> Self {
        Self {
            reservation_ttl,
            events: true,
        }
    }
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
    terms: Terms,
    decider: &Lease,
) -> Result<Decided, DbError> {
    let group = Group {
        orders,
        lease: decider,
    };
    Ok(decide_groups(tx, &[group], terms)
        .await?
        .pop()
        .unwrap_or_default())
}

/// [`decide_batch`] for several partitions' groups in one transaction: one
/// locking read of all their orders, one of all their products (in id
/// order), each group decided in its own arrival order (partitions never
/// share a product, so groups never compete), one conditional UPDATE per
/// outcome for all the groups, one UPDATE of the stock rows. Returns one
/// [`Decided`] per group, in the order given.
///
/// The reads go to the database as one query and the writes as another
/// (see [`Script`]): two round trips, whatever the number of groups.
pub async fn decide_groups(
    tx: &mut MySqlConnection,
    groups: &[Group<'_>],
    terms: Terms,
) -> Result<Vec<Decided>, DbError> {
    let plan = Plan::new(groups);
    if plan.ids.is_empty() {
        return Ok(groups.iter().map(|_| Decided::default()).collect());
    }
    let mut reads = Script::new();
    plan.push_reads(&mut reads);
    let answers = reads.run(&mut *tx).await?;
    let mut locked = plan.locked(&mut *tx, &answers).await?;
    let live = vec![true; groups.len()];
    let (mut decided, writes, expected) = plan.decide(groups, &live, &mut locked, terms);
    let at = check_written(&writes.run(&mut *tx).await?, &expected)?;
    stamp(&mut decided, at, terms.reservation_ttl);
    Ok(decided.into_iter().flatten().collect())
}

/// Which orders a deciding transaction reads, per group.
struct Plan {
    /// Each order once, in its group, first come first.
    group_ids: Vec<Vec<Uuid>>,
    /// Every group's orders.
    ids: Vec<Uuid>,
    /// The products their messages name, ascending (the lock order).
    products: Vec<u64>,
}

/// What a deciding transaction locked and read.
struct Locked {
    rows: HashMap<Uuid, Row>,
    /// product -> (stored, reserved)
    stock: BTreeMap<u64, (i64, i64)>,
    rules: HashMap<u64, SaleRule>,
    /// Units each (product, buyer) holds, for products with a limit.
    held: HashMap<(u64, String), i64>,
}

impl Plan {
    fn new(groups: &[Group<'_>]) -> Self {
        let mut products = Vec::new();
        let group_ids: Vec<Vec<Uuid>> = groups
            .iter()
            .map(|g| {
                let mut seen = HashSet::new();
                g.orders
                    .iter()
                    .filter(|o| seen.insert(o.order_id.uuid()))
                    .map(|o| {
                        products.push(o.product_id.get());
                        o.order_id.uuid()
                    })
                    .collect()
            })
            .collect();
        products.sort_unstable();
        products.dedup();
        let mut seen = HashSet::new();
        Self {
            ids: group_ids
                .iter()
                .flatten()
                .copied()
                .filter(|id| seen.insert(*id))
                .collect(),
            group_ids,
            products,
        }
    }

    /// Three statements: the order rows, locked; the products' stock rows,
    /// locked in id order (so that concurrent transactions on the same
    /// products cannot deadlock); the products' sale rules, a plain read
    /// (locking the product rows would block the recording inserts, whose
    /// foreign-key checks share-lock them; the rules only change by an
    /// admin's PATCH).
    fn push_reads(&self, script: &mut Script) {
        script
            .sql(
                "SELECT id, product_id, total, status, \
                 CAST(TIMESTAMPDIFF(MICROSECOND, created_at, NOW(6)) AS SIGNED), buyer_id, created_at \
                 FROM orders FORCE INDEX (uq_orders_id) WHERE id IN (",
            )
            .list(&self.ids, |s, id| {
                s.uuid(*id);
            })
            .sql(") FOR UPDATE")
            .end();
        push_stock_reads(script, &self.products);
    }

    /// The rows the reads returned. The message names the product only as
    /// a hint for the lock order: the order row is the truth, and a product
    /// only a row names is locked and read afterwards. Then, for products
    /// with a limit, what each buyer already holds.
    async fn locked(
        &self,
        tx: &mut MySqlConnection,
        answers: &[Answer],
    ) -> Result<Locked, DbError> {
        let [orders, stock, rules] = answers else {
            return Err(DbError::Inconsistent(format!(
                "the deciding reads returned {} results",
                answers.len()
            )));
        };
        let mut rows = HashMap::with_capacity(orders.rows.len());
        for r in &orders.rows {
            let status: String = r.try_get(3)?;
            let micros: i64 = r.try_get(4)?;
            let row = Row {
                product: r.try_get(1)?,
                total: r.try_get(2)?,
                pending: status == "PENDING",
                waited: Duration::from_micros(micros.max(0) as u64),
                buyer: r.try_get(5)?,
                created_at: r.try_get(6)?,
            };
            rows.insert(r.try_get::<Uuid, _>(0)?, row);
        }
        let mut locked = Locked {
            rows,
            stock: parse_stock(&stock.rows)?,
            rules: parse_rules(&rules.rows)?,
            held: HashMap::new(),
        };
        let mut missing: Vec<u64> = locked
            .rows
            .values()
            .filter(|r| r.pending && self.products.binary_search(&r.product).is_err())
            .map(|r| r.product)
            .collect();
        if !missing.is_empty() {
            missing.sort_unstable();
            missing.dedup();
            let mut more = Script::new();
            push_stock_reads(&mut more, &missing);
            if let [stock, rules] = more.run(&mut *tx).await?.as_slice() {
                locked.stock.extend(parse_stock(&stock.rows)?);
                locked.rules.extend(parse_rules(&rules.rows)?);
            }
        }
        locked.held = held_by_buyers(
            tx,
            &locked.rules,
            locked.rows.values().filter(|r| r.pending),
        )
        .await?;
        Ok(locked)
    }

    /// Decides the orders of the `live` groups in arrival order against
    /// what was read. Returns one [`Decided`] per group (`None` for a group
    /// not live), the statements that write the decisions, the new
    /// reservations and one decision time (read back by the last of them),
    /// and how many rows each of those statements must change (`None`: not
    /// checked).
    fn decide(
        &self,
        groups: &[Group<'_>],
        live: &[bool],
        locked: &mut Locked,
        terms: Terms,
    ) -> (Vec<Option<Decided>>, Script, Vec<Option<u64>>) {
        let before: BTreeMap<u64, i64> = locked.stock.iter().map(|(p, (_, r))| (*p, *r)).collect();
        let mut written = Written::default();
        let mut out = Vec::with_capacity(groups.len());
        // Each order once, in the first live group that names it.
        let mut seen = HashSet::new();
        for ((group, ids), live) in groups.iter().zip(&self.group_ids).zip(live) {
            if !live {
                out.push(None);
                continue;
            }
            let mut decisions = Vec::with_capacity(ids.len());
            let mut touched = Vec::new();
            for id in ids.iter().filter(|id| seen.insert(**id)) {
                let outcome = decide_one(locked, id, &mut touched);
                if let (Some(row), Outcome::Accepted | Outcome::Rejected(_)) =
                    (locked.rows.get(id), &outcome)
                {
                    written.add(*id, row.product, &outcome, group.lease);
                }
                decisions.push(Decision {
                    order_id: OrderId::from(*id),
                    outcome,
                    waited: locked.rows.get(id).map(|r| r.waited).unwrap_or_default(),
                    times: None,
                });
            }
            touched.sort_unstable();
            touched.dedup();
            let sold_out = touched
                .into_iter()
                .filter(|p| {
                    locked
                        .stock
                        .get(p)
                        .is_some_and(|(stored, reserved)| stored - reserved <= 0)
                })
                .filter_map(|p| ProductId::new(p as i64).ok())
                .collect();
            out.push(Some(Decided {
                decisions,
                sold_out,
            }));
        }
        // What the accepted orders of known buyers add to their holdings
        // (an entry per buyer and product of this transaction's orders).
        let mut bought: BTreeMap<(u64, &str), i64> = BTreeMap::new();
        for decision in out.iter().flatten().flat_map(|d| &d.decisions) {
            if let (Outcome::Accepted, Some(row)) = (
                &decision.outcome,
                locked.rows.get(&decision.order_id.uuid()),
            ) && let Some(buyer) = row.buyer.as_deref()
            {
                *bought.entry((row.product, buyer)).or_default() += i64::from(row.total);
            }
        }
        let mut writes = Script::new();
        // One decision time for the whole transaction, read back with the
        // writes, so the notices can carry it.
        writes.sql("SET @decided_at = NOW(6)").end();
        let expected = written.push(&mut writes, terms.reservation_ttl);
        let reserved: Vec<(u64, i64)> = locked
            .stock
            .iter()
            .map(|(product, (_, reserved))| (*product, reserved - before[product]))
            .filter(|(_, delta)| *delta > 0)
            .collect();
        if !reserved.is_empty() {
            writes.sql("UPDATE inventories SET reserved_stock = reserved_stock + CASE product_id");
            for (product, delta) in &reserved {
                writes
                    .sql(" WHEN ")
                    .uint(*product)
                    .sql(" THEN ")
                    .int(*delta);
            }
            writes
                .sql(" END WHERE product_id IN (")
                .list(&reserved, |s, (product, _)| {
                    s.uint(*product);
                })
                .sql(")")
                .end();
        }
        let writes_holdings = !bought.is_empty();
        if writes_holdings {
            // In key order, like every lock this transaction takes in turn.
            let bought: Vec<_> = bought.into_iter().collect();
            writes
                .sql("INSERT INTO buyer_holdings (product_id, buyer_id, held) VALUES ")
                .list(&bought, |s, ((product, buyer), units)| {
                    s.sql("(")
                        .uint(*product)
                        .sql(", ")
                        .text(buyer)
                        .sql(", ")
                        .int(*units)
                        .sql(")");
                })
                // `VALUES(held)`: the form MariaDB and MySQL 8 both take
                // (MySQL 8.0.20+ warns that it is deprecated).
                .sql(" ON DUPLICATE KEY UPDATE held = held + VALUES(held)")
                .end();
        }
        let mut expected: Vec<Option<u64>> = std::iter::once(None)
            .chain(expected.into_iter().map(Some))
            .collect();
        if !reserved.is_empty() {
            expected.push(Some(reserved.len() as u64));
        }
        if writes_holdings {
            // One row inserted or two changed per holding: not checked.
            expected.push(None);
        }
        if terms.events && push_events(&mut writes, &out, locked, &before) {
            // One row per event, by construction: not checked.
            expected.push(None);
        }
        writes.sql("SELECT CAST(@decided_at AS DATETIME(6))").end();
        expected.push(None);
        (out, writes, expected)
    }
}

/// Appends the events outbox rows of this transaction's decisions, and of
/// the products it sold out (available before it, none after); false
/// when there are none.
fn push_events(
    writes: &mut Script,
    decided: &[Option<Decided>],
    locked: &Locked,
    reserved_before: &BTreeMap<u64, i64>,
) -> bool {
    let (mut accepted, mut rejected) = (Vec::new(), Vec::new());
    for d in decided.iter().flatten().flat_map(|d| &d.decisions) {
        match d.outcome {
            Outcome::Accepted => accepted.push(d.order_id.uuid()),
            Outcome::Rejected(_) => rejected.push(d.order_id.uuid()),
            Outcome::AlreadyDecided | Outcome::Unknown => {}
        }
    }
    let sold_out: Vec<u64> = locked
        .stock
        .iter()
        .filter(|(product, (stored, reserved))| {
            let before = reserved_before.get(product).copied().unwrap_or(*reserved);
            stored - before > 0 && stored - reserved <= 0
        })
        .map(|(product, _)| *product)
        .collect();
    db_events::push_decided(writes, &accepted, &rejected, &sold_out, "@decided_at")
}

/// An outcome (`None`: accepted; else the reason rejected) and its decider.
type OutcomeKey = (Option<&'static str>, String);
/// Decided orders as (product, order), per lease epoch.
type ByEpoch = BTreeMap<u64, Vec<(u64, Uuid)>>;

/// The decisions of one transaction, by outcome and decider, to be written
/// with one statement each.
#[derive(Default)]
struct Written {
    outcomes: BTreeMap<OutcomeKey, ByEpoch>,
}

impl Written {
    fn add(&mut self, id: Uuid, product: u64, outcome: &Outcome, lease: &Lease) {
        let reason = match outcome {
            Outcome::Rejected(r) => Some(*r),
            _ => None,
        };
        self.outcomes
            .entry((reason, lease.owner.clone()))
            .or_default()
            .entry(lease.epoch)
            .or_default()
            .push((product, id));
    }

    /// One conditional UPDATE per outcome (the accepted, the rejected per
    /// reason) and decider, whatever the number of partitions: each
    /// order's `decided_epoch` is its partition's, chosen by its product
    /// (partitions never share a product). Only if one product came with
    /// two epochs (which no real message does) is each epoch written on
    /// its own. Returns how many rows each statement must change: the rows
    /// are locked by this transaction, so every one it names.
    fn push(&self, script: &mut Script, reservation_ttl: Duration) -> Vec<u64> {
        let mut expected = Vec::new();
        for ((reason, owner), by_epoch) in &self.outcomes {
            let mut epoch_of: BTreeMap<u64, u64> = BTreeMap::new();
            let shared_product = by_epoch.iter().any(|(epoch, orders)| {
                orders
                    .iter()
                    .any(|(p, _)| *epoch_of.entry(*p).or_insert(*epoch) != *epoch)
            });
            type Part<'a> = (u64, &'a [(u64, Uuid)]);
            let statements: Vec<Vec<Part<'_>>> = if shared_product {
                by_epoch
                    .iter()
                    .map(|(e, orders)| vec![(*e, orders.as_slice())])
                    .collect()
            } else {
                vec![
                    by_epoch
                        .iter()
                        .map(|(e, orders)| (*e, orders.as_slice()))
                        .collect(),
                ]
            };
            for parts in statements {
                match reason {
                    None => script
                        .sql("UPDATE orders SET status = 'ACCEPTED', expires_at = @decided_at + INTERVAL ")
                        .uint(reservation_ttl.as_micros() as u64)
                        .sql(" MICROSECOND"),
                    Some(reason) => script
                        .sql("UPDATE orders SET status = 'REJECTED', reason = ")
                        .text(reason),
                };
                script
                    .sql(", decided_at = @decided_at, decided_by = ")
                    .text(owner)
                    .sql(", decided_epoch = ");
                if let [(epoch, _)] = parts.as_slice() {
                    script.uint(*epoch);
                } else {
                    script.sql("CASE product_id");
                    for (epoch, orders) in &parts {
                        let mut products: Vec<u64> = orders.iter().map(|(p, _)| *p).collect();
                        products.sort_unstable();
                        products.dedup();
                        for p in products {
                            script.sql(" WHEN ").uint(p).sql(" THEN ").uint(*epoch);
                        }
                    }
                    script.sql(" END");
                }
                let ids: Vec<Uuid> = parts
                    .iter()
                    .flat_map(|(_, orders)| orders.iter().map(|(_, id)| *id))
                    .collect();
                script
                    .sql(" WHERE status = 'PENDING' AND id IN (")
                    .list(&ids, |s, id| {
                        s.uuid(*id);
                    })
                    .sql(")")
                    .end();
                expected.push(ids.len() as u64);
            }
        }
        expected
    }
}

/// One order's outcome against the running stock, buyer holdings and
/// rules; an accepted order's units are taken from the running stock.
fn decide_one(locked: &mut Locked, id: &Uuid, touched: &mut Vec<u64>) -> Outcome {
    let Some(row) = locked.rows.get(id) else {
        return Outcome::Unknown;
    };
    if !row.pending {
        return Outcome::AlreadyDecided;
    }
    touched.push(row.product);
    let rule = locked.rules.get(&row.product);
    let limit = rule.and_then(|r| r.max_per_buyer);
    let holding = row
        .buyer
        .as_ref()
        .filter(|_| limit.is_some())
        .map(|b| locked.held.entry((row.product, b.clone())).or_default());
    let total = i64::from(row.total);
    match locked.stock.get_mut(&row.product) {
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

/// Two statements: `products`' stock rows, locked in id order, and their
/// sale rules (a plain read).
fn push_stock_reads(script: &mut Script, products: &[u64]) {
    let ids = |s: &mut Script, p: &u64| {
        s.uint(*p);
    };
    script
        .sql("SELECT product_id, stored_stock, reserved_stock FROM inventories WHERE product_id IN (")
        .list(products, ids)
        .sql(") ORDER BY product_id FOR UPDATE")
        .end();
    script
        .sql("SELECT id, max_per_buyer, sale_starts_at, sale_ends_at FROM products WHERE id IN (")
        .list(products, ids)
        .sql(
            ") AND (max_per_buyer IS NOT NULL OR sale_starts_at IS NOT NULL OR sale_ends_at IS NOT NULL)",
        )
        .end();
}

fn parse_stock(rows: &[MySqlRow]) -> Result<BTreeMap<u64, (i64, i64)>, sqlx::Error> {
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, (r.try_get(1)?, r.try_get(2)?))))
        .collect()
}

fn parse_rules(rows: &[MySqlRow]) -> Result<HashMap<u64, SaleRule>, sqlx::Error> {
    rows.iter()
        .map(|r| {
            let rule = SaleRule {
                max_per_buyer: r.try_get(1)?,
                starts_at: r.try_get(2)?,
                ends_at: r.try_get(3)?,
            };
            Ok((r.try_get(0)?, rule))
        })
        .collect()
}

/// Every write changed the rows it had to; returns the decision time read
/// back by the last of the `expected` statements.
fn check_written(answers: &[Answer], expected: &[Option<u64>]) -> Result<DateTime<Utc>, DbError> {
    for (answer, expected) in answers.iter().zip(expected) {
        if let Some(n) = *expected
            && answer.affected != n
        {
            return Err(DbError::Inconsistent(format!(
                "decided {} of {n} locked orders",
                answer.affected
            )));
        }
    }
    Ok(answers
        .get(expected.len() - 1)
        .and_then(|a| a.rows.first())
        .ok_or(sqlx::Error::RowNotFound)?
        .try_get(0)?)
}

/// Records on each new decision when it was made (and, accepted, until
/// when it holds its units).
fn stamp(decided: &mut [Option<Decided>], at: DateTime<Utc>, reservation_ttl: Duration) {
    let until = at + chrono::Duration::microseconds(reservation_ttl.as_micros() as i64);
    for d in decided.iter_mut().flatten() {
        for decision in &mut d.decisions {
            decision.times = match decision.outcome {
                Outcome::Accepted => Some((at, Some(until))),
                Outcome::Rejected(_) => Some((at, None)),
                Outcome::AlreadyDecided | Outcome::Unknown => None,
            };
        }
    }
}

/// An order row as the deciding transaction locked it.
struct Row {
    product: u64,
    total: u32,
    pending: bool,
    /// From recording to now, by the database clock.
    waited: Duration,
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

/// Units each buyer of `orders` already holds (ACCEPTED or PAID) of each
/// product that has a `max_per_buyer`, one `buyer_holdings` row each.
/// Nothing changes them meanwhile: a cancel or expiry locks the product's
/// inventory row first, which this transaction holds, and only this
/// partition accepts orders for these products.
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
    // Padded like every list here, so the statement cache keeps a few
    // shapes; and at most HOLDINGS_PER_QUERY pairs a statement, since a
    // statement takes at most 65,535 parameters (MySQL error 1390), which a
    // combined round of many large limited batches would pass.
    let pairs: Vec<(u64, &str)> = pairs.into_iter().collect();
    let mut held = HashMap::with_capacity(pairs.len());
    for pairs in pairs.chunks(HOLDINGS_PER_QUERY) {
        let condition =
            vec!["(product_id = ? AND buyer_id = ?)"; padded_len(pairs.len())].join(" OR ");
        let sql =
            format!("SELECT product_id, buyer_id, held FROM buyer_holdings WHERE {condition}");
        let mut q = sqlx::query_as::<_, (u64, String, i64)>(AssertSqlSafe(sql));
        for (product, buyer) in padded(pairs) {
            q = q.bind(*product).bind(*buyer);
        }
        held.extend(
            q.fetch_all(&mut *tx)
                .await?
                .into_iter()
                .map(|(p, b, units)| ((p, b), units)),
        );
    }
    Ok(held)
}

/// Most (product, buyer) pairs one holdings read asks for: two parameters
/// each, a power of two (so padding never passes it) far below 65,535.
const HOLDINGS_PER_QUERY: usize = 4096;

/// Decides `orders` in a transaction of its own and commits it, fenced by
/// `lease`: `None` (nothing written) when the partition is no longer this
/// worker's. The fence row stays share-locked until the commit, so the
/// partition cannot change hands in between.
pub async fn decide_fenced(
    db: &sqlx::MySqlPool,
    orders: &[OrderMessage],
    terms: Terms,
    lease: &Lease,
) -> Result<Option<Decided>, DbError> {
    let group = Group { orders, lease };
    Ok(decide_fenced_groups(db, &[group], terms)
        .await?
        .pop()
        .flatten())
}

/// [`decide_fenced`] for several partitions' groups in one transaction and
/// one commit: a group whose lease is lost is left out (`None`), the others
/// decided.
///
/// Three round trips: `START TRANSACTION`, the groups' fences and the
/// reads as one query; the writes as another, whose row counts are checked
/// before the third, `COMMIT` (one more only for buyers' holdings, or a
/// product no message named).
pub async fn decide_fenced_groups(
    db: &sqlx::MySqlPool,
    groups: &[Group<'_>],
    terms: Terms,
) -> Result<Vec<Option<Decided>>, DbError> {
    if groups.is_empty() {
        return Ok(Vec::new());
    }
    let plan = Plan::new(groups);
    let mut session = Session::open(db).await?;
    let mut reads = Script::new();
    reads.sql("START TRANSACTION").end();
    leases::push_fences(&mut reads, groups.iter().map(|g| g.lease));
    if !plan.ids.is_empty() {
        plan.push_reads(&mut reads);
    }
    let answers = reads.run(session.conn()).await?;
    let (fences, answers) = answers[1..].split_first().ok_or_else(|| {
        DbError::Inconsistent("the deciding reads returned too few results".into())
    })?;
    let live: Vec<bool> = groups
        .iter()
        .map(|g| leases::holds(&fences.rows, g.lease))
        .collect::<Result<_, _>>()?;
    let decided = if live.contains(&true) && !plan.ids.is_empty() {
        let mut locked = plan.locked(session.conn(), answers).await?;
        let (mut decided, writes, expected) = plan.decide(groups, &live, &mut locked, terms);
        // Checked before the commit: a write that missed a locked row is a
        // bug, and its transaction must not commit.
        let at = check_written(&writes.run(session.conn()).await?, &expected)?;
        stamp(&mut decided, at, terms.reservation_ttl);
        shared::fault::point(shared::fault::WORKER_BEFORE_COMMIT);
        sqlx::raw_sql("COMMIT").execute(session.conn()).await?;
        decided
    } else {
        sqlx::raw_sql("ROLLBACK").execute(session.conn()).await?;
        live.iter().map(|l| l.then(Decided::default)).collect()
    };
    session.finish();
    Ok(decided)
}

/// Rejects an order whose deciding transaction fails on its own for a
/// reason that is not transient (`DECISION_FAILED`), in a transaction fenced
/// by `lease`: `Ok(None)` when the partition is no longer this worker's;
/// `AlreadyDecided` when it is no longer PENDING.
pub async fn reject_undecidable(
    db: &sqlx::MySqlPool,
    order: OrderId,
    lease: &Lease,
    events: bool,
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
    if events && result.rows_affected() == 1 {
        db_events::record_orders(&mut tx, Kind::Rejected, &[order.uuid()]).await?;
    }
    tx.commit().await?;
    Ok(Some(Decision {
        order_id: order,
        outcome: if result.rows_affected() == 1 {
            Outcome::Rejected(reason::DECISION_FAILED)
        } else {
            Outcome::AlreadyDecided
        },
        waited: Duration::ZERO,
        times: None,
    }))
}

/// Rejects a dead-lettered order if it is still PENDING; true when it was.
pub async fn reject_dead_lettered(
    db: &sqlx::MySqlPool,
    order: OrderId,
    decider: &str,
    events: bool,
) -> Result<bool, sqlx::Error> {
    let mut tx = db.begin().await?;
    let result = sqlx::query(
        "UPDATE orders SET status = 'REJECTED', reason = ?, decided_at = NOW(6), decided_by = ? \
         WHERE id = ? AND status = 'PENDING'",
    )
    .bind(reason::DEAD_LETTERED)
    .bind(decider)
    .bind(order.uuid())
    .execute(&mut *tx)
    .await?;
    let rejected = result.rows_affected() == 1;
    if events && rejected {
        db_events::record_orders(&mut tx, Kind::Rejected, &[order.uuid()]).await?;
    }
    tx.commit().await?;
    Ok(rejected)
}
