use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;
use http::{HeaderName, Method};
use idem_core::keys::{KeyStore, ResponsePolicy, Scope, DEFAULT_LEASE};
use tower_layer::Layer;

use crate::{Drain, Idempotency, StoredHeaders};

/// The default response limit: 1 MiB.
pub const DEFAULT_RESPONSE_LIMIT: usize = 1024 * 1024;

/// The scope function: who sent the request (and which operation it is),
/// or `None` when the request carries no trusted identity (answered with
/// 400 [`Rejection::UnknownClient`](crate::Rejection::UnknownClient)).
pub(crate) type ScopeFn = Arc<dyn Fn(&Parts) -> Option<Scope> + Send + Sync>;

/// Applies [`Idempotency`] to a service: requests with the covered methods
/// must carry an `Idempotency-Key` header (unless
/// [`require_key(false)`](Self::require_key)); the first request with a
/// key runs and its response is stored, retries get that response back.
///
/// Defaults: header `Idempotency-Key`, required on methods POST and PATCH,
/// body limit 2 MiB, response limit 1 MiB, lease 60 s,
/// [`ResponsePolicy::default`] (5xx and the 4xx that invite a retry, such
/// as 401, 409 and 429, are not stored and release the key),
/// [`StoredHeaders::default`] (no credentials or session state is stored),
/// and the fingerprint covers method, path and query, media type, content
/// coding and body. With [`require_key(false)`](Self::require_key) the key
/// is optional.
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
    pub(crate) require_key: bool,
    pub(crate) response_limit: usize,
    pub(crate) stored_headers: StoredHeaders,
    pub(crate) fingerprint_headers: Vec<HeaderName>,
    pub(crate) drain: Drain,
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
            require_key: self.require_key,
            response_limit: self.response_limit,
            stored_headers: self.stored_headers.clone(),
            fingerprint_headers: self.fingerprint_headers.clone(),
            drain: self.drain.clone(),
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
            .field("response_limit", &self.config.response_limit)
            .field("lease", &self.config.lease)
            .field("require_key", &self.config.require_key)
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
                require_key: true,
                response_limit: DEFAULT_RESPONSE_LIMIT,
                stored_headers: StoredHeaders::default(),
                fingerprint_headers: Vec::new(),
                drain: Drain::default(),
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

    /// Whether requests with a covered method must carry the key (default
    /// `true`: a request without it is 400).
    ///
    /// With `false`, a request **without** the header goes straight to the
    /// inner service, as if the layer were not there: no claim, no
    /// fingerprint, its body streamed untouched. A request **with** the
    /// header gets the whole protocol (replay, 409, 422, 413), and a
    /// malformed or repeated header is still 400. For endpoints that are
    /// idempotent on their own (a guarded state transition) where a key
    /// only adds replays of the exact response.
    ///
    /// ```
    /// use axum::{body::Body, routing::post, Router};
    /// use http::{Request, StatusCode};
    /// use idem_core::keys::{MemoryStore, Scope};
    /// use idem_http::IdempotencyLayer;
    /// use tower::ServiceExt;
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let layer = IdempotencyLayer::new(MemoryStore::default(), |_| Scope::new("acme", "api").ok())
    ///     .require_key(false);
    /// let app = Router::new()
    ///     .route("/invoices/{id}/pay", post(|| async { "paid" }))
    ///     .layer(layer);
    ///
    /// let without_key = Request::post("/invoices/7/pay").body(Body::empty()).unwrap();
    /// let response = app.clone().oneshot(without_key).await.unwrap();
    /// assert_eq!(response.status(), StatusCode::OK);
    ///
    /// let with_key = || {
    ///     Request::post("/invoices/7/pay")
    ///         .header("idempotency-key", "pay-7")
    ///         .body(Body::empty())
    ///         .unwrap()
    /// };
    /// let _ = app.clone().oneshot(with_key()).await.unwrap();
    /// let retry = app.clone().oneshot(with_key()).await.unwrap();
    /// assert_eq!(retry.headers()["idempotent-replayed"], "true");
    ///
    /// let repeated = Request::post("/invoices/7/pay")
    ///     .header("idempotency-key", "a")
    ///     .header("idempotency-key", "b")
    ///     .body(Body::empty())
    ///     .unwrap();
    /// let response = app.clone().oneshot(repeated).await.unwrap();
    /// assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    /// # });
    /// ```
    pub fn require_key(mut self, required: bool) -> Self {
        self.config.require_key = required;
        self
    }

    /// Which response statuses are stored and replayed; the others release
    /// the key so the client may retry (default [`ResponsePolicy::default`]).
    pub fn policy(mut self, policy: ResponsePolicy) -> Self {
        self.config.policy = policy;
        self
    }

    /// The largest response stored for replay, in bytes: the body plus the
    /// names and values of the stored headers (default 1 MiB,
    /// [`DEFAULT_RESPONSE_LIMIT`]).
    ///
    /// The layer never holds more than this (plus the frame that crosses
    /// it) of a response in memory:
    ///
    /// - A final response whose body has a known length within the limit
    ///   is read, stored, then sent.
    /// - A body of unknown length (a stream) is sent to the client as it
    ///   is produced, while the layer keeps a copy; when it ends within the
    ///   limit, the copy is stored before the client sees the end of the
    ///   body (and, when the response declares a `Content-Length`, before
    ///   its last bytes), so a client that got the whole body and retries
    ///   gets the replay.
    /// - A response larger than the limit (known at once, or when a stream
    ///   crosses it) is sent to the client whole, copy dropped, and the key
    ///   is completed at once with [`Rejection::ResponseNotKept`](crate::Rejection::ResponseNotKept)
    ///   (410, the original status in `original_status`) instead: every
    ///   retry of the key gets that answer and the work never runs again.
    /// - A response still being read three quarters into the lease (a slow
    ///   or endless stream: server-sent events) is completed with the same
    ///   410 then, and its client reads the rest: no key stays in progress
    ///   past its lease because of a response.
    /// - A stream whose client hung up is read no further than what it has
    ///   ready: it is dropped and its key completed with the 410.
    ///
    /// The same 410 is stored when the key store fails to store a response
    /// (a database that refuses a value that large), rather than leaving
    /// the key claimed until its lease expires and the retry runs the work
    /// again.
    ///
    /// Choose a limit every store can hold: PostgreSQL `bytea` and SQLite
    /// blobs take 1 GB, MySQL/MariaDB `LONGBLOB` 4 GiB but a statement at
    /// most `max_allowed_packet` (16 MiB by default on MariaDB, 64 MiB on
    /// MySQL 8). A [`MemoryStore`](idem_core::keys::MemoryStore) holds up
    /// to its capacity times this limit.
    pub fn response_limit(mut self, bytes: usize) -> Self {
        self.config.response_limit = bytes;
        self
    }

    /// Which response headers are stored and replayed (default
    /// [`StoredHeaders::default`]: every header but framing headers and
    /// those that carry credentials or session state, such as
    /// `Set-Cookie` and `WWW-Authenticate`).
    pub fn stored_headers(mut self, headers: StoredHeaders) -> Self {
        self.config.stored_headers = headers;
        self
    }

    /// More request headers whose values are part of the fingerprint
    /// (the media type and the content coding always are), for headers
    /// your handlers read that change what the request does — a
    /// `Prefer` header, an API version header. The same key with another
    /// value is 422; a request without the header differs from one with
    /// it, even empty.
    ///
    /// Listing `Content-Type` makes its exact bytes part of the
    /// fingerprint too, beside the normalised media type: for handlers that
    /// compare the header as a string (and so may refuse
    /// `application/json;charset=utf-8` while taking
    /// `application/json; charset=utf-8`).
    ///
    /// Adding a header changes the fingerprint of every request that
    /// carries it, so a retry of a key stored before the change gets 422.
    pub fn fingerprint_headers(mut self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        self.config.fingerprint_headers = names.into_iter().collect();
        self
    }
}

impl<K> IdempotencyLayer<K> {
    /// A handle that waits for the claimed requests this layer — and every
    /// clone of it, and every service made from them — runs on tasks of
    /// its own (see [`Drain`]): await [`Drain::wait`] after the server's
    /// graceful shutdown, so that work whose client hung up still ends
    /// with its response stored.
    pub fn drain(&self) -> Drain {
        self.config.drain.clone()
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
