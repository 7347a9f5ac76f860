use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH};
use http::request::Parts;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Either, Full, LengthLimitError, Limited};
use idem_core::keys::{
    Claim, Completion, Fingerprint, IdempotencyKey, KeyStore, Lease, Scope, StoredResponse,
    TRAILER_PREFIX,
};
use tokio::time::Instant;
use tower_service::Service;
use tracing::Instrument;

use crate::body::{self, BoxError, End, Feed};
use crate::fingerprint::fingerprint;
use crate::future::{ResponseBody, ResponseFuture};
use crate::grpc::{self, Wire};
use crate::layer::Config;
use crate::{Rejection, StoredHeaders};

/// The header added to replayed responses.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

/// Added to the extensions of a request the layer lets through to the
/// inner service with a claimed key, so a handler can pass the key on
/// (e.g. to a payment provider) and see whether it is recovering the key
/// of an earlier run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedKey {
    /// The client's scope.
    pub scope: Scope,
    /// The key.
    pub key: IdempotencyKey,
    /// True when an earlier run with this key had claimed it and its lease
    /// expired before it completed: **its outcome is uncertain** (it
    /// crashed, or it is still running). Check what it did before doing an
    /// outside effect again.
    pub recovered: bool,
}

/// The middleware [`IdempotencyLayer`](crate::IdempotencyLayer) applies.
pub struct Idempotency<S, K> {
    pub(crate) inner: S,
    pub(crate) config: Arc<Config<K>>,
}

impl<S: Clone, K> Clone for Idempotency<S, K> {
    fn clone(&self) -> Self {
        Idempotency {
            inner: self.inner.clone(),
            config: Arc::clone(&self.config),
        }
    }
}

impl<S: fmt::Debug, K> fmt::Debug for Idempotency<S, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Idempotency")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, K, ReqBody, ResBody> Service<Request<ReqBody>> for Idempotency<S, K>
where
    S: Service<Request<Either<Full<Bytes>, ReqBody>>, Response = Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    K: KeyStore + 'static,
    ReqBody: Body<Data = Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let covered = self.config.methods.contains(request.method());
        let keyless =
            !self.config.require_key && !request.headers().contains_key(&self.config.header);
        if !covered || keyless {
            return ResponseFuture::passthrough(self.inner.call(request.map(Either::Right)));
        }
        // The service made ready by `poll_ready` serves this request; the
        // clone stays behind for the next one.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let config = Arc::clone(&self.config);
        ResponseFuture::idempotent(Box::pin(handle(config, inner, request)))
    }
}

/// The protocol for one request with a covered method.
async fn handle<S, K, ReqBody, ResBody>(
    config: Arc<Config<K>>,
    inner: S,
    request: Request<ReqBody>,
) -> Result<Response<ResponseBody<ResBody>>, S::Error>
where
    S: Service<Request<Either<Full<Bytes>, ReqBody>>, Response = Response<ResBody>>
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    K: KeyStore + 'static,
    ReqBody: Body<Data = Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let (parts, body) = request.into_parts();
    let wire = Wire::of(&parts.headers);
    if wire == Wire::GrpcWeb {
        return Ok(reject(wire, Rejection::GrpcWeb));
    }
    let admitted = admit(&config, &parts, body).await;
    let (scope, key, body) = match admitted {
        Ok(admitted) => admitted,
        Err(rejection) => return Ok(reject(wire, rejection)),
    };
    let request = Admitted {
        fingerprint: fingerprint(&parts, &body, &config.fingerprint_headers),
        parts,
        body,
        scope,
        key,
        wire,
    };
    // Nothing is claimed yet: a client that hangs up until here leaves no
    // trace. From the claim on, the work runs to its end on a task of its
    // own, so that a hang-up (hyper drops this future) never drops a
    // claimed request between its effects and its stored response.
    detached(
        &config,
        wire,
        claim_and_run(Arc::clone(&config), inner, request),
    )
    .await
}

/// A request whose key, scope and body were read.
struct Admitted {
    parts: Parts,
    body: Bytes,
    scope: Scope,
    key: IdempotencyKey,
    fingerprint: Fingerprint,
    wire: Wire,
}

/// A claim this request holds, and how its response is read.
#[derive(Clone)]
struct Claimed {
    lease: Lease,
    wire: Wire,
    /// When the response must be final in the store, with time to spare
    /// before the lease expires (`None` outside a tokio runtime, which
    /// has no timer).
    deadline: Option<Instant>,
}

/// How far into its lease a claimed request's response may still be read
/// to be stored: three quarters, leaving a quarter for the store's write.
fn reading_window(lease: Duration) -> Duration {
    lease / 4 * 3
}

/// The reading of a relayed body to its stored record (see [`pump`]).
type Pump = BoxFuture<'static, ()>;

/// What a claimed request produced: the response for the client and,
/// when its body is relayed, the work that reads it and stores it.
struct Ran<T, E> {
    response: Result<Response<ResponseBody<T>>, E>,
    pump: Option<Pump>,
}

impl<T, E> Ran<T, E> {
    fn done(response: Result<Response<ResponseBody<T>>, E>) -> Self {
        Ran {
            response,
            pump: None,
        }
    }
}

/// Runs `work` on the current tokio runtime and waits for its response;
/// the task then goes on reading a relayed body to its stored record.
/// Dropping the returned future stops neither; [`Drain`](crate::Drain)
/// counts the task until it ends. Outside a tokio runtime it runs in
/// place, the relayed body drives the rest itself, and a dropped future
/// or body drops the work (the layer's docs say so).
async fn detached<K, F, T, E>(
    config: &Config<K>,
    wire: Wire,
    work: F,
) -> Result<Response<ResponseBody<T>>, E>
where
    F: Future<Output = Ran<T, E>> + Send + 'static,
    T: Send + 'static,
    E: Send + 'static,
{
    let span = tracing::Span::current();
    let work = work.instrument(span.clone());
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        let Ran { response, pump } = work.await;
        return response.map(|mut response| {
            if let Some(pump) = pump {
                response.body_mut().drive(pump);
            }
            response
        });
    };
    let (head, response) = tokio::sync::oneshot::channel();
    let running = config.drain.enter();
    let task = runtime.spawn(
        async move {
            let _running = running;
            let Ran { response, pump } = work.await;
            // The client may be gone: the pump then stores the final
            // answer without relaying it.
            let _ = head.send(response);
            if let Some(pump) = pump {
                pump.await;
            }
        }
        .instrument(span),
    );
    match response.await {
        Ok(response) => response,
        Err(_) => {
            // The task ended without a response: the runtime is shutting
            // down (panics are caught inside). The key stays claimed until
            // its lease expires.
            let error = task.await.err();
            tracing::error!(
                ?error,
                "the task running an idempotent request was cancelled"
            );
            Ok(reject(wire, Rejection::ResponseFailed))
        }
    }
}

/// Claims the key and, when this request may run, runs it: from here on
/// the sequence must not be cut short (see [`detached`]). A panic in the
/// handler or its response body releases the key and answers 500.
async fn claim_and_run<S, K, ReqBody, ResBody>(
    config: Arc<Config<K>>,
    inner: S,
    request: Admitted,
) -> Ran<ResBody, S::Error>
where
    S: Service<Request<Either<Full<Bytes>, ReqBody>>, Response = Response<ResBody>>,
    K: KeyStore + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let Admitted {
        mut parts,
        body,
        scope,
        key,
        fingerprint,
        wire,
    } = request;
    // Taken before the claim: the store's lease starts no earlier.
    let claimed_at = Instant::now();
    let claim = config
        .store
        .claim(&scope, &key, &fingerprint, config.lease)
        .await;
    let (lease, recovered) = match claim {
        Ok(Claim::New(lease)) => (lease, false),
        Ok(Claim::Recovered(lease)) => {
            tracing::warn!(%scope, %key, "taking over an idempotency key whose lease expired: the earlier run's outcome is uncertain");
            (lease, true)
        }
        Ok(Claim::Replay(stored)) => return Ran::done(Ok(replay(stored))),
        Ok(Claim::InProgress { retry_after }) => {
            return Ran::done(Ok(reject(wire, Rejection::InProgress { retry_after })))
        }
        Ok(Claim::KeyReused) => return Ran::done(Ok(reject(wire, Rejection::KeyReused))),
        Err(error) => return Ran::done(Ok(reject(wire, store_failed(&error)))),
    };
    parts.extensions.insert(ClaimedKey {
        scope,
        key,
        recovered,
    });
    let claimed = Claimed {
        lease,
        wire,
        deadline: tokio::runtime::Handle::try_current()
            .is_ok()
            .then(|| claimed_at + reading_window(config.lease)),
    };
    let request = Request::from_parts(parts, Either::Left(Full::new(body)));
    let run = AssertUnwindSafe(run(&config, inner, request, &claimed));
    match run.catch_unwind().await {
        Ok(ran) => ran,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("(not a string)");
            tracing::error!(
                panic = message,
                key = %claimed.lease.key(),
                "the handler panicked: releasing the idempotency key, nothing is stored"
            );
            release(&config, &claimed.lease).await;
            Ran::done(Ok(reject(wire, Rejection::ResponseFailed)))
        }
    }
}

/// Whether a response is a final answer, as far as its head tells:
/// `Some` when it does, `None` for a gRPC call whose `grpc-status` comes
/// in its trailers.
fn final_at_head<K, B>(config: &Config<K>, wire: Wire, response: &Response<B>) -> Option<bool> {
    if !config.policy.is_final(response.status().as_u16()) {
        return Some(false);
    }
    if wire != Wire::Grpc {
        return Some(true);
    }
    grpc::status_in(response.headers())
        .map(|code| config.policy.is_final(grpc::http_equivalent(code)))
}

/// Calls the inner service with the claimed key and stores its response
/// (or releases the key when the policy says it is not final): in memory
/// when its length is known and within the limit, relayed through
/// [`pump`] when it is a stream, and replaced by
/// [`Rejection::ResponseNotKept`] when it is larger than the limit.
async fn run<S, K, ReqBody, ResBody>(
    config: &Arc<Config<K>>,
    mut inner: S,
    request: Request<Either<Full<Bytes>, ReqBody>>,
    claimed: &Claimed,
) -> Ran<ResBody, S::Error>
where
    S: Service<Request<Either<Full<Bytes>, ReqBody>>, Response = Response<ResBody>>,
    K: KeyStore + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let lease = &claimed.lease;
    let response = match inner.call(request).await {
        Ok(response) => response,
        Err(error) => {
            release(config, lease).await;
            return Ran::done(Err(error));
        }
    };
    let at_head = final_at_head(config, claimed.wire, &response);
    if at_head == Some(false) {
        release(config, lease).await;
        return Ran::done(Ok(response.map(ResponseBody::inner)));
    }
    let (parts, body) = response.into_parts();
    let hint = body.size_hint();
    let Ok(expected) = expected_length(parts.status, &parts.headers, &hint) else {
        // hyper refuses to send it: the client never gets this answer.
        tracing::error!(
            key = %lease.key(),
            "the response's Content-Length is not one number: releasing the idempotency key, nothing is stored"
        );
        release(config, lease).await;
        return Ran::done(Ok(Response::from_parts(parts, ResponseBody::inner(body))));
    };
    let head = stored_head(parts.status, &parts.headers, config);
    let Some(room) = config.response_limit.checked_sub(head_size(&head)) else {
        not_kept(config, claimed, parts.status.as_u16()).await;
        return Ran::done(Ok(Response::from_parts(parts, ResponseBody::inner(body))));
    };
    let kept = Kept::new(head, room, expected, at_head.is_none());
    match hint.exact() {
        Some(len) if len <= room as u64 => buffered(config, claimed, parts, body, kept).await,
        Some(_) => {
            not_kept(config, claimed, parts.status.as_u16()).await;
            Ran::done(Ok(Response::from_parts(parts, ResponseBody::inner(body))))
        }
        None => {
            let (relay, feed) = body::relay(hint);
            let pump = pump(Arc::clone(config), claimed.clone(), kept, body, feed);
            Ran {
                response: Ok(Response::from_parts(parts, ResponseBody::relay(relay))),
                pump: Some(Box::pin(pump)),
            }
        }
    }
}

/// The length a response's body must have, when it says: its
/// `Content-Length` (every value the same number), else its exact size
/// hint. `None` for a status that has no content (1xx, 204, 304), where a
/// `Content-Length` describes another response. `Err` when the header
/// holds anything but one number.
fn expected_length(
    status: StatusCode,
    headers: &HeaderMap,
    hint: &SizeHint,
) -> Result<Option<u64>, ()> {
    if status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(None);
    }
    let mut declared = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        let text = value.to_str().map_err(|_| ())?;
        for part in text.split(',') {
            let part = part.trim_matches([' ', '\t']);
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(());
            }
            let len: u64 = part.parse().map_err(|_| ())?;
            if declared.is_some_and(|earlier| earlier != len) {
                return Err(());
            }
            declared = Some(len);
        }
    }
    Ok(declared.or_else(|| hint.exact()))
}

/// Reads a body whose size hint is exact and within the limit, stores it
/// (or releases the key), then hands the whole response to the client.
/// A body still not read at the deadline (or longer than its hint) is
/// relayed instead, its key completed with [`Rejection::ResponseNotKept`].
async fn buffered<K, B, E>(
    config: &Arc<Config<K>>,
    claimed: &Claimed,
    parts: http::response::Parts,
    body: B,
    mut kept: Kept,
) -> Ran<B, E>
where
    K: KeyStore + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let hint = body.size_hint();
    let mut body = Box::pin(body);
    loop {
        let frame = match next_frame(&mut body, claimed.deadline, None).await {
            Next::Frame(frame) => frame,
            Next::End => break,
            Next::Failed => {
                release(config, &claimed.lease).await;
                return Ran::done(Ok(reject(claimed.wire, Rejection::ResponseFailed)));
            }
            Next::Late | Next::Gone => {
                late(&claimed.lease);
                not_kept(config, claimed, parts.status.as_u16()).await;
                let relay = relayed(hint, &kept, None, End::Rest(body));
                return Ran::done(Ok(Response::from_parts(parts, relay)));
            }
        };
        match kept.take(&frame, &config.stored_headers) {
            Ok(()) => {}
            Err(Overflow::Limit) => {
                not_kept(config, claimed, parts.status.as_u16()).await;
                let relay = relayed(hint, &kept, Some(frame), End::Rest(body));
                return Ran::done(Ok(Response::from_parts(parts, relay)));
            }
            Err(Overflow::Overran) => {
                overran(&claimed.lease);
                release(config, &claimed.lease).await;
                return Ran::done(Ok(reject(claimed.wire, Rejection::ResponseFailed)));
            }
        }
    }
    let (bytes, trailers) = (kept.body(), kept.trailers.clone());
    match settle(config, claimed, kept).await {
        Settled::Failed => Ran::done(Ok(reject(claimed.wire, Rejection::ResponseFailed))),
        Settled::Kept => Ran::done(Ok(Response::from_parts(
            parts,
            ResponseBody::stored(bytes, trailers),
        ))),
    }
}

/// A relayed body for the client: the frames read so far, `extra`, then
/// `end`.
fn relayed<B>(
    hint: SizeHint,
    kept: &Kept,
    extra: Option<Frame<Bytes>>,
    end: End<B>,
) -> ResponseBody<B> {
    let (relay, feed) = body::relay(hint);
    for chunk in &kept.chunks {
        feed.push(Frame::data(chunk.clone()));
    }
    if let Some(trailers) = &kept.trailers {
        feed.push(Frame::trailers(trailers.clone()));
    }
    if let Some(frame) = extra {
        feed.push(frame);
    }
    feed.end(end);
    ResponseBody::relay(relay)
}

fn late(lease: &Lease) {
    tracing::warn!(
        key = %lease.key(),
        "the response is still streaming three quarters into the idempotency key's lease: \
         completing the key with 410 (response not kept), the client reads the rest"
    );
}

fn overran(lease: &Lease) {
    tracing::error!(
        key = %lease.key(),
        "the response body is longer than its declared length: releasing the idempotency key"
    );
}

/// The next frame of a response body, or why there is none: its end, its
/// failure (an error or a panic, logged), the deadline, or the client's
/// hang-up (when `feed` is given), whichever comes first — a frame that
/// is ready wins.
async fn next_frame<B>(
    body: &mut Pin<Box<B>>,
    deadline: Option<Instant>,
    feed: Option<&Feed<B>>,
) -> Next
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let late = async move {
        match deadline {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    let gone = async move {
        match feed {
            Some(feed) => feed.gone().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        biased;
        next = read_frame(body) => next,
        () = gone => Next::Gone,
        () = late => Next::Late,
    }
}

/// The next frame, the end, or a failure (an error or a panic, logged).
async fn read_frame<B>(body: &mut Pin<Box<B>>) -> Next
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    // The body's own error type need not be `Send`: it becomes a
    // `BoxError` inside the poll.
    let next = body
        .frame()
        .map(|frame| frame.map(|f| f.map_err(Into::<BoxError>::into)));
    match AssertUnwindSafe(next).catch_unwind().await {
        Ok(None) => Next::End,
        Ok(Some(Ok(frame))) => Next::Frame(frame),
        Ok(Some(Err(error))) => {
            tracing::error!(%error, "the response body failed: releasing the idempotency key");
            Next::Failed
        }
        Err(_) => {
            tracing::error!(
                "the response body panicked: releasing the idempotency key, nothing is stored"
            );
            Next::Failed
        }
    }
}

/// What reading a response body gave.
enum Next {
    Frame(Frame<Bytes>),
    End,
    Failed,
    /// The deadline passed first.
    Late,
    /// The client hung up (and, once it has, no frame was ready).
    Gone,
}

/// Why a frame was not kept.
enum Overflow {
    /// The stored response would exceed the response limit.
    Limit,
    /// The body is longer than the length it declared.
    Overran,
}

/// The copy of a final response the layer keeps to store it, within the
/// response limit.
struct Kept {
    stored: StoredResponse,
    chunks: Vec<Bytes>,
    /// Bytes still allowed under the limit.
    room: usize,
    /// The length the body must have ([`expected_length`]).
    expected: Option<u64>,
    read: u64,
    /// The trailers as the handler sent them (the client gets them all).
    trailers: Option<HeaderMap>,
    /// A gRPC call whose `grpc-status` comes in its trailers.
    status_in_trailers: bool,
}

impl Kept {
    fn new(
        stored: StoredResponse,
        room: usize,
        expected: Option<u64>,
        status_in_trailers: bool,
    ) -> Self {
        Kept {
            stored,
            chunks: Vec::new(),
            room,
            expected,
            read: 0,
            trailers: None,
            status_in_trailers,
        }
    }

    /// Keeps a frame: its data, or its trailers (those the stored headers
    /// filter lets through go to the store).
    fn take(&mut self, frame: &Frame<Bytes>, filter: &StoredHeaders) -> Result<(), Overflow> {
        if let Some(data) = frame.data_ref() {
            self.read += data.len() as u64;
            if self.expected.is_some_and(|len| self.read > len) {
                return Err(Overflow::Overran);
            }
            self.room = self.room.checked_sub(data.len()).ok_or(Overflow::Limit)?;
            self.chunks.push(data.clone());
        } else if let Some(trailers) = frame.trailers_ref() {
            for (name, value) in trailers.iter().filter(|(name, _)| filter.stores(name)) {
                let name = format!("{TRAILER_PREFIX}{name}");
                let size = name.len() + value.len();
                self.room = self.room.checked_sub(size).ok_or(Overflow::Limit)?;
                self.stored.headers.push((name, value.as_bytes().to_vec()));
            }
            self.trailers = Some(trailers.clone());
        }
        Ok(())
    }

    /// Whether a frame just kept ends the body for the client: its
    /// trailers, or the data that reaches the declared length.
    fn ends_body(&self, frame: &Frame<Bytes>) -> bool {
        frame.is_trailers() || self.expected == Some(self.read)
    }

    fn body(&self) -> Bytes {
        Bytes::from(self.chunks.concat())
    }

    fn into_stored(self) -> StoredResponse {
        let mut stored = self.stored;
        stored.body = self.chunks.concat();
        stored
    }
}

/// How a fully read response ended.
enum Settled {
    /// Stored, or released as the policy says: the client gets it as it is.
    Kept,
    /// Shorter than it declared: released, and the client's response must
    /// end with an error.
    Failed,
}

/// Stores a response read to its end, or releases its key: a body shorter
/// than its declared length is a failure (hyper aborts such a response:
/// its caller never got it), and a gRPC call is final only when its
/// `grpc-status` says so.
async fn settle<K: KeyStore>(config: &Config<K>, claimed: &Claimed, kept: Kept) -> Settled {
    if let Some(expected) = kept.expected.filter(|len| *len != kept.read) {
        tracing::error!(
            key = %claimed.lease.key(),
            expected,
            read = kept.read,
            "the response body ended before its declared length: releasing the idempotency key"
        );
        release(config, &claimed.lease).await;
        return Settled::Failed;
    }
    if kept.status_in_trailers {
        let code = kept.trailers.as_ref().and_then(grpc::status_in);
        let final_ = code.is_some_and(|code| config.policy.is_final(grpc::http_equivalent(code)));
        if !final_ {
            if code.is_none() {
                tracing::warn!(
                    key = %claimed.lease.key(),
                    "a gRPC response ended without grpc-status: releasing the idempotency key"
                );
            }
            release(config, &claimed.lease).await;
            return Settled::Kept;
        }
    }
    complete(config, claimed, kept.into_stored()).await;
    Settled::Kept
}

/// Reads a relayed body to its end and stores it, handing each frame to
/// the client as it comes — except what ends the body (the data that
/// reaches a declared length, and the trailers), which waits until the
/// record is final. It does not wait for the client: what it has not read
/// yet is what the layer keeps anyway.
///
/// It stops reading, and completes the key with
/// [`Rejection::ResponseNotKept`], when the body crosses the limit or is
/// still streaming at the deadline (the client then reads the rest
/// itself), and when the client hung up and the body has nothing more
/// ready (the body is dropped). A body that fails, panics, or ends short
/// of or beyond its declared length releases the key and ends the
/// client's body with an error.
async fn pump<K, B>(
    config: Arc<Config<K>>,
    claimed: Claimed,
    mut kept: Kept,
    body: B,
    feed: Feed<B>,
) where
    K: KeyStore,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let mut body = Box::pin(body);
    let mut held: Vec<Frame<Bytes>> = Vec::new();
    let status = kept.stored.status;
    loop {
        // Once the client is gone, `next_frame` still returns the frames
        // that are ready (they are read first), then `Gone`.
        let frame = match next_frame(&mut body, claimed.deadline, Some(&feed)).await {
            Next::Frame(frame) => frame,
            Next::End => break,
            Next::Failed => {
                release(&config, &claimed.lease).await;
                return feed.end(End::Failed);
            }
            Next::Gone if feed.client_gone() => {
                tracing::info!(
                    key = %claimed.lease.key(),
                    "the client hung up mid-stream: the stream is no longer read, its key is \
                     completed with 410 (response not kept)"
                );
                not_kept(&config, &claimed, status).await;
                return feed.end(End::Done);
            }
            Next::Gone | Next::Late => {
                late(&claimed.lease);
                not_kept(&config, &claimed, status).await;
                held.drain(..).for_each(|frame| feed.push(frame));
                return feed.end(End::Rest(body));
            }
        };
        match kept.take(&frame, &config.stored_headers) {
            Ok(()) => {}
            Err(Overflow::Limit) => {
                not_kept(&config, &claimed, status).await;
                held.drain(..).for_each(|frame| feed.push(frame));
                feed.push(frame);
                let rest = if feed.client_gone() {
                    End::Done
                } else {
                    End::Rest(body)
                };
                return feed.end(rest);
            }
            Err(Overflow::Overran) => {
                overran(&claimed.lease);
                release(&config, &claimed.lease).await;
                return feed.end(End::Failed);
            }
        }
        if !held.is_empty() || kept.ends_body(&frame) {
            held.push(frame);
        } else {
            feed.push(frame);
        }
    }
    match settle(&config, &claimed, kept).await {
        Settled::Failed => feed.end(End::Failed),
        Settled::Kept => {
            held.into_iter().for_each(|frame| feed.push(frame));
            feed.end(End::Done);
        }
    }
}

/// Checks the key, the scope and the body size, and reads the body.
async fn admit<K, B>(
    config: &Config<K>,
    parts: &Parts,
    body: B,
) -> Result<(Scope, IdempotencyKey, Bytes), Rejection>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let key = key(config, &parts.headers)?;
    let scope = (config.scope)(parts).ok_or(Rejection::UnknownClient)?;
    let too_large = Rejection::BodyTooLarge {
        limit: config.body_limit,
    };
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > config.body_limit as u64) {
        return Err(too_large);
    }
    match Limited::new(body, config.body_limit).collect().await {
        Ok(collected) => Ok((scope, key, collected.to_bytes())),
        Err(error) if error.is::<LengthLimitError>() => Err(too_large),
        Err(_) => Err(Rejection::BodyUnreadable),
    }
}

/// The key of a request: exactly one header, 1..=255 visible ASCII bytes.
/// A structured-field string (`"..."`, as the IETF draft writes it) is
/// unquoted; a bare token is taken as it is.
fn key<K>(config: &Config<K>, headers: &HeaderMap) -> Result<IdempotencyKey, Rejection> {
    let header = || config.header_display.to_string();
    let mut values = headers.get_all(&config.header).iter();
    let value = values
        .next()
        .ok_or_else(|| Rejection::MissingKey { header: header() })?;
    let invalid = |reason| Rejection::InvalidKey {
        header: header(),
        reason,
    };
    if values.next().is_some() {
        return Err(invalid("the header appears more than once"));
    }
    let text = value.to_str().map_err(|_| {
        invalid("it contains a space, a control character or a non-ASCII character")
    })?;
    let text = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .filter(|t| !t.contains(['"', '\\']))
        .unwrap_or(text);
    IdempotencyKey::new(text).map_err(|error| match error {
        idem_core::Error::InvalidKey { reason } => invalid(reason),
        _ => invalid("it is not a valid key"),
    })
}

/// The stored response without its body: the status and the headers
/// [`StoredHeaders`](crate::StoredHeaders) lets through.
fn stored_head<K>(status: StatusCode, headers: &HeaderMap, config: &Config<K>) -> StoredResponse {
    let mut stored = StoredResponse::new(status.as_u16(), Vec::new());
    stored.headers = headers
        .iter()
        .filter(|(name, _)| config.stored_headers.stores(name))
        .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
        .collect();
    stored
}

/// The bytes the stored headers take: names and values.
fn head_size(stored: &StoredResponse) -> usize {
    stored
        .headers
        .iter()
        .map(|(name, value)| name.len() + value.len())
        .sum()
}

fn replay<B>(stored: StoredResponse) -> Response<ResponseBody<B>> {
    let mut trailers = HeaderMap::new();
    for (name, value) in stored.trailers() {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value),
        ) {
            trailers.append(name, value);
        }
    }
    let trailers = (!trailers.is_empty()).then_some(trailers);
    let mut response = Response::new(ResponseBody::stored(
        Bytes::copy_from_slice(&stored.body),
        trailers,
    ));
    *response.status_mut() =
        StatusCode::from_u16(stored.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    for (name, value) in stored.fields() {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value),
        ) {
            headers.append(name, value);
        }
    }
    headers.insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    response
}

/// The layer's own answer: a problem document, or for gRPC (and
/// gRPC-Web) a trailers-only answer with the gRPC status.
fn reject<B>(wire: Wire, rejection: Rejection) -> Response<ResponseBody<B>> {
    let response = match wire {
        Wire::Http => rejection.into_bytes_response(),
        Wire::Grpc | Wire::GrpcWeb => grpc::rejection_response(&rejection),
    };
    response.map(ResponseBody::full)
}

async fn release<K: KeyStore>(config: &Config<K>, lease: &Lease) {
    if let Err(error) = config.store.release(lease).await {
        // The key stays claimed until its lease expires; the next retry
        // after that takes it over.
        tracing::error!(%error, key = %lease.key(), "idempotency key store failed to release a key");
    }
}

/// Stores the final response. When the store fails to (a value too large
/// for it, a failing connection), stores [`Rejection::ResponseNotKept`]
/// in its place, so the retry after the lease gets a final answer instead
/// of running the work again.
async fn complete<K: KeyStore>(config: &Config<K>, claimed: &Claimed, response: StoredResponse) {
    let lease = &claimed.lease;
    let status = response.status;
    match config.store.complete(lease, &response).await {
        Ok(completion) => completed(lease, completion),
        Err(error) => {
            tracing::error!(
                %error,
                key = %lease.key(),
                size = response.body.len(),
                "idempotency key store failed to store a response: storing that it was not kept"
            );
            not_kept(config, claimed, status).await;
        }
    }
}

/// Completes the key with [`Rejection::ResponseNotKept`] (in gRPC's shape
/// for a gRPC call): its response is too large to keep, still streaming
/// at the deadline, cut short by its client's hang-up, or could not be
/// stored.
async fn not_kept<K: KeyStore>(config: &Config<K>, claimed: &Claimed, status: u16) {
    let lease = &claimed.lease;
    let rejection = Rejection::ResponseNotKept { status };
    let answer = match claimed.wire {
        Wire::Http => rejection.to_stored(),
        Wire::Grpc | Wire::GrpcWeb => grpc::rejection_stored(&rejection),
    };
    match config.store.complete(lease, &answer).await {
        Ok(completion) => completed(lease, completion),
        Err(error) => tracing::error!(
            %error,
            key = %lease.key(),
            "idempotency key store failed to store a response: a retry after the lease expires will run again"
        ),
    }
}

fn completed(lease: &Lease, completion: Completion) {
    if completion == Completion::LeaseLost {
        tracing::warn!(
            key = %lease.key(),
            "the idempotency key's lease expired and another request took it over before this \
             one completed: the operation may have run twice (outcome uncertain); choose a longer lease"
        );
    }
}

/// The answer to a key store that refused or failed to claim: a client
/// over its share is 429 and a full store 503, both with `Retry-After`;
/// any other failure is 503.
fn store_failed<E: std::error::Error + 'static>(error: &E) -> Rejection {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = cause {
        match error.downcast_ref::<idem_core::Error>() {
            Some(idem_core::Error::TooManyKeys { retry_after, .. }) => {
                tracing::debug!(%error, "a client is over its share of the idempotency key store");
                return Rejection::TooManyKeys {
                    retry_after: *retry_after,
                };
            }
            Some(idem_core::Error::KeyStoreFull { retry_after, .. }) => {
                tracing::warn!(%error, "the idempotency key store is full");
                return Rejection::StoreFull {
                    retry_after: *retry_after,
                };
            }
            _ => cause = error.source(),
        }
    }
    tracing::error!(%error, "idempotency key store failed to claim a key");
    Rejection::StoreUnavailable
}
