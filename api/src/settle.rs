//! Answers across a commit whose outcome is unknown
//! ([`DbError::Uncertain`]): the connection to the primary was lost after
//! the statement that commits was sent (the primary killed under it, or
//! its connections cut as it was demoted). Whether it committed, only the
//! primary can tell, once one answers. The api knows what it wrote (it
//! chose the order's id; a pay or cancel names its order), so the answer
//! waits for that and tells the truth, never a 503 for something done.

use shared::db::DbError;
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

use crate::error::ApiError;

/// How long an answer waits for a primary after an uncertain commit: the
/// length of a failover (a managed database moves its endpoint within
/// seconds; the forwarder finds a promoted replica within a second), not
/// an outage's.
pub const SETTLE_WITHIN: Duration = Duration::from_secs(20);

/// `attempt`'s first answer that is not unavailability; while the database
/// is unavailable, `attempt` again (after 50 ms, doubling to 1 s); all
/// within [`SETTLE_WITHIN`] (an attempt still running then is dropped, and
/// counts as unavailable), then its last error.
pub async fn until_answered<T, F, Fut>(attempt: F) -> Result<T, DbError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, DbError>>,
{
    until_answered_within(SETTLE_WITHIN, attempt).await
}

async fn until_answered_within<T, F, Fut>(within: Duration, mut attempt: F) -> Result<T, DbError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, DbError>>,
{
    let deadline = Instant::now() + within;
    let mut pause = Duration::from_millis(50);
    loop {
        // An attempt may wait on its own (a lock held by the cut
        // transaction, a connection that hangs): the bound is for it too.
        let answer = tokio::time::timeout_at(deadline, attempt())
            .await
            .unwrap_or(Err(DbError::Sql(sqlx::Error::PoolTimedOut)));
        match answer {
            Err(e) if e.is_unavailable() && Instant::now() + pause < deadline => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            other => return other,
        }
    }
}

/// The answer when even [`SETTLE_WITHIN`] did not tell whether `what`
/// happened: 503, saying so and where to look.
pub fn unknown(what: &str, id: impl std::fmt::Display) -> ApiError {
    ApiError::Unavailable(format!(
        "the database connection was lost while {what} committed, and no primary has answered since; \
         whether it did is not known yet: GET /api/orders/{id} tells"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn down() -> DbError {
        DbError::Sql(sqlx::Error::PoolTimedOut)
    }

    const WITHIN: Duration = Duration::from_millis(500);

    #[tokio::test]
    async fn waits_out_an_outage_and_gives_the_first_answer() {
        let tries = AtomicU32::new(0);
        let answer = until_answered_within(WITHIN, || async {
            match tries.fetch_add(1, Ordering::Relaxed) {
                0..3 => Err(down()),
                n => Ok(n),
            }
        })
        .await;
        assert_eq!(answer.unwrap(), 3);
    }

    #[tokio::test]
    async fn gives_up_after_its_bound_and_never_retries_a_refusal() {
        let started = Instant::now();
        let answer: Result<(), DbError> =
            until_answered_within(WITHIN, || async { Err(down()) }).await;
        assert!(answer.unwrap_err().is_unavailable());
        // The last pause would have ended past the bound: it gives up
        // before it, never after.
        assert!(started.elapsed() < WITHIN);
        assert!(started.elapsed() >= Duration::from_millis(350));

        let tries = AtomicU32::new(0);
        let refused: Result<(), DbError> = until_answered_within(WITHIN, || async {
            tries.fetch_add(1, Ordering::Relaxed);
            Err(DbError::Inconsistent("no".into()))
        })
        .await;
        assert!(refused.is_err());
        assert_eq!(tries.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn an_attempt_that_hangs_is_cut_at_the_bound() {
        let started = Instant::now();
        let hung: Result<(), DbError> = until_answered_within(WITHIN, || async {
            std::future::pending::<()>().await;
            Ok(())
        })
        .await;
        assert!(hung.unwrap_err().is_unavailable());
        assert!(started.elapsed() < WITHIN + Duration::from_millis(100));
    }
}
