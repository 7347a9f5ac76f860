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
//! | 413 | the body is larger than the limit |
//! | 422 | the key was used with another request (method, path, query or body) |
//! | 429 + `Retry-After` | this client holds as many keys as the store keeps for one client ([`idem_core::Error::TooManyKeys`]); the request did not run, other clients are served |
//! | 500 | the handler panicked, or its response body failed; nothing stored, the key released |
//! | 503 | the key store failed, or is full (then with `Retry-After`); the request did not run |
//!
//! Every error is `application/problem+json` ([`Rejection`]). Responses
//! with 5xx, 408 or 429 are not stored and release the key
//! ([`ResponsePolicy`](idem_core::keys::ResponsePolicy)), so the client's
//! retry runs again.
//!
//! # What is fingerprinted
//!
//! The method, the path with its query, and the body — JSON bodies
//! (`application/json`, `*/*+json`) in canonical form, taken from the
//! body's bytes: reordered members, whitespace and string escapes are the
//! same request, while numbers are compared by their exact text and a body
//! with a duplicate key matches only itself, so two bodies a handler could
//! read differently never share a fingerprint
//! ([`Fingerprint`](idem_core::keys::Fingerprint) gives the rule). The same
//! key with another fingerprint is 422.
//!
//! # Hang-ups, panics, crashes and slow handlers
//!
//! Once a request has claimed its key, the layer runs the handler, reads
//! its response body and stores the response on a task of its own (on
//! the current tokio runtime): a client that hangs up mid-request — hyper
//! then drops the request's future — does not cut the work short, and its
//! retry gets the stored response. Outside a tokio runtime the layer runs
//! in place and has no such protection.
//!
//! A handler that panics (or whose response body panics) gets the client
//! a 500 problem ([`Rejection::ResponseFailed`]); the key is released and
//! nothing is stored, as for any 5xx, so the retry runs again. The panic
//! stays inside that task: the process and other requests go on.
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
//! request; no message it sends back echoes a value the client sent. A
//! store's bound on one client is answered 429 with `Retry-After`, so one
//! client filling its share never locks the others out (see
//! [`MemoryStore`](idem_core::keys::MemoryStore) for its numbers).

mod body;
mod error;
mod fingerprint;
pub mod future;
mod headers;
mod layer;
mod scope;
mod service;

pub use error::Rejection;
pub use headers::StoredHeaders;
pub use layer::{IdempotencyLayer, DEFAULT_RESPONSE_LIMIT};
pub use scope::scope_from_header;
pub use service::{ClaimedKey, Idempotency, REPLAYED_HEADER};
