//! The `orders` table. The order row is the outbox: it is written as PENDING
//! before the api answers, and `published_at` records that the broker
//! confirmed its message.

use super::placeholders;
use crate::domain::{OrderId, OrderStatus, ProductId, Quantity};
use crate::message::OrderMessage;
use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, FromRow, MySqlExecutor, MySqlPool};
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
}

impl OrderRow {
    /// The status, parsed. The database's CHECK constraint keeps it valid.
    pub fn status(&self) -> OrderStatus {
        OrderStatus::parse(&self.status).unwrap_or(OrderStatus::Pending)
    }
}

const COLUMNS: &str = "id, product_id, total, status, reason, created_at, decided_at, expires_at";

/// Records a new PENDING order.
pub async fn insert(
    pool: &MySqlPool,
    id: OrderId,
    product: ProductId,
    total: Quantity,
) -> Result<OrderRow, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("INSERT INTO orders (id, product_id, total) VALUES (?, ?, ?)")
        .bind(id.uuid())
        .bind(product.get())
        .bind(total.get())
        .execute(&mut *tx)
        .await?;
    let row = fetch(&mut *tx, id).await?.ok_or(sqlx::Error::RowNotFound)?;
    tx.commit().await?;
    Ok(row)
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

/// Notes that the broker confirmed these orders' messages.
pub async fn mark_published(pool: &MySqlPool, ids: &[OrderId]) -> Result<(), sqlx::Error> {
    if ids.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "UPDATE orders SET published_at = NOW(6) WHERE published_at IS NULL AND id IN ({})",
        placeholders(ids.len())
    );
    let mut q = sqlx::query(AssertSqlSafe(sql));
    for id in ids {
        q = q.bind(id.uuid());
    }
    q.execute(pool).await?;
    Ok(())
}

/// PENDING orders whose message the broker never confirmed, oldest first,
/// recorded at least `min_age_ms` ago (younger ones may still be in flight).
pub async fn unpublished(
    pool: &MySqlPool,
    min_age_ms: u64,
    limit: u32,
) -> Result<Vec<OrderMessage>, sqlx::Error> {
    let rows: Vec<(Uuid, u64, u32)> = sqlx::query_as(
        "SELECT id, product_id, total FROM orders \
         WHERE status = 'PENDING' AND published_at IS NULL \
           AND created_at < NOW(6) - INTERVAL ? MICROSECOND \
         ORDER BY seq LIMIT ?",
    )
    .bind(min_age_ms * 1000)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(id, product, total)| {
            Some(OrderMessage {
                order_id: OrderId::from(id),
                product_id: ProductId::new(product as i64).ok()?,
                total: Quantity::new(i64::from(total), u32::MAX).ok()?,
            })
        })
        .collect())
}
