//! Idempotency keys on PostgreSQL, MySQL/MariaDB and SQLite:
//! [`SqlKeyStore`], the [`KeyStore`](idem_core::keys::KeyStore) of
//! [`idem_core::keys`] over one table, `idem_keys`, with the primary key
//! `(scope, idem_key)`. Every lease and expiry is computed by the
//! database's clock, in SQL; the application's clock is never compared
//! with it.
//!
//! Two modes:
//!
//! - **Transactional** ([`SqlKeyStore::run_once`]): for work that only
//!   writes to this database. The claim, the work and the stored response
//!   commit in one transaction: the work runs exactly once and no lease is
//!   involved. A concurrent duplicate waits on the key's row (or, on
//!   SQLite, on the single writer) and then replays the committed response.
//!
//!   ```
//!   use idem_core::keys::{Fingerprint, Scope, StoredResponse};
//!   use idem_sqlx::keys::{Once, SqlKeyStore};
//!   use sqlx::sqlite::SqlitePoolOptions;
//!
//!   # tokio::runtime::Runtime::new().unwrap().block_on(async {
//!   let pool = SqlitePoolOptions::new().max_connections(1).connect("sqlite::memory:").await?;
//!   sqlx::query("CREATE TABLE payments (amount INTEGER NOT NULL)").execute(&pool).await?;
//!   let store = SqlKeyStore::new(pool.clone());
//!   store.install().await?;
//!
//!   let scope = Scope::new("tenant-1", "payments")?;
//!   let key = "order-42".parse()?;
//!   let fingerprint = Fingerprint::of_json(&serde_json::json!({"amount": 100}));
//!   for attempt in 0..2 {
//!       let once = store
//!           .run_once::<sqlx::Error, _>(&scope, &key, &fingerprint, |conn| {
//!               Box::pin(async move {
//!                   sqlx::query("INSERT INTO payments (amount) VALUES (100)").execute(&mut *conn).await?;
//!                   Ok(StoredResponse::new(201, b"paid".to_vec()))
//!               })
//!           })
//!           .await?;
//!       assert_eq!(matches!(once, Once::Replayed(_)), attempt == 1);
//!       assert_eq!(once.response().body, b"paid");
//!   }
//!   let payments: i64 = sqlx::query_scalar("SELECT count(*) FROM payments").fetch_one(&pool).await?;
//!   assert_eq!(payments, 1);
//!   # Ok::<(), Box<dyn std::error::Error>>(())
//!   # }).unwrap();
//!   ```
//!
//! - **Leased** (the [`KeyStore`](idem_core::keys::KeyStore) methods): for
//!   work that calls the outside world. Claim with a lease, run, then
//!   complete (or release on a failure the client may retry). A run that
//!   crashed is taken over once its lease expires, and the new holder is
//!   told the first run's outcome is uncertain
//!   ([`Claim::Recovered`]).
//!
//!   ```
//!   use std::time::Duration;
//!   use idem_core::keys::{Claim, Completion, Fingerprint, KeyStore, Scope, StoredResponse};
//!   use idem_sqlx::keys::SqlKeyStore;
//!   use sqlx::sqlite::SqlitePoolOptions;
//!
//!   # tokio::runtime::Runtime::new().unwrap().block_on(async {
//!   let pool = SqlitePoolOptions::new().max_connections(1).connect("sqlite::memory:").await?;
//!   let store = SqlKeyStore::new(pool);
//!   store.install().await?;
//!
//!   let scope = Scope::new("tenant-1", "emails")?;
//!   let key = "welcome-7".parse()?;
//!   let fingerprint = Fingerprint::of_request("POST", "/emails", b"to=ada");
//!   let lease = Duration::from_secs(30);
//!   match store.claim(&scope, &key, &fingerprint, lease).await? {
//!       Claim::New(lease) => {
//!           let response = StoredResponse::new(202, b"sent".to_vec()); // call the mail provider
//!           assert_eq!(store.complete(&lease, &response).await?, Completion::Stored);
//!       }
//!       other => unreachable!("a fresh key: {other:?}"),
//!   }
//!   let replay = store.claim(&scope, &key, &fingerprint, lease).await?;
//!   assert!(matches!(replay, Claim::Replay(r) if r.status == 202));
//!
//!   // Keep completed records 24 hours (run this periodically).
//!   let purged = store.purge(idem_core::keys::DEFAULT_RETENTION).await?;
//!   assert_eq!(purged, 0);
//!   # Ok::<(), Box<dyn std::error::Error>>(())
//!   # }).unwrap();
//!   ```
//!
//! The table's SQL is [`schema`], for projects that keep their own
//! migrations; [`SqlKeyStore::install`] runs it and may run any number of
//! times, also from processes starting together; [`crate::install`]
//! installs it with the inbox's table. Code generic over the database
//! names [`KeyBackend`] as its bound.
//!
//! # Statements
//!
//! What one [`claim`](idem_core::keys::KeyStore::claim) sends, by
//! answer (a transactional [`SqlKeyStore::run_once`] adds `BEGIN` and
//! `COMMIT` around the same statements):
//!
//! | answer                        | PostgreSQL | MySQL/MariaDB | SQLite |
//! |-------------------------------|-----------:|--------------:|-------:|
//! | new key                       | 1          | 1             | 1      |
//! | replay                        | 1          | 2             | 2      |
//! | in progress, reused key       | 1          | 2             | 2      |
//! | takeover of an expired lease  | 1          | 3             | 1      |
//!
//! - **PostgreSQL**: one data-modifying CTE inserts the record (or takes
//!   over an expired lease of the same fingerprint) and, only when it did
//!   neither, reads the record it collided with, stored response and
//!   lease time left included. When the insert had to wait for a
//!   concurrent inserter that then committed, that record is not in the
//!   statement's snapshot: the CTE returns nothing and a second statement
//!   reads it (2 in that race only).
//! - **MySQL/MariaDB**: `INSERT IGNORE`, then a shared locking read
//!   (`LOCK IN SHARE MODE`, so a read inside a transaction sees the row it
//!   collided with, not its snapshot), then an `UPDATE` only when that read
//!   saw an expired lease. MySQL 8 has no `RETURNING`, and a prepared
//!   statement is one statement, so the insert and the read cannot share a
//!   round trip. MariaDB's `INSERT ... ON DUPLICATE KEY UPDATE ...
//!   RETURNING` does return the stored row, but InnoDB takes the row's
//!   exclusive lock for it even when nothing changes (every replay would
//!   queue behind the others, inside `run_once` until commit), and the
//!   dialect serves MySQL 8 too. Reading first (a plain read, then the
//!   insert) would make a replay one statement and every new key two round
//!   trips: first executions are the common case, so the insert stays
//!   first.
//! - **SQLite**: no data-modifying CTE, and an upsert's `RETURNING` shows
//!   only rows it inserted or updated, so returning a completed record
//!   means rewriting it: every replay a write behind the single writer
//!   lock. Reading first would make a replay one statement and a new key
//!   two; sqlx runs each SQLite statement on a worker thread, so the extra
//!   read is not free (measured on a loaded 2-core machine, debug build:
//!   a new key 335 µs with the upsert first, 410-430 µs with a read first;
//!   a replay 205 µs against 95-110 µs). The upsert stays first, so the
//!   first execution stays one statement.
//!
//! `complete` and `release` are one statement each; `purge` is one
//! statement per chunk (below). No statement compares a time the
//! application sent: every lease and retention is `database now ±
//! duration`. A pool's `test_before_acquire` (on by default in sqlx) adds
//! a ping per call; turn it off on pools that serve hot paths.
//!
//! # Identifiers compare byte for byte
//!
//! A scope (client and operation), a key and a fingerprint match a stored
//! record only when their bytes are equal, on every backend: no case
//! folding, no trailing-space padding, no accent folding. `("tenant-1",
//! "payments")` and `("tenant-1", "payments ")` are two scopes, `order-42`
//! and `ORDER-42` two keys.
//!
//! - **MySQL/MariaDB**: the identifier columns are `VARBINARY`. Text
//!   columns would not do: the default collations ignore case (`_ci`)
//!   and accents (`_ai`), and the binary ones that both MySQL 8 and
//!   MariaDB have (`utf8mb4_bin`, `ascii_bin`) still ignore trailing
//!   spaces (PAD SPACE).
//! - **PostgreSQL**: `VARCHAR` with the database's collation. Every
//!   collation a database can have by default is deterministic, so
//!   equality is byte equality even where sorting is linguistic.
//! - **SQLite**: `TEXT`, whose default collation (`BINARY`) compares bytes.
//!
//! idem does not normalize Unicode: a client id sent as a precomposed `é`
//! and as `e` followed by a combining accent is two clients. Normalize
//! identifiers before [`Scope::new`] if the same client can reach you in
//! both forms.
//!
//! # Upgrading from text identifier columns on MySQL/MariaDB
//!
//! Versions before this one created `idem_keys.scope`, `idem_key` and
//! `fingerprint` as text columns with binary collations, and `CREATE
//! TABLE IF NOT EXISTS` does not change an existing table. On such a
//! table [`SqlKeyStore::install`] (and [`crate::install`]) fails with
//! [`Error::OutdatedSchema`], which names the columns and the statement
//! to run once:
//!
//! ```sql
//! ALTER TABLE idem_keys
//!     MODIFY scope VARBINARY(512) NOT NULL,
//!     MODIFY idem_key VARBINARY(255) NOT NULL,
//!     MODIFY fingerprint VARBINARY(64) NOT NULL;
//! ```
//!
//! It keeps every record (their bytes are unchanged, and byte equality
//! is finer than the old collation, so no two rows collide). InnoDB
//! rebuilds the table for it, blocking writes while it runs: schedule it,
//! or purge first so the table is small. install refuses instead of
//! running it at start-up for that reason, and does not merely warn
//! because the old table lets one client replay another's response.
//! Projects that create the table from their own migrations add this
//! statement to them.
//!
//! # Growth, bound and reclaim
//!
//! `idem_keys` grows with client input: one row per `(scope, key)` claimed
//! within the retention, each holding the scope (≤ 512 bytes), the key
//! (≤ 255), the fingerprint (64) and the stored response (whose size the
//! service's handlers decide).
//!
//! - **Bound**: no row count. Unlike the in-memory store, the table never
//!   refuses a claim because it is full, so one client's keys never deny
//!   service to another; their cost is the database's (disk, cache,
//!   index depth), shared by every client. Bound a client's share in
//!   front of the store, with a per-client rate limit answered with 429.
//! - **Who pays when the database runs out of disk**: every client, as
//!   every write then fails; the layer answers 503 and runs nothing.
//!   Size the database for the peak claim rate × the retention.
//! - **Reclaim**: nothing expires by itself. A running record whose lease
//!   expired is taken over by the next claim of its key; otherwise
//!   [`purge`](idem_core::keys::KeyStore::purge) deletes it once its lease
//!   ended `retention` ago, and completed records `retention` after they
//!   completed. Run `purge` periodically (hourly, say; the example service
//!   does it at start and every hour).
//!
//! `purge` deletes in chunks of at most [`DEFAULT_PURGE_CHUNK`] rows
//! (see [`SqlKeyStore::with_purge_chunk`]), each chunk its own statement,
//! committed before the next, until a chunk comes back short: a backlog of
//! a million records never holds one giant lock or transaction. On
//! PostgreSQL a chunk is `DELETE ... WHERE (scope, idem_key) IN (SELECT
//! ... LIMIT n FOR UPDATE SKIP LOCKED)`, so concurrent purges take
//! different rows; on MySQL/MariaDB `DELETE ... LIMIT n` over the time's
//! index; on SQLite a keyed subselect with `LIMIT n` (one writer at a
//! time, released between chunks). Whatever the chunking, a purge never
//! deletes a record inside the retention (each chunk reads the
//! database's clock), and concurrent purges delete and count each record
//! once.

#[cfg(feature = "postgres")]
mod postgres;
mod sql;
mod store;

use std::num::NonZeroU32;
use std::time::Duration;

use futures::future::BoxFuture;
use idem_core::keys::{
    Claim, Completion, Fingerprint, IdempotencyKey, Lease, Scope, StoredResponse,
};
use idem_core::Dialect;

use crate::{Backend, Error, Protocol, RetryPolicy, DEFAULT_PURGE_CHUNK};

/// A backend the key store runs on: PostgreSQL, MySQL/MariaDB and SQLite.
/// Its methods are the store's statements on that backend; name it as the
/// bound of code generic over the database, as [`InboxBackend`](crate::inbox::InboxBackend)
/// is for the inbox.
///
/// ```
/// use idem_core::keys::KeyStore;
/// use idem_sqlx::keys::{KeyBackend, SqlKeyStore};
///
/// /// Opens the key store on any backend, its table installed.
/// async fn key_store<B: KeyBackend>(pool: sqlx::Pool<B>) -> Result<SqlKeyStore<B>, idem_sqlx::Error> {
///     let store = SqlKeyStore::new(pool);
///     store.install().await?;
///     Ok(store)
/// }
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let pool = sqlx::sqlite::SqlitePoolOptions::new().max_connections(1).connect("sqlite::memory:").await?;
/// let store = key_store(pool).await?;
/// assert_eq!(store.purge(idem_core::keys::DEFAULT_RETENTION).await?, 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
pub trait KeyBackend: Backend {
    /// Claims `(scope, key)` on `conn` (see [`KeyStore::claim`](idem_core::keys::KeyStore::claim)).
    /// `protocol`: how PostgreSQL gets the statements (ignored elsewhere).
    #[doc(hidden)]
    fn claim_on<'c>(
        conn: &'c mut Self::Connection,
        scope: &'c Scope,
        key: &'c IdempotencyKey,
        fingerprint: &'c Fingerprint,
        lease: Duration,
        protocol: Protocol,
    ) -> BoxFuture<'c, Result<Claim, Error>>;

    /// Stores the response of the run holding `lease`.
    #[doc(hidden)]
    fn complete_on<'c>(
        conn: &'c mut Self::Connection,
        lease: &'c Lease,
        response: &'c StoredResponse,
        protocol: Protocol,
    ) -> BoxFuture<'c, Result<Completion, Error>>;

    /// Deletes the running record of `lease`.
    #[doc(hidden)]
    fn release_on<'c>(
        conn: &'c mut Self::Connection,
        lease: &'c Lease,
        protocol: Protocol,
    ) -> BoxFuture<'c, Result<(), Error>>;

    /// Deletes at most `limit` records of the `stale` kind older than
    /// `retention` (one chunk of a purge) and returns how many it deleted.
    #[doc(hidden)]
    fn purge_chunk_on(
        conn: &mut Self::Connection,
        stale: Stale,
        retention: Duration,
        limit: i64,
        protocol: Protocol,
    ) -> BoxFuture<'_, Result<u64, Error>>;

    /// Fails with [`Error::OutdatedSchema`] when the installed table's
    /// identifier columns do not compare byte for byte.
    #[doc(hidden)]
    fn check_identifiers_on(conn: &mut Self::Connection) -> BoxFuture<'_, Result<(), Error>>;
}

/// Which old records one chunk of a purge deletes.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stale {
    /// Completed records whose completion is older than the retention.
    Completed,
    /// Running records whose lease ended longer ago than the retention.
    Abandoned,
}

/// The SQL that creates the `idem_keys` table and its indexes in one
/// dialect (`CREATE ... IF NOT EXISTS`, so it may run again). Copy it into
/// a migration, or let [`SqlKeyStore::install`] run it.
///
/// ```
/// let sql = idem_sqlx::keys::schema(idem_core::Dialect::Postgres);
/// assert!(sql.contains("PRIMARY KEY (scope, idem_key)"));
/// ```
pub const fn schema(dialect: Dialect) -> &'static str {
    sql::for_dialect(dialect).schema
}

/// The idempotency-key store on a sqlx pool of PostgreSQL, MySQL/MariaDB
/// or SQLite. Cheap to clone (it holds the pool).
///
/// It implements [`KeyStore`](idem_core::keys::KeyStore) (the leased mode)
/// and [`SqlKeyStore::run_once`] (the transactional mode). Scopes, keys and
/// fingerprints compare byte for byte on every backend.
///
/// Its table grows with client input and has no row bound: a full table
/// never refuses one client because of another's keys, the database's
/// disk is what they share, and [`purge`](idem_core::keys::KeyStore::purge)
/// (run it periodically) reclaims completed records after the retention
/// and abandoned ones after their lease plus the retention, in chunks
/// (see [the module docs](self#growth-bound-and-reclaim)).
#[derive(Debug)]
pub struct SqlKeyStore<B: sqlx::Database> {
    pool: sqlx::Pool<B>,
    retry: RetryPolicy,
    purge_chunk: NonZeroU32,
    /// `None`: the process-wide protocol.
    protocol: Option<Protocol>,
}

impl<B: sqlx::Database> Clone for SqlKeyStore<B> {
    fn clone(&self) -> Self {
        SqlKeyStore {
            pool: self.pool.clone(),
            retry: self.retry,
            purge_chunk: self.purge_chunk,
            protocol: self.protocol,
        }
    }
}

impl<B: sqlx::Database> SqlKeyStore<B> {
    /// A store on `pool`, retrying transient conflicts (deadlocks, lock
    /// timeouts, a busy SQLite) of every [`KeyStore`](idem_core::keys::KeyStore)
    /// call and of [`run_once`](SqlKeyStore::run_once) with the default
    /// [`RetryPolicy`].
    pub fn new(pool: sqlx::Pool<B>) -> Self {
        SqlKeyStore {
            pool,
            retry: RetryPolicy::default(),
            purge_chunk: DEFAULT_PURGE_CHUNK,
            protocol: None,
        }
    }

    /// Sets how the store's calls and the transactions of
    /// [`run_once`](SqlKeyStore::run_once) are retried on serialization
    /// failures, deadlocks and a busy database.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Sets how many records one statement of
    /// [`purge`](idem_core::keys::KeyStore::purge) deletes at most
    /// (default [`DEFAULT_PURGE_CHUNK`]): each chunk commits on its own, so
    /// a chunk bounds how long a purge holds its row locks (on SQLite, the
    /// write lock).
    pub fn with_purge_chunk(mut self, rows: NonZeroU32) -> Self {
        self.purge_chunk = rows;
        self
    }

    /// The pool.
    pub fn pool(&self) -> &sqlx::Pool<B> {
        &self.pool
    }

    /// How the store's statements go to PostgreSQL: its own
    /// [`with_protocol`](SqlKeyStore::with_protocol), else the
    /// process-wide setting.
    pub(crate) fn protocol(&self) -> Protocol {
        self.protocol.unwrap_or_else(crate::protocol::get)
    }
}

#[cfg(feature = "postgres")]
impl SqlKeyStore<sqlx::Postgres> {
    /// Sends this store's statements to PostgreSQL with `protocol`,
    /// whatever the process-wide
    /// [`set_protocol`](crate::postgres::set_protocol) says: a store whose
    /// pool goes through a pooler in transaction mode uses
    /// [`Protocol::Simple`] (see [`crate::postgres`]).
    ///
    /// ```
    /// use idem_sqlx::keys::SqlKeyStore;
    /// use idem_sqlx::postgres::Protocol;
    ///
    /// # fn store(pool: sqlx::PgPool) -> SqlKeyStore<sqlx::Postgres> {
    /// SqlKeyStore::new(pool).with_protocol(Protocol::Simple)
    /// # }
    /// ```
    pub fn with_protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = Some(protocol);
        self
    }
}

/// What [`SqlKeyStore::run_once`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Once {
    /// This call ran the work; its response committed with it.
    Ran(StoredResponse),
    /// An earlier call with the key committed: this is its response, and
    /// the work did not run.
    Replayed(StoredResponse),
}

impl Once {
    /// The response, whichever call produced it.
    pub fn response(&self) -> &StoredResponse {
        match self {
            Once::Ran(response) | Once::Replayed(response) => response,
        }
    }

    /// The response, whichever call produced it.
    pub fn into_response(self) -> StoredResponse {
        match self {
            Once::Ran(response) | Once::Replayed(response) => response,
        }
    }
}
