//! Every transaction idem opens on a connection it takes from a pool
//! (`apply_with`, `apply_many`, `Inbox::process`, `SqlKeyStore::run_once`,
//! the installs) is safe to cancel: dropped at any await — a `select!`, a
//! timeout, a client that hangs up — it hands its pool no connection in a
//! state sqlx does not know, so the next borrower commits what it writes.
//!
//! sqlx 0.8.6 raises a connection's transaction depth only after `BEGIN`
//! returns, so a future dropped while `BEGIN` is in flight leaves the
//! session inside a transaction its drop guard never rolls back, and the
//! pool hands that connection out again (transact-rs/sqlx#4385, #4393):
//! every later statement on it runs in that stale transaction.

mod common;

use std::future::Future;
use std::pin::pin;
use std::task::Poll;

use async_trait::async_trait;
use idem::keys::{Fingerprint, IdempotencyKey, Scope, StoredResponse};
use idem::prelude::*;
use idem_sqlx::inbox::{self, EventId, Inbox, InboxHandler};
use idem_sqlx::keys::{KeyBackend, SqlKeyStore};
use idem_sqlx::Backend;
use sqlx::{Database, Executor, IntoArguments, Pool};

#[derive(StateMachine, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[state_machine(
    table = "invoices",
    column = "status",
    key = "id",
    history = "invoice_history"
)]
#[state_machine(transitions(pay: Issued -> Paid))]
enum Invoice {
    #[state_machine(initial)]
    Issued,
    Paid,
}

struct Nothing;

#[async_trait]
impl<DB: Backend> TransitionHandler<Invoice, DB, i64> for Nothing
where
    i64: idem_sqlx::Key<DB>,
{
    type Error = sqlx::Error;

    async fn on_applied(
        &self,
        _: &mut DB::Connection,
        _: Change<'_, Invoice, i64>,
    ) -> Result<(), sqlx::Error> {
        Ok(())
    }
}

#[async_trait]
impl<DB: Backend> InboxHandler<DB> for Nothing {
    type Output = ();
    type Error = sqlx::Error;

    async fn handle(&self, _: &mut DB::Connection, _: &EventId) -> Result<(), sqlx::Error> {
        Ok(())
    }
}

/// Polls `future` `polls` times (yielding to the runtime in between, so
/// its I/O makes progress), then drops it unless it finished.
async fn cancel_after<F: Future>(polls: u32, future: F) {
    let mut future = pin!(future);
    for _ in 0..polls {
        let ready = std::future::poll_fn(|cx| match future.as_mut().poll(cx) {
            Poll::Ready(_) => Poll::Ready(true),
            Poll::Pending => Poll::Ready(false),
        })
        .await;
        if ready {
            return;
        }
        tokio::task::yield_now().await;
    }
}

const ROUNDS: i64 = 300;

/// The pool (one connection, so every call reuses the one a cancelled
/// future gave back) and a second pool on the same database to look from.
async fn check<DB>(pool: Pool<DB>, observer: Pool<DB>, create: &str, qualify: &str)
where
    DB: Backend + idem_sqlx::inbox::InboxBackend + KeyBackend,
    i64: idem_sqlx::Key<DB>,
    for<'e> &'e Pool<DB>: Executor<'e, Database = DB>,
    for<'q> <DB as Database>::Arguments<'q>: IntoArguments<'q, DB>,
    i64: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    sqlx::raw_sql(create).execute(&pool).await.unwrap();
    idem_sqlx::history::install::<Invoice, DB>(&pool)
        .await
        .unwrap();
    inbox::install(&pool).await.unwrap();
    let inbox = Inbox::new(pool.clone(), "cancellation").unwrap();
    let keys = SqlKeyStore::new(pool.clone());
    keys.install().await.unwrap();
    let scope = Scope::new("client", "cancellation").unwrap();
    let fingerprint = Fingerprint::of_bytes(b"request");
    for round in 1..=ROUNDS {
        let polls = (round % 10) as u32 + 1;
        match round % 3 {
            0 => cancel_after(polls, Invoice::pay().apply_with(&pool, round, &Nothing)).await,
            1 => {
                let key = IdempotencyKey::new(format!("key-{round}")).unwrap();
                let once = keys.run_once::<sqlx::Error, _>(&scope, &key, &fingerprint, |_| {
                    Box::pin(async { Ok(StoredResponse::new(201, b"done".to_vec())) })
                });
                cancel_after(polls, once).await
            }
            _ => {
                let event = EventId::new(format!("evt-{round}")).unwrap();
                cancel_after(polls, inbox.process(&event, &Nothing)).await
            }
        }
        // The next borrower of the connection writes in autocommit mode...
        sqlx::query("UPDATE marks SET n = n + 1 WHERE id = 1")
            .execute(&pool)
            .await
            .unwrap();
        // ...and another connection must see it committed.
        let seen: i64 = sqlx::query_scalar(&format!("SELECT n FROM {qualify}marks WHERE id = 1"))
            .fetch_one(&observer)
            .await
            .unwrap();
        assert_eq!(
            seen, round,
            "round {round} ({polls} polls): the write after a cancelled call was not committed: \
             the pooled connection was left inside a transaction"
        );
    }
}

fn create(ids: i64) -> String {
    format!(
        "CREATE TABLE invoices (id BIGINT PRIMARY KEY, status VARCHAR(16) NOT NULL);
         CREATE TABLE marks (id BIGINT PRIMARY KEY, n BIGINT NOT NULL);
         INSERT INTO marks (id, n) VALUES (1, 0);
         INSERT INTO invoices (id, status) VALUES {};",
        (1..=ids)
            .map(|i| format!("({i}, 'issued')"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_calls_cancelled_at_any_await_leave_no_transaction_open() {
    let pool = common::sqlite(1).await;
    let observer = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with((*pool.connect_options()).clone())
        .await
        .unwrap();
    check(pool, observer, &create(ROUNDS), "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_calls_cancelled_at_any_await_leave_no_transaction_open() {
    let Some(pool) = common::postgres(1).await else {
        return;
    };
    let schema: String = sqlx::query_scalar("SELECT current_schema()::text")
        .fetch_one(&pool)
        .await
        .unwrap();
    let observer = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with((*pool.connect_options()).clone())
        .await
        .unwrap();
    check(pool, observer, &create(ROUNDS), &format!("{schema}.")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_calls_cancelled_at_any_await_leave_no_transaction_open() {
    let Some(pool) = common::mysql(1).await else {
        return;
    };
    let observer = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(1)
        .connect_with((*pool.connect_options()).clone())
        .await
        .unwrap();
    check(pool, observer, &create(ROUNDS), "").await;
}
