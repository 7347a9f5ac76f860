//! Applying transitions: [`TransitionExt`] on every `&'static Transition`.

use std::convert::Infallible;

use futures::future::BoxFuture;
use idem_core::{Change, DialectSql, Outcome, State, Transition};
use sqlx::{Acquire, Connection, Pool};

use crate::backend::db_error;
use crate::retry::{run_attempts, Attempt, Failure};
use crate::{Backend, Error, HandlerError, Key, RetryPolicy, TransitionHandler};

/// Applies a state machine's transitions to rows: `InvoiceStatus::pay().apply(&pool, id)`.
///
/// Implemented for every [`Transition`]; brought into scope by
/// `use idem::prelude::*;`. Every method sends the transition's compiled
/// statements with the key as the only parameter and reports what happened
/// to the row as an [`Outcome`] — read from the database, never assumed.
///
/// | Statements a call sends | Applied | AlreadyApplied / Rejected / NotFound |
/// |---|---|---|
/// | PostgreSQL | 1 | 1 (2 when the row changed mid-statement) |
/// | MySQL / MariaDB | 1 | 2 (the update, then a locking read) |
/// | SQLite, one source | 1 | 2 (the update, then a read) |
/// | SQLite, several sources | 2 (a read, then a compare-and-set) | 1 (the read) |
///
/// With a history table, MySQL and SQLite write the history row with one
/// more statement inside a transaction (`BEGIN` and `COMMIT` when the
/// executor is not in one, a savepoint otherwise); PostgreSQL writes it in
/// the same statement. No call ever takes a lock before its write (`SELECT
/// ... FOR UPDATE`): the guarded write is the first statement, except for
/// a multi-source transition on SQLite, where a plain read comes first and
/// the write is a compare-and-set on exactly the state read.
///
/// Two things to know:
/// - sqlx pools ping a connection before handing it out unless
///   `PoolOptions::test_before_acquire(false)` is set: a hidden round trip
///   per call on a pool, not counted above.
/// - On MySQL a multi-source transition learns the state it moved from
///   through `LAST_INSERT_ID(expr)`, so afterwards `LAST_INSERT_ID()` on
///   that connection returns the source's position, not the last
///   auto-increment id: read your insert's id before applying one.
///
/// Under PostgreSQL's REPEATABLE READ and SERIALIZABLE, a row changed by a
/// transaction that committed after this one's snapshot makes the statement
/// fail with a serialization failure: [`apply_with`](Self::apply_with)
/// runs its transaction again; inside a caller's transaction it is
/// [`Error::Retryable`]. Under READ COMMITTED (and on MySQL, whose updates
/// and locking reads see the latest committed row) a caller that waited on
/// the row lock gets the committed state's outcome without a retry.
pub trait TransitionExt<S: State> {
    /// Applies the transition to the row with `key`, on a pool, a
    /// connection or an open transaction (then the caller's transaction
    /// holds the change and decides whether it commits).
    ///
    /// Errors: [`idem_core::Error::NoTable`] without a table binding,
    /// [`idem_core::Error::UnknownState`] when the column holds a value that
    /// is no state, [`Error::Retryable`] on a serialization failure,
    /// deadlock or busy database, [`Error::Database`] otherwise.
    fn apply<'a, 'c, A, K>(
        &'static self,
        executor: A,
        key: K,
    ) -> BoxFuture<'a, Result<Outcome<S>, Error>>
    where
        A: Acquire<'c> + Send + 'a,
        A::Database: Backend,
        K: Key<A::Database> + 'a,
        'c: 'a;

    /// Applies the transition to every key, one outcome per key in the
    /// order given: one statement for the whole batch on PostgreSQL; on
    /// MySQL and SQLite one locking read of the batch and one `UPDATE` per
    /// source state present, in a transaction idem owns (retried on
    /// transient conflicts with the default [`RetryPolicy`]).
    fn apply_many<'a, DB, K>(
        &'static self,
        pool: &'a Pool<DB>,
        keys: &'a [K],
    ) -> BoxFuture<'a, Result<Vec<Outcome<S>>, Error>>
    where
        DB: Backend,
        K: Key<DB> + 'a;

    /// Begins a transaction, applies the transition, runs `handler` only
    /// when this call moved the row, and commits. A handler error rolls the
    /// state change and every write of the handler back and is returned as
    /// [`HandlerError::Handler`]. Serialization failures, deadlocks and a
    /// busy database run the whole transaction again (the handler too) with
    /// the default [`RetryPolicy`].
    fn apply_with<'a, DB, K, H>(
        &'static self,
        pool: &'a Pool<DB>,
        key: K,
        handler: &'a H,
    ) -> BoxFuture<'a, Result<Outcome<S>, HandlerError<H::Error>>>
    where
        DB: Backend,
        K: Key<DB> + 'a,
        H: TransitionHandler<S, DB, K>,
    {
        self.apply_with_policy(pool, key, handler, RetryPolicy::default())
    }

    /// [`apply_with`](Self::apply_with) with an explicit retry policy.
    fn apply_with_policy<'a, DB, K, H>(
        &'static self,
        pool: &'a Pool<DB>,
        key: K,
        handler: &'a H,
        policy: RetryPolicy,
    ) -> BoxFuture<'a, Result<Outcome<S>, HandlerError<H::Error>>>
    where
        DB: Backend,
        K: Key<DB> + 'a,
        H: TransitionHandler<S, DB, K>;

    /// [`apply_with`](Self::apply_with) inside the caller's transaction:
    /// the change and the handler's writes run under a savepoint (released
    /// on success, rolled back on a handler error) and commit with the
    /// caller's transaction. Transient conflicts are not retried here: they
    /// surface as [`Error::Retryable`], and the caller runs its transaction
    /// again.
    fn apply_with_in<'a, 't, DB, K, H>(
        &'static self,
        tx: &'a mut sqlx::Transaction<'t, DB>,
        key: K,
        handler: &'a H,
    ) -> BoxFuture<'a, Result<Outcome<S>, HandlerError<H::Error>>>
    where
        DB: Backend,
        K: Key<DB> + 'a,
        H: TransitionHandler<S, DB, K>,
        't: 'a;
}

/// The compiled SQL of `transition` for `DB`, or [`idem_core::Error::NoTable`].
fn compiled<S: State, DB: Backend>(
    transition: &'static Transition<S>,
) -> Result<&'static DialectSql, Error> {
    transition.sql_for(DB::DIALECT).ok_or_else(|| {
        Error::Core(idem_core::Error::NoTable {
            type_name: S::TYPE_NAME,
            transition: transition.name(),
        })
    })
}

/// Applies on a connection whose writes are not yet atomic with each
/// other: where the history row is a separate statement, both go in a
/// transaction (or a savepoint inside the caller's).
async fn apply_atomic<S: State, DB: Backend, K: Key<DB>>(
    conn: &mut DB::Connection,
    transition: &'static Transition<S>,
    key: &K,
) -> Result<Outcome<S>, Error> {
    let sql = compiled::<S, DB>(transition)?;
    if sql.history.is_empty() {
        return DB::apply_on(conn, transition, sql, key).await;
    }
    let mut tx = if conn.is_in_transaction() {
        Connection::begin(conn).await
    } else {
        conn.begin_with(DB::BEGIN_WRITE).await
    }
    .map_err(db_error::<DB>)?;
    let outcome = DB::apply_on(&mut tx, transition, sql, key).await?;
    tx.commit().await.map_err(db_error::<DB>)?;
    Ok(outcome)
}

/// Applies and runs the handler on a connection already in a transaction
/// that rolls back if this fails.
async fn apply_and_handle<S, DB, K, H>(
    conn: &mut DB::Connection,
    transition: &'static Transition<S>,
    key: &K,
    handler: &H,
) -> Result<Outcome<S>, Failure<H::Error>>
where
    S: State,
    DB: Backend,
    K: Key<DB>,
    H: TransitionHandler<S, DB, K>,
{
    let sql = compiled::<S, DB>(transition)?;
    let outcome = DB::apply_on(conn, transition, sql, key).await?;
    if let Outcome::Applied { from, to } = outcome {
        let change = Change {
            transition,
            key,
            from,
            to,
        };
        handler
            .on_applied(conn, change)
            .await
            .map_err(Failure::Handler)?;
    }
    Ok(outcome)
}

/// One attempt of `apply_with`.
struct Handled<'a, S: 'static, K, H> {
    transition: &'static Transition<S>,
    key: &'a K,
    handler: &'a H,
}

impl<S, DB, K, H> Attempt<DB, Outcome<S>, H::Error> for Handled<'_, S, K, H>
where
    S: State,
    DB: Backend,
    K: Key<DB>,
    H: TransitionHandler<S, DB, K>,
{
    fn run<'t>(
        &'t mut self,
        tx: &'t mut sqlx::Transaction<'static, DB>,
    ) -> BoxFuture<'t, Result<Outcome<S>, Failure<H::Error>>> {
        Box::pin(apply_and_handle::<S, DB, K, H>(
            tx,
            self.transition,
            self.key,
            self.handler,
        ))
    }
}

/// One attempt of `apply_many` on a backend that reads, then writes.
struct Batch<'a, S: 'static, K> {
    transition: &'static Transition<S>,
    sql: &'static DialectSql,
    keys: &'a [K],
}

impl<S, DB, K> Attempt<DB, Vec<Outcome<S>>, Infallible> for Batch<'_, S, K>
where
    S: State,
    DB: Backend,
    K: Key<DB>,
{
    fn run<'t>(
        &'t mut self,
        tx: &'t mut sqlx::Transaction<'static, DB>,
    ) -> BoxFuture<'t, Result<Vec<Outcome<S>>, Failure<Infallible>>> {
        Box::pin(
            async move { Ok(DB::apply_many_on(tx, self.transition, self.sql, self.keys).await?) },
        )
    }
}

impl<S: State> TransitionExt<S> for Transition<S> {
    fn apply<'a, 'c, A, K>(
        &'static self,
        executor: A,
        key: K,
    ) -> BoxFuture<'a, Result<Outcome<S>, Error>>
    where
        A: Acquire<'c> + Send + 'a,
        A::Database: Backend,
        K: Key<A::Database> + 'a,
        'c: 'a,
    {
        Box::pin(async move {
            let mut conn = executor.acquire().await.map_err(db_error::<A::Database>)?;
            apply_atomic::<S, A::Database, K>(&mut conn, self, &key).await
        })
    }

    fn apply_many<'a, DB, K>(
        &'static self,
        pool: &'a Pool<DB>,
        keys: &'a [K],
    ) -> BoxFuture<'a, Result<Vec<Outcome<S>>, Error>>
    where
        DB: Backend,
        K: Key<DB> + 'a,
    {
        Box::pin(async move {
            let sql = compiled::<S, DB>(self)?;
            if keys.is_empty() {
                return Ok(Vec::new());
            }
            // PostgreSQL runs the batch as one statement; the others read
            // with locks, then write, which needs a transaction.
            if sql.many.len() == 1 {
                let mut conn = pool.acquire().await.map_err(db_error::<DB>)?;
                return DB::apply_many_on(&mut conn, self, sql, keys).await;
            }
            let work = Batch {
                transition: self,
                sql,
                keys,
            };
            run_attempts(pool, &RetryPolicy::default(), work)
                .await
                .map_err(|e| match e {
                    HandlerError::Idem(e) => e,
                    HandlerError::Handler(never) => match never {},
                })
        })
    }

    fn apply_with_policy<'a, DB, K, H>(
        &'static self,
        pool: &'a Pool<DB>,
        key: K,
        handler: &'a H,
        policy: RetryPolicy,
    ) -> BoxFuture<'a, Result<Outcome<S>, HandlerError<H::Error>>>
    where
        DB: Backend,
        K: Key<DB> + 'a,
        H: TransitionHandler<S, DB, K>,
    {
        Box::pin(async move {
            let work = Handled {
                transition: self,
                key: &key,
                handler,
            };
            run_attempts(pool, &policy, work).await
        })
    }

    fn apply_with_in<'a, 't, DB, K, H>(
        &'static self,
        tx: &'a mut sqlx::Transaction<'t, DB>,
        key: K,
        handler: &'a H,
    ) -> BoxFuture<'a, Result<Outcome<S>, HandlerError<H::Error>>>
    where
        DB: Backend,
        K: Key<DB> + 'a,
        H: TransitionHandler<S, DB, K>,
        't: 'a,
    {
        Box::pin(async move {
            let mut savepoint = Connection::begin(&mut **tx).await.map_err(db_error::<DB>)?;
            let result = apply_and_handle::<S, DB, K, H>(&mut savepoint, self, &key, handler).await;
            match result {
                Ok(outcome) => {
                    savepoint.commit().await.map_err(db_error::<DB>)?;
                    Ok(outcome)
                }
                Err(Failure::Handler(e)) => {
                    savepoint.rollback().await.map_err(db_error::<DB>)?;
                    Err(HandlerError::Handler(e))
                }
                Err(Failure::Idem(e)) => Err(HandlerError::Idem(e)),
                Err(Failure::Db(e)) => Err(HandlerError::Idem(db_error::<DB>(e))),
            }
        })
    }
}
