//! The events outbox (`order_events`): written by every transaction that
//! makes a transition, read and emptied by the events publisher.
//!
//! An order's event row names the order; what the event tells of it
//! (total, buyer, reason, `expires_at`) is read from `orders` when it is
//! published, since none of it changes once set. A product's event row
//! carries the units available after the change.

use super::script::Script;
use super::{padded, padded_len, placeholders};
use crate::domain::OrderStatus;
use crate::events::{CloudEvent, EventData, Kind, OrderData, ProductData, timestamp};
use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, MySqlConnection, MySqlPool, Row as _};
use std::time::Duration;
use uuid::Uuid;

/// Appends to `script` one INSERT of the events of a deciding transaction:
/// each order's decision and each product it sold out, all at the SQL
/// variable `at` (such as `@decided_at`). Returns false (and appends
/// nothing) when there is nothing to write.
pub fn push_decided(
    script: &mut Script,
    orders: &[(Uuid, u64, Kind)],
    sold_out: &[u64],
    at: &str,
) -> bool {
    if orders.is_empty() && sold_out.is_empty() {
        return false;
    }
    script.sql("INSERT INTO order_events (kind, order_id, product_id, at, available) VALUES ");
    let mut first = true;
    for (id, product, kind) in orders {
        if !first {
            script.sql(", ");
        }
        first = false;
        script
            .sql("('")
            .sql(kind.name())
            .sql("', ")
            .uuid(*id)
            .sql(", ")
            .uint(*product)
            .sql(", ")
            .sql(at)
            .sql(", NULL)");
    }
    for product in sold_out {
        if !first {
            script.sql(", ");
        }
        first = false;
        script
            .sql("('sold_out', NULL, ")
            .uint(*product)
            .sql(", ")
            .sql(at)
            .sql(", 0)");
    }
    script.end();
    true
}

/// Records `kind` for the orders `ids` (already moved to its status in
/// this transaction), at the time the transition stamped on them:
/// `decided_at` for a decision, `closed_at` for the others.
pub async fn record_orders(
    tx: &mut MySqlConnection,
    kind: Kind,
    ids: &[Uuid],
) -> Result<(), sqlx::Error> {
    if ids.is_empty() {
        return Ok(());
    }
    let at = match kind {
        Kind::Accepted | Kind::Rejected => "decided_at",
        _ => "closed_at",
    };
    let sql = format!(
        "INSERT INTO order_events (kind, order_id, product_id, at) \
         SELECT ?, id, product_id, {at} FROM orders WHERE id IN ({})",
        placeholders(padded_len(ids.len()))
    );
    let mut q = sqlx::query(AssertSqlSafe(sql)).bind(kind.name());
    for id in padded(ids) {
        q = q.bind(id);
    }
    q.execute(&mut *tx).await?;
    Ok(())
}

/// Records `sold_out` or `available` for `product` when a change of
/// `delta` units of availability (already written in this transaction,
/// which holds the inventory row) moved it across zero.
pub async fn record_crossing(
    tx: &mut MySqlConnection,
    product: u64,
    delta: i64,
) -> Result<(), sqlx::Error> {
    if delta == 0 {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO order_events (kind, product_id, at, available) \
         SELECT IF(stored_stock - reserved_stock > 0, 'available', 'sold_out'), product_id, NOW(6), \
                CAST(stored_stock - reserved_stock AS SIGNED) \
         FROM inventories \
         WHERE product_id = ? AND (stored_stock - reserved_stock > 0) <> (stored_stock - reserved_stock - ? > 0)",
    )
    .bind(product)
    .bind(delta)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// An outbox row, with what its event needs.
#[derive(Debug, Clone)]
pub struct Outboxed {
    /// Its place in the outbox.
    pub seq: u64,
    /// The event.
    pub event: CloudEvent,
    /// From the transition to this read (database clock).
    pub age: Duration,
}

/// The oldest `limit` rows of the outbox, as events of `source`, oldest
/// first. Rows whose order is gone, or of a kind this version does not
/// know, are returned as `Err(seq)` to be dropped with a warning.
pub async fn oldest(
    pool: &MySqlPool,
    source: &str,
    limit: u32,
) -> Result<Vec<Result<Outboxed, u64>>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT e.seq, e.kind, e.order_id, e.product_id, e.at, e.available, \
                CAST(TIMESTAMPDIFF(MICROSECOND, e.at, NOW(6)) AS SIGNED), \
                o.total, o.buyer_id, o.reason, o.created_at, o.decided_at, o.expires_at \
         FROM order_events e LEFT JOIN orders o ON o.id = e.order_id \
         ORDER BY e.seq LIMIT ?",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let seq: u64 = row.try_get(0)?;
        let kind: String = row.try_get(1)?;
        let order: Option<Uuid> = row.try_get(2)?;
        let product: u64 = row.try_get(3)?;
        let at: DateTime<Utc> = row.try_get(4)?;
        let available: Option<i64> = row.try_get(5)?;
        let micros: i64 = row.try_get(6)?;
        let total: Option<u32> = row.try_get(7)?;
        let Some(kind) = Kind::parse(&kind) else {
            out.push(Err(seq));
            continue;
        };
        let (id, subject, data) = match (kind.status(), order, total) {
            (Some(status), Some(order), Some(total)) => (
                format!("{order}.{}", kind.name()),
                order.to_string(),
                EventData::Order(order_data(&row, order, product, total, status)?),
            ),
            (None, _, _) => (
                format!("product-{product}.{}.{seq}", kind.name()),
                product.to_string(),
                EventData::Product(ProductData {
                    product_id: product,
                    available_stock: available.unwrap_or(0),
                }),
            ),
            _ => {
                out.push(Err(seq));
                continue;
            }
        };
        out.push(Ok(Outboxed {
            seq,
            event: CloudEvent {
                specversion: "1.0".into(),
                id,
                source: source.to_owned(),
                event_type: kind.event_type(),
                subject,
                time: timestamp(at),
                datacontenttype: "application/json".into(),
                data,
            },
            age: Duration::from_micros(micros.max(0) as u64),
        }));
    }
    Ok(out)
}

fn order_data(
    row: &sqlx::mysql::MySqlRow,
    order: Uuid,
    product: u64,
    total: u32,
    status: OrderStatus,
) -> Result<OrderData, sqlx::Error> {
    let created_at: DateTime<Utc> = row.try_get(10)?;
    let decided_at: Option<DateTime<Utc>> = row.try_get(11)?;
    let expires_at: Option<DateTime<Utc>> = row.try_get(12)?;
    Ok(OrderData {
        order_id: order,
        product_id: product,
        total,
        buyer_id: row.try_get(8)?,
        status,
        reason: row.try_get(9)?,
        created_at: timestamp(created_at),
        decided_at: decided_at.map(timestamp),
        expires_at: expires_at.map(timestamp),
    })
}

/// Deletes the outbox rows `seqs` (published and confirmed).
pub async fn forget(pool: &MySqlPool, seqs: &[u64]) -> Result<(), sqlx::Error> {
    if seqs.is_empty() {
        return Ok(());
    }
    let mut script = Script::new();
    script
        .sql("DELETE FROM order_events WHERE seq IN (")
        .list(seqs, |s, seq| {
            s.uint(*seq);
        })
        .sql(")")
        .end();
    let mut conn = pool.acquire().await?;
    script.run(&mut conn).await.map_err(|e| match e {
        super::DbError::Sql(e) => e,
        super::DbError::Inconsistent(m) => sqlx::Error::Protocol(m),
    })?;
    Ok(())
}

/// How many events wait in the outbox, and the oldest one's age (database
/// clock).
pub async fn backlog(pool: &MySqlPool) -> Result<(u64, Duration), sqlx::Error> {
    let (count, micros): (i64, Option<i64>) = sqlx::query_as(
        "SELECT COUNT(*), CAST(TIMESTAMPDIFF(MICROSECOND, MIN(at), NOW(6)) AS SIGNED) FROM order_events",
    )
    .fetch_one(pool)
    .await?;
    Ok((
        count.max(0) as u64,
        Duration::from_micros(micros.unwrap_or(0).max(0) as u64),
    ))
}
