//! The `products` table (and the inventory row created with each product).

use crate::domain::{ProductId, ProductName, Stock};
use chrono::{DateTime, Utc};
use sqlx::{FromRow, MySqlPool};

/// A product as stored.
#[derive(Debug, Clone, FromRow)]
pub struct ProductRow {
    /// Its id.
    pub id: u64,
    /// Its name.
    pub name: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

/// Creates a product with its inventory (`stored_stock = stock`) in one transaction.
pub async fn create(
    pool: &MySqlPool,
    name: &ProductName,
    stock: Stock,
) -> Result<ProductRow, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let id = sqlx::query("INSERT INTO products (name) VALUES (?)")
        .bind(name.as_str())
        .execute(&mut *tx)
        .await?
        .last_insert_id();
    sqlx::query("INSERT INTO inventories (product_id, stored_stock) VALUES (?, ?)")
        .bind(id)
        .bind(stock.get())
        .execute(&mut *tx)
        .await?;
    let row =
        sqlx::query_as::<_, ProductRow>("SELECT id, name, created_at FROM products WHERE id = ?")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
    tx.commit().await?;
    Ok(row)
}

/// One product, if it exists.
pub async fn get(pool: &MySqlPool, id: ProductId) -> Result<Option<ProductRow>, sqlx::Error> {
    sqlx::query_as("SELECT id, name, created_at FROM products WHERE id = ?")
        .bind(id.get())
        .fetch_optional(pool)
        .await
}

/// Whether a product exists.
pub async fn exists(pool: &MySqlPool, id: ProductId) -> Result<bool, sqlx::Error> {
    let found: Option<(u64,)> = sqlx::query_as("SELECT id FROM products WHERE id = ?")
        .bind(id.get())
        .fetch_optional(pool)
        .await?;
    Ok(found.is_some())
}

/// A page of products in id order, and the total count.
pub async fn list(
    pool: &MySqlPool,
    limit: u32,
    offset: u64,
) -> Result<(Vec<ProductRow>, u64), sqlx::Error> {
    let rows =
        sqlx::query_as("SELECT id, name, created_at FROM products ORDER BY id LIMIT ? OFFSET ?")
            .bind(limit)
            .bind(offset)
            .fetch_all(pool)
            .await?;
    let (count,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM products")
        .fetch_one(pool)
        .await?;
    Ok((rows, count as u64))
}

/// Up to `limit` product ids greater than `after`, in id order.
pub async fn ids_after(pool: &MySqlPool, after: u64, limit: u32) -> Result<Vec<u64>, sqlx::Error> {
    let rows: Vec<(u64,)> =
        sqlx::query_as("SELECT id FROM products WHERE id > ? ORDER BY id LIMIT ?")
            .bind(after)
            .bind(limit)
            .fetch_all(pool)
            .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}
