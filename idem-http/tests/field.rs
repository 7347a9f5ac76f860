//! Faults other idempotency middlewares shipped, tried on the layer
//! (issue 10, "Also"; `docs/guarantees.md`, "Inputs from the field"):
//! replays that re-send credentials, unbounded response buffering,
//! fingerprints blind to the media type, cached refusals that block a
//! valid retry, and a different payload sent while the first runs.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderName, Request, Response, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use http_body_util::BodyExt;
use idem_core::keys::{Claim, Fingerprint, KeyStore, MemoryStore, Scope, StoredResponse};
use idem_http::{IdempotencyLayer, StoredHeaders};
use serde_json::Value;
use tokio::sync::mpsc;
use tower::ServiceExt;

mod common;
use common::{client_scope, expect_problem, send, Runs, Store};

fn post_to(path: &str, key: &str) -> axum::http::request::Builder {
    Request::post(path)
        .header("x-client-id", "acme")
        .header("idempotency-key", key)
}

fn layer() -> IdempotencyLayer<MemoryStore> {
    IdempotencyLayer::new(MemoryStore::default(), client_scope)
}

/// Waits for `future`, failing the test instead of hanging.
async fn within<F: std::future::Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(10), future)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

// ---------------------------------------------------------------------------
// 1. Replays never re-send credentials or session state.

/// A login-like handler: a session cookie, an authentication challenge
/// and token headers beside ordinary ones.
fn session_app(runs: Runs, layer: IdempotencyLayer<MemoryStore>) -> Router {
    Router::new()
        .route(
            "/sessions",
            post(move || async move {
                let run = runs.next();
                Response::builder()
                    .status(StatusCode::CREATED)
                    .header("location", format!("/sessions/{run}"))
                    .header("x-request-id", format!("req-{run}"))
                    .header("set-cookie", format!("sid=secret-{run}; HttpOnly"))
                    .header("set-cookie", "csrf=c-1")
                    .header("www-authenticate", "Bearer realm=\"api\"")
                    .header("authentication-info", "nextnonce=\"n1\"")
                    .header("x-auth-token", "t-1")
                    .header("x-api-key", "k-1")
                    .header("x-session-id", "s-1")
                    .body(Body::from(format!("session {run}")))
                    .unwrap()
            }),
        )
        .layer(layer)
}

const CREDENTIAL_HEADERS: [&str; 6] = [
    "set-cookie",
    "www-authenticate",
    "authentication-info",
    "x-auth-token",
    "x-api-key",
    "x-session-id",
];

/// granit-fx/granit-dotnet#1151 (VULN-200): a replay re-sent the first
/// caller's `Set-Cookie` and authentication challenge. The first caller
/// gets every header; the stored record and every replay carry none of the
/// credential or session headers, and keep the ordinary ones.
#[tokio::test]
async fn replays_never_resend_credentials_or_session_state() {
    let runs = Runs::default();
    let store = MemoryStore::default();
    let app = session_app(
        runs.clone(),
        IdempotencyLayer::new(store.clone(), client_scope),
    );
    let first = send(
        &app,
        post_to("/sessions", "s1").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(first.0, StatusCode::CREATED);
    for name in CREDENTIAL_HEADERS {
        assert!(first.1.contains_key(name), "the caller gets {name}");
    }
    assert_eq!(first.1.get_all("set-cookie").iter().count(), 2);

    let replay = send(
        &app,
        post_to("/sessions", "s1").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(replay.1["idempotent-replayed"], "true");
    for name in CREDENTIAL_HEADERS {
        assert!(!replay.1.contains_key(name), "{name} was replayed");
    }
    assert_eq!(replay.1["location"], "/sessions/1");
    assert_eq!(replay.1["x-request-id"], "req-1");
    assert_eq!(replay.2, "session 1");

    // Nor is any of them kept in the store.
    let scope = Scope::new("acme", "api").unwrap();
    let fingerprint = Fingerprint::of_request("POST", "/sessions", b"");
    let claim = store
        .claim(
            &scope,
            &"s1".parse().unwrap(),
            &fingerprint,
            Duration::from_secs(1),
        )
        .await
        .unwrap();
    let Claim::Replay(stored) = claim else {
        panic!("{claim:?}")
    };
    for name in CREDENTIAL_HEADERS {
        assert_eq!(stored.header(name), None, "{name} was stored");
    }
    assert_eq!(runs.get(), 1);
}

/// univeros/framework#178: stored headers on an allow-list. Both an
/// allow-list and a cookie the application chooses to replay work.
#[tokio::test]
async fn the_stored_headers_are_configurable() {
    let runs = Runs::default();
    let only = layer().stored_headers(StoredHeaders::only([axum::http::header::LOCATION]));
    let app = session_app(runs.clone(), only);
    let _ = send(
        &app,
        post_to("/sessions", "s2").body(Body::empty()).unwrap(),
    )
    .await;
    let replay = send(
        &app,
        post_to("/sessions", "s2").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(replay.1["location"], "/sessions/1");
    assert!(!replay.1.contains_key("x-request-id"));
    assert!(!replay.1.contains_key("set-cookie"));

    let cookies = layer().stored_headers(
        StoredHeaders::default()
            .allow([axum::http::header::SET_COOKIE])
            .deny([HeaderName::from_static("x-request-id")]),
    );
    let app = session_app(runs.clone(), cookies);
    let _ = send(
        &app,
        post_to("/sessions", "s3").body(Body::empty()).unwrap(),
    )
    .await;
    let replay = send(
        &app,
        post_to("/sessions", "s3").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(replay.1.get_all("set-cookie").iter().count(), 2);
    assert!(!replay.1.contains_key("x-request-id"));
    assert!(!replay.1.contains_key("www-authenticate"));
    assert_eq!(runs.get(), 2);
}

// ---------------------------------------------------------------------------
// 2. Responses larger than the limit, streamed, slow or endless.

/// A handler answering `size` bytes with a known length.
fn sized_app(runs: Runs, layer: IdempotencyLayer<impl KeyStore + 'static>, size: usize) -> Router {
    Router::new()
        .route(
            "/export",
            post(move || async move {
                runs.next();
                vec![b'x'; size]
            }),
        )
        .layer(layer)
}

fn expect_not_kept(reply: &(StatusCode, axum::http::HeaderMap, Bytes), original: u16) {
    let problem = expect_problem(reply.0, &reply.1, &reply.2, StatusCode::GONE);
    assert_eq!(problem["title"], "Response not kept");
    assert_eq!(problem["original_status"], original);
    assert_eq!(reply.1["idempotent-replayed"], "true");
}

/// granit VULN-201: a response larger than the limit reaches its caller
/// whole; the key is completed with a final 410 instead, so retries never
/// run the work again.
#[tokio::test]
async fn a_response_larger_than_the_limit_reaches_its_caller_and_retries_get_410_without_running() {
    let runs = Runs::default();
    let app = sized_app(runs.clone(), layer().response_limit(1024), 64 * 1024);
    let first = send(&app, post_to("/export", "big").body(Body::empty()).unwrap()).await;
    assert_eq!(first.0, StatusCode::OK);
    assert_eq!(first.2.len(), 64 * 1024);
    for _ in 0..3 {
        let retry = send(&app, post_to("/export", "big").body(Body::empty()).unwrap()).await;
        expect_not_kept(&retry, 200);
    }
    // At the limit (headers count: `content-type` is 38 bytes here), the
    // response is stored and replayed.
    let runs = Runs::default();
    let head = "content-type".len() + "application/octet-stream".len();
    let app = sized_app(runs.clone(), layer().response_limit(1024 + head), 1024);
    let _ = send(
        &app,
        post_to("/export", "fits").body(Body::empty()).unwrap(),
    )
    .await;
    let replay = send(
        &app,
        post_to("/export", "fits").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(replay.1["idempotent-replayed"], "true");
    assert_eq!(replay.2.len(), 1024);
    assert_eq!(runs.get(), 1);
}

/// A store that cannot hold a response (MySQL's `max_allowed_packet`, a
/// failing connection) used to leave the key claimed until its lease ran
/// out, and the retry then ran the work again. The 410 is stored instead.
#[tokio::test]
async fn a_response_the_store_cannot_hold_is_answered_410_and_never_runs_again() {
    let runs = Runs::default();
    let store = Store {
        // Room for the 410's problem document, not for the response.
        max_body: 1000,
        ..Store::default()
    };
    let layer = IdempotencyLayer::new(store, client_scope).lease(Duration::from_millis(50));
    let app = sized_app(runs.clone(), layer, 4000);
    let first = send(&app, post_to("/export", "k").body(Body::empty()).unwrap()).await;
    assert_eq!((first.0, first.2.len()), (StatusCode::OK, 4000));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let retry = send(&app, post_to("/export", "k").body(Body::empty()).unwrap()).await;
    expect_not_kept(&retry, 200);
    assert_eq!(runs.get(), 1);
}

/// A route whose handler streams what the test sends on a channel.
fn streaming_app<K: KeyStore + 'static>(
    runs: Runs,
    layer: IdempotencyLayer<K>,
) -> (Router, StreamFeed) {
    let feeds: Arc<Mutex<Vec<mpsc::Receiver<Bytes>>>> = Arc::default();
    let handler_feeds = Arc::clone(&feeds);
    let app = Router::new()
        .route(
            "/stream",
            post(move || async move {
                runs.next();
                let rx = handler_feeds.lock().unwrap().pop().expect("a feed per run");
                let chunks = futures::stream::unfold(rx, |mut rx| async move {
                    let chunk = rx.recv().await?;
                    Some((Ok::<_, Infallible>(chunk), rx))
                });
                Body::from_stream(chunks)
            }),
        )
        .layer(layer);
    (app, StreamFeed(feeds))
}

/// Hands the next run of `/stream` the chunks the test sends.
struct StreamFeed(Arc<Mutex<Vec<mpsc::Receiver<Bytes>>>>);

impl StreamFeed {
    fn next_run(&self) -> mpsc::Sender<Bytes> {
        let (tx, rx) = mpsc::channel(64);
        self.0.lock().unwrap().push(rx);
        tx
    }
}

/// A body that streams slowly reaches the client chunk by chunk (the
/// layer does not hold it back until it ends); a retry meanwhile is 409,
/// and once it ended, the retry replays the whole body.
/// The store takes 100 ms to store, so a body that ended before its
/// record was stored would get the retry a 409.
#[tokio::test]
async fn a_slow_stream_reaches_its_caller_as_it_comes_and_is_replayed_once_it_ended() {
    let runs = Runs::default();
    let store = Store {
        delay: Duration::from_millis(100),
        ..Store::default()
    };
    let (app, feed) = streaming_app(runs.clone(), IdempotencyLayer::new(store, client_scope));
    let tx = feed.next_run();
    let request = || post_to("/stream", "slow").body(Body::empty()).unwrap();
    let response = within("the head", app.clone().oneshot(request()))
        .await
        .unwrap();
    let mut body = response.into_body();
    tx.send(Bytes::from_static(b"event 1\n")).await.unwrap();
    let frame = within("the first chunk", body.frame())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(frame.into_data().unwrap(), "event 1\n");

    let (status, headers, _) = send(&app, request()).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(headers.contains_key("retry-after"));

    tx.send(Bytes::from_static(b"event 2\n")).await.unwrap();
    drop(tx);
    let rest = within("the rest", body.collect()).await.unwrap().to_bytes();
    assert_eq!(rest, "event 2\n");
    // The end of the body reached the client after the record was stored.
    let replay = send(&app, request()).await;
    assert_eq!(replay.1["idempotent-replayed"], "true");
    assert_eq!(replay.2, "event 1\nevent 2\n");
    assert_eq!(runs.get(), 1);
}

/// A stream that crosses the limit: the key is completed with the 410 the
/// moment it does (a retry gets it while the stream still runs), and the
/// caller still gets the whole body.
#[tokio::test]
async fn a_stream_crossing_the_limit_is_final_at_once_and_its_caller_gets_all_of_it() {
    let runs = Runs::default();
    let (app, feed) = streaming_app(runs.clone(), layer().response_limit(1000));
    let tx = feed.next_run();
    let request = || post_to("/stream", "cross").body(Body::empty()).unwrap();
    let response = within("the head", app.clone().oneshot(request()))
        .await
        .unwrap();
    let mut body = response.into_body();
    let mut received = Vec::new();
    for n in 0..6 {
        tx.send(Bytes::from(vec![b'0' + n; 200])).await.unwrap();
        let frame = within("a chunk", body.frame()).await.unwrap().unwrap();
        received.extend_from_slice(&frame.into_data().unwrap());
    }
    // 1,200 bytes: over the limit, the stream has not ended.
    let retry = send(&app, request()).await;
    expect_not_kept(&retry, 200);
    for n in 6..10 {
        tx.send(Bytes::from(vec![b'0' + n; 200])).await.unwrap();
    }
    drop(tx);
    let rest = within("the rest", body.collect()).await.unwrap().to_bytes();
    received.extend_from_slice(&rest);
    assert_eq!(received.len(), 2000);
    assert!(received.ends_with(&[b'9'; 200]));
    expect_not_kept(&send(&app, request()).await, 200);
    assert_eq!(runs.get(), 1);
}

/// An endless stream (server-sent events) never leaves its key in
/// progress, and the layer never reads it further ahead of the client
/// than the limit: past it, the client's reading drives the body.
#[tokio::test]
async fn an_endless_stream_is_final_after_the_limit_and_is_read_no_faster_than_its_caller() {
    let runs = Runs::default();
    let produced = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&produced);
    let handler_runs = runs.clone();
    let app = Router::new()
        .route(
            "/events",
            post(move || async move {
                handler_runs.next();
                let events = futures::stream::repeat_with(move || {
                    counter.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, Infallible>(Bytes::from(vec![b'e'; 1024]))
                });
                Body::from_stream(events)
            }),
        )
        .layer(layer().response_limit(4096));
    let request = || post_to("/events", "sse").body(Body::empty()).unwrap();
    let response = within("the head", app.clone().oneshot(request()))
        .await
        .unwrap();
    let mut body = response.into_body();
    for received in 1..=200 {
        let frame = within("an event", body.frame()).await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap().len(), 1024);
        // Four events fit the limit, the fifth crosses it; after that the
        // body is read only as the client reads.
        let ahead = produced.load(Ordering::SeqCst) - received;
        assert!(ahead <= 4, "{ahead} events read ahead of the client");
        if received % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    expect_not_kept(&send(&app, request()).await, 200);
    drop(body);
    expect_not_kept(&send(&app, request()).await, 200);
    assert_eq!(runs.get(), 1);
}

/// A client that hangs up in the middle of a stream within the limit: the
/// layer reads the stream to its end, stores it, and the retry replays it.
#[tokio::test]
async fn a_caller_that_drops_a_stream_midway_gets_the_whole_body_on_retry() {
    let runs = Runs::default();
    let (app, feed) = streaming_app(runs.clone(), layer());
    let tx = feed.next_run();
    let request = || post_to("/stream", "gone").body(Body::empty()).unwrap();
    let response = within("the head", app.clone().oneshot(request()))
        .await
        .unwrap();
    let mut body = response.into_body();
    tx.send(Bytes::from_static(b"part 1;")).await.unwrap();
    within("the first chunk", body.frame())
        .await
        .unwrap()
        .unwrap();
    drop(body);
    tx.send(Bytes::from_static(b"part 2;")).await.unwrap();
    tx.send(Bytes::from_static(b"part 3")).await.unwrap();
    drop(tx);
    let mut replay = send(&app, request()).await;
    for _ in 0..200 {
        if replay.0 != StatusCode::CONFLICT {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        replay = send(&app, request()).await;
    }
    assert_eq!(replay.1["idempotent-replayed"], "true");
    assert_eq!(replay.2, "part 1;part 2;part 3");
    assert_eq!(runs.get(), 1);
}

/// A stream that fails before the limit: the caller's body ends with an
/// error (not a clean end that looks complete), the key is released and
/// the retry runs again.
#[tokio::test]
async fn a_stream_that_fails_ends_with_an_error_and_releases_the_key() {
    let runs = Runs::default();
    let handler_runs = runs.clone();
    let app = Router::new()
        .route(
            "/broken",
            post(move || async move {
                if handler_runs.next() == 1 {
                    let chunks = futures::stream::iter([
                        Ok(Bytes::from_static(b"half")),
                        Err(std::io::Error::other("the disk failed")),
                    ]);
                    Body::from_stream(chunks)
                } else {
                    Body::from("whole")
                }
            }),
        )
        .layer(layer());
    let request = || post_to("/broken", "b").body(Body::empty()).unwrap();
    let response = app.clone().oneshot(request()).await.unwrap();
    assert!(response.into_body().collect().await.is_err());
    let retry = send(&app, request()).await;
    assert_eq!((retry.0, &retry.2[..]), (StatusCode::OK, &b"whole"[..]));
    assert!(!retry.1.contains_key("idempotent-replayed"));
    assert_eq!(runs.get(), 2);
}

// ---------------------------------------------------------------------------
// 3. The media type and the content coding are part of the request.

/// A handler that reads JSON (axum answers 415 to any other media type).
fn json_app(runs: Runs, layer: IdempotencyLayer<MemoryStore>) -> Router {
    Router::new()
        .route(
            "/payments",
            post(move |Json(body): Json<Value>| async move {
                let run = runs.next();
                (
                    StatusCode::CREATED,
                    format!("run {run}: {}", body["amount"]),
                )
            }),
        )
        .layer(layer)
}

fn typed(key: &str, content_type: Option<&str>, body: &'static str) -> Request<Body> {
    let mut request = post_to("/payments", key);
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    request.body(Body::from(body)).unwrap()
}

/// mikkelchokolate/Veil#65: the same key and body with another media type
/// replayed the JSON success, although the handler answers 415 to it.
#[tokio::test]
async fn the_same_body_with_another_media_type_is_422_not_a_replay() {
    let runs = Runs::default();
    let app = json_app(runs.clone(), layer());
    let body = r#"{"amount": 100}"#;
    let first = send(&app, typed("m1", Some("application/json"), body)).await;
    assert_eq!(first.0, StatusCode::CREATED);
    for other in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("application/json; charset=iso-8859-1"),
        Some("application/vnd.api+json"),
        Some("not a media type"),
        None,
    ] {
        let (status, headers, reply) = send(&app, typed("m1", other, body)).await;
        expect_problem(status, &headers, &reply, StatusCode::UNPROCESSABLE_ENTITY);
    }
    // With a key of its own, the handler's answer to that media type.
    let (status, _, _) = send(&app, typed("m2", Some("text/plain"), body)).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(runs.get(), 1);
}

/// The other way: spellings of the same media type replay.
#[tokio::test]
async fn spellings_of_the_same_media_type_replay() {
    let runs = Runs::default();
    let app = json_app(runs.clone(), layer());
    let body = r#"{"amount": 100}"#;
    let _ = send(&app, typed("m3", Some("application/json"), body)).await;
    for same in [
        "Application/JSON",
        "application/json; charset=utf-8",
        "application/json;charset=\"UTF-8\"",
        "application/json;   Charset=utf-8",
    ] {
        let replay = send(&app, typed("m3", Some(same), body)).await;
        assert_eq!(replay.1["idempotent-replayed"], "true", "{same}");
    }
    assert_eq!(runs.get(), 1);
}

/// A handler that compares `Content-Type` as a string: listing the header
/// in `fingerprint_headers` makes every spelling a request of its own.
#[tokio::test]
async fn listing_content_type_compares_its_exact_bytes() {
    let runs = Runs::default();
    let app = json_app(
        runs.clone(),
        layer().fingerprint_headers([http::header::CONTENT_TYPE]),
    );
    let body = r#"{"amount": 100}"#;
    let _ = send(
        &app,
        typed("m9", Some("application/json; charset=utf-8"), body),
    )
    .await;
    let same = send(
        &app,
        typed("m9", Some("application/json; charset=utf-8"), body),
    )
    .await;
    assert_eq!(same.1["idempotent-replayed"], "true");
    for other in [
        "application/json;charset=utf-8",
        "application/json",
        "Application/JSON; charset=utf-8",
    ] {
        let (status, headers, reply) = send(&app, typed("m9", Some(other), body)).await;
        expect_problem(status, &headers, &reply, StatusCode::UNPROCESSABLE_ENTITY);
    }
    assert_eq!(runs.get(), 1);
}

/// Requests without a media type, or with `application/json`, keep the
/// fingerprint they had before media types were fingerprinted: keys an
/// earlier version stored still replay after an upgrade.
#[tokio::test]
async fn keys_stored_before_media_types_were_fingerprinted_still_replay() {
    let store = MemoryStore::default();
    let scope = Scope::new("acme", "api").unwrap();
    for (key, fingerprint) in [
        (
            "old-json",
            Fingerprint::of_json_body("POST", "/payments", br#"{"amount":1}"#),
        ),
        (
            "old-raw",
            Fingerprint::of_request("POST", "/payments", b"amount=1"),
        ),
    ] {
        let lease = match store
            .claim(
                &scope,
                &key.parse().unwrap(),
                &fingerprint,
                Duration::from_secs(5),
            )
            .await
            .unwrap()
        {
            Claim::New(lease) => lease,
            other => panic!("{other:?}"),
        };
        let stored = StoredResponse::new(201, format!("stored {key}"));
        let _ = store.complete(&lease, &stored).await.unwrap();
    }
    let runs = Runs::default();
    let app = json_app(runs.clone(), IdempotencyLayer::new(store, client_scope));
    let json = send(
        &app,
        typed("old-json", Some("application/json"), r#"{ "amount": 1 }"#),
    )
    .await;
    assert_eq!(json.2, "stored old-json");
    let raw = send(&app, typed("old-raw", None, "amount=1")).await;
    assert_eq!(raw.2, "stored old-raw");
    assert_eq!(runs.get(), 0);
}

fn coded(key: &str, coding: Option<&str>, body: &'static [u8]) -> Request<Body> {
    let mut request = post_to("/payments", key).header("content-type", "application/json");
    if let Some(coding) = coding {
        request = request.header("content-encoding", coding);
    }
    request.body(Body::from(body)).unwrap()
}

/// The content coding says how to read the bytes: the same bytes with and
/// without `Content-Encoding: gzip` are different requests. Other
/// spellings of a coding (`X-GZIP`, `x-gzip`, `identity, gzip`) are other
/// requests too: decoders differ on them (tower-http's matches exact
/// lower-case names and answers 415 to the rest), so a stored 415 must not
/// answer the corrected spelling. A body compressed again by a retrying
/// client has other bytes, so it is 422 unless a decompression layer sits
/// in front of this one (the README says where).
#[tokio::test]
async fn the_content_coding_is_part_of_the_request() {
    let runs = Runs::default();
    let app = Router::new()
        .route(
            "/payments",
            post({
                let runs = runs.clone();
                move || async move {
                    runs.next();
                    StatusCode::CREATED
                }
            }),
        )
        .layer(layer());
    let gzip_a: &[u8] = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03(compressed once)";
    let gzip_b: &[u8] = b"\x1f\x8b\x08\x00\x01\x00\x00\x00\x00\x03(compressed again)";
    assert_eq!(
        send(&app, coded("c1", Some("gzip"), gzip_a)).await.0,
        StatusCode::CREATED
    );
    let same = send(&app, coded("c1", Some("gzip"), gzip_a)).await;
    assert_eq!(same.1["idempotent-replayed"], "true");
    for (coding, body) in [
        (None, gzip_a),
        (Some("br"), gzip_a),
        (Some("gzip"), gzip_b),
        (Some("GZIP"), gzip_a),
        (Some("x-gzip"), gzip_a),
        (Some("identity, gzip"), gzip_a),
    ] {
        let (status, headers, reply) = send(&app, coded("c1", coding, body)).await;
        expect_problem(status, &headers, &reply, StatusCode::UNPROCESSABLE_ENTITY);
    }
    assert_eq!(runs.get(), 1);
}

/// Headers a handler reads that change what the request does can be
/// added to the fingerprint.
#[tokio::test]
async fn configured_headers_are_part_of_the_fingerprint() {
    let runs = Runs::default();
    let version = HeaderName::from_static("x-api-version");
    let app = json_app(runs.clone(), layer().fingerprint_headers([version]));
    let with = |key: &str, value: Option<&str>| {
        let mut request = post_to("/payments", key).header("content-type", "application/json");
        if let Some(value) = value {
            request = request.header("x-api-version", value);
        }
        request.body(Body::from(r#"{"amount":1}"#)).unwrap()
    };
    let _ = send(&app, with("v1", Some("2024-01-01"))).await;
    assert_eq!(
        send(&app, with("v1", Some("2024-01-01"))).await.1["idempotent-replayed"],
        "true"
    );
    for other in [Some("2025-01-01"), Some(""), None] {
        let (status, headers, body) = send(&app, with("v1", other)).await;
        expect_problem(status, &headers, &body, StatusCode::UNPROCESSABLE_ENTITY);
    }
    assert_eq!(runs.get(), 1);
}

// ---------------------------------------------------------------------------
// 4. Refusals that invite a retry are not cached; final ones are.

/// A handler answering the status in `x-status` (outside the fingerprint,
/// as credentials and `If-Match` are), 201 without it.
fn status_app(runs: Runs) -> Router {
    Router::new()
        .route(
            "/verify",
            post(move |headers: axum::http::HeaderMap| async move {
                let run = runs.next();
                let status = headers
                    .get("x-status")
                    .and_then(|v| v.to_str().ok()?.parse().ok())
                    .unwrap_or(201);
                (StatusCode::from_u16(status).unwrap(), format!("run {run}"))
            }),
        )
        .layer(layer())
}

/// KanishJebaMathewM/Truxify#2869: a cached refusal answered every retry
/// of the key. Refusals that invite the same request again (expired
/// credentials, a conflict with the resource's state, a failed
/// precondition, a lock, too early, a rate limit) release the key, and the
/// retry runs.
#[tokio::test]
async fn refusals_that_invite_a_retry_are_not_stored_and_the_retry_runs() {
    for status in [
        "401", "407", "408", "409", "412", "423", "425", "428", "429",
    ] {
        let runs = Runs::default();
        let app = status_app(runs.clone());
        let refused = post_to("/verify", "otp")
            .header("x-status", status)
            .body(Body::from("code=123456"))
            .unwrap();
        let first = send(&app, refused).await;
        assert_eq!(first.0.as_str(), status);
        let retry = send(
            &app,
            post_to("/verify", "otp")
                .body(Body::from("code=123456"))
                .unwrap(),
        )
        .await;
        assert_eq!(retry.0, StatusCode::CREATED, "after {status}");
        assert!(!retry.1.contains_key("idempotent-replayed"));
        assert_eq!(runs.get(), 2, "after {status}");
    }
}

/// The Truxify input itself: a wrong code answered 400 is the final answer
/// to that request and is replayed; the corrected request is another
/// request, so the same key is 422 telling the client to use a new key,
/// and a new key runs it.
#[tokio::test]
async fn a_final_refusal_is_replayed_and_a_corrected_request_needs_a_new_key() {
    let runs = Runs::default();
    let app = status_app(runs.clone());
    let wrong = || {
        post_to("/verify", "otp")
            .header("x-status", "400")
            .body(Body::from("code=000000"))
            .unwrap()
    };
    assert_eq!(send(&app, wrong()).await.0, StatusCode::BAD_REQUEST);
    let again = send(&app, wrong()).await;
    assert_eq!(again.0, StatusCode::BAD_REQUEST);
    assert_eq!(again.1["idempotent-replayed"], "true");
    let corrected = || {
        post_to("/verify", "otp")
            .body(Body::from("code=123456"))
            .unwrap()
    };
    let (status, headers, body) = send(&app, corrected()).await;
    let problem = expect_problem(status, &headers, &body, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(problem["detail"].as_str().unwrap().contains("new key"));
    let fresh = post_to("/verify", "otp-2")
        .body(Body::from("code=123456"))
        .unwrap();
    assert_eq!(send(&app, fresh).await.0, StatusCode::CREATED);
    assert_eq!(runs.get(), 2);
}

// ---------------------------------------------------------------------------
// 5. A different payload while the first request runs.

/// idempot-dev/idempot-js#191: the in-progress check ran before the
/// fingerprint check, so a different payload sent while the first ran got
/// 409 ("retry later") instead of 422. Here it is 422 at once, and a
/// same-payload duplicate is 409.
#[tokio::test]
async fn a_different_payload_while_the_first_runs_is_422_and_the_same_is_409() {
    let runs = Runs::default();
    let gate = Arc::new(tokio::sync::Notify::new());
    let app = Router::new()
        .route(
            "/slow",
            post({
                let (runs, gate) = (runs.clone(), Arc::clone(&gate));
                move |body: Bytes| async move {
                    runs.next();
                    gate.notified().await;
                    body
                }
            }),
        )
        .layer(layer());
    let request = |body: &'static str| post_to("/slow", "busy").body(Body::from(body)).unwrap();
    let first = tokio::spawn({
        let app = app.clone();
        async move { send(&app, request("amount=1")).await }
    });
    while runs.get() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (status, headers, body) = send(&app, request("amount=2")).await;
    expect_problem(status, &headers, &body, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, headers, body) = send(&app, request("amount=1")).await;
    expect_problem(status, &headers, &body, StatusCode::CONFLICT);
    gate.notify_one();
    assert_eq!(first.await.unwrap().2, "amount=1");
    assert_eq!(runs.get(), 1);
}

// ---------------------------------------------------------------------------
// 4. The request target the client sent, whatever router strips from it.

/// axum's `nest` and `nest_service` strip their prefix (path parameters
/// included) from the URI before an inner layer sees it: the fingerprint
/// takes the target the client sent (axum's `OriginalUri`), so the same
/// key on another account, under two levels of nesting, or with another
/// query is 422, and the same request still replays.
#[tokio::test]
async fn the_same_key_on_another_nested_resource_is_422_at_any_depth() {
    let runs = Runs::default();
    let withdraw = {
        let runs = runs.clone();
        Router::new()
            .route(
                "/withdraw",
                post(move || async move {
                    runs.next();
                    StatusCode::CREATED
                }),
            )
            .layer(layer())
    };
    let app = Router::new()
        .nest(
            "/v1",
            Router::new().nest("/accounts/{id}", withdraw.clone()),
        )
        .nest_service("/v2/accounts/{id}", withdraw);
    let first = send(
        &app,
        post_to("/v1/accounts/1/withdraw?x=1", "n")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(first.0, StatusCode::CREATED);
    let replay = send(
        &app,
        post_to("/v1/accounts/1/withdraw?x=1", "n")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(replay.1["idempotent-replayed"], "true");
    for other in [
        "/v1/accounts/2/withdraw?x=1",
        "/v1/accounts/1/withdraw?x=2",
        "/v2/accounts/1/withdraw?x=1",
    ] {
        let (status, headers, reply) =
            send(&app, post_to(other, "n").body(Body::empty()).unwrap()).await;
        expect_problem(status, &headers, &reply, StatusCode::UNPROCESSABLE_ENTITY);
    }
    assert_eq!(runs.get(), 1);
}
