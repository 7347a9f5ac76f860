//! Attacks on the layer (branch `attack-http`): each test here states what
//! the README or the rustdoc promises and fails while the layer breaks
//! that promise. None of them fixes anything.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderName, Request, StatusCode};
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use idem_core::keys::MemoryStore;
use idem_http::{scope_from_header, IdempotencyLayer, StoredHeaders};
use tower::ServiceExt;

mod common;
use common::{client_scope, send, ticks, Runs};

fn post_as(path: &str, key: &str) -> axum::http::request::Builder {
    Request::post(path)
        .header("x-client-id", "acme")
        .header("idempotency-key", key)
        .header("content-type", "application/json")
}

// ---------------------------------------------------------------------------
// 1. Credential headers spelled without a separator are stored and replayed.
//
// README: "The stored record keeps every response header except [...] any
// header named for a token, session, API key, secret or password
// (`X-Auth-Token`, `X-Session-Id`, `X-Api-Key`). The first caller gets them
// all; a retry gets none."
// The filter splits names on `-`/`_` only, so the common one-word spellings
// (Django's `X-CSRFToken`, `X-SessionID`, `X-AuthToken`, `X-AccessToken`,
// `X-RefreshToken`) are stored and handed to whoever retries the key.

const ONE_WORD_CREDENTIALS: [&str; 6] = [
    "x-sessionid",
    "x-sessiontoken",
    "x-authtoken",
    "x-accesstoken",
    "x-refreshtoken",
    "x-csrftoken",
];

#[test]
fn one_word_token_and_session_headers_are_not_stored() {
    let stored: Vec<&str> = ONE_WORD_CREDENTIALS
        .into_iter()
        .filter(|name| StoredHeaders::default().stores(&HeaderName::from_static(name)))
        .collect();
    assert!(
        stored.is_empty(),
        "credential/session headers stored and replayed: {stored:?}"
    );
}

#[tokio::test]
async fn a_replay_never_hands_out_the_first_callers_session_id() {
    let runs = Runs::default();
    let handler_runs = runs.clone();
    let app = Router::new()
        .route(
            "/login",
            post(move || async move {
                let run = handler_runs.next();
                let mut response = Response::new(Body::from("welcome"));
                *response.status_mut() = StatusCode::CREATED;
                for name in ONE_WORD_CREDENTIALS {
                    response
                        .headers_mut()
                        .insert(name, format!("secret-{run}").parse().unwrap());
                }
                response
            }),
        )
        .layer(IdempotencyLayer::new(MemoryStore::default(), client_scope));
    let first = send(&app, post_as("/login", "l1").body(Body::empty()).unwrap()).await;
    assert_eq!(first.0, StatusCode::CREATED);
    let replay = send(&app, post_as("/login", "l1").body(Body::empty()).unwrap()).await;
    assert_eq!(replay.1["idempotent-replayed"], "true");
    let leaked: Vec<String> = ONE_WORD_CREDENTIALS
        .into_iter()
        .filter_map(|name| {
            replay
                .1
                .get(name)
                .map(|v| format!("{name}: {}", v.to_str().unwrap()))
        })
        .collect();
    assert!(
        leaked.is_empty(),
        "replayed to the retrying caller: {leaked:?}"
    );
    assert_eq!(runs.get(), 1);
}

// ---------------------------------------------------------------------------
// 2. axum's `nest` strips the prefix (path parameters included) before the
//    layer sees the URI: two different resources share a fingerprint.
//
// README: "422 [...] the key was already used with a different request —
// another method, path, query [...]". lib.rs: "What is fingerprinted: the
// method, the path with its query".
// With the layer on a router nested under `/accounts/{id}`, a withdrawal
// from account 2 with the key used for account 1 replays account 1's answer:
// the handler for account 2 never runs, and the client is told it did.

#[tokio::test]
async fn the_same_key_on_another_nested_resource_is_422_not_a_replay() {
    let runs = Runs::default();
    let handler_runs = runs.clone();
    let account = Router::new()
        .route(
            "/withdraw",
            post(move |Path(id): Path<u32>| async move {
                handler_runs.next();
                (
                    StatusCode::CREATED,
                    format!("withdrew 100 from account {id}"),
                )
            }),
        )
        .layer(IdempotencyLayer::new(MemoryStore::default(), client_scope));
    let app = Router::new().nest("/accounts/{id}", account);

    let one = send(
        &app,
        post_as("/accounts/1/withdraw", "w-1")
            .body(Body::from(r#"{"amount":100}"#))
            .unwrap(),
    )
    .await;
    assert_eq!(one.0, StatusCode::CREATED);
    assert_eq!(one.2, "withdrew 100 from account 1");

    let two = send(
        &app,
        post_as("/accounts/2/withdraw", "w-1")
            .body(Body::from(r#"{"amount":100}"#))
            .unwrap(),
    )
    .await;
    assert_eq!(
        two.0,
        StatusCode::UNPROCESSABLE_ENTITY,
        "account 2 got {:?} (idempotent-replayed: {:?}); its handler ran {} time(s) in all",
        two.2,
        two.1.get("idempotent-replayed"),
        runs.get()
    );
}

// ---------------------------------------------------------------------------
// 3. `scope_from_header` takes the first of several values.
//
// The layer refuses a repeated `Idempotency-Key` (400: "sent more than
// once") because the value is ambiguous; the scope helper silently takes
// the first `x-client-id`. A gateway that *appends* its authenticated value
// (Envoy's default `request_headers_to_add` action, nginx `add_header`-style
// configs) lets the client pick the scope by sending its own header first:
// the client then reads another client's stored responses.

#[tokio::test]
async fn a_repeated_scope_header_is_refused_not_resolved_to_the_first_value() {
    let header = HeaderName::from_static("x-client-id");
    let scope = scope_from_header(header.clone(), "api");
    let (parts, ()) = Request::post("/charges")
        .header("x-client-id", "victim")
        .header("x-client-id", "mallory")
        .body(())
        .unwrap()
        .into_parts();
    assert_eq!(
        scope(&parts).map(|s| s.client().to_owned()),
        None,
        "an ambiguous client header named a scope"
    );
}

#[tokio::test]
async fn a_client_cannot_read_another_clients_replay_by_repeating_the_scope_header() {
    let app = Router::new()
        .route(
            "/charges",
            post(|headers: HeaderMap| async move {
                let who: Vec<_> = headers
                    .get_all("x-client-id")
                    .iter()
                    .map(|v| v.to_str().unwrap().to_owned())
                    .collect();
                (
                    StatusCode::CREATED,
                    format!("card 4242 charged for {who:?}"),
                )
            }),
        )
        .layer(IdempotencyLayer::new(
            MemoryStore::default(),
            scope_from_header(HeaderName::from_static("x-client-id"), "api"),
        ));
    let victim = Request::post("/charges")
        .header("x-client-id", "victim")
        .header("idempotency-key", "order-1")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&app, victim).await.0, StatusCode::CREATED);
    // Mallory's request: the gateway appended her authenticated id after
    // the header she sent herself.
    let mallory = Request::post("/charges")
        .header("x-client-id", "victim")
        .header("x-client-id", "mallory")
        .header("idempotency-key", "order-1")
        .body(Body::empty())
        .unwrap();
    let reply = send(&app, mallory).await;
    assert_ne!(
        reply
            .1
            .get("idempotent-replayed")
            .map(|v| v.to_str().unwrap()),
        Some("true"),
        "mallory got the victim's stored response: {:?}",
        reply.2
    );
}

// ---------------------------------------------------------------------------
// 4. A slow endless stream (server-sent events with a heartbeat) keeps its
//    key in progress past its lease: a retry takes the key over and runs
//    the handler again, and the first stream is still pumped after its
//    client hung up.
//
// README: "A response larger than the limit — or endless, like server-sent
// events — reaches its caller whole, and its key is completed at once with
// the 410 above." rustdoc (`response_limit`): "An endless stream
// (server-sent events) reaches this too, so its key never stays in
// progress." Only a stream that produces a whole response limit (1 MiB)
// does; one small event every few seconds takes days to.

#[tokio::test]
async fn an_endless_slow_stream_never_runs_twice_and_stops_when_its_client_is_gone() {
    let runs = Runs::default();
    let produced = Arc::new(AtomicUsize::new(0));
    let handler_runs = runs.clone();
    let counter = Arc::clone(&produced);
    let app = Router::new()
        .route(
            "/events",
            post(move || async move {
                handler_runs.next();
                ticks(counter)
            }),
        )
        .layer(
            IdempotencyLayer::new(MemoryStore::default(), client_scope)
                .lease(Duration::from_millis(500)),
        );
    let request = || post_as("/events", "sse-1").body(Body::empty()).unwrap();
    let response = app.clone().oneshot(request()).await.unwrap();
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "data: tick\n\n");
    drop(body); // the client hangs up
    let at_hangup = produced.load(Ordering::SeqCst);

    tokio::time::sleep(Duration::from_millis(800)).await;
    let after = produced.load(Ordering::SeqCst);
    let retry = app.clone().oneshot(request()).await.unwrap();
    let status = retry.status();
    drop(retry);
    assert!(
        runs.get() == 1 && after <= at_hangup + 1,
        "handler runs: {} (retry answered {status}); events pulled from the stream \
         after its client hung up: {}",
        runs.get(),
        after - at_hangup
    );
}

// ---------------------------------------------------------------------------
// 5. Trailers are not stored: a replay of a gRPC response has no
//    `grpc-status`, and a failed gRPC call is stored as a final 200.
//
// lib.rs: "a tower layer for axum, tonic or any tower service"; README: a
// replay is "the stored status, headers and body [...] this is the answer
// to the first request". gRPC carries its status in trailers
// (`grpc-status`), so every replay of a unary call loses it, and a call
// that failed with UNAVAILABLE (a retryable failure, answered HTTP 200 +
// `grpc-status: 14` in the trailers) is stored and replayed as if final.

fn grpc_reply(status: &'static str) -> Response {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", status.parse().unwrap());
    let frames = futures::stream::iter([
        Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"\0\0\0\0\x02hi"))),
        Ok(Frame::trailers(trailers)),
    ]);
    let mut response = Response::new(Body::new(StreamBody::new(frames)));
    response
        .headers_mut()
        .insert("content-type", "application/grpc".parse().unwrap());
    response
}

async fn read_with_trailers(app: &Router, key: &str) -> (HeaderMap, Option<HeaderMap>) {
    let request = Request::post("/pkg.Payments/Charge")
        .header("x-client-id", "acme")
        .header("idempotency-key", key)
        .header("content-type", "application/grpc")
        .body(Body::from(&b"\0\0\0\0\x01x"[..]))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let collected = body.collect().await.unwrap();
    (parts.headers, collected.trailers().cloned())
}

#[tokio::test]
async fn a_replayed_grpc_response_keeps_its_grpc_status() {
    let runs = Runs::default();
    let handler_runs = runs.clone();
    let app = Router::new()
        .route(
            "/pkg.Payments/Charge",
            post(move || async move {
                handler_runs.next();
                grpc_reply("0")
            }),
        )
        .layer(IdempotencyLayer::new(MemoryStore::default(), client_scope));
    let (_, first) = read_with_trailers(&app, "g-1").await;
    assert_eq!(first.unwrap()["grpc-status"], "0");
    let (headers, replay) = read_with_trailers(&app, "g-1").await;
    assert_eq!(headers["idempotent-replayed"], "true");
    let status = replay
        .as_ref()
        .and_then(|t| t.get("grpc-status"))
        .or(headers.get("grpc-status"));
    assert!(
        status.is_some(),
        "the replay of a gRPC call carries no grpc-status (trailers {replay:?})"
    );
}

#[tokio::test]
async fn a_grpc_call_that_failed_with_unavailable_runs_again_on_retry() {
    let runs = Runs::default();
    let handler_runs = runs.clone();
    let app = Router::new()
        .route(
            "/pkg.Payments/Charge",
            post(move || async move {
                if handler_runs.next() == 1 {
                    grpc_reply("14") // UNAVAILABLE: retry
                } else {
                    grpc_reply("0")
                }
            }),
        )
        .layer(IdempotencyLayer::new(MemoryStore::default(), client_scope));
    let (_, first) = read_with_trailers(&app, "g-2").await;
    assert_eq!(first.unwrap()["grpc-status"], "14");
    let (headers, retry) = read_with_trailers(&app, "g-2").await;
    assert!(
        runs.get() == 2,
        "the retry of an UNAVAILABLE call did not run (replayed: {:?}, trailers {retry:?})",
        headers.get("idempotent-replayed")
    );
}

// ---------------------------------------------------------------------------
// 6. (low) The media-type normaliser is more lenient than the handler it
//    guards: axum's `Json` refuses `application/json ;charset=utf-8` and
//    `application/json;;` with 415, the layer fingerprints both as
//    `application/json`. The 415 is a final 4xx, so it is stored, and the
//    client's corrected request (same key) replays the 415 for 24 h.
//
// Fingerprint rustdoc: two requests share a fingerprint only when no
// handler could read them differently; README: "another [...] media type
// (`Content-Type`, normalised)" is 422.

#[tokio::test]
async fn a_media_type_the_handler_refuses_does_not_share_a_fingerprint_with_one_it_accepts() {
    let runs = Runs::default();
    let handler_runs = runs.clone();
    let app = Router::new()
        .route(
            "/orders",
            post(
                move |axum::Json(v): axum::Json<serde_json::Value>| async move {
                    handler_runs.next();
                    (StatusCode::CREATED, v.to_string())
                },
            ),
        )
        .layer(IdempotencyLayer::new(MemoryStore::default(), client_scope));
    let with = |content_type: &str| {
        Request::post("/orders")
            .header("x-client-id", "acme")
            .header("idempotency-key", "o-1")
            .header("content-type", content_type)
            .body(Body::from(r#"{"qty":1}"#))
            .unwrap()
    };
    let refused = send(&app, with("application/json;;")).await;
    assert_eq!(refused.0, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let corrected = send(&app, with("application/json")).await;
    assert_ne!(
        corrected
            .1
            .get("idempotent-replayed")
            .map(|v| v.to_str().unwrap()),
        Some("true"),
        "the corrected request replayed the 415 ({}) of a media type the handler refused",
        corrected.0
    );
}

/// tonic answers a handler's `Err(Status::unavailable(..))` with a
/// "trailers-only" response: HTTP 200, `grpc-status: 14` in the headers, no
/// body. The policy looks only at the HTTP status, so the failure is stored
/// as final and every retry of the key replays UNAVAILABLE for 24 h (README:
/// failures that invite the same request again are "returned as it is and
/// **not** stored: the key is released").
#[tokio::test]
async fn a_trailers_only_grpc_unavailable_is_not_stored() {
    let runs = Runs::default();
    let handler_runs = runs.clone();
    let app = Router::new()
        .route(
            "/pkg.Payments/Charge",
            post(move || async move {
                let mut response = Response::new(Body::empty());
                response
                    .headers_mut()
                    .insert("content-type", "application/grpc".parse().unwrap());
                let status = if handler_runs.next() == 1 { "14" } else { "0" };
                response
                    .headers_mut()
                    .insert("grpc-status", status.parse().unwrap());
                response
            }),
        )
        .layer(IdempotencyLayer::new(MemoryStore::default(), client_scope));
    let (first, _) = read_with_trailers(&app, "g-3").await;
    assert_eq!(first["grpc-status"], "14");
    let (retry, _) = read_with_trailers(&app, "g-3").await;
    assert!(
        runs.get() == 2,
        "the retry got the stored UNAVAILABLE (grpc-status {:?}, replayed {:?}) and did not run",
        retry.get("grpc-status"),
        retry.get("idempotent-replayed")
    );
}

// ---------------------------------------------------------------------------
// 7. (low) A streamed body that ends before its declared `Content-Length`:
//    hyper aborts the response (the caller gets no answer at all), but the
//    layer stores the short body as a complete response, and the caller's
//    retry gets a replayed 200 whose 5 bytes look complete.
//
// rustdoc: "A streamed body that fails or panics midway releases the key
// the same way, and the client's response ends with an error (the server
// aborts it) instead of looking complete."

async fn over_tcp(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = "POST /short HTTP/1.1\r\nHost: x\r\nX-Client-Id: acme\r\n\
                   Idempotency-Key: short-1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw).await;
    String::from_utf8_lossy(&raw).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_shorter_than_its_declared_length_is_not_replayed_as_complete() {
    let runs = Runs::default();
    let handler_runs = runs.clone();
    let app = Router::new()
        .route(
            "/short",
            post(move || async move {
                handler_runs.next();
                let chunks =
                    futures::stream::iter([Ok::<_, Infallible>(Bytes::from_static(b"12345"))]);
                let mut response = Response::new(Body::from_stream(chunks));
                response
                    .headers_mut()
                    .insert("content-length", "10".parse().unwrap());
                response
            }),
        )
        .layer(IdempotencyLayer::new(MemoryStore::default(), client_scope));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let first = over_tcp(addr).await;
    assert!(
        !first.contains("HTTP/1.1 200"),
        "the first caller got an answer: {first:?}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let retry = over_tcp(addr).await;
    assert!(
        !retry.contains("idempotent-replayed: true"),
        "the caller never got the first answer, its retry gets a replay that looks complete \
         (handler runs: {}): {retry:?}",
        runs.get()
    );
}
