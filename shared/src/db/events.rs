//! The events outbox (`order_events`): written by every transaction that
//! makes a transition, read and emptied by the events publisher.
//!
//! A deciding transaction writes one row per outcome (accepted, rejected)
//! naming all its orders with that outcome, packed: one row for hundreds of
//! decisions, so the events cost the hot path a few rows per transaction,
//! not one per order. The other transitions write a row per order. What
//! an order's event tells of it (total, buyer, reason, `expires_at`) is
//! read from `orders` when it is published, since none of it changes once
//! set. A product's event row carries the units available after the change.

use super::script::Script;
use super::{DbError, padded, padded_len, placeholders};
use crate::domain::OrderStatus;
use crate::events::{CloudEvent, EventData, Kind, OrderData, ProductData, timestamp};
use chrono::{DateTime, Utc};
use sqlx::mysql::MySqlRow;
use sqlx::{AssertSqlSafe, MySqlConnection, MySqlPool, Row as _};
use std::collections::HashMap;
use std::time::Duration;
use uuid::Uuid;

/// Most orders whose details one statement reads.
const DETAILS_PER_QUERY: usize = 4096;

/// Appends to `script` one INSERT of the events of a deciding transaction:
/// a row per outcome naming its orders, and a row per product it sold
/// out, all at the SQL variable `at` (such as `@decided_at`). Returns
/// false (and appends nothing) when there is nothing to write.
pub fn push_decided(
    script: &mut Script,
    accepted: &[Uuid],
    rejected: &[Uuid],
    sold_out: &[u64],
    at: &str,
) -> bool {
    let outcomes = [(Kind::Accepted, accepted), (Kind::Rejected, rejected)];
    let outcomes: Vec<_> = outcomes.iter().filter(|(_, ids)| !ids.is_empty()).collect();
    if outcomes.is_empty() && sold_out.is_empty() {
        return false;
    }
    script.sql("INSERT INTO order_events (kind, order_ids, product_id, at, available) VALUES ");
    let mut first = true;
    let mut comma = |script: &mut Script| {
        if !first {
            script.sql(", ");
        }
        first = false;
    };
    for (kind, ids) in outcomes {
        comma(script);
        script
            .sql("('")
            .sql(kind.name())
            .sql("', ")
            .packed_uuids(ids)
            .sql(", NULL, ")
            .sql(at)
            .sql(", NULL)");
    }
    for product in sold_out {
        comma(script);
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
/// this transaction), a row each, at the time the transition stamped on
/// them: `decided_at` for a decision, `closed_at` for the others.
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
        "INSERT INTO order_events (kind, order_id, at) \
         SELECT ?, id, {at} FROM orders WHERE id IN ({}) ORDER BY seq",
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
                stored_stock - reserved_stock \
         FROM inventories \
         WHERE product_id = ? AND (stored_stock - reserved_stock > 0) <> (stored_stock - reserved_stock - ? > 0)",
    )
    .bind(product)
    .bind(delta)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Outbox rows read for publishing, as events in outbox order.
#[derive(Debug, Default)]
pub struct Round {
    /// The rows read (to delete once their events are confirmed).
    pub seqs: Vec<u64>,
    /// Their events, in order.
    pub events: Vec<CloudEvent>,
    /// Per event, from its transition to this read (database clock).
    pub ages: Vec<Duration>,
    /// Orders named by a row that are not in `orders` (deleted by hand):
    /// no event can tell of them.
    pub missing: usize,
    /// Rows dropped because they cannot be read (corrupt, edited by hand).
    pub malformed: usize,
    /// The round stopped before this row, of a kind this version does not
    /// know (a newer version wrote it, and will publish it).
    pub blocked: Option<u64>,
}

/// One outbox row.
struct OutboxRow {
    seq: u64,
    kind: Kind,
    orders: Vec<Uuid>,
    product: Option<u64>,
    at: DateTime<Utc>,
    available: Option<i64>,
    age: Duration,
}

/// An order as its events tell of it.
struct Details {
    product: u64,
    total: u32,
    buyer: Option<String>,
    reason: Option<String>,
    created_at: DateTime<Utc>,
    decided_at: Option<DateTime<Utc>>,
    expires_at: Option<DateTime<Utc>>,
}

/// The oldest rows of the outbox, up to `max_rows` rows and about
/// `max_events` events, as events of `source`, oldest first.
pub async fn oldest(
    pool: &MySqlPool,
    source: &str,
    max_rows: u32,
    max_events: usize,
) -> Result<Round, DbError> {
    let mut conn = pool.acquire().await?;
    let rows = sqlx::query(
        "SELECT seq, kind, order_id, order_ids, product_id, at, available, \
                CAST(TIMESTAMPDIFF(MICROSECOND, at, NOW(6)) AS SIGNED) \
         FROM order_events ORDER BY seq LIMIT ?",
    )
    .bind(max_rows)
    .fetch_all(&mut *conn)
    .await?;
    let mut round = Round::default();
    let mut outbox = Vec::with_capacity(rows.len());
    let mut named = 0;
    for row in &rows {
        let parsed = match parse_row(row)? {
            Parsed::Row(parsed) => parsed,
            // A kind a newer version wrote: left for it to publish (the
            // round ends here, so nothing after it goes first).
            Parsed::Unknown(seq) => {
                round.blocked = Some(seq);
                break;
            }
            // Edited by hand, or corrupt: nothing can be told of it; it
            // must not hold back every event after it.
            Parsed::Malformed(seq, why) => {
                tracing::error!(seq, %why, "a malformed outbox row; dropped");
                round.seqs.push(seq);
                round.malformed += 1;
                continue;
            }
        };
        round.seqs.push(parsed.seq);
        named += parsed.orders.len().max(1);
        outbox.push(parsed);
        if named >= max_events {
            break;
        }
    }
    let ids: Vec<Uuid> = outbox
        .iter()
        .flat_map(|r| r.orders.iter().copied())
        .collect();
    let details = details(&mut conn, &ids).await?;
    for row in outbox {
        if row.orders.is_empty() {
            let product = row.product.unwrap_or_default();
            round.events.push(event(
                source,
                format!("product-{product}.{}.{}", row.kind.name(), row.seq),
                row.kind,
                product.to_string(),
                row.at,
                EventData::Product(ProductData {
                    product_id: product,
                    available_stock: row.available.unwrap_or(0),
                }),
            ));
            round.ages.push(row.age);
            continue;
        }
        let status = row.kind.status().unwrap_or(OrderStatus::Pending);
        for id in &row.orders {
            let Some(d) = details.get(id) else {
                round.missing += 1;
                continue;
            };
            round.events.push(event(
                source,
                format!("{id}.{}", row.kind.name()),
                row.kind,
                id.to_string(),
                row.at,
                EventData::Order(OrderData {
                    order_id: *id,
                    product_id: d.product,
                    total: d.total,
                    buyer_id: d.buyer.clone(),
                    status,
                    reason: d.reason.clone(),
                    created_at: timestamp(d.created_at),
                    decided_at: d.decided_at.map(timestamp),
                    expires_at: d.expires_at.map(timestamp),
                }),
            ));
            round.ages.push(row.age);
        }
    }
    Ok(round)
}

/// An outbox row as read.
enum Parsed {
    Row(OutboxRow),
    /// Of a kind this version does not know.
    Unknown(u64),
    /// Its contents contradict each other.
    Malformed(u64, String),
}

fn parse_row(row: &MySqlRow) -> Result<Parsed, DbError> {
    let seq: u64 = row.try_get(0)?;
    let kind: String = row.try_get(1)?;
    let Some(kind) = Kind::parse(&kind) else {
        return Ok(Parsed::Unknown(seq));
    };
    let single: Option<Uuid> = row.try_get(2)?;
    let packed: Option<Vec<u8>> = row.try_get(3)?;
    let mut orders: Vec<Uuid> = single.into_iter().collect();
    if let Some(packed) = packed {
        if packed.len() % 16 != 0 {
            return Ok(Parsed::Malformed(
                seq,
                format!("it packs {} bytes of order ids", packed.len()),
            ));
        }
        orders.extend(
            packed
                .chunks_exact(16)
                .map(|b| Uuid::from_slice(b).expect("16 bytes")),
        );
    }
    if kind.is_order() == orders.is_empty() {
        return Ok(Parsed::Malformed(
            seq,
            format!("a {} row names {} orders", kind.name(), orders.len()),
        ));
    }
    let micros: i64 = row.try_get(7)?;
    Ok(Parsed::Row(OutboxRow {
        seq,
        kind,
        orders,
        product: row.try_get(4)?,
        at: row.try_get(5)?,
        available: row.try_get(6)?,
        age: Duration::from_micros(micros.max(0) as u64),
    }))
}

/// What the events of `ids` tell of each order.
async fn details(
    conn: &mut MySqlConnection,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, Details>, DbError> {
    let mut out = HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(DETAILS_PER_QUERY) {
        let mut script = Script::new();
        script
            .sql(
                "SELECT id, product_id, total, buyer_id, reason, created_at, decided_at, expires_at \
                 FROM orders FORCE INDEX (uq_orders_id) WHERE id IN (",
            )
            .list(chunk, |s, id| {
                s.uuid(*id);
            })
            .sql(")")
            .end();
        for answer in script.run(&mut *conn).await? {
            for r in answer.rows {
                out.insert(
                    r.try_get::<Uuid, _>(0)?,
                    Details {
                        product: r.try_get(1)?,
                        total: r.try_get(2)?,
                        buyer: r.try_get(3)?,
                        reason: r.try_get(4)?,
                        created_at: r.try_get(5)?,
                        decided_at: r.try_get(6)?,
                        expires_at: r.try_get(7)?,
                    },
                );
            }
        }
    }
    Ok(out)
}

fn event(
    source: &str,
    id: String,
    kind: Kind,
    subject: String,
    at: DateTime<Utc>,
    data: EventData,
) -> CloudEvent {
    CloudEvent {
        specversion: "1.0".into(),
        id,
        source: source.to_owned(),
        event_type: kind.event_type(),
        subject,
        time: timestamp(at),
        datacontenttype: "application/json".into(),
        data,
    }
}

/// Deletes the outbox rows `seqs` (published and confirmed).
pub async fn forget(pool: &MySqlPool, seqs: &[u64]) -> Result<(), DbError> {
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
    script.run(&mut conn).await?;
    Ok(())
}

/// How many rows wait in the outbox, and the oldest one's age (database
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
