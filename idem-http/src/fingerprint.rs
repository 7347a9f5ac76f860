//! What the layer fingerprints: method, path and query, the request
//! headers that change what the body means, and the body.

use http::header::{CONTENT_ENCODING, CONTENT_TYPE};
use http::request::Parts;
use http::{HeaderMap, HeaderName};
use idem_core::keys::Fingerprint;

/// The media type whose requests keep the fingerprint they had before the
/// media type was fingerprinted (see [`fingerprint`]).
const PLAIN_JSON: &str = "application/json";

/// The fingerprint of a request with this body: method, path with query,
/// the normalised media type (`Content-Type`), the content codings
/// (`Content-Encoding`), the values of the `extra` headers, and the body —
/// a JSON body (a JSON media type, no content coding) in canonical form.
///
/// A request without `Content-Type`, or with `application/json` (any case,
/// with or without `charset=utf-8`), and without content coding or extra
/// headers, gets the fingerprint it had before media types were part of
/// it ([`Fingerprint::of_request`] / [`Fingerprint::of_json_body`]), so
/// keys stored by an earlier version still replay.
pub(crate) fn fingerprint(parts: &Parts, body: &[u8], extra: &[HeaderName]) -> Fingerprint {
    let method = parts.method.as_str();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut request = Fingerprint::request(method, path);
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
    match content_coding(&parts.headers) {
        Ok(codings) if codings.is_empty() => {}
        Ok(codings) => {
            json = false;
            request = request.header("content-encoding", codings.as_bytes());
        }
        Err(raw) => {
            json = false;
            for value in raw {
                request = request.header("content-encoding (unparsed)", &value);
            }
        }
    }
    for name in extra {
        if *name == CONTENT_TYPE || *name == CONTENT_ENCODING {
            continue;
        }
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

/// A media type (RFC 9110 §8.3.1) in canonical form: type, subtype and
/// parameter names in lower case, parameters sorted by name, values
/// unquoted (quoted again only when they are not tokens), `charset`
/// values in lower case (charset names are case-insensitive), and
/// `charset=utf-8` dropped from JSON types (RFC 8259 §8.1: JSON is UTF-8,
/// the parameter has no meaning). Other parameter values keep their case.
/// `None` when the text is not a media type, or names a parameter twice
/// (parsers disagree on which one counts).
pub(crate) fn normalize_media_type(text: &str) -> Option<String> {
    let mut rest = text.trim_matches([' ', '\t']);
    let (kind, after) = split_token(rest)?;
    rest = after.strip_prefix('/')?;
    let (subtype, after) = split_token(rest)?;
    rest = after;
    let essence = format!(
        "{}/{}",
        kind.to_ascii_lowercase(),
        subtype.to_ascii_lowercase()
    );
    let mut parameters: Vec<(String, String)> = Vec::new();
    loop {
        rest = rest.trim_start_matches([' ', '\t']);
        if rest.is_empty() {
            break;
        }
        rest = rest.strip_prefix(';')?.trim_start_matches([' ', '\t']);
        if rest.is_empty() || rest.starts_with(';') {
            continue; // an empty parameter, which the grammar allows
        }
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
        if !value.is_empty() && value.chars().all(is_tchar) {
            out.push_str(&value);
        } else {
            out.push('"');
            for c in value.chars() {
                if c == '"' || c == '\\' {
                    out.push('\\');
                }
                out.push(c);
            }
            out.push('"');
        }
    }
    Some(out)
}

/// The content codings of the body (RFC 9110 §8.4) in canonical form:
/// lower case, in the order applied, `x-gzip` as `gzip` and `x-compress`
/// as `compress` (§8.4.1), `identity` dropped, joined with `,`. Empty
/// when the body has none; the raw values when one does not parse.
fn content_coding(headers: &HeaderMap) -> Result<String, Vec<Vec<u8>>> {
    let mut codings: Vec<String> = Vec::new();
    for value in headers.get_all(CONTENT_ENCODING) {
        let parsed = value.to_str().ok().and_then(|text| {
            text.split(',')
                .map(|c| c.trim_matches([' ', '\t']))
                .filter(|c| !c.is_empty())
                .map(|c| c.chars().all(is_tchar).then(|| c.to_ascii_lowercase()))
                .collect::<Option<Vec<String>>>()
        });
        let Some(parsed) = parsed else {
            return Err(headers
                .get_all(CONTENT_ENCODING)
                .iter()
                .map(|v| v.as_bytes().to_vec())
                .collect());
        };
        codings.extend(parsed);
    }
    Ok(codings
        .into_iter()
        .filter(|c| c != "identity")
        .map(|c| match c.as_str() {
            "x-gzip" => "gzip".to_owned(),
            "x-compress" => "compress".to_owned(),
            _ => c,
        })
        .collect::<Vec<_>>()
        .join(","))
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

/// A quoted string (RFC 9110 §5.6.4) at the start of `text`: its value
/// with escapes resolved, and what follows it.
fn quoted_string(text: &str) -> Option<(String, &str)> {
    let mut value = String::new();
    let mut chars = text.char_indices().skip(1);
    while let Some((at, c)) = chars.next() {
        match c {
            '"' => return Some((value, &text[at + 1..])),
            '\\' => value.push(chars.next()?.1),
            c if c == '\t' || (' '..='~').contains(&c) => value.push(c),
            _ => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types_that_mean_the_same_normalise_alike() {
        for (a, b) in [
            ("application/json", "Application/JSON"),
            ("application/json", "application/json; charset=utf-8"),
            // An empty parameter, which RFC 9110 allows.
            ("application/json", "application/json;"),
            ("application/json", "application/json;charset=\"UTF-8\""),
            ("text/plain; charset=utf-8", "text/plain;Charset=UTF-8"),
            ("text/plain; a=1; b=2", "text/plain;b=2 ;a=1"),
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

    #[test]
    fn text_that_is_no_media_type_does_not_normalise() {
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
        ] {
            assert_eq!(normalize_media_type(text), None, "{text:?}");
        }
    }

    #[test]
    fn the_canonical_form_is_its_own_canonical_form() {
        for text in [
            "Text/Plain; B=\"a \\\"q\\\"\"; A=x; charset=UTF-8",
            "application/problem+json; charset=utf-8; v=2",
            "multipart/form-data; boundary=\"\"",
        ] {
            let once = normalize_media_type(text).unwrap();
            assert_eq!(normalize_media_type(&once).as_deref(), Some(once.as_str()));
        }
    }
}
