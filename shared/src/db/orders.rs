//! The `orders` table. The order row is the outbox: it is written as PENDING
//! before the api answers, with the id of the api that recorded it
//! (`recorded_by`), which owes its publish; `relayed_at` records when
//! another api's relay claimed and republished it.

use super::DbError;
use super::script::{Script, Session};
use super::{padded, padded_len, placeholders};
use crate::domain::{OrderId, OrderStatus, ProductId, Quantity};
use crate::events::Kind;
use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, FromRow, MySqlExecutor, MySqlPool, Row as _};
use uuid::Uuid;

/// An order as stored.
#[derive(Debug, Clone, FromRow)]
pub struct OrderRow {
    /// Its id.
    pub id: Uuid,
    /// The product ordered.
    pub product_id: u64,
    /// Units asked for.
    pub total: u32,
    /// Its status, as text.
    pub status: String,
    /// Why it was rejected, if it was.
    pub reason: Option<String>,
    /// When it was recorded (database clock).
    pub created_at: DateTime<Utc>,
    /// When it was decided.
    pub decided_at: Option<DateTime<Utc>>,
    /// Until when an accepted order holds its units.
    pub expires_at: Option<DateTime<Utc>>,
    /// The buyer (the `sub` of their token), when buyers have identities.
    pub buyer_id: Option<String>,
}

impl OrderRow {
    /// The status, parsed. The database's CHECK constraint keeps it valid.
    pub fn status(&self) -> OrderStatus {
        OrderStatus::parse(&self.status).unwrap_or(OrderStatus::Pending)
    }
}

const COLUMNS: &str =
    "id, product_id, total, status, reason, created_at, decided_at, expires_at, buyer_id";

/// An order to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrder {
    /// Its id.
    pub id: OrderId,
    /// The product.
    pub product: ProductId,
    /// Units.
    pub total: Quantity,
    /// The buyer, when buyers have identities.
    pub buyer: Option<String>,
}

/// Records a new PENDING order.
pub async fn insert(
    pool: &MySqlPool,
    order: &NewOrder,
    recorded_by: &str,
) -> Result<OrderRow, DbError> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO orders (id, product_id, total, buyer_id, recorded_by) VALUES (?, ?, ?, ?, ?)",
    )
    .bind(order.id.uuid())
    .bind(order.product.get())
    .bind(order.total.get())
    .bind(&order.buyer)
    .bind(recorded_by)
    .execute(&mut *tx)
    .await?;
    let row = fetch(&mut *tx, order.id)
        .await?
        .ok_or(sqlx::Error::RowNotFound)?;
    crate::fault::point(crate::fault::API_BEFORE_COMMIT);
    tx.commit().await.map_err(DbError::committing)?;
    Ok(row)
}

/// What [`insert_many`] wrote.
#[derive(Debug, Default)]
pub struct Inserted {
    /// The rows, in the order given: PENDING, or REJECTED `OUT_OF_STOCK`
    /// for a product that was checked and had nothing available.
    pub rows: Vec<OrderRow>,
    /// Checked products that do have stock available.
    pub available: Vec<ProductId>,
}

/// Records many new orders with one multi-row INSERT, which is atomic on
/// its own: all of them or none.
///
/// Products in `check` (those the workers reported sold out) have their
/// availability read first; an order for one with nothing available is
/// recorded as already REJECTED (`OUT_OF_STOCK`, decided by `api`) instead
/// of PENDING, so it never needs the queue. That is the decision the worker
/// would make: only a restock, cancel or expiry raises availability, and
/// the read sees every one committed before it. Likewise products in
/// `opening` (a sale start that may lie ahead) are read for
/// `sale_starts_at > NOW(6)`, and their orders recorded REJECTED
/// `SALE_NOT_STARTED`: time only moves on, so the worker would agree.
///
/// One round trip (see [`Script`]), two when there is something to read
/// first. Every order gets the same `created_at`, read back with the
/// INSERT, so nothing needs to be selected afterwards.
pub async fn insert_many(
    pool: &MySqlPool,
    orders: &[NewOrder],
    check: &[ProductId],
    opening: &[ProductId],
    recorded_by: &str,
    events: bool,
) -> Result<Inserted, DbError> {
    use crate::domain::reason;
    if orders.is_empty() {
        return Ok(Inserted::default());
    }
    // Closed rather than pooled if a script fails midway (an open
    // transaction must not reach the next user).
    let mut session = Session::open(pool).await?;
    let mut refused: std::collections::HashMap<u64, &'static str> = Default::default();
    let ids = |s: &mut Script, p: &ProductId| {
        s.uint(p.get());
    };
    // One instant for the whole batch, taken before anything is read: the
    // sale-start check and every order's `created_at` use it, so an order is
    // refused SALE_NOT_STARTED exactly when the worker's rule (by
    // `created_at`) would refuse it, even when the sale opens between this
    // round trip and the next.
    let mut reads = Script::new();
    let reading = !check.is_empty() || !opening.is_empty();
    if reading {
        reads.sql("SET @recorded_at = NOW(6)").end();
    }
    if !check.is_empty() {
        reads
            .sql("SELECT product_id FROM inventories WHERE stored_stock - reserved_stock <= 0 AND product_id IN (")
            .list(check, ids)
            .sql(")")
            .end();
    }
    if !opening.is_empty() {
        reads
            .sql("SELECT id FROM products WHERE sale_starts_at > @recorded_at AND id IN (")
            .list(opening, ids)
            .sql(")")
            .end();
    }
    let mut answers = reads
        .run(session.conn())
        .await?
        .into_iter()
        .skip(usize::from(reading));
    if !check.is_empty() {
        for row in answers.next().map(|a| a.rows).unwrap_or_default() {
            refused.insert(row.try_get(0)?, reason::OUT_OF_STOCK);
        }
    }
    let sold_out: std::collections::HashSet<u64> = refused.keys().copied().collect();
    if !opening.is_empty() {
        for row in answers.next().map(|a| a.rows).unwrap_or_default() {
            refused.insert(row.try_get(0)?, reason::SALE_NOT_STARTED);
        }
    }

    // The orders rejected on the spot are decided: their events are written
    // with them, in one transaction.
    let rejected: Vec<Uuid> = orders
        .iter()
        .filter(|o| refused.contains_key(&o.product.get()))
        .map(|o| o.id.uuid())
        .collect();
    let atomic = events && !rejected.is_empty();
    let mut insert = Script::new();
    if !reading {
        insert.sql("SET @recorded_at = NOW(6)").end();
    }
    if atomic {
        insert.sql("START TRANSACTION").end();
    }
    insert.sql(
        "INSERT INTO orders (id, product_id, total, buyer_id, status, reason, created_at, decided_at, decided_by, recorded_by) VALUES ",
    );
    insert.list(orders, |s, order| {
        let reason = refused.get(&order.product.get()).copied();
        s.sql("(")
            .uuid(order.id.uuid())
            .sql(", ")
            .uint(order.product.get())
            .sql(", ")
            .uint(u64::from(order.total.get()))
            .sql(", ")
            .opt_text(order.buyer.as_deref());
        match reason {
            None => s.sql(", 'PENDING', NULL, @recorded_at, NULL, NULL, "),
            Some(r) => s
                .sql(", 'REJECTED', ")
                .text(r)
                .sql(", @recorded_at, @recorded_at, 'api', "),
        };
        s.text(recorded_by).sql(")");
    });
    insert.end();
    if atomic {
        super::events::push_decided(&mut insert, &[], &rejected, &[], "@recorded_at");
        insert.sql("COMMIT").end();
    }
    insert.sql("SELECT CAST(@recorded_at AS DATETIME(6))").end();
    // The INSERT commits on its own (autocommit), or the script's COMMIT does.
    crate::fault::point(crate::fault::API_BEFORE_COMMIT);
    let answers = insert.run(session.conn()).await.map_err(|e| match e {
        DbError::Sql(e) => DbError::committing(e),
        e => e,
    })?;
    session.finish();
    // After the SET and START TRANSACTION when they are here: the INSERT's
    // answer first, the time's last.
    let skip = usize::from(!reading) + usize::from(atomic);
    let answers = &answers[skip.min(answers.len())..];
    let inserted = answers.first().map_or(0, |a| a.affected);
    if inserted != orders.len() as u64 {
        return Err(DbError::Inconsistent(format!(
            "recorded {inserted} of {} orders",
            orders.len()
        )));
    }
    let recorded_at: DateTime<Utc> = answers
        .last()
        .and_then(|a| a.rows.first())
        .ok_or(sqlx::Error::RowNotFound)?
        .try_get(0)?;
    let rows = orders
        .iter()
        .map(|o| {
            let reason = refused.get(&o.product.get()).copied();
            OrderRow {
                id: o.id.uuid(),
                product_id: o.product.get(),
                total: o.total.get(),
                status: if reason.is_some() {
                    "REJECTED"
                } else {
                    "PENDING"
                }
                .to_owned(),
                reason: reason.map(str::to_owned),
                created_at: recorded_at,
                decided_at: reason.map(|_| recorded_at),
                expires_at: None,
                buyer_id: o.buyer.clone(),
            }
        })
        .collect();
    Ok(Inserted {
        rows,
        available: check
            .iter()
            .filter(|p| !sold_out.contains(&p.get()))
            .copied()
            .collect(),
    })
}

/// One order, if it exists.
pub async fn fetch<'e>(
    exec: impl MySqlExecutor<'e>,
    id: OrderId,
) -> Result<Option<OrderRow>, sqlx::Error> {
    sqlx::query_as(AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM orders WHERE id = ?"
    )))
    .bind(id.uuid())
    .fetch_optional(exec)
    .await
}

/// One order, if it exists, read on the primary with a shared lock: a
/// transaction still committing it (its connection lost, the server alive)
/// holds the row's lock, so this waits for its outcome rather than miss it.
/// After a commit whose outcome is unknown ([`DbError::Uncertain`]), this
/// is the answer.
pub async fn fetch_settled(pool: &MySqlPool, id: OrderId) -> Result<Option<OrderRow>, sqlx::Error> {
    sqlx::query_as(AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM orders WHERE id = ? LOCK IN SHARE MODE"
    )))
    .bind(id.uuid())
    .fetch_optional(pool)
    .await
}

/// Removes orders the broker refused to queue (a partition queue at its
/// length limit) while they are still PENDING: no worker will ever see
/// them, and their clients are answered 503 `OVERLOADED`. Returns the ids
/// removed (one decided meanwhile, through another publish, stays).
pub async fn delete_unqueued(pool: &MySqlPool, ids: &[OrderId]) -> Result<Vec<OrderId>, DbError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut tx = pool.begin().await?;
    let list = placeholders(padded_len(ids.len()));
    let mut q = sqlx::query_as::<_, (Uuid,)>(AssertSqlSafe(format!(
        "SELECT id FROM orders FORCE INDEX (uq_orders_id) \
         WHERE status = 'PENDING' AND id IN ({list}) FOR UPDATE"
    )));
    for id in padded(ids) {
        q = q.bind(id.uuid());
    }
    let pending: Vec<Uuid> = q
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(|(id,)| id)
        .collect();
    if !pending.is_empty() {
        let mut q = sqlx::query(AssertSqlSafe(format!(
            "DELETE FROM orders WHERE id IN ({})",
            placeholders(padded_len(pending.len()))
        )));
        for id in padded(&pending) {
            q = q.bind(id);
        }
        q.execute(&mut *tx).await?;
    }
    tx.commit().await.map_err(DbError::committing)?;
    Ok(pending.into_iter().map(OrderId::from).collect())
}

/// Of `ids`, those recorded and no longer PENDING, and those recorded at
/// all (an id not recorded yet, or lost, is in neither). `settled`: read
/// with a shared lock, waiting for a transaction still committing on them
/// (after a commit whose outcome is unknown).
pub async fn decided_among(
    pool: &MySqlPool,
    ids: &[OrderId],
    settled: bool,
) -> Result<(Vec<OrderId>, std::collections::HashSet<OrderId>), sqlx::Error> {
    if ids.is_empty() {
        return Ok(Default::default());
    }
    let sql = format!(
        "SELECT id, status FROM orders FORCE INDEX (uq_orders_id) WHERE id IN ({}){}",
        placeholders(padded_len(ids.len())),
        if settled { " LOCK IN SHARE MODE" } else { "" }
    );
    let mut q = sqlx::query_as::<_, (Uuid, String)>(AssertSqlSafe(sql));
    for id in padded(ids) {
        q = q.bind(id.uuid());
    }
    let rows = q.fetch_all(pool).await?;
    let decided = rows
        .iter()
        .filter(|(_, status)| status != "PENDING")
        .map(|(id, _)| OrderId::from(*id))
        .collect();
    let recorded = rows.into_iter().map(|(id, _)| OrderId::from(id)).collect();
    Ok((decided, recorded))
}

/// A retried submission's key, already scoped and hashed, with the hash of
/// the request it first came with.
#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    /// Hex SHA-256 of the scope and the client's key.
    pub key: String,
    /// SHA-256 of the request's meaningful content.
    pub request_hash: [u8; 32],
}

impl IdempotencyKey {
    /// The id of the row of `table` (whose rows carry `idempotency_key` and
    /// `request_hash`) an earlier request with this key wrote, `None` when
    /// that request was another one (the key is reused), `RowNotFound` when
    /// there is none.
    pub async fn earlier<Id>(
        &self,
        pool: &MySqlPool,
        table: &'static str,
    ) -> Result<Option<Id>, sqlx::Error>
    where
        Id: for<'r> sqlx::Decode<'r, sqlx::MySql> + sqlx::Type<sqlx::MySql> + Send + Unpin,
    {
        let found: Option<(Id, Vec<u8>)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT id, request_hash FROM {table} WHERE idempotency_key = ?"
        )))
        .bind(&self.key)
        .fetch_optional(pool)
        .await?;
        let (id, hash) = found.ok_or(sqlx::Error::RowNotFound)?;
        Ok((hash == self.request_hash).then_some(id))
    }
}

/// What recording an order with an idempotency key found.
#[derive(Debug)]
pub enum Recorded {
    /// A new order was recorded.
    New(OrderRow),
    /// The key was used before with the same request: that order.
    Existing(OrderRow),
    /// The key was used before with a different request.
    KeyReused,
}

/// The order an earlier submission with `key` recorded: `Existing` (the
/// same request), `KeyReused` (another request), or `None` when the key is
/// new. A submission about to be shed asks this first, so a client whose
/// answer was lost never hears "nothing was recorded" for an order that
/// exists.
pub async fn find_keyed(
    pool: &MySqlPool,
    key: &IdempotencyKey,
) -> Result<Option<Recorded>, sqlx::Error> {
    let earlier = match key.earlier::<Uuid>(pool, "orders").await {
        Err(sqlx::Error::RowNotFound) => return Ok(None),
        found => found?,
    };
    let Some(id) = earlier else {
        return Ok(Some(Recorded::KeyReused));
    };
    // Gone since (deleted as unqueued, answered 503): no earlier order.
    Ok(fetch(pool, OrderId::from(id))
        .await?
        .map(Recorded::Existing))
}

/// Records a new PENDING order, or — when `key` was seen before — returns
/// the order it created (same request) or says it was reused (different
/// request). Concurrent submissions with one key record one order: the
/// unique key decides, not a pre-check.
pub async fn record(
    pool: &MySqlPool,
    order: &NewOrder,
    key: Option<&IdempotencyKey>,
    recorded_by: &str,
) -> Result<Recorded, DbError> {
    let Some(key) = key else {
        return insert(pool, order, recorded_by).await.map(Recorded::New);
    };
    let id = order.id;
    let mut tx = pool.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO orders (id, product_id, total, buyer_id, idempotency_key, request_hash, recorded_by) VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(id.uuid())
    .bind(order.product.get())
    .bind(order.total.get())
    .bind(&order.buyer)
    .bind(&key.key)
    .bind(&key.request_hash[..])
    .bind(recorded_by)
    .execute(&mut *tx)
    .await;
    match inserted {
        Ok(_) => {
            let row = fetch(&mut *tx, id).await?.ok_or(sqlx::Error::RowNotFound)?;
            crate::fault::point(crate::fault::API_BEFORE_COMMIT);
            tx.commit().await.map_err(DbError::committing)?;
            Ok(Recorded::New(row))
        }
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            drop(tx);
            Ok(find_keyed(pool, key)
                .await?
                .ok_or(sqlx::Error::RowNotFound)?)
        }
        Err(e) => Err(e.into()),
    }
}

/// The outcome of a pay or cancel request.
#[derive(Debug)]
pub enum Transition {
    /// Done; the order as it is now.
    Done(OrderRow),
    /// No such order.
    NotFound,
    /// The current status does not allow it; the order as it is.
    Refused(OrderRow),
    /// The request's idempotency key was used before with another request:
    /// nothing was done.
    KeyReused,
}

/// Claims `key` for a pay or cancel of `id`, in the transaction that makes
/// it (so it is kept only when the transition is: at most one key per order
/// and action, however many requests): true when it is new, or was used before with this same request
/// (then the transition simply runs again and answers what the order is
/// now); false when it was used with another request. A duplicate key
/// fails only its own statement, so the transaction goes on.
async fn claim_action_key(
    tx: &mut sqlx::MySqlConnection,
    key: &IdempotencyKey,
    id: OrderId,
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO order_action_keys (idempotency_key, request_hash, order_id) VALUES (?, ?, ?)",
    )
    .bind(&key.key)
    .bind(&key.request_hash[..])
    .bind(id.uuid())
    .execute(&mut *tx)
    .await;
    match inserted {
        Ok(_) => Ok(true),
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            let (hash,): (Vec<u8>,) = sqlx::query_as(
                "SELECT request_hash FROM order_action_keys WHERE idempotency_key = ?",
            )
            .bind(&key.key)
            .fetch_one(&mut *tx)
            .await?;
            Ok(hash == key.request_hash)
        }
        Err(e) => Err(e),
    }
}

/// Pays an ACCEPTED, unexpired order: `stored -= total`, `reserved -= total`.
/// An order found past its `expires_at` is expired on the spot (its units
/// released) and the payment refused, whether or not the sweeper ran.
pub async fn pay(
    pool: &MySqlPool,
    id: OrderId,
    key: Option<&IdempotencyKey>,
    events: bool,
) -> Result<Transition, DbError> {
    let mut tx = pool.begin().await?;
    if let Some(key) = key
        && !claim_action_key(&mut tx, key, id).await?
    {
        return Ok(Transition::KeyReused);
    }
    let Some(locked) = lock(&mut tx, id).await? else {
        return Ok(Transition::NotFound);
    };
    let accepted = locked.status == "ACCEPTED";
    if accepted && locked.expired {
        release(&mut tx, &[locked.held(id)], Kind::Expired, events).await?;
    } else if accepted {
        sqlx::query("UPDATE orders SET status = 'PAID', closed_at = NOW(6) WHERE id = ? AND status = 'ACCEPTED'")
            .bind(id.uuid())
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE inventories SET stored_stock = stored_stock - ?, reserved_stock = reserved_stock - ? \
             WHERE product_id = ?",
        )
        .bind(locked.total)
        .bind(locked.total)
        .bind(locked.product)
        .execute(&mut *tx)
        .await?;
        if events {
            super::events::record_orders(&mut tx, Kind::Paid, &[id.uuid()]).await?;
        }
    }
    let row = fetch(&mut *tx, id).await?.ok_or(sqlx::Error::RowNotFound)?;
    // Paid, or expired on the spot: kept with its key. Anything else changed
    // nothing, and leaves nothing behind (a key included).
    if accepted {
        crate::fault::point(crate::fault::API_BEFORE_COMMIT);
        tx.commit().await.map_err(DbError::committing)?;
    } else {
        tx.rollback().await?;
    }
    Ok(if row.status == "PAID" && accepted {
        Transition::Done(row)
    } else {
        Transition::Refused(row)
    })
}

/// Cancels a PENDING or ACCEPTED order, releasing what it reserved. A
/// cancelled PENDING order is left alone by the worker when its message comes.
pub async fn cancel(
    pool: &MySqlPool,
    id: OrderId,
    key: Option<&IdempotencyKey>,
    events: bool,
) -> Result<Transition, DbError> {
    let mut tx = pool.begin().await?;
    if let Some(key) = key
        && !claim_action_key(&mut tx, key, id).await?
    {
        return Ok(Transition::KeyReused);
    }
    let Some(locked) = lock(&mut tx, id).await? else {
        return Ok(Transition::NotFound);
    };
    let done = match locked.status.as_str() {
        "ACCEPTED" => {
            release(&mut tx, &[locked.held(id)], Kind::Cancelled, events).await?;
            true
        }
        "PENDING" => {
            sqlx::query("UPDATE orders SET status = 'CANCELLED', closed_at = NOW(6) WHERE id = ? AND status = 'PENDING'")
                .bind(id.uuid())
                .execute(&mut *tx)
                .await?;
            if events {
                super::events::record_orders(&mut tx, Kind::Cancelled, &[id.uuid()]).await?;
            }
            true
        }
        _ => false,
    };
    let row = fetch(&mut *tx, id).await?.ok_or(sqlx::Error::RowNotFound)?;
    // A refusal changed nothing, and leaves nothing behind (a key included).
    if done {
        crate::fault::point(crate::fault::API_BEFORE_COMMIT);
        tx.commit().await.map_err(DbError::committing)?;
    } else {
        tx.rollback().await?;
    }
    Ok(if done {
        Transition::Done(row)
    } else {
        Transition::Refused(row)
    })
}

/// An order row as [`lock`] read it.
#[derive(Debug)]
struct Locked {
    status: String,
    product: u64,
    total: u32,
    buyer: Option<String>,
    /// Past its `expires_at` (database clock).
    expired: bool,
}

impl Locked {
    /// The units it holds, for [`release`].
    fn held(&self, id: OrderId) -> Held {
        (id.uuid(), self.product, self.total, self.buyer.clone())
    }
}

/// An ACCEPTED order's units: `(id, product, total, buyer)`.
type Held = (Uuid, u64, u32, Option<String>);

/// Locks an order row.
async fn lock(tx: &mut sqlx::MySqlConnection, id: OrderId) -> Result<Option<Locked>, sqlx::Error> {
    let row: Option<(String, u64, u32, Option<String>, i64)> = sqlx::query_as(
        "SELECT status, product_id, total, buyer_id, CAST(COALESCE(expires_at <= NOW(6), 0) AS SIGNED) \
         FROM orders WHERE id = ? FOR UPDATE",
    )
    .bind(id.uuid())
    .fetch_optional(&mut *tx)
    .await?;
    Ok(row.map(|(status, product, total, buyer, expired)| Locked {
        status,
        product,
        total,
        buyer,
        expired: expired == 1,
    }))
}

/// Moves locked ACCEPTED orders to `kind`'s status (CANCELLED or EXPIRED)
/// and gives their units back: to availability, and off their buyers'
/// holdings; with `events`, records the orders' events and each product
/// that is available again. The inventory rows are locked (in product
/// order) before any holding, as in the deciding transaction, so the two
/// cannot deadlock.
async fn release(
    tx: &mut sqlx::MySqlConnection,
    orders: &[Held],
    kind: Kind,
    events: bool,
) -> Result<(), DbError> {
    if orders.is_empty() {
        return Ok(());
    }
    let status = kind.status().map_or("", OrderStatus::as_str);
    let sql = format!(
        "UPDATE orders SET status = ?, closed_at = NOW(6) WHERE status = 'ACCEPTED' AND id IN ({})",
        placeholders(padded_len(orders.len()))
    );
    let mut q = sqlx::query(AssertSqlSafe(sql)).bind(status);
    for (id, ..) in padded(orders) {
        q = q.bind(id);
    }
    let changed = q.execute(&mut *tx).await?.rows_affected();
    if changed != orders.len() as u64 {
        return Err(DbError::Inconsistent(format!(
            "released {changed} of {} locked orders",
            orders.len()
        )));
    }
    let mut per_product: std::collections::BTreeMap<u64, i64> = Default::default();
    let mut per_buyer: std::collections::BTreeMap<(u64, &str), i64> = Default::default();
    for (_, product, total, buyer) in orders {
        *per_product.entry(*product).or_default() += i64::from(*total);
        if let Some(buyer) = buyer {
            *per_buyer.entry((*product, buyer)).or_default() += i64::from(*total);
        }
    }
    for (product, units) in per_product {
        sqlx::query(
            "UPDATE inventories SET reserved_stock = reserved_stock - ? WHERE product_id = ?",
        )
        .bind(units)
        .bind(product)
        .execute(&mut *tx)
        .await?;
        if events {
            super::events::record_crossing(&mut *tx, product, units).await?;
        }
    }
    if events {
        let ids: Vec<Uuid> = orders.iter().map(|(id, ..)| *id).collect();
        super::events::record_orders(&mut *tx, kind, &ids).await?;
    }
    for ((product, buyer), units) in per_buyer {
        let changed = sqlx::query(
            "UPDATE buyer_holdings SET held = held - ? \
             WHERE product_id = ? AND buyer_id = ? AND held >= ?",
        )
        .bind(units)
        .bind(product)
        .bind(buyer)
        .bind(units)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if changed != 1 {
            // Missing or short (an older process decided or cancelled past
            // the migration, or a hand edit): recounted from the orders
            // rather than refused, or this order could never be released
            // and a sweep that holds it would expire nothing. Nothing else
            // writes this row meanwhile: its product's inventory row is
            // locked by this transaction.
            tracing::error!(
                product,
                units,
                "a buyer's holding disagreed with their orders; recounted from them"
            );
            recount_holding(&mut *tx, product, buyer).await?;
        }
    }
    Ok(())
}

/// Sets what `buyer` holds of `product` to what their ACCEPTED and PAID
/// orders hold, as this transaction sees them.
async fn recount_holding(
    tx: &mut sqlx::MySqlConnection,
    product: u64,
    buyer: &str,
) -> Result<(), sqlx::Error> {
    // `VALUES(held)`: the form MariaDB and MySQL 8 both take (MySQL 8.0.20+
    // warns that it is deprecated).
    sqlx::query(
        "INSERT INTO buyer_holdings (product_id, buyer_id, held) \
         SELECT ?, ?, CAST(COALESCE(SUM(total), 0) AS SIGNED) FROM orders \
         WHERE product_id = ? AND buyer_id = ? AND status IN ('ACCEPTED', 'PAID') \
         ON DUPLICATE KEY UPDATE held = VALUES(held)",
    )
    .bind(product)
    .bind(buyer)
    .bind(product)
    .bind(buyer)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Expires up to `limit` ACCEPTED orders past their `expires_at` (database
/// clock), releasing their units. Rows another sweeper (or a payment) holds
/// are skipped, so any number of workers can sweep at once. Returns the
/// orders expired.
pub async fn expire_due(
    pool: &MySqlPool,
    limit: u32,
    set_aside: &[OrderId],
    events: bool,
) -> Result<Vec<OrderId>, DbError> {
    let mut tx = pool.begin().await?;
    let sql = format!(
        "SELECT id, product_id, total, buyer_id FROM orders \
         WHERE status = 'ACCEPTED' AND expires_at <= NOW(6){} \
         ORDER BY expires_at LIMIT ? FOR UPDATE SKIP LOCKED",
        not_among(set_aside)
    );
    let mut q = sqlx::query_as::<_, Held>(AssertSqlSafe(sql));
    for id in set_aside {
        q = q.bind(id.uuid());
    }
    let due: Vec<Held> = q.bind(limit).fetch_all(&mut *tx).await?;
    release(&mut tx, &due, Kind::Expired, events).await?;
    tx.commit().await?;
    Ok(due.into_iter().map(|(id, ..)| OrderId::from(id)).collect())
}

/// ` AND id NOT IN (?, …)` for `ids`, or nothing when there are none.
fn not_among(ids: &[OrderId]) -> String {
    if ids.is_empty() {
        String::new()
    } else {
        format!(" AND id NOT IN ({})", placeholders(ids.len()))
    }
}

/// The first `limit` ACCEPTED orders past their `expires_at` (but
/// `set_aside`), unlocked: for expiring them one by one with
/// [`expire_order`] when a batch fails.
pub async fn due(
    pool: &MySqlPool,
    limit: u32,
    set_aside: &[OrderId],
) -> Result<Vec<OrderId>, sqlx::Error> {
    let sql = format!(
        "SELECT id FROM orders WHERE status = 'ACCEPTED' AND expires_at <= NOW(6){} \
         ORDER BY expires_at LIMIT ?",
        not_among(set_aside)
    );
    let mut q = sqlx::query_as::<_, (Uuid,)>(AssertSqlSafe(sql));
    for id in set_aside {
        q = q.bind(id.uuid());
    }
    let due = q.bind(limit).fetch_all(pool).await?;
    Ok(due.into_iter().map(|(id,)| OrderId::from(id)).collect())
}

/// Expires order `id` alone, if it is still ACCEPTED and past its
/// `expires_at` (and nobody else holds it): true when it was.
pub async fn expire_order(pool: &MySqlPool, id: OrderId, events: bool) -> Result<bool, DbError> {
    let mut tx = pool.begin().await?;
    let due: Vec<Held> = sqlx::query_as(
        "SELECT id, product_id, total, buyer_id FROM orders \
         WHERE id = ? AND status = 'ACCEPTED' AND expires_at <= NOW(6) FOR UPDATE SKIP LOCKED",
    )
    .bind(id.uuid())
    .fetch_all(&mut *tx)
    .await?;
    release(&mut tx, &due, Kind::Expired, events).await?;
    tx.commit().await?;
    Ok(!due.is_empty())
}

/// Filters for listing orders.
#[derive(Debug, Default, Clone)]
pub struct OrderFilter {
    /// Only this product's orders.
    pub product: Option<ProductId>,
    /// Only orders in this status.
    pub status: Option<OrderStatus>,
    /// Only this buyer's orders.
    pub buyer: Option<String>,
}

/// Where a page of orders starts.
#[derive(Debug, Clone, Copy)]
pub enum From {
    /// After skipping this many matching orders.
    Offset(u64),
    /// Right after this order (its `seq`), whatever was recorded since:
    /// a cursor that stays put while orders arrive.
    After(u64),
}

/// A page of orders in recording order.
#[derive(Debug)]
pub struct Listed {
    /// The page.
    pub rows: Vec<OrderRow>,
    /// Whether a matching order follows the page's last (read with the
    /// page, one row past it: not from the count, which another statement
    /// takes while orders change).
    pub more: bool,
    /// Orders matching the filter, in all.
    pub total: u64,
    /// Matching orders before the page's first.
    pub before: u64,
}

/// Up to `limit` orders matching `filter` in recording order, from `from`.
pub async fn list(
    pool: &MySqlPool,
    filter: &OrderFilter,
    limit: u32,
    from: From,
) -> Result<Listed, sqlx::Error> {
    let mut clauses = Vec::new();
    if filter.buyer.is_some() {
        clauses.push("buyer_id = ?");
    }
    if filter.product.is_some() {
        clauses.push("product_id = ?");
    }
    if filter.status.is_some() {
        clauses.push("status = ?");
    }
    let matching = |extra: Option<&str>| {
        let all: Vec<&str> = clauses.iter().copied().chain(extra).collect();
        if all.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", all.join(" AND "))
        }
    };
    let (page_sql, count_sql) = match from {
        From::Offset(_) => (
            format!(
                "SELECT {COLUMNS} FROM orders {} ORDER BY seq LIMIT ? OFFSET ?",
                matching(None)
            ),
            format!("SELECT COUNT(*), 0 FROM orders {}", matching(None)),
        ),
        From::After(_) => (
            format!(
                "SELECT {COLUMNS} FROM orders {} ORDER BY seq LIMIT ?",
                matching(Some("seq > ?"))
            ),
            format!(
                "SELECT COUNT(*), CAST(COALESCE(SUM(seq <= ?), 0) AS SIGNED) FROM orders {}",
                matching(None)
            ),
        ),
    };
    let mut page = sqlx::query_as::<_, OrderRow>(AssertSqlSafe(page_sql));
    let mut count = sqlx::query_as::<_, (i64, i64)>(AssertSqlSafe(count_sql));
    if let From::After(seq) = from {
        count = count.bind(seq);
    }
    if let Some(b) = &filter.buyer {
        page = page.bind(b.clone());
        count = count.bind(b.clone());
    }
    if let Some(p) = filter.product {
        page = page.bind(p.get());
        count = count.bind(p.get());
    }
    if let Some(s) = filter.status {
        page = page.bind(s.as_str());
        count = count.bind(s.as_str());
    }
    // One row past the page says whether another follows.
    let page = match from {
        From::Offset(offset) => page.bind(limit + 1).bind(offset),
        From::After(seq) => page.bind(seq).bind(limit + 1),
    };
    let mut rows = page.fetch_all(pool).await?;
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let (total, before) = count.fetch_one(pool).await?;
    let before = match from {
        From::Offset(offset) => offset,
        From::After(_) => before as u64,
    };
    Ok(Listed {
        rows,
        more,
        total: total as u64,
        before,
    })
}

/// The recording position (`seq`) and buyer of order `id`, if it exists.
pub async fn position(
    pool: &MySqlPool,
    id: OrderId,
) -> Result<Option<(u64, Option<String>)>, sqlx::Error> {
    sqlx::query_as("SELECT seq, buyer_id FROM orders WHERE id = ?")
        .bind(id.uuid())
        .fetch_optional(pool)
        .await
}

/// Orders of `product` counted by status.
pub async fn count_by_status(
    pool: &MySqlPool,
    product: ProductId,
) -> Result<Vec<(OrderStatus, u64)>, sqlx::Error> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, COUNT(*) FROM orders WHERE product_id = ? GROUP BY status")
            .bind(product.get())
            .fetch_all(pool)
            .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(s, n)| Some((OrderStatus::parse(&s).ok()?, n as u64)))
        .collect())
}

/// The waiting orders of `products`: per product with any PENDING order,
/// how many there are and the age in seconds of the oldest (by the database
/// clock). Counted on `idx_orders_product_status`; one row read per product
/// for the age.
pub async fn pending_by_product(
    pool: &MySqlPool,
    products: &[u64],
) -> Result<Vec<(u64, u64, f64)>, sqlx::Error> {
    if products.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT w.product_id, w.waiting, \
                CAST(TIMESTAMPDIFF(MICROSECOND, o.created_at, NOW(6)) / 1e6 AS DOUBLE) \
         FROM (SELECT product_id, COUNT(*) AS waiting, MIN(seq) AS first FROM orders \
               WHERE status = 'PENDING' AND product_id IN ({}) GROUP BY product_id) w \
         JOIN orders o ON o.seq = w.first",
        placeholders(products.len())
    );
    let mut q = sqlx::query_as::<_, (u64, i64, f64)>(AssertSqlSafe(sql));
    for p in products {
        q = q.bind(p);
    }
    Ok(q.fetch_all(pool)
        .await?
        .into_iter()
        .map(|(p, n, age)| (p, n as u64, age.max(0.0)))
        .collect())
}
