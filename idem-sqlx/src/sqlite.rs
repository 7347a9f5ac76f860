use futures::future::BoxFuture;
use idem_core::{Dialect, DialectSql, Outcome, State, Transition};
use sqlx::sqlite::{SqliteConnection, SqliteQueryResult};
use sqlx::Sqlite;

use crate::backend::{contended, db_error, state_of, MAX_ROUNDS};
use crate::batch;
use crate::key::{args, bind_key, text_args};
use crate::{Backend, Error, ErrorKind, Key};

/// The most keys one statement of `apply_many` binds: the batch read binds
/// each key once and the batch `UPDATE` twice (`key IN (?, ...)` and
/// `CAST(key AS TEXT) IN (CAST(? AS TEXT), ...)`), far below SQLite's
/// default `SQLITE_MAX_VARIABLE_NUMBER` of 32,766 (999 before 3.32, and a
/// build may set its own). The batch read joins a `VALUES` list by the key
/// and stays linear at any chunk size; chunks of 1,024, as on MySQL, also
/// fit a SQLite built with a limit down to 2,048.
pub(crate) const BATCH_KEYS: usize = 1_024;

impl Backend for Sqlite {
    const DIALECT: Dialect = Dialect::Sqlite;
    const BEGIN_WRITE: &'static str = "BEGIN IMMEDIATE";

    fn error_kind(error: &sqlx::Error) -> ErrorKind {
        let Some(db) = error.as_database_error() else {
            return ErrorKind::Other;
        };
        // sqlx reports SQLite's extended result code; the primary code is
        // its low byte.
        let code: i32 = db.code().and_then(|c| c.parse().ok()).unwrap_or(0);
        match (code & 0xff, code) {
            // SQLITE_BUSY (incl. BUSY_SNAPSHOT), SQLITE_LOCKED
            (5 | 6, _) => ErrorKind::Transient,
            // SQLITE_CONSTRAINT_PRIMARYKEY, SQLITE_CONSTRAINT_UNIQUE
            (_, 1555 | 2067) => ErrorKind::UniqueViolation,
            _ => ErrorKind::Other,
        }
    }

    fn is_missing_savepoint(error: &sqlx::Error) -> bool {
        // SQLITE_ERROR has no finer code for it: the message tells.
        error.as_database_error().is_some_and(|db| {
            db.code().as_deref() == Some("1") && db.message().starts_with("no such savepoint")
        })
    }

    // No read-only transactions on SQLite: a plain deferred one.
    const REOPEN: &'static [&'static str] = &["BEGIN"];
    const ROLLBACK_NEEDS_TRANSACTION: bool = true;

    bind_key!();

    fn execute_plain<'c>(
        conn: &'c mut SqliteConnection,
        sql: &'c str,
    ) -> BoxFuture<'c, Result<(), sqlx::Error>> {
        Box::pin(async move {
            sqlx::Executor::execute(conn, sql).await?;
            Ok(())
        })
    }

    fn rows_affected(done: &SqliteQueryResult) -> u64 {
        done.rows_affected()
    }

    fn apply_on<'c, S: State, K: Key<Self>>(
        conn: &'c mut SqliteConnection,
        transition: &'static Transition<S>,
        sql: &'static DialectSql,
        key: &'c K,
    ) -> BoxFuture<'c, Result<Outcome<S>, Error>> {
        Box::pin(apply(conn, transition, sql, key))
    }

    fn apply_many_on<'c, S: State, K: Key<Self>>(
        conn: &'c mut SqliteConnection,
        transition: &'static Transition<S>,
        sql: &'static DialectSql,
        keys: &'c [K],
    ) -> BoxFuture<'c, Result<Vec<Outcome<S>>, Error>> {
        Box::pin(batch::apply::<Sqlite, S, K>(
            conn,
            transition,
            sql,
            keys,
            BATCH_KEYS,
            record_history,
        ))
    }
}

/// SQLite's `RETURNING` sees only the new values, so the state a change
/// came from is known only when there is one source. Single source: the
/// guarded update first (one statement when it applies, then a read to
/// tell a no-op why). Several sources: read the state, then a
/// compare-and-set from exactly that state (two statements), again if
/// another writer moved the row in between.
async fn apply<S: State, K: Key<Sqlite>>(
    conn: &mut SqliteConnection,
    transition: &'static Transition<S>,
    sql: &'static DialectSql,
    key: &K,
) -> Result<Outcome<S>, Error> {
    let single = sql.apply_from.is_empty();
    let mut known = None;
    for _ in 0..MAX_ROUNDS {
        let index = match known.take() {
            Some(index) => index,
            None if single => 0,
            None => match read(conn, transition, sql, key).await? {
                Ok(outcome) => return Ok(outcome),
                Err(index) => index,
            },
        };
        let update = if single {
            &sql.apply
        } else {
            &sql.apply_from[index]
        };
        let family = key.value().family();
        let done = sqlx::query_with(update.get(family), args::<Sqlite, K>(key, update.binds)?)
            .execute(&mut *conn)
            .await
            .map_err(db_error::<Sqlite>)?;
        if done.rows_affected() > 0 {
            record_history(conn, sql, index, key).await?;
            return Ok(transition.applied_from(transition.sources()[index]));
        }
        match read(conn, transition, sql, key).await? {
            Ok(outcome) => return Ok(outcome),
            Err(index) => known = Some(index),
        }
    }
    Err(contended(transition))
}

/// The row's state: a settled outcome, or the source index it can move from.
async fn read<S: State, K: Key<Sqlite>>(
    conn: &mut SqliteConnection,
    transition: &'static Transition<S>,
    sql: &'static DialectSql,
    key: &K,
) -> Result<Result<Outcome<S>, usize>, Error> {
    let current: Option<Option<String>> = sqlx::query_scalar_with(
        sql.current.get(key.value().family()),
        args::<Sqlite, K>(key, sql.current.binds)?,
    )
    .fetch_optional(&mut *conn)
    .await
    .map_err(db_error::<Sqlite>)?;
    let current = state_of(transition, current)?;
    Ok(match transition.settled(current) {
        Some(outcome) => Ok(outcome),
        None => Err(current
            .and_then(|s| transition.source_index(s))
            .expect("settled() is None only for a source state")),
    })
}

fn record_history<'c, K: Key<Sqlite>>(
    conn: &'c mut SqliteConnection,
    sql: &'static DialectSql,
    index: usize,
    key: &'c K,
) -> BoxFuture<'c, Result<(), Error>> {
    Box::pin(async move {
        if let Some(insert) = sql.history.get(index) {
            sqlx::query_with(insert, text_args::<Sqlite, K>(key)?)
                .execute(&mut *conn)
                .await
                .map_err(db_error::<Sqlite>)?;
        }
        Ok(())
    })
}
