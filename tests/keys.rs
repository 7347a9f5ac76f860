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
use idem_sqlx::keys::{KeyBackend, Once, SqlKeyStore};
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

/// Identifiers compare byte for byte: scopes and keys that differ only in
/// letter case, trailing spaces or accents (precomposed or with a
/// combining mark) never share a record. On MySQL's text collations each
/// of these pairs is one value (PAD SPACE even in `utf8mb4_bin`, case and
/// accents in `_ci`/`_ai`): issue 10's input was `payments ` replaying the
/// response stored for `payments`.
async fn identifiers_differing_only_in_case_trailing_space_or_accents_never_share_a_record<
    H: Harness,
>(
    h: H,
) {
    let store = h.store();
    let f = fp("same");
    // (client, operation, key); each differs from another in one way only.
    let records = [
        ("tenant-1", "payments", "order-42"),
        ("tenant-1", "payments ", "order-42"),
        ("tenant-1", "payments  ", "order-42"),
        ("tenant-1", "PAYMENTS", "order-42"),
        ("Tenant-1", "payments", "order-42"),
        ("tenant-1", "payments", "ORDER-42"),
        ("tenant-1", "payments", "Order-42"),
        ("tenant-1", "paymënts", "order-42"),
        ("tenant-1", "caf\u{e9}", "order-42"),
        ("tenant-1", "cafe\u{301}", "order-42"),
        ("tenant-1", "cafe", "order-42"),
        ("tenant-\u{e9}", "payments", "order-42"),
        ("tenant-e", "payments", "order-42"),
    ];
    for (n, (client, operation, k)) in records.iter().enumerate() {
        let s = Scope::new(*client, *operation).unwrap();
        let Claim::New(lease) = claim(&store, &s, &key(k), &f, LONG).await else {
            panic!("{client:?}/{operation:?}/{k:?} must be a record of its own")
        };
        let body = n.to_string();
        let stored = store.complete(&lease, &response(body.as_bytes())).await;
        assert_eq!(stored.unwrap(), Completion::Stored);
    }
    for (n, (client, operation, k)) in records.iter().enumerate() {
        let s = Scope::new(*client, *operation).unwrap();
        assert_eq!(
            claim(&store, &s, &key(k), &f, LONG).await,
            Claim::Replay(response(n.to_string().as_bytes())),
            "{client:?}/{operation:?}/{k:?} replays its own response"
        );
    }
    assert_eq!(h.records().await, records.len() as i64);
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
                identifiers_differing_only_in_case_trailing_space_or_accents_never_share_a_record(2),
            );
        )*
    };
}

conformance!(memory, sqlite, postgres, mysql);

// ---- purging in chunks -------------------------------------------------------

/// A SQL backend of the key store, with its clock in `idem_keys`' time type.
trait KeysDb: transitions_support::Db + KeyBackend {
    /// `seconds` before the database's now (after it when negative).
    fn seconds_ago(seconds: i64) -> String;
}

impl KeysDb for sqlx::Sqlite {
    fn seconds_ago(seconds: i64) -> String {
        format!("((julianday('now') - 2440587.5) * 86400.0) - ({seconds})")
    }
}

impl KeysDb for sqlx::Postgres {
    fn seconds_ago(seconds: i64) -> String {
        format!("now() - INTERVAL '{seconds} seconds'")
    }
}

impl KeysDb for sqlx::MySql {
    fn seconds_ago(seconds: i64) -> String {
        format!("UTC_TIMESTAMP(6) - INTERVAL {seconds} SECOND")
    }
}

/// Inserts `n` records `<prefix><i>` of scope `c`/`payments` and the
/// fingerprint of `x`, in one statement (the numbers come from a cross
/// join of a `digits` table, so up to 100,000): completed `seconds` ago,
/// or running with a lease that ended `seconds` ago.
async fn insert_records<DB: KeysDb>(
    pool: &sqlx::Pool<DB>,
    prefix: &str,
    n: u32,
    running: bool,
    seconds: i64,
) {
    let at = DB::seconds_ago(seconds);
    let (state, completed, lease) = if running {
        ("running", "NULL".to_owned(), at.clone())
    } else {
        ("done", at.clone(), "NULL".to_owned())
    };
    let (s, f) = (scope("c").as_str().to_owned(), fp("x").to_hex());
    let sql = format!(
        "INSERT INTO idem_keys (scope, idem_key, fingerprint, state, token, attempt, status, \
         headers, body, created_at, completed_at, lease_until) \
         SELECT '{s}', CONCAT('{prefix}', n), '{f}', '{state}', n, 1, 201, '[]', NULL, {at}, \
         {completed}, {lease} \
         FROM (SELECT a.d + 10 * b.d + 100 * c.d + 1000 * e.d + 10000 * g.d AS n \
               FROM digits a, digits b, digits c, digits e, digits g) numbers \
         WHERE n < {n}"
    );
    DB::exec(pool, &sql).await;
}

/// Statements of `recorded` that were `DELETE`s.
/// The purge statements among `recorded`: `DELETE`s, which PostgreSQL's
/// wrap in a `WITH` that answers with their tag and count.
fn deletes(recorded: Vec<String>) -> usize {
    recorded
        .iter()
        .filter(|s| matches!(s.as_str(), "DELETE" | "WITH"))
        .count()
}

/// A backlog of 25,000 completed and 1,500 abandoned records past the
/// retention goes in chunks of 1,000 (26 + 2 statements: the last of each
/// kind comes back short), each committed on its own; the 600 records
/// inside the retention (completed half an hour ago, running on a live
/// lease, running on a lease that ended half an hour ago) all survive.
async fn a_backlog_is_purged_in_chunks_and_records_inside_the_retention_survive<DB: KeysDb>(
    h: Sql<DB>,
) where
    Sql<DB>: Harness,
{
    let pool = h.0.pool().clone();
    DB::exec(&pool, "CREATE TABLE digits (d INTEGER NOT NULL)").await;
    DB::exec(
        &pool,
        "INSERT INTO digits (d) VALUES (0), (1), (2), (3), (4), (5), (6), (7), (8), (9)",
    )
    .await;
    insert_records(&pool, "old-done-", 25_000, false, 7_200).await;
    insert_records(&pool, "old-abandoned-", 1_500, true, 7_200).await;
    insert_records(&pool, "fresh-done-", 300, false, 1_800).await;
    insert_records(&pool, "live-", 200, true, -3_600).await;
    insert_records(&pool, "recently-abandoned-", 100, true, 1_800).await;
    assert_eq!(h.records().await, 27_100);

    let store = h.0.clone().with_purge_chunk(1_000.try_into().unwrap());
    let recorder = transitions_support::Recorder::default();
    let retention = Duration::from_secs(3_600);
    let purged = recorder.record(store.purge(retention)).await.unwrap();
    assert_eq!(purged, 26_500);
    assert_eq!(deletes(recorder.take()), 26 + 2, "one statement per chunk");
    assert_eq!(h.records().await, 600);
    for (prefix, left) in [
        ("fresh-done-", 300),
        ("live-", 200),
        ("recently-abandoned-", 100),
    ] {
        let sql = format!("SELECT COUNT(*) FROM idem_keys WHERE idem_key LIKE '{prefix}%'");
        assert_eq!(DB::count(&pool, &sql).await, left, "{prefix}");
    }
    assert_eq!(recorder.record(store.purge(retention)).await.unwrap(), 0);
    assert_eq!(deletes(recorder.take()), 2);
    assert_eq!(
        claim(&store, &scope("c"), &key("fresh-done-7"), &fp("x"), LONG).await,
        Claim::Replay(StoredResponse::new(201, Vec::new())),
        "a record inside the retention still replays"
    );
}

/// A purge that meets a record while another transaction takes it over
/// (its lease renewed, not yet committed) never deletes it: PostgreSQL's
/// chunk skips the locked row and re-checks the condition on the row's
/// new version; MySQL's waits and reads the committed version; SQLite's
/// waits for the writer. (A chunk that re-checked only `key IN (keys it
/// picked)` would delete a live lease: its holder's response would be
/// lost, and a retry would run the work again.)
async fn a_purge_never_deletes_a_record_taken_over_while_it_ran<DB: KeysDb>(h: Sql<DB>)
where
    Sql<DB>: Harness,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
{
    let pool = h.0.pool().clone();
    DB::exec(&pool, "CREATE TABLE digits (d INTEGER NOT NULL)").await;
    DB::exec(&pool, "INSERT INTO digits (d) VALUES (0), (1)").await;
    insert_records(&pool, "taken-", 1, true, 7_200).await;
    insert_records(&pool, "old-", 1, true, 7_200).await;
    let mut takeover = pool.begin().await.unwrap();
    let renew = format!(
        "UPDATE idem_keys SET lease_until = {}, attempt = 2 WHERE idem_key = 'taken-0'",
        DB::seconds_ago(-3_600)
    );
    sqlx::query(&renew).execute(&mut *takeover).await.unwrap();
    let store = h.0.clone();
    let purge = tokio::spawn(async move { store.purge(Duration::from_secs(3_600)).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    takeover.commit().await.unwrap();
    assert_eq!(
        purge.await.unwrap().unwrap(),
        1,
        "only the abandoned record"
    );
    let left = "SELECT COUNT(*) FROM idem_keys WHERE idem_key = 'taken-0'";
    assert_eq!(
        DB::count(&pool, left).await,
        1,
        "the renewed lease survives"
    );
    assert_eq!(h.records().await, 1);
}

/// The SQL-only cases, on each database.
macro_rules! sql_suite {
    ($($backend:ident),*) => {
        $(
            suite!($backend:
                a_backlog_is_purged_in_chunks_and_records_inside_the_retention_survive(2),
                a_purge_never_deletes_a_record_taken_over_while_it_ran(3),
            );
        )*
    };
}

mod chunked {
    use super::*;

    sql_suite!(sqlite, postgres, mysql);
}

// ---- the transactional mode ------------------------------------------------

/// A work function of the transactional mode that inserts one row into
/// `effects` and counts its runs.
macro_rules! transactional {
    ($backend:ident, $db:ty) => {
        mod $backend {
            use super::*;
            use idem_sqlx::HandlerError;

            type Conn = <$db as sqlx::Database>::Connection;

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
                    .run_once(
                        &scope("c"),
                        &key("tx-1"),
                        &fp(body),
                        move |tx: &mut Conn| {
                            let runs = runs.clone();
                            Box::pin(async move {
                                runs.fetch_add(1, Ordering::SeqCst);
                                sqlx::query("INSERT INTO effects (n) VALUES (1)")
                                    .execute(&mut *tx)
                                    .await
                                    .unwrap();
                                if fail {
                                    return Err(Declined);
                                }
                                Ok(response(b"committed"))
                            })
                        },
                    )
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
                    .run_once(&scope("c"), &key("tx-2"), &fp("x"), |tx: &mut Conn| {
                        Box::pin(async move {
                            sqlx::query("INSERT INTO effects (n) VALUES (1)")
                                .execute(&mut *tx)
                                .await
                                .unwrap();
                            // The claim vanishes before the response is stored.
                            sqlx::query("DELETE FROM idem_keys")
                                .execute(&mut *tx)
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
                    .execute(&mut *tx)
                    .await?;
                if run == 0 {
                    sqlx::query(
                        "DO $$ BEGIN RAISE EXCEPTION 'injected' USING ERRCODE = '40001'; END $$",
                    )
                    .execute(&mut *tx)
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

// ---- tables of earlier versions ------------------------------------------------

/// `idem_keys` as versions before byte-exact identifiers created it on
/// MySQL: text columns with binary, PAD SPACE collations.
fn mysql_text_identifiers() -> String {
    idem_sqlx::keys::schema(idem::Dialect::MySql)
        .replace(
            "VARBINARY(512)",
            "VARCHAR(512) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin",
        )
        .replace(
            "VARBINARY(255)",
            "VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin",
        )
        .replace(
            "VARBINARY(64)",
            "VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin",
        )
}

/// On a table of an earlier version (issue 10's input replays another
/// scope's response there), `install` and `idem_sqlx::install` refuse to
/// go on and name the `ALTER TABLE` to run; once it ran, install passes,
/// the old record is kept and replays, and the padded scope is a record
/// of its own.
#[tokio::test]
async fn install_refuses_text_identifier_columns_on_mysql_and_names_the_migration() {
    let Some(pool) = common::mysql(2).await else {
        return;
    };
    let old = mysql_text_identifiers();
    assert!(!old.contains("VARBINARY"), "{old}");
    sqlx::raw_sql(&old).execute(&pool).await.unwrap();
    let store = SqlKeyStore::new(pool.clone());
    let (k, f) = (key("order-42"), fp("same"));
    let (payments, padded) = (
        Scope::new("tenant-1", "payments").unwrap(),
        Scope::new("tenant-1", "payments ").unwrap(),
    );
    let Claim::New(lease) = claim(&store, &payments, &k, &f, LONG).await else {
        panic!("a fresh key must be new")
    };
    let _ = store.complete(&lease, &response(b"first")).await.unwrap();
    assert_eq!(
        claim(&store, &padded, &k, &f, LONG).await,
        Claim::Replay(response(b"first")),
        "the premise: PAD SPACE merges the two scopes"
    );

    let refused = store.install().await.unwrap_err();
    let idem_sqlx::Error::OutdatedSchema {
        table,
        columns,
        migration,
    } = &refused
    else {
        panic!("{refused:?}")
    };
    assert_eq!(*table, "idem_keys");
    for column in ["`scope`", "`idem_key`", "`fingerprint`"] {
        assert!(columns.contains(column), "{columns}");
    }
    assert_eq!(
        migration,
        "ALTER TABLE idem_keys MODIFY scope VARBINARY(512) NOT NULL, \
         MODIFY idem_key VARBINARY(255) NOT NULL, MODIFY fingerprint VARBINARY(64) NOT NULL"
    );
    assert!(
        refused.to_string().contains(migration.as_str()),
        "{refused}"
    );
    assert!(matches!(
        idem_sqlx::install(&pool).await,
        Err(idem_sqlx::Error::OutdatedSchema { .. })
    ));

    sqlx::query(migration).execute(&pool).await.unwrap();
    store.install().await.unwrap();
    idem_sqlx::install(&pool).await.unwrap();
    assert_eq!(
        claim(&store, &payments, &k, &f, LONG).await,
        Claim::Replay(response(b"first"))
    );
    assert!(matches!(
        claim(&store, &padded, &k, &f, LONG).await,
        Claim::New(_)
    ));
}

/// PostgreSQL compares bytes whatever the database's default collation:
/// every collation a database can have by default is deterministic. Here
/// the default is ICU's root locale at secondary strength, which *sorts*
/// `a` and `A` together; the conformance case still sees every
/// identifier as its own record.
#[tokio::test]
async fn postgres_compares_identifiers_byte_for_byte_under_a_case_insensitive_sort_order() {
    use futures::FutureExt;
    use sqlx::{Connection, Executor};

    let Ok(url) = std::env::var("IDEM_TEST_POSTGRES") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "IDEM_TEST_POSTGRES is unset in CI"
        );
        return;
    };
    let options: sqlx::postgres::PgConnectOptions = url.parse().unwrap();
    let name = format!("idem_t_icu_{}", std::process::id());
    let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
    let mut admin = sqlx::PgConnection::connect_with(&options).await.unwrap();
    admin.execute(drop.as_str()).await.unwrap();
    admin
        .execute(
            format!(
                "CREATE DATABASE {name} TEMPLATE template0 LOCALE_PROVIDER icu \
                 ICU_LOCALE 'und-u-ks-level2' LOCALE 'C.UTF-8'"
            )
            .as_str(),
        )
        .await
        .unwrap();
    let run = async {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect_with(options.clone().database(&name))
            .await
            .unwrap();
        let sorts: bool = sqlx::query_scalar("SELECT 'a' < 'B' AND 'A' < 'b' AND 'a' <> 'A'")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert!(sorts, "the premise: case-insensitive order, exact equality");
        let harness = installed(pool.clone()).await.unwrap();
        identifiers_differing_only_in_case_trailing_space_or_accents_never_share_a_record(harness)
            .await;
        pool.close().await;
    };
    let outcome = std::panic::AssertUnwindSafe(run).catch_unwind().await;
    admin.execute(drop.as_str()).await.unwrap();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}
