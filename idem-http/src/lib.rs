//! The `Idempotency-Key` tower layer: make POST and PATCH safe to retry in
//! axum, tonic or any tower service, as Stripe and the IETF
//! Idempotency-Key draft describe.
//!
//! ```
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::sync::Arc;
//!
//! use axum::{body::Body, routing::post, Router};
//! use http::{Request, StatusCode};
//! use idem_core::keys::{MemoryStore, Scope};
//! use idem_http::IdempotencyLayer;
//! use tower::ServiceExt;
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let charges = Arc::new(AtomicUsize::new(0));
//! let counter = Arc::clone(&charges);
//! let app = Router::new()
//!     .route("/charges", post(move || async move {
//!         counter.fetch_add(1, Ordering::SeqCst);
//!         (StatusCode::CREATED, "charged")
//!     }))
//!     .layer(IdempotencyLayer::new(MemoryStore::default(), |parts| {
//!         // The client's identity, from a header the gateway sets.
//!         let client = parts.headers.get("x-client-id")?.to_str().ok()?;
//!         Scope::new(client, "api").ok()
//!     }));
//!
//! let request = || {
//!     Request::post("/charges")
//!         .header("x-client-id", "acme")
//!         .header("idempotency-key", "5f0c7b0e-order-42")
//!         .body(Body::from("amount=100"))
//!         .unwrap()
//! };
//! let first = app.clone().oneshot(request()).await.unwrap();
//! assert_eq!(first.status(), StatusCode::CREATED);
//!
//! let retry = app.clone().oneshot(request()).await.unwrap();
//! assert_eq!(retry.status(), StatusCode::CREATED);
//! assert_eq!(retry.headers()["idempotent-replayed"], "true");
//! assert_eq!(charges.load(Ordering::SeqCst), 1);
//! # });
//! ```
//!
//! # Status codes
//!
//! | Status | When |
//! |---|---|
//! | the stored one, with `Idempotent-Replayed: true` | a retry of a completed request (same key, same request) |
//! | 400 | the key is missing (unless [`IdempotencyLayer::require_key`] made it optional), empty, longer than 255 bytes, not visible ASCII, or the header repeats; or the scope function found no client |
//! | 409 + `Retry-After` | a request with the key is still running |
//! | 410 | the request with the key already ran and its response was not kept: larger than the response limit, or the store failed to store it ([`Rejection::ResponseNotKept`], with `Idempotent-Replayed: true` and the original status as `original_status`); the work does not run again |
//! | 413 | the body is larger than the limit |
//! | 422 | the key was used with another request (method, path, query, media type, content coding, configured headers or body) — also while the first one still runs |
//! | 429 + `Retry-After` | this client holds as many keys as the store keeps for one client ([`idem_core::Error::TooManyKeys`]); the request did not run, other clients are served |
//! | 500 | the handler panicked, or its response body failed; nothing stored, the key released |
//! | 503 | the key store failed, or is full (then with `Retry-After`); the request did not run |
//!
//! Every error is `application/problem+json` ([`Rejection`]). Responses
//! with 5xx, or a 4xx that invites the same request again (401, 407, 408,
//! 409, 412, 423, 425, 428, 429), are not stored and release the key
//! ([`ResponsePolicy`](idem_core::keys::ResponsePolicy) says why), so the
//! client's retry runs again; other 4xx are final answers and are
//! replayed.
//!
//! # What is replayed
//!
//! The stored status, body and headers, except framing headers and those
//! that carry credentials or session state (`Set-Cookie`,
//! `WWW-Authenticate`, tokens, ...): a replay never hands the first
//! caller's cookie or challenge to whoever retries, and the key store
//! never keeps them. [`StoredHeaders`] lists them and makes it
//! configurable ([`IdempotencyLayer::stored_headers`]).
//!
//! # What is fingerprinted
//!
//! The method, the path with its query, the media type (`Content-Type`,
//! normalised: case, parameter order and quoting, a charset's case, and
//! `charset=utf-8` on JSON do not matter), the content coding
//! (`Content-Encoding`; `x-gzip` is `gzip`, `identity` is none), the
//! headers added with [`IdempotencyLayer::fingerprint_headers`], and the
//! body — JSON bodies (`application/json`, `*/*+json`, not content-coded)
//! in canonical form, taken from the body's bytes: reordered members,
//! whitespace and string escapes are the same request, while numbers are
//! compared by their exact text and a body with a duplicate key matches
//! only itself, so two bodies a handler could read differently never share
//! a fingerprint ([`Fingerprint`](idem_core::keys::Fingerprint) gives the
//! rule). The same key with another fingerprint is 422. Requests with
//! `application/json` or no `Content-Type`, no content coding and no
//! configured header have the fingerprint earlier versions gave them.
//!
//! ## Where the layer goes among compression layers
//!
//! The layer fingerprints the body's bytes as they reach it. A compressed
//! body compressed again by a retrying client (another compression level,
//! another gzip header time) has other bytes for the same content, so it
//! is 422. Put a request decompression layer (tower-http's
//! `RequestDecompressionLayer`) **outside** this one, so the layer sees and
//! compares the content, and a response compression layer
//! (`CompressionLayer`) outside too, so every replay is encoded for the
//! `Accept-Encoding` of the request that gets it; with compression inside,
//! the stored body is encoded for the first request and replayed as it is
//! to every retry. With axum, later `.layer` calls wrap earlier ones:
//! `router.layer(idempotency).layer(RequestDecompressionLayer::new()).layer(CompressionLayer::new())`.
//!
//! # Hang-ups, panics, crashes and slow handlers
//!
//! Once a request has claimed its key, the layer runs the handler, reads
//! its response body and stores the response on a task of its own (on
//! the current tokio runtime): a client that hangs up mid-request — hyper
//! then drops the request's future or its body — does not cut the work
//! short, and its retry gets the stored response. Outside a tokio runtime
//! the layer runs in place and the client's reading of the body drives the
//! rest: no such protection.
//!
//! A handler that panics (or whose response body panics before it is
//! relayed) gets the client a 500 problem ([`Rejection::ResponseFailed`]);
//! the key is released and nothing is stored, as for any 5xx, so the retry
//! runs again. A streamed body that fails or panics midway releases the
//! key the same way, and the client's response ends with an error (the
//! server aborts it) instead of looking complete. The panic stays inside
//! that task: the process and other requests go on.
//!
//! A request holds its key for a lease (60 s by default). If the process
//! dies, the key stays claimed until the lease expires; then the next
//! retry runs it, and the handler sees [`ClaimedKey::recovered`] set: the
//! first run's outcome is uncertain. Choose a lease longer than your
//! slowest handler.
//!
//! # Bounds
//!
//! The layer reads at most the body limit (2 MiB by default) of each
//! request, and keeps at most the response limit (1 MiB by default,
//! [`IdempotencyLayer::response_limit`]) of each response: a larger or
//! endless response streams to its caller while its key is completed with
//! the 410 above. No message it sends back echoes a value the client sent. A
//! store's bound on one client is answered 429 with `Retry-After`, so one
//! client filling its share never locks the others out (see
//! [`MemoryStore`](idem_core::keys::MemoryStore) for its numbers).

mod body;
mod drain;
mod error;
mod fingerprint;
pub mod future;
mod grpc;
mod headers;
mod layer;
mod scope;
mod service;

pub use drain::Drain;
pub use error::Rejection;
pub use headers::StoredHeaders;
pub use layer::{IdempotencyLayer, DEFAULT_RESPONSE_LIMIT};
pub use scope::scope_from_header;
pub use service::{ClaimedKey, Idempotency, REPLAYED_HEADER};
