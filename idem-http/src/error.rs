use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use http::{Response, StatusCode};
use http_body_util::Full;
use idem_core::keys::StoredResponse;

/// The base of every problem type URI.
macro_rules! docs {
    () => {
        "https://docs.rs/idem-http/latest/idem_http/enum.Rejection.html#variant."
    };
}
/// Why the layer answered a request itself instead of passing it on (or
/// replaying it). Each becomes an `application/problem+json` response
/// (RFC 9457) whose title and detail tell the client what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    /// 400: the request has no idempotency-key header.
    #[error(
        "This endpoint requires an `{header}` header: generate a unique value (e.g. a UUID v4) \
         for each new request, and send the same value again when you retry that request."
    )]
    MissingKey {
        /// The header's name.
        header: String,
    },

    /// 400: the key is empty, too long, not visible ASCII, or the header
    /// appears more than once.
    #[error(
        "The `{header}` header is invalid: {reason}. Send it exactly once, with 1 to 255 visible \
         ASCII characters (e.g. a UUID)."
    )]
    InvalidKey {
        /// The header's name.
        header: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// 400: the scope function found no client identity in the request.
    #[error(
        "The server could not tell which client sent this request, so it cannot keep its \
         idempotency keys apart from other clients' keys: send the credentials or client \
         identifier this API requires."
    )]
    UnknownClient,

    /// 413: the body is larger than the configured limit.
    #[error(
        "The request body is larger than {limit} bytes, the most this endpoint accepts with an \
         idempotency key: send a smaller body."
    )]
    BodyTooLarge {
        /// The limit in bytes.
        limit: usize,
    },

    /// 400: the request body could not be read to its end.
    #[error(
        "The request body could not be read to its end: send the complete request again with \
         the same idempotency key."
    )]
    BodyUnreadable,

    /// 409: a request with the same key is still running.
    #[error(
        "A request with this idempotency key is still being processed: retry after {} \
         second(s) with the same key to get its response.",
        retry_after_secs(*.retry_after)
    )]
    InProgress {
        /// How long until the running request's lease expires.
        retry_after: Duration,
    },

    /// 422: the key was used before with another request.
    #[error(
        "This idempotency key was already used for a different request (another method, path, \
         query or body): use a new key for a new request, or resend the original request \
         unchanged."
    )]
    KeyReused,

    /// 503: the key store failed, so the request was not processed.
    #[error(
        "The server could not check the idempotency key, so it did not process the request: \
         retry later with the same key."
    )]
    StoreUnavailable,

    /// 429: this client holds as many idempotency keys as one client may
    /// in the store; nothing ran. Other clients are served.
    #[error(
        "This client has as many idempotency keys in progress or stored as the server keeps for \
         one client, so the request was not processed: retry after {} second(s), when its \
         oldest key is due to expire.",
        retry_after_secs(*.retry_after)
    )]
    TooManyKeys {
        /// When the client's oldest record is due to expire.
        retry_after: Duration,
    },

    /// 503: the key store is full of records that have not expired, from
    /// more clients than it was sized for; nothing ran.
    #[error(
        "The server's idempotency store is full, so the request was not processed: retry after \
         {} second(s) with the same key.",
        retry_after_secs(*.retry_after)
    )]
    StoreFull {
        /// When the store's first record is due to expire.
        retry_after: Duration,
    },

    /// 500: the handler panicked, or its response body failed or panicked
    /// while it was being stored. Nothing was stored and the key was
    /// released, so a retry runs again (when the server is shutting down
    /// the key may instead stay claimed until its lease expires).
    #[error(
        "The server failed while producing its response and did not record it: retry with the \
         same idempotency key."
    )]
    ResponseFailed,

    /// 410: the request with this key already ran, and its response was
    /// not kept for replay — it was larger than the layer's response limit
    /// ([`IdempotencyLayer::response_limit`](crate::IdempotencyLayer::response_limit)),
    /// still streaming three quarters into its key's lease, cut short by
    /// its client's hang-up, or the key store failed to store it. This
    /// answer is stored in its place, so every retry of the key gets it and
    /// the work never runs again; the client that sent the first request
    /// got (or is still getting) the whole response, unless it hung up.
    #[error(
        "The request with this idempotency key already ran (it answered with status {status}), \
         but its response was not kept, so it cannot be sent again: do not retry it with this \
         key. Look up its result another way (e.g. the resource it created), or send a new \
         request with a new key."
    )]
    ResponseNotKept {
        /// The status the request answered with.
        status: u16,
    },

    /// 501: a gRPC-Web request. Its status travels inside the response
    /// body, which the layer does not read, so it could not tell a failed
    /// call from a final one: it refuses the request rather than store
    /// either wrongly. Put the gRPC-Web translation (tonic-web's
    /// `GrpcWebLayer`) outside the idempotency layer, so that the layer
    /// sees gRPC.
    #[error(
        "This endpoint's idempotency layer does not serve gRPC-Web: call it over gRPC, or ask \
         the operator to put the gRPC-Web translation in front of the idempotency layer."
    )]
    GrpcWeb,
}

fn retry_after_secs(retry_after: Duration) -> u64 {
    (retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0)).max(1)
}

impl Rejection {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Rejection::MissingKey { .. }
            | Rejection::InvalidKey { .. }
            | Rejection::UnknownClient
            | Rejection::BodyUnreadable => StatusCode::BAD_REQUEST,
            Rejection::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Rejection::InProgress { .. } => StatusCode::CONFLICT,
            Rejection::KeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Rejection::TooManyKeys { .. } => StatusCode::TOO_MANY_REQUESTS,
            Rejection::StoreUnavailable | Rejection::StoreFull { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Rejection::ResponseFailed => StatusCode::INTERNAL_SERVER_ERROR,
            Rejection::ResponseNotKept { .. } => StatusCode::GONE,
            Rejection::GrpcWeb => StatusCode::NOT_IMPLEMENTED,
        }
    }

    /// How long the client should wait before retrying, when the answer
    /// says so (sent as `Retry-After`, in whole seconds rounded up).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Rejection::InProgress { retry_after }
            | Rejection::TooManyKeys { retry_after }
            | Rejection::StoreFull { retry_after } => Some(*retry_after),
            _ => None,
        }
    }

    /// The problem's short title.
    pub fn title(&self) -> &'static str {
        match self {
            Rejection::MissingKey { .. } => "Idempotency key missing",
            Rejection::InvalidKey { .. } => "Idempotency key invalid",
            Rejection::UnknownClient => "Client not identified",
            Rejection::BodyTooLarge { .. } => "Request body too large",
            Rejection::BodyUnreadable => "Request body unreadable",
            Rejection::InProgress { .. } => "Request in progress",
            Rejection::KeyReused => "Idempotency key reused",
            Rejection::StoreUnavailable => "Idempotency store unavailable",
            Rejection::TooManyKeys { .. } => "Too many idempotency keys",
            Rejection::StoreFull { .. } => "Idempotency store full",
            Rejection::ResponseFailed => "Response failed",
            Rejection::ResponseNotKept { .. } => "Response not kept",
            Rejection::GrpcWeb => "gRPC-Web not served",
        }
    }

    /// The problem type: a link to this variant's documentation.
    pub fn type_uri(&self) -> &'static str {
        match self {
            Rejection::MissingKey { .. } => concat!(docs!(), "MissingKey"),
            Rejection::InvalidKey { .. } => concat!(docs!(), "InvalidKey"),
            Rejection::UnknownClient => concat!(docs!(), "UnknownClient"),
            Rejection::BodyTooLarge { .. } => concat!(docs!(), "BodyTooLarge"),
            Rejection::BodyUnreadable => concat!(docs!(), "BodyUnreadable"),
            Rejection::InProgress { .. } => concat!(docs!(), "InProgress"),
            Rejection::KeyReused => concat!(docs!(), "KeyReused"),
            Rejection::StoreUnavailable => concat!(docs!(), "StoreUnavailable"),
            Rejection::TooManyKeys { .. } => concat!(docs!(), "TooManyKeys"),
            Rejection::StoreFull { .. } => concat!(docs!(), "StoreFull"),
            Rejection::ResponseFailed => concat!(docs!(), "ResponseFailed"),
            Rejection::ResponseNotKept { .. } => concat!(docs!(), "ResponseNotKept"),
            Rejection::GrpcWeb => concat!(docs!(), "GrpcWeb"),
        }
    }

    /// The `application/problem+json` response, with `Retry-After` for
    /// [`Rejection::InProgress`], [`Rejection::TooManyKeys`] and
    /// [`Rejection::StoreFull`].
    pub fn into_response(self) -> Response<Full<Bytes>> {
        self.into_bytes_response().map(Full::new)
    }

    /// [`Rejection::into_response`] with the body as bytes.
    pub(crate) fn into_bytes_response(self) -> Response<Bytes> {
        let mut response = Response::new(Bytes::from(self.problem()));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(retry_after) = self.retry_after() {
            headers.insert(
                RETRY_AFTER,
                HeaderValue::from(retry_after_secs(retry_after)),
            );
        }
        response
    }

    /// The problem document (RFC 9457), with the original status as the
    /// extension member `original_status` for [`Rejection::ResponseNotKept`].
    fn problem(&self) -> String {
        let mut body = serde_json::json!({
            "type": self.type_uri(),
            "title": self.title(),
            "status": self.status().as_u16(),
            "detail": self.to_string(),
        });
        if let Rejection::ResponseNotKept { status } = self {
            body["original_status"] = (*status).into();
        }
        body.to_string()
    }

    /// The response stored in place of one that is not kept.
    pub(crate) fn to_stored(&self) -> StoredResponse {
        StoredResponse::new(self.status().as_u16(), self.problem())
            .with_header(CONTENT_TYPE.as_str(), "application/problem+json")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(2)), 2);
        assert_eq!(retry_after_secs(Duration::from_millis(2001)), 3);
    }
}
