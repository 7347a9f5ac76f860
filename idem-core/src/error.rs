use std::fmt::{self, Write as _};
use std::time::Duration;

/// Everything that can go wrong in idem's core protocols.
///
/// Messages say what to do. Database crates wrap this type together with
/// their driver's errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A stored value is no state of the enum (a row written by other code,
    /// or a variant that was removed).
    ///
    /// The message shows at most the first 64 bytes of the value
    /// ([`Excerpt`]); the `value` field holds all of it.
    #[error(
        "`{}` is not a state of {type_name}: the column holds a value the enum does not know \
         (add the variant or a `rename`, or correct the row)",
        Excerpt(value)
    )]
    UnknownState {
        /// The enum's name.
        type_name: &'static str,
        /// The value found, whole.
        value: String,
    },

    /// The row exists but its state column is NULL: it is in no state, so
    /// no transition can be decided. Never reported as a missing row
    /// ([`Outcome::NotFound`](crate::Outcome::NotFound)); a stored value
    /// that is not NULL but no state (an empty string among them) is
    /// [`Error::UnknownState`].
    #[error(
        "the {type_name} row exists but its state column is NULL, so `{transition}` cannot tell \
         which state it is in: set the column to a state (the initial one for a new row) and \
         declare it NOT NULL"
    )]
    NullState {
        /// The enum's name.
        type_name: &'static str,
        /// The transition that read the row.
        transition: &'static str,
    },

    /// A transition of a state machine without a table binding was applied
    /// to a database.
    #[error(
        "{type_name}::{transition} has no table binding: add \
         #[state_machine(table = \"...\", column = \"...\", key = \"...\")] to the enum"
    )]
    NoTable {
        /// The enum's name.
        type_name: &'static str,
        /// The transition's name.
        transition: &'static str,
    },

    /// An idempotency key that is empty, longer than 255 bytes or not
    /// visible ASCII (HTTP 400).
    #[error(
        "invalid idempotency key: {reason}; send 1 to 255 visible ASCII characters, e.g. a UUID"
    )]
    InvalidKey {
        /// What is wrong with it.
        reason: &'static str,
    },

    /// The key was used before with a different request payload (HTTP 422).
    #[error(
        "this idempotency key was already used with a different request payload; \
         send a new key for a new request"
    )]
    KeyReused,

    /// A request with the same key is still running (HTTP 409).
    #[error("a request with this idempotency key is in progress; retry after {retry_after:?}")]
    InProgress {
        /// How long until its lease expires.
        retry_after: Duration,
    },

    /// A scope whose encoded form is longer than 512 bytes.
    #[error("invalid idempotency scope: {reason}; use a shorter client id or operation name")]
    InvalidScope {
        /// What is wrong with it.
        reason: &'static str,
    },

    /// The lease on an idempotency key was lost before the response was
    /// stored: after it expired another request took the key over, or the
    /// record was released or purged. The operation may have run twice.
    #[error(
        "the idempotency key's lease expired and another request took the key over before \
         this one stored its response: the outcome is uncertain, the work may have run twice; \
         check whether it took effect before retrying, and choose a longer lease"
    )]
    LeaseLost,

    /// A bounded in-memory key store holds as many live records as it may,
    /// from more clients than it was sized for (HTTP 503 with
    /// `Retry-After`).
    #[error(
        "the in-memory key store is full ({capacity} records, none expired): retry after \
         {retry_after:?}, or size the store for the number of clients (capacity = clients \
         \u{d7} per-client limit)"
    )]
    KeyStoreFull {
        /// The store's capacity.
        capacity: usize,
        /// When its first record is due to expire.
        retry_after: Duration,
    },

    /// This client holds as many idempotency records as one client may in
    /// this store (HTTP 429 with `Retry-After`). Other clients are served.
    #[error(
        "this client holds {limit} idempotency keys that have not expired, the most one client \
         may hold: retry after {retry_after:?}, or raise the store's per-client limit"
    )]
    TooManyKeys {
        /// The per-client limit.
        limit: usize,
        /// When this client's first record is due to expire.
        retry_after: Duration,
    },

    /// An inbox consumer holds as many markers as it may; other consumers
    /// are not affected. The delivery was not processed: redeliver it
    /// later.
    #[error(
        "this inbox consumer holds {capacity} markers inside its window, the most it may: \
         redeliver after {retry_after:?}, or raise its capacity"
    )]
    InboxFull {
        /// The consumer's capacity.
        capacity: usize,
        /// When its first marker leaves the window.
        retry_after: Duration,
    },

    /// An event id that is empty, longer than 255 bytes or contains a
    /// control character.
    #[error(
        "invalid event id: {reason}; use the broker's message id or the event's own id, \
         1 to 255 bytes without control characters"
    )]
    InvalidEventId {
        /// What is wrong with it.
        reason: &'static str,
    },

    /// An inbox consumer name that is empty, longer than 255 bytes or
    /// contains a control character.
    #[error(
        "invalid inbox consumer name: {reason}; name each consumer with 1 to 255 bytes \
         without control characters, e.g. \"billing\""
    )]
    InvalidConsumer {
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl Error {
    /// How long to wait before trying again, for the errors that say so
    /// (`InProgress`, `KeyStoreFull`, `TooManyKeys`, `InboxFull`).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::InProgress { retry_after }
            | Error::KeyStoreFull { retry_after, .. }
            | Error::TooManyKeys { retry_after, .. }
            | Error::InboxFull { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }
}

/// A value a client or a row controls, shown in a message: at most its
/// first 64 bytes (cut at a character boundary) followed by
/// `… (N bytes)` when it is longer, with control characters escaped, so a
/// 10 MiB value never makes a 10 MiB message or log line.
///
/// ```
/// use idem_core::Excerpt;
///
/// assert_eq!(Excerpt("paid").to_string(), "paid");
/// assert_eq!(Excerpt("a\nb").to_string(), "a\\nb");
/// let long = "x".repeat(10 << 20);
/// assert_eq!(Excerpt(&long).to_string(), format!("{}… (10485760 bytes)", "x".repeat(64)));
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Excerpt<'a>(pub &'a str);

impl Excerpt<'_> {
    /// The most bytes of the value shown.
    pub const MAX: usize = 64;
}

impl fmt::Display for Excerpt<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let value = self.0;
        let mut end = value.len().min(Self::MAX);
        while !value.is_char_boundary(end) {
            end -= 1;
        }
        for c in value[..end].chars() {
            if c.is_control() {
                write!(f, "{}", c.escape_default())?;
            } else {
                f.write_char(c)?;
            }
        }
        if end < value.len() {
            write!(f, "… ({} bytes)", value.len())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_state_of_10_mib_makes_a_short_message_and_keeps_the_value() {
        let value = "é".repeat(5 << 20);
        let error = Error::UnknownState {
            type_name: "Invoice",
            value: value.clone(),
        };
        let message = error.to_string();
        assert!(message.len() < 300, "{} bytes", message.len());
        assert!(message.contains(&format!("{}… (10485760 bytes)", "é".repeat(32))));
        assert!(matches!(error, Error::UnknownState { value: v, .. } if v == value));
        let short = Error::UnknownState {
            type_name: "Invoice",
            value: "archived".into(),
        };
        assert!(short
            .to_string()
            .starts_with("`archived` is not a state of Invoice"));
    }

    #[test]
    fn an_excerpt_cuts_at_a_character_boundary_and_escapes_control_characters() {
        let text = format!("{}é", "x".repeat(63));
        assert_eq!(
            Excerpt(&text).to_string(),
            format!("{}… (65 bytes)", "x".repeat(63))
        );
        assert_eq!(Excerpt("a\u{0}\r\n").to_string(), "a\\u{0}\\r\\n");
        assert_eq!(Excerpt("").to_string(), "");
    }
}
