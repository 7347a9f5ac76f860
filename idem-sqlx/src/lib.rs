//! idem on PostgreSQL, MySQL/MariaDB and SQLite via sqlx.

mod backend;
mod batch;
mod error;
mod handler;
pub mod history;
mod key;
pub mod keys;
#[cfg(feature = "mysql")]
mod mysql;
#[cfg(feature = "postgres")]
mod postgres;
mod retry;
#[cfg(feature = "sqlite")]
mod sqlite;
mod transition;

pub use backend::{Backend, ErrorKind};
pub use error::{Error, HandlerError};
pub use handler::TransitionHandler;
pub use key::Key;
pub use retry::{RetryPolicy, RETRY_TARGET};
pub use transition::TransitionExt;
