use futures::future::BoxFuture;
use idem_core::{Dialect, DialectSql, Outcome, State, Transition};
use sqlx::mysql::{MySqlConnection, MySqlDatabaseError};
use sqlx::MySql;

use crate::backend::{contended, db_error, state_of, MAX_ROUNDS};
use crate::batch;
use crate::key::{args, bind_key, text_args};
use crate::{Backend, Error, ErrorKind, Key};

/// The most keys one statement of `apply_many` binds. A prepared
/// statement takes at most 65,535 placeholders on MySQL and MariaDB, and
/// the batch read binds each key three times (`CASE <exact key> WHEN
/// CAST(? AS BINARY) ...`, `key IN (?, ...)` and `<exact key> IN (CAST(?
/// AS BINARY), ...)`): 21,845 keys at the most. The read's `CASE` walks its
/// branches for every row, so its cost grows with the square of the
/// chunk: paying 32,767 rows (inserting them included) took 17 s in
/// chunks of 32,767 keys and 1.1 to 2.6 s in chunks of 1,024 on MariaDB
/// 10.11. A chunk's packet (each key three times) also stays
/// far inside `max_allowed_packet` (4 MiB by default on MySQL 5.7): 1,024
/// keys of 255 bytes are three quarters of a MiB.
pub(crate) const BATCH_KEYS: usize = 1_024;

impl Backend for MySql {
    const DIALECT: Dialect = Dialect::MySql;
    const BEGIN_WRITE: &'static str = "BEGIN";

    fn error_kind(error: &sqlx::Error) -> ErrorKind {
        let Some(db) = error.as_database_error() else {
            return ErrorKind::Other;
        };
        let Some(my) = db.try_downcast_ref::<MySqlDatabaseError>() else {
            return ErrorKind::Other;
        };
        match my.number() {
            // ER_LOCK_DEADLOCK, ER_LOCK_WAIT_TIMEOUT, ER_CHECKREAD (snapshot
            // conflict under MariaDB's innodb_snapshot_isolation)
            1213 | 1205 | 1020 => ErrorKind::Transient,
            // ER_DUP_ENTRY, ER_DUP_ENTRY_WITH_KEY_NAME
            1062 | 1586 => ErrorKind::UniqueViolation,
            _ => ErrorKind::Other,
        }
    }

    fn is_missing_savepoint(error: &sqlx::Error) -> bool {
        // ER_SP_DOES_NOT_EXIST: also the answer outside a transaction.
        error
            .as_database_error()
            .and_then(|db| db.try_downcast_ref::<MySqlDatabaseError>())
            .is_some_and(|my| my.number() == 1305)
    }

    // SET TRANSACTION fails inside an open transaction (1568), which stops
    // the START TRANSACTION that would commit it.
    const REOPEN: &'static [&'static str] = &["SET TRANSACTION READ ONLY", "START TRANSACTION"];
    const ROLLBACK_NEEDS_TRANSACTION: bool = false;

    bind_key!();

    fn execute_plain<'c>(
        conn: &'c mut MySqlConnection,
        sql: &'c str,
    ) -> BoxFuture<'c, Result<(), sqlx::Error>> {
        Box::pin(async move {
            sqlx::Executor::execute(conn, sql).await?;
            Ok(())
        })
    }

    fn rows_affected(done: &sqlx::mysql::MySqlQueryResult) -> u64 {
        done.rows_affected()
    }

    fn apply_on<'c, S: State, K: Key<Self>>(
        conn: &'c mut MySqlConnection,
        transition: &'static Transition<S>,
        sql: &'static DialectSql,
        key: &'c K,
    ) -> BoxFuture<'c, Result<Outcome<S>, Error>> {
        Box::pin(apply(conn, transition, sql, key))
    }

    fn apply_many_on<'c, S: State, K: Key<Self>>(
        conn: &'c mut MySqlConnection,
        transition: &'static Transition<S>,
        sql: &'static DialectSql,
        keys: &'c [K],
    ) -> BoxFuture<'c, Result<Vec<Outcome<S>>, Error>> {
        Box::pin(batch::apply::<MySql, S, K>(
            conn,
            transition,
            sql,
            keys,
            BATCH_KEYS,
            record_history,
        ))
    }
}

/// The guarded update first: one statement when it applies. A
/// multi-source transition learns the state it moved from in the same
/// statement (`LAST_INSERT_ID(FIELD(...))`, returned in the OK packet).
/// When it does not apply, a locking read (`LOCK IN SHARE MODE`) tells why:
/// it sees the latest committed row even inside a REPEATABLE READ
/// transaction, whose plain reads would see its stale snapshot.
async fn apply<S: State, K: Key<MySql>>(
    conn: &mut MySqlConnection,
    transition: &'static Transition<S>,
    sql: &'static DialectSql,
    key: &K,
) -> Result<Outcome<S>, Error> {
    let sources = transition.sources();
    let family = key.value().family();
    for _ in 0..MAX_ROUNDS {
        let done = sqlx::query_with(
            sql.apply.get(family),
            args::<MySql, K>(key, sql.apply.binds)?,
        )
        .execute(&mut *conn)
        .await
        .map_err(db_error::<MySql>)?;
        // sqlx sets CLIENT_FOUND_ROWS: rows_affected counts matched rows.
        if done.rows_affected() > 0 {
            let index = if sources.len() == 1 {
                0
            } else {
                usize::try_from(done.last_insert_id())
                    .ok()
                    .and_then(|position| position.checked_sub(1))
                    .filter(|index| *index < sources.len())
                    .ok_or_else(|| {
                        Error::Database(sqlx::Error::Protocol(format!(
                            "MySQL reported source position {} for `{}`; expected 1..={}",
                            done.last_insert_id(),
                            transition.name(),
                            sources.len()
                        )))
                    })?
            };
            record_history(conn, sql, index, key).await?;
            return Ok(transition.applied_from(sources[index]));
        }
        let current: Option<Option<String>> = sqlx::query_scalar_with(
            sql.current.get(family),
            args::<MySql, K>(key, sql.current.binds)?,
        )
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_error::<MySql>)?;
        if let Some(outcome) = transition.settled(state_of(transition, current)?) {
            return Ok(outcome);
        }
    }
    Err(contended(transition))
}

fn record_history<'c, K: Key<MySql>>(
    conn: &'c mut MySqlConnection,
    sql: &'static DialectSql,
    index: usize,
    key: &'c K,
) -> BoxFuture<'c, Result<(), Error>> {
    Box::pin(async move {
        if let Some(insert) = sql.history.get(index) {
            sqlx::query_with(insert, text_args::<MySql, K>(key)?)
                .execute(&mut *conn)
                .await
                .map_err(db_error::<MySql>)?;
        }
        Ok(())
    })
}
