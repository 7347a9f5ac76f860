use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::FutureExt;
use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use http::request::Parts;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Either, Full, LengthLimitError, Limited};
use idem_core::keys::{
    Claim, Completion, Fingerprint, IdempotencyKey, KeyStore, Lease, Scope, StoredResponse,
};
use tower_service::Service;
use tracing::Instrument;

use crate::future::{ResponseBody, ResponseFuture};
use crate::layer::Config;
use crate::Rejection;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The header added to replayed responses.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

/// Response headers not stored for replay: hop-by-hop headers, and those
/// the server sets anew for every response.
const NOT_STORED: [&str; 10] = [
    "connection",
    "content-length",
    "date",
    "keep-alive",
    "proxy-authenticate",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

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
        fingerprint: fingerprint(&parts, &body),
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

/// Runs `work` on the current tokio runtime and waits for it: dropping the
/// returned future does not stop `work`. Outside a tokio runtime it runs
/// in place, and a dropped future drops it (the layer's docs say so).
async fn detached<F, T, E>(work: F) -> Result<Response<ResponseBody<T>>, E>
where
    F: Future<Output = Result<Response<ResponseBody<T>>, E>> + Send + 'static,
    T: Send + 'static,
    E: Send + 'static,
{
    let work = work.instrument(tracing::Span::current());
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return work.await;
    };
    match runtime.spawn(work).await {
        Ok(response) => response,
        Err(error) => {
            // The runtime is shutting down (panics are caught inside): the
            // key stays claimed until its lease expires.
            tracing::error!(%error, "the task running an idempotent request was cancelled");
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
) -> Result<Response<ResponseBody<ResBody>>, S::Error>
where
    S: Service<Request<Either<Full<Bytes>, ReqBody>>, Response = Response<ResBody>>,
    K: KeyStore,
    ResBody: Body<Data = Bytes>,
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
        Ok(Claim::Replay(stored)) => return Ok(replay(stored)),
        Ok(Claim::InProgress { retry_after }) => {
            return Ok(reject(Rejection::InProgress { retry_after }))
        }
        Ok(Claim::KeyReused) => return Ok(reject(Rejection::KeyReused)),
        Err(error) => return Ok(reject(store_failed(&error))),
    };
    parts.extensions.insert(ClaimedKey {
        scope,
        key,
        recovered,
    });
    let request = Request::from_parts(parts, Either::Left(Full::new(body)));
    let run = AssertUnwindSafe(run(&config, inner, request, &lease));
    match run.catch_unwind().await {
        Ok(response) => response,
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
            Ok(reject(Rejection::ResponseFailed))
        }
    }
}

/// Calls the inner service with the claimed key and stores its response
/// (or releases the key when the policy says it is not final).
async fn run<S, K, ReqBody, ResBody>(
    config: &Config<K>,
    mut inner: S,
    request: Request<Either<Full<Bytes>, ReqBody>>,
    lease: &Lease,
) -> Result<Response<ResponseBody<ResBody>>, S::Error>
where
    S: Service<Request<Either<Full<Bytes>, ReqBody>>, Response = Response<ResBody>>,
    K: KeyStore,
    ResBody: Body<Data = Bytes>,
    ResBody::Error: Into<BoxError>,
{
    let response = match inner.call(request).await {
        Ok(response) => response,
        Err(error) => {
            release(config, lease).await;
            return Err(error);
        }
    };
    if !config.policy.is_final(response.status().as_u16()) {
        release(config, lease).await;
        return Ok(response.map(Either::Right));
    }
    let (parts, body) = response.into_parts();
    let collected: Result<_, BoxError> = body.collect().await.map_err(Into::into);
    let body = match collected {
        Ok(collected) => collected.to_bytes(),
        Err(error) => {
            tracing::error!(%error, "the response body failed: releasing the idempotency key");
            release(config, lease).await;
            return Ok(reject(Rejection::ResponseFailed));
        }
    };
    complete(config, lease, stored(parts.status, &parts.headers, &body)).await;
    Ok(Response::from_parts(parts, Either::Left(Full::new(body))))
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

/// Method, path with query, and body; a JSON body in canonical form (see
/// [`Fingerprint`]), taken from its bytes so that no number or duplicate
/// key is merged by a parser on the way.
fn fingerprint(parts: &Parts, body: &[u8]) -> Fingerprint {
    let method = parts.method.as_str();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let is_json = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|mime| {
            let mime = mime.trim().to_ascii_lowercase();
            mime == "application/json" || mime.ends_with("+json")
        })
        .unwrap_or(false);
    if is_json {
        Fingerprint::of_json_body(method, path, body)
    } else {
        Fingerprint::of_request(method, path, body)
    }
}

fn stored(status: StatusCode, headers: &HeaderMap, body: &Bytes) -> StoredResponse {
    let mut stored = StoredResponse::new(status.as_u16(), body.to_vec());
    stored.headers = headers
        .iter()
        .filter(|(name, _)| !NOT_STORED.contains(&name.as_str()))
        .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
        .collect();
    stored
}

fn replay<B>(stored: StoredResponse) -> Response<ResponseBody<B>> {
    let mut response = Response::new(Either::Left(Full::new(Bytes::from(stored.body))));
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
    rejection.into_response().map(Either::Left)
}

async fn release<K: KeyStore>(config: &Config<K>, lease: &Lease) {
    if let Err(error) = config.store.release(lease).await {
        // The key stays claimed until its lease expires; the next retry
        // after that takes it over.
        tracing::error!(%error, key = %lease.key(), "idempotency key store failed to release a key");
    }
}

async fn complete<K: KeyStore>(config: &Config<K>, lease: &Lease, response: StoredResponse) {
    match config.store.complete(lease, &response).await {
        Ok(Completion::Stored) => {}
        Ok(Completion::LeaseLost) => tracing::warn!(
            key = %lease.key(),
            "the idempotency key's lease expired and another request took it over before this \
             one completed: the operation may have run twice (outcome uncertain); choose a longer lease"
        ),
        Err(error) => tracing::error!(
            %error,
            key = %lease.key(),
            "idempotency key store failed to store a response: a retry after the lease expires will run again"
        ),
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
