use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::{validate_consumer, Delivery, EventId, ProcessError, DEFAULT_WINDOW};
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
///
/// # Bounds
///
/// Each consumer holds at most [`capacity`](Self::with_capacity) markers
/// ([`DEFAULT_CAPACITY`](Self::DEFAULT_CAPACITY), 100,000, by default),
/// counting the events whose handler is running. Markers older than the
/// window are forgotten by themselves when a consumer needs room (and by
/// [`purge`](Self::purge)); a marker inside the window never is, since a
/// forgotten marker lets a redelivery run the handler again. A consumer
/// whose capacity is taken by markers inside the window gets
/// [`Error::InboxFull`] for a new event (its duplicates are still answered):
/// that consumer pays, and no other consumer is affected, however many
/// event ids one of them is sent. Consumers are names the application
/// chooses, so the memory in use is at most their number times the
/// capacity times about 100 bytes plus the id. Size the capacity from the
/// consumer's peak rate times the window.
#[derive(Clone)]
pub struct MemoryInbox {
    consumer: Arc<str>,
    window: Duration,
    capacity: usize,
    markers: Arc<Mutex<HashMap<Arc<str>, Markers>>>,
}

/// One consumer's markers.
#[derive(Default)]
struct Markers {
    slots: HashMap<String, Slot>,
    /// Processed event ids in the order they were processed (so by time).
    processed: VecDeque<(Instant, String)>,
}

struct Slot {
    /// Held by the delivery that is running the handler; concurrent
    /// deliveries of the same event queue on it.
    gate: Arc<tokio::sync::Mutex<()>>,
    /// When the handler succeeded; `None` while no delivery has succeeded.
    processed_at: Option<Instant>,
    /// Deliveries running or waiting on the slot: an unprocessed slot goes
    /// when the last of them ends, however it ends.
    users: usize,
}

impl MemoryInbox {
    /// The markers one consumer holds by default.
    pub const DEFAULT_CAPACITY: usize = 100_000;

    /// An empty inbox for the consumer `consumer`, keeping markers for
    /// [`DEFAULT_WINDOW`]. [`Error::InvalidConsumer`] for an empty name,
    /// one longer than 255 bytes or with control characters.
    pub fn new(consumer: &str) -> Result<Self, Error> {
        validate_consumer(consumer)?;
        Ok(MemoryInbox {
            consumer: consumer.into(),
            window: DEFAULT_WINDOW,
            capacity: Self::DEFAULT_CAPACITY,
            markers: Arc::default(),
        })
    }

    /// The inbox of another consumer over the same markers (and window and
    /// capacity). Its markers never hide an event from this consumer, nor
    /// the reverse, and neither can fill the other's capacity.
    pub fn for_consumer(&self, consumer: &str) -> Result<Self, Error> {
        validate_consumer(consumer)?;
        Ok(MemoryInbox {
            consumer: consumer.into(),
            ..self.clone()
        })
    }

    /// Keeps markers for `window` instead of [`DEFAULT_WINDOW`]. It must be
    /// longer than the longest delay after which the broker can redeliver
    /// an event.
    pub fn with_window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// Lets this consumer hold at most `capacity` markers instead of
    /// [`DEFAULT_CAPACITY`](Self::DEFAULT_CAPACITY).
    pub fn with_capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity;
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

    /// How many markers this consumer may hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Runs `handler` unless this consumer processed `event_id` before.
    ///
    /// Returns [`Delivery::Processed`] with the handler's value when this
    /// delivery ran it and it succeeded (the marker is recorded),
    /// [`Delivery::Duplicate`] without running it when a marker exists,
    /// [`ProcessError::Handler`] with the handler's error when it failed (no
    /// marker: a redelivery runs it again), and [`ProcessError::Idem`] with
    /// [`Error::InboxFull`] when this consumer has no room for a new event
    /// (the handler did not run). A concurrent delivery of the same event
    /// waits for this one.
    ///
    /// Cancellation: dropping the returned future while the handler runs
    /// drops the handler's future at its current await point and records no
    /// marker, so a redelivery runs the handler again; whatever the handler
    /// did before that point is not undone. Do not put a timeout around
    /// `process` for a handler with outside effects: bound its own waits,
    /// or spawn the call and await its handle.
    pub async fn process<T, E, F, Fut>(
        &self,
        event_id: &EventId,
        handler: F,
    ) -> Result<Delivery<T>, ProcessError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let id = event_id.as_str();
        let (ticket, guard) = loop {
            let ticket = match self.enter(id)? {
                Some(ticket) => ticket,
                None => return Ok(Delivery::Duplicate),
            };
            let guard = Arc::clone(&ticket.gate).lock_owned().await;
            let markers = self.markers();
            let slot = markers.get(&self.consumer).and_then(|m| m.slots.get(id));
            match slot {
                Some(slot) if slot.processed_at.is_some() => return Ok(Delivery::Duplicate),
                // Still the slot this delivery queued on: it may run.
                Some(slot) if Arc::ptr_eq(&slot.gate, &ticket.gate) => break (ticket, guard),
                // The slot was reclaimed and replaced while this delivery
                // waited: queue on the current one.
                _ => continue,
            }
        };
        let result = handler().await;
        if result.is_ok() {
            let mut markers = self.markers();
            let now = Instant::now();
            let mine = markers.entry(Arc::clone(&self.consumer)).or_default();
            if let Some(slot) = mine.slots.get_mut(id) {
                slot.processed_at = Some(now);
                mine.processed.push_back((now, id.to_owned()));
            }
        }
        drop(guard);
        drop(ticket);
        result
            .map(Delivery::Processed)
            .map_err(ProcessError::Handler)
    }

    /// Joins the slot of `id`, making it when there is room: `None` when
    /// the event was processed before.
    fn enter<'a>(&'a self, id: &'a str) -> Result<Option<Ticket<'a>>, Error> {
        let mut markers = self.markers();
        let mine = markers.entry(Arc::clone(&self.consumer)).or_default();
        if !mine.slots.contains_key(id) {
            let now = Instant::now();
            if mine.slots.len() >= self.capacity {
                mine.reclaim(now, self.window);
            }
            if mine.slots.len() >= self.capacity {
                let first = mine.processed.front().map(|(at, _)| *at);
                let retry_after = first.map_or(Duration::from_secs(1), |at| {
                    (at + self.window).saturating_duration_since(now)
                });
                return Err(Error::InboxFull {
                    capacity: self.capacity,
                    retry_after,
                });
            }
            let slot = Slot {
                gate: Arc::default(),
                processed_at: None,
                users: 0,
            };
            mine.slots.insert(id.to_owned(), slot);
        }
        let slot = mine.slots.get_mut(id).expect("inserted above");
        if slot.processed_at.is_some() {
            return Ok(None);
        }
        slot.users += 1;
        Ok(Some(Ticket {
            inbox: self,
            id,
            gate: Arc::clone(&slot.gate),
        }))
    }

    /// Whether this consumer has a marker for `event_id`.
    pub fn is_processed(&self, event_id: &EventId) -> bool {
        self.markers()
            .get(&self.consumer)
            .and_then(|mine| mine.slots.get(event_id.as_str()))
            .is_some_and(|slot| slot.processed_at.is_some())
    }

    /// How many markers this consumer holds (processed, or being
    /// processed).
    pub fn len(&self) -> usize {
        self.markers()
            .get(&self.consumer)
            .map_or(0, |mine| mine.slots.len())
    }

    /// Whether this consumer holds no marker.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes this consumer's markers older than the window and returns
    /// how many it removed. Markers inside the window and other consumers'
    /// markers are kept. Not needed to make room (a full consumer reclaims
    /// by itself), only to give memory back sooner.
    pub fn purge(&self) -> u64 {
        let mut markers = self.markers();
        markers
            .get_mut(&self.consumer)
            .map_or(0, |mine| mine.reclaim(Instant::now(), self.window))
    }

    /// The markers. The lock is never held across an await or around user
    /// code, so a poisoned lock still holds consistent data.
    fn markers(&self) -> MutexGuard<'_, HashMap<Arc<str>, Markers>> {
        self.markers.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Markers {
    /// Forgets the markers older than `window`; returns how many.
    fn reclaim(&mut self, now: Instant, window: Duration) -> u64 {
        let mut removed = 0;
        while let Some((at, _)) = self.processed.front() {
            if now.saturating_duration_since(*at) <= window {
                break;
            }
            let (at, id) = self.processed.pop_front().expect("a front entry");
            // The marker of this success, not of a later one for an id
            // processed again after its first marker went.
            if self
                .slots
                .get(&id)
                .is_some_and(|s| s.processed_at == Some(at))
            {
                self.slots.remove(&id);
                removed += 1;
            }
        }
        removed
    }
}

/// A delivery's place on a slot, from joining it to the end of the
/// delivery, however it ends (returned, failed, or dropped while waiting
/// or running): the last one out of an unprocessed slot removes it.
struct Ticket<'a> {
    inbox: &'a MemoryInbox,
    id: &'a str,
    gate: Arc<tokio::sync::Mutex<()>>,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let mut markers = self.inbox.markers();
        let Some(mine) = markers.get_mut(&self.inbox.consumer) else {
            return;
        };
        let Some(slot) = mine.slots.get_mut(self.id) else {
            return;
        };
        if !Arc::ptr_eq(&slot.gate, &self.gate) {
            return;
        }
        slot.users -= 1;
        if slot.users == 0 && slot.processed_at.is_none() {
            mine.slots.remove(self.id);
        }
    }
}

impl fmt::Debug for MemoryInbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryInbox")
            .field("consumer", &self.consumer)
            .field("window", &self.window)
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> EventId {
        EventId::new(s).unwrap()
    }

    async fn ok(inbox: &MemoryInbox, event: &str) -> Result<Delivery<()>, ProcessError<()>> {
        inbox.process(&id(event), || async { Ok(()) }).await
    }

    #[tokio::test]
    async fn a_failed_handler_leaves_no_marker() {
        let inbox = MemoryInbox::new("billing").unwrap();
        let failed = inbox
            .process(&id("e"), || async { Err::<(), _>("down") })
            .await;
        assert!(matches!(failed, Err(ProcessError::Handler("down"))));
        assert!(!inbox.is_processed(&id("e")));
        assert!(inbox.is_empty());
        let retried = inbox.process(&id("e"), || async { Ok::<_, ()>(1) }).await;
        assert!(matches!(retried, Ok(Delivery::Processed(1))));
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
    async fn a_cancelled_delivery_leaves_no_marker_and_no_slot() {
        let inbox = MemoryInbox::new("billing").unwrap();
        let event = id("e");
        let pending = inbox.process(&event, std::future::pending::<Result<(), ()>>);
        assert!(tokio::time::timeout(Duration::from_millis(10), pending)
            .await
            .is_err());
        assert!(!inbox.is_processed(&id("e")));
        assert!(inbox.is_empty(), "the dropped delivery removed its slot");
        assert!(matches!(ok(&inbox, "e").await, Ok(Delivery::Processed(()))));
    }

    #[tokio::test]
    async fn a_delivery_dropped_while_waiting_leaves_no_slot_behind() {
        let inbox = MemoryInbox::new("billing").unwrap();
        let event = id("e");
        let release = Arc::new(tokio::sync::Notify::new());
        let first = tokio::spawn({
            let (inbox, event, release) = (inbox.clone(), event.clone(), release.clone());
            async move {
                inbox
                    .process(&event, || async move {
                        release.notified().await;
                        Err::<(), _>("down")
                    })
                    .await
            }
        });
        while inbox.is_empty() {
            tokio::task::yield_now().await;
        }
        let waiting = inbox.process(&event, || async { Ok::<_, &str>(()) });
        assert!(tokio::time::timeout(Duration::from_millis(10), waiting)
            .await
            .is_err());
        release.notify_one();
        assert!(matches!(
            first.await.unwrap(),
            Err(ProcessError::Handler("down"))
        ));
        assert!(inbox.is_empty());
    }

    #[tokio::test]
    async fn a_flooded_consumer_is_refused_new_events_and_other_consumers_are_not() {
        let billing = MemoryInbox::new("billing").unwrap().with_capacity(100);
        let shipping = billing.for_consumer("shipping").unwrap();
        for n in 0..100 {
            assert!(ok(&billing, &format!("flood-{n}"))
                .await
                .unwrap()
                .is_processed());
        }
        let refused = ok(&billing, "flood-100").await;
        let Err(ProcessError::Idem(Error::InboxFull {
            capacity,
            retry_after,
        })) = refused
        else {
            panic!("billing holds its capacity: {refused:?}")
        };
        assert_eq!(capacity, 100);
        assert!(retry_after > DEFAULT_WINDOW - Duration::from_secs(60));
        // Its duplicates are still answered; shipping is served.
        assert!(ok(&billing, "flood-7").await.unwrap().is_duplicate());
        assert!(ok(&shipping, "flood-100").await.unwrap().is_processed());
        assert!(ok(&shipping, "other").await.unwrap().is_processed());
        assert_eq!((billing.len(), shipping.len()), (100, 2));
    }

    #[tokio::test]
    async fn markers_past_the_window_make_room_by_themselves() {
        let window = Duration::from_millis(100);
        let inbox = MemoryInbox::new("billing")
            .unwrap()
            .with_capacity(3)
            .with_window(window);
        for event in ["a", "b", "c"] {
            assert!(ok(&inbox, event).await.unwrap().is_processed());
        }
        let Err(ProcessError::Idem(Error::InboxFull { retry_after, .. })) = ok(&inbox, "d").await
        else {
            panic!("full")
        };
        assert!(retry_after <= window);
        tokio::time::sleep(window + Duration::from_millis(50)).await;
        assert!(ok(&inbox, "d").await.unwrap().is_processed());
        assert_eq!(inbox.len(), 1, "a, b and c were reclaimed without a purge");
        assert_eq!(inbox.purge(), 0);
        // A marker forgotten after its window runs again, as documented.
        assert!(ok(&inbox, "a").await.unwrap().is_processed());
    }
}
