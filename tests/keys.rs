//! The conformance suite of the idempotency-key protocol: one body per
//! case, run against the in-memory store and the SQL store on SQLite,
//! PostgreSQL and MySQL/MariaDB (PostgreSQL and MySQL when their URLs are
//! set, always in CI), and the transactional mode on the three databases.

mod common;
mod transitions_support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use idem::keys::{
    Claim, Completion, Fingerprint, IdempotencyKey, KeyStore, MemoryStore, Scope, StoredResponse,
};
use idem_sqlx::keys::{Once, SqlKeyStore};
use tokio::sync::Barrier;

const LONG: Duration = Duration::from_secs(30);

/// A store under test, and a way to count its records in the store itself
/// (rows of `idem_keys`, entries of the memory store).
#[async_trait]
trait Harness: Send + Sync + 'static {
    type Store: KeyStore + Clone + 'static;
    fn store(&self) -> Self::Store;
    async fn records(&self) -> i64;
}

struct Memory(MemoryStore);

#[async_trait]
impl Harness for Memory {
    type Store = MemoryStore;
    fn store(&self) -> MemoryStore {
        self.0.clone()
    }
    async fn records(&self) -> i64 {
        self.0.len() as i64
    }
}

struct Sql<DB: sqlx::Database>(SqlKeyStore<DB>);

macro_rules! sql_harness {
    ($db:ty) => {
        #[async_trait]
        impl Harness for Sql<$db> {
            type Store = SqlKeyStore<$db>;
            fn store(&self) -> SqlKeyStore<$db> {
                self.0.clone()
            }
            async fn records(&self) -> i64 {
                sqlx::query_scalar("SELECT count(*) FROM idem_keys")
                    .fetch_one(self.0.pool())
                    .await
                    .unwrap()
            }
        }
    };
}
sql_harness!(sqlx::Sqlite);
sql_harness!(sqlx::Postgres);
sql_harness!(sqlx::MySql);

async fn memory(_connections: u32) -> Option<Memory> {
    Some(Memory(MemoryStore::new(1_000)))
}

async fn sqlite(connections: u32) -> Option<Sql<sqlx::Sqlite>> {
    installed(common::sqlite(connections).await).await
}

async fn postgres(connections: u32) -> Option<Sql<sqlx::Postgres>> {
    installed(common::postgres(connections).await?).await
}

async fn mysql(connections: u32) -> Option<Sql<sqlx::MySql>> {
    installed(common::mysql(connections).await?).await
}

async fn installed<DB: sqlx::Database>(pool: sqlx::Pool<DB>) -> Option<Sql<DB>>
where
    SqlKeyStore<DB>: Installable,
{
    let store = SqlKeyStore::new(pool);
    store.install_twice().await;
    Some(Sql(store))
}

/// `install` runs twice in every test: it must be idempotent.
#[async_trait]
trait Installable {
    async fn install_twice(&self);
}

macro_rules! installable {
    ($db:ty) => {
        #[async_trait]
        impl Installable for SqlKeyStore<$db> {
            async fn install_twice(&self) {
                self.install().await.unwrap();
                self.install().await.unwrap();
            }
        }
    };
}
installable!(sqlx::Sqlite);
installable!(sqlx::Postgres);
installable!(sqlx::MySql);

fn scope(client: &str) -> Scope {
    Scope::new(client, "payments").unwrap()
}

fn key(key: &str) -> IdempotencyKey {
    key.parse().unwrap()
}

fn fp(body: &str) -> Fingerprint {
    Fingerprint::of_request("POST", "/payments", body.as_bytes())
}

fn response(body: &[u8]) -> StoredResponse {
    StoredResponse::new(201, body.to_vec())
        .with_header("content-type", "application/json")
        .with_header("set-cookie", "a=1")
        .with_header("set-cookie", "b=2")
        .with_header("x-raw", [0x80, 0xff])
}

async fn claim<S: KeyStore>(
    store: &S,
    scope: &Scope,
    key: &IdempotencyKey,
    fp: &Fingerprint,
    lease: Duration,
) -> Claim {
    store.claim(scope, key, fp, lease).await.unwrap()
}

// ---- the cases -----------------------------------------------------------

async fn a_new_key_runs_once_and_a_retry_replays_the_identical_response<H: Harness>(h: H) {
    let store = h.store();
    let (s, k, f) = (scope("c"), key("k-1"), fp("{\"amount\":100}"));
    let Claim::New(lease) = claim(&store, &s, &k, &f, LONG).await else {
        panic!("a fresh key must be new")
    };
    let stored = response(&[0, 159, 146, 150, b'{', b'}']);
    assert_eq!(
        store.complete(&lease, &stored).await.unwrap(),
        Completion::Stored
    );
    for _ in 0..3 {
        assert_eq!(
            claim(&store, &s, &k, &f, LONG).await,
            Claim::Replay(stored.clone())
        );
    }
    assert_eq!(h.records().await, 1);
}

async fn the_same_key_with_another_payload_is_reused_and_never_runs<H: Harness>(h: H) {
    let store = h.store();
    let (s, k) = (scope("c"), key("k-2"));
    let Claim::New(lease) = claim(&store, &s, &k, &fp("amount=100"), LONG).await else {
        panic!("a fresh key must be new")
    };
    // While the first request runs, and after it completed.
    assert_eq!(
        claim(&store, &s, &k, &fp("amount=999"), LONG).await,
        Claim::KeyReused
    );
    let _ = store.complete(&lease, &response(b"ok")).await.unwrap();
    assert_eq!(
        claim(&store, &s, &k, &fp("amount=999"), LONG).await,
        Claim::KeyReused
    );
    // An expired lease is never taken over by another payload either.
    let other = key("k-2b");
    let Claim::New(_) = claim(&store, &s, &other, &fp("a"), Duration::ZERO).await else {
        panic!("a fresh key must be new")
    };
    assert_eq!(
        claim(&store, &s, &other, &fp("b"), LONG).await,
        Claim::KeyReused
    );
    assert_eq!(h.records().await, 2);
}

async fn thirty_two_concurrent_claims_of_one_key_run_the_work_exactly_once<H: Harness>(h: H) {
    let store = h.store();
    let runs = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(Barrier::new(32));
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let (store, runs, barrier) = (store.clone(), runs.clone(), barrier.clone());
            tokio::spawn(async move {
                let (s, k, f) = (scope("c"), key("k-race"), fp("same"));
                barrier.wait().await;
                let claim = store.claim(&s, &k, &f, LONG).await.unwrap();
                if let Claim::New(lease) = &claim {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let _ = store.complete(lease, &response(b"once")).await.unwrap();
                }
                claim
            })
        })
        .collect();
    let (mut new, mut others) = (0, 0);
    for task in tasks {
        match task.await.unwrap() {
            Claim::New(_) => new += 1,
            Claim::Replay(r) => {
                assert_eq!(r.body, b"once");
                others += 1
            }
            Claim::InProgress { retry_after } => {
                assert!(retry_after > Duration::ZERO && retry_after <= LONG);
                others += 1
            }
            other => panic!("a duplicate got {other:?}"),
        }
    }
    assert_eq!((new, others), (1, 31));
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(h.records().await, 1);
    assert!(matches!(
        claim(&store, &scope("c"), &key("k-race"), &fp("same"), LONG).await,
        Claim::Replay(_)
    ));
}

async fn an_expired_lease_is_taken_over_and_a_live_one_is_not<H: Harness>(h: H) {
    let store = h.store();
    let (s, k, f) = (scope("c"), key("k-lease"), fp("x"));
    let lease = Duration::from_millis(400);
    let Claim::New(first) = claim(&store, &s, &k, &f, lease).await else {
        panic!("a fresh key must be new")
    };
    match claim(&store, &s, &k, &f, lease).await {
        Claim::InProgress { retry_after } => {
            assert!(
                retry_after > Duration::ZERO && retry_after <= lease,
                "{retry_after:?}"
            )
        }
        other => panic!("a live lease must not be taken over: {other:?}"),
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let Claim::Recovered(second) = claim(&store, &s, &k, &f, LONG).await else {
        panic!("an expired lease must be taken over")
    };
    assert_ne!(first.token(), second.token());
    // The slow first run learns that its outcome is uncertain.
    assert_eq!(
        store.complete(&first, &response(b"first")).await.unwrap(),
        Completion::LeaseLost
    );
    store.release(&first).await.unwrap();
    assert!(matches!(
        claim(&store, &s, &k, &f, LONG).await,
        Claim::InProgress { .. }
    ));
    assert_eq!(
        store.complete(&second, &response(b"second")).await.unwrap(),
        Completion::Stored
    );
    assert_eq!(
        claim(&store, &s, &k, &f, LONG).await,
        Claim::Replay(response(b"second"))
    );
    assert_eq!(h.records().await, 1);
}

async fn a_lease_of_zero_expires_at_once_instead_of_never<H: Harness>(h: H) {
    let store = h.store();
    let (s, k, f) = (scope("c"), key("k-zero"), fp("x"));
    assert!(matches!(
        claim(&store, &s, &k, &f, Duration::ZERO).await,
        Claim::New(_)
    ));
    assert!(matches!(
        claim(&store, &s, &k, &f, LONG).await,
        Claim::Recovered(_)
    ));
    assert!(matches!(
        claim(&store, &s, &k, &f, LONG).await,
        Claim::InProgress { .. }
    ));
}

async fn a_failed_run_releases_the_key_and_a_retry_runs<H: Harness>(h: H) {
    let store = h.store();
    let (s, k, f) = (scope("c"), key("k-fail"), fp("x"));
    let Claim::New(lease) = claim(&store, &s, &k, &f, LONG).await else {
        panic!("a fresh key must be new")
    };
    store.release(&lease).await.unwrap();
    assert_eq!(h.records().await, 0);
    let Claim::New(retry) = claim(&store, &s, &k, &f, LONG).await else {
        panic!("a released key must run again")
    };
    // The old lease can neither complete nor release the retry's claim.
    assert_eq!(
        store.complete(&lease, &response(b"stale")).await.unwrap(),
        Completion::LeaseLost
    );
    store.release(&lease).await.unwrap();
    assert_eq!(
        store.complete(&retry, &response(b"retry")).await.unwrap(),
        Completion::Stored
    );
    assert_eq!(
        claim(&store, &s, &k, &f, LONG).await,
        Claim::Replay(response(b"retry"))
    );
}

async fn purge_removes_only_records_past_retention<H: Harness>(h: H) {
    let store = h.store();
    let s = scope("c");
    let old_done = key("old-done");
    let Claim::New(l) = claim(&store, &s, &old_done, &fp("x"), LONG).await else {
        panic!()
    };
    let _ = store.complete(&l, &response(b"old")).await.unwrap();
    // Abandoned: its lease expired at once, long before the purge.
    let Claim::New(_) = claim(&store, &s, &key("abandoned"), &fp("x"), Duration::ZERO).await else {
        panic!()
    };
    let live = key("live");
    let Claim::New(_) = claim(&store, &s, &live, &fp("x"), Duration::from_secs(3600)).await else {
        panic!()
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let fresh = key("fresh-done");
    let Claim::New(l) = claim(&store, &s, &fresh, &fp("x"), LONG).await else {
        panic!()
    };
    let _ = store.complete(&l, &response(b"fresh")).await.unwrap();

    assert_eq!(store.purge(Duration::from_secs(3600)).await.unwrap(), 0);
    assert_eq!(store.purge(Duration::from_secs(1)).await.unwrap(), 2);
    assert_eq!(store.purge(Duration::from_secs(1)).await.unwrap(), 0);
    assert_eq!(h.records().await, 2);
    assert!(matches!(
        claim(&store, &s, &old_done, &fp("x"), LONG).await,
        Claim::New(_)
    ));
    assert_eq!(
        claim(&store, &s, &fresh, &fp("x"), LONG).await,
        Claim::Replay(response(b"fresh"))
    );
    assert!(matches!(
        claim(&store, &s, &live, &fp("x"), LONG).await,
        Claim::InProgress { .. }
    ));
}

async fn two_scopes_with_the_same_key_never_see_each_others_response<H: Harness>(h: H) {
    let store = h.store();
    let (a, b, k, f) = (
        scope("tenant-a"),
        scope("tenant-b"),
        key("shared"),
        fp("same"),
    );
    let Claim::New(la) = claim(&store, &a, &k, &f, LONG).await else {
        panic!()
    };
    let _ = store.complete(&la, &response(b"for a")).await.unwrap();
    let Claim::New(lb) = claim(&store, &b, &k, &f, LONG).await else {
        panic!("another scope must not see tenant-a's record")
    };
    let _ = store.complete(&lb, &response(b"for b")).await.unwrap();
    assert_eq!(
        claim(&store, &a, &k, &f, LONG).await,
        Claim::Replay(response(b"for a"))
    );
    assert_eq!(
        claim(&store, &b, &k, &f, LONG).await,
        Claim::Replay(response(b"for b"))
    );
    // Keys are compared byte for byte, also on MySQL's case-insensitive default collation.
    assert!(matches!(
        claim(&store, &a, &key("SHARED"), &f, LONG).await,
        Claim::New(_)
    ));
    assert_eq!(h.records().await, 3);
}

async fn records_vanishing_between_claim_and_read_are_claimed_again<H: Harness>(h: H) {
    let store = h.store();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let (s, k, f) = (scope("c"), key("k-churn"), fp("x"));
                let mut ran = 0;
                for _ in 0..25 {
                    match store.claim(&s, &k, &f, LONG).await.unwrap() {
                        Claim::New(lease) => {
                            ran += 1;
                            store.release(&lease).await.unwrap();
                        }
                        Claim::InProgress { .. } => {}
                        other => panic!("a churned key got {other:?}"),
                    }
                }
                ran
            })
        })
        .collect();
    let mut ran = 0;
    for task in tasks {
        ran += task.await.unwrap();
    }
    assert!(ran >= 1);
    assert_eq!(h.records().await, 0);
}

macro_rules! suite {
    ($backend:ident: $($case:ident($connections:expr)),* $(,)?) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    if let Some(harness) = super::$backend($connections).await {
                        super::$case(harness).await;
                    }
                }
            )*
        }
    };
}

macro_rules! conformance {
    ($($backend:ident),*) => {
        $(
            suite!($backend:
                a_new_key_runs_once_and_a_retry_replays_the_identical_response(2),
                the_same_key_with_another_payload_is_reused_and_never_runs(2),
                thirty_two_concurrent_claims_of_one_key_run_the_work_exactly_once(32),
                an_expired_lease_is_taken_over_and_a_live_one_is_not(2),
                a_lease_of_zero_expires_at_once_instead_of_never(2),
                a_failed_run_releases_the_key_and_a_retry_runs(2),
                purge_removes_only_records_past_retention(2),
                two_scopes_with_the_same_key_never_see_each_others_response(2),
                records_vanishing_between_claim_and_read_are_claimed_again(8),
            );
        )*
    };
}

conformance!(memory, sqlite, postgres, mysql);

// ---- the transactional mode ------------------------------------------------

/// A work function of the transactional mode that inserts one row into
/// `effects` and counts its runs.
macro_rules! transactional {
    ($backend:ident, $db:ty) => {
        mod $backend {
            use super::*;
            use idem_sqlx::HandlerError;

            type Tx = sqlx::Transaction<'static, $db>;

            #[derive(Debug)]
            struct Declined;

            async fn setup(connections: u32) -> Option<SqlKeyStore<$db>> {
                let store = super::$backend(connections).await?.0;
                sqlx::query("CREATE TABLE effects (n INTEGER NOT NULL)")
                    .execute(store.pool())
                    .await
                    .unwrap();
                Some(store)
            }

            async fn count(store: &SqlKeyStore<$db>, table: &str) -> i64 {
                sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
                    .fetch_one(store.pool())
                    .await
                    .unwrap()
            }

            async fn run(
                store: &SqlKeyStore<$db>,
                body: &str,
                runs: Arc<AtomicUsize>,
                fail: bool,
            ) -> Result<Once, HandlerError<Declined>> {
                store
                    .run_once(&scope("c"), &key("tx-1"), &fp(body), move |tx: &mut Tx| {
                        let runs = runs.clone();
                        Box::pin(async move {
                            runs.fetch_add(1, Ordering::SeqCst);
                            sqlx::query("INSERT INTO effects (n) VALUES (1)")
                                .execute(&mut **tx)
                                .await
                                .unwrap();
                            if fail {
                                return Err(Declined);
                            }
                            Ok(response(b"committed"))
                        })
                    })
                    .await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn transactional_work_runs_exactly_once_under_32_racing_tasks() {
                let Some(store) = setup(33).await else { return };
                let runs = Arc::new(AtomicUsize::new(0));
                let barrier = Arc::new(Barrier::new(32));
                let tasks: Vec<_> = (0..32)
                    .map(|_| {
                        let (store, runs, barrier) = (store.clone(), runs.clone(), barrier.clone());
                        tokio::spawn(async move {
                            barrier.wait().await;
                            run(&store, "same", runs, false).await.unwrap()
                        })
                    })
                    .collect();
                let (mut ran, mut replayed) = (0, 0);
                for task in tasks {
                    match task.await.unwrap() {
                        Once::Ran(r) => {
                            assert_eq!(r, response(b"committed"));
                            ran += 1
                        }
                        Once::Replayed(r) => {
                            assert_eq!(r, response(b"committed"));
                            replayed += 1
                        }
                    }
                }
                assert_eq!((ran, replayed), (1, 31));
                assert_eq!(runs.load(Ordering::SeqCst), 1);
                assert_eq!(count(&store, "effects").await, 1);
                assert_eq!(count(&store, "idem_keys").await, 1);
            }

            #[tokio::test]
            async fn a_failed_transaction_leaves_neither_key_nor_work_and_a_retry_runs() {
                let Some(store) = setup(2).await else { return };
                let runs = Arc::new(AtomicUsize::new(0));
                let failed = run(&store, "x", runs.clone(), true).await;
                assert!(matches!(failed, Err(HandlerError::Handler(Declined))));
                assert_eq!(count(&store, "effects").await, 0);
                assert_eq!(count(&store, "idem_keys").await, 0);
                let retried = run(&store, "x", runs.clone(), false).await.unwrap();
                assert_eq!(retried, Once::Ran(response(b"committed")));
                assert_eq!(count(&store, "effects").await, 1);
                assert_eq!(runs.load(Ordering::SeqCst), 2);
            }

            #[tokio::test]
            async fn when_the_response_cannot_be_stored_the_work_rolls_back_with_it() {
                let Some(store) = setup(2).await else { return };
                let sabotaged = store
                    .run_once(&scope("c"), &key("tx-2"), &fp("x"), |tx: &mut Tx| {
                        Box::pin(async move {
                            sqlx::query("INSERT INTO effects (n) VALUES (1)")
                                .execute(&mut **tx)
                                .await
                                .unwrap();
                            // The claim vanishes before the response is stored.
                            sqlx::query("DELETE FROM idem_keys")
                                .execute(&mut **tx)
                                .await
                                .unwrap();
                            Ok::<_, Declined>(response(b"lost"))
                        })
                    })
                    .await;
                assert!(
                    matches!(
                        sabotaged,
                        Err(HandlerError::Idem(idem_sqlx::Error::Core(
                            idem::Error::LeaseLost
                        )))
                    ),
                    "{sabotaged:?}"
                );
                assert_eq!(count(&store, "effects").await, 0);
                assert_eq!(count(&store, "idem_keys").await, 0);
            }

            #[tokio::test]
            async fn a_transactional_key_reused_with_another_payload_is_rejected_without_running() {
                let Some(store) = setup(2).await else { return };
                let runs = Arc::new(AtomicUsize::new(0));
                let _ = run(&store, "first", runs.clone(), false).await.unwrap();
                let reused = run(&store, "second", runs.clone(), false).await;
                assert!(
                    matches!(
                        reused,
                        Err(HandlerError::Idem(idem_sqlx::Error::Core(
                            idem::Error::KeyReused
                        )))
                    ),
                    "{reused:?}"
                );
                assert_eq!(runs.load(Ordering::SeqCst), 1);
                assert_eq!(count(&store, "effects").await, 1);
            }

            #[tokio::test]
            async fn a_transactional_call_does_not_run_while_a_live_lease_holds_the_key() {
                let Some(store) = setup(2).await else { return };
                let Claim::New(lease) =
                    claim(&store, &scope("c"), &key("tx-1"), &fp("x"), LONG).await
                else {
                    panic!("a fresh key must be new")
                };
                let runs = Arc::new(AtomicUsize::new(0));
                let busy = run(&store, "x", runs.clone(), false).await;
                assert!(
                    matches!(
                        busy,
                        Err(HandlerError::Idem(idem_sqlx::Error::Core(
                            idem::Error::InProgress { .. }
                        )))
                    ),
                    "{busy:?}"
                );
                assert_eq!(runs.load(Ordering::SeqCst), 0);
                // Once the leased run completes, the transactional call replays it.
                let _ = store.complete(&lease, &response(b"leased")).await.unwrap();
                let replay = run(&store, "x", runs.clone(), false).await.unwrap();
                assert_eq!(replay, Once::Replayed(response(b"leased")));
            }
        }
    };
}

mod transactional {
    use super::*;

    transactional!(sqlite, sqlx::Sqlite);
    transactional!(postgres, sqlx::Postgres);
    transactional!(mysql, sqlx::MySql);
}

// ---- the database's clock ----------------------------------------------------

/// Leases and retention are computed by the database in UTC: moving the
/// session's time zone by a day between a claim and a retry changes
/// nothing. (A store comparing local times would see the lease as expired
/// a day ago, or as living a day longer.)
macro_rules! clock {
    ($test:ident, $pool:expr, $zone_a:literal, $zone_b:literal) => {
        #[tokio::test]
        async fn $test() {
            // One connection, so the session settings apply to the store.
            let Some(pool) = $pool else { return };
            let store = SqlKeyStore::new(pool.clone());
            store.install().await.unwrap();
            let (s, k, f) = (scope("c"), key("tz"), fp("x"));
            let lease = Duration::from_secs(1800);
            sqlx::query($zone_a).execute(&pool).await.unwrap();
            let Claim::New(l) = claim(&store, &s, &k, &f, lease).await else {
                panic!("a fresh key must be new")
            };
            sqlx::query($zone_b).execute(&pool).await.unwrap();
            match claim(&store, &s, &k, &f, lease).await {
                Claim::InProgress { retry_after } => assert!(
                    retry_after > lease - Duration::from_secs(60) && retry_after <= lease,
                    "{retry_after:?}"
                ),
                other => panic!("the lease must still be live: {other:?}"),
            }
            let _ = store.complete(&l, &response(b"tz")).await.unwrap();
            sqlx::query($zone_a).execute(&pool).await.unwrap();
            assert_eq!(store.purge(Duration::from_secs(3600)).await.unwrap(), 0);
            assert_eq!(
                claim(&store, &s, &k, &f, lease).await,
                Claim::Replay(response(b"tz"))
            );
        }
    };
}

clock!(
    mysql_leases_ignore_the_session_time_zone,
    common::mysql(1).await,
    "SET time_zone = '+12:00'",
    "SET time_zone = '-12:00'"
);
clock!(
    postgres_leases_ignore_the_session_time_zone,
    common::postgres(1).await,
    "SET TIME ZONE '+12'",
    "SET TIME ZONE '-12'"
);

/// A serialization failure raised by the work's own statement (here on its
/// first run) rolls the attempt back and runs the transaction again: the
/// key, the work's write and the response commit once, and the work's
/// error never reaches the caller.
#[tokio::test]
async fn a_conflict_in_transactional_work_is_retried_on_postgres() {
    let Some(pool) = common::postgres(2).await else {
        return;
    };
    let store = SqlKeyStore::new(pool.clone());
    store.install().await.unwrap();
    sqlx::query("CREATE TABLE effects (n INT NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&runs);
    let once = store
        .run_once::<sqlx::Error, _>(&scope("c"), &key("conflict"), &fp("x"), move |tx| {
            let run = counter.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                sqlx::query("INSERT INTO effects (n) VALUES (1)")
                    .execute(&mut **tx)
                    .await?;
                if run == 0 {
                    sqlx::query(
                        "DO $$ BEGIN RAISE EXCEPTION 'injected' USING ERRCODE = '40001'; END $$",
                    )
                    .execute(&mut **tx)
                    .await?;
                }
                Ok(StoredResponse::new(201, b"done".to_vec()))
            })
        })
        .await
        .unwrap();
    assert!(matches!(once, Once::Ran(_)));
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    let effects: i64 = sqlx::query_scalar("SELECT count(*) FROM effects")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(effects, 1);
}

// ---- statements per claim ----------------------------------------------------

/// The statements a claim sends, by first word, as sqlx logs them: a new
/// key, a replay, a live lease and a reused key. PostgreSQL answers each
/// in one statement (the upsert reads the record it collided with); MySQL
/// and SQLite read after the insert (see the module docs of
/// `idem_sqlx::keys` for why).
macro_rules! statements {
    ($test:ident, $backend:ident, new: $new:expr, replay: $replay:expr) => {
        #[tokio::test]
        async fn $test() {
            let Some(Sql(store)) = $backend(1).await else {
                return;
            };
            let recorder = transitions_support::Recorder::default();
            let (s, f) = (scope("c"), fp("x"));
            let Claim::New(lease) = recorder
                .record(store.claim(&s, &key("counted"), &f, LONG))
                .await
                .unwrap()
            else {
                panic!("a fresh key must be new")
            };
            assert_eq!(recorder.take(), $new, "a new key");
            let running = recorder
                .record(store.claim(&s, &key("counted"), &f, LONG))
                .await
                .unwrap();
            assert!(matches!(running, Claim::InProgress { .. }), "{running:?}");
            assert_eq!(recorder.take(), $replay, "a live lease");
            let _ = store.complete(&lease, &response(b"counted")).await.unwrap();
            for _ in 0..3 {
                let replay = recorder
                    .record(store.claim(&s, &key("counted"), &f, LONG))
                    .await
                    .unwrap();
                assert_eq!(replay, Claim::Replay(response(b"counted")));
                assert_eq!(recorder.take(), $replay, "a replay");
            }
            let reused = recorder
                .record(store.claim(&s, &key("counted"), &fp("y"), LONG))
                .await
                .unwrap();
            assert_eq!(reused, Claim::KeyReused);
            assert_eq!(recorder.take(), $replay, "a reused key");
            assert_eq!(recorder.retries(), 0);
        }
    };
}

statements!(
    a_replay_is_one_statement_on_postgres,
    postgres,
    new: ["WITH"],
    replay: ["WITH"]
);
statements!(
    a_replay_is_an_insert_and_a_read_on_mysql,
    mysql,
    new: ["INSERT"],
    replay: ["INSERT", "SELECT"]
);
statements!(
    a_replay_is_an_insert_and_a_read_on_sqlite,
    sqlite,
    new: ["INSERT"],
    replay: ["INSERT", "SELECT"]
);

/// On PostgreSQL a claim that waited on the key's row for a concurrent
/// inserter does not find the committed record in its statement's
/// snapshot: it reads it with a second statement and replays it (never
/// "new", never a second run).
#[tokio::test]
async fn a_claim_that_waited_for_the_inserter_reads_the_committed_response_on_postgres() {
    use transitions_support::Locking;
    let Some(Sql(installed)) = postgres(1).await else {
        return;
    };
    // Sessions named for the schema, so `until_waiting` finds the claim.
    let pool = sqlx::Postgres::pool_with_isolation(installed.pool(), 3, "READ COMMITTED").await;
    let store = SqlKeyStore::new(pool.clone());
    // Two open sessions, so the recorded claim does not log a connect.
    let warm = (pool.acquire().await.unwrap(), pool.acquire().await.unwrap());
    drop(warm);
    let mut inserter = pool.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO idem_keys (scope, idem_key, fingerprint, state, token, attempt, status, \
         headers, body, created_at, completed_at) \
         VALUES ($1, 'waited', $2, 'done', 1, 1, 201, '[]', 'committed', now(), now())",
    )
    .bind(scope("c").as_str())
    .bind(fp("x").to_hex())
    .execute(&mut *inserter)
    .await
    .unwrap();
    let recorder = transitions_support::Recorder::default();
    let claim = tokio::spawn({
        let (store, recorder) = (store.clone(), recorder.clone());
        async move {
            recorder
                .record(store.claim(&scope("c"), &key("waited"), &fp("x"), LONG))
                .await
                .unwrap()
        }
    });
    transitions_support::until_waiting(&pool, 1).await;
    inserter.commit().await.unwrap();
    assert_eq!(
        claim.await.unwrap(),
        Claim::Replay(StoredResponse::new(201, b"committed".to_vec()))
    );
    assert_eq!(recorder.take(), ["WITH", "SELECT"]);
}
