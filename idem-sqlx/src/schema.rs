//! Installing tables: idem's own ([`install`]) and the application's
//! ([`install_sql`]), safe when several processes start together.

use idem_core::Dialect;
use sqlx::{Connection, Pool};

use crate::backend::db_error;
use crate::inbox::InboxBackend;
use crate::keys::KeyBackend;
use crate::savepoint::Held;
use crate::{Backend, Error};

/// The PostgreSQL advisory lock every install holds for its transaction:
/// `"idem_sql"` in ASCII, as the `bigint` key of `pg_advisory_xact_lock`.
const INSTALL_LOCK: &str = "SELECT pg_advisory_xact_lock(7594306392080740716)";

/// Runs schema scripts (each one statement or several separated by `;`,
/// without parameters) in one transaction. On PostgreSQL the transaction
/// first takes [`INSTALL_LOCK`]: two `CREATE TABLE IF NOT EXISTS` of the
/// same table racing each other fail on a unique index of the catalog
/// (`pg_type`, 23505), while behind the lock the second one sees the
/// table the first committed and does nothing. PostgreSQL's DDL is
/// transactional, so a failing script leaves nothing behind. SQLite begins
/// with `BEGIN IMMEDIATE` (one writer; the others wait on the busy
/// timeout). MySQL/MariaDB commits each DDL statement on its own, and
/// serializes them on the table's metadata lock: a concurrent `CREATE
/// TABLE IF NOT EXISTS` waits, then finds the table and only warns.
pub(crate) async fn install_scripts<B: Backend, S: AsRef<str>>(
    pool: &Pool<B>,
    scripts: &[S],
) -> Result<(), Error> {
    let conn = pool.acquire().await.map_err(db_error::<B>)?;
    let mut held = Held::new(conn);
    let installed = install_on::<B, S>(held.conn(), scripts).await;
    held.done();
    installed
}

/// [`install_scripts`] on a connection idem took from the pool.
async fn install_on<B: Backend, S: AsRef<str>>(
    conn: &mut B::Connection,
    scripts: &[S],
) -> Result<(), Error> {
    let mut tx = conn
        .begin_with(B::BEGIN_WRITE)
        .await
        .map_err(db_error::<B>)?;
    if B::DIALECT == Dialect::Postgres {
        B::execute_plain(&mut tx, INSTALL_LOCK)
            .await
            .map_err(db_error::<B>)?;
    }
    for script in scripts {
        B::execute_plain(&mut tx, script.as_ref())
            .await
            .map_err(db_error::<B>)?;
    }
    tx.commit().await.map_err(db_error::<B>)
}

/// Creates idem's own tables unless they exist: the idempotency keys'
/// `idem_keys` ([`keys::schema`](crate::keys::schema)) and the inbox's
/// `idem_inbox` ([`inbox::schema`](crate::inbox::schema)), in one call,
/// on any backend. A state machine's history table is installed with
/// [`history::install`](crate::history::install).
///
/// Safe to run at every start, from any number of processes at once (see
/// [`install_sql`]). Projects that keep their own migrations copy the
/// schemas instead.
///
/// On MySQL/MariaDB it then checks that both tables keep their
/// identifiers in `VARBINARY` columns, and fails with
/// [`Error::OutdatedSchema`] naming the `ALTER TABLE` to run when a table
/// an earlier version created keeps them as text (see
/// [`keys`](crate::keys#upgrading-from-text-identifier-columns-on-mysqlmariadb)).
///
/// ```
/// use idem_core::keys::{DEFAULT_RETENTION, KeyStore};
/// use idem_sqlx::inbox::Inbox;
/// use idem_sqlx::keys::SqlKeyStore;
/// use sqlx::sqlite::SqlitePoolOptions;
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let pool = SqlitePoolOptions::new().max_connections(1).connect("sqlite::memory:").await?;
/// idem_sqlx::install(&pool).await?;
/// idem_sqlx::install(&pool).await?; // again: nothing to do
///
/// assert_eq!(SqlKeyStore::new(pool.clone()).purge(DEFAULT_RETENTION).await?, 0);
/// assert_eq!(Inbox::new(pool, "billing")?.purge().await?, 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
///
/// Generic over the backend:
///
/// ```
/// use idem_sqlx::inbox::InboxBackend;
/// use idem_sqlx::keys::KeyBackend;
///
/// async fn start<B: KeyBackend + InboxBackend>(pool: &sqlx::Pool<B>) -> Result<(), idem_sqlx::Error> {
///     idem_sqlx::install(pool).await
/// }
/// ```
pub async fn install<B: KeyBackend + InboxBackend>(pool: &Pool<B>) -> Result<(), Error> {
    install_scripts(
        pool,
        &[
            crate::keys::schema(B::DIALECT),
            crate::inbox::schema(B::DIALECT),
        ],
    )
    .await?;
    crate::keys::SqlKeyStore::new(pool.clone())
        .check_identifiers()
        .await?;
    crate::inbox::check_identifiers(pool).await
}

/// Runs the application's own schema statements (`CREATE TABLE IF NOT
/// EXISTS ...`, each without parameters) the way idem installs its
/// tables: in one transaction, so that processes starting together on a
/// fresh database do not race.
///
/// On PostgreSQL the transaction first takes a transaction-scoped advisory
/// lock (`pg_advisory_xact_lock`), the same one [`install`] takes, then
/// runs the statements: a concurrent install waits for the lock, then finds
/// the tables and does nothing (without the lock, the loser of two
/// `CREATE TABLE IF NOT EXISTS` fails on a unique index of the catalog),
/// and a failing statement rolls back all the others. On SQLite the
/// transaction begins `IMMEDIATE` (one writer at a time; set a busy
/// timeout). MySQL/MariaDB commits each DDL statement by itself and
/// serializes concurrent ones on the table's metadata lock, so there the
/// statements are not atomic as a group but never race.
///
/// ```
/// use sqlx::sqlite::SqlitePoolOptions;
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let pool = SqlitePoolOptions::new().max_connections(1).connect("sqlite::memory:").await?;
/// let schema = [
///     "CREATE TABLE IF NOT EXISTS invoices (id INTEGER PRIMARY KEY, status TEXT NOT NULL)",
///     "CREATE INDEX IF NOT EXISTS invoices_status ON invoices (status)",
/// ];
/// idem_sqlx::install_sql(&pool, &schema).await?;
/// idem_sqlx::install_sql(&pool, &schema).await?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
pub async fn install_sql<B: Backend>(pool: &Pool<B>, statements: &[&str]) -> Result<(), Error> {
    install_scripts(pool, statements).await
}
