//! idem on PostgreSQL, MySQL/MariaDB and SQLite via sqlx: guarded state
//! transitions, handlers that run only when a row moved, and history.
//!
//! ```
//! use idem_core::Outcome;
//! use idem_derive::StateMachine;
//! use idem_sqlx::TransitionExt;
//! use sqlx::sqlite::SqlitePoolOptions;
//!
//! #[derive(StateMachine, Clone, Copy, Debug, PartialEq, Eq, Hash)]
//! #[state_machine(table = "invoices", column = "status", key = "id")]
//! #[state_machine(transitions(
//!     issue: Draft -> Issued,
//!     pay: Issued -> Paid,
//!     void: Draft | Issued -> Void,
//! ))]
//! enum InvoiceStatus {
//!     #[state_machine(initial)]
//!     Draft,
//!     Issued,
//!     Paid,
//!     Void,
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // One connection: every connection to `sqlite::memory:` is its own database.
//! let pool = SqlitePoolOptions::new().max_connections(1).connect("sqlite::memory:").await?;
//! sqlx::query("CREATE TABLE invoices (id INTEGER PRIMARY KEY, status TEXT NOT NULL)")
//!     .execute(&pool)
//!     .await?;
//! sqlx::query("INSERT INTO invoices (id, status) VALUES (1, 'issued')")
//!     .execute(&pool)
//!     .await?;
//!
//! // UPDATE "invoices" SET "status" = 'paid' WHERE "id" = ? AND "status" IN ('issued')
//! match InvoiceStatus::pay().apply(&pool, 1i64).await? {
//!     Outcome::Applied { from, to } => println!("charged: {from} -> {to}"),
//!     Outcome::AlreadyApplied { .. } => println!("a retry: nothing to do"),
//!     Outcome::Rejected { current } => println!("cannot pay a {current} invoice"),
//!     Outcome::NotFound => println!("no such invoice"),
//! }
//!
//! // The retry is a no-op, and says so.
//! let again = InvoiceStatus::pay().apply(&pool, 1i64).await?;
//! assert_eq!(again, Outcome::AlreadyApplied { state: InvoiceStatus::Paid });
//! assert_eq!(
//!     InvoiceStatus::void().apply(&pool, 1i64).await?,
//!     Outcome::Rejected { current: InvoiceStatus::Paid },
//! );
//! # Ok(())
//! # }
//! ```
//!
//! [`TransitionExt`] applies a transition with any sqlx executor (a pool,
//! a connection, an open transaction); [`TransitionExt::apply_with`] runs
//! a [`TransitionHandler`] in the same transaction, only when the row
//! moved, retrying serialization failures and deadlocks; [`history`]
//! creates the optional history table. How many statements each call
//! sends per backend is in [`TransitionExt`]'s documentation.
//! [`install`] creates idem's own tables (keys and inbox) on any backend,
//! and [`install_sql`] the application's, safely when processes start
//! together.
//!
//! # Keys are compared exactly
//!
//! A key finds the row that holds exactly that key, or none, on every
//! backend, whatever the key column's type and collation (see [`Key`]):
//!
//! - **MySQL/MariaDB and SQLite** select the row by `key = ?` (which keeps
//!   the index) and by the exact bytes of both text forms. A string that
//!   merely converts to a number (`"7abc"`, `"07"`, `" 7"`, `"7.0"` against
//!   an integer 7: MySQL converts with a warning, SQLite's INTEGER affinity
//!   silently), an integer against a text column holding `'07'`, a UUID's
//!   16 bytes against an integer, or a value a collation calls equal
//!   (`acme` against `ACME` under `utf8mb4_general_ci`, `acme ` against
//!   `acme` under the PAD SPACE `utf8mb4_bin`, `ácme` against `acme`):
//!   [`Outcome::NotFound`](idem_core::Outcome::NotFound), nothing moved.
//!   The integer 7 finds the text `'7'`, the string `"7"` the integer 7:
//!   their text forms are the same bytes. MySQL compares a text column in
//!   utf8mb4 (a `latin1` column's `ácme` is found by the key `ácme`), and
//!   a UUID column as its bytes.
//!   SQLite compares bytes under any collation of the column (`NOCASE`,
//!   `RTRIM`).
//! - **PostgreSQL** compares the column with the key cast to its family's
//!   type; a family it cannot compare with the column (a `&str` key on a
//!   `BIGINT` column) is [`Error::KeyType`], never a conversion. A text
//!   key is also compared byte for byte (`COLLATE "C"`), as a column with
//!   a nondeterministic collation (an ICU one ignoring case) would find
//!   `ACME` for `acme`. Every
//!   integer width binds as `int8` and shares one statement; text and UUID
//!   keys have statements of their own, so sqlx's statement cache (by SQL
//!   text, with the parameter types of the first call) never sends a key
//!   to a statement prepared for another type.
//!
//! idem's own identifiers (scopes, keys and fingerprints in [`keys`],
//! consumers and event ids in [`inbox`], `entity_key` in [`history`])
//! compare byte for byte too; on MySQL the history table's `entity_key`
//! is `VARBINARY(1020)`: read it as bytes or with `CAST(entity_key AS
//! CHAR)`.
//!
//! # Deployments
//!
//! Directly, or behind a pooler in session mode, on every backend. On
//! PostgreSQL behind a pooler in **transaction mode** (PgBouncer's
//! `pool_mode = transaction`, the transaction poolers of hosted
//! PostgreSQL), call `idem_sqlx::postgres::set_protocol(`[`Protocol::Simple`]`)`
//! at start-up: idem then sends its statements with the simple query
//! protocol, each self-contained, where its default named prepared
//! statements would run on server connections where their names mean
//! other statements. The `idem_sqlx::postgres` module (feature
//! `postgres`) has the table of supported deployments, what your own
//! statements need, and what the prepared mode does behind such a pooler
//! (it refuses every answer it can tell is another statement's:
//! [`Error::Misrouted`]).
//!
//! # Cancellation
//!
//! A call idem makes on a connection it takes from your pool is safe to
//! drop at any `.await` (a timeout, a `select!`, a client that hangs up):
//! [`TransitionExt::apply_with`], [`TransitionExt::apply_many`] on MySQL
//! and SQLite, [`Inbox::process`](inbox::Inbox::process),
//! [`SqlKeyStore::run_once`](keys::SqlKeyStore::run_once) and the installs.
//! Its transaction is rolled back, and when it is dropped before it ends
//! the connection is closed instead of going back to the pool, because
//! sqlx 0.8.6 cannot hand such a connection back in a usable state: a
//! `BEGIN` in flight leaves the session inside a transaction sqlx does not
//! count, so the pool's next user writes inside it and never commits
//! (transact-rs/sqlx#4385, #4393, on every backend), and a MySQL statement
//! dropped while it is being prepared leaves the connection out of step
//! with the server. The cost is one new connection per dropped call.
//!
//! Calls on a connection you lend idem (an open transaction, `&mut` a
//! connection, [`TransitionExt::apply_with_in`] and
//! [`TransitionExt::apply_with_on`], [`insert_once`] on either) use that
//! connection as sqlx leaves it, and so does [`TransitionExt::apply`] on a
//! pool when it opens a transaction of its own (a history table on MySQL
//! or SQLite): dropping one of those at an `.await` has the sqlx faults
//! above. Drop a connection whose call you dropped rather than reuse it
//! (`PoolConnection::close_on_drop`), or let such calls finish.

mod backend;
#[cfg(any(feature = "mysql", feature = "sqlite"))]
mod batch;
mod error;
mod handler;
pub mod history;
pub mod inbox;
mod insert;
mod key;
pub mod keys;
#[cfg(feature = "mysql")]
mod mysql;
#[cfg(feature = "postgres")]
pub mod postgres;
mod protocol;
mod purge;
mod retry;
mod savepoint;
mod schema;
#[cfg(feature = "sqlite")]
mod sqlite;
mod transition;
mod upgrade;

pub use backend::{Backend, ErrorKind};
pub use error::{Error, HandlerError};
pub use handler::TransitionHandler;
pub use idem_core::KeyFamily;
pub use insert::{insert_once, BusinessKey, Insert, InsertBackend, ViolatedKey};
pub use key::{Key, KeyValue};
pub use protocol::Protocol;
pub use purge::DEFAULT_PURGE_CHUNK;
pub use retry::{RetryPolicy, RETRY_TARGET};
pub use schema::{install, install_sql};
pub use transition::TransitionExt;
