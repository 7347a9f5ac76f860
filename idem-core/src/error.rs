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
    #[error(
        "`{value}` is not a state of {type_name}: the column holds a value the enum does not know \
         (add the variant or a `rename`, or correct the row)"
    )]
    UnknownState {
        /// The enum's name.
        type_name: &'static str,
        /// The value found.
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

    /// A bounded in-memory key store holds as many records as it may.
    #[error(
        "the in-memory key store is full ({capacity} records): purge completed records \
         more often or create the store with a larger capacity"
    )]
    KeyStoreFull {
        /// The store's capacity.
        capacity: usize,
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
