//! Reading a claimed request's response to its stored record: never past
//! the lease (a response still streaming is made final in time), never
//! for a client that hung up, never as complete when the body does not
//! match its declared length; and the drain that lets a shutdown wait
//! for it.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{Request, Response, StatusCode};
use axum::routing::post;
use axum::Router;
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use idem_core::keys::MemoryStore;
use idem_http::IdempotencyLayer;
use tower::ServiceExt;

mod common;
use common::{client_scope, send, ticks, Runs};

const LEASE: Duration = Duration::from_millis(400);

fn request(path: &str, key: &str) -> Request<Body> {
    Request::post(path)
        .header("x-client-id", "acme")
        .header("idempotency-key", key)
        .body(Body::empty())
        .unwrap()
}

fn layer() -> IdempotencyLayer<MemoryStore> {
    IdempotencyLayer::new(MemoryStore::default(), client_scope).lease(LEASE)
}

fn ticking_app(runs: Runs, produced: Arc<AtomicUsize>, delay: Duration) -> Router {
    Router::new()
        .route(
            "/events",
            post(move || async move {
                runs.next();
                tokio::time::sleep(delay).await;
                ticks(produced)
            }),
        )
        .layer(layer())
}

/// Sends a request and reads its whole answer, failing instead of hanging
/// (a stream that runs again never ends).
async fn answer(
    app: &Router,
    request: Request<Body>,
) -> (StatusCode, axum::http::HeaderMap, Bytes) {
    tokio::time::timeout(Duration::from_secs(5), send(app, request))
        .await
        .expect("an answer within 5 s (an endless stream ran again?)")
}

fn assert_not_kept(reply: &(StatusCode, axum::http::HeaderMap, Bytes)) {
    assert_eq!(reply.0, StatusCode::GONE, "{:?}", reply.2);
    assert_eq!(reply.1["idempotent-replayed"], "true");
}

/// A client that keeps reading an endless stream: three quarters into
/// the lease the key is completed with 410 (a retry after the lease gets
/// it and nothing runs again), and the client goes on getting events.
#[tokio::test]
async fn a_stream_still_running_at_three_quarters_of_its_lease_is_final_and_keeps_flowing() {
    let runs = Runs::default();
    let produced = Arc::new(AtomicUsize::new(0));
    let app = ticking_app(runs.clone(), Arc::clone(&produced), Duration::ZERO);
    let response = app
        .clone()
        .oneshot(request("/events", "sse"))
        .await
        .unwrap();
    let mut body = response.into_body();
    let reader = tokio::spawn(async move {
        let mut events = 0;
        while let Some(Ok(_)) = body.frame().await {
            events += 1;
            if events == 20 {
                break;
            }
        }
        events
    });
    tokio::time::sleep(LEASE + Duration::from_millis(100)).await;
    assert_not_kept(&answer(&app, request("/events", "sse")).await);
    assert_eq!(
        reader.await.unwrap(),
        20,
        "the client stopped getting events"
    );
    assert_eq!(runs.get(), 1);
}

/// The same when the handler itself took most of the lease: its stream
/// is final at once.
#[tokio::test]
async fn a_stream_that_starts_late_in_its_lease_is_final_before_the_lease_ends() {
    let runs = Runs::default();
    let produced = Arc::new(AtomicUsize::new(0));
    let app = ticking_app(runs.clone(), Arc::clone(&produced), LEASE / 4 * 3);
    let response = app
        .clone()
        .oneshot(request("/events", "late"))
        .await
        .unwrap();
    let mut body = response.into_body();
    assert!(body.frame().await.is_some());
    tokio::time::sleep(LEASE / 4 + Duration::from_millis(50)).await;
    assert_not_kept(&answer(&app, request("/events", "late")).await);
    assert!(body.frame().await.is_some(), "the client's stream was cut");
    assert_eq!(runs.get(), 1);
}

/// A stream with a slow heartbeat (one event at once, then one every
/// 2 s): when its client hangs up, the layer stops reading it at once —
/// it drops it, so its producer stops — instead of waiting for the next
/// event or the deadline, and completes the key with 410.
#[tokio::test]
async fn a_stream_whose_client_hung_up_is_dropped_at_once_and_final() {
    let runs = Runs::default();
    let dropped = Arc::new(AtomicBool::new(false));
    let handler_runs = runs.clone();
    let flag = Arc::clone(&dropped);
    let app = Router::new()
        .route(
            "/events",
            post(move || async move {
                handler_runs.next();
                heartbeat(flag)
            }),
        )
        .layer(layer().lease(Duration::from_secs(30)));
    let response = app.clone().oneshot(request("/events", "hb")).await.unwrap();
    let mut body = response.into_body();
    assert!(body.frame().await.is_some());
    drop(body);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        dropped.load(Ordering::SeqCst),
        "the stream is still read for nobody"
    );
    assert_not_kept(&answer(&app, request("/events", "hb")).await);
    assert_eq!(runs.get(), 1);
}

/// Sets its flag when dropped.
struct OnDrop(Arc<AtomicBool>);

impl Drop for OnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// One event at once, then one every 2 s, for ever; `dropped` is set when
/// the stream is dropped.
fn heartbeat(dropped: Arc<AtomicBool>) -> Body {
    let guard = OnDrop(dropped);
    let events = futures::stream::unfold((guard, true), |(guard, first)| async move {
        if !first {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        Some((
            Ok::<_, Infallible>(Bytes::from_static(b"data: beat\n\n")),
            (guard, false),
        ))
    });
    Body::from_stream(events)
}

/// A client that hangs up before the head of an endless stream reaches it
/// (its request future dropped while the handler runs): the stream is
/// never read, the key is completed with 410, no second run.
#[tokio::test]
async fn a_stream_whose_client_left_before_its_head_is_never_read() {
    let runs = Runs::default();
    let produced = Arc::new(AtomicUsize::new(0));
    let app = ticking_app(
        runs.clone(),
        Arc::clone(&produced),
        Duration::from_millis(100),
    );
    let hung_up = tokio::time::timeout(
        Duration::from_millis(20),
        app.clone().oneshot(request("/events", "left")),
    )
    .await;
    assert!(hung_up.is_err());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        produced.load(Ordering::SeqCst) <= 1,
        "the stream was read for nobody"
    );
    assert_not_kept(&answer(&app, request("/events", "left")).await);
    assert_eq!(runs.get(), 1);
}

/// A body of a known length, slow to produce: not read whole at the
/// deadline, it is relayed to its client (which gets all of it) and its
/// key is final.
struct Slow {
    sleep: Pin<Box<tokio::time::Sleep>>,
    data: Option<Bytes>,
    /// The length the body claims (its exact size hint).
    claims: u64,
}

impl Slow {
    fn new(after: Duration, data: &'static [u8], claims: u64) -> Self {
        Slow {
            sleep: Box::pin(tokio::time::sleep(after)),
            data: Some(Bytes::from_static(data)),
            claims,
        }
    }
}

impl http_body::Body for Slow {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        Poll::Ready(self.data.take().map(|data| Ok(Frame::data(data))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.claims)
    }
}

fn slow_app(runs: Runs, after: Duration, data: &'static [u8], claims: u64) -> Router {
    Router::new()
        .route(
            "/slow",
            post(move || async move {
                runs.next();
                Response::new(Body::new(Slow::new(after, data, claims)))
            }),
        )
        .layer(layer())
}

#[tokio::test]
async fn a_body_of_known_length_slower_than_its_lease_reaches_its_client_and_is_final() {
    let runs = Runs::default();
    let app = slow_app(runs.clone(), LEASE, b"12345", 5);
    let first = send(&app, request("/slow", "slow")).await;
    assert_eq!((first.0, &first.2[..]), (StatusCode::OK, &b"12345"[..]));
    assert_not_kept(&answer(&app, request("/slow", "slow")).await);
    assert_eq!(runs.get(), 1);
}

/// A body shorter than the length it declares (its size hint, or its
/// `Content-Length` on a stream) or longer, and a `Content-Length` that is
/// no number: the first caller gets a failure, nothing is stored, the key
/// is released and the retry runs again.
#[tokio::test]
async fn a_body_that_does_not_match_its_declared_length_is_never_stored() {
    let runs = Runs::default();
    let short_hint = slow_app(runs.clone(), Duration::ZERO, b"12345", 10);
    let first = short_hint
        .clone()
        .oneshot(request("/slow", "h"))
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let retry = send(&short_hint, request("/slow", "h")).await;
    assert!(!retry.1.contains_key("idempotent-replayed"));
    assert_eq!(runs.get(), 2);

    for (declared, sent) in [("10", &b"12345"[..]), ("3", b"12345"), ("five", b"12345")] {
        let runs = Runs::default();
        let handler_runs = runs.clone();
        let app = Router::new()
            .route(
                "/declared",
                post(move || async move {
                    handler_runs.next();
                    let chunks =
                        futures::stream::iter([Ok::<_, Infallible>(Bytes::from_static(sent))]);
                    let mut response = Response::new(Body::from_stream(chunks));
                    response
                        .headers_mut()
                        .insert("content-length", declared.parse().unwrap());
                    response
                }),
            )
            .layer(layer());
        for _ in 0..2 {
            let response = app
                .clone()
                .oneshot(request("/declared", "d"))
                .await
                .unwrap();
            assert!(
                !response.headers().contains_key("idempotent-replayed"),
                "{declared}"
            );
            let _ = response.into_body().collect().await;
        }
        assert_eq!(runs.get(), 2, "Content-Length {declared}: stored");
    }
}

/// A claimed request whose client hung up runs on the layer's task: the
/// drain counts it and waits for it, and its response is stored.
#[tokio::test]
async fn the_drain_waits_for_claimed_work_whose_client_hung_up() {
    let runs = Runs::default();
    let handler_runs = runs.clone();
    let layer = layer().lease(Duration::from_secs(10));
    let drain = layer.drain();
    let app = Router::new()
        .route(
            "/work",
            post(move || async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                handler_runs.next();
                (StatusCode::CREATED, "done")
            }),
        )
        .layer(layer);
    assert_eq!(drain.running(), 0);
    let hung_up = tokio::time::timeout(
        Duration::from_millis(50),
        app.clone().oneshot(request("/work", "w")),
    )
    .await;
    assert!(hung_up.is_err());
    assert_eq!(drain.running(), 1);
    assert_eq!(runs.get(), 0);
    tokio::time::timeout(Duration::from_secs(5), drain.wait())
        .await
        .expect("the drain ends once the work did");
    assert_eq!((drain.running(), runs.get()), (0, 1));
    let replay = send(&app, request("/work", "w")).await;
    assert_eq!(replay.1["idempotent-replayed"], "true");
    tokio::time::timeout(Duration::from_millis(10), drain.wait())
        .await
        .expect("an idle drain ends at once");
}
