use std::fmt;

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::canonical;

/// SHA-256 of the canonical form of a request: a key sent again with a
/// different fingerprint is a reused key (HTTP 422), never a replay.
///
/// Every field is length-prefixed and tagged, so moving bytes between
/// method, path and body changes the fingerprint, and a body hashed in one
/// form (raw bytes, canonical JSON, JSON bytes without a canonical form)
/// never matches a body hashed in another.
///
/// # The canonical form of JSON
///
/// The rule: **two JSON texts get the same fingerprint only when every
/// JSON parser reads them as the same value.** A retry that only reorders
/// object members or changes whitespace replays; anything a handler could
/// read differently is another request (422).
///
/// - Object members are sorted by their keys' decoded UTF-8 bytes, at
///   every level; insignificant whitespace is dropped. Array order counts.
/// - Strings are compared by the characters they decode to: `"\u0041"`
///   and `"A"`, or `"\/"` and `"/"`, are the same string to every
///   parser, so they match. No Unicode normalisation: `"\u00e9"` (é)
///   and `"e\u0301"` (e and a combining accent) are different strings.
/// - **Numbers keep their exact source text.** `1`, `1.0`, `1e0` and `1E0`
///   differ, `1e2` differs from `100`, `-0` from `0`,
///   `18446744073709551616` from `18446744073709551617`, and `0.1` from
///   `0.1000000000000000055511151231257827`. Any normalisation would be a
///   claim about how the handler reads numbers: a parser into `f64` merges
///   the last two pairs, one into `u64` or a decimal type does not. The
///   price: a client that re-encodes a number differently on a retry
///   (`1.0` after `1`) gets 422, never a wrong replay.
/// - **Duplicate object keys** (`{"amount":1,"amount":2}`, also spelled
///   `{"a":1,"\u0061":2}`): parsers disagree on which member wins (the
///   first, the last, or an error), so such a text has no canonical form.
/// - A text with no canonical form — duplicate keys, invalid JSON, invalid
///   UTF-8, a `\u` escape of a lone surrogate, nesting deeper than
///   [`MAX_JSON_DEPTH`](Self::MAX_JSON_DEPTH) — is fingerprinted by its
///   exact bytes, in a domain of its own: it matches only itself, byte for
///   byte, and never a canonical form. Nothing panics, and both the parser
///   and the writer are iterative, so no input overflows the stack.
///
/// Why not RFC 8785 (JCS): it reads every number as an IEEE 754 double and
/// writes it back in the shortest form, so `18446744073709551616` and
/// `18446744073709551617`, or `0.1` and
/// `0.1000000000000000055511151231257827`, canonicalise alike — two
/// payments a handler with exact integers or decimals reads differently
/// would replay one another.
///
/// For a [`serde_json::Value`] built in code ([`Fingerprint::of_json`]) the
/// canonical form is serde_json's compact text with members sorted: the
/// value holds numbers as serde_json parsed them, so a body parsed into a
/// `Value` first has already merged `1.0` with `1e0`. Fingerprint request
/// bodies from their bytes ([`Fingerprint::of_json_body`]).
///
/// ```
/// use idem_core::keys::Fingerprint;
/// use serde_json::json;
///
/// let a = Fingerprint::of_json(&json!({"amount": 100, "currency": "EUR"}));
/// let b = Fingerprint::of_json(&json!({"currency": "EUR", "amount": 100}));
/// assert_eq!(a, b);
///
/// let body = |text: &str| Fingerprint::of_json_body("POST", "/payments", text.as_bytes());
/// assert_eq!(body(r#"{"to": "\u0041da", "amount": 1}"#), body(r#"{"amount":1,"to":"Ada"}"#));
/// assert_ne!(body(r#"{"amount": 18446744073709551616}"#), body(r#"{"amount": 18446744073709551617}"#));
/// assert_ne!(body(r#"{"amount": 1, "amount": 2}"#), body(r#"{"amount": 2}"#));
///
/// let post = Fingerprint::of_request("POST", "/payments?dry=1", b"{}");
/// assert_ne!(post, Fingerprint::of_request("POST", "/payments", b"{}"));
/// assert_eq!(post.to_hex().len(), 64);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The deepest nesting of arrays and objects (128, serde_json's default
    /// recursion limit) a JSON text may have to be canonicalised; a deeper
    /// text is fingerprinted by its exact bytes. Values built in code
    /// ([`Fingerprint::of_json`]) have no limit.
    pub const MAX_JSON_DEPTH: usize = canonical::MAX_DEPTH;

    /// The fingerprint of a request: its method (case-insensitive), its
    /// path with the query string, and its body bytes exactly as they are.
    /// The same as `Fingerprint::request(method, path_and_query).raw_body(body)`.
    pub fn of_request(method: &str, path_and_query: &str, body: &[u8]) -> Self {
        Fingerprint::request(method, path_and_query).raw_body(body)
    }

    /// The fingerprint of a request whose body is a JSON text, in
    /// canonical form (see [the rule](Fingerprint#the-canonical-form-of-json)):
    /// reordered members and whitespace match, anything a parser could read
    /// differently does not. A body with no canonical form is hashed by its
    /// exact bytes (never matching [`Fingerprint::of_request`] of the same
    /// bytes). The same as
    /// `Fingerprint::request(method, path_and_query).json_body(body)`.
    pub fn of_json_body(method: &str, path_and_query: &str, body: &[u8]) -> Self {
        Fingerprint::request(method, path_and_query).json_body(body)
    }

    /// Starts the fingerprint of a request with its method
    /// (case-insensitive) and its path with the query string; add the
    /// request headers that change what the request means
    /// ([`RequestFingerprint::header`]), then finish with the body. This is
    /// what `idem_http`'s layer uses: it adds the media type and the
    /// content coding of the body.
    ///
    /// A request with no header added has the fingerprint
    /// [`Fingerprint::of_request`] (or [`Fingerprint::of_json_body`]) gives
    /// it, so fingerprints stored before headers were added stay valid for
    /// such requests.
    ///
    /// ```
    /// use idem_core::keys::Fingerprint;
    ///
    /// let json = Fingerprint::request("POST", "/payments")
    ///     .header("content-type", b"application/vnd.api+json")
    ///     .json_body(br#"{"amount": 1}"#);
    /// let form = Fingerprint::request("POST", "/payments")
    ///     .header("content-type", b"application/x-www-form-urlencoded")
    ///     .raw_body(br#"{"amount": 1}"#);
    /// assert_ne!(json, form);
    /// assert_eq!(
    ///     Fingerprint::request("POST", "/payments").json_body(b"{}"),
    ///     Fingerprint::of_json_body("POST", "/payments", b"{}"),
    /// );
    /// ```
    pub fn request(method: &str, path_and_query: &str) -> RequestFingerprint {
        RequestFingerprint {
            hasher: request_hasher(method, path_and_query),
        }
    }

    /// The fingerprint of a request whose body is a value built in code:
    /// like [`Fingerprint::of_json_body`] of `serde_json::to_vec(body)`.
    pub fn of_json_request(method: &str, path_and_query: &str, body: &Value) -> Self {
        let mut hasher = request_hasher(method, path_and_query);
        field(&mut hasher, b"json", &canonical::of_value(body));
        Fingerprint(hasher.finalize().into())
    }

    /// The fingerprint of a value (an operation's arguments), with object
    /// members sorted at every level. Any depth: the writer is iterative.
    pub fn of_json(value: &Value) -> Self {
        let mut hasher = Sha256::new();
        field(&mut hasher, b"json", &canonical::of_value(value));
        Fingerprint(hasher.finalize().into())
    }

    /// The fingerprint of a JSON text (an operation's arguments as they
    /// arrived), in canonical form: equal to [`Fingerprint::of_json`] of the
    /// value the text holds when it has a canonical form and its numbers
    /// are written as serde_json writes them; otherwise hashed by its
    /// exact bytes.
    pub fn of_json_text(text: &[u8]) -> Self {
        let mut hasher = Sha256::new();
        json_text_field(&mut hasher, text);
        Fingerprint(hasher.finalize().into())
    }

    /// The fingerprint of arbitrary bytes.
    pub fn of_bytes(bytes: &[u8]) -> Self {
        let mut hasher = Sha256::new();
        field(&mut hasher, b"raw", bytes);
        Fingerprint(hasher.finalize().into())
    }

    /// The 32 bytes of the digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// 64 lower-case hex digits (how database stores keep it).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses the 64 hex digits written by [`Fingerprint::to_hex`].
    pub fn from_hex(hex: &str) -> Option<Self> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hex, &mut bytes).ok()?;
        Some(Fingerprint(bytes))
    }
}

/// A request fingerprint being built: method and path, then the headers
/// that change what the request means, then the body, which finishes it.
/// Made by [`Fingerprint::request`].
///
/// Each header is a field of its own (name, then value, each
/// length-prefixed), so no header value can be mistaken for another
/// header, the path or the body; headers are hashed in the order they are
/// added, and a name added twice is two fields.
#[derive(Clone)]
pub struct RequestFingerprint {
    hasher: Sha256,
}

impl RequestFingerprint {
    /// Adds a header's name (taken in lower case) and its value, as the
    /// caller normalised it (a media type in canonical form, say).
    pub fn header(mut self, name: &str, value: &[u8]) -> Self {
        field(
            &mut self.hasher,
            b"header",
            name.to_ascii_lowercase().as_bytes(),
        );
        field(&mut self.hasher, b"value", value);
        self
    }

    /// Finishes with a body hashed by its exact bytes.
    pub fn raw_body(mut self, body: &[u8]) -> Fingerprint {
        field(&mut self.hasher, b"raw", body);
        Fingerprint(self.hasher.finalize().into())
    }

    /// Finishes with a JSON body in canonical form (see
    /// [the rule](Fingerprint#the-canonical-form-of-json)), or its exact
    /// bytes in a domain of their own when it has none.
    pub fn json_body(mut self, body: &[u8]) -> Fingerprint {
        json_text_field(&mut self.hasher, body);
        Fingerprint(self.hasher.finalize().into())
    }
}

impl fmt::Debug for RequestFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestFingerprint").finish_non_exhaustive()
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", self.to_hex())
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

fn request_hasher(method: &str, path_and_query: &str) -> Sha256 {
    let mut hasher = Sha256::new();
    field(
        &mut hasher,
        b"method",
        method.to_ascii_uppercase().as_bytes(),
    );
    field(&mut hasher, b"path", path_and_query.as_bytes());
    hasher
}

/// A JSON text in canonical form, or its exact bytes under a tag of their
/// own when it has none.
fn json_text_field(hasher: &mut Sha256, text: &[u8]) {
    match canonical::of_text(text) {
        Ok(canonical) => field(hasher, b"json", &canonical),
        Err(_) => field(hasher, b"json-bytes", text),
    }
}

fn field(hasher: &mut Sha256, name: &[u8], bytes: &[u8]) {
    hasher.update((name.len() as u64).to_be_bytes());
    hasher.update(name);
    hasher.update((bytes.len() as u64).to_be_bytes());
    hasher.update(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_object_key_order_does_not_change_the_fingerprint() {
        let a: Value =
            serde_json::from_str(r#"{"b": {"y": 1, "x": [ {"q": 1, "p": 2} ]}, "a": "s"}"#)
                .unwrap();
        let b: Value =
            serde_json::from_str(r#"{"a":"s","b":{"x":[{"p":2,"q":1}],"y":1}}"#).unwrap();
        assert_eq!(Fingerprint::of_json(&a), Fingerprint::of_json(&b));
        assert_eq!(
            Fingerprint::of_json_request("POST", "/p", &a),
            Fingerprint::of_json_request("POST", "/p", &b)
        );
    }

    #[test]
    fn array_order_and_values_do_change_the_fingerprint() {
        assert_ne!(
            Fingerprint::of_json(&json!([1, 2])),
            Fingerprint::of_json(&json!([2, 1]))
        );
        assert_ne!(
            Fingerprint::of_json(&json!({"amount": 100})),
            Fingerprint::of_json(&json!({"amount": 101}))
        );
        assert_ne!(
            Fingerprint::of_json(&json!({"amount": 100})),
            Fingerprint::of_json(&json!({"amount": "100"}))
        );
    }

    #[test]
    fn moving_bytes_between_fields_changes_the_fingerprint() {
        assert_ne!(
            Fingerprint::of_request("POST", "/ab", b"c"),
            Fingerprint::of_request("POST", "/a", b"bc")
        );
        assert_ne!(
            Fingerprint::of_request("POST", "/a", b""),
            Fingerprint::of_request("PATCH", "/a", b"")
        );
        assert_eq!(
            Fingerprint::of_request("post", "/a", b""),
            Fingerprint::of_request("POST", "/a", b"")
        );
    }

    #[test]
    fn raw_and_json_bodies_never_collide() {
        assert_ne!(
            Fingerprint::of_request("POST", "/a", b"{}"),
            Fingerprint::of_json_request("POST", "/a", &json!({}))
        );
    }

    fn body(text: &str) -> Fingerprint {
        Fingerprint::of_json_body("POST", "/payments", text.as_bytes())
    }

    /// Each pair is two texts a handler could read differently.
    const DIFFERENT: &[(&str, &str)] = &[
        (
            r#"{"amount": 18446744073709551616}"#,
            r#"{"amount": 18446744073709551617}"#,
        ),
        (
            r#"{"amount": 0.1}"#,
            r#"{"amount": 0.1000000000000000055511151231257827}"#,
        ),
        (r#"{"amount": 1, "amount": 2}"#, r#"{"amount": 2}"#),
        (r#"{"amount": 1, "amount": 2}"#, r#"{"amount": 1}"#),
        (
            r#"{"amount": 1, "amount": 2}"#,
            r#"{"amount": 2, "amount": 1}"#,
        ),
        (r#"{"amount": 1}"#, r#"{"amount": 1.0}"#),
        (r#"{"amount": 1}"#, r#"{"amount": 1e0}"#),
        (r#"{"amount": 1.0}"#, r#"{"amount": 1e0}"#),
        (r#"{"amount": 1e2}"#, r#"{"amount": 100}"#),
        (r#"{"amount": -0}"#, r#"{"amount": 0}"#),
        (r#"{"amount": 1}"#, r#"{"amount": "1"}"#),
        (r#"{"to": "A"}"#, r#"{"to": "a"}"#),
        (r#"{"to": "\u00e9"}"#, r#"{"to": "e\u0301"}"#),
        (r#"{"to": "\u0041"}"#, r#"{"to": "\\u0041"}"#),
        (r#"[1, 2]"#, r#"[2, 1]"#),
        (r#"{"a": {"b": 1}}"#, r#"{"a": [{"b": 1}]}"#),
        (r#"{"a":1}"#, r#"{"a":1} x"#),
    ];

    /// Each pair is two texts every JSON parser reads as the same value.
    const SAME: &[(&str, &str)] = &[
        (
            r#"{"amount": 18446744073709551616, "to": "x"}"#,
            r#"{"to":"x","amount":18446744073709551616}"#,
        ),
        (
            r#"{"amount": 0.1000000000000000055511151231257827}"#,
            "{\n  \"amount\" :\t0.1000000000000000055511151231257827 }",
        ),
        (r#"{"to": "\u0041"}"#, r#"{"to": "A"}"#),
        (r#"{"to": "\u00e9"}"#, "{\"to\": \"\u{e9}\"}"),
        (r#"{"\u0074o": "\/"}"#, r#"{"to": "/"}"#),
        (r#"{"to": "\ud83d\ude00"}"#, "{\"to\": \"\u{1f600}\"}"),
        (
            r#"{"b": {"d": [1, {"f": 1, "e": 2}], "c": null}, "a": true}"#,
            r#"{"a":true,"b":{"c":null,"d":[1,{"e":2,"f":1}]}}"#,
        ),
    ];

    #[test]
    fn json_bodies_a_handler_could_read_differently_never_share_a_fingerprint() {
        for (a, b) in DIFFERENT {
            assert_ne!(body(a), body(b), "{a} against {b}");
            assert_ne!(
                Fingerprint::of_json_text(a.as_bytes()),
                Fingerprint::of_json_text(b.as_bytes())
            );
        }
    }

    #[test]
    fn json_bodies_every_parser_reads_alike_share_a_fingerprint() {
        for (a, b) in SAME {
            assert_eq!(body(a), body(b), "{a} against {b}");
            assert_eq!(
                Fingerprint::of_json_text(a.as_bytes()),
                Fingerprint::of_json_text(b.as_bytes())
            );
        }
    }

    #[test]
    fn a_body_without_a_canonical_form_matches_only_its_own_bytes() {
        for text in [
            &b"{\"amount\":1,\"amount\":2}"[..],
            b"{\"a\":",
            b"\"\xff\"",
            b"\"\\ud800\"",
            b"",
        ] {
            let fingerprint = Fingerprint::of_json_body("POST", "/p", text);
            assert_eq!(fingerprint, Fingerprint::of_json_body("POST", "/p", text));
            // Not the raw domain of non-JSON bodies either.
            assert_ne!(fingerprint, Fingerprint::of_request("POST", "/p", text));
        }
        // Duplicate keys in another order or spacing are another text.
        assert_ne!(
            body(r#"{"amount":1,"amount":2}"#),
            body(r#"{"amount":1, "amount":2}"#)
        );
    }

    #[test]
    fn a_text_and_the_value_it_holds_share_a_fingerprint() {
        let value = json!({"b": [1, 2.5, "x\n"], "a": {"d": null, "c": -7}});
        let text = serde_json::to_vec(&value).unwrap();
        assert_eq!(
            Fingerprint::of_json(&value),
            Fingerprint::of_json_text(&text)
        );
        assert_eq!(
            Fingerprint::of_json_request("POST", "/p", &value),
            Fingerprint::of_json_body("POST", "/p", &text)
        );
    }

    /// Hex of `of_json(json!({"b": 1, "a": "x"}))` before the canonicaliser
    /// was rewritten: stored fingerprints of values stay valid.
    #[test]
    fn the_fingerprint_of_a_value_is_unchanged_by_the_rewrite() {
        let mut hasher = Sha256::new();
        field(&mut hasher, b"json", br#"{"a":"x","b":1}"#);
        let expected = Fingerprint(hasher.finalize().into());
        assert_eq!(Fingerprint::of_json(&json!({"b": 1, "a": "x"})), expected);
    }

    #[test]
    fn a_value_nested_100_000_deep_is_fingerprinted_without_overflowing_the_stack() {
        // Built in code, 100,000 deep (the issue's case was 8,000). Writing
        // it runs on this test thread's ordinary stack; dropping a deep
        // `Value` recurses inside serde_json, so it is dropped on a thread
        // with a large stack.
        let mut value = json!(1);
        for depth in 0..100_000 {
            // Not `json!({"k": value})`: the macro serialises `value`, recursively.
            value = if depth % 2 == 0 {
                Value::Array(vec![value])
            } else {
                Value::Object([("k".to_owned(), value)].into_iter().collect())
            };
        }
        let fingerprint = Fingerprint::of_json(&value);
        assert_ne!(fingerprint, Fingerprint::of_json(&json!([1])));
        std::thread::Builder::new()
            .stack_size(256 << 20)
            .spawn(move || drop(value))
            .unwrap()
            .join()
            .unwrap();
        let deep = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(body(&deep), body(&deep));
        assert_ne!(
            body(&deep),
            body(&format!("{}2{}", "[".repeat(100_000), "]".repeat(100_000)))
        );
    }

    /// Hex digests of `of_request` and `of_json_body` before headers could
    /// be added: the layer's stored fingerprints of requests without a
    /// media type (or with `application/json`) stay valid.
    #[test]
    fn request_fingerprints_without_headers_are_unchanged() {
        assert_eq!(
            Fingerprint::of_request("POST", "/p", b"x").to_hex(),
            legacy(&[(b"raw", b"x")])
        );
        assert_eq!(
            Fingerprint::of_json_body("POST", "/p", br#"{"b":1, "a":2}"#).to_hex(),
            legacy(&[(b"json", br#"{"a":2,"b":1}"#)])
        );
    }

    fn legacy(body: &[(&[u8], &[u8])]) -> String {
        let mut hasher = Sha256::new();
        field(&mut hasher, b"method", b"POST");
        field(&mut hasher, b"path", b"/p");
        for (name, bytes) in body {
            field(&mut hasher, name, bytes);
        }
        hex::encode(hasher.finalize())
    }

    #[test]
    fn headers_are_fields_of_their_own() {
        let base = || Fingerprint::request("POST", "/p");
        let a = base().header("content-type", b"text/plain").raw_body(b"x");
        assert_eq!(
            a,
            base().header("Content-Type", b"text/plain").raw_body(b"x")
        );
        assert_ne!(a, base().raw_body(b"x"));
        assert_ne!(
            a,
            base().header("content-type", b"text/plain").json_body(b"x")
        );
        assert_ne!(
            base().header("a", b"bc").raw_body(b""),
            base().header("ab", b"c").raw_body(b"")
        );
        assert_ne!(
            base().header("a", b"1").header("b", b"2").raw_body(b""),
            base().header("b", b"2").header("a", b"1").raw_body(b"")
        );
        assert_ne!(base().header("a", b"").raw_body(b""), base().raw_body(b""));
    }

    #[test]
    fn hex_round_trips() {
        let f = Fingerprint::of_bytes(b"x");
        assert_eq!(Fingerprint::from_hex(&f.to_hex()), Some(f));
        assert_eq!(Fingerprint::from_hex("zz"), None);
    }
}
