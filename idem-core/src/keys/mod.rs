//! Idempotency keys: the key, its scope, the request fingerprint and the
//! store protocol.
//!
//! A client sends a key with a request it may retry. The first request
//! with a key claims it atomically and runs; a retry with the same key and
//! the same request gets the stored response back instead of running again;
//! the same key with a different request is rejected as reused.
//!
//! ```
//! use std::time::Duration;
//! use idem_core::keys::{Claim, Fingerprint, KeyStore, MemoryStore, ResponsePolicy, Scope, StoredResponse};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let store = MemoryStore::default();
//! let scope = Scope::new("tenant-7", "refunds")?;
//! let key = "5b7c1d0e".parse()?;
//! let fingerprint = Fingerprint::of_json(&serde_json::json!({"charge": "ch_1", "amount": 500}));
//! let policy = ResponsePolicy::default();
//!
//! let response = match store.claim(&scope, &key, &fingerprint, Duration::from_secs(30)).await? {
//!     Claim::New(lease) | Claim::Recovered(lease) => {
//!         let response = StoredResponse::new(200, b"refunded".to_vec()); // the work
//!         if policy.is_final(response.status) {
//!             let _ = store.complete(&lease, &response).await?;
//!         } else {
//!             store.release(&lease).await?;
//!         }
//!         response
//!     }
//!     Claim::Replay(stored) => stored,
//!     Claim::InProgress { retry_after } => panic!("busy, retry after {retry_after:?}"),
//!     Claim::KeyReused => panic!("a new request needs a new key"),
//! };
//! assert_eq!(response.status, 200);
//! # Ok::<(), idem_core::Error>(())
//! # }).unwrap();
//! ```
//!
//! # Leases and uncertain outcomes
//!
//! An in-progress record carries a lease. A request that crashed leaves its
//! record in progress until the lease expires; then the next request with
//! the same fingerprint takes the key over and gets [`Claim::Recovered`],
//! which says that the first run's outcome is uncertain. If the first run
//! was merely slow, its `complete` returns [`Completion::LeaseLost`]. idem
//! reports both, and never silently runs the work twice. Choose leases
//! longer than the work takes; a lease of zero expires at once.
//!
//! Completed records keep key and response together for the retention
//! period ([`DEFAULT_RETENTION`], 24 h) and are purged together.
//!
//! # Cancellation
//!
//! A claim holds its key until the holder completes or releases it, or the
//! lease expires. Code that claims, does the work and completes must not be
//! cut short between the claim and the completion — if its future is
//! dropped there (a client hang-up, a `select!`, a timeout), the key stays
//! claimed until the lease expires, and the retry is told the outcome is
//! uncertain ([`Claim::Recovered`]). Run that sequence on a task of its own
//! and await its handle, as `idem_http`'s layer does.
//!
//! # Bounds
//!
//! Stores are bounded, and a full share degrades only the client that
//! filled it: see [`MemoryStore`] for its per-client and total bounds
//! ([`Error::TooManyKeys`](crate::Error::TooManyKeys), HTTP 429), and how
//! expired records make room by themselves.

use std::time::Duration;

mod canonical;
mod fingerprint;
mod key;
mod memory;
mod policy;
mod response;
mod scope;
mod store;

pub use fingerprint::{Fingerprint, RequestFingerprint};
pub use key::IdempotencyKey;
pub use memory::MemoryStore;
pub use policy::ResponsePolicy;
pub use response::{StoredResponse, TRAILER_PREFIX};
pub use scope::Scope;
pub use store::{Claim, Completion, KeyStore, Lease};

/// How long completed records are kept by default: 24 hours.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

/// The default lease of an in-progress record: 60 seconds.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(60);
