//! One test per pitfall of PITFALLS.md that the conformance suites did not
//! pin down yet (docs/guarantees.md maps every pitfall and guarantee to
//! its tests). SQLite always; PostgreSQL and MySQL/MariaDB when
//! `IDEM_TEST_POSTGRES` / `IDEM_TEST_MYSQL` are set (always in CI).

mod common;
mod transitions_support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use idem::inbox::EventId;
use idem::keys::StoredResponse;
use idem::keys::{Claim, Completion, Fingerprint, IdempotencyKey, KeyStore, MemoryStore, Scope};
use idem::prelude::*;
use idem_sqlx::inbox::{Inbox, InboxHandler};
use idem_sqlx::keys::SqlKeyStore;
use idem_sqlx::{Error, HandlerError, RetryPolicy};
use sqlx::Pool;
use transitions_support::*;

fn scope() -> Scope {
    Scope::new("client", "payments").unwrap()
}

fn key(key: &str) -> IdempotencyKey {
    key.parse().unwrap()
}

fn fp() -> Fingerprint {
    Fingerprint::of_request("POST", "/payments", b"{\"amount\":100}")
}

fn response(body: &[u8]) -> StoredResponse {
    StoredResponse::new(201, body.to_vec())
}

/// Counts its runs and writes nothing: an inbox handler for the clock tests.
#[derive(Default)]
struct Count(AtomicUsize);

#[async_trait]
impl<B: idem_sqlx::Backend> InboxHandler<B> for Count {
    type Output = ();
    type Error = String;

    async fn handle(&self, _: &mut B::Connection, _: &EventId) -> Result<(), String> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

// ---- state machines --------------------------------------------------------

macro_rules! transitions {
    ($backend:ident, $db:ty) => {
        mod $backend {
            use super::*;

            type DB = $db;

            async fn pool(max: u32) -> Option<Pool<DB>> {
                let pool = <DB as Db>::pool(max).await?;
                setup(&pool).await;
                Some(pool)
            }

            /// Writes a charge row in the transition's transaction.
            #[derive(Default)]
            struct Charge {
                runs: AtomicUsize,
            }

            #[async_trait]
            impl TransitionHandler<Invoice, DB, i64> for Charge {
                type Error = String;

                async fn on_applied(
                    &self,
                    conn: &mut <DB as sqlx::Database>::Connection,
                    change: Change<'_, Invoice, i64>,
                ) -> Result<(), String> {
                    self.runs.fetch_add(1, Ordering::SeqCst);
                    let sql = format!(
                        "INSERT INTO charges (invoice_id, amount) VALUES ({}, 100)",
                        change.key
                    );
                    sqlx::query(&sql)
                        .execute(conn)
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok(())
                }
            }

            /// AASM #241/#536: the handler's savepoint is released, then the
            /// caller's transaction rolls back (explicitly, or by being
            /// dropped): the charge and the history row must go with it. A
            /// no-op never runs the handler nor writes history.
            #[tokio::test]
            async fn effects_released_at_a_savepoint_roll_back_with_the_outer_transaction() {
                let Some(pool) = pool(2).await else { return };
                invoice(&pool, 1, "issued").await;
                let charge = Charge::default();
                let mut tx = pool.begin().await.unwrap();
                let outcome = Invoice::pay()
                    .apply_with_in(&mut tx, 1i64, &charge)
                    .await
                    .unwrap();
                assert!(outcome.is_applied());
                tx.rollback().await.unwrap();
                let mut tx = pool.begin().await.unwrap();
                let outcome = Invoice::pay()
                    .apply_with_in(&mut tx, 1i64, &charge)
                    .await
                    .unwrap();
                assert!(outcome.is_applied(), "the rollback restored the row");
                drop(tx);
                assert_eq!(charge.runs.load(Ordering::SeqCst), 2);
                assert_eq!(status(&pool, 1).await, "issued");
                assert_eq!(charges(&pool, 1).await, 0);
                assert!(history(&pool, 1).await.is_empty());

                assert!(Invoice::pay()
                    .apply_with(&pool, 1i64, &charge)
                    .await
                    .unwrap()
                    .is_applied());
                let mut tx = pool.begin().await.unwrap();
                assert!(Invoice::pay()
                    .apply_with_in(&mut tx, 1i64, &charge)
                    .await
                    .unwrap()
                    .is_noop());
                tx.commit().await.unwrap();
                assert!(Invoice::pay()
                    .apply_with(&pool, 1i64, &charge)
                    .await
                    .unwrap()
                    .is_noop());
                assert_eq!(charge.runs.load(Ordering::SeqCst), 3);
                assert_eq!(charges(&pool, 1).await, 1);
                assert_eq!(history(&pool, 1).await, ["pay:issued->paid"]);
            }

            /// state_machine #221 and django-fsm's stale object: callers
            /// that wait behind a transaction voiding the invoice must not
            /// pay it on a decision made before the wait, and must report
            /// the state the row really has.
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn callers_blocked_behind_a_void_are_rejected_with_the_committed_state() {
                let Some(pool) = pool(10).await else { return };
                invoice(&pool, 1, "issued").await;
                let charge = Arc::new(Charge::default());
                let mut holder = pool.begin().await.unwrap();
                assert!(Invoice::void()
                    .apply(&mut holder, 1i64)
                    .await
                    .unwrap()
                    .is_applied());
                let waiters: Vec<_> = (0..8)
                    .map(|_| {
                        let (pool, charge) = (pool.clone(), charge.clone());
                        tokio::spawn(async move {
                            Invoice::pay()
                                .apply_with(&pool, 1i64, &*charge)
                                .await
                                .unwrap()
                        })
                    })
                    .collect();
                tokio::time::sleep(Duration::from_millis(500)).await;
                assert!(
                    waiters.iter().all(|w| !w.is_finished()),
                    "the callers wait for the holder's write"
                );
                holder.commit().await.unwrap();
                for waiter in waiters {
                    assert_eq!(
                        waiter.await.unwrap(),
                        Outcome::Rejected {
                            current: Invoice::Void
                        }
                    );
                }
                assert_eq!(charge.runs.load(Ordering::SeqCst), 0);
                assert_eq!(charges(&pool, 1).await, 0);
                assert_eq!(status(&pool, 1).await, "void");
                assert_eq!(history(&pool, 1).await, ["void:issued->void"]);
            }

            /// Statesman #201/#463: transitions of the same rows racing
            /// each other all append their history row, in order, with no
            /// collision.
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn racing_transitions_of_one_row_each_append_their_history_row() {
                let Some(pool) = pool(16).await else { return };
                for id in 0..8 {
                    invoice(&pool, id, "draft").await;
                }
                let chain = [Invoice::issue(), Invoice::pay(), Invoice::refund()];
                // The states a row passes through before each step's source.
                let before = [Invoice::Draft, Invoice::Issued, Invoice::Paid];
                let tasks: Vec<_> = (0..8i64)
                    .flat_map(|id| {
                        chain
                            .iter()
                            .enumerate()
                            .map(move |(step, t)| (id, step, *t))
                    })
                    .map(|(id, step, t)| {
                        let pool = pool.clone();
                        tokio::spawn(async move {
                            for _ in 0..5_000 {
                                match t.apply(&pool, id).await.unwrap() {
                                    Outcome::Applied { .. } => return,
                                    // Its source is not reached yet: try again.
                                    Outcome::Rejected { current }
                                        if before[..step].contains(&current) =>
                                    {
                                        tokio::task::yield_now().await
                                    }
                                    other => panic!("{}#{id}: {other:?}", t.name()),
                                }
                            }
                            panic!("{}#{id} never became applicable", t.name());
                        })
                    })
                    .collect();
                for task in tasks {
                    task.await.unwrap();
                }
                for id in 0..8 {
                    assert_eq!(
                        history(&pool, id).await,
                        [
                            "issue:draft->issued",
                            "pay:issued->paid",
                            "refund:paid->refunded"
                        ]
                    );
                    assert_eq!(status(&pool, id).await, "refunded");
                }
            }

            /// A batch meeting a value that is no state fails with
            /// `UnknownState` and changes none of its rows.
            #[tokio::test]
            async fn a_batch_with_an_unknown_stored_value_is_a_typed_error_and_changes_nothing() {
                let Some(pool) = pool(2).await else { return };
                invoice(&pool, 1, "issued").await;
                invoice(&pool, 2, "lost").await;
                invoice(&pool, 3, "draft").await;
                match Invoice::void().apply_many(&pool, &[1i64, 2, 3]).await {
                    Err(Error::Core(idem::Error::UnknownState { type_name, value })) => {
                        assert_eq!((type_name, value.as_str()), ("Invoice", "lost"));
                    }
                    other => panic!("expected UnknownState, got {other:?}"),
                }
                assert_eq!(status(&pool, 1).await, "issued");
                assert_eq!(status(&pool, 3).await, "draft");
                assert!(history(&pool, 1).await.is_empty());
                assert!(history(&pool, 3).await.is_empty());
            }
        }
    };
}

transitions!(sqlite_transitions, sqlx::Sqlite);
transitions!(postgres_transitions, sqlx::Postgres);
transitions!(mysql_transitions, sqlx::MySql);

/// SQLite has one writer: without a busy timeout a second writer gets
/// `SQLITE_BUSY` at once. idem reports it as retryable, and `apply_with`
/// retries it within its policy's bound instead of failing the call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_busy_without_a_busy_timeout_is_retryable_and_retried() {
    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
    let dir = std::env::temp_dir().join("idem-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("pitfalls-busy-{}.db", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let options = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::ZERO);
    let pool = SqlitePoolOptions::new()
        .max_connections(3)
        .connect_with(options)
        .await
        .unwrap();
    setup(&pool).await;
    invoice(&pool, 1, "issued").await;
    invoice(&pool, 2, "issued").await;

    let mut holder = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
    assert!(Invoice::void()
        .apply(&mut holder, 2i64)
        .await
        .unwrap()
        .is_applied());
    let error = Invoice::pay().apply(&pool, 1i64).await.unwrap_err();
    assert!(matches!(error, Error::Retryable(_)), "{error:?}");

    struct Nothing;
    #[async_trait]
    impl TransitionHandler<Invoice, sqlx::Sqlite, i64> for Nothing {
        type Error = String;
        async fn on_applied(
            &self,
            _: &mut sqlx::SqliteConnection,
            _: Change<'_, Invoice, i64>,
        ) -> Result<(), String> {
            Ok(())
        }
    }
    let three = RetryPolicy {
        max_attempts: 3,
        ..RetryPolicy::default()
    };
    match Invoice::pay()
        .apply_with_policy(&pool, 1i64, &Nothing, three)
        .await
    {
        Err(HandlerError::Idem(Error::RetriesExhausted { attempts: 3, .. })) => {}
        other => panic!("expected RetriesExhausted after 3 attempts, got {other:?}"),
    }
    let waiter = {
        let pool = pool.clone();
        tokio::spawn(async move { Invoice::pay().apply_with(&pool, 1i64, &Nothing).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    holder.commit().await.unwrap();
    assert_eq!(
        waiter.await.unwrap().unwrap(),
        Outcome::Applied {
            from: Invoice::Issued,
            to: Invoice::Paid
        }
    );
    assert_eq!(history(&pool, 1).await, ["pay:issued->paid"]);
    pool.close().await;
    let _ = std::fs::remove_file(&path);
}

// ---- idempotency keys --------------------------------------------------------

/// Echo Pro's `result_expired`: the stored reply lives in the key's own
/// record, so it cannot expire before the key. A retry long after the
/// lease ran out replays it (never runs again), until the retention purge
/// removes key and reply together.
async fn a_stored_reply_outlives_its_lease_until_the_key_is_purged<S: KeyStore>(store: S) {
    let (s, k, f) = (scope(), key("late"), fp());
    let lease = Duration::from_millis(300);
    let Ok(Claim::New(l)) = store.claim(&s, &k, &f, lease).await else {
        panic!("a fresh key must be new")
    };
    let stored = store.complete(&l, &response(b"paid")).await.ok();
    assert_eq!(stored, Some(Completion::Stored));
    tokio::time::sleep(Duration::from_millis(700)).await;
    for _ in 0..2 {
        let again = store.claim(&s, &k, &f, lease).await.ok();
        assert_eq!(again, Some(Claim::Replay(response(b"paid"))));
    }
    assert_eq!(store.purge(Duration::from_secs(3600)).await.ok(), Some(0));
    let again = store.claim(&s, &k, &f, lease).await.ok();
    assert_eq!(again, Some(Claim::Replay(response(b"paid"))));
    assert_eq!(store.purge(Duration::from_millis(100)).await.ok(), Some(1));
    assert!(matches!(
        store.claim(&s, &k, &f, lease).await.ok(),
        Some(Claim::New(_))
    ));
}

#[tokio::test]
async fn a_stored_reply_outlives_its_lease_in_memory() {
    a_stored_reply_outlives_its_lease_until_the_key_is_purged(MemoryStore::new(10)).await;
}

/// Completed keys are kept 24 hours and inbox markers too, unless set
/// otherwise (a shorter default would let ordinary late retries and broker
/// redeliveries run again).
#[tokio::test]
async fn key_retention_and_the_inbox_window_default_to_24_hours() {
    let day = Duration::from_secs(24 * 60 * 60);
    assert_eq!(idem::keys::DEFAULT_RETENTION, day);
    assert_eq!(idem::inbox::DEFAULT_WINDOW, day);
    let inbox = Inbox::new(common::sqlite(1).await, "billing").unwrap();
    assert_eq!(inbox.window(), day);
    let memory = idem::inbox::MemoryInbox::new("billing").unwrap();
    assert_eq!(memory.window(), day);
}

macro_rules! keys {
    ($backend:ident, $db:ty, $pool:expr, $aged:literal) => {
        mod $backend {
            use super::*;

            async fn store(connections: u32) -> Option<SqlKeyStore<$db>> {
                let store = SqlKeyStore::new($pool(connections).await?);
                store.install().await.unwrap();
                Some(store)
            }

            #[tokio::test]
            async fn a_stored_reply_outlives_its_lease() {
                let Some(store) = store(2).await else { return };
                a_stored_reply_outlives_its_lease_until_the_key_is_purged(store).await;
            }

            /// Cleanup jobs racing each other: every old record is deleted
            /// (and counted) once, and no record inside the retention goes.
            /// Chunks of 7 make the four purges interleave chunk by chunk.
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn concurrent_purges_delete_each_old_record_once_and_keep_the_rest() {
                let Some(store) = store(5).await else { return };
                let s = scope();
                for n in 0..80 {
                    let k = key(&format!("k-{n}"));
                    let Claim::New(l) = store
                        .claim(&s, &k, &fp(), Duration::from_secs(60))
                        .await
                        .unwrap()
                    else {
                        panic!("a fresh key must be new")
                    };
                    let _ = store.complete(&l, &response(b"done")).await.unwrap();
                }
                let aged = format!(
                    "UPDATE idem_keys SET completed_at = {} WHERE idem_key < 'k-6'",
                    $aged
                );
                sqlx::query(&aged).execute(store.pool()).await.unwrap();
                let old: i64 =
                    sqlx::query_scalar("SELECT count(*) FROM idem_keys WHERE idem_key < 'k-6'")
                        .fetch_one(store.pool())
                        .await
                        .unwrap();
                let purges: Vec<_> = (0..4)
                    .map(|_| {
                        let store = store.clone().with_purge_chunk(7.try_into().unwrap());
                        tokio::spawn(async move {
                            store.purge(Duration::from_secs(3600)).await.unwrap()
                        })
                    })
                    .collect();
                let mut purged = 0;
                for purge in purges {
                    purged += purge.await.unwrap();
                }
                assert_eq!(purged, old as u64);
                let left: i64 = sqlx::query_scalar("SELECT count(*) FROM idem_keys")
                    .fetch_one(store.pool())
                    .await
                    .unwrap();
                assert_eq!(left, 80 - old);
                let fresh = store
                    .claim(&s, &key("k-7"), &fp(), Duration::from_secs(60))
                    .await
                    .unwrap();
                assert_eq!(fresh, Claim::Replay(response(b"done")));
            }
        }
    };
}

keys!(
    sqlite_keys,
    sqlx::Sqlite,
    |n| async move { Some(common::sqlite(n).await) },
    "((julianday('now') - 2440587.5) * 86400.0) - 7200"
);
keys!(
    postgres_keys,
    sqlx::Postgres,
    common::postgres,
    "now() - INTERVAL '2 hours'"
);
keys!(
    mysql_keys,
    sqlx::MySql,
    common::mysql,
    "UTC_TIMESTAMP(6) - INTERVAL 2 HOUR"
);

// ---- one clock: the database's -------------------------------------------------

/// Brandur's two clocks: with the database's clock two hours behind the
/// application's, leases, retention and the inbox window still follow the
/// database alone. (A store comparing the app's time with times the
/// database wrote would see the lease as long expired, purge the fresh
/// reply, or report a three-hour lease.) `$behind` moves the session's
/// clock back, `$restore` restores it; the pool has one connection.
macro_rules! one_clock {
    ($test:ident, $pool:expr, $behind:expr, $restore:expr) => {
        #[tokio::test]
        async fn $test() {
            let Some(pool) = $pool else { return };
            let store = SqlKeyStore::new(pool.clone());
            store.install().await.unwrap();
            idem_sqlx::inbox::install(&pool).await.unwrap();
            let inbox = Inbox::new(pool.clone(), "billing")
                .unwrap()
                .with_window(Duration::from_secs(3600));
            for statement in $behind {
                sqlx::raw_sql(statement).execute(&pool).await.unwrap();
            }
            let (s, k, f) = (scope(), key("clock"), fp());
            let lease = Duration::from_secs(3600);
            let Claim::New(l) = store.claim(&s, &k, &f, lease).await.unwrap() else {
                panic!("a fresh key must be new")
            };
            match store.claim(&s, &k, &f, lease).await.unwrap() {
                Claim::InProgress { retry_after } => assert!(
                    retry_after > lease - Duration::from_secs(60) && retry_after <= lease,
                    "{retry_after:?}"
                ),
                other => panic!("the lease is live by the database's clock: {other:?}"),
            }
            let _ = store.complete(&l, &response(b"clock")).await.unwrap();
            assert_eq!(store.purge(Duration::from_secs(3600)).await.unwrap(), 0);
            assert_eq!(
                store.claim(&s, &k, &f, lease).await.unwrap(),
                Claim::Replay(response(b"clock"))
            );
            let event = EventId::new("evt-clock").unwrap();
            let count = Count::default();
            assert!(inbox.process(&event, &count).await.unwrap().is_processed());
            assert_eq!(inbox.purge().await.unwrap(), 0, "the marker is new");
            assert!(inbox.process(&event, &count).await.unwrap().is_duplicate());

            // Back on real time, reply and marker are two hours old.
            sqlx::raw_sql($restore).execute(&pool).await.unwrap();
            assert_eq!(store.purge(Duration::from_secs(3600)).await.unwrap(), 1);
            assert_eq!(inbox.purge().await.unwrap(), 1);
            assert_eq!(count.0.load(Ordering::SeqCst), 1);
        }
    };
}

one_clock!(
    postgres_decisions_follow_the_database_clock_only,
    common::postgres(1).await,
    [
        "CREATE FUNCTION now() RETURNS timestamptz LANGUAGE sql STABLE \
         AS $$ SELECT pg_catalog.now() - INTERVAL '2 hours' $$",
        // Our `now()` shadows pg_catalog's only when pg_catalog is listed after it.
        "SELECT set_config('search_path', current_schema() || ', pg_catalog', false)",
    ],
    "DROP FUNCTION now()"
);
one_clock!(
    mysql_decisions_follow_the_database_clock_only,
    common::mysql(1).await,
    ["SET timestamp = UNIX_TIMESTAMP(SYSDATE(6)) - 7200"],
    "SET timestamp = DEFAULT"
);

// ---- a connection dropped mid-transaction ----------------------------------------

/// The backend's session under a handler is killed from another
/// connection (a failover, a proxy timeout, an operator's `KILL`) after the
/// handler wrote and before idem commits: the call fails, nothing of it
/// stays (state, history, handler writes, marker, key), and a retry runs
/// once.
macro_rules! dropped_connection {
    ($backend:ident, $db:ty, $pid:literal, $kill:literal, $alive:literal) => {
        mod $backend {
            use super::*;
            use idem_sqlx::keys::Once;

            type DB = $db;
            type Conn = <DB as sqlx::Database>::Connection;

            /// Kills the session of `conn` from another connection of
            /// `pool` and waits until the server ended it.
            async fn kill(conn: &mut Conn, pool: &Pool<DB>) {
                let id: i64 = sqlx::query_scalar($pid).fetch_one(&mut *conn).await.unwrap();
                sqlx::query(&format!($kill, id)).execute(pool).await.unwrap();
                for _ in 0..100 {
                    let alive: i64 = sqlx::query_scalar(&format!($alive, id))
                        .fetch_one(pool)
                        .await
                        .unwrap();
                    if alive == 0 {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                panic!("session {id} outlived its kill");
            }

            async fn count(pool: &Pool<DB>, sql: &str) -> i64 {
                DB::count(pool, sql).await
            }

            /// Writes a charge, then has its session killed (or not).
            struct Charge {
                pool: Pool<DB>,
                kill: bool,
            }

            #[async_trait]
            impl TransitionHandler<Invoice, DB, i64> for Charge {
                type Error = String;

                async fn on_applied(
                    &self,
                    conn: &mut Conn,
                    change: Change<'_, Invoice, i64>,
                ) -> Result<(), String> {
                    let sql = format!(
                        "INSERT INTO charges (invoice_id, amount) VALUES ({}, 100)",
                        change.key
                    );
                    sqlx::query(&sql).execute(&mut *conn).await.unwrap();
                    if self.kill {
                        kill(conn, &self.pool).await;
                    }
                    Ok(())
                }
            }

            #[tokio::test]
            async fn a_transition_whose_connection_dies_before_commit_leaves_nothing_and_a_retry_applies() {
                let Some(pool) = <DB as Db>::pool(3).await else { return };
                setup(&pool).await;
                invoice(&pool, 1, "issued").await;
                let killed = Charge { pool: pool.clone(), kill: true };
                let result = Invoice::pay().apply_with(&pool, 1i64, &killed).await;
                assert!(matches!(result, Err(HandlerError::Idem(Error::Database(_)))), "{result:?}");
                assert_eq!(status(&pool, 1).await, "issued");
                assert_eq!(count(&pool, "SELECT COUNT(*) FROM charges").await, 0);
                assert!(history(&pool, 1).await.is_empty());

                let charge = Charge { pool: pool.clone(), kill: false };
                for expected in [true, false] {
                    let outcome = Invoice::pay().apply_with(&pool, 1i64, &charge).await.unwrap();
                    assert_eq!(outcome.is_applied(), expected);
                }
                assert_eq!(count(&pool, "SELECT COUNT(*) FROM charges").await, 1);
                assert_eq!(history(&pool, 1).await, ["pay:issued->paid"]);
            }

            /// Writes an effect row, then has its session killed (or not).
            struct Effect {
                pool: Pool<DB>,
                kill: bool,
            }

            #[async_trait]
            impl InboxHandler<DB> for Effect {
                type Output = ();
                type Error = String;

                async fn handle(&self, conn: &mut Conn, _: &EventId) -> Result<(), String> {
                    sqlx::query("INSERT INTO effects (n) VALUES (1)")
                        .execute(&mut *conn)
                        .await
                        .unwrap();
                    if self.kill {
                        kill(conn, &self.pool).await;
                    }
                    Ok(())
                }
            }

            async fn with_effects() -> Option<Pool<DB>> {
                let pool = <DB as Db>::pool(3).await?;
                sqlx::query("CREATE TABLE effects (n INTEGER NOT NULL)")
                    .execute(&pool)
                    .await
                    .unwrap();
                Some(pool)
            }

            #[tokio::test]
            async fn an_inbox_delivery_whose_connection_dies_leaves_no_marker_and_the_redelivery_runs() {
                let Some(pool) = with_effects().await else { return };
                idem_sqlx::inbox::install(&pool).await.unwrap();
                let inbox = Inbox::new(pool.clone(), "billing").unwrap();
                let event = EventId::new("evt-1").unwrap();
                let result = inbox.process(&event, &Effect { pool: pool.clone(), kill: true }).await;
                assert!(matches!(result, Err(HandlerError::Idem(Error::Database(_)))), "{result:?}");
                assert_eq!(count(&pool, "SELECT COUNT(*) FROM effects").await, 0);
                assert_eq!(count(&pool, "SELECT COUNT(*) FROM idem_inbox").await, 0);
                let handler = Effect { pool: pool.clone(), kill: false };
                assert!(inbox.process(&event, &handler).await.unwrap().is_processed());
                assert!(inbox.process(&event, &handler).await.unwrap().is_duplicate());
                assert_eq!(count(&pool, "SELECT COUNT(*) FROM effects").await, 1);
            }

            #[tokio::test]
            async fn transactional_key_work_whose_connection_dies_leaves_no_key_and_a_retry_runs() {
                let Some(pool) = with_effects().await else { return };
                let store = SqlKeyStore::new(pool.clone());
                store.install().await.unwrap();
                let run = |dies: bool| {
                    let (store, pool) = (store.clone(), pool.clone());
                    async move {
                        store
                            .run_once(&scope(), &key("tx"), &fp(), move |tx: &mut <DB as sqlx::Database>::Connection| {
                                let pool = pool.clone();
                                Box::pin(async move {
                                    sqlx::query("INSERT INTO effects (n) VALUES (1)")
                                        .execute(&mut *tx)
                                        .await
                                        .unwrap();
                                    if dies {
                                        kill(tx, &pool).await;
                                    }
                                    Ok::<_, String>(response(b"ran"))
                                })
                            })
                            .await
                    }
                };
                let result = run(true).await;
                assert!(matches!(result, Err(HandlerError::Idem(Error::Database(_)))), "{result:?}");
                assert_eq!(count(&pool, "SELECT COUNT(*) FROM effects").await, 0);
                assert_eq!(count(&pool, "SELECT COUNT(*) FROM idem_keys").await, 0);
                assert_eq!(run(false).await.unwrap(), Once::Ran(response(b"ran")));
                assert_eq!(run(false).await.unwrap(), Once::Replayed(response(b"ran")));
                assert_eq!(count(&pool, "SELECT COUNT(*) FROM effects").await, 1);
            }

        }
    };
}

dropped_connection!(
    postgres_dropped,
    sqlx::Postgres,
    "SELECT CAST(pg_backend_pid() AS BIGINT)",
    "SELECT pg_terminate_backend({})",
    "SELECT COUNT(*) FROM pg_stat_activity WHERE pid = {}"
);
dropped_connection!(
    mysql_dropped,
    sqlx::MySql,
    "SELECT CAST(CONNECTION_ID() AS SIGNED)",
    "KILL {}",
    "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = {}"
);

/// Handlers are `&self` because idem runs the whole transaction again
/// after a serialization failure: two SERIALIZABLE payments whose handlers
/// each count the charges and then add one (write skew) cannot both
/// commit. PostgreSQL fails one handler's INSERT with 40001; the handler
/// hands it back (`transient`), idem rolls the attempt back, applies the
/// transition again and runs the handler again: both invoices end paid
/// with exactly one charge each.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_a_conflict_in_the_handlers_own_statement_is_retried_with_the_transition() {
    use idem_sqlx::{Backend, ErrorKind};
    let Some(pool) = sqlx::Postgres::pool(2).await else {
        return;
    };
    setup(&pool).await;
    invoice(&pool, 1, "issued").await;
    invoice(&pool, 2, "issued").await;
    let serializable = sqlx::Postgres::pool_with_isolation(&pool, 2, "SERIALIZABLE").await;

    /// Counts the charges, waits until both first runs counted, adds one.
    struct CountThenCharge {
        runs: AtomicUsize,
        both_counted: tokio::sync::Barrier,
    }

    #[async_trait]
    impl TransitionHandler<Invoice, sqlx::Postgres, i64> for CountThenCharge {
        type Error = sqlx::Error;

        async fn on_applied(
            &self,
            conn: &mut sqlx::PgConnection,
            change: Change<'_, Invoice, i64>,
        ) -> Result<(), sqlx::Error> {
            let run = self.runs.fetch_add(1, Ordering::SeqCst) + 1;
            let _: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM charges")
                .fetch_one(&mut *conn)
                .await?;
            if run <= 2 {
                self.both_counted.wait().await;
            }
            sqlx::query("INSERT INTO charges (invoice_id, amount) VALUES ($1, 100)")
                .bind(*change.key)
                .execute(&mut *conn)
                .await?;
            Ok(())
        }

        fn transient(&self, error: sqlx::Error) -> Result<sqlx::Error, sqlx::Error> {
            match sqlx::Postgres::error_kind(&error) {
                ErrorKind::Transient => Ok(error),
                _ => Err(error),
            }
        }
    }

    let handler = Arc::new(CountThenCharge {
        runs: AtomicUsize::new(0),
        both_counted: tokio::sync::Barrier::new(2),
    });
    let rec = Recorder::default();
    let tasks: Vec<_> = [1i64, 2]
        .into_iter()
        .map(|id| {
            let (pool, handler, rec) = (serializable.clone(), handler.clone(), rec.clone());
            tokio::spawn(async move {
                // Under SSI both payments may be aborted and meet again on
                // a loaded machine: allow more attempts than the default,
                // and count what happened instead of assuming one retry.
                let policy = RetryPolicy {
                    max_attempts: 40,
                    ..RetryPolicy::default()
                };
                rec.record(Invoice::pay().apply_with_policy(&pool, id, &*handler, policy))
                    .await
                    .unwrap()
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(
            task.await.unwrap(),
            Outcome::Applied {
                from: Invoice::Issued,
                to: Invoice::Paid
            }
        );
    }
    // The write skew forces at least one retry; every retry ran the
    // transition and the handler again from the start, and only the
    // committed runs left a charge.
    let retries = rec.retries() as usize;
    assert!(retries >= 1, "the write skew must abort one payment");
    assert_eq!(handler.runs.load(Ordering::SeqCst), 2 + retries);
    for id in [1, 2] {
        let charges = sqlx::Postgres::count(
            &pool,
            &format!("SELECT COUNT(*) FROM charges WHERE invoice_id = {id}"),
        )
        .await;
        assert_eq!(charges, 1, "invoice {id}");
        assert_eq!(history(&pool, id).await, ["pay:issued->paid"]);
    }
}
