use std::fmt;
use std::str::FromStr;

use crate::Error;

/// The id of an event as the broker or the producer assigned it: 1 to 255
/// bytes without control characters. Ids are compared byte for byte
/// (`"A"` and `"a"`, or `"a"` and `"a "`, are different events).
///
/// ```
/// use idem_core::inbox::EventId;
///
/// let id = EventId::new("0f5c2a4e-6d7b-4b7e-9a51-3c1f0e2d9b77")?;
/// assert_eq!(id.as_str(), "0f5c2a4e-6d7b-4b7e-9a51-3c1f0e2d9b77");
/// assert!(EventId::new("").is_err());
/// assert!("x".repeat(256).parse::<EventId>().is_err());
/// # Ok::<(), idem_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId(String);

impl EventId {
    /// Validates an event id: [`Error::InvalidEventId`] when it is empty,
    /// longer than 255 bytes or contains a control character.
    pub fn new(id: impl Into<String>) -> Result<Self, Error> {
        let id = id.into();
        super::check(&id).map_err(|reason| Error::InvalidEventId { reason })?;
        Ok(EventId(id))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id as an owned string.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for EventId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl FromStr for EventId {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        EventId::new(s)
    }
}

impl TryFrom<String> for EventId {
    type Error = Error;

    fn try_from(s: String) -> Result<Self, Error> {
        EventId::new(s)
    }
}

impl TryFrom<&str> for EventId {
    type Error = Error;

    fn try_from(s: &str) -> Result<Self, Error> {
        EventId::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(id: &str) -> &'static str {
        match EventId::new(id) {
            Err(Error::InvalidEventId { reason }) => reason,
            other => panic!("expected InvalidEventId for {id:?}, got {other:?}"),
        }
    }

    #[test]
    fn an_empty_event_id_is_rejected() {
        assert_eq!(reason(""), "it is empty");
    }

    #[test]
    fn event_ids_longer_than_255_bytes_are_rejected() {
        assert!(EventId::new("e".repeat(255)).is_ok());
        assert_eq!(reason(&"e".repeat(256)), "it is longer than 255 bytes");
        // The bound is on bytes: 128 two-byte characters are 256 bytes.
        assert_eq!(reason(&"é".repeat(128)), "it is longer than 255 bytes");
    }

    #[test]
    fn event_ids_with_control_characters_are_rejected() {
        for id in ["a\nb", "a\0b", "\t", "a\u{7f}"] {
            assert_eq!(reason(id), "it contains a control character");
        }
    }

    #[test]
    fn event_ids_may_hold_any_visible_text() {
        for id in ["evt_1", "orders:42:v3", "a b", "заказ-7", "{\"id\":1}"] {
            assert_eq!(EventId::new(id).unwrap().as_str(), id);
        }
    }

    #[test]
    fn the_error_says_what_to_send() {
        let message = EventId::new("").unwrap_err().to_string();
        assert!(message.contains("1 to 255 bytes"), "{message}");
    }

    #[test]
    fn event_ids_convert_from_strings() {
        let id: EventId = "evt".parse().unwrap();
        assert_eq!(EventId::try_from("evt").unwrap(), id);
        assert_eq!(EventId::try_from(String::from("evt")).unwrap(), id);
        assert_eq!(id.to_string(), "evt");
        assert_eq!(id.as_ref(), "evt");
        assert_eq!(id.into_string(), "evt");
    }
}
