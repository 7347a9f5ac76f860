use std::time::Duration;

use crate::backend::db_error;
use crate::savepoint::{self, Held};
use crate::{Backend, Error, ErrorKind, HandlerError};

/// Bounded, jittered exponential backoff for transactions idem owns, used
/// when the database reports a transient conflict (serialization failure,
/// deadlock, busy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// How many times a transaction runs at most (1 = no retry).
    pub max_attempts: u32,
    /// The delay before the first retry; doubled each time.
    pub base_delay: Duration,
    /// The longest delay between two attempts.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_millis(2),
            max_delay: Duration::from_millis(200),
        }
    }
}

impl RetryPolicy {
    /// A policy that never retries.
    pub const fn none() -> Self {
        RetryPolicy {
            max_attempts: 1,
            base_delay: Duration::ZERO,
            max_delay: Duration::ZERO,
        }
    }

    /// The delay before attempt `attempt + 1` (attempt counts from 1): a
    /// random duration up to the capped exponential delay ("full jitter").
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self
            .base_delay
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
        let cap = exp.min(self.max_delay);
        if cap.is_zero() {
            return cap;
        }
        let nanos = rand::random_range(0..=cap.as_nanos() as u64);
        Duration::from_nanos(nanos)
    }
}

/// Why one attempt of a transaction failed.
#[derive(Debug)]
pub(crate) enum Failure<E> {
    /// A driver error: retried when the backend says it is transient.
    Db(sqlx::Error),
    /// The user's handler failed: never retried, returned as it is.
    Handler(E),
    /// idem failed (e.g. an unknown stored state): never retried.
    Idem(Error),
}

impl<E> From<sqlx::Error> for Failure<E> {
    fn from(error: sqlx::Error) -> Self {
        Failure::Db(error)
    }
}

impl<E> From<Error> for Failure<E> {
    fn from(error: Error) -> Self {
        match error {
            Error::Retryable(e) => Failure::Db(e),
            other => Failure::Idem(other),
        }
    }
}

/// Runs `work` in a transaction idem owns (`B::BEGIN_WRITE`), commits, and
/// runs it again from the start, after a jittered backoff, when the
/// database reports a transient conflict — up to `policy.max_attempts`.
/// A failed attempt is rolled back with [`savepoint::roll_back`].
pub(crate) async fn run_transaction<B, T, E, F>(
    pool: &sqlx::Pool<B>,
    policy: &RetryPolicy,
    mut work: F,
) -> Result<T, HandlerError<E>>
where
    B: Backend,
    F: for<'t> FnMut(
        &'t mut B::Connection,
    ) -> futures::future::BoxFuture<'t, Result<T, Failure<E>>>,
{
    run_attempts(pool, policy, Closure(&mut work)).await
}

/// One attempt of the work of a transaction idem owns. A trait rather than
/// a closure so that the work may borrow data (a key, a handler): the
/// `&'t mut self` receiver tells the compiler the borrow outlives `'t`.
pub(crate) trait Attempt<B: Backend, T, E> {
    /// Runs the work once on `tx`, inside the transaction (which the
    /// caller commits).
    fn run<'t>(
        &'t mut self,
        tx: &'t mut B::Connection,
    ) -> futures::future::BoxFuture<'t, Result<T, Failure<E>>>;
}

struct Closure<'f, F>(&'f mut F);

impl<B, T, E, F> Attempt<B, T, E> for Closure<'_, F>
where
    B: Backend,
    F: for<'t> FnMut(
        &'t mut B::Connection,
    ) -> futures::future::BoxFuture<'t, Result<T, Failure<E>>>,
{
    fn run<'t>(
        &'t mut self,
        tx: &'t mut B::Connection,
    ) -> futures::future::BoxFuture<'t, Result<T, Failure<E>>> {
        (self.0)(tx)
    }
}

/// [`run_transaction`] for work given as an [`Attempt`]. Each retry logs
/// one event at [`RETRY_TARGET`].
pub(crate) async fn run_attempts<B, T, E, W>(
    pool: &sqlx::Pool<B>,
    policy: &RetryPolicy,
    mut work: W,
) -> Result<T, HandlerError<E>>
where
    B: Backend,
    W: Attempt<B, T, E>,
{
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let conn = pool
            .acquire()
            .await
            .map_err(|e| HandlerError::Idem(db_error::<B>(e)))?;
        let mut held = Held::new(conn);
        let result: Result<T, Failure<E>> = async {
            let mut tx = savepoint::begin::<B>(held.conn()).await?;
            match work.run(&mut tx).await {
                Ok(value) => {
                    tx.commit().await?;
                    Ok(value)
                }
                Err(failure) => {
                    // Rolled back here rather than by `Drop`, so that a
                    // transaction the server ended (SQLite's
                    // `RAISE(ROLLBACK)`) leaves the pooled connection in
                    // step. A failed rollback says no more than `failure`.
                    let _ = savepoint::roll_back(tx).await;
                    Err(failure)
                }
            }
        }
        .await;
        held.done();
        drop(held);
        let error = match result {
            Ok(value) => return Ok(value),
            Err(Failure::Handler(e)) => return Err(HandlerError::Handler(e)),
            Err(Failure::Idem(e)) => return Err(HandlerError::Idem(e)),
            Err(Failure::Db(e)) if B::error_kind(&e) != ErrorKind::Transient => {
                return Err(HandlerError::Idem(Error::Database(e)))
            }
            Err(Failure::Db(e)) => e,
        };
        if attempt >= policy.max_attempts.max(1) {
            return Err(HandlerError::Idem(Error::RetriesExhausted {
                attempts: attempt,
                source: error,
            }));
        }
        let delay = policy.delay(attempt);
        tracing::debug!(
            target: RETRY_TARGET,
            attempt,
            ?delay,
            %error,
            "transient conflict: retrying the transaction"
        );
        tokio::time::sleep(delay).await;
    }
}

/// The `tracing` target of the event logged before each retry (one event
/// per retry), so operators and tests can count retries.
pub const RETRY_TARGET: &str = "idem_sqlx::retry";

/// Runs `operation` — one or more statements outside a transaction idem
/// owns, each safe to send again (the key store's claim, complete, release
/// and purge) — again after a jittered backoff while it fails with a
/// transient conflict ([`Error::Retryable`]: a deadlock or lock timeout on
/// MySQL, a busy SQLite), up to `policy.max_attempts`. Each retry logs one
/// event at [`RETRY_TARGET`].
pub(crate) async fn retry_transient<T, F, Fut>(
    policy: &RetryPolicy,
    mut operation: F,
) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let error = match operation().await {
            Err(Error::Retryable(error)) => error,
            other => return other,
        };
        if attempt >= policy.max_attempts.max(1) {
            return Err(Error::RetriesExhausted {
                attempts: attempt,
                source: error,
            });
        }
        let delay = policy.delay(attempt);
        tracing::debug!(
            target: RETRY_TARGET,
            attempt,
            ?delay,
            %error,
            "transient conflict: retrying the statement"
        );
        tokio::time::sleep(delay).await;
    }
}
