use futures::future::BoxFuture;
use idem_core::{Dialect, DialectSql, Outcome, State, Transition};
use sqlx::postgres::{PgArguments, PgConnection};
use sqlx::Postgres;

use crate::backend::{contended, db_error, state_of, MAX_ROUNDS};
use crate::key::{args, repeats};
use crate::{Backend, Error, ErrorKind, Key};

impl Backend for Postgres {
    const DIALECT: Dialect = Dialect::Postgres;
    const BEGIN_WRITE: &'static str = "BEGIN";

    fn error_kind(error: &sqlx::Error) -> ErrorKind {
        let Some(db) = error.as_database_error() else {
            return ErrorKind::Other;
        };
        match db.code().as_deref() {
            // serialization_failure, deadlock_detected, lock_not_available
            Some("40001" | "40P01" | "55P03") => ErrorKind::Transient,
            Some("23505") => ErrorKind::UniqueViolation,
            _ => ErrorKind::Other,
        }
    }

    fn is_missing_savepoint(error: &sqlx::Error) -> bool {
        // invalid_savepoint_specification, no_active_sql_transaction
        let code = error.as_database_error().and_then(|db| db.code());
        matches!(code.as_deref(), Some("3B001" | "25P01"))
    }

    const REOPEN: &'static [&'static str] = &["BEGIN READ ONLY"];
    const ROLLBACK_NEEDS_TRANSACTION: bool = false;

    fn execute_plain<'c>(
        conn: &'c mut PgConnection,
        sql: &'c str,
    ) -> BoxFuture<'c, Result<(), sqlx::Error>> {
        Box::pin(async move {
            sqlx::Executor::execute(conn, sql).await?;
            Ok(())
        })
    }

    fn rows_affected(done: &sqlx::postgres::PgQueryResult) -> u64 {
        done.rows_affected()
    }

    fn apply_on<'c, S: State, K: Key<Self>>(
        conn: &'c mut PgConnection,
        transition: &'static Transition<S>,
        sql: &'static DialectSql,
        key: &'c K,
    ) -> BoxFuture<'c, Result<Outcome<S>, Error>> {
        Box::pin(apply(conn, transition, sql, key))
    }

    fn apply_many_on<'c, S: State, K: Key<Self>>(
        conn: &'c mut PgConnection,
        transition: &'static Transition<S>,
        sql: &'static DialectSql,
        keys: &'c [K],
    ) -> BoxFuture<'c, Result<Vec<Outcome<S>>, Error>> {
        Box::pin(apply_many(conn, transition, sql, keys))
    }
}

/// One statement reports the state the row had (`before`) and whether the
/// compare-and-set from exactly that state applied. Only when the row was
/// in a source state but the update did not apply (a concurrent
/// transaction changed it while the statement waited for the row lock,
/// under READ COMMITTED) does a second statement read the row again.
async fn apply<S: State, K: Key<Postgres>>(
    conn: &mut PgConnection,
    transition: &'static Transition<S>,
    sql: &'static DialectSql,
    key: &K,
) -> Result<Outcome<S>, Error> {
    for _ in 0..MAX_ROUNDS {
        let (before, applied, found): (Option<String>, bool, bool) = sqlx::query_as_with(
            sql.apply,
            args::<Postgres, K>(key).map_err(Error::Database)?,
        )
        .fetch_one(&mut *conn)
        .await
        .map_err(db_error::<Postgres>)?;
        let before = state_of(transition, found.then_some(before))?;
        match before {
            Some(from) if applied => return Ok(transition.applied_from(from)),
            _ => {}
        }
        if let Some(outcome) = transition.settled(before) {
            return Ok(outcome);
        }
        let current: Option<Option<String>> = sqlx::query_scalar_with(
            sql.current,
            args::<Postgres, K>(key).map_err(Error::Database)?,
        )
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_error::<Postgres>)?;
        if let Some(outcome) = transition.settled(state_of(transition, current)?) {
            return Ok(outcome);
        }
    }
    Err(contended(transition))
}

/// The whole batch in one statement (keys bound as one array); a key whose
/// row changed under the statement is applied again on its own.
async fn apply_many<S: State, K: Key<Postgres>>(
    conn: &mut PgConnection,
    transition: &'static Transition<S>,
    sql: &'static DialectSql,
    keys: &[K],
) -> Result<Vec<Outcome<S>>, Error> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let mut arguments = PgArguments::default();
    K::add_many_to(keys, &mut arguments).map_err(|e| Error::Database(sqlx::Error::Encode(e)))?;
    let rows: Vec<(i64, Option<String>, bool, bool)> = sqlx::query_as_with(sql.many[0], arguments)
        .fetch_all(&mut *conn)
        .await
        .map_err(db_error::<Postgres>)?;
    if rows.len() != keys.len() {
        return Err(Error::Database(sqlx::Error::Protocol(format!(
            "the batch statement of `{}` returned {} rows for {} keys",
            transition.name(),
            rows.len(),
            keys.len()
        ))));
    }
    // Every stored value is parsed before any key is applied again on its
    // own: a value that is no state, or a NULL state, fails the batch with
    // nothing moved (the statement's update skips the whole batch then).
    let rows = rows
        .into_iter()
        .map(|(_, before, applied, found)| {
            Ok((state_of(transition, found.then_some(before))?, applied))
        })
        .collect::<Result<Vec<_>, Error>>()?;
    let repeats = repeats(keys);
    let mut outcomes: Vec<Outcome<S>> = Vec::with_capacity(keys.len());
    for (((before, applied), key), repeat) in rows.into_iter().zip(keys).zip(repeats) {
        // A key given twice was applied (or settled) at its first position.
        if let Some(first) = repeat {
            let outcome = match outcomes[first] {
                Outcome::Applied { to, .. } => Outcome::AlreadyApplied { state: to },
                other => other,
            };
            outcomes.push(outcome);
            continue;
        }
        let outcome = match (before, applied) {
            (Some(from), true) => transition.applied_from(from),
            _ => match transition.settled(before) {
                Some(outcome) => outcome,
                None => apply(conn, transition, sql, key).await?,
            },
        };
        outcomes.push(outcome);
    }
    Ok(outcomes)
}
