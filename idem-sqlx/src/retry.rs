use std::time::Duration;

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
/// Dropping the transaction of a failed attempt rolls it back.
pub(crate) async fn run_transaction<B, T, E, F>(
    pool: &sqlx::Pool<B>,
    policy: &RetryPolicy,
    mut work: F,
) -> Result<T, HandlerError<E>>
where
    B: Backend,
    F: for<'t> FnMut(
        &'t mut sqlx::Transaction<'static, B>,
    ) -> futures::future::BoxFuture<'t, Result<T, Failure<E>>>,
{
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let result: Result<T, Failure<E>> = async {
            let mut tx = pool.begin_with(B::BEGIN_WRITE).await?;
            let value = work(&mut tx).await?;
            tx.commit().await?;
            Ok(value)
        }
        .await;
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
        tracing::debug!(attempt, ?delay, %error, "transient conflict: retrying the transaction");
        tokio::time::sleep(delay).await;
    }
}
