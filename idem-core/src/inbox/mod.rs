//! The deduplication inbox protocol for event consumers.
//!
//! Brokers deliver at least once: after a crash, a timeout or a lost
//! acknowledgement the same event arrives again. An inbox remembers, per
//! consumer, which event ids it has processed, and runs the consumer's
//! handler for an event id at most once while the marker is kept — the
//! handler's effects happen once even though the event arrives many times
//! (effectively-once processing).
//!
//! - [`EventId`]: a validated event id (1 to 255 bytes, no control
//!   characters).
//! - [`Delivery`]: what [`process`](MemoryInbox::process) did —
//!   [`Processed`](Delivery::Processed) with the handler's value, or
//!   [`Duplicate`](Delivery::Duplicate) without running it.
//! - [`MemoryInbox`]: the protocol in memory, for one process and for tests.
//!   The database inbox (`idem_sqlx::inbox::Inbox`) has the same semantics
//!   and commits the marker atomically with the handler's writes.
//!
//! ```
//! use idem_core::inbox::{Delivery, EventId, MemoryInbox};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let inbox = MemoryInbox::new("billing")?;
//! let event = EventId::new("evt_42")?;
//!
//! let first = inbox.process(&event, || async { Ok::<_, std::io::Error>("charged") }).await?;
//! assert_eq!(first, Delivery::Processed("charged"));
//!
//! // The broker redelivers the event: the handler does not run again.
//! let again = inbox.process(&event, || async { Ok::<_, std::io::Error>("charged twice!") }).await?;
//! assert_eq!(again, Delivery::Duplicate);
//!
//! // Another consumer of the same stream has its own markers.
//! let shipping = inbox.for_consumer("shipping")?;
//! let shipped = shipping.process(&event, || async { Ok::<_, std::io::Error>("shipped") }).await?;
//! assert_eq!(shipped, Delivery::Processed("shipped"));
//! # Ok(())
//! # }
//! ```
//!
//! # The dedup window
//!
//! Markers are kept for a window ([`DEFAULT_WINDOW`], 24 hours, unless
//! configured) and `purge` removes older ones ([`MemoryInbox`] also
//! forgets them by itself when a consumer needs room: see its bounds). A redelivery that arrives
//! after its marker was purged runs the handler again, so the window must
//! be longer than the longest delay after which the broker can still
//! redeliver an event (its redelivery or retry policy, dead-letter replays,
//! consumer-group rebalances after an outage), with a margin.

mod event_id;
mod memory;

use std::time::Duration;

pub use event_id::EventId;
pub use memory::MemoryInbox;

/// The error of [`MemoryInbox::process`]: the handler's own error, returned
/// as it was, or idem's.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError<E> {
    /// The handler failed; no marker was recorded, so a redelivery runs it
    /// again.
    #[error("the inbox handler failed (no marker was recorded): {0}")]
    Handler(E),
    /// idem refused the delivery before running the handler
    /// ([`Error::InboxFull`]): redeliver it later.
    #[error(transparent)]
    Idem(#[from] Error),
}

use crate::Error;

/// How long markers are kept by default: 24 hours.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(24 * 60 * 60);

/// The longest event id or consumer name, in bytes.
pub const MAX_LEN: usize = 255;

/// What an inbox did with one delivery of an event.
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Delivery<T> {
    /// This delivery ran the handler, and its marker was recorded together
    /// with the handler's effects. Holds the handler's value.
    Processed(T),
    /// The event was processed before (within the window): the handler did
    /// not run. Acknowledge the delivery.
    Duplicate,
}

impl<T> Delivery<T> {
    /// Whether this delivery ran the handler.
    pub fn is_processed(&self) -> bool {
        matches!(self, Delivery::Processed(_))
    }

    /// Whether the event was processed before.
    pub fn is_duplicate(&self) -> bool {
        matches!(self, Delivery::Duplicate)
    }

    /// The handler's value, if this delivery ran it.
    pub fn processed(self) -> Option<T> {
        match self {
            Delivery::Processed(value) => Some(value),
            Delivery::Duplicate => None,
        }
    }

    /// Maps the handler's value.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Delivery<U> {
        match self {
            Delivery::Processed(value) => Delivery::Processed(f(value)),
            Delivery::Duplicate => Delivery::Duplicate,
        }
    }
}

/// Checks an inbox consumer name: 1 to 255 bytes, no control characters.
/// Used by every inbox implementation, so that a name valid for one is
/// valid for all.
pub fn validate_consumer(name: &str) -> Result<(), Error> {
    check(name).map_err(|reason| Error::InvalidConsumer { reason })
}

/// The rules shared by event ids and consumer names.
fn check(value: &str) -> Result<(), &'static str> {
    if value.is_empty() {
        Err("it is empty")
    } else if value.len() > MAX_LEN {
        Err("it is longer than 255 bytes")
    } else if value.chars().any(char::is_control) {
        Err("it contains a control character")
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_names_follow_the_event_id_rules() {
        assert!(validate_consumer("billing").is_ok());
        assert!(matches!(
            validate_consumer(""),
            Err(Error::InvalidConsumer {
                reason: "it is empty"
            })
        ));
        assert!(matches!(
            validate_consumer("bill\ning"),
            Err(Error::InvalidConsumer { .. })
        ));
        assert!(validate_consumer(&"c".repeat(255)).is_ok());
        assert!(validate_consumer(&"c".repeat(256)).is_err());
    }

    #[test]
    fn delivery_reports_what_happened() {
        let processed = Delivery::Processed(2);
        assert!(processed.is_processed() && !processed.is_duplicate());
        assert_eq!(processed.map(|n| n * 10), Delivery::Processed(20));
        assert_eq!(processed.processed(), Some(2));
        let duplicate = Delivery::<i32>::Duplicate;
        assert!(duplicate.is_duplicate() && !duplicate.is_processed());
        assert_eq!(duplicate.map(|n| n * 10), Delivery::Duplicate);
        assert_eq!(duplicate.processed(), None);
    }
}
