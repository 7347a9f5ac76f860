/// Decides which results of a run are final — stored and replayed to every
/// retry — and which release the key so the client may try again.
///
/// # The default
///
/// Every status below 500 is stored, except those that say the request
/// was **not carried out because of a condition outside the request that
/// the same request, retried, may find changed**:
///
/// | Status | Why a retry of the same request may succeed |
/// |---|---|
/// | 401 Unauthorized, 407 Proxy Authentication Required | the client refreshes its credentials and retries (credentials are not part of the request's fingerprint) |
/// | 408 Request Timeout | the request did not arrive in time |
/// | 409 Conflict | the resource's current state conflicts (an invoice not issued yet); RFC 9110 says the client may resolve the conflict and resubmit — and `idem_http` answers 409 itself to mean "retry with the same key" |
/// | 412 Precondition Failed, 428 Precondition Required | the client fetches the current version and retries with another `If-Match` (not part of the fingerprint) |
/// | 423 Locked, 425 Too Early | retry later |
/// | 429 Too Many Requests | a rate limit: retry later |
/// | 499 Client Closed Request (nginx's; gRPC's `CANCELLED`) | the call was cut short before it finished |
///
/// Caching one of those would answer every retry of the key with the stale
/// refusal until the record expires (24 h), although the retry is valid.
/// Every other 4xx is a final answer to this request and is replayed: a
/// decline (402), a forbidden (403) or missing (404) resource, a
/// validation error (400, 422). A client that changes the request after
/// such an answer sends a different request, which needs a new key (the
/// same key with another body is 422 "key reused"). 5xx are never stored:
/// an outage must not be cached.
///
/// A run that answered a non-final status must not have done its effect
/// (that is what the status says); handlers that act and then answer 409
/// should answer 200 with the outcome instead.
///
/// # gRPC
///
/// A gRPC call answers HTTP 200 and puts its outcome in `grpc-status` (in
/// the trailers, or in the headers of a trailers-only answer).
/// `idem_http` hands the policy the HTTP status Google's `google.rpc.Code`
/// names for that code, so one policy serves both: `OK` 200,
/// `CANCELLED` 499, `UNKNOWN` 500, `INVALID_ARGUMENT` 400,
/// `DEADLINE_EXCEEDED` 504, `NOT_FOUND` 404, `ALREADY_EXISTS` 409,
/// `PERMISSION_DENIED` 403, `RESOURCE_EXHAUSTED` 429,
/// `FAILED_PRECONDITION` 400, `ABORTED` 409, `OUT_OF_RANGE` 400,
/// `UNIMPLEMENTED` 501, `INTERNAL` 500, `UNAVAILABLE` 503, `DATA_LOSS` 500,
/// `UNAUTHENTICATED` 401. With the default, `UNAVAILABLE`,
/// `RESOURCE_EXHAUSTED`, `ABORTED`, `DEADLINE_EXCEEDED`, `CANCELLED`,
/// `ALREADY_EXISTS`, `UNAUTHENTICATED` and the server errors release the
/// key; the other codes are final.
///
/// ```
/// use idem_core::keys::ResponsePolicy;
///
/// let policy = ResponsePolicy::default();
/// assert!(policy.is_final(201));
/// assert!(policy.is_final(402));
/// assert!(policy.is_final(422));
/// assert!(!policy.is_final(401));
/// assert!(!policy.is_final(409));
/// assert!(!policy.is_final(429));
/// assert!(!policy.is_final(503));
///
/// // Store only successes.
/// let strict = ResponsePolicy::new(|status| (200..300).contains(&status));
/// assert!(!strict.is_final(402));
/// ```
#[derive(Debug, Clone, Copy)]
pub struct ResponsePolicy {
    is_final: fn(u16) -> bool,
}

impl ResponsePolicy {
    /// A policy that stores the statuses for which `is_final` is true.
    pub const fn new(is_final: fn(u16) -> bool) -> Self {
        ResponsePolicy { is_final }
    }

    /// Whether a result with this status is stored (true) or releases the
    /// key (false).
    pub fn is_final(&self, status: u16) -> bool {
        (self.is_final)(status)
    }
}

/// The 4xx statuses the default policy does not store (see
/// [`ResponsePolicy`]).
const RETRYABLE_CLIENT_ERRORS: [u16; 10] = [401, 407, 408, 409, 412, 423, 425, 428, 429, 499];

fn default_is_final(status: u16) -> bool {
    status < 500 && !RETRYABLE_CLIENT_ERRORS.contains(&status)
}

impl Default for ResponsePolicy {
    fn default() -> Self {
        ResponsePolicy::new(default_is_final)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_stores_final_answers_and_releases_retryable_ones() {
        let policy = ResponsePolicy::default();
        for status in [
            200, 201, 204, 301, 303, 400, 402, 403, 404, 410, 413, 415, 422,
        ] {
            assert!(policy.is_final(status), "{status}");
        }
        for status in [
            401, 407, 408, 409, 412, 423, 425, 428, 429, 499, 500, 502, 503, 504,
        ] {
            assert!(!policy.is_final(status), "{status}");
        }
    }
}
