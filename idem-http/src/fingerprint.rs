//! What the layer fingerprints: method, the request target the client
//! sent (path and query), the request headers that change what the body
//! means, and the body.

use http::header::{CONTENT_ENCODING, CONTENT_TYPE};
use http::request::Parts;
use http::{HeaderMap, HeaderName};
use idem_core::keys::Fingerprint;

/// gRPC's per-message compression (gRPC over HTTP/2, "Requests"): the same
/// bytes under another algorithm are another message.
const GRPC_ENCODING: HeaderName = HeaderName::from_static("grpc-encoding");

/// The media type whose requests keep the fingerprint they had before the
/// media type was fingerprinted (see [`fingerprint`]).
const PLAIN_JSON: &str = "application/json";

/// The fingerprint of a request with this body: method, the request
/// target the client sent ([`target`]), the normalised media type
/// (`Content-Type`), the content codings (`Content-Encoding`) and gRPC's
/// message coding (`grpc-encoding`) as they were sent, the values of the
/// `extra` headers, and the body — a JSON body (a JSON media type, no
/// content coding) in canonical form.
///
/// A request without `Content-Type`, or with `application/json` (any case,
/// with or without `charset=utf-8`), and without content coding or extra
/// headers, gets the fingerprint it had before media types were part of
/// it ([`Fingerprint::of_request`] / [`Fingerprint::of_json_body`]), so
/// keys stored by an earlier version still replay.
pub(crate) fn fingerprint(parts: &Parts, body: &[u8], extra: &[HeaderName]) -> Fingerprint {
    let method = parts.method.as_str();
    let mut request = Fingerprint::request(method, target(parts));
    let media = media_type(&parts.headers);
    let mut json = false;
    match &media {
        None => {}
        Some(Ok(media)) => {
            json = is_json(media);
            if media != PLAIN_JSON {
                request = request.header("content-type", media.as_bytes());
            }
        }
        Some(Err(raw)) => {
            for value in raw {
                request = request.header("content-type (unparsed)", value);
            }
        }
    }
    // A content coding is taken as it was sent: decoders differ on case,
    // `x-gzip` and `identity` (tower-http's matches exact lower-case
    // names), so no two spellings are merged.
    for value in parts.headers.get_all(CONTENT_ENCODING) {
        json = false;
        request = request.header("content-encoding (as sent)", value.as_bytes());
    }
    for value in parts.headers.get_all(GRPC_ENCODING) {
        request = request.header(GRPC_ENCODING.as_str(), value.as_bytes());
    }
    for name in extra {
        if *name == CONTENT_ENCODING || *name == GRPC_ENCODING {
            continue;
        }
        // `Content-Type` listed here: its exact bytes too, for handlers
        // that compare the header as a string.
        for value in parts.headers.get_all(name) {
            request = request.header(name.as_str(), value.as_bytes());
        }
    }
    if json {
        request.json_body(body)
    } else {
        request.raw_body(body)
    }
}

/// The request target the client sent, path and query: axum's
/// `OriginalUri` when the request carries one (with the `axum` feature) —
/// a router nested with `Router::nest` or `nest_service` strips its prefix,
/// path parameters included, from the URI before the layer sees it — and
/// the request's URI otherwise.
fn target(parts: &Parts) -> &str {
    #[cfg(feature = "axum")]
    if let Some(original) = parts.extensions.get::<axum::extract::OriginalUri>() {
        return original.0.path_and_query().map_or("/", |p| p.as_str());
    }
    parts.uri.path_and_query().map_or("/", |p| p.as_str())
}

/// The request's media type in canonical form, `None` without
/// `Content-Type`, or the raw values when there are several or one does
/// not parse.
fn media_type(headers: &HeaderMap) -> Option<Result<String, Vec<Vec<u8>>>> {
    let mut values = headers.get_all(CONTENT_TYPE).iter();
    let first = values.next()?;
    let raw = || {
        headers
            .get_all(CONTENT_TYPE)
            .iter()
            .map(|v| v.as_bytes().to_vec())
            .collect()
    };
    if values.next().is_some() {
        return Some(Err(raw()));
    }
    Some(
        first
            .to_str()
            .ok()
            .and_then(normalize_media_type)
            .ok_or_else(raw),
    )
}

/// Whether a canonical media type says JSON: `application/json` or a
/// `+json` structured syntax suffix.
fn is_json(media: &str) -> bool {
    let essence = media.split(';').next().unwrap_or_default();
    essence == PLAIN_JSON || essence.ends_with("+json")
}

/// A well-formed media type (RFC 9110 §8.3.1) in canonical form: type,
/// subtype and parameter names in lower case, parameters sorted by name,
/// values unquoted (quoted again only when they are not tokens), `charset`
/// values in lower case (charset names are case-insensitive), and
/// `charset=utf-8` dropped from JSON types (RFC 8259 §8.1: JSON is UTF-8,
/// the parameter has no meaning). Other parameter values keep their case.
///
/// Only spellings every parser reads as the same type are merged, so the
/// grammar is the strict one the `mime` crate (axum's `Json`, actix-web,
/// warp) accepts: `;` directly after the subtype or a value, then any
/// number of spaces, then `name=value`, with a value that is a token or a
/// non-empty quoted string without escapes. `None` — the header then
/// matches only its own bytes — for anything else, although RFC 9110
/// allows some of it: whitespace before a `;` or at either end, tabs, an
/// empty parameter (`;;`) or a trailing `;`, a backslash escape, an empty
/// quoted string, or a parameter named twice (parsers disagree on which
/// one counts). A handler that refuses such a spelling (axum answers 415)
/// stores that refusal for the spelling alone; the corrected request is
/// another one.
pub(crate) fn normalize_media_type(text: &str) -> Option<String> {
    let (kind, after) = split_token(text)?;
    let rest = after.strip_prefix('/')?;
    let (subtype, mut rest) = split_token(rest)?;
    let essence = format!(
        "{}/{}",
        kind.to_ascii_lowercase(),
        subtype.to_ascii_lowercase()
    );
    let mut parameters: Vec<(String, String)> = Vec::new();
    while !rest.is_empty() {
        rest = rest.strip_prefix(';')?.trim_start_matches(' ');
        let (name, after) = split_token(rest)?;
        rest = after.strip_prefix('=')?;
        let (value, after) = if rest.starts_with('"') {
            quoted_string(rest)?
        } else {
            let (token, after) = split_token(rest)?;
            (token.to_owned(), after)
        };
        rest = after;
        let name = name.to_ascii_lowercase();
        let value = if name == "charset" {
            value.to_ascii_lowercase()
        } else {
            value
        };
        parameters.push((name, value));
    }
    parameters.sort();
    if parameters.windows(2).any(|pair| pair[0].0 == pair[1].0) {
        return None;
    }
    if is_json(&essence) {
        parameters.retain(|(name, value)| !(name == "charset" && value == "utf-8"));
    }
    let mut out = essence;
    for (name, value) in parameters {
        out.push(';');
        out.push_str(&name);
        out.push('=');
        if value.chars().all(is_tchar) {
            out.push_str(&value);
        } else {
            out.push('"');
            out.push_str(&value);
            out.push('"');
        }
    }
    Some(out)
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_tchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

/// A non-empty token at the start of `text`, and what follows it.
fn split_token(text: &str) -> Option<(&str, &str)> {
    let end = text.find(|c| !is_tchar(c)).unwrap_or(text.len());
    (end > 0).then(|| text.split_at(end))
}

/// A non-empty quoted string (RFC 9110 §5.6.4) without escapes at the
/// start of `text`: its value and what follows it.
fn quoted_string(text: &str) -> Option<(String, &str)> {
    let inner = text.strip_prefix('"')?;
    let end = inner.find('"')?;
    let value = &inner[..end];
    let plain = |c: char| c == ' ' || (c.is_ascii_graphic() && c != '\\');
    (!value.is_empty() && value.chars().all(plain)).then(|| (value.to_owned(), &inner[end + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types_every_parser_reads_alike_normalise_alike() {
        for (a, b) in [
            ("application/json", "Application/JSON"),
            ("application/json", "application/json; charset=utf-8"),
            ("application/json", "application/json;charset=\"UTF-8\""),
            ("application/json", "application/json;   Charset=utf-8"),
            ("text/plain; charset=utf-8", "text/plain;Charset=UTF-8"),
            ("text/plain; a=1; b=2", "text/plain;b=2;  a=1"),
            ("text/plain; a=\"x\"", "text/plain; a=x"),
            (
                "multipart/form-data; boundary=\"a b\"",
                "multipart/form-data;boundary=\"a b\"",
            ),
        ] {
            assert_eq!(
                normalize_media_type(a),
                normalize_media_type(b),
                "{a} / {b}"
            );
            assert!(normalize_media_type(a).is_some(), "{a}");
        }
    }

    #[test]
    fn media_types_that_may_mean_something_else_stay_apart() {
        for (a, b) in [
            ("application/json", "text/plain"),
            ("application/json", "application/x-www-form-urlencoded"),
            ("application/json", "application/json; charset=iso-8859-1"),
            ("text/plain", "text/plain; charset=utf-8"),
            ("text/plain; format=flowed", "text/plain; format=Flowed"),
            (
                "multipart/form-data; boundary=a",
                "multipart/form-data; boundary=A",
            ),
            ("application/vnd.api+json", "application/json"),
        ] {
            assert_ne!(
                normalize_media_type(a),
                normalize_media_type(b),
                "{a} / {b}"
            );
        }
    }

    /// Spellings RFC 9110 allows but the `mime` crate (axum's `Json`)
    /// refuses, or where parsers disagree: no canonical form, so each
    /// matches only its own bytes.
    #[test]
    fn text_that_is_no_strict_media_type_does_not_normalise() {
        for text in [
            "",
            "json",
            "application/",
            "/json",
            "application/json; charset",
            "application/json; charset=\"utf-8",
            "application/json; a=1; a=2",
            "application json",
            "application/json x",
            "application/json;",
            "application/json;;",
            "application/json;; charset=utf-8",
            "application/json ;charset=utf-8",
            "application/json ",
            " application/json",
            "application/json;\tcharset=utf-8",
            "application/json; charset=utf-8;",
            "application/json; a=\"\"",
            "application/json; a=\"x\\\"y\"",
            "application/json; a=",
        ] {
            assert_eq!(normalize_media_type(text), None, "{text:?}");
        }
    }

    #[test]
    fn the_canonical_form_is_its_own_canonical_form() {
        for text in [
            "Text/Plain; B=\"a q\"; A=x; charset=UTF-8",
            "application/problem+json; charset=utf-8; v=2",
            "multipart/form-data; boundary=\"x y\"",
        ] {
            let once = normalize_media_type(text).unwrap();
            assert_eq!(normalize_media_type(&once).as_deref(), Some(once.as_str()));
        }
    }
}
