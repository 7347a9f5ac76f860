//! The deduplication inbox: a consumer's effects happen once per event,
//! however often the broker delivers it.
//!
//! [`Inbox::process`] runs, in ONE transaction idem owns: insert the marker
//! (consumer, event id, processed_at) into `idem_inbox`, then the handler.
//! The marker goes first, so a concurrent duplicate delivery blocks on the
//! marker's unique-index entry until the first commits (then it sees the
//! marker and returns [`Delivery::Duplicate`] without running the handler)
//! or rolls back (then it runs the handler itself). Only one delivery of an
//! event is ever inside the handler at a time. A handler error rolls back
//! the handler's writes and the marker, so the redelivery runs again.
//!
//! # A consumer loop
//!
//! Broker-agnostic: acknowledge a delivery only after `process` returned
//! `Ok` — the transaction has committed by then, whether this delivery ran
//! the handler or found it processed before. On an error nothing was
//! committed: reject the delivery (or let it time out) and the broker
//! redelivers it.
//!
//! ```
//! use async_trait::async_trait;
//! use idem_sqlx::inbox::{install, Delivery, EventId, Inbox, InboxHandler};
//! use idem_sqlx::{Backend, ErrorKind};
//! use sqlx::sqlite::{SqliteConnection, SqlitePoolOptions};
//! use sqlx::Sqlite;
//!
//! /// Records a payment. Its writes go through `conn`, in the transaction
//! /// that records the marker.
//! struct RecordPayment;
//!
//! #[async_trait]
//! impl InboxHandler<Sqlite> for RecordPayment {
//!     type Output = ();
//!     type Error = sqlx::Error;
//!
//!     async fn handle(&self, conn: &mut SqliteConnection, event: &EventId) -> Result<(), sqlx::Error> {
//!         sqlx::query("INSERT INTO payments (event_id) VALUES (?)")
//!             .bind(event.as_str())
//!             .execute(conn)
//!             .await?;
//!         Ok(())
//!     }
//!
//!     // A deadlock or busy database in the handler's own statements: let
//!     // idem roll back and run the transaction again.
//!     fn transient(&self, error: sqlx::Error) -> Result<sqlx::Error, sqlx::Error> {
//!         match Sqlite::error_kind(&error) {
//!             ErrorKind::Transient => Ok(error),
//!             _ => Err(error),
//!         }
//!     }
//! }
//!
//! /// Stands for a delivery of any broker (SQS, Kafka, RabbitMQ, NATS, ...).
//! struct BrokerDelivery {
//!     message_id: String,
//!     acked: bool,
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = SqlitePoolOptions::new().max_connections(1).connect("sqlite::memory:").await?;
//! sqlx::query("CREATE TABLE payments (event_id TEXT NOT NULL)").execute(&pool).await?;
//! install(&pool).await?; // or run `schema(Dialect::Sqlite)` in your migrations
//!
//! let inbox = Inbox::new(pool.clone(), "payments")?;
//! // The broker delivered evt-1 twice (a lost acknowledgement).
//! let deliveries = ["evt-1", "evt-2", "evt-1"].map(|id| BrokerDelivery {
//!     message_id: id.to_owned(),
//!     acked: false,
//! });
//!
//! for mut delivery in deliveries {
//!     let event = EventId::new(delivery.message_id.as_str())?;
//!     match inbox.process(&event, &RecordPayment).await {
//!         // Committed (or processed before): acknowledge.
//!         Ok(Delivery::Processed(())) | Ok(Delivery::Duplicate) => delivery.acked = true,
//!         // Rolled back, no marker: do not acknowledge; the broker
//!         // redelivers and the handler runs again.
//!         Err(error) => eprintln!("{event}: {error}"),
//!     }
//!     assert!(delivery.acked);
//! }
//!
//! let payments: i64 = sqlx::query_scalar("SELECT count(*) FROM payments").fetch_one(&pool).await?;
//! assert_eq!(payments, 2);
//! # Ok(())
//! # }
//! ```
//!
//! # The dedup window
//!
//! Markers are kept for a window (24 hours unless set with
//! [`Inbox::with_window`]); [`Inbox::purge`] deletes older ones by the
//! database's clock. A redelivery after its marker was purged runs the
//! handler again, so **the window must exceed the longest delay after
//! which the broker can redeliver an event** — its maximum redelivery or
//! retry delay, message retention for replays, dead-letter re-drives —
//! with a margin. Run `purge` periodically (e.g. hourly); concurrent purges
//! are safe and never touch markers inside the window.
//!
//! # Growth, bound and reclaim
//!
//! `idem_inbox` grows with what producers publish: one row (consumer ≤ 255
//! bytes, event id ≤ 255 bytes, a time) per event processed within the
//! window, per consumer.
//!
//! - **Bound**: no row count. A full table never makes the inbox refuse
//!   or skip an event (that would process it twice or never): the bound
//!   is the event rate × the window, and the database's disk is what
//!   every consumer shares. When the disk is full every delivery fails
//!   and rolls back, unacknowledged, so the broker redelivers it once
//!   there is room again; nothing is lost or run twice.
//! - **Reclaim**: nothing expires by itself. [`Inbox::purge`] deletes one
//!   consumer's markers older than its window, in chunks of at most
//!   [`DEFAULT_PURGE_CHUNK`] rows (see [`Inbox::with_purge_chunk`]), each
//!   chunk its own short transaction,
//!   until a chunk comes back short: a backlog of a million markers never
//!   holds one giant lock, and deliveries go on between chunks. On
//!   PostgreSQL a chunk is a keyed subselect `LIMIT n FOR UPDATE SKIP
//!   LOCKED` (concurrent purges take different rows), on MySQL/MariaDB
//!   `DELETE ... LIMIT n` over the `(consumer, processed_at)` index, on
//!   SQLite a keyed subselect with `LIMIT n`.
//!
//! # Cost
//!
//! A delivery costs `BEGIN`, one `INSERT` of the marker, the handler's own
//! statements and `COMMIT`; a duplicate costs `BEGIN`, the `INSERT` that
//! finds the marker, and `COMMIT`. No `SELECT` comes first. (A sqlx pool
//! also pings each connection it hands out unless it is built with
//! `test_before_acquire(false)`.)
//!
//! # Backends
//!
//! The table is keyed by `PRIMARY KEY (consumer, event_id)`; consumer
//! names and event ids compare byte for byte on every backend: `evt-1`,
//! `EVT-1`, `evt-1 ` and `évt-1` are four events (`VARBINARY` on MySQL,
//! whose text collations ignore case, accents or trailing spaces; `TEXT`
//! with the deterministic default collation on PostgreSQL and `BINARY` on
//! SQLite). Unicode is not normalized: a precomposed `é` and `e` with a
//! combining accent are two ids. [`install`] on MySQL/MariaDB fails with
//! [`Error::OutdatedSchema`] on an `idem_inbox` whose columns are text
//! (one created by hand), naming the `ALTER TABLE` that fixes it. The
//! marker is written with
//! `INSERT ... ON CONFLICT DO NOTHING` on PostgreSQL (a duplicate never
//! aborts the transaction), `INSERT IGNORE` on MySQL/MariaDB (event ids
//! and consumer names are validated to fit the columns, so IGNORE never
//! truncates) and `INSERT ... ON CONFLICT DO NOTHING` after
//! `BEGIN IMMEDIATE` on SQLite (configure a busy timeout on the pool:
//! concurrent deliveries wait for the write lock). Serialization failures,
//! deadlocks and busy errors are retried with the inbox's [`RetryPolicy`];
//! the handler takes `&self` so it can run again after such a rollback.

use std::convert::Infallible;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;
use idem_core::inbox::validate_consumer;
use idem_core::Dialect;
use sqlx::Pool;

pub use idem_core::inbox::{Delivery, EventId, DEFAULT_WINDOW};

#[cfg(feature = "postgres")]
use crate::postgres::literal::Param;
#[cfg(feature = "postgres")]
use crate::postgres::statement::{fetch, get};
use crate::purge::in_chunks;
use crate::retry::{run_attempts, Attempt, Failure};
use crate::schema::install_scripts;
use crate::{Backend, Error, HandlerError, Protocol, RetryPolicy, DEFAULT_PURGE_CHUNK};

/// The name of idem's inbox table.
pub const TABLE: &str = "idem_inbox";

/// Windows longer than this are treated as this long (no marker can be
/// older, and every backend can subtract it from the current time).
const MAX_WINDOW: Duration = Duration::from_secs(100 * 366 * 24 * 60 * 60);

/// An event consumer's work, run by [`Inbox::process`] in the transaction
/// that records the event's marker: both commit or neither does.
///
/// It takes `&self` because idem runs the whole transaction again after a
/// serialization failure, deadlock or busy database: the writes of the
/// failed attempt were rolled back with it, so running it again is safe as
/// long as its effects are writes through `conn`. (Calls to the outside
/// world belong in an outbox row written here.)
#[async_trait]
pub trait InboxHandler<B: Backend>: Send + Sync {
    /// What the handler returns, as [`Delivery::Processed`].
    type Output: Send;
    /// The handler's own error, returned as [`HandlerError::Handler`].
    type Error: Send;

    /// Processes the event, writing through `conn` (inside the transaction).
    async fn handle(
        &self,
        conn: &mut B::Connection,
        event_id: &EventId,
    ) -> Result<Self::Output, Self::Error>;

    /// Hands back the database error inside `error` when it is a transient
    /// conflict (serialization failure, deadlock, busy database) hit by the
    /// handler's own statements, so that idem rolls back and runs the whole
    /// transaction again, as it does for its own statements. Every other
    /// error goes back unchanged and ends the delivery as
    /// [`HandlerError::Handler`].
    ///
    /// The default treats every handler error as final; the
    /// [module example](self) shows a handler opting in with
    /// [`Backend::error_kind`]. A handler whose error is idem's own (it
    /// calls [`insert_once`](crate::insert_once) or
    /// [`apply_with_on`](crate::TransitionExt::apply_with_on)) hands back
    /// their [`Error::Retryable`] with [`Error::into_transient`] or
    /// [`HandlerError::into_transient`]: a deadlock there then runs the
    /// delivery again, even when the database had ended the inbox's
    /// transaction under idem's savepoint (InnoDB's deadlock victims).
    fn transient(&self, error: Self::Error) -> Result<sqlx::Error, Self::Error> {
        Err(error)
    }
}

/// A backend the inbox runs on: PostgreSQL, MySQL/MariaDB and SQLite. Its
/// methods are idem's statements on that backend.
pub trait InboxBackend: Backend {
    /// Inserts the marker unless it exists; `true` when this call inserted
    /// it. Blocks while another transaction holds an uncommitted marker for
    /// the same (consumer, event id). `protocol`: how PostgreSQL gets the
    /// statement (ignored elsewhere).
    #[doc(hidden)]
    fn insert_marker<'c>(
        conn: &'c mut Self::Connection,
        consumer: &'c str,
        event_id: &'c str,
        protocol: Protocol,
    ) -> BoxFuture<'c, Result<bool, Error>>;

    /// Deletes at most `limit` of the consumer's markers older than
    /// `window` by the database clock (one chunk of a purge) and returns
    /// how many it deleted.
    #[doc(hidden)]
    fn delete_markers<'c>(
        conn: &'c mut Self::Connection,
        consumer: &'c str,
        window: Duration,
        limit: i64,
        protocol: Protocol,
    ) -> BoxFuture<'c, Result<u64, Error>>;

    /// Fails with [`Error::OutdatedSchema`] when the installed table's
    /// consumer or event id column does not compare byte for byte.
    #[doc(hidden)]
    fn check_identifiers(conn: &mut Self::Connection) -> BoxFuture<'_, Result<(), Error>>;
}

/// The deduplication inbox of one named consumer on a database.
///
/// Cheap to clone (the pool is reference-counted). Consumers are isolated:
/// the same event id is processed once by each consumer name. Names and
/// ids compare byte for byte on every backend.
///
/// Its table grows with the events processed and has no row bound (a full
/// inbox must neither skip nor repeat an event); [`Inbox::purge`], run
/// periodically, reclaims markers older than the window in chunks (see
/// [the module docs](self#growth-bound-and-reclaim)).
#[derive(Debug)]
pub struct Inbox<B: Backend> {
    pool: Pool<B>,
    consumer: Arc<str>,
    window: Duration,
    retry: RetryPolicy,
    purge_chunk: NonZeroU32,
    /// `None`: the process-wide protocol.
    protocol: Option<Protocol>,
}

impl<B: Backend> Clone for Inbox<B> {
    fn clone(&self) -> Self {
        Inbox {
            pool: self.pool.clone(),
            consumer: Arc::clone(&self.consumer),
            window: self.window,
            retry: self.retry,
            purge_chunk: self.purge_chunk,
            protocol: self.protocol,
        }
    }
}

impl<B: InboxBackend> Inbox<B> {
    /// The inbox of consumer `consumer` (name it for the service and the
    /// subscription, e.g. `"billing"`), keeping markers for
    /// [`DEFAULT_WINDOW`] and retrying transient conflicts with the default
    /// [`RetryPolicy`]. The table must exist ([`install`]).
    ///
    /// [`idem_core::Error::InvalidConsumer`] for an empty name, one longer
    /// than 255 bytes or with control characters.
    pub fn new(pool: Pool<B>, consumer: &str) -> Result<Self, Error> {
        validate_consumer(consumer)?;
        Ok(Inbox {
            pool,
            consumer: consumer.into(),
            window: DEFAULT_WINDOW,
            retry: RetryPolicy::default(),
            purge_chunk: DEFAULT_PURGE_CHUNK,
            protocol: None,
        })
    }

    /// Keeps markers for `window`: it must exceed the longest delay after
    /// which the broker can redeliver an event.
    pub fn with_window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// Retries transient conflicts (serialization failure, deadlock, busy
    /// database) with `policy`.
    pub fn with_retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Sets how many markers one transaction of [`Inbox::purge`] deletes
    /// at most (default [`DEFAULT_PURGE_CHUNK`]): each chunk commits on its
    /// own, so a chunk bounds how long a purge holds its locks (on SQLite,
    /// the write lock).
    pub fn with_purge_chunk(mut self, rows: NonZeroU32) -> Self {
        self.purge_chunk = rows;
        self
    }

    /// The consumer's name.
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// How long markers are kept.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// The pool.
    pub fn pool(&self) -> &Pool<B> {
        &self.pool
    }

    /// How the inbox's statements go to PostgreSQL: its own override,
    /// else the process-wide setting.
    fn protocol(&self) -> Protocol {
        self.protocol.unwrap_or_else(crate::protocol::get)
    }

    /// Processes one delivery of `event_id`: in one transaction, records the
    /// marker and runs `handler`, then commits.
    ///
    /// - [`Delivery::Processed`] with the handler's value: this delivery
    ///   ran it; its writes and the marker committed together.
    /// - [`Delivery::Duplicate`]: this consumer processed the event before
    ///   (and its marker is inside the window); the handler did not run.
    ///   A duplicate delivered while the first is still in its handler
    ///   waits for the first's transaction to end.
    /// - [`HandlerError::Handler`]: the handler failed; its writes and the
    ///   marker were rolled back, so a redelivery runs it again.
    /// - [`HandlerError::Idem`]: a database error, or
    ///   [`Error::RetriesExhausted`] after transient conflicts (in idem's
    ///   statements, or in the handler's when
    ///   [`InboxHandler::transient`] hands them back); each attempt was
    ///   rolled back, marker and handler writes alike.
    pub async fn process<H>(
        &self,
        event_id: &EventId,
        handler: &H,
    ) -> Result<Delivery<H::Output>, HandlerError<H::Error>>
    where
        H: InboxHandler<B>,
    {
        let attempt = Process {
            consumer: &self.consumer,
            event_id,
            handler,
            protocol: self.protocol(),
        };
        run_attempts(&self.pool, &self.retry, attempt).await
    }

    /// Deletes this consumer's markers older than the window, by the
    /// database's clock, and returns how many it deleted. Markers inside
    /// the window and other consumers' markers are kept. Safe to run from
    /// several processes at once: each old marker is counted by one.
    ///
    /// It deletes in chunks of at most the purge chunk
    /// ([`Inbox::with_purge_chunk`]), each in a transaction of its own
    /// (retried on transient conflicts with the inbox's retry policy), so
    /// deliveries go on between chunks. On an error, the chunks before it
    /// stay deleted.
    pub async fn purge(&self) -> Result<u64, Error> {
        in_chunks(self.purge_chunk, |limit| {
            let attempt = Purge {
                consumer: &self.consumer,
                window: self.window.min(MAX_WINDOW),
                limit,
                protocol: self.protocol(),
            };
            async move {
                run_attempts(&self.pool, &self.retry, attempt)
                    .await
                    .map_err(|e: HandlerError<Infallible>| match e {
                        HandlerError::Idem(e) => e,
                        HandlerError::Handler(never) => match never {},
                    })
            }
        })
        .await
    }
}

#[cfg(feature = "postgres")]
impl Inbox<sqlx::Postgres> {
    /// Sends this inbox's statements (markers and purges) to PostgreSQL
    /// with `protocol`, whatever the process-wide
    /// [`set_protocol`](crate::postgres::set_protocol) says: an inbox whose
    /// pool goes through a pooler in transaction mode uses
    /// [`Protocol::Simple`] (see [`crate::postgres`]). The handler's own
    /// statements are the handler's: behind such a pooler, send them
    /// unnamed (`.persistent(false)`), as they run inside the inbox's
    /// transaction.
    pub fn with_protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = Some(protocol);
        self
    }
}

/// One attempt of [`Inbox::process`]: the marker first, then the handler.
struct Process<'a, H> {
    consumer: &'a str,
    event_id: &'a EventId,
    handler: &'a H,
    protocol: Protocol,
}

impl<B: InboxBackend, H: InboxHandler<B>> Attempt<B, Delivery<H::Output>, H::Error>
    for Process<'_, H>
{
    fn run<'t>(
        &'t mut self,
        tx: &'t mut B::Connection,
    ) -> BoxFuture<'t, Result<Delivery<H::Output>, Failure<H::Error>>> {
        Box::pin(async move {
            let marker = B::insert_marker(tx, self.consumer, self.event_id.as_str(), self.protocol);
            if !marker.await? {
                return Ok(Delivery::Duplicate);
            }
            match self.handler.handle(tx, self.event_id).await {
                Ok(output) => Ok(Delivery::Processed(output)),
                Err(error) => Err(match self.handler.transient(error) {
                    Ok(conflict) => Failure::Db(conflict),
                    Err(error) => Failure::Handler(error),
                }),
            }
        })
    }
}

/// One attempt of one chunk of [`Inbox::purge`].
struct Purge<'a> {
    consumer: &'a str,
    window: Duration,
    limit: i64,
    protocol: Protocol,
}

impl<B: InboxBackend> Attempt<B, u64, Infallible> for Purge<'_> {
    fn run<'t>(
        &'t mut self,
        tx: &'t mut B::Connection,
    ) -> BoxFuture<'t, Result<u64, Failure<Infallible>>> {
        Box::pin(async move {
            let chunk =
                B::delete_markers(tx, self.consumer, self.window, self.limit, self.protocol);
            Ok(chunk.await?)
        })
    }
}

/// Creates the `idem_inbox` table and its index unless they exist.
/// Idempotent, and safe to run from processes starting together (one
/// transaction, behind an advisory lock on PostgreSQL; see
/// [`install_sql`](crate::install_sql)); [`crate::install`] installs the
/// key store's table too. Users who manage migrations themselves run
/// [`schema`] instead.
///
/// On MySQL/MariaDB it then checks that `consumer` and `event_id` are
/// `VARBINARY` and fails with [`Error::OutdatedSchema`], naming the
/// `ALTER TABLE` to run, when an existing table keeps them as text.
pub async fn install<B: InboxBackend>(pool: &Pool<B>) -> Result<(), Error> {
    install_scripts(pool, &[schema(B::DIALECT)]).await?;
    check_identifiers(pool).await
}

/// [`InboxBackend::check_identifiers`] on a connection of `pool`.
pub(crate) async fn check_identifiers<B: InboxBackend>(pool: &Pool<B>) -> Result<(), Error> {
    let mut conn = pool.acquire().await.map_err(Error::Database)?;
    B::check_identifiers(&mut conn).await
}

/// The SQL that creates the inbox table and its index on `dialect`, for
/// users who keep their own migrations. Every statement is idempotent
/// (`IF NOT EXISTS`).
pub const fn schema(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::Postgres => POSTGRES_SCHEMA,
        Dialect::MySql => MYSQL_SCHEMA,
        Dialect::Sqlite => SQLITE_SCHEMA,
    }
}

const POSTGRES_SCHEMA: &str = "\
CREATE TABLE IF NOT EXISTS idem_inbox (
    consumer     VARCHAR(255) NOT NULL,
    event_id     VARCHAR(255) NOT NULL,
    processed_at TIMESTAMPTZ  NOT NULL,
    PRIMARY KEY (consumer, event_id)
);
CREATE INDEX IF NOT EXISTS idem_inbox_processed_at ON idem_inbox (consumer, processed_at);
";

// VARBINARY: MySQL's text collations would make `A`/`a`, `a`/`a ` or `e`/`é`
// the same event. DATETIME in UTC (written with UTC_TIMESTAMP) has no 2038
// limit. Keep in step with MYSQL_IDENTIFIERS.
const MYSQL_SCHEMA: &str = "\
CREATE TABLE IF NOT EXISTS idem_inbox (
    consumer     VARBINARY(255) NOT NULL,
    event_id     VARBINARY(255) NOT NULL,
    processed_at DATETIME(6)    NOT NULL,
    PRIMARY KEY (consumer, event_id),
    KEY idem_inbox_processed_at (consumer, processed_at)
) ENGINE = InnoDB;
";

/// The identifier columns of `idem_inbox` on MySQL, as [`MYSQL_SCHEMA`]
/// creates them.
#[cfg(feature = "mysql")]
const MYSQL_IDENTIFIERS: crate::upgrade::Identifiers = crate::upgrade::Identifiers {
    table: TABLE,
    columns: &[
        ("consumer", "VARBINARY(255) NOT NULL"),
        ("event_id", "VARBINARY(255) NOT NULL"),
    ],
};

// processed_at: UTC text 'YYYY-MM-DD HH:MM:SS.SSS', which sorts in time order.
const SQLITE_SCHEMA: &str = "\
CREATE TABLE IF NOT EXISTS idem_inbox (
    consumer     TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    processed_at TEXT NOT NULL,
    PRIMARY KEY (consumer, event_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idem_inbox_processed_at ON idem_inbox (consumer, processed_at);
";

/// The window in whole microseconds, for the backends that subtract an
/// interval.
#[cfg(any(feature = "postgres", feature = "mysql"))]
fn micros(window: Duration) -> i64 {
    i64::try_from(window.as_micros()).unwrap_or(i64::MAX)
}

/// The tags of PostgreSQL's marker insert and purge chunk (see
/// `crate::postgres`), as the statements return them.
#[cfg(feature = "postgres")]
macro_rules! pg_tag {
    (marker) => {
        "idem:inbox:marker"
    };
    (purge) => {
        "idem:inbox:purge"
    };
}

// Each statement answers with one row: its tag and how many markers it
// changed.
#[cfg(feature = "postgres")]
impl InboxBackend for sqlx::Postgres {
    fn insert_marker<'c>(
        conn: &'c mut sqlx::PgConnection,
        consumer: &'c str,
        event_id: &'c str,
        protocol: Protocol,
    ) -> BoxFuture<'c, Result<bool, Error>> {
        Box::pin(async move {
            let params = [
                Param::Text(consumer, "the consumer"),
                Param::Text(event_id, "the event id"),
            ];
            let rows = fetch(
                conn,
                protocol,
                concat!(
                    "WITH inserted AS (INSERT INTO idem_inbox (consumer, event_id, processed_at) \
                     VALUES ($1, $2, now()) ON CONFLICT (consumer, event_id) DO NOTHING RETURNING 1) \
                     SELECT '",
                    pg_tag!(marker),
                    "' AS tag, count(*) FROM inserted"
                ),
                pg_tag!(marker),
                &params,
            )
            .await?;
            let inserted: i64 = get(&rows[0], 1)?;
            Ok(inserted == 1)
        })
    }

    // The condition is repeated on the DELETE so that a row changed after
    // the snapshot is re-checked on its new version; SKIP LOCKED lets
    // concurrent purges take different rows.
    fn delete_markers<'c>(
        conn: &'c mut sqlx::PgConnection,
        consumer: &'c str,
        window: Duration,
        limit: i64,
        protocol: Protocol,
    ) -> BoxFuture<'c, Result<u64, Error>> {
        Box::pin(async move {
            let params = [
                Param::Text(consumer, "the consumer"),
                Param::Int8(micros(window)),
                Param::Int8(limit),
            ];
            let rows = fetch(
                conn,
                protocol,
                concat!(
                    "WITH deleted AS (DELETE FROM idem_inbox WHERE (consumer, event_id) IN (\
                 SELECT consumer, event_id FROM idem_inbox WHERE consumer = $1 \
                 AND processed_at < now() - $2 * INTERVAL '1 microsecond' \
                 LIMIT $3 FOR UPDATE SKIP LOCKED) \
                 AND consumer = $1 AND processed_at < now() - $2 * INTERVAL '1 microsecond' \
                 RETURNING 1) SELECT '",
                    pg_tag!(purge),
                    "' AS tag, count(*) FROM deleted"
                ),
                pg_tag!(purge),
                &params,
            )
            .await?;
            let deleted: i64 = get(&rows[0], 1)?;
            Ok(u64::try_from(deleted).unwrap_or_default())
        })
    }

    fn check_identifiers(_: &mut sqlx::PgConnection) -> BoxFuture<'_, Result<(), Error>> {
        // Deterministic collations: equality is byte equality.
        Box::pin(async { Ok(()) })
    }
}

#[cfg(feature = "mysql")]
impl InboxBackend for sqlx::MySql {
    fn insert_marker<'c>(
        conn: &'c mut sqlx::MySqlConnection,
        consumer: &'c str,
        event_id: &'c str,
        _: Protocol,
    ) -> BoxFuture<'c, Result<bool, Error>> {
        Box::pin(async move {
            let done = sqlx::query(
                "INSERT IGNORE INTO idem_inbox (consumer, event_id, processed_at) \
                 VALUES (?, ?, UTC_TIMESTAMP(6))",
            )
            .bind(consumer)
            .bind(event_id)
            .execute(conn)
            .await
            .map_err(crate::backend::db_error::<sqlx::MySql>)?;
            Ok(done.rows_affected() == 1)
        })
    }

    fn delete_markers<'c>(
        conn: &'c mut sqlx::MySqlConnection,
        consumer: &'c str,
        window: Duration,
        limit: i64,
        _: Protocol,
    ) -> BoxFuture<'c, Result<u64, Error>> {
        Box::pin(async move {
            let done = sqlx::query(
                "DELETE FROM idem_inbox WHERE consumer = ? \
                 AND processed_at < UTC_TIMESTAMP(6) - INTERVAL ? MICROSECOND LIMIT ?",
            )
            .bind(consumer)
            .bind(micros(window))
            .bind(limit)
            .execute(conn)
            .await
            .map_err(crate::backend::db_error::<sqlx::MySql>)?;
            Ok(done.rows_affected())
        })
    }

    fn check_identifiers(conn: &mut sqlx::MySqlConnection) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            let outdated: Vec<(String, String)> =
                sqlx::query_as(crate::upgrade::MYSQL_NOT_VARBINARY)
                    .bind(MYSQL_IDENTIFIERS.table)
                    .bind(MYSQL_IDENTIFIERS.names())
                    .fetch_all(conn)
                    .await
                    .map_err(crate::backend::db_error::<sqlx::MySql>)?;
            MYSQL_IDENTIFIERS.check(&outdated)
        })
    }
}

#[cfg(feature = "sqlite")]
impl InboxBackend for sqlx::Sqlite {
    fn insert_marker<'c>(
        conn: &'c mut sqlx::SqliteConnection,
        consumer: &'c str,
        event_id: &'c str,
        _: Protocol,
    ) -> BoxFuture<'c, Result<bool, Error>> {
        Box::pin(async move {
            let done = sqlx::query(
                "INSERT INTO idem_inbox (consumer, event_id, processed_at) \
                 VALUES (?1, ?2, strftime('%Y-%m-%d %H:%M:%f', 'now')) \
                 ON CONFLICT (consumer, event_id) DO NOTHING",
            )
            .bind(consumer)
            .bind(event_id)
            .execute(conn)
            .await
            .map_err(crate::backend::db_error::<sqlx::Sqlite>)?;
            Ok(done.rows_affected() == 1)
        })
    }

    fn delete_markers<'c>(
        conn: &'c mut sqlx::SqliteConnection,
        consumer: &'c str,
        window: Duration,
        limit: i64,
        _: Protocol,
    ) -> BoxFuture<'c, Result<u64, Error>> {
        // A date modifier such as '-86400.000000 seconds'.
        let modifier = format!(
            "-{}.{:06} seconds",
            window.as_secs(),
            window.subsec_micros()
        );
        Box::pin(async move {
            let done = sqlx::query(
                "DELETE FROM idem_inbox WHERE (consumer, event_id) IN (\
                 SELECT consumer, event_id FROM idem_inbox WHERE consumer = ?1 \
                 AND processed_at < strftime('%Y-%m-%d %H:%M:%f', 'now', ?2) LIMIT ?3)",
            )
            .bind(consumer)
            .bind(modifier)
            .bind(limit)
            .execute(conn)
            .await
            .map_err(crate::backend::db_error::<sqlx::Sqlite>)?;
            Ok(done.rows_affected())
        })
    }

    fn check_identifiers(_: &mut sqlx::SqliteConnection) -> BoxFuture<'_, Result<(), Error>> {
        // TEXT compares with the BINARY collation: bytes.
        Box::pin(async { Ok(()) })
    }
}
