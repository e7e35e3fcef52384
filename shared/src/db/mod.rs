//! The database: connecting (creating the database and migrating), and the
//! queries both binaries share, one module per table.

pub mod apis;
pub mod events;
pub mod invariants;
pub mod inventory;
pub mod leases;
pub mod orders;
pub mod products;
pub mod script;
pub mod servers;

use crate::config::Config;
use sqlx::migrate::MigrateDatabase;
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sqlx::{ConnectOptions, MySql, MySqlPool};
use std::str::FromStr;
use std::time::Duration;

/// The migrations in `migrations/`, embedded in the binaries.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Errors while connecting and migrating.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// `DATABASE_URL` is not a MySQL URL.
    #[error("DATABASE_URL is not a usable MySQL URL: {0}")]
    Url(sqlx::Error),
    /// The server did not answer or refused.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// A migration failed.
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// Creates the database when it is missing, runs the migrations, and
/// returns a pool sized by `DATABASE_MAX_CONNECTIONS`.
///
/// With several servers in `DATABASE_URL` the pool connects through a
/// [`servers::Router`] to the writable one, and every new connection checks
/// that its server is writable.
pub async fn connect(config: &Config) -> Result<MySqlPool, ConnectError> {
    let servers = servers::Servers::parse(&config.database_url)
        .map_err(|e| ConnectError::Url(sqlx::Error::Configuration(e.into())))?;
    let several = servers.is_some();
    let routed;
    let url = match &servers {
        Some(servers) => {
            let options = MySqlConnectOptions::from_str(&servers.url).map_err(ConnectError::Url)?;
            let router = servers::Router::start(servers, options)
                .await
                .map_err(|e| ConnectError::Database(sqlx::Error::Io(e)))?;
            routed = servers.url_at(router.addr);
            &routed
        }
        None => &config.database_url,
    };
    // Room for every statement shape we use (see `padded_len`), so none is evicted.
    // No statement logging: the hot paths' scripts carry their values as
    // literals (buyers' ids among them), and a slow one would be logged whole.
    let options = MySqlConnectOptions::from_str(url)
        .map_err(ConnectError::Url)?
        .statement_cache_capacity(256)
        .disable_statement_logging();
    if !MySql::database_exists(url).await? {
        // Another process may create it at the same moment: only a database
        // that still does not exist afterwards is an error.
        if let Err(e) = MySql::create_database(url).await
            && !MySql::database_exists(url).await?
        {
            return Err(e.into());
        }
    }
    let pool = MySqlPoolOptions::new()
        .max_connections(config.database_max_connections)
        .acquire_timeout(Duration::from_secs(5))
        // Every invariant here rests on row locks and conditional updates,
        // not on repeatable snapshots; READ COMMITTED takes no gap locks, so
        // recording new orders never waits on a deciding transaction.
        .after_connect(move |conn, _| {
            Box::pin(async move {
                sqlx::query("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                    .execute(&mut *conn)
                    .await?;
                // Never a connection to a read-only server (the router may
                // have chosen it just before an orchestrator demoted it; and
                // `read_only` does not stop a user with READ ONLY ADMIN).
                if several && !servers::is_writable(conn).await? {
                    return Err(sqlx::Error::Protocol(
                        "the database server is read-only (not the primary)".into(),
                    ));
                }
                Ok(())
            })
        })
        .connect_with(options)
        .await?;
    migrate(&pool).await?;
    Ok(pool)
}

/// Runs the migrations under a named lock, so processes starting together
/// migrate one at a time. (sqlx's own lock asks MariaDB for `GET_LOCK(.., -1)`,
/// which MariaDB treats as "do not wait".)
async fn migrate(pool: &MySqlPool) -> Result<(), ConnectError> {
    let mut conn = pool.acquire().await?;
    let (locked,): (Option<i32>,) =
        sqlx::query_as("SELECT GET_LOCK(CONCAT('flashstock_migrate_', DATABASE()), 120)")
            .fetch_one(&mut *conn)
            .await?;
    if locked != Some(1) {
        return Err(ConnectError::Database(sqlx::Error::Protocol(
            "timed out waiting for another process's migrations".into(),
        )));
    }
    let result = MIGRATOR.run(&mut *conn).await;
    let _ = sqlx::query("SELECT RELEASE_LOCK(CONCAT('flashstock_migrate_', DATABASE()))")
        .execute(&mut *conn)
        .await;
    result?;
    Ok(())
}

/// What the queries both binaries share can fail with.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The database's (or the driver's) own error.
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
    /// The database answered, but not as our own checks require: a write
    /// that changed fewer rows than it locked, a script short of results.
    /// A bug or a broken row, never an outage: retrying it as one would
    /// repeat it forever.
    #[error("inconsistent database answer: {0}")]
    Inconsistent(String),
    /// The connection failed after the statement that commits was sent
    /// (the primary killed under a COMMIT): the transaction may have
    /// committed or not, and only a read on the primary, once one answers,
    /// can tell. Unavailable, like any outage.
    #[error("the connection failed during a commit (it may have committed): {0}")]
    Uncertain(sqlx::Error),
}

impl DbError {
    /// Whether the database is unreachable or overloaded: see [`is_unavailable`].
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Sql(e) => is_unavailable(e),
            Self::Uncertain(_) => true,
            Self::Inconsistent(_) => false,
        }
    }

    /// Whether retrying the same transaction may succeed: see [`is_transient`].
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Sql(e) => is_transient(e),
            Self::Uncertain(_) => true,
            Self::Inconsistent(_) => false,
        }
    }

    /// Whether a commit's outcome is unknown: see [`DbError::Uncertain`].
    pub fn is_uncertain(&self) -> bool {
        matches!(self, Self::Uncertain(_))
    }

    /// The error of the statement that commits: a lost connection (not a
    /// refusal: a read-only server or a full pool commits nothing) leaves
    /// the outcome [`Uncertain`](DbError::Uncertain).
    pub fn committing(e: sqlx::Error) -> DbError {
        match e {
            sqlx::Error::Io(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Tls(_) => Self::Uncertain(e),
            e => Self::Sql(e),
        }
    }

    /// A deadlock or lock wait timeout: see [`is_lock_conflict`].
    pub fn is_lock_conflict(&self) -> bool {
        matches!(self, Self::Sql(e) if is_lock_conflict(e))
    }
}

/// Whether an error means the database is unreachable or overloaded (worth
/// a 503 and a retry) rather than a bug. (sqlx's own protocol errors count:
/// a connection that lost its place; ours are [`DbError::Inconsistent`].) A
/// server that turned read-only under a connection (1290, 1836: a primary
/// being demoted) counts too: the next connection goes to the new primary.
pub fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => matches!(
            db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
                .map(|m| m.number()),
            Some(1290 | 1836)
        ),
        _ => false,
    }
}

/// Whether retrying the same transaction may succeed: unavailability, a
/// deadlock (1213) or a lock wait timeout (1205).
pub fn is_transient(e: &sqlx::Error) -> bool {
    is_unavailable(e) || is_lock_conflict(e)
}

/// Whether the database chose this transaction as a deadlock victim or it
/// waited too long for a lock: the whole transaction can simply run again.
pub fn is_lock_conflict(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => matches!(
            db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
                .map(|m| m.number()),
            Some(1205 | 1213)
        ),
        _ => false,
    }
}

/// Runs the transaction `attempt` makes, again (up to 5 times in all) when
/// it lost a deadlock or a lock wait; every other outcome is returned as is.
pub async fn retry_lock_conflicts<T, F, Fut>(mut attempt: F) -> Result<T, DbError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, DbError>>,
{
    let mut tries = 1;
    loop {
        match attempt().await {
            Err(e) if tries < 5 && e.is_lock_conflict() => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(5 * tries)).await;
            }
            other => return other,
        }
    }
}

/// How many values an `IN (...)` list of `n` is padded to: the next power
/// of two.
///
/// sqlx prepares every statement and caches a bounded number per
/// connection; a new list length is a new statement, and evicting an old
/// one sends a COM_STMT_CLOSE, which gets no reply. sqlx does not set
/// TCP_NODELAY, so the next request then waits behind Nagle's algorithm
/// for the server's delayed ACK: about 40 ms, measured as 44 ms stalls on
/// the hot path. With lengths padded to powers of two, a handful of
/// statements cover every size and stay cached.
pub fn padded_len(n: usize) -> usize {
    n.max(1).next_power_of_two()
}

/// `values`, then the last one repeated up to [`padded_len`]; a repeated
/// value changes nothing in an `IN (...)` list.
pub fn padded<T>(values: &[T]) -> impl Iterator<Item = &T> {
    let extra = padded_len(values.len()) - values.len();
    values.iter().chain(std::iter::repeat_n(
        values.last().expect("an IN list needs at least one value"),
        extra,
    ))
}

/// `n` comma-separated placeholders, for `IN (...)` lists.
pub fn placeholders(n: usize) -> String {
    let mut s = String::with_capacity(n * 2);
    for i in 0..n {
        if i > 0 {
            s.push(',');
        }
        s.push('?');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_checks_are_never_taken_for_an_outage() {
        let ours = DbError::Inconsistent("decided 3 of 4 locked orders".into());
        assert!(!ours.is_unavailable());
        assert!(!ours.is_transient());
        assert!(!ours.is_lock_conflict());
        let down = DbError::Sql(sqlx::Error::PoolTimedOut);
        assert!(down.is_unavailable() && down.is_transient());
    }

    #[test]
    fn only_a_connection_lost_under_a_commit_leaves_it_uncertain() {
        let lost = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        let cut = DbError::committing(sqlx::Error::Io(lost));
        assert!(cut.is_uncertain() && cut.is_unavailable() && cut.is_transient());
        for refused in [sqlx::Error::PoolTimedOut, sqlx::Error::RowNotFound] {
            assert!(!DbError::committing(refused).is_uncertain());
        }
    }

    #[test]
    fn lists_pad_to_powers_of_two() {
        assert_eq!(padded_len(1), 1);
        assert_eq!(padded_len(5), 8);
        assert_eq!(padded_len(64), 64);
        assert_eq!(
            padded(&[1, 2, 3]).copied().collect::<Vec<_>>(),
            [1, 2, 3, 3]
        );
    }
}
