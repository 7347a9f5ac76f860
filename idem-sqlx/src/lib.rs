//! idem on PostgreSQL, MySQL/MariaDB and SQLite via sqlx.

mod backend;
mod error;
#[cfg(feature = "mysql")]
mod mysql;
#[cfg(feature = "postgres")]
mod postgres;
mod retry;
#[cfg(feature = "sqlite")]
mod sqlite;

pub use backend::{Backend, ErrorKind};
pub use error::{Error, HandlerError};
pub use retry::RetryPolicy;
