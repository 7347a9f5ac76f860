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
mod postgres;
mod retry;
mod savepoint;
mod schema;
#[cfg(feature = "sqlite")]
mod sqlite;
mod transition;

pub use backend::{Backend, ErrorKind};
pub use error::{Error, HandlerError};
pub use handler::TransitionHandler;
pub use insert::{insert_once, BusinessKey, Insert, InsertBackend, ViolatedKey};
pub use key::Key;
pub use retry::{RetryPolicy, RETRY_TARGET};
pub use schema::{install, install_sql};
pub use transition::TransitionExt;
