//! Idempotent inserts on business keys.

use futures::future::BoxFuture;
use sqlx::{Acquire, Database, Execute};

use crate::backend::db_error;
use crate::{Backend, Error, ErrorKind};

/// What [`insert_once`] did.
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Insert<T> {
    /// The row was inserted; holds the driver's result (rows affected, and
    /// `last_insert_id` on MySQL and SQLite).
    Inserted(T),
    /// A unique or primary-key constraint rejected the row: it exists
    /// already. Nothing was written and the surrounding transaction is
    /// still usable.
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

/// Runs `insert` once per business key: a unique-constraint violation
/// becomes [`Insert::AlreadyExists`] instead of an error, and leaves the
/// caller's transaction usable.
///
/// `acquire` is a pool or a connection (the insert then runs in its own
/// transaction) or an open transaction (the insert runs under a
/// `SAVEPOINT` in it and commits with it). On PostgreSQL a failed
/// statement aborts the whole transaction — every later statement fails
/// with "current transaction is aborted" — unless it ran under a
/// savepoint; `insert_once` rolls back to the savepoint, so the caller
/// can go on writing and commit.
///
/// Only unique and primary-key violations count as "already exists"; any
/// other failure (a NOT NULL or foreign-key violation, a syntax error) is
/// [`Error::Database`], and a serialization failure, deadlock or busy
/// database is [`Error::Retryable`] (roll back and run the transaction
/// again). In every error case the savepoint is rolled back.
///
/// ```
/// use idem_sqlx::{insert_once, Insert};
/// use sqlx::sqlite::SqlitePoolOptions;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = SqlitePoolOptions::new().max_connections(1).connect("sqlite::memory:").await?;
/// sqlx::query("CREATE TABLE orders (reference TEXT PRIMARY KEY, total INTEGER NOT NULL)")
///     .execute(&pool)
///     .await?;
///
/// let mut tx = pool.begin().await?;
/// let first = insert_once(&mut *tx, sqlx::query("INSERT INTO orders VALUES ('po-7', 120)")).await?;
/// assert!(first.is_inserted());
/// // A retried request sends the same order again.
/// let again = insert_once(&mut *tx, sqlx::query("INSERT INTO orders VALUES ('po-7', 120)")).await?;
/// assert!(matches!(again, Insert::AlreadyExists));
/// // The transaction is still usable.
/// sqlx::query("INSERT INTO orders VALUES ('po-8', 80)").execute(&mut *tx).await?;
/// tx.commit().await?;
/// # Ok(())
/// # }
/// ```
pub fn insert_once<'a, 'c, 'q, A, Q>(
    acquire: A,
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
        let mut savepoint = acquire.begin().await.map_err(db_error::<A::Database>)?;
        match A::Database::execute_on(&mut savepoint, insert).await {
            Ok(done) => {
                savepoint.commit().await.map_err(db_error::<A::Database>)?;
                Ok(Insert::Inserted(done))
            }
            Err(error) => {
                savepoint
                    .rollback()
                    .await
                    .map_err(db_error::<A::Database>)?;
                match A::Database::error_kind(&error) {
                    ErrorKind::UniqueViolation => Ok(Insert::AlreadyExists),
                    _ => Err(db_error::<A::Database>(error)),
                }
            }
        }
    })
}

/// A backend [`insert_once`] runs on: PostgreSQL, MySQL/MariaDB and SQLite.
pub trait InsertBackend: Backend {
    /// Executes `query` on `conn`.
    #[doc(hidden)]
    fn execute_on<'e, 'q: 'e, Q: Execute<'q, Self> + 'q>(
        conn: &'e mut Self::Connection,
        query: Q,
    ) -> BoxFuture<'e, Result<Self::QueryResult, sqlx::Error>>;
}

macro_rules! insert_backend {
    ($feature:literal, $db:ty) => {
        #[cfg(feature = $feature)]
        impl InsertBackend for $db {
            fn execute_on<'e, 'q: 'e, Q: Execute<'q, Self> + 'q>(
                conn: &'e mut Self::Connection,
                query: Q,
            ) -> BoxFuture<'e, Result<Self::QueryResult, sqlx::Error>> {
                sqlx::Executor::execute(conn, query)
            }
        }
    };
}

insert_backend!("postgres", sqlx::Postgres);
insert_backend!("mysql", sqlx::MySql);
insert_backend!("sqlite", sqlx::Sqlite);
