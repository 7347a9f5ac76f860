//! Applying transitions: [`TransitionExt`] on every `&'static Transition`.

use std::convert::Infallible;

use futures::future::BoxFuture;
use idem_core::{Change, DialectSql, ManySql, Outcome, State, Transition};
use sqlx::{Acquire, Connection, Pool};

use crate::backend::db_error;
use crate::retry::{run_attempts, Attempt, Failure};
use crate::savepoint::{self, Enclosing};
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
    /// [`idem_core::Error::NullState`] when the row exists but its state
    /// column is NULL (never [`Outcome::NotFound`], which means there is no
    /// row), [`idem_core::Error::UnknownState`] when the column holds a
    /// value that is no state (an empty string among them),
    /// [`Error::Retryable`] on a serialization failure, deadlock or busy
    /// database, [`Error::Database`] otherwise. The same errors, from the
    /// same reads, on every backend and through every `apply*` method.
    /// PostgreSQL adds [`Error::KeyType`] (a key of a type the key column
    /// cannot be compared with; see [`Key`]), [`Error::Nul`] (a text key
    /// holding U+0000) and [`Error::Misrouted`] (the answer of another
    /// statement, behind a pooler in transaction mode; see
    /// [`Protocol`](crate::Protocol)).
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
    /// order given: the outcome each key would have had applied alone, in
    /// that order (a key given again gets its first occurrence's outcome,
    /// or `AlreadyApplied` when that one moved the row).
    ///
    /// Any batch size is accepted. No statement binds more parameters than
    /// its backend allows:
    ///
    /// | | Statements | Atomicity |
    /// |---|---|---|
    /// | PostgreSQL | One for the whole batch. The keys are one array parameter, so the protocol's 65,535 bind parameters do not limit it; PostgreSQL's own bounds are 134,217,727 array elements and a 1 GiB bind message, past which the statement fails whole. | The statement is atomic. A key whose row another transaction changed while the statement waited for it is applied again on its own (see the table above). |
    /// | MySQL / MariaDB | A locking read per 1,024 distinct keys (the read binds each key three times, for the key and its exact comparison; 65,535 placeholders would allow 21,845), then per source state present one `UPDATE` per 1,024 of its keys (binding each twice), and one history `INSERT` per moved key. | One transaction idem owns holds every chunk, retried whole on transient conflicts with the default [`RetryPolicy`]. |
    /// | SQLite | A read per 1,024 distinct keys (one parameter per key), then as on MySQL (the `UPDATE` binds each key twice; SQLite's default limit is 32,766). | One transaction (`BEGIN IMMEDIATE`) holds every chunk. |
    ///
    /// So a batch of at most 1,024 keys is one read and one `UPDATE` per
    /// source state on MySQL and SQLite. Every read comes before the first
    /// write: a row of the batch whose state is NULL or no state fails the
    /// whole batch with [`idem_core::Error::NullState`] or
    /// [`idem_core::Error::UnknownState`], and no row of it moves, on every
    /// backend.
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
    ///
    /// The database may end the caller's whole transaction under the
    /// savepoint: InnoDB does on a deadlock (and on a lock wait timeout
    /// with `innodb_rollback_on_timeout`), SQLite on a trigger's
    /// `RAISE(ROLLBACK)`, an `ON CONFLICT ROLLBACK` constraint or a full
    /// disk. Then the caller's earlier writes are gone; the result is
    /// [`Error::Retryable`] for a deadlock or timeout and
    /// [`Error::TransactionRolledBack`] otherwise (also when the handler's
    /// own statement hit it and its error did not say so), and the
    /// caller's `rollback()` still succeeds: idem leaves a transaction open
    /// in its place (read-only on PostgreSQL and MySQL, so a write fails
    /// there instead of committing alone).
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

    /// [`apply_with`](Self::apply_with) on a connection the caller holds —
    /// the `&mut DB::Connection` an [`InboxHandler`](crate::inbox::InboxHandler)
    /// or another handler receives, `&mut **tx` of a transaction, `&mut *conn`
    /// of a pooled connection.
    ///
    /// On a connection already inside a transaction, the change and the
    /// handler's writes run under a savepoint, as with
    /// [`apply_with_in`](Self::apply_with_in): released on success, rolled
    /// back on a handler error (the caller's earlier writes stay), committed
    /// or rolled back with the caller's transaction. On a connection not in
    /// a transaction, they run in a transaction of their own (`BEGIN
    /// IMMEDIATE` on SQLite) that commits before this returns. Transient
    /// conflicts are not retried here: they surface as [`Error::Retryable`]
    /// and the caller runs its transaction again (an inbox does so itself
    /// when its handler's [`transient`](crate::inbox::InboxHandler::transient)
    /// hands the error back, e.g. with [`HandlerError::into_transient`]).
    /// When the database ended the caller's whole transaction under the
    /// savepoint, the result is as for [`apply_with_in`](Self::apply_with_in).
    ///
    /// ```
    /// use async_trait::async_trait;
    /// use idem_core::{Change, Outcome, State};
    /// use idem_derive::StateMachine;
    /// use idem_sqlx::inbox::{install, Delivery, EventId, Inbox, InboxHandler};
    /// use idem_sqlx::{HandlerError, TransitionExt, TransitionHandler};
    /// use sqlx::sqlite::{Sqlite, SqliteConnection, SqlitePoolOptions};
    ///
    /// #[derive(StateMachine, Clone, Copy, Debug, PartialEq, Eq, Hash)]
    /// #[state_machine(table = "invoices", column = "status", key = "id")]
    /// #[state_machine(transitions(pay: Issued -> Paid))]
    /// enum InvoiceStatus {
    ///     #[state_machine(initial)]
    ///     Issued,
    ///     Paid,
    /// }
    ///
    /// struct RecordPayment;
    ///
    /// #[async_trait]
    /// impl TransitionHandler<InvoiceStatus, Sqlite, i64> for RecordPayment {
    ///     type Error = sqlx::Error;
    ///
    ///     async fn on_applied(
    ///         &self,
    ///         conn: &mut SqliteConnection,
    ///         change: Change<'_, InvoiceStatus, i64>,
    ///     ) -> Result<(), sqlx::Error> {
    ///         sqlx::query("INSERT INTO payments (invoice_id) VALUES (?)")
    ///             .bind(*change.key)
    ///             .execute(conn)
    ///             .await?;
    ///         Ok(())
    ///     }
    /// }
    ///
    /// /// A `payment.received` event pays invoice 1: the inbox marker, the
    /// /// transition and the payment commit together.
    /// struct PayOnEvent;
    ///
    /// #[async_trait]
    /// impl InboxHandler<Sqlite> for PayOnEvent {
    ///     type Output = Outcome<InvoiceStatus>;
    ///     type Error = HandlerError<sqlx::Error>;
    ///
    ///     async fn handle(
    ///         &self,
    ///         conn: &mut SqliteConnection,
    ///         _: &EventId,
    ///     ) -> Result<Self::Output, Self::Error> {
    ///         InvoiceStatus::pay().apply_with_on(conn, 1i64, &RecordPayment).await
    ///     }
    /// }
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let pool = SqlitePoolOptions::new().max_connections(1).connect("sqlite::memory:").await?;
    /// sqlx::raw_sql(
    ///     "CREATE TABLE invoices (id INTEGER PRIMARY KEY, status TEXT NOT NULL);
    ///      CREATE TABLE payments (invoice_id INTEGER NOT NULL);
    ///      INSERT INTO invoices (id, status) VALUES (1, 'issued');",
    /// )
    /// .execute(&pool)
    /// .await?;
    /// install(&pool).await?;
    /// let inbox = Inbox::new(pool.clone(), "payments")?;
    ///
    /// let first = inbox.process(&EventId::new("evt-1")?, &PayOnEvent).await;
    /// assert!(matches!(first, Ok(Delivery::Processed(Outcome::Applied { .. }))));
    /// // Another event for the same invoice: the state guard makes it a no-op.
    /// let second = inbox.process(&EventId::new("evt-2")?, &PayOnEvent).await;
    /// assert!(matches!(second, Ok(Delivery::Processed(Outcome::AlreadyApplied { .. }))));
    /// let payments: i64 = sqlx::query_scalar("SELECT count(*) FROM payments").fetch_one(&pool).await?;
    /// assert_eq!(payments, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    fn apply_with_on<'a, C, K, H>(
        &'static self,
        conn: &'a mut C,
        key: K,
        handler: &'a H,
    ) -> BoxFuture<'a, Result<Outcome<S>, HandlerError<H::Error>>>
    where
        C: Connection,
        C::Database: Backend,
        K: Key<C::Database> + 'a,
        H: TransitionHandler<S, C::Database, K>;
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
    let mut tx = savepoint::begin::<DB>(conn).await.map_err(db_error::<DB>)?;
    match DB::apply_on(&mut tx, transition, sql, key).await {
        Ok(outcome) => {
            tx.commit().await.map_err(db_error::<DB>)?;
            Ok(outcome)
        }
        Err(failure) => Err(savepoint::fail(tx, failure).await),
    }
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
            .map_err(|error| match handler.transient(error) {
                Ok(conflict) => Failure::Db(conflict),
                Err(error) => Failure::Handler(error),
            })?;
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
        tx: &'t mut DB::Connection,
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
        tx: &'t mut DB::Connection,
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
            if let ManySql::Whole(_) = sql.many {
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
        Box::pin(apply_handled_on::<S, DB::Connection, K, H>(
            &mut **tx, self, key, handler,
        ))
    }

    fn apply_with_on<'a, C, K, H>(
        &'static self,
        conn: &'a mut C,
        key: K,
        handler: &'a H,
    ) -> BoxFuture<'a, Result<Outcome<S>, HandlerError<H::Error>>>
    where
        C: Connection,
        C::Database: Backend,
        K: Key<C::Database> + 'a,
        H: TransitionHandler<S, C::Database, K>,
    {
        Box::pin(apply_handled_on::<S, C, K, H>(conn, self, key, handler))
    }
}

/// Applies and runs the handler under a savepoint of the transaction
/// `conn` is in, or in a transaction of its own when it is in none:
/// committed on success, rolled back on a handler error.
async fn apply_handled_on<S, C, K, H>(
    conn: &mut C,
    transition: &'static Transition<S>,
    key: K,
    handler: &H,
) -> Result<Outcome<S>, HandlerError<H::Error>>
where
    S: State,
    C: Connection,
    C::Database: Backend,
    K: Key<C::Database>,
    H: TransitionHandler<S, C::Database, K>,
{
    type Db<C> = <C as Connection>::Database;
    let mut tx = savepoint::begin::<Db<C>>(conn)
        .await
        .map_err(db_error::<Db<C>>)?;
    let result = apply_and_handle::<S, Db<C>, K, H>(&mut tx, transition, &key, handler).await;
    let failure = match result {
        Ok(outcome) => {
            tx.commit().await.map_err(db_error::<Db<C>>)?;
            return Ok(outcome);
        }
        Err(Failure::Handler(e)) => {
            return match savepoint::roll_back(tx).await.map_err(db_error::<Db<C>>)? {
                Enclosing::Intact => Err(HandlerError::Handler(e)),
                // The server had rolled back the caller's whole transaction:
                // its earlier writes are gone, which the handler's error
                // cannot tell. Say so rather than return it.
                Enclosing::Ended(evidence) => {
                    Err(HandlerError::Idem(Error::TransactionRolledBack(evidence)))
                }
            };
        }
        Err(Failure::Idem(e)) => e,
        Err(Failure::Db(e)) => db_error::<Db<C>>(e),
    };
    Err(HandlerError::Idem(savepoint::fail(tx, failure).await))
}
