use http::request::Parts;
use http::HeaderName;
use idem_core::keys::Scope;

/// A scope function for [`IdempotencyLayer::new`](crate::IdempotencyLayer::new)
/// that takes the client from a request header, with one `operation` for
/// the whole API (so a key reused on another endpoint is 422, not a
/// separate key).
///
/// The header must appear **exactly once**, with one non-empty value of
/// visible ASCII that holds no comma. Anything else is answered 400
/// [`Rejection::UnknownClient`](crate::Rejection::UnknownClient): a
/// missing or empty header, a value that is not visible ASCII, and — as
/// for the `Idempotency-Key` header itself — a header sent twice, or a
/// value with a comma (the form two values take once a proxy joins them,
/// RFC 9110 §5.3). Taking one of several values would let a client choose
/// its scope: a gateway that *appends* the authenticated value after the
/// one the client sent would leave the client's own value first.
///
/// Use it only with a header the server can trust — one set by the
/// authentication middleware or the gateway after it checked the caller
/// (and removed any value the client sent) — never with a value any
/// client may choose, or one client could read another's stored responses.
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
/// let (parts, ()) = Request::post("/invoices")
///     .header("x-client-id", "victim")
///     .header("x-client-id", "mallory")
///     .body(())
///     .unwrap()
///     .into_parts();
/// assert!(scope(&parts).is_none());
/// ```
pub fn scope_from_header(
    header: HeaderName,
    operation: &'static str,
) -> impl Fn(&Parts) -> Option<Scope> + Clone + Send + Sync + 'static {
    move |parts: &Parts| {
        let mut values = parts.headers.get_all(&header).iter();
        let value = values.next()?;
        if values.next().is_some() {
            return None;
        }
        let client = value.to_str().ok()?;
        if client.is_empty() || client.contains(',') {
            return None;
        }
        Scope::new(client, operation).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn client_of(values: &[&str]) -> Option<String> {
        let mut request = Request::post("/charges");
        for value in values {
            request = request.header("x-client-id", *value);
        }
        let (parts, ()) = request.body(()).unwrap().into_parts();
        let scope = scope_from_header(HeaderName::from_static("x-client-id"), "api");
        scope(&parts).map(|scope| scope.client().to_owned())
    }

    #[test]
    fn one_value_names_the_client() {
        assert_eq!(client_of(&["acme"]).as_deref(), Some("acme"));
        assert_eq!(client_of(&["tenant 7"]).as_deref(), Some("tenant 7"));
    }

    #[test]
    fn missing_empty_repeated_and_joined_values_name_no_client() {
        for values in [
            &[][..],
            &[""],
            &["victim", "mallory"],
            &["victim", "victim"],
            &["victim, mallory"],
            &["victim,mallory"],
            &["caf\u{e9}"],
        ] {
            assert_eq!(client_of(values), None, "{values:?}");
        }
    }
}
