//! idem's default, prepared statements, where a named statement can run
//! on a server connection where its name means another statement. This
//! test binary (its own process) keeps the process-wide protocol at
//! `Protocol::Prepared`; `pooler.rs` sets `Protocol::Simple`.
//!
//! - Misrouting made deterministic on one direct connection: the server's
//!   statement behind a name sqlx cached is replaced with another
//!   statement of idem's (`DEALLOCATE` + `PREPARE`), as a pooler in
//!   transaction mode does by handing the connection another client's
//!   server connection. Every answer is refused with `Error::Misrouted`,
//!   and a transaction idem owns commits nothing.
//! - The issue's storm behind PgBouncer in transaction mode: calls may
//!   fail, but no outcome is one the transition table rules out and no
//!   payment exists for a transition that was not applied.
//! - A store's `with_protocol(Protocol::Simple)` behind the same pooler.

mod common;
mod pooler_support;

use std::sync::Arc;
use std::time::Duration;

use idem::prelude::*;
use idem_core::keys::{Claim, Fingerprint, KeyStore, Scope};
use idem_core::{Dialect, KeyFamily, ManySql};
use idem_sqlx::inbox::{Delivery, EventId, Inbox};
use idem_sqlx::keys::SqlKeyStore;
use idem_sqlx::postgres::Protocol;
use idem_sqlx::{Error, HandlerError};
use pooler_support::{CountDelivery, Invoice, PgBouncer, PoolMode, RecordPayment};
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Row};

fn postgres(t: &'static Transition<Invoice>) -> &'static idem_core::DialectSql {
    t.sql_for(Dialect::Postgres).unwrap()
}

/// The text and tag of a transition's batch statement on PostgreSQL.
fn many(t: &'static Transition<Invoice>) -> (&'static str, &'static str) {
    let ManySql::Whole(many) = &postgres(t).many else {
        panic!("PostgreSQL batches in one statement")
    };
    (many.get(KeyFamily::Integer), many.tag.unwrap())
}

/// On the one connection of `pool`: the server's statement that sqlx
/// prepared for the text `of` becomes `with` (taking parameters of
/// `types`), under the same name — what a pooler in transaction mode
/// does when it hands the connection another client's server connection.
async fn swap(pool: &PgPool, of: &str, types: &str, with: &str) {
    let mut conn = pool.acquire().await.unwrap();
    let prepared = sqlx::raw_sql("SELECT name, statement FROM pg_prepared_statements")
        .fetch_all(&mut *conn)
        .await
        .unwrap();
    let name: String = prepared
        .iter()
        .find(|row| row.get::<String, _>(1) == of)
        .map(|row| row.get(0))
        .unwrap_or_else(|| panic!("no statement prepared for {of}"));
    let swap = format!("DEALLOCATE \"{name}\"; PREPARE \"{name}\"({types}) AS {with}");
    sqlx::raw_sql(&swap).execute(&mut *conn).await.unwrap();
}

/// The text of the statement prepared on `pool`'s one connection that
/// contains `needle`.
async fn prepared_with(pool: &PgPool, needle: &str) -> String {
    let prepared = sqlx::raw_sql("SELECT statement FROM pg_prepared_statements")
        .fetch_all(pool)
        .await
        .unwrap();
    prepared
        .iter()
        .map(|row| row.get::<String, _>(0))
        .find(|statement| statement.contains(needle))
        .unwrap_or_else(|| panic!("no statement prepared with {needle}"))
}

/// A pool of one connection on a fresh schema with the invoices: 1 and 2
/// issued, 3 and 4 drafts.
async fn one_connection() -> Option<PgPool> {
    let pool = common::postgres(1).await?;
    sqlx::raw_sql(
        "CREATE TABLE invoices (id BIGINT PRIMARY KEY, status TEXT NOT NULL);
         CREATE TABLE payments (invoice_id BIGINT NOT NULL);
         INSERT INTO invoices VALUES (1, 'issued'), (2, 'issued'), (3, 'draft'), (4, 'draft');",
    )
    .execute(&pool)
    .await
    .unwrap();
    Some(pool)
}

async fn status(pool: &PgPool, id: i64) -> String {
    let sql = format!("SELECT status FROM invoices WHERE id = {id}");
    sqlx::query_scalar(&sql).fetch_one(pool).await.unwrap()
}

async fn payments(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM payments")
        .fetch_one(pool)
        .await
        .unwrap()
}

fn misrouted<T: std::fmt::Debug>(result: Result<T, Error>, expected: &str, found: &str) {
    match result {
        Err(Error::Misrouted {
            expected: e,
            found: f,
        }) if e == expected && f.contains(found) => {}
        other => panic!("expected Misrouted({expected} answered by {found}), got {other:?}"),
    }
}

fn idem<T>(result: Result<T, HandlerError<sqlx::Error>>) -> Result<T, Error> {
    result.map_err(|e| match e {
        HandlerError::Idem(e) => e,
        HandlerError::Handler(e) => panic!("the handler failed: {e}"),
    })
}

/// `pay`'s statement answered by `issue`'s (one `int8` key, the same
/// columns): `Misrouted`, naming both tags. In `apply_with` the
/// transaction rolls back: the draft stays a draft, no payment. A plain
/// `apply` on a pool commits the statement as it runs, so there the
/// other transition has moved the row when idem refuses the answer: the
/// reason the prepared mode is not supported behind a transaction pooler.
#[tokio::test]
async fn a_transition_answered_by_another_transitions_statement_is_misrouted_and_rolled_back() {
    let Some(pool) = one_connection().await else {
        return;
    };
    let pay = postgres(Invoice::pay());
    let issue = postgres(Invoice::issue());
    let applied = idem(Invoice::pay().apply_with(&pool, 1i64, &RecordPayment).await);
    assert!(applied.unwrap().is_applied());
    swap(
        &pool,
        pay.apply.get(KeyFamily::Integer),
        "int8",
        issue.apply.get(KeyFamily::Integer),
    )
    .await;

    let refused = idem(Invoice::pay().apply_with(&pool, 3i64, &RecordPayment).await);
    misrouted(refused, pay.apply.tag.unwrap(), issue.apply.tag.unwrap());
    assert_eq!(status(&pool, 3).await, "draft", "rolled back");
    assert_eq!(payments(&pool).await, 1);

    let committed = Invoice::pay().apply(&pool, 4i64).await;
    misrouted(committed, pay.apply.tag.unwrap(), issue.apply.tag.unwrap());
    assert_eq!(
        status(&pool, 4).await,
        "issued",
        "autocommitted by the other statement"
    );
}

/// A statement gone from the server connection (26000), or an answer in
/// the right shape and tag that reports a change from a state that is not
/// a source of the transition: `Misrouted`, nothing committed.
#[tokio::test]
async fn a_missing_statement_and_a_change_from_no_source_are_misrouted() {
    let Some(pool) = one_connection().await else {
        return;
    };
    let pay = postgres(Invoice::pay());
    let tag = pay.apply.tag.unwrap();
    let paid = idem(Invoice::pay().apply_with(&pool, 1i64, &RecordPayment).await);
    assert!(paid.unwrap().is_applied());
    let fake = format!("SELECT '{tag}'::text, 'draft'::text, $1 IS NOT NULL, true");
    swap(&pool, pay.apply.get(KeyFamily::Integer), "int8", &fake).await;
    let refused = idem(Invoice::pay().apply_with(&pool, 3i64, &RecordPayment).await);
    misrouted(refused, tag, "not a source");
    assert_eq!(payments(&pool).await, 1, "the handler never ran");

    sqlx::raw_sql("DEALLOCATE ALL")
        .execute(&pool)
        .await
        .unwrap();
    let gone = idem(Invoice::pay().apply_with(&pool, 2i64, &RecordPayment).await);
    misrouted(gone, tag, "does not exist");
    assert_eq!(status(&pool, 2).await, "issued");
}

/// The read after a no-op, and the batch statement, check their tags too.
#[tokio::test]
async fn the_read_and_the_batch_are_refused_when_answered_by_another_statement() {
    let Some(pool) = one_connection().await else {
        return;
    };
    let pay = postgres(Invoice::pay());
    let issue = postgres(Invoice::issue());
    // An apply whose row is in a source state but did not move (a
    // concurrent change) reads the row again: the fake apply says so.
    let apply_tag = pay.apply.tag.unwrap();
    let stalled = format!("SELECT '{apply_tag}'::text, 'issued'::text, false, $1 IS NOT NULL");
    assert!(Invoice::pay()
        .apply(&pool, 1i64)
        .await
        .unwrap()
        .is_applied());
    swap(&pool, pay.apply.get(KeyFamily::Integer), "int8", &stalled).await;
    let read = Invoice::pay().apply(&pool, 3i64).await.unwrap();
    assert_eq!(
        read,
        Outcome::Rejected {
            current: Invoice::Draft
        },
        "the read ran"
    );
    swap(
        &pool,
        pay.current.get(KeyFamily::Integer),
        "int8",
        issue.current.get(KeyFamily::Integer),
    )
    .await;
    misrouted(
        Invoice::pay().apply(&pool, 3i64).await,
        pay.current.tag.unwrap(),
        issue.current.tag.unwrap(),
    );

    let (pay_many, pay_tag) = many(Invoice::pay());
    let (issue_many, issue_tag) = many(Invoice::issue());
    let batch = Invoice::pay().apply_many(&pool, &[2i64, 3]).await.unwrap();
    assert!(batch[0].is_applied());
    swap(&pool, pay_many, "int8[]", issue_many).await;
    misrouted(
        Invoice::pay().apply_many(&pool, &[4i64]).await,
        pay_tag,
        issue_tag,
    );
}

/// The inbox's marker insert and the key store's read both take two text
/// parameters: the marker answered by the read (a row, where an insert
/// that counted one row would have said "inserted") is refused, the
/// handler does not run, and nothing commits. The key store's two purges
/// (two `int8`) are refused for each other too.
#[tokio::test]
async fn key_store_and_inbox_statements_answered_by_their_twins_are_misrouted() {
    let Some(pool) = common::postgres(1).await else {
        return;
    };
    idem_sqlx::install(&pool).await.unwrap();
    sqlx::raw_sql("CREATE TABLE deliveries (event_id TEXT NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    let inbox = Inbox::new(pool.clone(), "billing").unwrap();
    let first = inbox
        .process(&EventId::new("evt-1").unwrap(), &CountDelivery)
        .await;
    assert!(matches!(first, Ok(Delivery::Processed(()))));
    let marker = prepared_with(&pool, "INSERT INTO idem_inbox").await;
    let read = "SELECT 'idem:keys:read' AS tag, k.fingerprint FROM (SELECT 1) AS one \
                LEFT JOIN idem_keys AS k ON k.scope = $1 AND k.idem_key = $2";
    swap(&pool, &marker, "text, text", read).await;
    let second = inbox
        .process(&EventId::new("evt-2").unwrap(), &CountDelivery)
        .await;
    let second = second.map_err(|e| match e {
        HandlerError::Idem(e) => e,
        HandlerError::Handler(e) => panic!("{e}"),
    });
    misrouted(second, "idem:inbox:marker", "idem:keys:read");
    let deliveries: i64 = sqlx::query_scalar("SELECT count(*) FROM deliveries")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(deliveries, 1, "the handler ran for evt-1 only");

    let store = SqlKeyStore::new(pool.clone());
    assert_eq!(store.purge(Duration::ZERO).await.unwrap(), 0);
    let completed = prepared_with(&pool, "idem:keys:purge_completed").await;
    let abandoned = prepared_with(&pool, "idem:keys:purge_abandoned").await;
    swap(&pool, &completed, "int8, int8", &abandoned).await;
    misrouted(
        store.purge(Duration::ZERO).await,
        "idem:keys:purge_completed",
        "idem:keys:purge_abandoned",
    );
}

/// A NUL in a text key or scope is `Error::Nul` in the prepared mode as
/// in the simple one.
#[tokio::test]
async fn a_nul_in_text_is_a_typed_error_in_the_prepared_protocol() {
    let Some(pool) = common::postgres(1).await else {
        return;
    };
    sqlx::raw_sql("CREATE TABLE invoices (id TEXT PRIMARY KEY, status TEXT NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    let error = Invoice::pay().apply(&pool, "a\0b").await.unwrap_err();
    assert!(matches!(error, Error::Nul { what: "the key" }), "{error:?}");
    let error = Invoice::pay()
        .apply_many(&pool, &["a", "\0"])
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Nul { what: "the key" }), "{error:?}");
    let store = SqlKeyStore::new(pool.clone());
    store.install().await.unwrap();
    let scope = Scope::new("tenant\0", "payments").unwrap();
    let fingerprint = Fingerprint::of_request("POST", "/", b"");
    let error = store
        .claim(
            &scope,
            &"k".parse().unwrap(),
            &fingerprint,
            Duration::from_secs(1),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::Nul { what: "the scope" }),
        "{error:?}"
    );
}

const INVOICES: i64 = 160;

/// The issue's storm with idem's prepared statements behind PgBouncer in
/// transaction mode, with `issue` running on other rows at the same time
/// so that server connections hold both transitions' statements under
/// colliding names: every call either fails or returns the outcome the
/// transition table gives its row; drafts stay drafts; the handler's row
/// exists exactly for each call that returned `Applied`, and a paid or
/// issued row exactly for each `pay` or `issue` that did.
async fn prepared_storm(pool: PgPool, bouncer: &PgBouncer) {
    let direct = bouncer.direct_pool(1).await;
    sqlx::raw_sql(&format!(
        "CREATE TABLE invoices (id BIGINT PRIMARY KEY, status TEXT NOT NULL);
         CREATE TABLE payments (invoice_id BIGINT NOT NULL);
         INSERT INTO invoices (id, status)
         SELECT i, CASE WHEN i % 2 = 0 THEN 'issued' ELSE 'draft' END
         FROM generate_series(1, {INVOICES}) AS i;
         INSERT INTO invoices (id, status) SELECT 1000 + i, 'draft' FROM generate_series(1, {INVOICES}) AS i;"
    ))
    .execute(&direct)
    .await
    .unwrap();
    let pool = Arc::new(pool);
    let mut tasks = Vec::new();
    for task in 0..8i64 {
        let pool = Arc::clone(&pool);
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            for i in 0..20i64 {
                let id = task * 20 + i + 1;
                let paid = Invoice::pay().apply_with(&pool, id, &RecordPayment).await;
                seen.push((id, idem(paid)));
                let issued = Invoice::issue()
                    .apply_with(&pool, 1000 + id, &RecordPayment)
                    .await;
                seen.push((1000 + id, idem(issued)));
            }
            seen
        }));
    }
    let (mut paid, mut issued, mut errors) = (Vec::new(), Vec::new(), Vec::new());
    for task in tasks {
        for (id, outcome) in task.await.unwrap() {
            let expected = match id {
                1000.. => Outcome::Applied {
                    from: Invoice::Draft,
                    to: Invoice::Issued,
                },
                _ if id % 2 == 0 => Outcome::Applied {
                    from: Invoice::Issued,
                    to: Invoice::Paid,
                },
                _ => Outcome::Rejected {
                    current: Invoice::Draft,
                },
            };
            match outcome {
                Ok(outcome) => {
                    assert_eq!(outcome, expected, "invoice {id}");
                    match id {
                        1000.. => issued.push(id),
                        _ if outcome.is_applied() => paid.push(id),
                        _ => {}
                    }
                }
                Err(error @ Error::Misrouted { .. }) => errors.push(error.to_string()),
                Err(error) => panic!("invoice {id}: not refused as misrouted: {error}"),
            }
        }
    }
    paid.sort_unstable();
    issued.sort_unstable();
    let ids = |sql: &str| {
        let (direct, sql) = (direct.clone(), sql.to_owned());
        async move {
            sqlx::query_scalar::<_, i64>(&sql)
                .fetch_all(&direct)
                .await
                .unwrap()
        }
    };
    // The handler records every change, `issue`'s too.
    let payments = ids("SELECT invoice_id FROM payments ORDER BY invoice_id").await;
    let applied: Vec<i64> = paid.iter().chain(&issued).copied().collect();
    assert_eq!(payments, applied, "a payment exactly for each Applied call");
    let now_paid = ids("SELECT id FROM invoices WHERE status = 'paid' ORDER BY id").await;
    assert_eq!(now_paid, paid);
    let now_issued =
        ids("SELECT id FROM invoices WHERE status = 'issued' AND id > 1000 ORDER BY id").await;
    assert_eq!(
        now_issued, issued,
        "an issued row exactly for each Applied issue"
    );
    let drafts = ids("SELECT id FROM invoices WHERE status = 'draft' AND id < 1000").await;
    assert_eq!(drafts.len() as i64, INVOICES / 2, "drafts stay drafts");
    eprintln!(
        "{} of {} calls failed through the pooler in the prepared mode; first errors: {:#?}",
        errors.len(),
        4 * INVOICES,
        errors.iter().take(3).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prepared_statements_behind_pgbouncer_in_transaction_mode_never_give_an_impossible_outcome()
{
    let Some(bouncer) = PgBouncer::start(PoolMode::Transaction, 4).await else {
        return;
    };
    let pool = bouncer.pool(8).await;
    prepared_storm(pool, &bouncer).await;
}

/// sqlx's `statement_cache_capacity(0)` prepares an unnamed statement and
/// binds it in a second round trip, which the pooler may send elsewhere:
/// the same guarantees hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unnamed_statements_behind_pgbouncer_in_transaction_mode_never_give_an_impossible_outcome()
{
    let Some(bouncer) = PgBouncer::start(PoolMode::Transaction, 4).await else {
        return;
    };
    let options = bouncer.options().statement_cache_capacity(0);
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(60))
        .connect_with(options)
        .await
        .unwrap();
    prepared_storm(pool, &bouncer).await;
}

/// In a process that keeps the prepared protocol, a key store and an
/// inbox built `with_protocol(Protocol::Simple)` work behind PgBouncer in
/// transaction mode: 16 racing claims get one `New`, 16 racing
/// deliveries of one event run the handler once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stores_with_the_simple_protocol_work_behind_pgbouncer_in_a_prepared_process() {
    let Some(bouncer) = PgBouncer::start(PoolMode::Transaction, 4).await else {
        return;
    };
    assert_eq!(idem_sqlx::postgres::protocol(), Protocol::Prepared);
    let direct = bouncer.direct_pool(1).await;
    idem_sqlx::install(&direct).await.unwrap();
    sqlx::raw_sql("CREATE TABLE deliveries (event_id TEXT NOT NULL)")
        .execute(&direct)
        .await
        .unwrap();
    let pool = bouncer.pool(16).await;
    let store = SqlKeyStore::new(pool.clone()).with_protocol(Protocol::Simple);
    let scope = Scope::new("tenant-1", "payments").unwrap();
    let fingerprint = Fingerprint::of_request("POST", "/payments", b"1");
    let mut claims = Vec::new();
    for _ in 0..16 {
        let (store, scope) = (store.clone(), scope.clone());
        claims.push(tokio::spawn(async move {
            let key = "order-1".parse().unwrap();
            store
                .claim(&scope, &key, &fingerprint, Duration::from_secs(30))
                .await
        }));
    }
    let mut new = 0;
    for claim in claims {
        match claim.await.unwrap().unwrap() {
            Claim::New(_) => new += 1,
            Claim::InProgress { .. } => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(new, 1);

    let inbox = Inbox::new(pool.clone(), "billing")
        .unwrap()
        .with_protocol(Protocol::Simple);
    let mut deliveries = Vec::new();
    for _ in 0..16 {
        let inbox = inbox.clone();
        deliveries.push(tokio::spawn(async move {
            let event = EventId::new("evt-1").unwrap();
            inbox.process(&event, &CountDelivery).await
        }));
    }
    let mut processed = 0;
    for delivery in deliveries {
        if let Delivery::Processed(()) = delivery.await.unwrap().unwrap() {
            processed += 1;
        }
    }
    assert_eq!(processed, 1);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM deliveries")
        .fetch_one(&direct)
        .await
        .unwrap();
    assert_eq!(rows, 1);
}
