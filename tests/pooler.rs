//! idem behind a connection pooler: a private PgBouncer 1.18 in
//! transaction and session mode in front of the machine's PostgreSQL,
//! with idem's statements sent with the simple query protocol
//! (`idem_sqlx::postgres::set_protocol(Protocol::Simple)`, which this test
//! binary, its own process, sets for every test).
//!
//! Through a pooler in transaction mode: the payment storm, racing
//! claims of one idempotency key, duplicate deliveries of one event, and a
//! round trip of every kind of value idem binds (as a literal) and reads
//! (as text) — quotes, backslashes, non-ASCII text, every byte value,
//! the extreme integers, UUIDs, NULL states. The prepared mode behind the
//! same pooler is `pooler_prepared.rs`.

mod common;
mod pooler_support;
mod transitions_support;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;
use idem::prelude::*;
use idem_core::keys::{Claim, Completion, Fingerprint, KeyStore, Scope, StoredResponse};
use idem_sqlx::inbox::{Delivery, EventId, Inbox};
use idem_sqlx::keys::{Once, SqlKeyStore};
use idem_sqlx::postgres::{set_protocol, Protocol};
use idem_sqlx::{Error, HandlerError};
use pooler_support::{CountDelivery, Invoice, PgBouncer, PoolMode, RecordPayment};
use sqlx::{PgConnection, PgPool, Postgres};
use transitions_support::{Account, Job};

const INVOICES: i64 = 160;

/// A private PgBouncer in `mode` with `servers` server connections, and
/// idem set to the simple protocol.
async fn bouncer(mode: PoolMode, servers: u32) -> Option<PgBouncer> {
    set_protocol(Protocol::Simple);
    PgBouncer::start(mode, servers).await
}

/// Runs `sql` (one or more statements) on a direct connection.
async fn direct(bouncer: &PgBouncer, sql: &str) {
    let direct = bouncer.direct_pool(1).await;
    sqlx::raw_sql(sql).execute(&direct).await.unwrap();
    direct.close().await;
}

/// Even invoices are issued, odd ones drafts.
async fn seed(bouncer: &PgBouncer) {
    direct(
        bouncer,
        &format!(
            "CREATE TABLE invoices (id BIGINT PRIMARY KEY, status TEXT NOT NULL);
             CREATE TABLE payments (invoice_id BIGINT NOT NULL);
             INSERT INTO invoices (id, status)
             SELECT i, CASE WHEN i % 2 = 0 THEN 'issued' ELSE 'draft' END
             FROM generate_series(1, {INVOICES}) AS i;"
        ),
    )
    .await;
}

/// 8 tasks x 20 `pay().apply_with` through the pooler: every outcome is
/// the one the transition table gives that row, and the database agrees
/// with the outcomes (one payment per paid invoice, no draft paid).
async fn payments_through_the_pooler_follow_the_transition_table(mode: PoolMode) {
    // Session mode pins a server connection per client: give it one each.
    let servers = if mode == PoolMode::Session { 8 } else { 4 };
    let Some(bouncer) = bouncer(mode, servers).await else {
        return;
    };
    seed(&bouncer).await;
    let pool = Arc::new(bouncer.pool(8).await);
    let mut tasks = Vec::new();
    for task in 0..8i64 {
        let pool = Arc::clone(&pool);
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            for i in 0..20i64 {
                let id = task * 20 + i + 1;
                let outcome = Invoice::pay().apply_with(&pool, id, &RecordPayment).await;
                seen.push((id, outcome.map_err(|e| e.to_string())));
            }
            seen
        }));
    }
    let mut errors = Vec::new();
    for task in tasks {
        for (id, outcome) in task.await.unwrap() {
            match outcome {
                Ok(outcome) if id % 2 == 0 => assert_eq!(
                    outcome,
                    Outcome::Applied {
                        from: Invoice::Issued,
                        to: Invoice::Paid
                    },
                    "invoice {id}"
                ),
                Ok(outcome) => assert_eq!(
                    outcome,
                    Outcome::Rejected {
                        current: Invoice::Draft
                    },
                    "invoice {id}"
                ),
                Err(error) => errors.push(format!("invoice {id}: {error}")),
            }
        }
    }
    assert!(errors.is_empty(), "errors through the pooler: {errors:#?}");
    let direct = bouncer.direct_pool(1).await;
    let (paid, drafts, payments, bad): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM invoices WHERE status = 'paid'),
                (SELECT count(*) FROM invoices WHERE status = 'draft'),
                (SELECT count(*) FROM payments),
                (SELECT count(*) FROM payments p JOIN invoices i ON i.id = p.invoice_id
                 WHERE i.status <> 'paid' OR i.id % 2 = 1)",
    )
    .fetch_one(&direct)
    .await
    .unwrap();
    assert_eq!(
        (paid, drafts, payments, bad),
        (INVOICES / 2, INVOICES / 2, INVOICES / 2, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn payments_behind_pgbouncer_in_transaction_mode_follow_the_transition_table() {
    payments_through_the_pooler_follow_the_transition_table(PoolMode::Transaction).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn payments_behind_pgbouncer_in_session_mode_follow_the_transition_table() {
    payments_through_the_pooler_follow_the_transition_table(PoolMode::Session).await;
}

/// A response with every byte value in its body and headers that need
/// escaping as literals.
fn response() -> StoredResponse {
    StoredResponse::new(201, (0..=255u8).collect::<Vec<u8>>())
        .with_header("content-type", "application/json")
        .with_header("x-quoted", "it's \\ \"quoted\" \u{e9}\u{1f600}\ttab")
        .with_header("x-bytes", [0u8, 0xff, b'\'', b'\\'])
}

/// `n` tasks each running `f(i)` at once; their results in order.
async fn at_once<T, F, Fut>(n: usize, f: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    let tasks: Vec<_> = (0..n).map(|i| tokio::spawn(f(i))).collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }
    results
}

/// Through a pooler in transaction mode: 16 racing claims of one key get
/// one `New` and 15 `InProgress`; once it completes, 16 racing claims all
/// replay its response byte for byte; another fingerprint is `KeyReused`;
/// a released key is new again; an expired lease is recovered; purge
/// counts what it deletes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_claims_through_pgbouncer_in_transaction_mode_get_one_new_and_replays() {
    let Some(bouncer) = bouncer(PoolMode::Transaction, 4).await else {
        return;
    };
    let pool = bouncer.pool(16).await;
    let store = SqlKeyStore::new(pool.clone());
    store.install().await.unwrap();
    let scope = Scope::new("tenant-\u{e9}'\\", "payments").unwrap();
    let key: idem_core::keys::IdempotencyKey = "order-'42\\".parse().unwrap();
    let fingerprint = Fingerprint::of_request("POST", "/payments", b"amount=100");
    let lease = Duration::from_secs(30);

    let claims = at_once(16, |_| {
        let (store, scope, key) = (store.clone(), scope.clone(), key.clone());
        async move { store.claim(&scope, &key, &fingerprint, lease).await }
    })
    .await;
    let mut new = claims
        .into_iter()
        .map(Result::unwrap)
        .filter_map(|claim| match claim {
            Claim::New(lease) => Some(lease),
            Claim::InProgress { .. } => None,
            other => panic!("a racing claim of a fresh key: {other:?}"),
        })
        .collect::<Vec<_>>();
    assert_eq!(new.len(), 1, "exactly one claim is new");
    let held = new.pop().unwrap();
    assert_eq!(
        store.complete(&held, &response()).await.unwrap(),
        Completion::Stored
    );

    let replays = at_once(16, |_| {
        let (store, scope, key) = (store.clone(), scope.clone(), key.clone());
        async move { store.claim(&scope, &key, &fingerprint, lease).await }
    })
    .await;
    for replay in replays {
        assert!(matches!(replay.unwrap(), Claim::Replay(r) if r == response()));
    }
    let other = Fingerprint::of_request("POST", "/payments", b"amount=999");
    let reused = store.claim(&scope, &key, &other, lease).await.unwrap();
    assert!(matches!(reused, Claim::KeyReused), "{reused:?}");

    let released: idem_core::keys::IdempotencyKey = "released".parse().unwrap();
    let Claim::New(first) = store
        .claim(&scope, &released, &fingerprint, lease)
        .await
        .unwrap()
    else {
        panic!("a fresh key")
    };
    store.release(&first).await.unwrap();
    let again = store
        .claim(&scope, &released, &fingerprint, lease)
        .await
        .unwrap();
    assert!(matches!(again, Claim::New(_)), "{again:?}");

    let crashed: idem_core::keys::IdempotencyKey = "crashed".parse().unwrap();
    let short = Duration::from_millis(10);
    let first = store
        .claim(&scope, &crashed, &fingerprint, short)
        .await
        .unwrap();
    assert!(matches!(first, Claim::New(_)), "{first:?}");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let taken = store
        .claim(&scope, &crashed, &fingerprint, lease)
        .await
        .unwrap();
    assert!(matches!(taken, Claim::Recovered(_)), "{taken:?}");
    let (Claim::New(lost) | Claim::Recovered(lost)) = first else {
        unreachable!()
    };
    let late = store.complete(&lost, &response()).await.unwrap();
    assert_eq!(late, Completion::LeaseLost);

    // The completed record only: running ones are inside their lease.
    assert_eq!(store.purge(Duration::ZERO).await.unwrap(), 1);
}

/// Through a pooler in transaction mode, 8 racing `run_once` of one key:
/// the work (a row written in the transaction) runs once, one call gets
/// `Ran` and seven `Replayed`, all with the same response.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_run_once_through_pgbouncer_in_transaction_mode_runs_the_work_once() {
    let Some(bouncer) = bouncer(PoolMode::Transaction, 4).await else {
        return;
    };
    direct(&bouncer, "CREATE TABLE work (n BIGINT NOT NULL)").await;
    let pool = bouncer.pool(8).await;
    let store = SqlKeyStore::new(pool.clone());
    store.install().await.unwrap();
    let scope = Scope::new("tenant-1", "transfers").unwrap();
    let key: idem_core::keys::IdempotencyKey = "transfer-7".parse().unwrap();
    let fingerprint = Fingerprint::of_request("POST", "/transfers", b"7");
    let onces = at_once(8, |i| {
        let (store, scope, key) = (store.clone(), scope.clone(), key.clone());
        async move {
            store
                .run_once::<sqlx::Error, _>(&scope, &key, &fingerprint, move |tx| {
                    Box::pin(async move {
                        sqlx::query("INSERT INTO work (n) VALUES ($1)")
                            .bind(i as i64)
                            .persistent(false)
                            .execute(&mut *tx)
                            .await?;
                        Ok(response())
                    }) as BoxFuture<'_, _>
                })
                .await
        }
    })
    .await;
    let mut ran = 0;
    for once in onces {
        let once = once.unwrap();
        assert_eq!(once.response(), &response());
        ran += usize::from(matches!(once, Once::Ran(_)));
    }
    assert_eq!(ran, 1);
    let direct = bouncer.direct_pool(1).await;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM work")
        .fetch_one(&direct)
        .await
        .unwrap();
    assert_eq!(rows, 1);
}

/// Through a pooler in transaction mode, 3 events each delivered 8 times
/// at once: each handler ran once (one `Processed`, seven `Duplicate`
/// per event), and purge deletes the three markers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn duplicate_deliveries_through_pgbouncer_in_transaction_mode_run_the_handler_once() {
    let Some(bouncer) = bouncer(PoolMode::Transaction, 4).await else {
        return;
    };
    direct(&bouncer, "CREATE TABLE deliveries (event_id TEXT NOT NULL)").await;
    let pool = bouncer.pool(8).await;
    idem_sqlx::install(&pool).await.unwrap();
    let inbox = Inbox::new(pool.clone(), "billing's \\ consumer").unwrap();
    let events = ["evt-1", "evt-'2'", "\u{e9}vt\\3"];
    let deliveries = at_once(24, |i| {
        let inbox = inbox.clone();
        let event = EventId::new(events[i % 3]).unwrap();
        async move { inbox.process(&event, &CountDelivery).await }
    })
    .await;
    let processed = deliveries
        .into_iter()
        .map(|d| match d.unwrap() {
            Delivery::Processed(()) => 1,
            Delivery::Duplicate => 0,
        })
        .sum::<usize>();
    assert_eq!(processed, 3);
    let direct = bouncer.direct_pool(1).await;
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT event_id, count(*) FROM deliveries GROUP BY event_id ORDER BY event_id",
    )
    .fetch_all(&direct)
    .await
    .unwrap();
    let mut expected: Vec<(String, i64)> = events.iter().map(|e| (e.to_string(), 1)).collect();
    expected.sort();
    assert_eq!(rows, expected);
    let inbox = inbox.with_window(Duration::ZERO);
    assert_eq!(inbox.purge().await.unwrap(), 3);
}

/// Text keys whose literals need care: quotes, backslashes (an escape in
/// `E'...'`, and in plain strings when `standard_conforming_strings` is
/// off), `$1`, a comment opener, non-ASCII, a tab.
const TEXT_KEYS: [&str; 6] = [
    "o'clock",
    "back\\slash",
    "\\'",
    "$1 -- /*",
    "\u{e9}\u{1f600}",
    "tab\tkey",
];

/// Every kind of value idem binds and reads, in the simple protocol on
/// `pool` (`direct` sets the tables up): integer keys at both ends of
/// `i64`, text keys that need escaping (single and batch, history rows
/// holding their exact text), UUID keys, NULL and unknown states, and
/// `NotFound`.
async fn every_value_round_trips_as_a_literal(pool: &PgPool, direct: &PgPool) {
    sqlx::raw_sql(&format!(
        "CREATE TABLE invoices (id BIGINT PRIMARY KEY, status TEXT);
         CREATE TABLE accounts (code TEXT PRIMARY KEY, state TEXT NOT NULL);
         CREATE TABLE jobs (id UUID PRIMARY KEY, state TEXT NOT NULL);
         INSERT INTO invoices VALUES ({min}, 'issued'), ({max}, 'issued'), (0, NULL), (1, 'lost');",
        min = i64::MIN,
        max = i64::MAX,
    ))
    .execute(direct)
    .await
    .unwrap();
    let applied = Outcome::Applied {
        from: Invoice::Issued,
        to: Invoice::Paid,
    };
    assert_eq!(Invoice::pay().apply(pool, i64::MIN).await.unwrap(), applied);
    let many = Invoice::pay()
        .apply_many(pool, &[i64::MAX, 5, i64::MAX])
        .await
        .unwrap();
    assert_eq!(
        many,
        [
            applied,
            Outcome::NotFound,
            Outcome::AlreadyApplied {
                state: Invoice::Paid
            }
        ]
    );
    assert!(matches!(
        Invoice::pay().apply(pool, 0i64).await,
        Err(Error::Core(idem_core::Error::NullState { .. }))
    ));
    let unknown = Invoice::pay().apply(pool, 1i32).await;
    assert!(
        matches!(&unknown, Err(Error::Core(idem_core::Error::UnknownState { value, .. })) if value == "lost"),
        "{unknown:?}"
    );

    assert!(idem_sqlx::history::install::<Account, Postgres>(pool)
        .await
        .unwrap());
    for code in TEXT_KEYS {
        sqlx::query("INSERT INTO accounts (code, state) VALUES ($1, 'open')")
            .bind(code)
            .execute(direct)
            .await
            .unwrap();
    }
    let frozen = Outcome::Applied {
        from: Account::Open,
        to: Account::Frozen,
    };
    for code in &TEXT_KEYS[..3] {
        let outcome = Account::freeze().apply(pool, *code).await.unwrap();
        assert_eq!(outcome, frozen, "{code:?}");
    }
    let outcomes = Account::freeze()
        .apply_many(pool, &TEXT_KEYS[3..])
        .await
        .unwrap();
    assert_eq!(outcomes, [frozen; 3]);
    let closed = Account::close()
        .apply_many(pool, &TEXT_KEYS.map(String::from))
        .await
        .unwrap();
    let from_frozen = Outcome::Applied {
        from: Account::Frozen,
        to: Account::Closed,
    };
    assert_eq!(closed, [from_frozen; 6]);
    for code in TEXT_KEYS {
        let rows: i64 =
            sqlx::query_scalar("SELECT count(*) FROM account_history WHERE entity_key = $1")
                .bind(code)
                .fetch_one(direct)
                .await
                .unwrap();
        assert_eq!(rows, 2, "{code:?}");
    }
    let missing = Account::close().apply(pool, "o'clock ").await.unwrap();
    assert_eq!(missing, Outcome::NotFound);

    let job = uuid::Uuid::new_v4();
    sqlx::query("INSERT INTO jobs (id, state) VALUES ($1, 'queued')")
        .bind(job)
        .execute(direct)
        .await
        .unwrap();
    let started = Job::start().apply(pool, job).await.unwrap();
    assert_eq!(
        started,
        Outcome::Applied {
            from: Job::Queued,
            to: Job::Running
        }
    );
    let again = Job::start()
        .apply_many(pool, &[job, uuid::Uuid::nil()])
        .await;
    assert_eq!(
        again.unwrap(),
        [
            Outcome::AlreadyApplied {
                state: Job::Running
            },
            Outcome::NotFound
        ]
    );
    let running: String = sqlx::query_scalar("SELECT state FROM jobs WHERE id = $1")
        .bind(job)
        .fetch_one(direct)
        .await
        .unwrap();
    assert_eq!(running, "running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_value_round_trips_as_a_literal_through_pgbouncer() {
    let Some(bouncer) = bouncer(PoolMode::Transaction, 2).await else {
        return;
    };
    let direct = bouncer.direct_pool(1).await;
    every_value_round_trips_as_a_literal(&bouncer.pool(4).await, &direct).await;
}

/// With `standard_conforming_strings` off a backslash in a plain string
/// is an escape: idem's `E'...'` literals mean the same either way. (On
/// direct connections: PgBouncer would set the parameter back to the
/// value its clients saw at login.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_value_round_trips_as_a_literal_with_standard_conforming_strings_off() {
    let Some(bouncer) = bouncer(PoolMode::Transaction, 2).await else {
        return;
    };
    let off = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .after_connect(|conn, _| {
            Box::pin(async move {
                sqlx::Executor::execute(conn, "SET standard_conforming_strings = off").await?;
                Ok(())
            })
        })
        .connect_with(bouncer.direct())
        .await
        .unwrap();
    let scs: String = sqlx::query_scalar("SHOW standard_conforming_strings")
        .fetch_one(&off)
        .await
        .unwrap();
    assert_eq!(scs, "off");
    let direct = bouncer.direct_pool(1).await;
    every_value_round_trips_as_a_literal(&off, &direct).await;
}

/// PostgreSQL text cannot hold a NUL character: a key or a scope with one
/// is `Error::Nul`, before anything is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nul_in_text_is_a_typed_error_in_the_simple_protocol() {
    let Some(bouncer) = bouncer(PoolMode::Transaction, 2).await else {
        return;
    };
    direct(
        &bouncer,
        "CREATE TABLE accounts (code TEXT PRIMARY KEY, state TEXT NOT NULL)",
    )
    .await;
    let pool = bouncer.pool(2).await;
    let error = Account::close().apply(&pool, "a\0b").await.unwrap_err();
    assert!(matches!(error, Error::Nul { what: "the key" }), "{error:?}");
    let store = SqlKeyStore::new(pool.clone());
    store.install().await.unwrap();
    let scope = Scope::new("tenant\0", "payments").unwrap();
    let key = "k".parse().unwrap();
    let fingerprint = Fingerprint::of_request("POST", "/", b"");
    let error = store
        .claim(&scope, &key, &fingerprint, Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::Nul { what: "the scope" }),
        "{error:?}"
    );
    // The transaction of `apply_with` rolls back cleanly.
    let handled = Account::close()
        .apply_with(&pool, "\0".to_owned(), &NoHandler)
        .await;
    assert!(matches!(
        handled,
        Err(HandlerError::Idem(Error::Nul { .. }))
    ));
}

struct NoHandler;

#[async_trait]
impl TransitionHandler<Account, Postgres, String> for NoHandler {
    type Error = sqlx::Error;

    async fn on_applied(
        &self,
        _: &mut PgConnection,
        _: Change<'_, Account, String>,
    ) -> Result<(), sqlx::Error> {
        Ok(())
    }
}
