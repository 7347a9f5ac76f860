//! gRPC through the layer: the call's status (`grpc-status`, in the
//! trailers or in a trailers-only answer) decides what is stored, the
//! trailers are stored and replayed, the layer answers gRPC clients in
//! gRPC's shape, and gRPC-Web, whose status the layer cannot read, is
//! refused.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Request, Response, StatusCode};
use axum::routing::post;
use axum::Router;
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use idem_core::keys::MemoryStore;
use idem_http::IdempotencyLayer;
use tower::ServiceExt;

mod common;
use common::{client_scope, Runs};

const PATH: &str = "/pkg.Payments/Charge";
const MESSAGE: &[u8] = b"\0\0\0\0\x02hi";

/// How the handler sends its status.
#[derive(Clone, Copy, Debug)]
enum Shape {
    /// Data, then trailers, in a stream of unknown length.
    Streamed,
    /// Data of a known length, then trailers.
    Sized,
    /// Trailers-only: the status in the headers, no body.
    HeadersOnly,
}

fn trailers(code: &str) -> HeaderMap {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", code.parse().unwrap());
    trailers.insert("grpc-message", "from%20the%20handler".parse().unwrap());
    trailers
}

fn reply(shape: Shape, code: &'static str) -> Response<Body> {
    let mut response = match shape {
        Shape::Streamed => {
            let frames = futures::stream::iter([
                Ok::<_, Infallible>(Frame::data(Bytes::from_static(MESSAGE))),
                Ok(Frame::trailers(trailers(code))),
            ]);
            Response::new(Body::new(StreamBody::new(frames)))
        }
        Shape::Sized => {
            let body = Full::new(Bytes::from_static(MESSAGE))
                .with_trailers(async move { Some(Ok::<_, Infallible>(trailers(code))) });
            Response::new(Body::new(body))
        }
        Shape::HeadersOnly => {
            let mut response = Response::new(Body::empty());
            response.headers_mut().extend(trailers(code));
            response
        }
    };
    response
        .headers_mut()
        .insert("content-type", "application/grpc".parse().unwrap());
    response
}

/// A service answering `first` on its first run and OK after.
fn app(runs: Runs, shape: Shape, first: &'static str) -> Router {
    Router::new()
        .route(
            PATH,
            post(move || async move {
                if runs.next() == 1 {
                    reply(shape, first)
                } else {
                    reply(shape, "0")
                }
            }),
        )
        .layer(IdempotencyLayer::new(MemoryStore::default(), client_scope))
}

fn call(key: Option<&str>, content_type: &str) -> Request<Body> {
    let mut request = Request::post(PATH)
        .header("x-client-id", "acme")
        .header("content-type", content_type);
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    request.body(Body::from(&b"\0\0\0\0\x01x"[..])).unwrap()
}

/// The status, headers, body and trailers of an answer.
async fn answer(app: &Router, request: Request<Body>) -> (StatusCode, HeaderMap, Bytes, HeaderMap) {
    let response = app.clone().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let collected = body.collect().await.unwrap();
    let trailers = collected.trailers().cloned().unwrap_or_default();
    (parts.status, parts.headers, collected.to_bytes(), trailers)
}

/// The call's status, wherever it is.
fn code(headers: &HeaderMap, trailers: &HeaderMap) -> String {
    trailers
        .get("grpc-status")
        .or(headers.get("grpc-status"))
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

const SHAPES: [Shape; 3] = [Shape::Streamed, Shape::Sized, Shape::HeadersOnly];

/// CANCELLED, UNKNOWN, DEADLINE_EXCEEDED, ALREADY_EXISTS,
/// RESOURCE_EXHAUSTED, ABORTED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE,
/// DATA_LOSS, UNAUTHENTICATED, a code gRPC does not define, and a status
/// that is no number: each releases the key, in each shape, and the retry
/// runs.
#[tokio::test]
async fn calls_failing_with_a_code_that_invites_a_retry_release_the_key() {
    for shape in SHAPES {
        for failed in [
            "1", "2", "4", "6", "8", "10", "12", "13", "14", "15", "16", "17", "x",
        ] {
            let runs = Runs::default();
            let app = app(runs.clone(), shape, failed);
            let (_, headers, _, trailers) = answer(&app, call(Some("k"), "application/grpc")).await;
            assert_eq!(code(&headers, &trailers), failed, "{shape:?}");
            let (_, headers, _, trailers) = answer(&app, call(Some("k"), "application/grpc")).await;
            assert_eq!(
                (code(&headers, &trailers).as_str(), runs.get()),
                ("0", 2),
                "{shape:?} {failed}: the retry did not run"
            );
            assert!(!headers.contains_key("idempotent-replayed"));
        }
    }
}

/// OK, INVALID_ARGUMENT, NOT_FOUND, PERMISSION_DENIED,
/// FAILED_PRECONDITION and OUT_OF_RANGE are final: stored with their
/// trailers, and replayed as they were sent.
#[tokio::test]
async fn final_calls_are_replayed_with_their_status_and_trailers() {
    for shape in SHAPES {
        for final_ in ["0", "3", "5", "7", "9", "11"] {
            let runs = Runs::default();
            let app = app(runs.clone(), shape, final_);
            let first = answer(&app, call(Some("k"), "application/grpc")).await;
            let replay = answer(&app, call(Some("k"), "application/grpc")).await;
            assert_eq!(
                replay.1["idempotent-replayed"], "true",
                "{shape:?} {final_}"
            );
            assert_eq!(runs.get(), 1, "{shape:?} {final_}");
            assert_eq!(code(&replay.1, &replay.3), final_, "{shape:?}");
            assert_eq!((replay.0, &replay.2), (first.0, &first.2), "{shape:?}");
            assert_eq!(replay.3, first.3, "{shape:?}: the trailers");
            assert_eq!(replay.1["content-type"], "application/grpc");
        }
    }
}

/// A gRPC answer without `grpc-status` anywhere is no final answer: its
/// key is released.
#[tokio::test]
async fn a_grpc_answer_without_a_status_is_not_stored() {
    let runs = Runs::default();
    let handler_runs = runs.clone();
    let app = Router::new()
        .route(
            PATH,
            post(move || async move {
                handler_runs.next();
                let mut response = Response::new(Body::from(MESSAGE));
                response
                    .headers_mut()
                    .insert("content-type", "application/grpc".parse().unwrap());
                response
            }),
        )
        .layer(IdempotencyLayer::new(MemoryStore::default(), client_scope));
    for _ in 0..2 {
        let (_, headers, _, _) = answer(&app, call(Some("k"), "application/grpc")).await;
        assert!(!headers.contains_key("idempotent-replayed"));
    }
    assert_eq!(runs.get(), 2);
}

/// The layer's own answers to a gRPC client are trailers-only gRPC
/// answers (HTTP 200): a missing key is INVALID_ARGUMENT, a call still
/// running is UNAVAILABLE with the server's pushback, a reused key is
/// INVALID_ARGUMENT.
#[tokio::test]
async fn the_layers_answers_to_grpc_clients_are_grpc_statuses() {
    let (release, wait) = tokio::sync::oneshot::channel::<()>();
    let wait = std::sync::Mutex::new(Some(wait));
    let wait = std::sync::Arc::new(wait);
    let app = Router::new()
        .route(
            PATH,
            post(move || {
                let wait = wait.lock().unwrap().take();
                async move {
                    if let Some(wait) = wait {
                        let _ = wait.await;
                    }
                    reply(Shape::Streamed, "0")
                }
            }),
        )
        .layer(IdempotencyLayer::new(MemoryStore::default(), client_scope));
    let missing = answer(&app, call(None, "application/grpc")).await;
    assert_eq!(missing.0, StatusCode::OK);
    assert_eq!(missing.1["content-type"], "application/grpc");
    assert_eq!(missing.1["grpc-status"], "3");
    assert!(missing.1["grpc-message"]
        .to_str()
        .unwrap()
        .contains("Idempotency-Key"));

    let first = tokio::spawn({
        let app = app.clone();
        async move { answer(&app, call(Some("k"), "application/grpc")).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let running = answer(&app, call(Some("k"), "application/grpc")).await;
    assert_eq!(running.0, StatusCode::OK);
    assert_eq!(running.1["grpc-status"], "14");
    assert!(running.1.contains_key("grpc-retry-pushback-ms"));
    release.send(()).unwrap();
    let first = first.await.unwrap();
    assert_eq!(code(&first.1, &first.3), "0");

    let mut other = call(Some("k"), "application/grpc");
    *other.uri_mut() = "/pkg.Payments/Refund".parse().unwrap();
    let reused = answer(&app, other).await;
    assert_eq!(reused.1["grpc-status"], "3");
}

/// gRPC-Web carries its status inside the body: the layer refuses it
/// (UNIMPLEMENTED, in the headers a gRPC-Web client reads) and the
/// handler never runs.
#[tokio::test]
async fn grpc_web_is_refused_and_never_runs() {
    let runs = Runs::default();
    let app = app(runs.clone(), Shape::Streamed, "0");
    for media in ["application/grpc-web", "application/grpc-web-text+proto"] {
        let refused = answer(&app, call(Some("w"), media)).await;
        assert_eq!(refused.1["grpc-status"], "12", "{media}");
        assert!(refused.1["grpc-message"]
            .to_str()
            .unwrap()
            .contains("gRPC-Web"));
    }
    assert_eq!(runs.get(), 0);
}

/// Over HTTP/2 the trailers end the stream: a client that got them has
/// the whole answer and may retry at once. They reach it only once the
/// call is stored (a store that takes 200 ms to store), so that retry is
/// a replay, never UNAVAILABLE.
#[tokio::test]
async fn the_trailers_reach_the_client_only_once_the_call_is_stored() {
    let runs = Runs::default();
    let handler_runs = runs.clone();
    let store = common::Store {
        delay: Duration::from_millis(200),
        ..common::Store::default()
    };
    let app = Router::new()
        .route(
            PATH,
            post(move || async move {
                handler_runs.next();
                reply(Shape::Streamed, "0")
            }),
        )
        .layer(IdempotencyLayer::new(store, client_scope));
    let response = app
        .clone()
        .oneshot(call(Some("t"), "application/grpc"))
        .await
        .unwrap();
    let mut body = response.into_body();
    loop {
        let frame = body.frame().await.expect("the trailers").unwrap();
        if frame.is_trailers() {
            break;
        }
    }
    let retry = answer(&app, call(Some("t"), "application/grpc")).await;
    assert_eq!(retry.1["idempotent-replayed"], "true", "{:?}", retry.1);
    assert_eq!(runs.get(), 1);
}
