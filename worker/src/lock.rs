//! A job only one worker does at a time (publishing events, delivering one
//! webhook endpoint's): a named lock in the database (`GET_LOCK`), held by
//! a connection of its own, so it is released the moment the worker
//! holding it dies or its connection is cut.
//!
//! A keeper task asks the server every second whether the connection still
//! holds the lock (which also keeps the connection from idling out), and
//! fires [`NamedLock::lost`] the moment it does not, so the job stops at
//! once rather than at its next pause: a job step may take longer than the
//! server lets an idle connection live.

use sqlx::{ConnectOptions as _, Connection as _, MySqlConnection, MySqlPool};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How often a worker that does not hold the lock asks for it again, and
/// how often the holder checks it still does.
const INTERVAL: Duration = Duration::from_secs(1);
/// The lock connection's `wait_timeout`: a holder cut off (or stopped)
/// this long loses the lock to another worker.
const IDLE_TIMEOUT_SECS: u32 = 10;

/// The lock's server-wide name: per database (tests and deployments share
/// a server) and per job, hashed to fit `GET_LOCK`'s 64 characters.
const NAME: &str = "CONCAT('flashstock.', LEFT(SHA2(CONCAT(DATABASE(), '/', ?), 256), 48))";

/// A held lock.
pub struct NamedLock {
    lost: CancellationToken,
    release: Option<oneshot::Sender<()>>,
    keeper: JoinHandle<()>,
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
                        let conn = conn.take().expect("connected");
                        return Some(Self::keep(conn, job.to_owned()));
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
                _ = tokio::time::sleep(INTERVAL) => {}
            }
        }
    }

    fn keep(mut conn: MySqlConnection, job: String) -> NamedLock {
        let lost = CancellationToken::new();
        let (release, mut released) = oneshot::channel::<()>();
        let keeper = tokio::spawn({
            let lost = lost.clone();
            async move {
                loop {
                    tokio::select! {
                        // Released, or the holder dropped.
                        _ = &mut released => break,
                        _ = tokio::time::sleep(INTERVAL) => {}
                    }
                    if !held(&mut conn, &job).await {
                        tracing::warn!(job, "lost a job's lock");
                        lost.cancel();
                        let _ = conn.close().await;
                        return;
                    }
                }
                let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DO RELEASE_LOCK({NAME})")))
                    .bind(&job)
                    .execute(&mut conn)
                    .await;
                let _ = conn.close().await;
                lost.cancel();
            }
        });
        NamedLock {
            lost,
            release: Some(release),
            keeper,
        }
    }

    /// Fires once the lock is no longer held (lost, or released).
    pub fn lost(&self) -> &CancellationToken {
        &self.lost
    }

    /// Gives it up, and waits until the server has it back.
    pub async fn release(mut self) {
        if let Some(release) = self.release.take() {
            let _ = release.send(());
        }
        let _ = (&mut self.keeper).await;
    }
}

impl Drop for NamedLock {
    fn drop(&mut self) {
        // Dropping the sender releases the lock in the keeper.
        self.release.take();
    }
}

/// Whether `conn` still holds `job`'s lock.
async fn held(conn: &mut MySqlConnection, job: &str) -> bool {
    let held: Result<(Option<i64>,), _> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT IS_USED_LOCK({NAME}) = CONNECTION_ID()"
    )))
    .bind(job)
    .fetch_one(conn)
    .await;
    matches!(held, Ok((Some(1),)))
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
