//! The `apis` table: live api processes and how far each one's publishes
//! are confirmed, so that the orders of an api that died before its
//! publishes were confirmed are republished by another, once.

use super::{padded, padded_len, placeholders};
use crate::domain::{OrderId, ProductId, Quantity};
use crate::message::OrderMessage;
use sqlx::{AssertSqlSafe, MySqlPool};
use std::time::Duration;
use uuid::Uuid;

/// Records that api `id` is alive, and that every order it recorded with an
/// id below `confirmed_below` is on the broker.
pub async fn heartbeat(
    pool: &MySqlPool,
    id: &str,
    confirmed_below: OrderId,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO apis (id, heartbeat_at, confirmed_below) VALUES (?, NOW(6), ?) \
         ON DUPLICATE KEY UPDATE heartbeat_at = NOW(6), confirmed_below = VALUES(confirmed_below)",
    )
    .bind(id)
    .bind(confirmed_below.uuid())
    .execute(pool)
    .await?;
    Ok(())
}

/// Keeps api `id` listed as dead but not retired (an api cut off from the
/// broker): its heartbeat is set just past `lease`, so live apis claim what
/// it records, and a claimer never deletes its row while it runs.
pub async fn ensure_listed(
    pool: &MySqlPool,
    id: &str,
    confirmed_below: OrderId,
    lease: Duration,
) -> Result<(), sqlx::Error> {
    let stale = (lease + Duration::from_secs(1)).as_micros() as u64;
    sqlx::query(
        "INSERT INTO apis (id, heartbeat_at, confirmed_below) \
         VALUES (?, NOW(6) - INTERVAL ? MICROSECOND, ?) \
         ON DUPLICATE KEY UPDATE heartbeat_at = NOW(6) - INTERVAL ? MICROSECOND",
    )
    .bind(id)
    .bind(stale)
    .bind(confirmed_below.uuid())
    .bind(stale)
    .execute(pool)
    .await?;
    Ok(())
}

/// Api `id` stops: with every publish confirmed it leaves the table (its
/// PENDING orders are all on the broker); otherwise it marks itself dead at
/// once, so another api claims what it could not publish without waiting
/// for its heartbeat to age.
pub async fn leave(
    pool: &MySqlPool,
    id: &str,
    confirmed_below: Option<OrderId>,
) -> Result<(), sqlx::Error> {
    match confirmed_below {
        None => {
            sqlx::query("DELETE FROM apis WHERE id = ?")
                .bind(id)
                .execute(pool)
                .await?
        }
        Some(below) => {
            sqlx::query(
                "INSERT INTO apis (id, heartbeat_at, confirmed_below) VALUES (?, '1970-01-02', ?) \
                 ON DUPLICATE KEY UPDATE heartbeat_at = '1970-01-02', confirmed_below = VALUES(confirmed_below)",
            )
            .bind(id)
            .bind(below.uuid())
            .execute(pool)
            .await?
        }
    };
    Ok(())
}

/// Apis whose heartbeat is older than `lease`, other than `me`.
pub async fn dead(pool: &MySqlPool, me: &str, lease: Duration) -> Result<Vec<String>, sqlx::Error> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT id FROM apis WHERE id <> ? AND heartbeat_at < NOW(6) - INTERVAL ? MICROSECOND",
    )
    .bind(me)
    .bind(lease.as_micros() as u64)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

/// A claim on a dead api's unpublished orders: a transaction holding the
/// dead api's row (locked with `SKIP LOCKED`, so two claimers never take
/// the same orders) and one page of its PENDING orders (not locked: a
/// worker may decide one meanwhile, which the republish then leaves
/// alone). The caller
/// publishes them and then [`Claim::finish`]es; dropping the claim instead
/// rolls it back, and the orders stay the dead api's for the next round.
pub struct Claim {
    tx: sqlx::Transaction<'static, sqlx::MySql>,
    dead: String,
    /// The orders to republish, oldest first.
    pub orders: Vec<OrderMessage>,
    /// Whether this page holds everything that was left.
    pub last: bool,
    /// Whether the dead api has been silent so long ([`RETIRE_AFTER`]) that
    /// its row goes once nothing is left to claim.
    retired: bool,
}

/// How long a silent api's row stays after its orders were claimed: an api
/// cut off from the broker (which stops heartbeating) may come back, and
/// what it records meanwhile must still be claimable.
pub const RETIRE_AFTER: Duration = Duration::from_secs(3600);

impl Claim {
    /// Opens a claim on up to `limit` of `dead`'s PENDING orders that are not
    /// known to be on the broker (ids from its `confirmed_below` on).
    /// `None` when another api holds the claim, or `dead` came back to life.
    pub async fn open(
        pool: &MySqlPool,
        dead: &str,
        lease: Duration,
        limit: u32,
    ) -> Result<Option<Self>, sqlx::Error> {
        let mut tx = pool.begin().await?;
        let row: Option<(Option<Uuid>, bool)> = sqlx::query_as(
            "SELECT confirmed_below, heartbeat_at < NOW(6) - INTERVAL ? MICROSECOND FROM apis \
             WHERE id = ? AND heartbeat_at < NOW(6) - INTERVAL ? MICROSECOND FOR UPDATE SKIP LOCKED",
        )
        .bind(RETIRE_AFTER.as_micros() as u64)
        .bind(dead)
        .bind(lease.as_micros() as u64)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((below, retired)) = row else {
            return Ok(None);
        };
        let rows: Vec<(Uuid, u64, u32)> = sqlx::query_as(
            "SELECT id, product_id, total FROM orders FORCE INDEX (idx_orders_recorded_by) \
             WHERE recorded_by = ? AND id >= ? AND status = 'PENDING' \
             ORDER BY id LIMIT ?",
        )
        .bind(dead)
        .bind(below.unwrap_or(Uuid::nil()))
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        Ok(Some(Self {
            tx,
            dead: dead.to_owned(),
            last: rows.len() < limit as usize,
            retired,
            orders: messages(rows),
        }))
    }

    /// The orders were published and confirmed: they become `me`'s (whose
    /// watermark is past them already), and a long-silent api's row goes
    /// once nothing is left.
    pub async fn finish(mut self, me: &str) -> Result<(), sqlx::Error> {
        if !self.orders.is_empty() {
            let mut q = sqlx::query(AssertSqlSafe(format!(
                "UPDATE orders SET recorded_by = ?, relayed_at = NOW(6) WHERE id IN ({})",
                placeholders(padded_len(self.orders.len()))
            )))
            .bind(me);
            for order in padded(&self.orders) {
                q = q.bind(order.order_id.uuid());
            }
            q.execute(&mut *self.tx).await?;
        }
        if self.orders.is_empty() && self.retired {
            sqlx::query("DELETE FROM apis WHERE id = ?")
                .bind(&self.dead)
                .execute(&mut *self.tx)
                .await?;
        }
        self.tx.commit().await
    }
}

/// Api `me`'s own PENDING orders with ids in `from..to`, oldest first, up to
/// `limit`: the orders it recorded but lost track of (a recording whose
/// commit failed ambiguously, or more unpublished orders than it keeps in
/// memory).
pub async fn own_pending(
    pool: &MySqlPool,
    me: &str,
    from: OrderId,
    to: OrderId,
    limit: u32,
) -> Result<Vec<OrderMessage>, sqlx::Error> {
    let rows: Vec<(Uuid, u64, u32)> = sqlx::query_as(
        "SELECT id, product_id, total FROM orders FORCE INDEX (idx_orders_recorded_by) \
         WHERE recorded_by = ? AND id >= ? AND id < ? AND status = 'PENDING' \
         ORDER BY id LIMIT ?",
    )
    .bind(me)
    .bind(from.uuid())
    .bind(to.uuid())
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(messages(rows))
}

fn messages(rows: Vec<(Uuid, u64, u32)>) -> Vec<OrderMessage> {
    rows.into_iter()
        .filter_map(|(id, product, total)| {
            Some(OrderMessage {
                order_id: OrderId::from(id),
                product_id: ProductId::new(product as i64).ok()?,
                total: Quantity::new(i64::from(total), u32::MAX).ok()?,
            })
        })
        .collect()
}
