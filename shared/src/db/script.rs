//! Several statements in one round trip.
//!
//! On this kind of machine a round trip to the database (the client's
//! write, the server's wake-up, its answer, the client's wake-up) costs
//! more CPU than the row work of a whole batch. The hot paths therefore
//! send their statements together, as one text-protocol query of several
//! statements, and read the results back in order.
//!
//! Values go into the text as literals, and only in forms that cannot
//! break out of a literal: decimal integers, and hex literals for ids and
//! strings (`X'…'`, with a `_utf8mb4` introducer for text). Nothing a
//! client sent is ever spliced in as it was written.

use super::DbError;
use futures::TryStreamExt;
use sqlx::mysql::MySqlRow;
use sqlx::pool::PoolConnection;
use sqlx::{AssertSqlSafe, Either, MySql, MySqlConnection, MySqlPool};
use std::fmt::Write as _;
use uuid::Uuid;

/// A query of several statements, built with literals.
#[derive(Debug, Default)]
pub struct Script {
    sql: String,
    statements: usize,
}

/// What one statement of a [`Script`] returned.
#[derive(Debug, Default)]
pub struct Answer {
    /// Its rows (none for a statement that returns none).
    pub rows: Vec<MySqlRow>,
    /// Rows it changed.
    pub affected: u64,
}

impl Script {
    /// An empty script.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends SQL text written in the code (never a value).
    pub fn sql(&mut self, text: &str) -> &mut Self {
        self.sql.push_str(text);
        self
    }

    /// Ends the current statement; its answer is the next one [`Script::run`] returns.
    pub fn end(&mut self) -> &mut Self {
        self.sql.push_str(";\n");
        self.statements += 1;
        self
    }

    /// How many statements are ended so far.
    pub fn len(&self) -> usize {
        self.statements
    }

    /// Whether no statement is ended yet.
    pub fn is_empty(&self) -> bool {
        self.statements == 0
    }

    /// An unsigned integer literal.
    pub fn uint(&mut self, value: u64) -> &mut Self {
        let _ = write!(self.sql, "{value}");
        self
    }

    /// A signed integer literal.
    pub fn int(&mut self, value: i64) -> &mut Self {
        let _ = write!(self.sql, "{value}");
        self
    }

    /// A 16-byte binary literal (a `BINARY(16)` id).
    pub fn uuid(&mut self, id: Uuid) -> &mut Self {
        let _ = write!(self.sql, "X'{}'", id.simple());
        self
    }

    /// A binary literal of `ids`' 16 bytes each, one after the other.
    pub fn packed_uuids(&mut self, ids: &[Uuid]) -> &mut Self {
        self.sql.push_str("X'");
        for id in ids {
            let _ = write!(self.sql, "{}", id.simple());
        }
        self.sql.push('\'');
        self
    }

    /// A text literal, as utf8mb4 bytes in hex.
    pub fn text(&mut self, value: &str) -> &mut Self {
        self.sql.push_str("_utf8mb4 X'");
        for byte in value.as_bytes() {
            let _ = write!(self.sql, "{byte:02x}");
        }
        self.sql.push('\'');
        self
    }

    /// A text literal, or NULL.
    pub fn opt_text(&mut self, value: Option<&str>) -> &mut Self {
        match value {
            Some(v) => self.text(v),
            None => self.sql("NULL"),
        }
    }

    /// `values` as a comma-separated list of literals written by `each`.
    pub fn list<T>(&mut self, values: &[T], mut each: impl FnMut(&mut Self, &T)) -> &mut Self {
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                self.sql.push_str(", ");
            }
            each(self, v);
        }
        self
    }

    /// Sends every statement in one query and returns one answer per
    /// statement, in order (none, without a round trip, for an empty
    /// script). The server stops at the first statement that
    /// fails, and that error is returned.
    pub async fn run(self, conn: &mut MySqlConnection) -> Result<Vec<Answer>, DbError> {
        let expected = self.statements;
        if expected == 0 {
            return Ok(Vec::new());
        }
        let mut sql = self.sql;
        sql.truncate(sql.trim_end().trim_end_matches(';').len());
        let mut answers = Vec::with_capacity(expected);
        let mut current = Answer::default();
        let mut results = sqlx::raw_sql(AssertSqlSafe(sql)).fetch_many(conn);
        while let Some(item) = results.try_next().await? {
            match item {
                Either::Left(done) => {
                    current.affected = done.rows_affected();
                    answers.push(std::mem::take(&mut current));
                }
                Either::Right(row) => current.rows.push(row),
            }
        }
        if answers.len() != expected {
            return Err(DbError::Inconsistent(format!(
                "a script of {expected} statements returned {} results",
                answers.len()
            )));
        }
        Ok(answers)
    }
}

/// A pooled connection whose transaction a script opens (`START
/// TRANSACTION` in its first statement) and another ends (`COMMIT`). Until
/// [`Session::finish`], dropping it (an error, a cancelled task) closes the
/// connection instead of returning it to the pool, and the server rolls the
/// open transaction back with it: a later user never inherits its locks.
pub struct Session {
    conn: PoolConnection<MySql>,
    finished: bool,
}

impl Session {
    /// A connection from `pool`.
    pub async fn open(pool: &MySqlPool) -> Result<Self, sqlx::Error> {
        Ok(Self {
            conn: pool.acquire().await?,
            finished: false,
        })
    }

    /// The connection, to run scripts and statements on.
    pub fn conn(&mut self) -> &mut MySqlConnection {
        &mut self.conn
    }

    /// The transaction is over (committed or rolled back): the connection
    /// may go back to the pool.
    pub fn finish(mut self) {
        self.finished = true;
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if !self.finished {
            self.conn.close_on_drop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_cannot_break_out() {
        let mut s = Script::new();
        s.sql("SELECT ")
            .text("a'; DROP TABLE orders; --")
            .sql(", ")
            .uuid(Uuid::nil())
            .sql(", ")
            .int(-3)
            .sql(", ")
            .opt_text(None)
            .end();
        assert_eq!(
            s.sql,
            "SELECT _utf8mb4 X'61273b2044524f50205441424c45206f72646572733b202d2d', \
             X'00000000000000000000000000000000', -3, NULL;\n"
        );
        assert_eq!(s.len(), 1);
    }
}
