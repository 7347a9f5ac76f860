use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::{validate_consumer, Delivery, EventId, DEFAULT_WINDOW};
use crate::Error;

/// The inbox in memory: the same semantics as the database inbox, for a
/// single process and for tests. Markers live as long as the inbox (and its
/// clones) and are lost on restart; a service that must survive restarts
/// keeps them in its database (`idem_sqlx::inbox::Inbox`).
///
/// The handler for one (consumer, event id) runs at most once while the
/// marker is kept, even when the event is delivered concurrently: a
/// duplicate that arrives while the first delivery is still in its handler
/// waits for it, then returns [`Delivery::Duplicate`] if it succeeded, or
/// runs the handler itself if it failed (a failure leaves no marker).
///
/// Clones share the markers. [`for_consumer`](Self::for_consumer) gives
/// another consumer over the same markers, each with its own scope.
#[derive(Clone)]
pub struct MemoryInbox {
    consumer: Arc<str>,
    window: Duration,
    markers: Arc<Mutex<HashMap<MarkerKey, Slot>>>,
}

/// (consumer, event id)
type MarkerKey = (Arc<str>, String);

struct Slot {
    /// Held by the delivery that is running the handler; concurrent
    /// deliveries of the same event queue on it.
    gate: Arc<tokio::sync::Mutex<()>>,
    /// When the handler succeeded; `None` while no delivery has succeeded.
    processed_at: Option<Instant>,
}

impl MemoryInbox {
    /// An empty inbox for the consumer `consumer`, keeping markers for
    /// [`DEFAULT_WINDOW`]. [`Error::InvalidConsumer`] for an empty name,
    /// one longer than 255 bytes or with control characters.
    pub fn new(consumer: &str) -> Result<Self, Error> {
        validate_consumer(consumer)?;
        Ok(MemoryInbox {
            consumer: consumer.into(),
            window: DEFAULT_WINDOW,
            markers: Arc::default(),
        })
    }

    /// The inbox of another consumer over the same markers (and window).
    /// Its markers never hide an event from this consumer, nor the reverse.
    pub fn for_consumer(&self, consumer: &str) -> Result<Self, Error> {
        validate_consumer(consumer)?;
        Ok(MemoryInbox {
            consumer: consumer.into(),
            window: self.window,
            markers: Arc::clone(&self.markers),
        })
    }

    /// Keeps markers for `window` instead of [`DEFAULT_WINDOW`]. It must be
    /// longer than the longest delay after which the broker can redeliver
    /// an event.
    pub fn with_window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// The consumer's name.
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// How long markers are kept.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Runs `handler` unless this consumer processed `event_id` before.
    ///
    /// Returns [`Delivery::Processed`] with the handler's value when this
    /// delivery ran it and it succeeded (the marker is recorded),
    /// [`Delivery::Duplicate`] without running it when a marker exists, and
    /// the handler's error when it failed (no marker: a redelivery runs it
    /// again). A concurrent delivery of the same event waits for this one.
    /// If the returned future is dropped while the handler runs, no marker
    /// is recorded.
    pub async fn process<T, E, F, Fut>(
        &self,
        event_id: &EventId,
        handler: F,
    ) -> Result<Delivery<T>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let key: MarkerKey = (Arc::clone(&self.consumer), event_id.as_str().to_owned());
        let guard = loop {
            let gate = {
                let mut markers = self.markers();
                let slot = markers.entry(key.clone()).or_insert_with(Slot::new);
                if slot.processed_at.is_some() {
                    return Ok(Delivery::Duplicate);
                }
                Arc::clone(&slot.gate)
            };
            let guard = gate.lock_owned().await;
            let markers = self.markers();
            match markers.get(&key) {
                Some(slot) if slot.processed_at.is_some() => return Ok(Delivery::Duplicate),
                // Still the slot this delivery queued on: it may run.
                Some(slot)
                    if Arc::ptr_eq(&slot.gate, tokio::sync::OwnedMutexGuard::mutex(&guard)) =>
                {
                    break guard
                }
                // The slot was purged and replaced while this delivery
                // waited: queue on the current one.
                _ => continue,
            }
        };
        let result = handler().await;
        let mut markers = self.markers();
        match result {
            Ok(value) => {
                markers.entry(key).or_insert_with(Slot::new).processed_at = Some(Instant::now());
                Ok(Delivery::Processed(value))
            }
            Err(error) => {
                // Forget the slot unless another delivery is queued on it
                // (the map's reference and this guard's are the only ones).
                let idle = markers
                    .get(&key)
                    .is_some_and(|slot| Arc::strong_count(&slot.gate) == 2);
                drop(guard);
                if idle {
                    markers.remove(&key);
                }
                Err(error)
            }
        }
    }

    /// Whether this consumer has a marker for `event_id`.
    pub fn is_processed(&self, event_id: &EventId) -> bool {
        let key: MarkerKey = (Arc::clone(&self.consumer), event_id.as_str().to_owned());
        self.markers()
            .get(&key)
            .is_some_and(|slot| slot.processed_at.is_some())
    }

    /// Removes this consumer's markers older than the window and returns
    /// how many it removed. Markers inside the window and other consumers'
    /// markers are kept.
    pub fn purge(&self) -> u64 {
        let now = Instant::now();
        let mut removed = 0;
        self.markers().retain(|(consumer, _), slot| {
            if *consumer != self.consumer {
                return true;
            }
            match slot.processed_at {
                Some(at) if now.saturating_duration_since(at) > self.window => {
                    removed += 1;
                    false
                }
                Some(_) => true,
                // No success yet: keep it while a delivery holds or awaits it.
                None => Arc::strong_count(&slot.gate) > 1,
            }
        });
        removed
    }

    /// The markers. The lock is never held across an await or around user
    /// code, so a poisoned lock still holds consistent data.
    fn markers(&self) -> MutexGuard<'_, HashMap<MarkerKey, Slot>> {
        self.markers.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Slot {
    fn new() -> Self {
        Slot {
            gate: Arc::default(),
            processed_at: None,
        }
    }
}

impl fmt::Debug for MemoryInbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryInbox")
            .field("consumer", &self.consumer)
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> EventId {
        EventId::new(s).unwrap()
    }

    #[tokio::test]
    async fn a_failed_handler_leaves_no_marker() {
        let inbox = MemoryInbox::new("billing").unwrap();
        let failed = inbox
            .process(&id("e"), || async { Err::<(), _>("down") })
            .await;
        assert_eq!(failed, Err("down"));
        assert!(!inbox.is_processed(&id("e")));
        assert!(inbox.markers().is_empty());
        let retried = inbox.process(&id("e"), || async { Ok::<_, ()>(1) }).await;
        assert_eq!(retried, Ok(Delivery::Processed(1)));
        assert!(inbox.is_processed(&id("e")));
    }

    #[test]
    fn an_invalid_consumer_name_is_a_typed_error() {
        assert!(matches!(
            MemoryInbox::new(""),
            Err(Error::InvalidConsumer { .. })
        ));
        let inbox = MemoryInbox::new("billing").unwrap();
        assert!(matches!(
            inbox.for_consumer("a\tb"),
            Err(Error::InvalidConsumer { .. })
        ));
    }

    #[tokio::test]
    async fn a_cancelled_delivery_leaves_no_marker() {
        let inbox = MemoryInbox::new("billing").unwrap();
        let event = id("e");
        let pending = inbox.process(&event, std::future::pending::<Result<(), ()>>);
        assert!(tokio::time::timeout(Duration::from_millis(10), pending)
            .await
            .is_err());
        assert!(!inbox.is_processed(&id("e")));
        assert_eq!(inbox.purge(), 0);
        assert!(inbox.markers().is_empty(), "the idle slot is purged");
        let ran = inbox.process(&id("e"), || async { Ok::<_, ()>(()) }).await;
        assert_eq!(ran, Ok(Delivery::Processed(())));
    }
}
