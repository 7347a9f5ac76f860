//! Which response headers are stored with a response and replayed.

use http::HeaderName;

/// Headers that describe one transfer of one message (RFC 9110 §7.6.1)
/// or are set anew for every response: never stored, whatever the
/// configuration, because a replay is another transfer (its length and
/// framing are computed again).
const FRAMING: [&str; 9] = [
    "connection",
    "content-length",
    "date",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Headers that carry credentials or session state, by exact name: not
/// stored by default.
const CREDENTIALS: [&str; 11] = [
    "authentication-info",
    "authorization",
    "clear-site-data",
    "cookie",
    "proxy-authenticate",
    "proxy-authentication-info",
    "proxy-authorization",
    "set-cookie",
    "set-cookie2",
    "www-authenticate",
    "x-csrf-token",
];

/// Fragments that mark a header name as carrying credentials or session
/// state wherever they appear in it, once the name is taken in lower case
/// without its `-`, `_` and `.` separators: `x-auth-token`, `X-AuthToken`,
/// `x-sessionid`, `X-CSRFToken`, `x-amz-security-token`, `x-api-key`.
///
/// Matching fragments rather than whole words errs on the side of not
/// storing: a header such as `x-author` or `x-tokens-left` is not replayed
/// either (the first caller still gets it). [`StoredHeaders::allow`] lets
/// such a header through.
const CREDENTIAL_FRAGMENTS: [&str; 17] = [
    "accesskey",
    "apikey",
    "auth", // authorization, authentication, authn, authz, oauth, authtoken
    "bearer",
    "cookie",
    "credential",
    "csrf",
    "jwt",
    "passphrase",
    "passwd",
    "password",
    "privatekey",
    "secret",
    "sessid",
    "session",
    "token",
    "xsrf",
];

/// Which response headers [`IdempotencyLayer`](crate::IdempotencyLayer)
/// stores with a final response and sends again on every replay.
///
/// A replay goes to whoever retries the key — maybe long after the first
/// answer, after the session it opened was closed or its credentials were
/// rotated — and the stored record sits in the key store (a database
/// table) for the retention period. So by default the layer stores every
/// response header **except**:
///
/// - framing headers, which describe one transfer and are computed again
///   for the replay (`Content-Length`, `Transfer-Encoding`, `Connection`,
///   `Keep-Alive`, `TE`, `Trailer`, `Upgrade`, `Proxy-Connection`) and
///   `Date`: never stored, whatever the configuration;
/// - headers that carry credentials or session state: `Set-Cookie`,
///   `Set-Cookie2`, `Cookie`, `Authorization`, `Proxy-Authorization`, the
///   authentication challenges `WWW-Authenticate` and `Proxy-Authenticate`,
///   `Authentication-Info`, `Proxy-Authentication-Info`, `Clear-Site-Data`,
///   and any header whose name contains one of these fragments, in any
///   case and once its `-`, `_` and `.` separators are removed: `auth`,
///   `token`, `session`, `sessid`, `cookie`, `csrf`, `xsrf`, `secret`,
///   `password`, `passwd`, `passphrase`, `credential`, `bearer`, `jwt`,
///   `apikey`, `accesskey`, `privatekey` — so `X-Auth-Token` and
///   `X-AuthToken`, `X-Session-Id` and `X-SessionID`, `X-CSRF-Token` and
///   `X-CSRFToken`, `X-Access-Token`, `X-Refresh-Token`, `X-Api-Key` and
///   `X-Amz-Security-Token`. A fragment errs on the side of not storing: a
///   header that only looks like one (`X-Author`, `X-Tokens-Left`) is not
///   replayed either; [`StoredHeaders::allow`] lets it through.
///
/// The original caller gets every header its handler set; only the stored
/// copy is filtered. A handler whose *body* carries a secret (an endpoint
/// that issues tokens) is stored like any other body: keep such endpoints
/// out of the layer.
///
/// ```
/// use http::HeaderName;
/// use idem_http::StoredHeaders;
///
/// let default = StoredHeaders::default();
/// assert!(default.stores(&HeaderName::from_static("location")));
/// assert!(!default.stores(&HeaderName::from_static("set-cookie")));
/// assert!(!default.stores(&HeaderName::from_static("x-auth-token")));
/// assert!(!default.stores(&HeaderName::from_static("content-length")));
///
/// // An allow-list: only these are stored (never the framing headers).
/// let only = StoredHeaders::only([http::header::CONTENT_TYPE, http::header::LOCATION]);
/// assert!(only.stores(&http::header::LOCATION));
/// assert!(!only.stores(&HeaderName::from_static("x-request-id")));
///
/// // The default, without one more header, and with a cookie the
/// // application means to replay.
/// let custom = StoredHeaders::default()
///     .deny([HeaderName::from_static("x-request-id")])
///     .allow([http::header::SET_COOKIE]);
/// assert!(!custom.stores(&HeaderName::from_static("x-request-id")));
/// assert!(custom.stores(&http::header::SET_COOKIE));
/// ```
#[derive(Debug, Clone, Default)]
pub struct StoredHeaders {
    /// `Some`: only these (an allow-list); `None`: every header not denied.
    only: Option<Vec<HeaderName>>,
    /// Denied on top of the defaults.
    denied: Vec<HeaderName>,
    /// Stored although the credential defaults would drop them.
    allowed: Vec<HeaderName>,
}

impl StoredHeaders {
    /// Stores only the headers named here (framing headers never).
    pub fn only(names: impl IntoIterator<Item = HeaderName>) -> Self {
        StoredHeaders {
            only: Some(names.into_iter().collect()),
            ..StoredHeaders::default()
        }
    }

    /// Never stores these headers either.
    pub fn deny(mut self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        self.denied.extend(names);
        self
    }

    /// Stores these headers although the defaults treat them as
    /// credentials (framing headers are still never stored). With
    /// [`StoredHeaders::only`], adds them to the list.
    pub fn allow(mut self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        let names: Vec<HeaderName> = names.into_iter().collect();
        if let Some(only) = &mut self.only {
            only.extend(names.iter().cloned());
        }
        self.allowed.extend(names);
        self
    }

    /// Whether a response header with this name is stored and replayed.
    pub fn stores(&self, name: &HeaderName) -> bool {
        if FRAMING.contains(&name.as_str()) || self.denied.contains(name) {
            return false;
        }
        if let Some(only) = &self.only {
            return only.contains(name);
        }
        self.allowed.contains(name) || !carries_credentials(name.as_str())
    }
}

/// Whether a header name names credentials or session state (any case).
fn carries_credentials(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    if CREDENTIALS.contains(&name.as_str()) {
        return true;
    }
    let squashed: String = name
        .chars()
        .filter(|c| !matches!(c, '-' | '_' | '.'))
        .collect();
    CREDENTIAL_FRAGMENTS
        .iter()
        .any(|fragment| squashed.contains(fragment))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(name: &'static str) -> bool {
        StoredHeaders::default().stores(&HeaderName::from_static(name))
    }

    #[test]
    fn credentials_and_session_state_are_not_stored_by_default() {
        for name in CREDENTIALS.iter().chain(&FRAMING) {
            assert!(!stored(name), "{name}");
        }
        for name in [
            "x-auth-token",
            "x-api-key",
            "x_api_key",
            "x-apikey",
            "x-session-id",
            "x-amz-security-token",
            "x-xsrf-token",
            "x-refresh-token",
            "x-client-secret",
            "x-jwt",
            // One-word spellings (Django's `X-CSRFToken`, `X-SessionID`).
            "x-sessionid",
            "x-sessiontoken",
            "x-authtoken",
            "x-accesstoken",
            "x-refreshtoken",
            "x-csrftoken",
            "x-xsrftoken",
            "x-api.key",
            "x-oauth-state",
            "x-goog-iam-authorization-token",
            "x-sessid",
            "phpsessid",
            "x-access-key-id",
            "x-private-key",
        ] {
            assert!(!stored(name), "{name}");
        }
    }

    #[test]
    fn the_match_ignores_case_and_separators() {
        for name in ["X-CSRFToken", "X-SessionID", "x_Auth_Token", "X.Api.Key"] {
            assert!(carries_credentials(name), "{name}");
        }
    }

    #[test]
    fn names_that_only_look_like_credentials_are_dropped_unless_allowed() {
        for name in ["x-author", "x-tokens-left"] {
            let header = HeaderName::from_static(name);
            assert!(!StoredHeaders::default().stores(&header), "{name}");
            assert!(StoredHeaders::default()
                .allow([header])
                .stores(&HeaderName::from_static(name)));
        }
    }

    #[test]
    fn ordinary_headers_are_stored() {
        for name in [
            "content-type",
            "content-encoding",
            "location",
            "etag",
            "link",
            "cache-control",
            "x-request-id",
            "x-ratelimit-remaining",
            "retry-after",
            "grpc-status",
            "grpc-message",
        ] {
            assert!(stored(name), "{name}");
        }
    }

    #[test]
    fn framing_headers_are_never_stored_even_when_listed() {
        let only = StoredHeaders::only([http::header::CONTENT_LENGTH, http::header::LOCATION])
            .allow([http::header::TRANSFER_ENCODING]);
        assert!(!only.stores(&http::header::CONTENT_LENGTH));
        assert!(!only.stores(&http::header::TRANSFER_ENCODING));
        assert!(only.stores(&http::header::LOCATION));
    }
}
