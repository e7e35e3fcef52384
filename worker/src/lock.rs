//! A job only one worker does at a time (publishing events, delivering one
//! webhook endpoint's): a named lock in the database (`GET_LOCK`), held by
//! a connection of its own, so it is released the moment the worker
//! holding it dies or its connection is cut.

use sqlx::{ConnectOptions as _, Connection as _, MySqlConnection, MySqlPool};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often a worker that does not hold the lock asks for it again.
const RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// The lock connection's `wait_timeout`: a holder cut off (or stopped)
/// this long loses the lock to another worker. Holders check their lock
/// every second, which keeps a live connection busy.
const IDLE_TIMEOUT_SECS: u32 = 10;

/// The lock's server-wide name: per database (tests and deployments share
/// a server) and per job, hashed to fit `GET_LOCK`'s 64 characters.
const NAME: &str = "CONCAT('flashstock.', LEFT(SHA2(CONCAT(DATABASE(), '/', ?), 256), 48))";

/// A held lock.
pub struct NamedLock {
    conn: MySqlConnection,
    job: String,
}

impl NamedLock {
    /// The lock for `job`, once this worker gets it (asking every second);
    /// `None` on `stop`.
    pub async fn take(db: &MySqlPool, job: &str, stop: &CancellationToken) -> Option<NamedLock> {
        let mut conn: Option<MySqlConnection> = None;
        loop {
            if conn.is_none() {
                conn = connect(db).await.ok();
            }
            if let Some(c) = conn.as_mut() {
                let got: Result<(Option<i64>,), _> =
                    sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT GET_LOCK({NAME}, 0)")))
                        .bind(job)
                        .fetch_one(&mut *c)
                        .await;
                match got {
                    Ok((Some(1),)) => {
                        return conn.map(|conn| NamedLock {
                            conn,
                            job: job.to_owned(),
                        });
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(error = %e, job, "could not ask for a lock");
                        conn = None;
                    }
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return None,
                _ = tokio::time::sleep(RETRY_INTERVAL) => {}
            }
        }
    }

    /// Whether this connection still holds it.
    pub async fn held(&mut self) -> bool {
        let held: Result<(Option<i64>,), _> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT IS_USED_LOCK({NAME}) = CONNECTION_ID()"
        )))
        .bind(&self.job)
        .fetch_one(&mut self.conn)
        .await;
        matches!(held, Ok((Some(1),)))
    }

    /// Gives it up.
    pub async fn release(mut self) {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DO RELEASE_LOCK({NAME})")))
            .bind(&self.job)
            .execute(&mut self.conn)
            .await;
        let _ = self.conn.close().await;
    }
}

async fn connect(db: &MySqlPool) -> Result<MySqlConnection, sqlx::Error> {
    let mut conn = db.connect_options().connect().await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SET SESSION wait_timeout = {IDLE_TIMEOUT_SECS}"
    )))
    .execute(&mut conn)
    .await?;
    Ok(conn)
}
