//! gRPC over HTTP/2: which requests are gRPC, where a call's status is,
//! what HTTP status the [`ResponsePolicy`](idem_core::keys::ResponsePolicy)
//! sees for it, and the layer's own answers in gRPC's shape.

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};
use idem_core::keys::StoredResponse;

use crate::Rejection;

/// The trailer (or trailers-only header) that carries a call's status.
pub(crate) const GRPC_STATUS: &str = "grpc-status";
const GRPC_MESSAGE: &str = "grpc-message";
/// gRPC's server pushback: how long a client's retry policy waits.
const RETRY_PUSHBACK: &str = "grpc-retry-pushback-ms";

/// The protocol a request speaks, from its `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wire {
    /// Plain HTTP: the status line is the outcome.
    Http,
    /// gRPC (`application/grpc`, `application/grpc+proto`, ...): the
    /// outcome is `grpc-status`, and the layer answers in gRPC's shape.
    Grpc,
    /// gRPC-Web: its status travels inside the body, which the layer does
    /// not parse; refused ([`Rejection::GrpcWeb`]).
    GrpcWeb,
}

impl Wire {
    pub(crate) fn of(headers: &HeaderMap) -> Wire {
        let Some(media) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
            return Wire::Http;
        };
        let essence = media
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        let Some(rest) = essence.strip_prefix("application/grpc") else {
            return Wire::Http;
        };
        if rest.starts_with("-web") {
            Wire::GrpcWeb
        } else if rest.is_empty() || rest.starts_with('+') {
            Wire::Grpc
        } else {
            Wire::Http
        }
    }
}

/// The code in the `grpc-status` of `fields` (`None` without one); a
/// value that is not one number reads as `UNKNOWN` (2).
pub(crate) fn status_in(fields: &HeaderMap) -> Option<u32> {
    let value = fields.get(GRPC_STATUS)?;
    Some(
        value
            .to_str()
            .ok()
            .filter(|text| !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|text| text.parse().ok())
            .unwrap_or(UNKNOWN),
    )
}

const UNKNOWN: u32 = 2;

/// The HTTP status `google.rpc.Code` names for a gRPC status code (an
/// unknown code is `UNKNOWN`, 500): what the response policy judges.
pub(crate) fn http_equivalent(code: u32) -> u16 {
    match code {
        0 => 200,
        1 => 499,
        3 | 9 | 11 => 400,
        4 => 504,
        5 => 404,
        6 | 10 => 409,
        7 => 403,
        8 => 429,
        12 => 501,
        14 => 503,
        16 => 401,
        _ => 500,
    }
}

/// The gRPC status code the layer answers a rejection with.
fn code_of(rejection: &Rejection) -> u32 {
    match rejection {
        Rejection::MissingKey { .. }
        | Rejection::InvalidKey { .. }
        | Rejection::UnknownClient
        | Rejection::BodyUnreadable
        | Rejection::KeyReused => 3, // INVALID_ARGUMENT
        Rejection::BodyTooLarge { .. } | Rejection::TooManyKeys { .. } => 8, // RESOURCE_EXHAUSTED
        Rejection::InProgress { .. }
        | Rejection::StoreUnavailable
        | Rejection::StoreFull { .. } => {
            14 // UNAVAILABLE: retry with backoff
        }
        Rejection::ResponseFailed => 13,        // INTERNAL
        Rejection::ResponseNotKept { .. } => 9, // FAILED_PRECONDITION: do not retry
        Rejection::GrpcWeb => 12,               // UNIMPLEMENTED
    }
}

/// `grpc-message`: the text percent-encoded as gRPC requires (every byte
/// outside printable ASCII, and `%`).
fn message(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if (0x20..0x7f).contains(&byte) && byte != b'%' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The trailers-only answer (HTTP 200, status in the headers, no body) of
/// a rejection, with `grpc-retry-pushback-ms` when it says when to retry.
pub(crate) fn rejection_fields(rejection: &Rejection) -> Vec<(&'static str, String)> {
    let mut fields = vec![
        (CONTENT_TYPE.as_str(), "application/grpc".to_owned()),
        (GRPC_STATUS, code_of(rejection).to_string()),
        (GRPC_MESSAGE, message(&rejection.to_string())),
    ];
    if let Some(retry_after) = rejection.retry_after() {
        fields.push((RETRY_PUSHBACK, retry_after.as_millis().to_string()));
    }
    fields
}

/// [`rejection_fields`] as a response.
pub(crate) fn rejection_response(rejection: &Rejection) -> Response<Bytes> {
    let mut response = Response::new(Bytes::new());
    *response.status_mut() = StatusCode::OK;
    for (name, value) in rejection_fields(rejection) {
        if let Ok(value) = HeaderValue::from_str(&value) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

/// [`rejection_fields`] as a stored response.
pub(crate) fn rejection_stored(rejection: &Rejection) -> StoredResponse {
    rejection_fields(rejection).into_iter().fold(
        StoredResponse::new(200, Vec::new()),
        |stored, (name, value)| stored.with_header(name, value),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(media: &str) -> Wire {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, media.parse().unwrap());
        Wire::of(&headers)
    }

    #[test]
    fn grpc_media_types_are_told_apart() {
        for media in [
            "application/grpc",
            "application/grpc+proto",
            "Application/GRPC; x=1",
        ] {
            assert_eq!(wire(media), Wire::Grpc, "{media}");
        }
        for media in ["application/grpc-web", "application/grpc-web-text+proto"] {
            assert_eq!(wire(media), Wire::GrpcWeb, "{media}");
        }
        for media in ["application/json", "application/grpcx", "text/grpc"] {
            assert_eq!(wire(media), Wire::Http, "{media}");
        }
        assert_eq!(Wire::of(&HeaderMap::new()), Wire::Http);
    }

    #[test]
    fn retry_inviting_codes_map_to_statuses_the_default_policy_releases() {
        let policy = idem_core::keys::ResponsePolicy::default();
        // CANCELLED, DEADLINE_EXCEEDED, ALREADY_EXISTS, RESOURCE_EXHAUSTED,
        // ABORTED, UNAVAILABLE, UNAUTHENTICATED and the server errors.
        for code in [1, 2, 4, 6, 8, 10, 12, 13, 14, 15, 16, 17, 99] {
            assert!(!policy.is_final(http_equivalent(code)), "{code}");
        }
        for code in [0, 3, 5, 7, 9, 11] {
            assert!(policy.is_final(http_equivalent(code)), "{code}");
        }
    }

    #[test]
    fn a_status_that_is_not_one_number_is_unknown() {
        for (value, code) in [
            ("14", 14),
            ("0", 0),
            ("x", 2),
            ("-1", 2),
            ("", 2),
            ("1 4", 2),
        ] {
            let mut fields = HeaderMap::new();
            fields.insert(GRPC_STATUS, HeaderValue::from_str(value).unwrap());
            assert_eq!(status_in(&fields), Some(code), "{value:?}");
        }
        assert_eq!(status_in(&HeaderMap::new()), None);
    }

    #[test]
    fn messages_are_percent_encoded() {
        assert_eq!(message("50% caf\u{e9}\n"), "50%25 caf%C3%A9%0A");
    }
}
