//! The `inventories` table: `stored_stock` and `reserved_stock` per product.

use crate::domain::{ProductId, Stock};
use sqlx::{AssertSqlSafe, FromRow, MySqlPool};

/// A product's stock, with its name.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct InventoryRow {
    /// The product.
    pub product_id: u64,
    /// Its name.
    pub product_name: String,
    /// Units the seller holds.
    pub stored_stock: i64,
    /// Units held for accepted, unpaid orders.
    pub reserved_stock: i64,
}

impl InventoryRow {
    /// `stored - reserved`: derived, never stored.
    pub fn available_stock(&self) -> i64 {
        self.stored_stock - self.reserved_stock
    }
}

const SELECT: &str = "SELECT i.product_id, p.name AS product_name, i.stored_stock, i.reserved_stock \
     FROM inventories i JOIN products p ON p.id = i.product_id WHERE i.product_id = ?";

/// A product's inventory, if the product exists.
pub async fn get(pool: &MySqlPool, id: ProductId) -> Result<Option<InventoryRow>, sqlx::Error> {
    sqlx::query_as(SELECT)
        .bind(id.get())
        .fetch_optional(pool)
        .await
}

/// The outcome of setting the stock.
#[derive(Debug)]
pub enum SetStock {
    /// Set; the inventory as it is now.
    Done(InventoryRow),
    /// The product does not exist.
    NotFound,
    /// The new stock is below what is reserved; nothing changed.
    BelowReserved(InventoryRow),
    /// The caller's precondition refused the current row; nothing changed.
    Stale(InventoryRow),
}

/// Sets `stored_stock` to `stock` unless that is below `reserved_stock`, or
/// `precondition` refuses the current row (read under the row lock).
pub async fn set_stock(
    pool: &MySqlPool,
    id: ProductId,
    stock: Stock,
    precondition: impl FnOnce(&InventoryRow) -> bool,
    events: bool,
) -> Result<SetStock, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let current: Option<InventoryRow> =
        sqlx::query_as(AssertSqlSafe(format!("{SELECT} FOR UPDATE")))
            .bind(id.get())
            .fetch_optional(&mut *tx)
            .await?;
    let Some(mut row) = current else {
        return Ok(SetStock::NotFound);
    };
    if !precondition(&row) {
        return Ok(SetStock::Stale(row));
    }
    if stock.get() < row.reserved_stock {
        return Ok(SetStock::BelowReserved(row));
    }
    sqlx::query("UPDATE inventories SET stored_stock = ? WHERE product_id = ?")
        .bind(stock.get())
        .bind(id.get())
        .execute(&mut *tx)
        .await?;
    if events {
        let delta = stock.get() - row.stored_stock;
        super::events::record_crossing(&mut tx, id.get(), delta).await?;
    }
    tx.commit().await?;
    row.stored_stock = stock.get();
    Ok(SetStock::Done(row))
}
