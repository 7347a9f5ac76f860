use http::request::Parts;
use http::HeaderName;
use idem_core::keys::Scope;

/// A scope function for [`IdempotencyLayer::new`](crate::IdempotencyLayer::new)
/// that takes the client from a request header, with one `operation` for
/// the whole API (so a key reused on another endpoint is 422, not a
/// separate key). A request without the header (or with a value that is
/// not visible ASCII) is answered 400
/// [`Rejection::UnknownClient`](crate::Rejection::UnknownClient).
///
/// Use it only with a header the server can trust — one set by the
/// authentication middleware or the gateway after it checked the caller —
/// never with a value any client may choose, or one client could read
/// another's stored responses.
///
/// ```
/// use http::{HeaderName, Request};
/// use idem_http::scope_from_header;
///
/// let scope = scope_from_header(HeaderName::from_static("x-client-id"), "invoicing");
/// let (parts, ()) = Request::post("/invoices").header("x-client-id", "acme").body(()).unwrap().into_parts();
/// assert_eq!(scope(&parts).unwrap().client(), "acme");
/// let (parts, ()) = Request::post("/invoices").body(()).unwrap().into_parts();
/// assert!(scope(&parts).is_none());
/// ```
pub fn scope_from_header(
    header: HeaderName,
    operation: &'static str,
) -> impl Fn(&Parts) -> Option<Scope> + Clone + Send + Sync + 'static {
    move |parts: &Parts| {
        let client = parts.headers.get(&header)?.to_str().ok()?;
        Scope::new(client, operation).ok()
    }
}
