use std::fmt;
use std::str::FromStr;

use crate::Error;

/// A client-chosen idempotency key: 1 to 255 bytes of visible ASCII
/// (`0x21..=0x7E`), e.g. a UUID.
///
/// Keys are compared byte for byte: `abc` and `ABC` are two keys.
///
/// ```
/// use idem_core::keys::IdempotencyKey;
///
/// let key: IdempotencyKey = "8e03978e-40d5-43e8-bc93-6894a57f9324".parse().unwrap();
/// assert_eq!(key.as_str().len(), 36);
/// assert!(IdempotencyKey::try_from("").is_err());
/// assert!(IdempotencyKey::try_from("has space").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// The longest key accepted, in bytes.
    pub const MAX_LEN: usize = 255;

    /// Checks `key` and wraps it.
    pub fn new(key: impl Into<String>) -> Result<Self, Error> {
        let key = key.into();
        Self::validate(&key)?;
        Ok(IdempotencyKey(key))
    }

    fn validate(key: &str) -> Result<(), Error> {
        if key.is_empty() {
            return Err(Error::InvalidKey {
                reason: "it is empty",
            });
        }
        if key.len() > Self::MAX_LEN {
            return Err(Error::InvalidKey {
                reason: "it is longer than 255 bytes",
            });
        }
        if !key.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
            return Err(Error::InvalidKey {
                reason: "it contains a space, a control character or a non-ASCII character",
            });
        }
        Ok(())
    }

    /// The key as sent.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<&str> for IdempotencyKey {
    type Error = Error;

    fn try_from(key: &str) -> Result<Self, Error> {
        IdempotencyKey::new(key)
    }
}

impl TryFrom<String> for IdempotencyKey {
    type Error = Error;

    fn try_from(key: String) -> Result<Self, Error> {
        IdempotencyKey::new(key)
    }
}

impl FromStr for IdempotencyKey {
    type Err = Error;

    fn from_str(key: &str) -> Result<Self, Error> {
        IdempotencyKey::new(key)
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for IdempotencyKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(key: &str) -> &'static str {
        match IdempotencyKey::new(key) {
            Err(Error::InvalidKey { reason }) => reason,
            other => panic!("expected InvalidKey for {key:?}, got {other:?}"),
        }
    }

    #[test]
    fn keys_of_one_to_255_visible_ascii_bytes_are_accepted() {
        for key in ["a", "~", "!", &"k".repeat(255), "8e03978e-40d5-43e8-bc93"] {
            assert_eq!(IdempotencyKey::new(key).unwrap().as_str(), key);
        }
    }

    #[test]
    fn empty_long_blank_control_and_non_ascii_keys_are_rejected_with_a_reason() {
        assert_eq!(reason(""), "it is empty");
        assert_eq!(reason(&"k".repeat(256)), "it is longer than 255 bytes");
        for bad in ["a b", "tab\t", "nl\n", "del\x7f", "café", "\0"] {
            assert!(reason(bad).contains("non-ASCII"), "{bad:?}");
        }
    }

    #[test]
    fn keys_differing_only_in_case_are_different_keys() {
        assert_ne!(
            IdempotencyKey::new("abc").unwrap(),
            IdempotencyKey::new("ABC").unwrap()
        );
    }
}
