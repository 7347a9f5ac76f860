//! The inbox conformance suite: one body per scenario, run on SQLite,
//! PostgreSQL and MySQL (when their URLs are set) and on the in-memory
//! inbox.
//!
//! Each handler writes an effect row in the inbox's transaction and counts
//! its runs in memory, so a test sees both a duplicated database effect and
//! a handler that ran twice (a non-transactional effect repeated).

mod common;
mod transitions_support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use idem::inbox::{Delivery, EventId, MemoryInbox};

const EVENTS: usize = 7_000;
const REDELIVERIES: usize = 3_000;
const CONSUMERS: usize = 8;

/// A deterministic xorshift generator: the same delivery order every run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// 10,000 deliveries of 7,000 events: every 7th event is redelivered right
/// after itself (two consumers pick the copies up at the same moment) and
/// 2,000 more redeliveries land at random places, before or after the
/// original.
fn deliveries() -> Vec<EventId> {
    let event = |i: usize| EventId::new(format!("evt-{i}")).unwrap();
    let mut list = Vec::with_capacity(EVENTS + REDELIVERIES);
    for i in 0..EVENTS {
        list.push(event(i));
        if i % 7 == 0 {
            list.push(event(i));
        }
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    while list.len() < EVENTS + REDELIVERIES {
        let at = rng.below(list.len() + 1);
        list.insert(at, event(rng.below(EVENTS)));
    }
    list
}

/// Lets a test hold a handler inside its body: the handler says it entered
/// and waits to be released.
struct Pause {
    entered: Semaphore,
    release: Semaphore,
}

impl Default for Pause {
    fn default() -> Self {
        Pause {
            entered: Semaphore::new(0),
            release: Semaphore::new(0),
        }
    }
}

impl Pause {
    async fn hold(&self) {
        self.entered.add_permits(1);
        self.release.acquire().await.unwrap().forget();
    }

    async fn wait_until_entered(&self) {
        self.entered.acquire().await.unwrap().forget();
    }
}

/// Why a test handler failed: on purpose, or a database error.
#[derive(Debug)]
enum Failure {
    Injected,
    Db(sqlx::Error),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Injected => f.write_str("injected failure"),
            Failure::Db(e) => write!(f, "database error: {e}"),
        }
    }
}

/// Takes one of the remaining injected failures.
fn take(failures: &AtomicUsize) -> bool {
    failures
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

/// The in-memory inbox, with the same scenarios.
mod memory {
    use super::*;

    /// The effects of the memory handler: one entry per run that succeeded.
    #[derive(Default)]
    struct Effects {
        runs: AtomicUsize,
        failures: AtomicUsize,
        pause: Option<Pause>,
        rows: Mutex<Vec<EventId>>,
    }

    impl Effects {
        async fn record(&self, event: &EventId) -> Result<usize, Failure> {
            let run = self.runs.fetch_add(1, Ordering::SeqCst) + 1;
            if let Some(pause) = &self.pause {
                pause.hold().await;
            }
            if take(&self.failures) {
                return Err(Failure::Injected);
            }
            self.rows.lock().unwrap().push(event.clone());
            Ok(run)
        }
    }

    fn id(s: &str) -> EventId {
        EventId::new(s).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn ten_thousand_deliveries_with_duplicates_run_each_event_once() {
        let inbox = MemoryInbox::new("billing").unwrap();
        let effects = Arc::new(Effects::default());
        let list = Arc::new(deliveries());
        let next = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let workers: Vec<_> = (0..CONSUMERS)
            .map(|_| {
                let (inbox, effects, list, next) =
                    (inbox.clone(), effects.clone(), list.clone(), next.clone());
                tokio::spawn(async move {
                    let (mut processed, mut duplicate) = (0, 0);
                    loop {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        let Some(event) = list.get(i) else { break };
                        match inbox
                            .process(event, || effects.record(event))
                            .await
                            .unwrap()
                        {
                            Delivery::Processed(_) => processed += 1,
                            Delivery::Duplicate => duplicate += 1,
                        }
                        tokio::task::yield_now().await;
                    }
                    (processed, duplicate)
                })
            })
            .collect();
        let (mut processed, mut duplicate) = (0, 0);
        for worker in workers {
            let (p, d) = worker.await.unwrap();
            processed += p;
            duplicate += d;
        }
        eprintln!("memory: 10,000 deliveries in {:?}", started.elapsed());
        assert_eq!((processed, duplicate), (EVENTS, REDELIVERIES));
        assert_eq!(effects.runs.load(Ordering::SeqCst), EVENTS);
        let mut rows = effects.rows.lock().unwrap().clone();
        rows.sort();
        rows.dedup();
        assert_eq!(rows.len(), EVENTS);
    }

    #[tokio::test]
    async fn a_failed_handler_leaves_no_marker_and_the_redelivery_runs() {
        let inbox = MemoryInbox::new("billing").unwrap();
        let effects = Effects {
            failures: AtomicUsize::new(1),
            ..Effects::default()
        };
        let event = id("evt-1");
        let failed = inbox.process(&event, || effects.record(&event)).await;
        assert!(matches!(
            failed,
            Err(idem::inbox::ProcessError::Handler(Failure::Injected))
        ));
        assert!(!inbox.is_processed(&event));
        let redelivered = inbox.process(&event, || effects.record(&event)).await;
        assert!(matches!(redelivered, Ok(Delivery::Processed(2))));
        let again = inbox.process(&event, || effects.record(&event)).await;
        assert!(matches!(again, Ok(Delivery::Duplicate)));
        assert_eq!(effects.rows.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn the_same_event_is_processed_once_by_each_consumer() {
        let billing = MemoryInbox::new("billing").unwrap();
        let shipping = billing.for_consumer("shipping").unwrap();
        let effects = Effects::default();
        let event = id("order-7");
        for inbox in [&billing, &shipping, &billing, &shipping] {
            let _ = inbox.process(&event, || effects.record(&event)).await;
        }
        assert_eq!(effects.runs.load(Ordering::SeqCst), 2);
        assert!(billing.is_processed(&event) && shipping.is_processed(&event));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_duplicate_delivered_while_the_first_is_in_its_handler_does_not_run_it() {
        let inbox = MemoryInbox::new("billing").unwrap();
        let effects = Arc::new(Effects {
            pause: Some(Pause::default()),
            ..Effects::default()
        });
        let deliver = || {
            let (inbox, effects) = (inbox.clone(), effects.clone());
            tokio::spawn(async move {
                let event = id("evt-1");
                inbox.process(&event, || effects.record(&event)).await
            })
        };
        let first = deliver();
        effects.pause.as_ref().unwrap().wait_until_entered().await;
        let second = deliver();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!second.is_finished(), "the duplicate waits for the first");
        effects.pause.as_ref().unwrap().release.add_permits(2);
        assert!(matches!(first.await.unwrap(), Ok(Delivery::Processed(1))));
        assert!(matches!(second.await.unwrap(), Ok(Delivery::Duplicate)));
        assert_eq!(effects.runs.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn duplicates_waiting_on_a_failed_first_delivery_run_the_handler_once() {
        let inbox = MemoryInbox::new("billing").unwrap();
        let effects = Arc::new(Effects {
            pause: Some(Pause::default()),
            failures: AtomicUsize::new(1),
            ..Effects::default()
        });
        let deliver = || {
            let (inbox, effects) = (inbox.clone(), effects.clone());
            tokio::spawn(async move {
                let event = id("evt-1");
                inbox.process(&event, || effects.record(&event)).await
            })
        };
        let pause = effects.pause.as_ref().unwrap();
        let first = deliver();
        pause.wait_until_entered().await;
        let waiting = [deliver(), deliver()];
        tokio::time::sleep(Duration::from_millis(200)).await;
        pause.release.add_permits(3);
        assert!(matches!(
            first.await.unwrap(),
            Err(idem::inbox::ProcessError::Handler(Failure::Injected))
        ));
        let mut outcomes = Vec::new();
        for task in waiting {
            outcomes.push(task.await.unwrap().unwrap().is_processed());
        }
        outcomes.sort();
        assert_eq!(
            outcomes,
            [false, true],
            "one runs the handler, one is a duplicate"
        );
        assert_eq!(effects.runs.load(Ordering::SeqCst), 2);
        assert_eq!(effects.rows.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn purge_keeps_markers_inside_the_window_and_removes_older_ones() {
        let window = Duration::from_millis(400);
        let inbox = MemoryInbox::new("billing").unwrap().with_window(window);
        let shipping = inbox.for_consumer("shipping").unwrap();
        let effects = Effects::default();
        for (inbox, event) in [(&inbox, "old-1"), (&inbox, "old-2"), (&shipping, "old-3")] {
            let event = id(event);
            let _ = inbox.process(&event, || effects.record(&event)).await;
        }
        tokio::time::sleep(window + Duration::from_millis(200)).await;
        let new = id("new");
        let _ = inbox.process(&new, || effects.record(&new)).await;
        assert_eq!(inbox.purge(), 2, "only this consumer's old markers");
        assert_eq!(inbox.purge(), 0);
        assert!(inbox.is_processed(&new));
        assert!(shipping.is_processed(&id("old-3")));
        let old = id("old-1");
        let again = inbox.process(&old, || effects.record(&old)).await;
        assert!(
            matches!(again, Ok(Delivery::Processed(_))),
            "its marker expired"
        );
    }
}

/// One body per scenario for the database inbox, instantiated per backend.
macro_rules! database_suite {
    ($backend:ident, $db:ty, $pool:path) => {
        mod $backend {
            use super::*;

            use async_trait::async_trait;
            use idem::sqlx::inbox::{install, Inbox, InboxHandler};
            use idem::sqlx::{Backend, HandlerError};
            use idem::Dialect;
            use sqlx::{Database, Pool};

            type Db = $db;

            /// A pool with the inbox table and an `effects` table.
            pub(super) async fn setup(connections: u32) -> Option<Pool<Db>> {
                let pool = $pool(connections).await?;
                install(&pool).await.unwrap();
                sqlx::query(
                    "CREATE TABLE effects (consumer VARCHAR(64) NOT NULL, event_id VARCHAR(255) NOT NULL)",
                )
                .execute(&pool)
                .await
                .unwrap();
                Some(pool)
            }

            /// `?` placeholders as the backend wants them.
            pub(super) fn sql(text: &str) -> String {
                if <Db as Backend>::DIALECT != Dialect::Postgres {
                    return text.to_owned();
                }
                let mut out = String::new();
                for (n, part) in text.split('?').enumerate() {
                    if n > 0 {
                        out.push_str(&format!("${n}"));
                    }
                    out.push_str(part);
                }
                out
            }

            pub(super) async fn count(pool: &Pool<Db>, query: &str) -> i64 {
                sqlx::query_scalar::<_, i64>(query).fetch_one(pool).await.unwrap()
            }

            /// Sets the markers of `consumer` whose event id starts with
            /// `prefix` back by `hours`, by the database clock.
            async fn age(pool: &Pool<Db>, consumer: &str, prefix: &str, hours: u32) {
                let set = match <Db as Backend>::DIALECT {
                    Dialect::Postgres => format!("now() - INTERVAL '{hours} hours'"),
                    Dialect::MySql => format!("UTC_TIMESTAMP(6) - INTERVAL {hours} HOUR"),
                    Dialect::Sqlite => {
                        format!("strftime('%Y-%m-%d %H:%M:%f', 'now', '-{hours} hours')")
                    }
                };
                let update = sql(&format!(
                    "UPDATE idem_inbox SET processed_at = {set} WHERE consumer = ? AND event_id LIKE ?"
                ));
                sqlx::query(&update)
                    .bind(consumer)
                    .bind(format!("{prefix}%"))
                    .execute(pool)
                    .await
                    .unwrap();
            }

            fn id(s: &str) -> EventId {
                EventId::new(s).unwrap()
            }

            /// Writes an effect row in the inbox's transaction and counts
            /// its runs.
            #[derive(Default)]
            struct RecordEffect {
                runs: AtomicUsize,
                failures: AtomicUsize,
                pause: Option<Pause>,
            }

            #[async_trait]
            impl InboxHandler<Db> for RecordEffect {
                type Output = usize;
                type Error = Failure;

                async fn handle(
                    &self,
                    conn: &mut <Db as Database>::Connection,
                    event: &EventId,
                ) -> Result<usize, Failure> {
                    sqlx::query(&sql("INSERT INTO effects (consumer, event_id) VALUES ('-', ?)"))
                        .bind(event.as_str())
                        .execute(&mut *conn)
                        .await
                        .map_err(Failure::Db)?;
                    let run = self.runs.fetch_add(1, Ordering::SeqCst) + 1;
                    if let Some(pause) = &self.pause {
                        pause.hold().await;
                    }
                    if take(&self.failures) {
                        return Err(Failure::Injected);
                    }
                    Ok(run)
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn ten_thousand_deliveries_with_duplicates_run_each_event_once() {
                let Some(pool) = setup(CONSUMERS as u32).await else { return };
                let inbox = Inbox::new(pool.clone(), "billing").unwrap();
                let handler = Arc::new(RecordEffect::default());
                let list = Arc::new(deliveries());
                let next = Arc::new(AtomicUsize::new(0));
                let started = Instant::now();
                let workers: Vec<_> = (0..CONSUMERS)
                    .map(|_| {
                        let (inbox, handler, list, next) =
                            (inbox.clone(), handler.clone(), list.clone(), next.clone());
                        tokio::spawn(async move {
                            let (mut processed, mut duplicate) = (0, 0);
                            loop {
                                let i = next.fetch_add(1, Ordering::SeqCst);
                                let Some(event) = list.get(i) else { break };
                                match inbox.process(event, &*handler).await.unwrap() {
                                    Delivery::Processed(_) => processed += 1,
                                    Delivery::Duplicate => duplicate += 1,
                                }
                            }
                            (processed, duplicate)
                        })
                    })
                    .collect();
                let (mut processed, mut duplicate) = (0, 0);
                for worker in workers {
                    let (p, d) = worker.await.unwrap();
                    processed += p;
                    duplicate += d;
                }
                eprintln!(
                    "{}: 10,000 deliveries by {CONSUMERS} consumers in {:?}",
                    stringify!($backend),
                    started.elapsed()
                );
                assert_eq!((processed, duplicate), (EVENTS, REDELIVERIES));
                assert_eq!(handler.runs.load(Ordering::SeqCst), EVENTS);
                assert_eq!(count(&pool, "SELECT count(*) FROM effects").await, EVENTS as i64);
                assert_eq!(
                    count(&pool, "SELECT count(DISTINCT event_id) FROM effects").await,
                    EVENTS as i64
                );
                assert_eq!(count(&pool, "SELECT count(*) FROM idem_inbox").await, EVENTS as i64);
            }

            #[tokio::test]
            async fn a_failed_handler_leaves_no_marker_and_the_redelivery_runs() {
                let Some(pool) = setup(2).await else { return };
                let inbox = Inbox::new(pool.clone(), "billing").unwrap();
                let handler = RecordEffect {
                    failures: AtomicUsize::new(1),
                    ..RecordEffect::default()
                };
                let event = id("evt-1");
                let failed = inbox.process(&event, &handler).await;
                assert!(matches!(failed, Err(HandlerError::Handler(Failure::Injected))));
                assert_eq!(count(&pool, "SELECT count(*) FROM effects").await, 0);
                assert_eq!(count(&pool, "SELECT count(*) FROM idem_inbox").await, 0);
                let redelivered = inbox.process(&event, &handler).await.unwrap();
                assert_eq!(redelivered, Delivery::Processed(2));
                assert_eq!(inbox.process(&event, &handler).await.unwrap(), Delivery::Duplicate);
                assert_eq!(count(&pool, "SELECT count(*) FROM effects").await, 1);
                assert_eq!(handler.runs.load(Ordering::SeqCst), 2);
            }

            #[tokio::test]
            async fn the_same_event_is_processed_once_by_each_consumer() {
                let Some(pool) = setup(2).await else { return };
                let billing = Inbox::new(pool.clone(), "billing").unwrap();
                let shipping = Inbox::new(pool.clone(), "shipping").unwrap();
                let handler = RecordEffect::default();
                let event = id("order-7");
                assert!(billing.process(&event, &handler).await.unwrap().is_processed());
                assert!(shipping.process(&event, &handler).await.unwrap().is_processed());
                assert!(billing.process(&event, &handler).await.unwrap().is_duplicate());
                assert!(shipping.process(&event, &handler).await.unwrap().is_duplicate());
                assert_eq!(handler.runs.load(Ordering::SeqCst), 2);
                assert_eq!(count(&pool, "SELECT count(*) FROM idem_inbox").await, 2);
            }

            #[tokio::test]
            async fn the_longest_valid_ids_fit_the_table() {
                let Some(pool) = setup(2).await else { return };
                let consumer = "c".repeat(255);
                let inbox = Inbox::new(pool.clone(), &consumer).unwrap();
                let handler = RecordEffect::default();
                // 255 bytes each: ASCII, and two-byte characters plus one.
                let ascii = id(&"e".repeat(255));
                let accented = id(&format!("{}x", "é".repeat(127)));
                for event in [&ascii, &accented] {
                    assert!(inbox.process(event, &handler).await.unwrap().is_processed());
                    assert!(inbox.process(event, &handler).await.unwrap().is_duplicate());
                }
                assert_eq!(count(&pool, "SELECT count(*) FROM idem_inbox").await, 2);
            }

            #[tokio::test]
            async fn event_ids_that_differ_only_in_case_or_trailing_space_are_distinct() {
                let Some(pool) = setup(2).await else { return };
                let inbox = Inbox::new(pool.clone(), "billing").unwrap();
                let handler = RecordEffect::default();
                for event in ["evt-a", "EVT-A", "evt-a ", "évt-a"] {
                    let delivery = inbox.process(&id(event), &handler).await.unwrap();
                    assert!(delivery.is_processed(), "{event:?} is a new event");
                }
                assert!(inbox.process(&id("evt-a "), &handler).await.unwrap().is_duplicate());
                assert_eq!(handler.runs.load(Ordering::SeqCst), 4);
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_duplicate_delivered_while_the_first_is_in_its_handler_does_not_run_it() {
                let Some(pool) = setup(4).await else { return };
                let inbox = Inbox::new(pool.clone(), "billing").unwrap();
                let handler = Arc::new(RecordEffect {
                    pause: Some(Pause::default()),
                    ..RecordEffect::default()
                });
                let deliver = || {
                    let (inbox, handler) = (inbox.clone(), handler.clone());
                    tokio::spawn(async move { inbox.process(&id("evt-1"), &*handler).await })
                };
                let pause = handler.pause.as_ref().unwrap();
                let first = deliver();
                pause.wait_until_entered().await;
                let second = deliver();
                tokio::time::sleep(Duration::from_millis(300)).await;
                assert!(!second.is_finished(), "the duplicate waits for the first");
                pause.release.add_permits(2);
                assert_eq!(first.await.unwrap().unwrap(), Delivery::Processed(1));
                assert_eq!(second.await.unwrap().unwrap(), Delivery::Duplicate);
                assert_eq!(handler.runs.load(Ordering::SeqCst), 1);
                assert_eq!(count(&pool, "SELECT count(*) FROM effects").await, 1);
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn duplicates_waiting_on_a_failed_first_delivery_run_the_handler_once() {
                let Some(pool) = setup(4).await else { return };
                let inbox = Inbox::new(pool.clone(), "billing").unwrap();
                let handler = Arc::new(RecordEffect {
                    pause: Some(Pause::default()),
                    failures: AtomicUsize::new(1),
                    ..RecordEffect::default()
                });
                let deliver = || {
                    let (inbox, handler) = (inbox.clone(), handler.clone());
                    tokio::spawn(async move { inbox.process(&id("evt-1"), &*handler).await })
                };
                let pause = handler.pause.as_ref().unwrap();
                let first = deliver();
                pause.wait_until_entered().await;
                let waiting = [deliver(), deliver()];
                tokio::time::sleep(Duration::from_millis(300)).await;
                assert!(waiting.iter().all(|task| !task.is_finished()));
                pause.release.add_permits(3);
                assert!(matches!(
                    first.await.unwrap(),
                    Err(HandlerError::Handler(Failure::Injected))
                ));
                let mut processed = Vec::new();
                for task in waiting {
                    processed.push(task.await.unwrap().unwrap().is_processed());
                }
                processed.sort();
                assert_eq!(processed, [false, true], "one runs the handler, one is a duplicate");
                assert_eq!(handler.runs.load(Ordering::SeqCst), 2);
                assert_eq!(count(&pool, "SELECT count(*) FROM effects").await, 1);
                assert_eq!(count(&pool, "SELECT count(*) FROM idem_inbox").await, 1);
            }

            #[tokio::test]
            async fn purge_keeps_markers_inside_the_window_and_removes_older_ones() {
                let Some(pool) = setup(2).await else { return };
                let inbox = Inbox::new(pool.clone(), "billing").unwrap();
                let shipping = Inbox::new(pool.clone(), "shipping").unwrap();
                let handler = RecordEffect::default();
                for event in ["old-1", "old-2", "recent-1", "new-1"] {
                    let _ = inbox.process(&id(event), &handler).await.unwrap();
                }
                let _ = shipping.process(&id("old-3"), &handler).await.unwrap();
                age(&pool, "billing", "old-", 25).await;
                age(&pool, "shipping", "old-", 25).await;
                age(&pool, "billing", "recent-", 23).await;

                assert_eq!(inbox.purge().await.unwrap(), 2, "older than 24 h, this consumer only");
                assert_eq!(inbox.purge().await.unwrap(), 0);
                assert_eq!(count(&pool, "SELECT count(*) FROM idem_inbox").await, 3);
                assert!(inbox.process(&id("recent-1"), &handler).await.unwrap().is_duplicate());
                assert!(inbox.process(&id("new-1"), &handler).await.unwrap().is_duplicate());
                // A purged marker is forgotten: the event runs again.
                assert!(inbox.process(&id("old-1"), &handler).await.unwrap().is_processed());

                // The window is configurable: at 22 h the 23-hour-old marker goes.
                let shorter = inbox.clone().with_window(Duration::from_secs(22 * 3600));
                assert_eq!(shorter.purge().await.unwrap(), 1);
                assert!(shorter.process(&id("recent-1"), &handler).await.unwrap().is_processed());
                assert_eq!(shipping.purge().await.unwrap(), 1);
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn concurrent_purges_delete_each_old_marker_once_and_keep_the_rest() {
                let Some(pool) = setup(4).await else { return };
                let inbox = Inbox::new(pool.clone(), "billing").unwrap();
                let handler = RecordEffect::default();
                for n in 0..150 {
                    let _ = inbox.process(&id(&format!("old-{n}")), &handler).await.unwrap();
                }
                for n in 0..50 {
                    let _ = inbox.process(&id(&format!("new-{n}")), &handler).await.unwrap();
                }
                age(&pool, "billing", "old-", 48).await;
                // Chunks of 7: the four purges interleave chunk by chunk.
                let purges: Vec<_> = (0..4)
                    .map(|_| {
                        let inbox = inbox.clone().with_purge_chunk(7.try_into().unwrap());
                        tokio::spawn(async move { inbox.purge().await.unwrap() })
                    })
                    .collect();
                let mut purged = 0;
                for purge in purges {
                    purged += purge.await.unwrap();
                }
                assert_eq!(purged, 150);
                assert_eq!(count(&pool, "SELECT count(*) FROM idem_inbox").await, 50);
            }

            #[tokio::test]
            async fn install_is_idempotent_and_the_schema_is_exposed() {
                let Some(pool) = setup(2).await else { return };
                install(&pool).await.unwrap();
                install(&pool).await.unwrap();
                let script = idem::sqlx::inbox::schema(<Db as Backend>::DIALECT);
                assert!(script.contains("PRIMARY KEY (consumer, event_id)"));
                sqlx::raw_sql(script).execute(&pool).await.unwrap();
            }

            #[tokio::test]
            async fn an_invalid_consumer_name_is_a_typed_error() {
                let Some(pool) = setup(1).await else { return };
                let error = Inbox::new(pool, &"c".repeat(256)).unwrap_err();
                assert!(matches!(
                    error,
                    idem::sqlx::Error::Core(idem::Error::InvalidConsumer { .. })
                ));
            }
        }
    };
}

async fn sqlite(connections: u32) -> Option<sqlx::SqlitePool> {
    Some(common::sqlite(connections).await)
}

database_suite!(sqlite_inbox, sqlx::Sqlite, sqlite);
database_suite!(postgres_inbox, sqlx::Postgres, common::postgres);
database_suite!(mysql_inbox, sqlx::MySql, common::mysql);

/// A transient conflict hit by the handler's own statements (injected
/// with the backend's error code: PostgreSQL and MySQL can raise one on
/// demand) is retried when the handler hands it back, and only then.
macro_rules! handler_conflict_suite {
    ($backend:ident, $db:ty, $suite:ident, $conflict:literal) => {
        mod $backend {
            use super::*;

            use async_trait::async_trait;
            use idem::sqlx::inbox::{Inbox, InboxHandler};
            use idem::sqlx::{Backend, Error, ErrorKind, HandlerError, RetryPolicy};
            use sqlx::Database;

            use super::$suite::{count, setup, sql};

            type Db = $db;

            /// Writes an effect, then hits a transient conflict on each of
            /// its first `conflicts` runs.
            struct Conflicted {
                runs: AtomicUsize,
                conflicts: AtomicUsize,
                hand_back: bool,
            }

            impl Conflicted {
                fn new(conflicts: usize, hand_back: bool) -> Self {
                    Conflicted {
                        runs: AtomicUsize::new(0),
                        conflicts: AtomicUsize::new(conflicts),
                        hand_back,
                    }
                }
            }

            #[async_trait]
            impl InboxHandler<Db> for Conflicted {
                type Output = usize;
                type Error = sqlx::Error;

                async fn handle(
                    &self,
                    conn: &mut <Db as Database>::Connection,
                    event: &EventId,
                ) -> Result<usize, sqlx::Error> {
                    sqlx::query(&sql(
                        "INSERT INTO effects (consumer, event_id) VALUES ('-', ?)",
                    ))
                    .bind(event.as_str())
                    .execute(&mut *conn)
                    .await?;
                    let run = self.runs.fetch_add(1, Ordering::SeqCst) + 1;
                    if take(&self.conflicts) {
                        sqlx::query($conflict).execute(&mut *conn).await?;
                    }
                    Ok(run)
                }

                fn transient(&self, error: sqlx::Error) -> Result<sqlx::Error, sqlx::Error> {
                    match <Db as Backend>::error_kind(&error) {
                        ErrorKind::Transient if self.hand_back => Ok(error),
                        _ => Err(error),
                    }
                }
            }

            #[tokio::test]
            async fn a_conflict_in_the_handler_is_retried_and_the_failed_attempts_roll_back() {
                let Some(pool) = setup(2).await else { return };
                let inbox = Inbox::new(pool.clone(), "billing").unwrap();
                let handler = Conflicted::new(2, true);
                let delivery = inbox.process(&EventId::new("e").unwrap(), &handler).await;
                assert_eq!(delivery.unwrap(), Delivery::Processed(3));
                assert_eq!(count(&pool, "SELECT count(*) FROM effects").await, 1);
                assert_eq!(count(&pool, "SELECT count(*) FROM idem_inbox").await, 1);
            }

            #[tokio::test]
            async fn retries_of_handler_conflicts_are_bounded() {
                let Some(pool) = setup(2).await else { return };
                let policy = RetryPolicy {
                    max_attempts: 3,
                    ..RetryPolicy::default()
                };
                let inbox = Inbox::new(pool.clone(), "billing")
                    .unwrap()
                    .with_retry(policy);
                let handler = Conflicted::new(usize::MAX, true);
                let delivery = inbox.process(&EventId::new("e").unwrap(), &handler).await;
                assert!(
                    matches!(
                        delivery,
                        Err(HandlerError::Idem(Error::RetriesExhausted {
                            attempts: 3,
                            ..
                        }))
                    ),
                    "{delivery:?}"
                );
                assert_eq!(handler.runs.load(Ordering::SeqCst), 3);
                assert_eq!(count(&pool, "SELECT count(*) FROM effects").await, 0);
                assert_eq!(count(&pool, "SELECT count(*) FROM idem_inbox").await, 0);
            }

            #[tokio::test]
            async fn a_handler_conflict_that_is_not_handed_back_ends_the_delivery() {
                let Some(pool) = setup(2).await else { return };
                let inbox = Inbox::new(pool.clone(), "billing").unwrap();
                let handler = Conflicted::new(1, false);
                let delivery = inbox.process(&EventId::new("e").unwrap(), &handler).await;
                assert!(
                    matches!(delivery, Err(HandlerError::Handler(_))),
                    "{delivery:?}"
                );
                assert_eq!(handler.runs.load(Ordering::SeqCst), 1);
                assert_eq!(count(&pool, "SELECT count(*) FROM idem_inbox").await, 0);
            }
        }
    };
}

handler_conflict_suite!(
    postgres_handler_conflicts,
    sqlx::Postgres,
    postgres_inbox,
    "DO $$ BEGIN RAISE EXCEPTION 'injected' USING ERRCODE = 'serialization_failure'; END $$"
);
handler_conflict_suite!(
    mysql_handler_conflicts,
    sqlx::MySql,
    mysql_inbox,
    "SIGNAL SQLSTATE '40001' SET MYSQL_ERRNO = 1213, MESSAGE_TEXT = 'injected deadlock'"
);

/// PostgreSQL under REPEATABLE READ: a duplicate that waited on the
/// first's marker cannot see it in its snapshot and fails with a
/// serialization failure, which idem retries.
mod postgres_repeatable_read {
    use super::*;

    use async_trait::async_trait;
    use idem::sqlx::inbox::{install, Inbox, InboxHandler};
    use idem::sqlx::{Error, HandlerError, RetryPolicy};
    use sqlx::postgres::{PgPool, PgPoolOptions};
    use sqlx::{Executor, PgConnection};

    struct Slow(Pause, AtomicUsize);

    #[async_trait]
    impl InboxHandler<sqlx::Postgres> for Slow {
        type Output = ();
        type Error = std::convert::Infallible;

        async fn handle(&self, _: &mut PgConnection, _: &EventId) -> Result<(), Self::Error> {
            self.1.fetch_add(1, Ordering::SeqCst);
            self.0.hold().await;
            Ok(())
        }
    }

    /// A pool on the same schema whose transactions are REPEATABLE READ.
    async fn repeatable_read() -> Option<PgPool> {
        let pool = common::postgres(1).await?;
        install(&pool).await.unwrap();
        let schema: String = sqlx::query_scalar("SELECT current_schema()::text")
            .fetch_one(&pool)
            .await
            .unwrap();
        let rr = PgPoolOptions::new()
            .max_connections(4)
            .after_connect(move |conn, _| {
                let search_path = format!("SET search_path TO {schema}");
                Box::pin(async move {
                    conn.execute(search_path.as_str()).await?;
                    conn.execute("SET default_transaction_isolation = 'repeatable read'")
                        .await?;
                    Ok(())
                })
            })
            .connect_with((*pool.connect_options()).clone())
            .await
            .unwrap();
        Some(rr)
    }

    /// Runs a duplicate against a held first delivery with `policy`.
    async fn race(
        policy: RetryPolicy,
    ) -> Option<Result<Delivery<()>, HandlerError<std::convert::Infallible>>> {
        let pool = repeatable_read().await?;
        let inbox = Inbox::new(pool, "billing").unwrap().with_retry(policy);
        let handler = Arc::new(Slow(Pause::default(), AtomicUsize::new(0)));
        let deliver = || {
            let (inbox, handler) = (inbox.clone(), handler.clone());
            tokio::spawn(async move { inbox.process(&EventId::new("e").unwrap(), &*handler).await })
        };
        let first = deliver();
        handler.0.wait_until_entered().await;
        let second = deliver();
        tokio::time::sleep(Duration::from_millis(300)).await;
        handler.0.release.add_permits(2);
        assert!(first.await.unwrap().unwrap().is_processed());
        let second = second.await.unwrap();
        assert_eq!(handler.1.load(Ordering::SeqCst), 1);
        Some(second)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_waiting_duplicate_hits_a_serialization_failure_without_retries() {
        let Some(second) = race(RetryPolicy::none()).await else {
            return;
        };
        assert!(
            matches!(
                second,
                Err(HandlerError::Idem(Error::RetriesExhausted {
                    attempts: 1,
                    ..
                }))
            ),
            "{second:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_serialization_failure_is_retried_into_a_duplicate() {
        let Some(second) = race(RetryPolicy::default()).await else {
            return;
        };
        assert_eq!(second.unwrap(), Delivery::Duplicate);
    }
}

// ---- identifiers and purging in chunks, written once for every database ------

/// A database the inbox runs on, with its clock in `idem_inbox`'s time type.
trait InboxDb: transitions_support::Db + idem::sqlx::inbox::InboxBackend {
    /// `hours` before the database's now.
    fn hours_ago(hours: u32) -> String;
}

impl InboxDb for sqlx::Sqlite {
    fn hours_ago(hours: u32) -> String {
        format!("strftime('%Y-%m-%d %H:%M:%f', 'now', '-{hours} hours')")
    }
}

impl InboxDb for sqlx::Postgres {
    fn hours_ago(hours: u32) -> String {
        format!("now() - INTERVAL '{hours} hours'")
    }
}

impl InboxDb for sqlx::MySql {
    fn hours_ago(hours: u32) -> String {
        format!("UTC_TIMESTAMP(6) - INTERVAL {hours} HOUR")
    }
}

/// Counts its runs; writes nothing.
#[derive(Default)]
struct Counted(AtomicUsize);

#[async_trait::async_trait]
impl<B: idem::sqlx::Backend> idem::sqlx::inbox::InboxHandler<B> for Counted {
    type Output = ();
    type Error = std::convert::Infallible;

    async fn handle(&self, _: &mut B::Connection, _: &EventId) -> Result<(), Self::Error> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// One delivery of `event` to `inbox`, run by `handler`.
async fn deliver<DB: InboxDb>(
    inbox: &idem::sqlx::inbox::Inbox<DB>,
    event: &str,
    handler: &Counted,
) -> Delivery<()> {
    let event = EventId::new(event).unwrap();
    inbox.process(&event, handler).await.unwrap()
}

async fn installed<DB: InboxDb>(connections: u32) -> Option<sqlx::Pool<DB>> {
    let pool = DB::pool(connections).await?;
    idem::sqlx::inbox::install(&pool).await.unwrap();
    Some(pool)
}

/// Consumer names and event ids compare byte for byte: values that differ
/// only in case, trailing spaces or accents (precomposed, or a letter and
/// a combining mark) are distinct consumers and distinct events, each
/// processed once. MySQL's text collations would merge each group.
async fn names_and_ids_differing_only_in_case_space_or_accents_are_distinct<DB: InboxDb>(
    pool: sqlx::Pool<DB>,
) {
    use idem::sqlx::inbox::Inbox;

    let consumers = [
        "billing",
        "Billing",
        "billing ",
        "b\u{ef}lling",
        "bi\u{308}lling",
    ];
    let events = [
        "evt-a",
        "EVT-A",
        "evt-a ",
        "\u{e9}vt-a",
        "e\u{301}vt-a",
        "evt-\u{e1}",
    ];
    let handler = Counted::default();
    for round in 0..2 {
        for consumer in consumers {
            let inbox = Inbox::new(pool.clone(), consumer).unwrap();
            let processed = deliver(&inbox, "evt-1", &handler).await.is_processed();
            assert_eq!(
                processed,
                round == 0,
                "consumer {consumer:?}, round {round}"
            );
        }
        let billing = Inbox::new(pool.clone(), "billing").unwrap();
        for event in events {
            let processed = deliver(&billing, event, &handler).await.is_processed();
            assert_eq!(processed, round == 0, "event {event:?}, round {round}");
        }
    }
    assert_eq!(
        handler.0.load(Ordering::SeqCst),
        consumers.len() + events.len()
    );
    let markers = DB::count(&pool, "SELECT COUNT(*) FROM idem_inbox").await;
    assert_eq!(markers, (consumers.len() + events.len()) as i64);
}

/// Inserts `n` markers `<prefix><i>` of `consumer`, processed `hours` ago,
/// in one statement (numbers from a cross join of `digits`).
async fn insert_markers<DB: InboxDb>(
    pool: &sqlx::Pool<DB>,
    consumer: &str,
    prefix: &str,
    n: u32,
    hours: u32,
) {
    let at = DB::hours_ago(hours);
    let sql = format!(
        "INSERT INTO idem_inbox (consumer, event_id, processed_at) \
         SELECT '{consumer}', CONCAT('{prefix}', n), {at} \
         FROM (SELECT a.d + 10 * b.d + 100 * c.d + 1000 * e.d + 10000 * g.d AS n \
               FROM digits a, digits b, digits c, digits e, digits g) numbers \
         WHERE n < {n}"
    );
    DB::exec(pool, &sql).await;
}

/// A backlog of 25,000 markers past the window goes in chunks of 1,000,
/// each its own transaction (25 full chunks and a short one: 26 `DELETE`s
/// between as many `BEGIN`/`COMMIT`s); the 500 markers inside the window
/// and another consumer's 2,000 old markers survive, and that consumer's
/// own purge then takes its 2,000 in three chunks.
async fn a_backlog_of_markers_is_purged_in_chunks_and_the_window_survives<DB: InboxDb>(
    pool: sqlx::Pool<DB>,
) {
    use idem::sqlx::inbox::Inbox;

    DB::exec(&pool, "CREATE TABLE digits (d INTEGER NOT NULL)").await;
    DB::exec(
        &pool,
        "INSERT INTO digits (d) VALUES (0), (1), (2), (3), (4), (5), (6), (7), (8), (9)",
    )
    .await;
    insert_markers(&pool, "billing", "old-", 25_000, 25).await;
    insert_markers(&pool, "billing", "recent-", 500, 23).await;
    insert_markers(&pool, "shipping", "old-", 2_000, 25).await;

    let chunk = 1_000.try_into().unwrap();
    let billing = Inbox::new(pool.clone(), "billing")
        .unwrap()
        .with_purge_chunk(chunk);
    let recorder = transitions_support::Recorder::default();
    assert_eq!(recorder.record(billing.purge()).await.unwrap(), 25_000);
    let statements = recorder.take();
    let deletes = purges(&statements);
    let commits = statements.iter().filter(|s| s.as_str() == "COMMIT").count();
    assert_eq!(deletes, 26, "one statement per chunk: {statements:?}");
    // sqlx's SQLite driver does not log BEGIN and COMMIT; the others do.
    if DB::BACKEND != "sqlite" {
        assert_eq!(commits, 26, "a transaction per chunk: {statements:?}");
    }
    let left = "SELECT COUNT(*) FROM idem_inbox WHERE consumer = 'billing'";
    assert_eq!(DB::count(&pool, left).await, 500);
    let recent = deliver(&billing, "recent-7", &Counted::default()).await;
    assert!(recent.is_duplicate(), "a marker inside the window");

    let shipping = Inbox::new(pool.clone(), "shipping")
        .unwrap()
        .with_purge_chunk(chunk);
    assert_eq!(recorder.record(shipping.purge()).await.unwrap(), 2_000);
    assert_eq!(purges(&recorder.take()), 3);
    assert_eq!(
        DB::count(&pool, "SELECT COUNT(*) FROM idem_inbox").await,
        500
    );
}

/// The purge statements among `statements`: `DELETE`s, which
/// PostgreSQL's wrap in a `WITH` that answers with their tag and count.
fn purges(statements: &[String]) -> usize {
    statements
        .iter()
        .filter(|s| matches!(s.as_str(), "DELETE" | "WITH"))
        .count()
}

/// Each case once per database (and its pool size).
macro_rules! inbox_cases {
    ($($backend:ident: $db:ty),* $(,)?) => {
        $(
            mod $backend {
                use super::*;

                #[tokio::test]
                async fn names_and_ids_differing_only_in_case_space_or_accents_are_distinct() {
                    if let Some(pool) = installed::<$db>(2).await {
                        super::names_and_ids_differing_only_in_case_space_or_accents_are_distinct(pool).await;
                    }
                }

                #[tokio::test]
                async fn a_backlog_of_markers_is_purged_in_chunks_and_the_window_survives() {
                    if let Some(pool) = installed::<$db>(2).await {
                        super::a_backlog_of_markers_is_purged_in_chunks_and_the_window_survives(pool).await;
                    }
                }
            }
        )*
    };
}

mod generic {
    use super::*;

    inbox_cases!(sqlite: sqlx::Sqlite, postgres: sqlx::Postgres, mysql: sqlx::MySql);
}

/// `idem_inbox` with text columns (one created by hand, or from an old
/// migration): on MySQL `install` refuses it and names the `ALTER TABLE`,
/// after which it installs, and `E1`/`e1` are two events.
#[tokio::test]
async fn install_refuses_a_text_inbox_table_on_mysql_and_names_the_migration() {
    use idem::sqlx::inbox::{install, Inbox};

    let Some(pool) = common::mysql(2).await else {
        return;
    };
    sqlx::raw_sql(
        "CREATE TABLE idem_inbox (
            consumer VARCHAR(255) NOT NULL,
            event_id VARCHAR(255) NOT NULL,
            processed_at DATETIME(6) NOT NULL,
            PRIMARY KEY (consumer, event_id)
        ) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4",
    )
    .execute(&pool)
    .await
    .unwrap();
    let refused = install(&pool).await.unwrap_err();
    let idem::sqlx::Error::OutdatedSchema {
        table, migration, ..
    } = &refused
    else {
        panic!("{refused:?}")
    };
    assert_eq!(*table, "idem_inbox");
    assert_eq!(
        migration,
        "ALTER TABLE idem_inbox MODIFY consumer VARBINARY(255) NOT NULL, \
         MODIFY event_id VARBINARY(255) NOT NULL"
    );
    sqlx::query(migration).execute(&pool).await.unwrap();
    install(&pool).await.unwrap();
    let inbox = Inbox::new(pool.clone(), "billing").unwrap();
    let handler = Counted::default();
    for event in ["e1", "E1"] {
        assert!(
            deliver(&inbox, event, &handler).await.is_processed(),
            "{event}"
        );
    }
}
