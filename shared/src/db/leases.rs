//! Workers and partition leases: who is alive, who owns which partition,
//! and the fencing token (epoch) that every deciding transaction checks.
//! Every time comes from the database clock.

use super::script::Script;
use sqlx::{MySqlConnection, MySqlPool};
use std::time::Duration;

/// A held lease: the proof a worker shows when it commits decisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The partition.
    pub partition: u16,
    /// The holder.
    pub owner: String,
    /// The fencing token: bumped whenever the partition changes hands.
    pub epoch: u64,
}

fn micros(d: Duration) -> u64 {
    d.as_micros() as u64
}

/// Records that `worker` is alive now.
pub async fn heartbeat(pool: &MySqlPool, worker: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO workers (id) VALUES (?) ON DUPLICATE KEY UPDATE heartbeat_at = NOW(6)",
    )
    .bind(worker)
    .execute(pool)
    .await?;
    Ok(())
}

/// Forgets `worker` (on a clean shutdown), so others rebalance at once.
pub async fn remove_worker(pool: &MySqlPool, worker: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM workers WHERE id = ?")
        .bind(worker)
        .execute(pool)
        .await?;
    Ok(())
}

/// Workers whose last heartbeat is younger than `lease`, by id.
pub async fn live_workers(pool: &MySqlPool, lease: Duration) -> Result<Vec<String>, sqlx::Error> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT id FROM workers WHERE heartbeat_at > NOW(6) - INTERVAL ? MICROSECOND ORDER BY id",
    )
    .bind(micros(lease))
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

/// Creates the lease rows of partitions `0..partitions` that do not exist yet.
pub async fn ensure_partitions(pool: &MySqlPool, partitions: u16) -> Result<(), sqlx::Error> {
    let values = vec!["(?)"; usize::from(partitions)].join(",");
    let mut q = sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT IGNORE INTO partition_leases (partition_no) VALUES {values}"
    )));
    for p in 0..partitions {
        q = q.bind(p);
    }
    q.execute(pool).await?;
    Ok(())
}

/// Takes `partition` for `owner` if nobody holds it or its lease expired.
pub async fn acquire(
    pool: &MySqlPool,
    partition: u16,
    owner: &str,
    lease: Duration,
) -> Result<Option<Lease>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let taken = sqlx::query(
        "UPDATE partition_leases SET owner = ?, epoch = epoch + 1, \
                expires_at = NOW(6) + INTERVAL ? MICROSECOND \
         WHERE partition_no = ? AND (owner IS NULL OR expires_at <= NOW(6))",
    )
    .bind(owner)
    .bind(micros(lease))
    .bind(partition)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if !taken {
        return Ok(None);
    }
    let (epoch,): (u64,) =
        sqlx::query_as("SELECT epoch FROM partition_leases WHERE partition_no = ?")
            .bind(partition)
            .fetch_one(&mut *tx)
            .await?;
    tx.commit().await?;
    Ok(Some(Lease {
        partition,
        owner: owner.to_owned(),
        epoch,
    }))
}

/// Extends a held lease; false when it was lost (expired and taken).
pub async fn renew(
    pool: &MySqlPool,
    lease: &Lease,
    duration: Duration,
) -> Result<bool, sqlx::Error> {
    let renewed = sqlx::query(
        "UPDATE partition_leases SET expires_at = NOW(6) + INTERVAL ? MICROSECOND \
         WHERE partition_no = ? AND owner = ? AND epoch = ?",
    )
    .bind(micros(duration))
    .bind(lease.partition)
    .bind(&lease.owner)
    .bind(lease.epoch)
    .execute(pool)
    .await?
    .rows_affected();
    // sqlx asks for found rows, so a held lease counts whatever changed.
    Ok(renewed == 1)
}

/// Gives a lease up, so the next owner need not wait for it to expire.
pub async fn release(pool: &MySqlPool, lease: &Lease) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE partition_leases SET owner = NULL, expires_at = NOW(6) \
         WHERE partition_no = ? AND owner = ? AND epoch = ?",
    )
    .bind(lease.partition)
    .bind(&lease.owner)
    .bind(lease.epoch)
    .execute(pool)
    .await?;
    Ok(())
}

/// [`check_fence`] for several leases as one statement of a [`Script`]:
/// it share-locks their partitions' lease rows and returns, for each,
/// `(partition, owner, epoch, unexpired)`; read them with [`holds`].
///
/// Only rows that match a lease's owner and epoch are returned, and so kept
/// locked (READ COMMITTED releases the others): a lost lease's row is left
/// to its new owner. `leases` must not be empty.
pub fn push_fences<'a>(script: &mut Script, leases: impl Iterator<Item = &'a Lease>) {
    let leases: Vec<&Lease> = leases.collect();
    script
        .sql("SELECT partition_no, owner, epoch, expires_at > NOW(6) FROM partition_leases WHERE ");
    for (i, lease) in leases.iter().enumerate() {
        if i > 0 {
            script.sql(" OR ");
        }
        script
            .sql("(partition_no = ")
            .uint(u64::from(lease.partition))
            .sql(" AND owner = ")
            .text(&lease.owner)
            .sql(" AND epoch = ")
            .uint(lease.epoch)
            .sql(")");
    }
    script.sql(" LOCK IN SHARE MODE").end();
}

/// Whether the rows [`push_fences`] returned show `lease` still held and
/// unexpired.
pub fn holds(rows: &[sqlx::mysql::MySqlRow], lease: &Lease) -> Result<bool, sqlx::Error> {
    use sqlx::Row as _;
    for row in rows {
        if row.try_get::<u16, _>(0)? == lease.partition {
            let owner: Option<String> = row.try_get(1)?;
            let unexpired: Option<i64> = row.try_get(3)?;
            return Ok(owner.as_deref() == Some(lease.owner.as_str())
                && row.try_get::<u64, _>(2)? == lease.epoch
                && unexpired == Some(1));
        }
    }
    Ok(false)
}

/// The fence, inside a deciding transaction: true only while `lease` is
/// still held and unexpired. The row stays share-locked until the
/// transaction ends, so nobody can take the partition over between this
/// check and the commit.
pub async fn check_fence(tx: &mut MySqlConnection, lease: &Lease) -> Result<bool, sqlx::Error> {
    let held: Option<(u64,)> = sqlx::query_as(
        "SELECT epoch FROM partition_leases \
         WHERE partition_no = ? AND owner = ? AND epoch = ? AND expires_at > NOW(6) \
         LOCK IN SHARE MODE",
    )
    .bind(lease.partition)
    .bind(&lease.owner)
    .bind(lease.epoch)
    .fetch_optional(&mut *tx)
    .await?;
    Ok(held.is_some())
}

/// Current owners: `(partition, owner, epoch, seconds until expiry)`.
pub async fn owners(pool: &MySqlPool) -> Result<Vec<(u16, Option<String>, u64, f64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT partition_no, owner, epoch, \
                CAST(TIMESTAMPDIFF(MICROSECOND, NOW(6), expires_at) / 1e6 AS DOUBLE) \
         FROM partition_leases ORDER BY partition_no",
    )
    .fetch_all(pool)
    .await
}

/// The partitions `owner` holds an unexpired lease on, ascending.
pub async fn held_by(pool: &MySqlPool, owner: &str) -> Result<Vec<u16>, sqlx::Error> {
    let rows: Vec<(u16,)> = sqlx::query_as(
        "SELECT partition_no FROM partition_leases \
         WHERE owner = ? AND expires_at > NOW(6) ORDER BY partition_no",
    )
    .bind(owner)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|(p,)| p).collect())
}
