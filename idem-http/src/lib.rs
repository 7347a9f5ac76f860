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
//! | 410 | the request with the key already ran and its response was not kept: larger than the response limit, still streaming three quarters into its lease, cut short by its client's hang-up, or the store failed to store it ([`Rejection::ResponseNotKept`], with `Idempotent-Replayed: true` and the original status as `original_status`); the work does not run again |
//! | 413 | the body is larger than the limit |
//! | 422 | the key was used with another request (method, path, query, media type, content coding, configured headers or body) — also while the first one still runs |
//! | 429 + `Retry-After` | this client holds as many keys as the store keeps for one client ([`idem_core::Error::TooManyKeys`]); the request did not run, other clients are served |
//! | 500 | the handler panicked, or its response body failed or did not match its declared length; nothing stored, the key released |
//! | 501 | a gRPC-Web request ([`Rejection::GrpcWeb`]) |
//! | 503 | the key store failed, or is full (then with `Retry-After`); the request did not run |
//!
//! Every error is `application/problem+json` ([`Rejection`]), or a gRPC
//! status for a gRPC request (see [gRPC](#grpc)). Responses
//! with 5xx, or a 4xx that invites the same request again (401, 407, 408,
//! 409, 412, 423, 425, 428, 429, 499), are not stored and release the key
//! ([`ResponsePolicy`](idem_core::keys::ResponsePolicy) says why), so the
//! client's retry runs again; other 4xx are final answers and are
//! replayed.
//!
//! # What is replayed
//!
//! The stored status, body, headers and trailers, except framing headers
//! and those that carry credentials or session state (`Set-Cookie`,
//! `WWW-Authenticate`, any name containing `token`, `session`, `auth`,
//! `csrf`, ... in any case, with or without separators): a replay never
//! hands the first caller's cookie, session id or challenge to whoever
//! retries, and the key store never keeps them. [`StoredHeaders`] lists
//! them and makes it configurable ([`IdempotencyLayer::stored_headers`]).
//!
//! # What is fingerprinted
//!
//! The method, the request target the client sent (path and query; see
//! [below](#where-the-layer-goes-among-routers-that-rewrite-the-uri)), the
//! media type (`Content-Type`), the content coding (`Content-Encoding`,
//! and gRPC's `grpc-encoding`) as sent, the headers added with
//! [`IdempotencyLayer::fingerprint_headers`], and the body — JSON bodies (`application/json`, `*/*+json`, not content-coded)
//! in canonical form, taken from the body's bytes: reordered members,
//! whitespace and string escapes are the same request, while numbers are
//! compared by their exact text and a body with a duplicate key matches
//! only itself, so two bodies a handler could read differently never share
//! a fingerprint ([`Fingerprint`](idem_core::keys::Fingerprint) gives the
//! rule). The same key with another fingerprint is 422. Requests with
//! `application/json` or no `Content-Type`, no content coding and no
//! configured header have the fingerprint earlier versions gave them.
//!
//! Two spellings of a request header share a fingerprint only when every
//! handler reads them alike. A media type is normalised only when it is
//! well-formed under the strict grammar the `mime` crate (axum's `Json`,
//! actix-web, warp) accepts: then the case of type, subtype, parameter
//! names and a charset, the order of parameters, the quoting of a token
//! value, the spaces after a `;`, and `charset=utf-8` on a JSON type
//! (RFC 8259: JSON is UTF-8, the parameter means nothing) do not matter.
//! Anything else — a space before `;`, an empty parameter (`;;`), a
//! trailing `;`, a tab, an escape, an empty quoted value, a parameter
//! named twice — matches only its own bytes, so a 415 stored for it never
//! answers the corrected request. A handler that compares the header as a
//! string: list `CONTENT_TYPE` in
//! [`fingerprint_headers`](IdempotencyLayer::fingerprint_headers) and its
//! exact bytes count too. Content codings are compared as sent: decoders
//! differ on `GZIP`, `x-gzip` and `identity`.
//!
//! ## Where the layer goes among routers that rewrite the URI
//!
//! axum's `Router::nest` and `nest_service` strip their prefix — path
//! parameters included, such as `/accounts/{id}` — from the URI the inner
//! router and its layers see. With the `axum` feature (on by default) the
//! layer fingerprints axum's `OriginalUri`, the target the client sent, so
//! it may sit on a nested router. Any other middleware that rewrites the
//! URI, or moves part of it into a header or an extension (a tenant
//! prefix, a version segment), must run **inside** the idempotency layer,
//! or what it moved must be fingerprinted
//! ([`fingerprint_headers`](IdempotencyLayer::fingerprint_headers));
//! otherwise two resources share a fingerprint and one replays the other.
//! Without the `axum` feature, put the layer outside every nesting.
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
//! # gRPC
//!
//! A gRPC call (`Content-Type: application/grpc`, `application/grpc+proto`,
//! ...) answers HTTP 200 and puts its outcome in `grpc-status`: in the
//! trailers, or in the headers of a trailers-only answer (tonic's errors).
//! The layer hands the [`ResponsePolicy`](idem_core::keys::ResponsePolicy)
//! the HTTP status `google.rpc.Code` maps the code to (its docs list the
//! mapping), so with the default `UNAVAILABLE`, `RESOURCE_EXHAUSTED`,
//! `ABORTED`, `DEADLINE_EXCEEDED`, `CANCELLED`, `ALREADY_EXISTS`,
//! `UNAUTHENTICATED` and the server errors release the key, and `OK`,
//! `INVALID_ARGUMENT`, `NOT_FOUND`, `PERMISSION_DENIED`,
//! `FAILED_PRECONDITION` and `OUT_OF_RANGE` are stored. A call that ends
//! without `grpc-status` is not stored. The trailers are stored with the
//! response ([`StoredResponse::trailers`](idem_core::keys::StoredResponse::trailers))
//! and replayed; they reach the first caller only once the record is
//! stored (over HTTP/2 they end the call).
//!
//! The layer's own answers to a gRPC client are trailers-only gRPC
//! statuses with `grpc-message`: `INVALID_ARGUMENT` for a missing,
//! invalid or reused key or an unknown client, `UNAVAILABLE` with
//! `grpc-retry-pushback-ms` while the call runs or the store is down,
//! `RESOURCE_EXHAUSTED` for a body too large or a client over its share,
//! `INTERNAL` for a failed response, `FAILED_PRECONDITION` for a response
//! not kept. gRPC-Web carries its status inside the body, which the layer
//! does not read: it is refused ([`Rejection::GrpcWeb`]); put tonic-web's
//! `GrpcWebLayer` outside the idempotency layer, so the layer sees gRPC.
//!
//! # Hang-ups, panics, crashes, slow handlers and shutdown
//!
//! Once a request has claimed its key, the layer runs the handler, reads
//! its response body and stores the response on a task of its own (on
//! the current tokio runtime, whose time driver it needs): a client that
//! hangs up mid-request — hyper then drops the request's future or its
//! body — does not cut the work short, and its retry gets the stored
//! response. Outside a tokio runtime the layer runs in place and the
//! client's reading of the body drives the rest: no such protection.
//!
//! A streamed body is the exception: once its client is gone, the layer
//! reads what the stream has ready and stops at the first wait — it drops
//! the stream (an endless one would otherwise be read for nobody) and
//! completes the key with [`Rejection::ResponseNotKept`]. And no response
//! keeps its key in progress past the lease: one still being read three
//! quarters into the lease (a slow stream, server-sent events) is
//! completed with the same 410, while its client goes on reading it.
//!
//! A graceful shutdown (`axum::serve(..).with_graceful_shutdown(..)`)
//! waits for its connections, not for these tasks. Keep the layer's
//! [`Drain`] ([`IdempotencyLayer::drain`]) and await [`Drain::wait`]
//! after the server stopped, bounded by a timeout, so that work whose
//! client hung up still stores its response before the runtime ends.
//!
//! A handler that panics (or whose response body panics before it is
//! relayed) gets the client a 500 problem ([`Rejection::ResponseFailed`]);
//! the key is released and nothing is stored, as for any 5xx, so the retry
//! runs again. A streamed body that fails or panics midway — or ends short
//! of, or runs past, its declared length (`Content-Length`, or an exact
//! size hint), which hyper aborts — releases the key the same way, and the
//! client's response ends with an error (the server aborts it) instead of
//! looking complete. A `Content-Length` that is not one number is never
//! stored either. The panic stays inside
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
//! [`IdempotencyLayer::response_limit`]) of each response: a larger
//! response streams to its caller while its key is completed with the 410
//! above, and so does an endless one once it crosses the limit or three
//! quarters of its lease. No message it sends back echoes a value the client sent. A
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
