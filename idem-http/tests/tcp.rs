//! The layer behind a real server (`axum::serve` on a loopback port), driven
//! by a raw HTTP/1.1 client over TCP: what happens when a client hangs up,
//! and when a handler panics.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use idem_core::keys::{MemoryStore, Scope};
use idem_http::IdempotencyLayer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

mod common;

#[derive(Clone, Default)]
struct Charges(Arc<AtomicUsize>);

/// Records a charge, then takes 1.5 s (the issue's handler).
async fn charge(State(charges): State<Charges>) -> (StatusCode, String) {
    let n = charges.0.fetch_add(1, Ordering::SeqCst) + 1;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    (StatusCode::CREATED, format!("charge {n}"))
}

/// Counts its runs and panics on the first one.
async fn panics_once(State(charges): State<Charges>) -> &'static str {
    if charges.0.fetch_add(1, Ordering::SeqCst) == 0 {
        panic!("the handler failed on purpose");
    }
    "ran"
}

/// Serves the app on 127.0.0.1 with a 3 s lease; returns its address.
async fn serve(charges: Charges) -> SocketAddr {
    let layer = IdempotencyLayer::new(MemoryStore::default(), |_| Scope::new("acme", "api").ok())
        .lease(Duration::from_secs(3));
    let app = Router::new()
        .route("/charges", post(charge))
        .route("/panics", post(panics_once))
        .layer(layer)
        .with_state(charges);
    listen(app).await
}

/// Serves `app` on a loopback port; returns its address.
async fn listen(app: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

fn request(path: &str, key: &str) -> String {
    let body = r#"{"amount":100}"#;
    format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nIdempotency-Key: {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// A response as it came over the wire.
struct Reply {
    status: u16,
    head: String,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Sends one request on a new connection and reads the whole response.
async fn exchange(addr: SocketAddr, path: &str, key: &str) -> Reply {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(request(path, key).as_bytes())
        .await
        .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("a complete response");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    Reply {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

async fn sleep_until(start: Instant, at: Duration) {
    tokio::time::sleep_until((start + at).into()).await;
}

/// Issue 10, item 8, exactly: 3 s lease, a handler that records a charge
/// then takes 1.5 s, a client that closes its socket after 300 ms and
/// retries at 2.0 s and at 5.0 s. The claimed work runs to its end although
/// the client is gone: its response is stored, both retries replay it, and
/// there is one charge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_gets_the_stored_response_on_retry_and_the_work_runs_once() {
    let charges = Charges::default();
    let addr = serve(charges.clone()).await;
    let start = Instant::now();
    let mut gone = TcpStream::connect(addr).await.unwrap();
    gone.write_all(request("/charges", "k-gone").as_bytes())
        .await
        .unwrap();
    sleep_until(start, Duration::from_millis(300)).await;
    assert_eq!(charges.0.load(Ordering::SeqCst), 1, "the handler started");
    drop(gone);

    sleep_until(start, Duration::from_millis(2000)).await;
    let at_2s = exchange(addr, "/charges", "k-gone").await;
    assert_eq!(at_2s.status, 201, "{}", at_2s.head);
    assert_eq!(at_2s.header("idempotent-replayed"), Some("true"));
    assert!(at_2s.body.contains("charge 1"), "{}", at_2s.body);

    sleep_until(start, Duration::from_millis(5000)).await;
    let at_5s = exchange(addr, "/charges", "k-gone").await;
    assert_eq!(at_5s.status, 201, "{}", at_5s.head);
    assert_eq!(at_5s.header("idempotent-replayed"), Some("true"));
    assert_eq!(charges.0.load(Ordering::SeqCst), 1, "one charge");
}

/// A handler that panics: the client gets a 500 problem (not stored), the
/// key is released at once so the retry runs (no 409 until the lease
/// expires), and the server keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_panics_releases_the_key_and_answers_500() {
    let charges = Charges::default();
    let addr = serve(charges.clone()).await;
    let failed = exchange(addr, "/panics", "k-panic").await;
    assert_eq!(failed.status, 500, "{}", failed.head);
    assert_eq!(
        failed.header("content-type"),
        Some("application/problem+json")
    );
    assert!(failed.header("idempotent-replayed").is_none());
    let retry = exchange(addr, "/panics", "k-panic").await;
    assert_eq!(retry.status, 200, "{}", retry.head);
    assert!(retry.header("idempotent-replayed").is_none());
    assert!(retry.body.contains("ran"));
    let replay = exchange(addr, "/panics", "k-panic").await;
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(charges.0.load(Ordering::SeqCst), 2);
}

/// Serves, over a key store that takes 300 ms to store a response,
/// `/declared`: a stream that declares its `Content-Length`; and `/sized`:
/// a body with a `Content-Length` the handler set.
async fn serve_sized(charges: Charges) -> SocketAddr {
    let store = common::Store {
        delay: Duration::from_millis(300),
        ..common::Store::default()
    };
    let layer = IdempotencyLayer::new(store, |_| Scope::new("acme", "api").ok());
    let declared = |State(charges): State<Charges>| async move {
        charges.0.fetch_add(1, Ordering::SeqCst);
        let chunks = futures::stream::iter(["hello ", "world"].map(Ok::<_, std::io::Error>));
        axum::http::Response::builder()
            .header("content-length", "11")
            .body(axum::body::Body::from_stream(chunks))
            .unwrap()
    };
    let sized = |State(charges): State<Charges>| async move {
        charges.0.fetch_add(1, Ordering::SeqCst);
        ([("content-length", "5")], "hello")
    };
    let app = Router::new()
        .route("/declared", post(declared))
        .route("/sized", post(sized))
        .layer(layer)
        .with_state(charges);
    listen(app).await
}

/// A stream that declares its length: the layer holds its last bytes until
/// the response is stored, so a client that has the whole body and retries
/// at once gets the replay, never a 409 for a request that looked done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_with_a_declared_length_is_stored_before_its_last_bytes_are_sent() {
    let charges = Charges::default();
    let addr = serve_sized(charges.clone()).await;
    let first = exchange(addr, "/declared", "k-len").await;
    assert_eq!((first.status, first.body.as_str()), (200, "hello world"));
    let retry = exchange(addr, "/declared", "k-len").await;
    assert_eq!(retry.status, 200, "{}", retry.head);
    assert_eq!(retry.header("idempotent-replayed"), Some("true"));
    assert_eq!(retry.body, "hello world");
    assert_eq!(charges.0.load(Ordering::SeqCst), 1);
}

/// IdempotentAPI#21 and hono-idempotency#117: a replay carried the stored
/// `Content-Length` of another body. Framing headers are never stored: the
/// replay's length is its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_declares_the_length_of_the_body_it_sends() {
    let charges = Charges::default();
    let addr = serve_sized(charges.clone()).await;
    let first = exchange(addr, "/sized", "k-sized").await;
    assert_eq!(first.header("content-length"), Some("5"));
    let replay = exchange(addr, "/sized", "k-sized").await;
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(replay.header("content-length"), Some("5"));
    assert_eq!(
        replay.head.matches("content-length").count(),
        1,
        "{}",
        replay.head
    );
    assert_eq!(replay.body, "hello");
    assert_eq!(charges.0.load(Ordering::SeqCst), 1);
}
