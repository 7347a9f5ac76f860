use std::fmt;

use serde_json::Value;
use sha2::{Digest, Sha256};

/// SHA-256 of the canonical form of a request: a key sent again with a
/// different fingerprint is a reused key (HTTP 422), never a replay.
///
/// Every field is length-prefixed, so moving bytes between method, path
/// and body changes the fingerprint; JSON is hashed with object keys
/// sorted at every level, so reordering keys does not.
///
/// ```
/// use idem_core::keys::Fingerprint;
/// use serde_json::json;
///
/// let a = Fingerprint::of_json(&json!({"amount": 100, "currency": "EUR"}));
/// let b = Fingerprint::of_json(&json!({"currency": "EUR", "amount": 100}));
/// assert_eq!(a, b);
///
/// let post = Fingerprint::of_request("POST", "/payments?dry=1", b"{}");
/// assert_ne!(post, Fingerprint::of_request("POST", "/payments", b"{}"));
/// assert_eq!(post.to_hex().len(), 64);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint of a request: its method, its path with the query
    /// string, and its body bytes as they are.
    pub fn of_request(method: &str, path_and_query: &str, body: &[u8]) -> Self {
        let mut hasher = request_hasher(method, path_and_query);
        field(&mut hasher, b"raw", body);
        Fingerprint(hasher.finalize().into())
    }

    /// The fingerprint of a request whose body is JSON: like
    /// [`Fingerprint::of_request`], with the body in canonical form, so two
    /// bodies that differ only in object key order or whitespace match.
    pub fn of_json_request(method: &str, path_and_query: &str, body: &Value) -> Self {
        let mut hasher = request_hasher(method, path_and_query);
        field(&mut hasher, b"json", canonical_json(body).as_bytes());
        Fingerprint(hasher.finalize().into())
    }

    /// The fingerprint of a value (an operation's arguments), with object
    /// keys sorted at every level.
    pub fn of_json(value: &Value) -> Self {
        let mut hasher = Sha256::new();
        field(&mut hasher, b"json", canonical_json(value).as_bytes());
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

fn field(hasher: &mut Sha256, name: &[u8], bytes: &[u8]) {
    hasher.update((name.len() as u64).to_be_bytes());
    hasher.update(name);
    hasher.update((bytes.len() as u64).to_be_bytes());
    hasher.update(bytes);
}

/// JSON with object keys sorted at every level and no whitespace. Sorting
/// here, not relying on `serde_json::Map`'s order, keeps the result stable
/// when another crate turns on serde_json's `preserve_order`.
fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(value, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
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

    #[test]
    fn hex_round_trips() {
        let f = Fingerprint::of_bytes(b"x");
        assert_eq!(Fingerprint::from_hex(&f.to_hex()), Some(f));
        assert_eq!(Fingerprint::from_hex("zz"), None);
    }
}
