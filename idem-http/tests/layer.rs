//! The Idempotency-Key layer in an axum app, driven in process with
//! `tower::ServiceExt::oneshot`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Request, Response, StatusCode};
use axum::routing::post;
use axum::{Extension, Router};
use idem_core::keys::{Claim, Fingerprint, KeyStore, MemoryStore, ResponsePolicy, Scope};
use idem_http::{ClaimedKey, IdempotencyLayer};
use tokio::sync::{Barrier, Notify};
use tower::ServiceExt;

mod common;
use common::{client_scope, expect_problem, send};

#[derive(Clone, Default)]
struct AppState {
    runs: Arc<AtomicUsize>,
    gate: Arc<Notify>,
}

/// POST /payments: counts its runs and answers 201 with a location header
/// and the run number, or the status asked for in `x-status` (a header
/// outside the fingerprint, so a retry may ask for another one).
async fn pay(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response<Body> {
    let run = state.runs.fetch_add(1, Ordering::SeqCst) + 1;
    let status = headers
        .get("x-status")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(201);
    Response::builder()
        .status(status)
        .header("location", format!("/payments/{run}"))
        .header("content-type", "application/json")
        .body(Body::from(format!(
            r#"{{"run":{run},"bytes":{}}}"#,
            body.len()
        )))
        .unwrap()
}

/// POST /slow: like /payments, but waits until the test opens the gate.
async fn slow(State(state): State<AppState>) -> String {
    let run = state.runs.fetch_add(1, Ordering::SeqCst) + 1;
    state.gate.notified().await;
    format!("slow run {run}")
}

/// POST /claimed: shows the key the layer claimed.
async fn claimed(
    State(state): State<AppState>,
    Extension(claimed): Extension<ClaimedKey>,
) -> String {
    state.runs.fetch_add(1, Ordering::SeqCst);
    format!(
        "{} {} {}",
        claimed.scope.client(),
        claimed.key,
        claimed.recovered
    )
}

fn app_with<K: KeyStore + 'static>(layer: IdempotencyLayer<K>, state: AppState) -> Router {
    Router::new()
        .route("/payments", post(pay).get(|| async { "listing" }))
        .route("/slow", post(slow))
        .route("/claimed", post(claimed))
        .layer(layer)
        .with_state(state)
}

fn app(state: AppState) -> Router {
    app_with(
        IdempotencyLayer::new(MemoryStore::default(), client_scope).body_limit(1024),
        state,
    )
}

fn request(path: &str, key: &str) -> axum::http::request::Builder {
    Request::post(path)
        .header("x-client-id", "acme")
        .header("idempotency-key", key)
}

fn post_json(path: &str, key: &str, body: &str) -> Request<Body> {
    request(path, key)
        .header("content-type", "application/json")
        .body(Body::from(body.to_owned()))
        .unwrap()
}

#[tokio::test]
async fn a_retry_replays_the_stored_status_headers_and_body_without_running_again() {
    let state = AppState::default();
    let app = app(state.clone());
    let first = send(&app, post_json("/payments", "k1", r#"{"amount":100}"#)).await;
    assert_eq!(first.0, StatusCode::CREATED);
    assert!(!first.1.contains_key("idempotent-replayed"));
    for _ in 0..3 {
        let retry = send(&app, post_json("/payments", "k1", r#"{"amount":100}"#)).await;
        assert_eq!(retry.0, first.0);
        assert_eq!(retry.1["location"], "/payments/1");
        assert_eq!(retry.1["content-type"], "application/json");
        assert_eq!(retry.1["idempotent-replayed"], "true");
        assert_eq!(retry.2, first.2);
    }
    assert_eq!(state.runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_request_without_a_key_is_rejected_with_400_and_does_not_run() {
    let state = AppState::default();
    let app = app(state.clone());
    let request = Request::post("/payments")
        .header("x-client-id", "acme")
        .body(Body::empty())
        .unwrap();
    let (status, headers, body) = send(&app, request).await;
    let problem = expect_problem(status, &headers, &body, StatusCode::BAD_REQUEST);
    assert_eq!(problem["title"], "Idempotency key missing");
    assert!(problem["detail"]
        .as_str()
        .unwrap()
        .contains("Idempotency-Key"));
    assert_eq!(state.runs.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn empty_long_non_ascii_and_repeated_keys_are_rejected_with_400() {
    let state = AppState::default();
    let app = app(state.clone());
    let long = "k".repeat(256);
    let cases: Vec<(Vec<&[u8]>, &str)> = vec![
        (vec![b""], "empty"),
        (vec![long.as_bytes()], "longer than 255"),
        (vec!["caf\u{e9}".as_bytes()], "non-ASCII"),
        (vec![b"has space"], "non-ASCII"),
        (vec![b"\"\""], "empty"),
        (vec![b"a", b"b"], "more than once"),
        (vec![b"same", b"same"], "more than once"),
    ];
    for (values, reason) in cases {
        let mut request = Request::post("/payments").header("x-client-id", "acme");
        for value in values {
            request = request.header(
                "idempotency-key",
                axum::http::HeaderValue::from_bytes(value).unwrap(),
            );
        }
        let (status, headers, body) = send(&app, request.body(Body::empty()).unwrap()).await;
        let problem = expect_problem(status, &headers, &body, StatusCode::BAD_REQUEST);
        assert_eq!(problem["title"], "Idempotency key invalid");
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains(reason), "{detail}");
    }
    assert_eq!(state.runs.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_quoted_structured_field_key_is_the_same_key_as_the_bare_one() {
    let state = AppState::default();
    let app = app(state.clone());
    let _ = send(&app, post_json("/payments", "\"k-sf\"", "{}")).await;
    let retry = send(&app, post_json("/payments", "k-sf", "{}")).await;
    assert_eq!(retry.1["idempotent-replayed"], "true");
    assert_eq!(state.runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn the_same_key_with_another_body_path_or_query_is_422_and_does_not_run() {
    let state = AppState::default();
    let app = app(state.clone());
    let _ = send(&app, post_json("/payments", "k2", r#"{"amount":100}"#)).await;
    for request in [
        post_json("/payments", "k2", r#"{"amount":999}"#),
        post_json("/payments?currency=usd", "k2", r#"{"amount":100}"#),
        post_json("/claimed", "k2", r#"{"amount":100}"#),
        request("/payments", "k2")
            .method("PATCH")
            .header("content-type", "application/json")
            .body(Body::from(r#"{"amount":100}"#))
            .unwrap(),
    ] {
        let (status, headers, body) = send(&app, request).await;
        let problem = expect_problem(status, &headers, &body, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(problem["title"], "Idempotency key reused");
    }
    assert_eq!(state.runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn reordered_json_keys_are_the_same_request_and_replay() {
    let state = AppState::default();
    let app = app(state.clone());
    let _ = send(
        &app,
        post_json("/payments", "k3", r#"{"amount":100,"currency":"EUR"}"#),
    )
    .await;
    let retry = send(
        &app,
        post_json("/payments", "k3", r#"{ "currency": "EUR", "amount": 100 }"#),
    )
    .await;
    assert_eq!(retry.0, StatusCode::CREATED);
    assert_eq!(retry.1["idempotent-replayed"], "true");
    assert_eq!(state.runs.load(Ordering::SeqCst), 1);
}

/// Issue 10, item 5: bodies a handler could read differently are another
/// request (422), never a replay of the first one's response.
#[tokio::test]
async fn json_bodies_a_handler_could_read_differently_are_422_not_a_replay() {
    let pairs = [
        (
            r#"{"amount": 18446744073709551616}"#,
            r#"{"amount": 18446744073709551617}"#,
        ),
        (
            r#"{"amount": 0.1}"#,
            r#"{"amount": 0.1000000000000000055511151231257827}"#,
        ),
        (r#"{"amount": 1, "amount": 2}"#, r#"{"amount": 2}"#),
        (r#"{"amount": 1, "amount": 2}"#, r#"{"amount": 1}"#),
        (r#"{"amount": 2}"#, r#"{"amount": 1, "amount": 2}"#),
        (r#"{"amount": 1}"#, r#"{"amount": 1.0}"#),
        (r#"{"amount": 1e2}"#, r#"{"amount": 100}"#),
        (r#"{"amount": -0}"#, r#"{"amount": 0}"#),
        (r#"{"to": "\u00e9"}"#, r#"{"to": "e\u0301"}"#),
        (r#"{"to": "A"}"#, r#"{"to": "\\u0041"}"#),
        (r#"{"a":1}"#, r#"{"a":1"#),
    ];
    let state = AppState::default();
    let app = app(state.clone());
    for (n, (first, second)) in pairs.into_iter().enumerate() {
        let key = format!("k5-{n}");
        let (status, _, _) = send(&app, post_json("/payments", &key, first)).await;
        assert_eq!(status, StatusCode::CREATED, "{first}");
        let (status, headers, body) = send(&app, post_json("/payments", &key, second)).await;
        expect_problem(status, &headers, &body, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(
            !headers.contains_key("idempotent-replayed"),
            "{first} then {second}"
        );
    }
    assert_eq!(state.runs.load(Ordering::SeqCst), pairs.len());
}

/// Item 5, the other way: bodies every JSON parser reads as the same value
/// replay, whatever their member order, whitespace or string escapes.
#[tokio::test]
async fn json_bodies_every_parser_reads_alike_replay() {
    let pairs = [
        (
            r#"{"amount": 18446744073709551616, "to": "x"}"#,
            r#"{"to":"x","amount":18446744073709551616}"#,
        ),
        (
            r#"{"amount": 0.1000000000000000055511151231257827}"#,
            "{\n\"amount\" :\t0.1000000000000000055511151231257827}",
        ),
        (r#"{"to": "\u0041da"}"#, r#"{"to": "Ada"}"#),
        (r#"{"to": "\/"}"#, r#"{"to": "/"}"#),
        (r#"{"\u0074o": "\u00e9"}"#, "{\"to\": \"\u{e9}\"}"),
        (
            r#"{"amount": 1, "amount": 2}"#,
            r#"{"amount": 1, "amount": 2}"#,
        ),
    ];
    let state = AppState::default();
    let app = app(state.clone());
    for (n, (first, second)) in pairs.into_iter().enumerate() {
        let key = format!("k5-same-{n}");
        let original = send(&app, post_json("/payments", &key, first)).await;
        assert_eq!(original.0, StatusCode::CREATED, "{first}");
        let retry = send(&app, post_json("/payments", &key, second)).await;
        assert_eq!(retry.0, StatusCode::CREATED, "{first} then {second}");
        assert_eq!(retry.1["idempotent-replayed"], "true");
        assert_eq!(retry.2, original.2);
    }
    assert_eq!(state.runs.load(Ordering::SeqCst), pairs.len());
}

/// A JSON body nested 100,000 deep is fingerprinted (by its bytes: it is
/// deeper than `Fingerprint::MAX_JSON_DEPTH`) without overflowing the
/// stack, and replays like any other body.
#[tokio::test]
async fn a_body_nested_100_000_deep_is_fingerprinted_and_replayed() {
    let state = AppState::default();
    let app = app_with(
        IdempotencyLayer::new(MemoryStore::default(), client_scope).body_limit(1 << 20),
        state.clone(),
    );
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let first = send(&app, post_json("/payments", "k-deep", &deep)).await;
    assert_eq!(first.0, StatusCode::CREATED);
    let retry = send(&app, post_json("/payments", "k-deep", &deep)).await;
    assert_eq!(retry.1["idempotent-replayed"], "true");
    let other = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
    let (status, headers, body) = send(&app, post_json("/payments", "k-deep", &other)).await;
    expect_problem(status, &headers, &body, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(state.runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_duplicate_while_the_first_runs_gets_409_with_retry_after() {
    let state = AppState::default();
    let app = app_with(
        IdempotencyLayer::new(MemoryStore::default(), client_scope).lease(Duration::from_secs(30)),
        state.clone(),
    );
    let first = tokio::spawn({
        let app = app.clone();
        async move { send(&app, request("/slow", "k4").body(Body::empty()).unwrap()).await }
    });
    while state.runs.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (status, headers, body) =
        send(&app, request("/slow", "k4").body(Body::empty()).unwrap()).await;
    let problem = expect_problem(status, &headers, &body, StatusCode::CONFLICT);
    assert_eq!(problem["title"], "Request in progress");
    let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=30).contains(&retry_after), "{retry_after}");

    state.gate.notify_one();
    assert_eq!(first.await.unwrap().2, "slow run 1");
    let replay = send(&app, request("/slow", "k4").body(Body::empty()).unwrap()).await;
    assert_eq!(replay.2, "slow run 1");
    assert_eq!(replay.1["idempotent-replayed"], "true");
    assert_eq!(state.runs.load(Ordering::SeqCst), 1);
}

/// Dropping the layer's future after the key was claimed (what hyper does
/// when the client hangs up) does not drop the work: the handler finishes,
/// its response is stored and the retry replays it. Over a real socket:
/// `tests/tcp.rs`.
#[tokio::test]
async fn a_dropped_request_future_still_runs_its_claimed_work_to_the_stored_response() {
    let state = AppState::default();
    let app = app(state.clone());
    let first = tokio::spawn({
        let app = app.clone();
        async move {
            send(
                &app,
                request("/slow", "k-drop").body(Body::empty()).unwrap(),
            )
            .await
        }
    });
    while state.runs.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());
    state.gate.notify_one();
    // The handler finishes at once; the key is in progress until then.
    let mut retry = send(
        &app,
        request("/slow", "k-drop").body(Body::empty()).unwrap(),
    )
    .await;
    for _ in 0..200 {
        if retry.0 != StatusCode::CONFLICT {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        retry = send(
            &app,
            request("/slow", "k-drop").body(Body::empty()).unwrap(),
        )
        .await;
    }
    assert_eq!(retry.1["idempotent-replayed"], "true");
    assert_eq!(retry.2, "slow run 1");
    assert_eq!(state.runs.load(Ordering::SeqCst), 1);
}

/// Outside a tokio runtime the layer cannot hand the work to a task: it
/// runs the protocol in place (and says so in its docs).
#[test]
fn outside_a_tokio_runtime_the_layer_runs_in_place() {
    let state = AppState::default();
    let app = app(state.clone());
    let call = |app: &Router| {
        let response = futures::executor::block_on(app.clone().oneshot(post_json(
            "/payments",
            "k-no-rt",
            r#"{"amount":1}"#,
        )))
        .unwrap();
        response.headers().contains_key("idempotent-replayed")
    };
    assert!(!call(&app));
    assert!(call(&app));
    assert_eq!(state.runs.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_two_concurrent_duplicates_run_the_handler_once() {
    let state = AppState::default();
    let app = app(state.clone());
    let barrier = Arc::new(Barrier::new(32));
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let (app, barrier) = (app.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                send(&app, post_json("/payments", "k-race", r#"{"amount":1}"#)).await
            })
        })
        .collect();
    let (mut created, mut conflicts) = (0, 0);
    for task in tasks {
        match task.await.unwrap() {
            (StatusCode::CREATED, headers, body) => {
                assert_eq!(body, r#"{"run":1,"bytes":12}"#);
                assert_eq!(headers["location"], "/payments/1");
                created += 1;
            }
            (StatusCode::CONFLICT, headers, _) => {
                assert!(headers.contains_key("retry-after"));
                conflicts += 1;
            }
            (status, _, body) => panic!("unexpected {status}: {body:?}"),
        }
    }
    assert_eq!(created + conflicts, 32);
    assert!(created >= 1);
    assert_eq!(state.runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn server_errors_429_and_408_are_not_stored_and_release_the_key() {
    let state = AppState::default();
    let app = app(state.clone());
    for status in ["500", "503", "429", "408"] {
        let request = request("/payments", "k5")
            .header("x-status", status)
            .body(Body::empty())
            .unwrap();
        let response = send(&app, request).await;
        assert_eq!(response.0.as_str(), status);
        assert!(!response.1.contains_key("idempotent-replayed"));
    }
    let ok = send(
        &app,
        request("/payments", "k5").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(ok.0, StatusCode::CREATED);
    assert_eq!(state.runs.load(Ordering::SeqCst), 5);
    let replay = send(
        &app,
        request("/payments", "k5").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(replay.1["idempotent-replayed"], "true");
    assert_eq!(state.runs.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn a_decline_is_final_and_replayed_unless_the_policy_says_otherwise() {
    let decline = || {
        request("/payments", "k6")
            .header("x-status", "402")
            .body(Body::empty())
            .unwrap()
    };
    let state = AppState::default();
    let app = app(state.clone());
    let _ = send(&app, decline()).await;
    let replay = send(&app, decline()).await;
    assert_eq!(replay.0, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(replay.1["idempotent-replayed"], "true");
    assert_eq!(state.runs.load(Ordering::SeqCst), 1);

    let state = AppState::default();
    let only_success = ResponsePolicy::new(|status| (200..300).contains(&status));
    let app = app_with(
        IdempotencyLayer::new(MemoryStore::default(), client_scope).policy(only_success),
        state.clone(),
    );
    let _ = send(&app, decline()).await;
    let again = send(&app, decline()).await;
    assert!(!again.1.contains_key("idempotent-replayed"));
    assert_eq!(state.runs.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_body_over_the_limit_is_413_and_does_not_run() {
    let state = AppState::default();
    let app = app(state.clone());
    let declared = post_json("/payments", "k7", &"x".repeat(1025));
    let (status, headers, body) = send(&app, declared).await;
    let problem = expect_problem(status, &headers, &body, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(problem["detail"].as_str().unwrap().contains("1024 bytes"));

    let chunks = (0..3).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; 400])));
    let streamed = request("/payments", "k8")
        .body(Body::from_stream(futures::stream::iter(chunks)))
        .unwrap();
    let (status, headers, body) = send(&app, streamed).await;
    expect_problem(status, &headers, &body, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(state.runs.load(Ordering::SeqCst), 0);

    let at_limit = send(&app, post_json("/payments", "k9", &"x".repeat(1024))).await;
    assert_eq!(at_limit.0, StatusCode::CREATED);
}

#[tokio::test]
async fn other_methods_pass_through_without_a_key() {
    let state = AppState::default();
    let app = app(state.clone());
    let (status, _, body) =
        send(&app, Request::get("/payments").body(Body::empty()).unwrap()).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"listing"[..]));
}

#[tokio::test]
async fn two_clients_with_the_same_key_never_see_each_others_response() {
    let state = AppState::default();
    let app = app(state.clone());
    let as_client = |client: &str| {
        Request::post("/payments")
            .header("x-client-id", client)
            .header("idempotency-key", "shared")
            .body(Body::from("same"))
            .unwrap()
    };
    let a = send(&app, as_client("tenant-a")).await;
    let b = send(&app, as_client("tenant-b")).await;
    assert_eq!(a.1["location"], "/payments/1");
    assert_eq!(b.1["location"], "/payments/2");
    assert!(!b.1.contains_key("idempotent-replayed"));
    let a_again = send(&app, as_client("tenant-a")).await;
    assert_eq!(a_again.1["location"], "/payments/1");
    assert_eq!(state.runs.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_request_the_scope_function_cannot_place_is_400() {
    let state = AppState::default();
    let app = app(state.clone());
    let anonymous = Request::post("/payments")
        .header("idempotency-key", "k10")
        .body(Body::empty())
        .unwrap();
    let (status, headers, body) = send(&app, anonymous).await;
    let problem = expect_problem(status, &headers, &body, StatusCode::BAD_REQUEST);
    assert_eq!(problem["title"], "Client not identified");
    assert_eq!(state.runs.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_crashed_request_is_taken_over_after_its_lease_and_the_handler_is_told() {
    let store = Arc::new(MemoryStore::default());
    let state = AppState::default();
    let app = app_with(
        IdempotencyLayer::new(store.clone(), client_scope),
        state.clone(),
    );
    // A request that claimed the key with a lease that already ran out,
    // then died without completing.
    let scope = Scope::new("acme", "api").unwrap();
    let fingerprint = Fingerprint::of_request("POST", "/claimed", b"");
    let crashed = store
        .claim(
            &scope,
            &"k11".parse().unwrap(),
            &fingerprint,
            Duration::ZERO,
        )
        .await
        .unwrap();
    assert!(matches!(crashed, Claim::New(_)));

    let (status, _, body) = send(
        &app,
        request("/claimed", "k11").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"acme k11 true"[..]));
    let fresh = send(
        &app,
        request("/claimed", "k12").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(fresh.2, "acme k12 false");
}

#[tokio::test]
async fn a_custom_header_and_method_list_are_honoured() {
    let state = AppState::default();
    let layer = IdempotencyLayer::new(MemoryStore::default(), client_scope)
        .header(axum::http::HeaderName::from_static("x-request-key"))
        .methods([axum::http::Method::POST, axum::http::Method::PUT]);
    let app = Router::new()
        .route("/payments", post(pay).put(pay))
        .layer(layer)
        .with_state(state.clone());
    let put = || {
        Request::put("/payments")
            .header("x-client-id", "acme")
            .header("x-request-key", "k13")
            .body(Body::empty())
            .unwrap()
    };
    let _ = send(&app, put()).await;
    assert_eq!(send(&app, put()).await.1["idempotent-replayed"], "true");
    let missing = Request::put("/payments")
        .header("x-client-id", "acme")
        .header("idempotency-key", "k13")
        .body(Body::empty())
        .unwrap();
    let (status, headers, body) = send(&app, missing).await;
    let problem = expect_problem(status, &headers, &body, StatusCode::BAD_REQUEST);
    assert!(problem["detail"]
        .as_str()
        .unwrap()
        .contains("x-request-key"));
    assert_eq!(state.runs.load(Ordering::SeqCst), 1);
}

mod sqlite {
    use super::*;
    use axum::http::HeaderName;
    use idem_sqlx::keys::SqlKeyStore;
    use sqlx::sqlite::SqlitePoolOptions;

    async fn pool() -> sqlx::SqlitePool {
        SqlitePoolOptions::new()
            .max_connections(1)
            .connect("sqlite::memory:")
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn the_layer_replays_from_a_sqlite_key_store() {
        let store = SqlKeyStore::new(pool().await);
        store.install().await.unwrap();
        let state = AppState::default();
        let scope = idem_http::scope_from_header(HeaderName::from_static("x-client-id"), "api");
        let app = app_with(IdempotencyLayer::new(store, scope), state.clone());
        let first = send(&app, post_json("/payments", "k14", "{}")).await;
        let retry = send(&app, post_json("/payments", "k14", "{}")).await;
        assert_eq!(retry.1["idempotent-replayed"], "true");
        assert_eq!((retry.0, retry.2), (first.0, first.2));
        assert_eq!(state.runs.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_failing_store_is_503_and_the_handler_does_not_run() {
        // No `install`: the table is missing, every claim fails.
        let store = SqlKeyStore::new(pool().await);
        let state = AppState::default();
        let app = app_with(IdempotencyLayer::new(store, client_scope), state.clone());
        let (status, headers, body) = send(&app, post_json("/payments", "k15", "{}")).await;
        let problem = expect_problem(status, &headers, &body, StatusCode::SERVICE_UNAVAILABLE);
        assert!(problem["detail"].as_str().unwrap().contains("retry later"));
        assert_eq!(state.runs.load(Ordering::SeqCst), 0);
    }
}

#[tokio::test]
async fn a_run_that_outlives_its_lease_is_taken_over_and_its_late_response_is_not_stored() {
    let state = AppState::default();
    let app = app_with(
        IdempotencyLayer::new(MemoryStore::default(), client_scope)
            .lease(Duration::from_millis(50)),
        state.clone(),
    );
    let slow_request = || request("/slow", "k16").body(Body::empty()).unwrap();
    let spawn = |app: Router| tokio::spawn(async move { send(&app, slow_request()).await });
    let first = spawn(app.clone());
    while state.runs.load(Ordering::SeqCst) < 1 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The first run's lease is over: the retry takes the key over.
    let second = spawn(app.clone());
    while state.runs.load(Ordering::SeqCst) < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    state.gate.notify_waiters();
    let (first, second) = (first.await.unwrap(), second.await.unwrap());
    assert_eq!(first.2, "slow run 1");
    assert_eq!(second.2, "slow run 2");
    // Only the holder of the key stored its response.
    let replay = send(&app, slow_request()).await;
    assert_eq!(replay.1["idempotent-replayed"], "true");
    assert_eq!(replay.2, "slow run 2");
    assert_eq!(state.runs.load(Ordering::SeqCst), 2);
}

/// The default app's routes behind a layer whose key is optional.
fn optional_key_app(state: AppState) -> Router {
    let layer = IdempotencyLayer::new(MemoryStore::default(), client_scope)
        .body_limit(1024)
        .require_key(false);
    Router::new()
        .route("/payments", post(pay))
        .route(
            "/claimed",
            post(|claimed: Option<Extension<ClaimedKey>>| async move {
                claimed.map_or("none".to_owned(), |Extension(c)| c.key.to_string())
            }),
        )
        .layer(layer)
        .with_state(state)
}

#[tokio::test]
async fn with_an_optional_key_a_request_without_it_runs_every_time_untouched() {
    let state = AppState::default();
    let app = optional_key_app(state.clone());
    // No client id (the scope function would refuse it) and a body over
    // the limit (a buffered body would be 413): neither is looked at.
    let keyless = || {
        Request::post("/payments")
            .header("content-type", "application/json")
            .body(Body::from("x".repeat(4096)))
            .unwrap()
    };
    for run in 1..=3 {
        let (status, headers, body) = send(&app, keyless()).await;
        assert_eq!(status, StatusCode::CREATED);
        assert!(!headers.contains_key("idempotent-replayed"));
        assert_eq!(body, format!(r#"{{"run":{run},"bytes":4096}}"#));
    }
    assert_eq!(state.runs.load(Ordering::SeqCst), 3);
    let no_claim = Request::post("/claimed").body(Body::empty()).unwrap();
    assert_eq!(send(&app, no_claim).await.2, "none");
}

#[tokio::test]
async fn with_an_optional_key_a_request_with_it_gets_the_whole_protocol() {
    let state = AppState::default();
    let app = optional_key_app(state.clone());
    let first = send(&app, post_json("/payments", "k-opt", r#"{"amount":1}"#)).await;
    assert_eq!(first.0, StatusCode::CREATED);
    let retry = send(&app, post_json("/payments", "k-opt", r#"{"amount":1}"#)).await;
    assert_eq!(retry.1["idempotent-replayed"], "true");
    assert_eq!(retry.2, first.2);
    let (status, headers, body) =
        send(&app, post_json("/payments", "k-opt", r#"{"amount":2}"#)).await;
    expect_problem(status, &headers, &body, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, headers, body) =
        send(&app, post_json("/payments", "k-big", &"x".repeat(1025))).await;
    expect_problem(status, &headers, &body, StatusCode::PAYLOAD_TOO_LARGE);
    let anonymous = Request::post("/payments")
        .header("idempotency-key", "k-anon")
        .body(Body::empty())
        .unwrap();
    let (status, headers, body) = send(&app, anonymous).await;
    expect_problem(status, &headers, &body, StatusCode::BAD_REQUEST);
    let claimed = send(
        &app,
        request("/claimed", "k-seen").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(claimed.2, "k-seen");
    assert_eq!(state.runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn with_an_optional_key_a_malformed_or_repeated_key_is_still_400() {
    let state = AppState::default();
    let app = optional_key_app(state.clone());
    let long = "k".repeat(256);
    let cases: Vec<Vec<&[u8]>> = vec![
        vec![b""],
        vec![long.as_bytes()],
        vec![b"has space"],
        vec![b"a", b"b"],
    ];
    for values in cases {
        let mut request = Request::post("/payments").header("x-client-id", "acme");
        for value in values {
            request = request.header(
                "idempotency-key",
                axum::http::HeaderValue::from_bytes(value).unwrap(),
            );
        }
        let (status, headers, body) = send(&app, request.body(Body::empty()).unwrap()).await;
        let problem = expect_problem(status, &headers, &body, StatusCode::BAD_REQUEST);
        assert_eq!(problem["title"], "Idempotency key invalid");
    }
    assert_eq!(state.runs.load(Ordering::SeqCst), 0);
}

fn as_client(client: &str, key: &str) -> Request<Body> {
    Request::post("/payments")
        .header("x-client-id", client)
        .header("idempotency-key", key)
        .body(Body::from("amount=1"))
        .unwrap()
}

/// Issue 10, item 9, exactly: over `MemoryStore::default()`, client A sends
/// 10,000 requests with distinct keys, then client B sends its first. A
/// gets 429 with `Retry-After` once over its share (1,000), and nothing runs
/// for those; B's handler runs. A's earlier keys still replay.
#[tokio::test]
async fn one_client_flooding_the_default_store_gets_429_and_another_client_is_served() {
    let state = AppState::default();
    let app = app_with(
        IdempotencyLayer::new(MemoryStore::default(), client_scope),
        state.clone(),
    );
    let mut refused = 0;
    for n in 0..10_000 {
        let (status, headers, body) = send(&app, as_client("client-a", &format!("a-{n}"))).await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            let problem = expect_problem(status, &headers, &body, StatusCode::TOO_MANY_REQUESTS);
            assert_eq!(problem["title"], "Too many idempotency keys");
            let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
            // A's oldest record expires a day after it completed.
            assert!((86_000..=86_400).contains(&retry_after), "{retry_after}");
            refused += 1;
        } else {
            assert_eq!(status, StatusCode::CREATED, "request {n}: {body:?}");
        }
    }
    assert_eq!(refused, 9_000);
    assert_eq!(state.runs.load(Ordering::SeqCst), 1_000);

    let (status, headers, _) = send(&app, as_client("client-b", "b-1")).await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(!headers.contains_key("idempotent-replayed"));
    assert_eq!(state.runs.load(Ordering::SeqCst), 1_001);
    let replay = send(&app, as_client("client-a", "a-0")).await;
    assert_eq!(replay.1["idempotent-replayed"], "true");
}

/// A 429 is not stored: once the client's records expire (no purge), the
/// same key runs.
#[tokio::test]
async fn a_429_is_not_stored_and_expired_records_make_room_by_themselves() {
    let state = AppState::default();
    let retention = Duration::from_millis(300);
    let store = MemoryStore::new(100)
        .with_client_limit(2)
        .with_retention(retention);
    let app = app_with(IdempotencyLayer::new(store, client_scope), state.clone());
    for key in ["a-1", "a-2"] {
        assert_eq!(send(&app, as_client("a", key)).await.0, StatusCode::CREATED);
    }
    let (status, headers, _) = send(&app, as_client("a", "a-3")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers["retry-after"], "1");
    tokio::time::sleep(retention + Duration::from_millis(100)).await;
    let (status, headers, _) = send(&app, as_client("a", "a-3")).await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(!headers.contains_key("idempotent-replayed"));
    assert_eq!(state.runs.load(Ordering::SeqCst), 3);
}

/// More clients than the store was sized for: a claim of a new key is 503
/// with `Retry-After` (nothing runs) until records expire; stored
/// responses still replay.
#[tokio::test]
async fn a_store_full_of_live_records_is_503_with_retry_after() {
    let state = AppState::default();
    let store = MemoryStore::new(4).with_client_limit(2);
    let app = app_with(IdempotencyLayer::new(store, client_scope), state.clone());
    for (client, key) in [("a", "1"), ("a", "2"), ("b", "1"), ("b", "2")] {
        assert_eq!(
            send(&app, as_client(client, key)).await.0,
            StatusCode::CREATED
        );
    }
    let (status, headers, body) = send(&app, as_client("c", "1")).await;
    let problem = expect_problem(status, &headers, &body, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(problem["title"], "Idempotency store full");
    assert!(headers.contains_key("retry-after"));
    assert_eq!(
        send(&app, as_client("a", "1")).await.1["idempotent-replayed"],
        "true"
    );
    assert_eq!(state.runs.load(Ordering::SeqCst), 4);
}
