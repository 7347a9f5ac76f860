use std::fmt;

use crate::Error;

/// Who sent a request and which operation it is for: keys live inside a
/// scope, so two clients (or tenants) that pick the same key never see
/// each other's responses.
///
/// Build the scope from an identity the server trusts (an API key, an
/// authenticated tenant), never from something every client can choose.
///
/// ```
/// use idem_core::keys::Scope;
///
/// let a = Scope::new("tenant-a", "create-invoice").unwrap();
/// let b = Scope::new("tenant-b", "create-invoice").unwrap();
/// assert_ne!(a, b);
/// assert_eq!(a.client(), "tenant-a");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope {
    client: String,
    operation: String,
    encoded: String,
}

impl Scope {
    /// The longest encoded scope (see [`Scope::as_str`]), in bytes.
    pub const MAX_LEN: usize = 512;

    /// The scope of `client` (a tenant, an account, an API key id) and
    /// `operation` (e.g. `"payments"`; use one operation for a whole API to
    /// have a key reused on another endpoint rejected as reused).
    pub fn new(client: impl Into<String>, operation: impl Into<String>) -> Result<Self, Error> {
        let client = client.into();
        let operation = operation.into();
        let encoded = format!("{}:{client}{operation}", client.len());
        if encoded.len() > Self::MAX_LEN {
            return Err(Error::InvalidScope {
                reason: "client and operation together are longer than about 500 bytes",
            });
        }
        Ok(Scope {
            client,
            operation,
            encoded,
        })
    }

    /// The client or tenant.
    pub fn client(&self) -> &str {
        &self.client
    }

    /// The operation.
    pub fn operation(&self) -> &str {
        &self.operation
    }

    /// The unambiguous encoding stores key records under:
    /// `<byte length of client>:<client><operation>`.
    pub fn as_str(&self) -> &str {
        &self.encoded
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.client, self.operation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_encoding_never_confuses_client_and_operation() {
        let a = Scope::new("ab", "c").unwrap();
        let b = Scope::new("a", "bc").unwrap();
        assert_ne!(a.as_str(), b.as_str());
        assert_eq!(a.as_str(), "2:abc");
    }

    #[test]
    fn an_overlong_scope_is_a_typed_error() {
        let err = Scope::new("c".repeat(600), "op").unwrap_err();
        assert!(matches!(err, Error::InvalidScope { .. }));
    }
}
