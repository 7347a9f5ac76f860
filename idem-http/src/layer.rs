use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;
use http::{HeaderName, Method};
use idem_core::keys::{KeyStore, ResponsePolicy, Scope, DEFAULT_LEASE};
use tower_layer::Layer;

use crate::Idempotency;

/// The scope function: who sent the request (and which operation it is),
/// or `None` when the request carries no trusted identity (answered with
/// 400 [`Rejection::UnknownClient`](crate::Rejection::UnknownClient)).
pub(crate) type ScopeFn = Arc<dyn Fn(&Parts) -> Option<Scope> + Send + Sync>;

/// Applies [`Idempotency`] to a service: requests with the covered methods
/// must carry an `Idempotency-Key` header; the first request with a key
/// runs and its response is stored, retries get that response back.
///
/// Defaults: header `Idempotency-Key`, methods POST and PATCH, body limit
/// 2 MiB, lease 60 s, [`ResponsePolicy::default`] (5xx, 408 and 429 are not
/// stored and release the key).
///
/// The scope function is required: it names the client (tenant, API key)
/// of a request so that two clients never see each other's responses.
pub struct IdempotencyLayer<K> {
    pub(crate) config: Config<K>,
}

pub(crate) struct Config<K> {
    pub(crate) store: Arc<K>,
    pub(crate) scope: ScopeFn,
    pub(crate) header: HeaderName,
    pub(crate) header_display: Arc<str>,
    pub(crate) methods: Vec<Method>,
    pub(crate) body_limit: usize,
    pub(crate) lease: Duration,
    pub(crate) policy: ResponsePolicy,
}

impl<K> Clone for Config<K> {
    fn clone(&self) -> Self {
        Config {
            store: Arc::clone(&self.store),
            scope: Arc::clone(&self.scope),
            header: self.header.clone(),
            header_display: Arc::clone(&self.header_display),
            methods: self.methods.clone(),
            body_limit: self.body_limit,
            lease: self.lease,
            policy: self.policy,
        }
    }
}

impl<K> Clone for IdempotencyLayer<K> {
    fn clone(&self) -> Self {
        IdempotencyLayer {
            config: self.config.clone(),
        }
    }
}

impl<K> fmt::Debug for IdempotencyLayer<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyLayer")
            .field("header", &self.config.header)
            .field("methods", &self.config.methods)
            .field("body_limit", &self.config.body_limit)
            .field("lease", &self.config.lease)
            .finish_non_exhaustive()
    }
}

impl<K: KeyStore> IdempotencyLayer<K> {
    /// A layer keeping its records in `store`, with `scope` naming the
    /// client of each request (see [`Scope`]).
    pub fn new<F>(store: K, scope: F) -> Self
    where
        F: Fn(&Parts) -> Option<Scope> + Send + Sync + 'static,
    {
        IdempotencyLayer {
            config: Config {
                store: Arc::new(store),
                scope: Arc::new(scope),
                header: HeaderName::from_static("idempotency-key"),
                header_display: "Idempotency-Key".into(),
                methods: vec![Method::POST, Method::PATCH],
                body_limit: 2 * 1024 * 1024,
                lease: DEFAULT_LEASE,
                policy: ResponsePolicy::default(),
            },
        }
    }

    /// The header that carries the key (default `Idempotency-Key`).
    pub fn header(mut self, name: HeaderName) -> Self {
        self.config.header_display = name.as_str().into();
        self.config.header = name;
        self
    }

    /// The methods that require a key; requests with other methods pass
    /// through untouched (default POST and PATCH).
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.config.methods = methods.into_iter().collect();
        self
    }

    /// The largest request body read and fingerprinted, in bytes; larger
    /// bodies get 413 (default 2 MiB).
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.config.body_limit = bytes;
        self
    }

    /// How long a running request holds its key before another request
    /// with the same key may take it over (default 60 s). Choose it longer
    /// than the slowest handler: a takeover means the first run's outcome
    /// is uncertain.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.config.lease = lease;
        self
    }

    /// Which response statuses are stored and replayed; the others release
    /// the key so the client may retry.
    pub fn policy(mut self, policy: ResponsePolicy) -> Self {
        self.config.policy = policy;
        self
    }
}

impl<S, K> Layer<S> for IdempotencyLayer<K> {
    type Service = Idempotency<S, K>;

    fn layer(&self, inner: S) -> Self::Service {
        Idempotency {
            inner,
            config: Arc::new(self.config.clone()),
        }
    }
}
