//! The `products` table (and the inventory row created with each product).

use crate::domain::{ProductId, ProductName, Stock};
use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, FromRow, MySqlPool};

/// A product as stored.
#[derive(Debug, Clone, FromRow)]
pub struct ProductRow {
    /// Its id.
    pub id: u64,
    /// Its name.
    pub name: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// The most units one buyer may hold (ACCEPTED and PAID).
    pub max_per_buyer: Option<u32>,
    /// Orders before this instant are rejected `SALE_NOT_STARTED`.
    pub sale_starts_at: Option<DateTime<Utc>>,
    /// Orders from this instant on are rejected `SALE_ENDED`.
    pub sale_ends_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "id, name, created_at, max_per_buyer, sale_starts_at, sale_ends_at";

/// A product's sale rules; `None` means no limit, or no bound on the window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SaleRules {
    /// The most units one buyer may hold.
    pub max_per_buyer: Option<u32>,
    /// When the sale opens.
    pub sale_starts_at: Option<DateTime<Utc>>,
    /// When it closes.
    pub sale_ends_at: Option<DateTime<Utc>>,
}

impl ProductRow {
    /// Its sale rules.
    pub fn rules(&self) -> SaleRules {
        SaleRules {
            max_per_buyer: self.max_per_buyer,
            sale_starts_at: self.sale_starts_at,
            sale_ends_at: self.sale_ends_at,
        }
    }
}

/// What [`create`] did.
#[derive(Debug)]
pub enum Created {
    /// A new product.
    New(ProductRow),
    /// The product an earlier request with the same key and body created.
    Existing(ProductRow),
    /// The key was used before with another request; nothing created.
    KeyReused,
}

/// Creates a product with its inventory (`stored_stock = stock`) in one
/// transaction; with `key`, at most once per key.
pub async fn create(
    pool: &MySqlPool,
    name: &ProductName,
    stock: Stock,
    rules: SaleRules,
    key: Option<&crate::db::orders::IdempotencyKey>,
) -> Result<Created, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO products (name, max_per_buyer, sale_starts_at, sale_ends_at, idempotency_key, request_hash) \
         VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(name.as_str())
    .bind(rules.max_per_buyer)
    .bind(rules.sale_starts_at)
    .bind(rules.sale_ends_at)
    .bind(key.map(|k| k.key.as_str()))
    .bind(key.map(|k| &k.request_hash[..]))
    .execute(&mut *tx)
    .await;
    let id = match (inserted, key) {
        (Ok(done), _) => done.last_insert_id(),
        (Err(sqlx::Error::Database(e)), Some(key)) if e.is_unique_violation() => {
            drop(tx);
            let Some(id) = key.earlier::<u64>(pool, "products").await? else {
                return Ok(Created::KeyReused);
            };
            let id = ProductId::new(id as i64).map_err(|_| sqlx::Error::RowNotFound)?;
            return get(pool, id)
                .await?
                .map(Created::Existing)
                .ok_or(sqlx::Error::RowNotFound);
        }
        (Err(e), _) => return Err(e),
    };
    sqlx::query("INSERT INTO inventories (product_id, stored_stock) VALUES (?, ?)")
        .bind(id)
        .bind(stock.get())
        .execute(&mut *tx)
        .await?;
    let row = sqlx::query_as::<_, ProductRow>(AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM products WHERE id = ?"
    )))
    .bind(id)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Created::New(row))
}

/// One product, if it exists.
pub async fn get(pool: &MySqlPool, id: ProductId) -> Result<Option<ProductRow>, sqlx::Error> {
    sqlx::query_as(AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM products WHERE id = ?"
    )))
    .bind(id.get())
    .fetch_optional(pool)
    .await
}

/// Changes a product's sale rules: `change` gets the current row (locked)
/// and returns the new rules, or refuses with its own error. `None` when
/// there is no such product.
pub async fn update_rules<E>(
    pool: &MySqlPool,
    id: ProductId,
    change: impl FnOnce(&ProductRow) -> Result<SaleRules, E>,
) -> Result<Option<Result<ProductRow, E>>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let Some(row) = sqlx::query_as::<_, ProductRow>(AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM products WHERE id = ? FOR UPDATE"
    )))
    .bind(id.get())
    .fetch_optional(&mut *tx)
    .await?
    else {
        return Ok(None);
    };
    let rules = match change(&row) {
        Ok(rules) => rules,
        Err(e) => return Ok(Some(Err(e))),
    };
    sqlx::query(
        "UPDATE products SET max_per_buyer = ?, sale_starts_at = ?, sale_ends_at = ? WHERE id = ?",
    )
    .bind(rules.max_per_buyer)
    .bind(rules.sale_starts_at)
    .bind(rules.sale_ends_at)
    .bind(id.get())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Some(Ok(ProductRow {
        max_per_buyer: rules.max_per_buyer,
        sale_starts_at: rules.sale_starts_at,
        sale_ends_at: rules.sale_ends_at,
        ..row
    })))
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
    let rows = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM products ORDER BY id LIMIT ? OFFSET ?"
    )))
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
