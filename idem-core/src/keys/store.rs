use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::{Fingerprint, IdempotencyKey, Scope, StoredResponse};

/// The right to run the work of one (scope, key), until the lease expires
/// or the holder completes or releases it.
///
/// A lease carries a token that is new for every claim: `complete` and
/// `release` act only while the record still holds this token, so a run
/// whose key was taken over can never overwrite the new holder's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    scope: Scope,
    key: IdempotencyKey,
    token: i64,
}

impl Lease {
    /// A lease on `(scope, key)` identified by `token` (for store
    /// implementations: the token must differ between any two claims of
    /// the same key).
    pub fn new(scope: Scope, key: IdempotencyKey, token: i64) -> Self {
        Lease { scope, key, token }
    }

    /// The scope of the claimed key.
    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    /// The claimed key.
    pub fn key(&self) -> &IdempotencyKey {
        &self.key
    }

    /// The token of this claim.
    pub fn token(&self) -> i64 {
        self.token
    }
}

/// The result of claiming a key.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "only Claim::New and Claim::Recovered may run the work"]
pub enum Claim {
    /// The key was free: run the work, then `complete` (or `release` on a
    /// failure the client may retry).
    New(Lease),
    /// A previous run claimed the key, and its lease expired before it
    /// completed: it crashed, or it is still running and too slow. **Its
    /// outcome is uncertain** — it may have done its outside effect or not.
    /// The caller now holds the key. Before doing the effect again, find
    /// out what happened (ask the provider, passing it the same key), or
    /// make the effect idempotent on the provider's side. If the old run
    /// is still alive, its `complete` returns [`Completion::LeaseLost`].
    Recovered(Lease),
    /// The key completed before: return this response and do not run the
    /// work.
    Replay(StoredResponse),
    /// Another request holds a live lease on the key: ask the client to
    /// retry after `retry_after` (HTTP 409 with `Retry-After`).
    InProgress {
        /// How long until that lease expires, by the store's clock.
        retry_after: Duration,
    },
    /// The key was used with another fingerprint (HTTP 422): the work must
    /// not run and no response is replayed.
    KeyReused,
}

/// What `complete` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "LeaseLost means the work may have run twice"]
pub enum Completion {
    /// The response is stored and will be replayed to retries.
    Stored,
    /// The record no longer holds this lease: after it expired another
    /// request took the key over ([`Claim::Recovered`]), or it was released
    /// or purged. Nothing was stored. This run's outcome is **uncertain**:
    /// the work may have run twice; reconcile before telling anyone it ran
    /// exactly once.
    LeaseLost,
}

/// Where key records live: the atomic claim, the stored responses and the
/// clock that decides expiry.
///
/// The store's own clock decides every expiry — a database store uses the
/// database's clock, never the application's — so callers pass durations,
/// never instants. A lease of zero expires at once (it is never "no
/// expiry").
///
/// Implementations: [`MemoryStore`](super::MemoryStore) here, and
/// `idem_sqlx::keys::SqlKeyStore` for PostgreSQL, MySQL/MariaDB and SQLite.
/// All pass the same conformance suite.
#[async_trait]
pub trait KeyStore: Send + Sync {
    /// The store's error (an unreachable database, a full store).
    type Error: std::error::Error + Send + Sync + 'static;

    /// Claims `(scope, key)` for a request with this `fingerprint`,
    /// atomically: among any number of concurrent claims of a free key,
    /// exactly one gets [`Claim::New`]. An in-progress record whose lease
    /// expired is taken over ([`Claim::Recovered`]) only by a request with
    /// the same fingerprint.
    async fn claim(
        &self,
        scope: &Scope,
        key: &IdempotencyKey,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> Result<Claim, Self::Error>;

    /// Stores the final response of the run holding `lease`; the record is
    /// kept (and replayed) for the retention period.
    async fn complete(
        &self,
        lease: &Lease,
        response: &StoredResponse,
    ) -> Result<Completion, Self::Error>;

    /// Forgets the claim after a failure the client may retry, so the next
    /// request with the key runs. Does nothing when the lease was lost.
    async fn release(&self, lease: &Lease) -> Result<(), Self::Error>;

    /// Deletes completed records older than `retention` (counted from
    /// completion) and abandoned in-progress records whose lease expired
    /// more than `retention` ago; returns how many it deleted. Records are
    /// deleted whole, key and response together, so a response never
    /// expires while its key still blocks a new run.
    async fn purge(&self, retention: Duration) -> Result<u64, Self::Error>;
}

#[async_trait]
impl<K: KeyStore + ?Sized> KeyStore for Arc<K> {
    type Error = K::Error;

    async fn claim(
        &self,
        scope: &Scope,
        key: &IdempotencyKey,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> Result<Claim, Self::Error> {
        (**self).claim(scope, key, fingerprint, lease).await
    }

    async fn complete(
        &self,
        lease: &Lease,
        response: &StoredResponse,
    ) -> Result<Completion, Self::Error> {
        (**self).complete(lease, response).await
    }

    async fn release(&self, lease: &Lease) -> Result<(), Self::Error> {
        (**self).release(lease).await
    }

    async fn purge(&self, retention: Duration) -> Result<u64, Self::Error> {
        (**self).purge(retention).await
    }
}
