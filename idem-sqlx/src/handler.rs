//! Side effects that run only when a transition moved the row.

use async_trait::async_trait;
use idem_core::{Change, State};

use crate::{Backend, Key};

/// Work that must happen exactly when a transition moves a row — record a
/// payment, enqueue an outbox message — run by
/// [`TransitionExt::apply_with`](crate::TransitionExt::apply_with) inside
/// the transaction that made the change, so both commit or neither does.
///
/// It never runs for a no-op (a duplicate, a rejected or missing row). It
/// takes `&self` because idem runs the whole transaction again after a
/// serialization failure or deadlock: the handler's writes of the failed
/// attempt were rolled back with it, so running it again is safe as long
/// as its only effects are writes through `conn`.
///
/// Behind a pooler in transaction mode (PostgreSQL; see
/// `idem_sqlx::postgres`), send the handler's statements unnamed, as
/// below (`.persistent(false)`): inside the transaction they are parsed
/// and run on its server connection, where a named statement cached by
/// sqlx could outlive it and later run on another client's connection.
///
/// ```
/// use async_trait::async_trait;
/// use idem_core::{Change, State};
/// use idem_sqlx::TransitionHandler;
/// use sqlx::{Sqlite, SqliteConnection};
///
/// struct RecordPayment;
///
/// #[async_trait]
/// impl<S: State> TransitionHandler<S, Sqlite, i64> for RecordPayment {
///     type Error = sqlx::Error;
///
///     async fn on_applied(
///         &self,
///         conn: &mut SqliteConnection,
///         change: Change<'_, S, i64>,
///     ) -> Result<(), sqlx::Error> {
///         sqlx::query("INSERT INTO payments (invoice_id) VALUES (?)")
///             .bind(*change.key)
///             .persistent(false)
///             .execute(conn)
///             .await?;
///         Ok(())
///     }
/// }
/// ```
#[async_trait]
pub trait TransitionHandler<S: State, DB: Backend, K: Key<DB>>: Send + Sync {
    /// The handler's own error, returned as [`HandlerError::Handler`](crate::HandlerError::Handler).
    type Error: Send;

    /// Runs in the transaction that applied `change`, before it commits.
    async fn on_applied(
        &self,
        conn: &mut DB::Connection,
        change: Change<'_, S, K>,
    ) -> Result<(), Self::Error>;

    /// Hands back the database error inside `error` when it is a transient
    /// conflict (serialization failure, deadlock, busy database) hit by the
    /// handler's own statements, so that
    /// [`apply_with`](crate::TransitionExt::apply_with) rolls back and runs
    /// the whole transaction again — the transition and the handler — as it
    /// does for idem's own statements; inside a caller's transaction it
    /// surfaces as [`Error::Retryable`](crate::Error::Retryable). Every
    /// other error goes back unchanged and ends the call as
    /// [`HandlerError::Handler`](crate::HandlerError::Handler).
    ///
    /// The default treats every handler error as final. A handler whose
    /// error is `sqlx::Error` opts in with [`Backend::error_kind`]:
    ///
    /// ```
    /// use async_trait::async_trait;
    /// use idem_core::{Change, State};
    /// use idem_sqlx::{Backend, ErrorKind, TransitionHandler};
    /// use sqlx::{Sqlite, SqliteConnection};
    ///
    /// struct RecordPayment;
    ///
    /// #[async_trait]
    /// impl<S: State> TransitionHandler<S, Sqlite, i64> for RecordPayment {
    ///     type Error = sqlx::Error;
    ///
    ///     async fn on_applied(
    ///         &self,
    ///         conn: &mut SqliteConnection,
    ///         change: Change<'_, S, i64>,
    ///     ) -> Result<(), sqlx::Error> {
    ///         sqlx::query("INSERT INTO payments (invoice_id) VALUES (?)")
    ///             .bind(*change.key)
    ///             .execute(conn)
    ///             .await?;
    ///         Ok(())
    ///     }
    ///
    ///     fn transient(&self, error: sqlx::Error) -> Result<sqlx::Error, sqlx::Error> {
    ///         match Sqlite::error_kind(&error) {
    ///             ErrorKind::Transient => Ok(error),
    ///             _ => Err(error),
    ///         }
    ///     }
    /// }
    /// ```
    fn transient(&self, error: Self::Error) -> Result<sqlx::Error, Self::Error> {
        Err(error)
    }
}
