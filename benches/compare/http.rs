//! f, in process: the cost of `IdempotencyLayer` (over the memory store)
//! per request, first execution and replay, against the same axum router
//! without the layer, driven by `tower::ServiceExt::oneshot`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::routing::post;
use axum::Router;
use http::{Request, StatusCode};
use idem::keys::{MemoryStore, Scope};
use idem_http::{IdempotencyLayer, REPLAYED_HEADER};
use tower::ServiceExt;

use crate::report::{Goal, Row};
use crate::runner::{compare, Hook, Op, Side, Timing};

/// A router whose handler counts its calls.
fn router(calls: Arc<AtomicUsize>) -> Router {
    Router::new().route(
        "/payments",
        post(move || async move {
            calls.fetch_add(1, Ordering::Relaxed);
            (StatusCode::CREATED, "paid")
        }),
    )
}

fn with_layer(calls: Arc<AtomicUsize>) -> Router {
    router(calls).layer(IdempotencyLayer::new(
        MemoryStore::new(usize::MAX),
        |parts| {
            let client = parts.headers.get("x-client-id")?.to_str().ok()?;
            Scope::new(client, "payments").ok()
        },
    ))
}

fn request(key: &str) -> Request<Body> {
    Request::post("/payments")
        .header("x-client-id", "acme")
        .header("idempotency-key", key)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Body::from("amount=100"))
        .expect("a valid request")
}

/// Sends one request and reads the whole response; `true` if replayed.
async fn send(app: &Router, key: &str) -> bool {
    let response = app.clone().oneshot(request(key)).await.expect("infallible");
    assert_eq!(response.status(), StatusCode::CREATED);
    let replayed = response.headers().contains_key(REPLAYED_HEADER);
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("a buffered body");
    assert_eq!(&body[..], b"paid");
    replayed
}

/// Checks the handler ran exactly `expected(ops)` times in a round.
fn calls_hook<'a>(calls: &'a Arc<AtomicUsize>, expected: fn(usize) -> usize) -> Hook<'a> {
    Box::new(move |ops| {
        let calls = Arc::clone(calls);
        Box::pin(async move {
            let ran = calls.swap(0, Ordering::SeqCst);
            assert_eq!(ran, expected(ops), "handler calls in a round");
        })
    })
}

fn reset_hook(calls: &Arc<AtomicUsize>) -> Hook<'_> {
    Box::new(move |_| {
        calls.store(0, Ordering::SeqCst);
        Box::pin(async {})
    })
}

fn side<'a>(op: Op, calls: &'a Arc<AtomicUsize>, expected: fn(usize) -> usize) -> Side<'a> {
    Side {
        op,
        max_ops: usize::MAX,
        prepare: reset_hook(calls),
        verify: calls_hook(calls, expected),
    }
}

/// The layer's first execution and replay, each against the bare router.
pub async fn layer(timing: &Timing, tasks: usize, mode: &'static str) -> Vec<Row> {
    let bare_calls = Arc::new(AtomicUsize::new(0));
    let bare_app = router(Arc::clone(&bare_calls));
    let bare = || {
        let app = bare_app.clone();
        let op: Op = Arc::new(move |_| {
            let app = app.clone();
            Box::pin(async move {
                assert!(!send(&app, "unused").await);
            })
        });
        side(op, &bare_calls, |ops| ops)
    };

    // First execution: a key never seen before on every request.
    let first_calls = Arc::new(AtomicUsize::new(0));
    let first_app = with_layer(Arc::clone(&first_calls));
    let fresh = Arc::new(AtomicUsize::new(0));
    let first: Op = Arc::new(move |_| {
        let app = first_app.clone();
        let key = format!("key-{}", fresh.fetch_add(1, Ordering::Relaxed));
        Box::pin(async move {
            assert!(!send(&app, &key).await, "a fresh key runs");
        })
    });
    let first = side(first, &first_calls, |ops| ops);
    let mut first_row = row(mode, "layer first execution vs no layer");
    (first_row.base, first_row.idem) = compare(timing, tasks, false, &bare(), &first).await;

    // Replay: one key, completed once before the rounds.
    let replay_calls = Arc::new(AtomicUsize::new(0));
    let replay_app = with_layer(Arc::clone(&replay_calls));
    assert!(!send(&replay_app, "replayed-key").await);
    let replay: Op = Arc::new(move |_| {
        let app = replay_app.clone();
        Box::pin(async move {
            assert!(send(&app, "replayed-key").await, "a completed key replays");
        })
    });
    let replay = side(replay, &replay_calls, |_| 0);
    let mut replay_row = row(mode, "layer replay vs no layer");
    (replay_row.base, replay_row.idem) = compare(timing, tasks, false, &bare(), &replay).await;
    vec![first_row, replay_row]
}

fn row(mode: &'static str, title: &'static str) -> Row {
    Row {
        backend: "in process",
        mode,
        id: "f",
        title,
        per_op: 1,
        goal: Goal::Reported,
        base: Default::default(),
        idem: Default::default(),
    }
}
