use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH};
use http::request::Parts;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Either, Full, LengthLimitError, Limited};
use idem_core::keys::{
    Claim, Completion, Fingerprint, IdempotencyKey, KeyStore, Lease, Scope, StoredResponse,
};
use tower_service::Service;
use tracing::Instrument;

use crate::body::{self, BoxError, End, Feed};
use crate::fingerprint::fingerprint;
use crate::future::{ResponseBody, ResponseFuture};
use crate::layer::Config;
use crate::Rejection;

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
    let admitted = admit(&config, &parts, body).await;
    let (scope, key, body) = match admitted {
        Ok(admitted) => admitted,
        Err(rejection) => return Ok(reject(rejection)),
    };
    let request = Admitted {
        fingerprint: fingerprint(&parts, &body, &config.fingerprint_headers),
        parts,
        body,
        scope,
        key,
    };
    // Nothing is claimed yet: a client that hangs up until here leaves no
    // trace. From the claim on, the work runs to its end on a task of its
    // own, so that a hang-up (hyper drops this future) never drops a
    // claimed request between its effects and its stored response.
    detached(claim_and_run(config, inner, request)).await
}

/// A request whose key, scope and body were read.
struct Admitted {
    parts: Parts,
    body: Bytes,
    scope: Scope,
    key: IdempotencyKey,
    fingerprint: Fingerprint,
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
/// Dropping the returned future stops neither. Outside a tokio runtime it
/// runs in place, the relayed body drives the rest itself, and a dropped
/// future or body drops the work (the layer's docs say so).
async fn detached<F, T, E>(work: F) -> Result<Response<ResponseBody<T>>, E>
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
    let task = runtime.spawn(
        async move {
            let Ran { response, pump } = work.await;
            // The client may be gone: the pump then stores the response
            // without relaying it.
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
            Ok(reject(Rejection::ResponseFailed))
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
    } = request;
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
            return Ran::done(Ok(reject(Rejection::InProgress { retry_after })))
        }
        Ok(Claim::KeyReused) => return Ran::done(Ok(reject(Rejection::KeyReused))),
        Err(error) => return Ran::done(Ok(reject(store_failed(&error)))),
    };
    parts.extensions.insert(ClaimedKey {
        scope,
        key,
        recovered,
    });
    let request = Request::from_parts(parts, Either::Left(Full::new(body)));
    let run = AssertUnwindSafe(run(&config, inner, request, &lease));
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
                key = %lease.key(),
                "the handler panicked: releasing the idempotency key, nothing is stored"
            );
            release(&config, &lease).await;
            Ran::done(Ok(reject(Rejection::ResponseFailed)))
        }
    }
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
    lease: &Lease,
) -> Ran<ResBody, S::Error>
where
    S: Service<Request<Either<Full<Bytes>, ReqBody>>, Response = Response<ResBody>>,
    K: KeyStore + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let response = match inner.call(request).await {
        Ok(response) => response,
        Err(error) => {
            release(config, lease).await;
            return Ran::done(Err(error));
        }
    };
    if !config.policy.is_final(response.status().as_u16()) {
        release(config, lease).await;
        return Ran::done(Ok(response.map(ResponseBody::inner)));
    }
    let (parts, body) = response.into_parts();
    let head = stored_head(parts.status, &parts.headers, config);
    let room = config.response_limit.checked_sub(head_size(&head));
    let hint = body.size_hint();
    match (room, hint.exact()) {
        (Some(room), Some(len)) if len <= room as u64 => {
            let bytes = match read_known_length(body, room).await {
                Ok(bytes) => bytes,
                Err(error) => {
                    tracing::error!(%error, "the response body failed: releasing the idempotency key");
                    release(config, lease).await;
                    return Ran::done(Ok(reject(Rejection::ResponseFailed)));
                }
            };
            let mut stored = head;
            stored.body = bytes.to_vec();
            complete(config, lease, stored).await;
            Ran::done(Ok(Response::from_parts(parts, ResponseBody::full(bytes))))
        }
        (Some(room), None) => {
            let (relay, feed) = body::relay(hint);
            let pump = pump(
                Arc::clone(config),
                lease.clone(),
                Kept::new(head, room, declared_length(&parts.headers)),
                body,
                feed,
            );
            Ran {
                response: Ok(Response::from_parts(parts, ResponseBody::relay(relay))),
                pump: Some(Box::pin(pump)),
            }
        }
        _ => {
            not_kept(config, lease, parts.status.as_u16()).await;
            Ran::done(Ok(Response::from_parts(parts, ResponseBody::inner(body))))
        }
    }
}

/// Reads a body whose size hint is exact, at most `room` bytes (a body
/// longer than its own hint fails).
async fn read_known_length<B>(body: B, room: usize) -> Result<Bytes, BoxError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let collected = Limited::new(body, room).collect().await?;
    Ok(collected.to_bytes())
}

/// The copy of a relayed response the layer keeps to store it, within the
/// response limit.
struct Kept {
    stored: StoredResponse,
    chunks: Vec<Bytes>,
    /// Body bytes still allowed under the limit.
    room: usize,
    /// The response's `Content-Length`, if it declares one.
    declared: Option<u64>,
    read: u64,
}

impl Kept {
    fn new(stored: StoredResponse, room: usize, declared: Option<u64>) -> Self {
        Kept {
            stored,
            chunks: Vec::new(),
            room,
            declared,
            read: 0,
        }
    }

    /// Keeps a chunk; false when it does not fit under the limit.
    fn keep(&mut self, data: &Bytes) -> bool {
        self.read += data.len() as u64;
        if data.len() > self.room {
            return false;
        }
        self.room -= data.len();
        self.chunks.push(data.clone());
        true
    }

    /// Whether the body has reached the length it declared: its last bytes
    /// wait until the record is stored.
    fn at_declared_end(&self) -> bool {
        self.declared == Some(self.read)
    }

    fn into_stored(self) -> StoredResponse {
        let mut stored = self.stored;
        stored.body = self.chunks.concat();
        stored
    }
}

/// Reads a relayed body to its end and stores it, handing each frame to
/// the client as it comes (trailers are relayed, not stored). It does not
/// wait for the client: what it has not read yet is what the layer keeps
/// anyway. When the body crosses the limit, the key is completed at once
/// with [`Rejection::ResponseNotKept`] and the client reads the rest of
/// the body itself (nothing is read once it hung up). A body that fails
/// or panics before that releases the key and ends the client's body with
/// an error.
async fn pump<K, B>(config: Arc<Config<K>>, lease: Lease, mut kept: Kept, body: B, feed: Feed<B>)
where
    K: KeyStore,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let mut body = Box::pin(body);
    let mut held = None;
    loop {
        // The body's own error type need not be `Send`: it becomes a
        // `BoxError` inside the poll.
        let next = body
            .frame()
            .map(|frame| frame.map(|f| f.map_err(Into::into)));
        let next: Result<Option<Result<_, BoxError>>, _> =
            AssertUnwindSafe(next).catch_unwind().await;
        let frame = match next {
            Ok(None) => break,
            Ok(Some(Ok(frame))) => frame,
            Ok(Some(Err(error))) => {
                tracing::error!(%error, "the response body failed: releasing the idempotency key");
                release(&config, &lease).await;
                return feed.end(End::Failed);
            }
            Err(_) => {
                tracing::error!(
                    key = %lease.key(),
                    "the response body panicked: releasing the idempotency key, nothing is stored"
                );
                release(&config, &lease).await;
                return feed.end(End::Failed);
            }
        };
        if let Some(earlier) = held.take() {
            feed.push(earlier);
        }
        if let Some(data) = frame.data_ref() {
            if !kept.keep(data) {
                not_kept(&config, &lease, kept.stored.status).await;
                feed.push(frame);
                let rest = if feed.client_gone() {
                    End::Done
                } else {
                    End::Rest(body)
                };
                return feed.end(rest);
            }
        }
        if kept.at_declared_end() {
            held = Some(frame);
        } else {
            feed.push(frame);
        }
    }
    complete(&config, &lease, kept.into_stored()).await;
    if let Some(last) = held {
        feed.push(last);
    }
    feed.end(End::Done);
}

/// The `Content-Length` a response declares.
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
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
    let mut response = Response::new(ResponseBody::full(Bytes::from(stored.body)));
    *response.status_mut() =
        StatusCode::from_u16(stored.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    for (name, value) in stored.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(&value),
        ) {
            headers.append(name, value);
        }
    }
    headers.insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    response
}

fn reject<B>(rejection: Rejection) -> Response<ResponseBody<B>> {
    rejection.into_bytes_response().map(ResponseBody::full)
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
async fn complete<K: KeyStore>(config: &Config<K>, lease: &Lease, response: StoredResponse) {
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
            not_kept(config, lease, status).await;
        }
    }
}

/// Completes the key with [`Rejection::ResponseNotKept`]: its response is
/// too large to keep, or could not be stored.
async fn not_kept<K: KeyStore>(config: &Config<K>, lease: &Lease, status: u16) {
    let answer = Rejection::ResponseNotKept { status }.to_stored();
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
