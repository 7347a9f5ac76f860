//! Idempotent inserts on business keys: [`insert_once`].

/// [`InsertBackend::execute_on`]: the same body on every backend (the
/// driver's executor, which a generic default cannot name).
macro_rules! execute_on {
    () => {
        fn execute_on<'e, 'q: 'e, Q: sqlx::Execute<'q, Self> + 'q>(
            conn: &'e mut Self::Connection,
            query: Q,
        ) -> BoxFuture<'e, Result<Self::QueryResult, sqlx::Error>> {
            sqlx::Executor::execute(conn, query)
        }
    };
}

mod key;
#[cfg(feature = "mysql")]
mod mysql;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

use futures::future::BoxFuture;
use sqlx::{Acquire, Database, Execute};

use crate::backend::db_error;
use crate::savepoint::{self, Enclosing};
use crate::{Backend, Error, ErrorKind};

#[doc(hidden)]
pub use key::Verdict;
pub use key::{BusinessKey, ViolatedKey};

/// What [`insert_once`] did.
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Insert<T> {
    /// The row was inserted; holds the driver's result (rows affected, and
    /// `last_insert_id` on MySQL and SQLite).
    Inserted(T),
    /// The business key the caller named rejected the row (a unique or
    /// primary-key violation of exactly that key): it exists already.
    /// Nothing was written and the surrounding transaction is still usable.
    AlreadyExists,
}

impl<T> Insert<T> {
    /// Whether the row was inserted by this call.
    pub fn is_inserted(&self) -> bool {
        matches!(self, Insert::Inserted(_))
    }

    /// Whether the row existed already.
    pub fn already_exists(&self) -> bool {
        matches!(self, Insert::AlreadyExists)
    }
}

/// Runs `insert` once per business key: a violation of the unique key
/// `key` names becomes [`Insert::AlreadyExists`] instead of an error, and
/// leaves the caller's transaction usable.
///
/// `acquire` is a pool or a connection (the insert then runs in its own
/// transaction, `BEGIN IMMEDIATE` on SQLite) or an open transaction (the
/// insert runs under a `SAVEPOINT` in it and commits with it). On
/// PostgreSQL a failed statement aborts the whole transaction — every later
/// statement fails with "current transaction is aborted" — unless it ran
/// under a savepoint; `insert_once` rolls back to the savepoint, so the
/// caller can go on writing and commit.
///
/// # Which violation is "already exists"
///
/// Only a violation of `key` — a unique constraint or unique index
/// (primary key included) of `key`'s table whose columns are exactly
/// `key`'s columns — is [`Insert::AlreadyExists`]. The statement must
/// insert into that table. Any other unique key is
/// [`Error::OtherUniqueViolation`], which names it ([`ViolatedKey`]: its
/// table, name and columns as far as the backend tells); a violation idem
/// cannot attribute is [`Error::UnresolvedUniqueViolation`] with the
/// reason, never `AlreadyExists`: a unique index on expressions, a unique
/// key of another table fired by a trigger that idem cannot tell apart (on
/// MariaDB, whose message omits the table, when the key's name is shared
/// with another table and the business key's table has triggers: give the
/// business key's index a name of its own, such as `orders_reference`).
///
/// A row that repeats several unique keys at once (an identical retry of
/// a row with a business key and an e-mail address) violates them all, and
/// the database reports only the first it checks: PostgreSQL and
/// MySQL/MariaDB check the primary key first, then the unique keys in the
/// order they were declared; SQLite checks an `INTEGER PRIMARY KEY` first,
/// then the other unique keys from the last declared to the first. Such a
/// row is `AlreadyExists` only when the business key is the one reported,
/// and otherwise the error names the other key — idem cannot see the
/// row's values to tell that the business key repeats too. Make the
/// business key the primary key (on SQLite: declare it after the table's
/// other unique keys), or look it up yourself after an
/// [`Error::OtherUniqueViolation`].
///
/// How each backend identifies the violated key, and what it costs (only
/// on the violation path; nothing is cached, so a schema change is seen at
/// once):
///
/// | Backend | The error gives | idem then reads |
/// |---|---|---|
/// | PostgreSQL | constraint name, table, schema | one `pg_index` query: the columns, and whether the table is the key's (or a partition of it) |
/// | MySQL 8 | `table.key` in the message | one `information_schema` query (STATISTICS, TRIGGERS) |
/// | MariaDB | `key` in the message | the same query; a second (STATISTICS of other schemas) when the key's table has triggers |
/// | SQLite | `table.column, ...` in the message | nothing (one `sqlite_master` read for an index on expressions) |
///
/// # Errors
///
/// Any other failure (a NOT NULL or foreign-key violation, a syntax error)
/// is [`Error::Database`], and a serialization failure, deadlock or busy
/// database is [`Error::Retryable`] (roll back and run the transaction
/// again). In every error case the savepoint is rolled back. When the
/// database itself rolled back the caller's whole transaction under the
/// savepoint (InnoDB does on a deadlock; SQLite on `RAISE(ROLLBACK)` or a
/// constraint declared `ON CONFLICT ROLLBACK`), the result is
/// [`Error::Retryable`] for a deadlock or lock wait timeout and
/// [`Error::TransactionRolledBack`] otherwise — never `AlreadyExists` —
/// and the caller's `rollback()` still succeeds. A failed insert costs one
/// statement more than its rollback (a `ROLLBACK TO SAVEPOINT` that asks
/// whether the savepoint still exists).
///
/// Dropping the returned future before it completes rolls the savepoint
/// back before the caller's next statement (sqlx queues it). On
/// PostgreSQL, a drop while sqlx is still opening the savepoint rolls back
/// the caller's whole transaction instead (a fault of sqlx 0.8.6; check
/// `is_in_transaction()` on the caller's transaction after a timeout).
///
/// ```
/// use idem_sqlx::{insert_once, BusinessKey, Error, Insert};
/// use sqlx::sqlite::SqlitePoolOptions;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = SqlitePoolOptions::new().max_connections(1).connect("sqlite::memory:").await?;
/// // SQLite checks the unique key declared last first: a retry that repeats
/// // both keys is reported on `reference`.
/// sqlx::query("CREATE TABLE orders (email TEXT UNIQUE, reference TEXT PRIMARY KEY)")
///     .execute(&pool)
///     .await?;
/// let order = BusinessKey::new("orders", ["reference"])?;
///
/// let mut tx = pool.begin().await?;
/// let insert = "INSERT INTO orders (reference, email) VALUES ('po-1', 'buyer@example.test')";
/// assert!(insert_once(&mut *tx, &order, insert).await?.is_inserted());
/// // A retried request sends the same order again.
/// assert!(matches!(insert_once(&mut *tx, &order, insert).await?, Insert::AlreadyExists));
/// // Another order with the same e-mail address is no retry: an error naming the key.
/// let other = "INSERT INTO orders (reference, email) VALUES ('po-2', 'buyer@example.test')";
/// let other = insert_once(&mut *tx, &order, other).await;
/// match other {
///     Err(Error::OtherUniqueViolation { violated, .. }) => assert_eq!(violated.columns, ["email"]),
///     other => panic!("{other:?}"),
/// }
/// // The transaction is still usable.
/// sqlx::query("INSERT INTO orders (reference) VALUES ('po-3')").execute(&mut *tx).await?;
/// tx.commit().await?;
/// # Ok(())
/// # }
/// ```
pub fn insert_once<'a, 'c, 'q, A, Q>(
    acquire: A,
    key: &'a BusinessKey,
    insert: Q,
) -> BoxFuture<'a, Result<Insert<<A::Database as Database>::QueryResult>, Error>>
where
    A: Acquire<'c> + Send + 'a,
    A::Database: InsertBackend,
    Q: Execute<'q, A::Database> + 'q + 'a,
    'c: 'a,
    'q: 'a,
{
    Box::pin(async move {
        let mut conn = acquire.acquire().await.map_err(db_error::<A::Database>)?;
        insert_on::<A::Database, Q>(&mut conn, key, insert).await
    })
}

/// [`insert_once`] on the connection it was given or took.
async fn insert_on<'q, DB, Q>(
    conn: &mut DB::Connection,
    key: &BusinessKey,
    insert: Q,
) -> Result<Insert<DB::QueryResult>, Error>
where
    DB: InsertBackend,
    Q: Execute<'q, DB> + 'q,
{
    let mut tx = savepoint::begin::<DB>(conn).await.map_err(db_error::<DB>)?;
    let error = match DB::execute_on(&mut tx, insert).await {
        Ok(done) => {
            tx.commit().await.map_err(db_error::<DB>)?;
            return Ok(Insert::Inserted(done));
        }
        Err(error) => error,
    };
    let enclosing = savepoint::roll_back(tx).await.map_err(db_error::<DB>)?;
    if let Enclosing::Ended(_) = enclosing {
        return Err(savepoint::ended::<DB>(db_error::<DB>(error), enclosing));
    }
    if DB::error_kind(&error) != ErrorKind::UniqueViolation {
        return Err(db_error::<DB>(error));
    }
    let verdict = DB::resolve(conn, key, &error)
        .await
        .map_err(db_error::<DB>)?;
    match verdict {
        Verdict::BusinessKey => Ok(Insert::AlreadyExists),
        Verdict::Other(violated) => Err(Error::OtherUniqueViolation {
            key: Box::new(key.clone()),
            violated: Box::new(violated),
            source: error,
        }),
        Verdict::Unresolved(violated, reason) => Err(Error::UnresolvedUniqueViolation {
            key: Box::new(key.clone()),
            violated: Box::new(violated),
            reason,
            source: error,
        }),
    }
}

/// A backend [`insert_once`] runs on: PostgreSQL, MySQL/MariaDB and SQLite.
pub trait InsertBackend: Backend {
    /// Executes `query` on `conn`.
    #[doc(hidden)]
    fn execute_on<'e, 'q: 'e, Q: Execute<'q, Self> + 'q>(
        conn: &'e mut Self::Connection,
        query: Q,
    ) -> BoxFuture<'e, Result<Self::QueryResult, sqlx::Error>>;

    /// Tells which unique key `error` (a unique violation, after the
    /// savepoint was rolled back) was, against `key`.
    #[doc(hidden)]
    fn resolve<'c>(
        conn: &'c mut Self::Connection,
        key: &'c BusinessKey,
        error: &'c sqlx::Error,
    ) -> BoxFuture<'c, Result<Verdict, sqlx::Error>>;
}
