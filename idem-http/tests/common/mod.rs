//! Helpers shared by the layer's test suites.
#![allow(dead_code)] // each test crate uses some of these

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use idem_core::keys::Scope;
use serde_json::Value;
use tower::ServiceExt;

/// Counts handler runs.
#[derive(Clone, Default)]
pub struct Runs(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl Runs {
    /// Counts a run; returns its number (from 1).
    pub fn next(&self) -> usize {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1
    }

    /// How many runs so far.
    pub fn get(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// An endless stream of server-sent events, one every 50 ms; `produced`
/// counts those made.
pub fn ticks(produced: std::sync::Arc<std::sync::atomic::AtomicUsize>) -> Body {
    let events = futures::stream::unfold((), move |()| {
        let produced = std::sync::Arc::clone(&produced);
        async move {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            produced.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Some((
                Ok::<_, std::convert::Infallible>(Bytes::from_static(b"data: tick\n\n")),
                (),
            ))
        }
    });
    Body::from_stream(events)
}

/// The scope of a request: its `x-client-id` header, one operation.
pub fn client_scope(parts: &axum::http::request::Parts) -> Option<Scope> {
    let client = parts.headers.get("x-client-id")?.to_str().ok()?;
    Scope::new(client, "api").ok()
}

/// Sends a request in process and reads the whole response.
pub async fn send(app: &Router, request: Request<Body>) -> (StatusCode, HeaderMap, Bytes) {
    let response = app.clone().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    (
        parts.status,
        parts.headers,
        body.collect().await.unwrap().to_bytes(),
    )
}

/// Asserts an `application/problem+json` answer and returns its body.
pub fn expect_problem(
    status: StatusCode,
    headers: &HeaderMap,
    body: &Bytes,
    expected: StatusCode,
) -> Value {
    assert_eq!(status, expected, "{body:?}");
    assert_eq!(headers["content-type"], "application/problem+json");
    let problem: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(problem["status"], expected.as_u16());
    assert!(!problem["title"].as_str().unwrap().is_empty());
    assert!(problem["type"].as_str().unwrap().starts_with("https://"));
    problem
}

/// A [`MemoryStore`](idem_core::keys::MemoryStore) whose `complete` waits
/// `delay` first, and fails for responses whose body is longer than
/// `max_body` (as a database refuses a value larger than it takes).
#[derive(Clone)]
pub struct Store {
    pub inner: idem_core::keys::MemoryStore,
    pub delay: std::time::Duration,
    pub max_body: usize,
}

impl Default for Store {
    fn default() -> Self {
        Store {
            inner: idem_core::keys::MemoryStore::default(),
            delay: std::time::Duration::ZERO,
            max_body: usize::MAX,
        }
    }
}

#[async_trait::async_trait]
impl idem_core::keys::KeyStore for Store {
    type Error = std::io::Error;

    async fn claim(
        &self,
        scope: &Scope,
        key: &idem_core::keys::IdempotencyKey,
        fingerprint: &idem_core::keys::Fingerprint,
        lease: std::time::Duration,
    ) -> Result<idem_core::keys::Claim, Self::Error> {
        self.inner
            .claim(scope, key, fingerprint, lease)
            .await
            .map_err(std::io::Error::other)
    }

    async fn complete(
        &self,
        lease: &idem_core::keys::Lease,
        response: &idem_core::keys::StoredResponse,
    ) -> Result<idem_core::keys::Completion, Self::Error> {
        tokio::time::sleep(self.delay).await;
        if response.body.len() > self.max_body {
            return Err(std::io::Error::other(
                "the value is larger than the store takes",
            ));
        }
        self.inner
            .complete(lease, response)
            .await
            .map_err(std::io::Error::other)
    }

    async fn release(&self, lease: &idem_core::keys::Lease) -> Result<(), Self::Error> {
        self.inner
            .release(lease)
            .await
            .map_err(std::io::Error::other)
    }

    async fn purge(&self, retention: std::time::Duration) -> Result<u64, Self::Error> {
        self.inner
            .purge(retention)
            .await
            .map_err(std::io::Error::other)
    }
}
