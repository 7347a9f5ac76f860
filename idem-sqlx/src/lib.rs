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
//! # Text key columns on MySQL/MariaDB
//!
//! idem compares its own identifiers byte for byte on every backend
//! (scopes, keys and fingerprints in [`keys`], consumers and event ids in
//! [`inbox`], `entity_key` in [`history`]), but the key column of a state
//! machine's table is yours, and on MySQL/MariaDB a text column compares
//! with its collation. With the usual defaults (`utf8mb4_general_ci`,
//! `utf8mb4_0900_ai_ci`) `pay().apply(&pool, "acme")` finds and moves the
//! row of `ACME`, or of `ácme`; even `utf8mb4_bin` ignores trailing
//! spaces, so `"acme "` moves the row of `acme`. When keys are text that
//! clients choose or that must stay distinct by case, make the key column
//! byte-comparing: `VARBINARY(n)` (MySQL and MariaDB alike; bind `&str` or
//! `String` as usual), or a binary collation without padding
//! (`utf8mb4_0900_bin` on MySQL 8, `utf8mb4_nopad_bin` on MariaDB).
//! Integer and UUID keys are not affected, nor are PostgreSQL (its
//! collations are deterministic: equality is byte equality) and SQLite
//! (`BINARY`). On MySQL the history table's `entity_key` is
//! `VARBINARY(1020)`: read it as bytes or with `CAST(entity_key AS CHAR)`.

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
mod schema;
#[cfg(feature = "sqlite")]
mod sqlite;
mod transition;
mod upgrade;

pub use backend::{Backend, ErrorKind};
pub use error::{Error, HandlerError};
pub use handler::TransitionHandler;
pub use insert::{insert_once, Insert, InsertBackend};
pub use key::{Key, KeyValue};
pub use protocol::Protocol;
pub use purge::DEFAULT_PURGE_CHUNK;
pub use retry::{RetryPolicy, RETRY_TARGET};
pub use schema::{install, install_sql};
pub use transition::TransitionExt;
