//! Schema installation from processes starting together: sixteen sessions
//! install every table at once on a fresh database of each backend, and
//! all of them succeed (on PostgreSQL two racing `CREATE TABLE IF NOT
//! EXISTS` fail on the catalog's unique index unless they are serialized).

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use idem::prelude::*;
use idem_core::keys::{Claim, Fingerprint, KeyStore, Scope};
use idem_sqlx::inbox::{Delivery, EventId, Inbox, InboxBackend, InboxHandler};
use idem_sqlx::keys::{KeyBackend, SqlKeyStore};
use idem_sqlx::{history, inbox, Error};
use sqlx::Pool;
use tokio::sync::Barrier;

#[derive(StateMachine, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[state_machine(
    table = "tickets",
    column = "state",
    key = "id",
    history = "ticket_history"
)]
#[state_machine(transitions(close: Open -> Closed))]
enum Ticket {
    #[state_machine(initial)]
    Open,
    Closed,
}

/// The application's own table, installed with `install_sql`.
const TICKETS: &str =
    "CREATE TABLE IF NOT EXISTS tickets (id BIGINT NOT NULL PRIMARY KEY, state VARCHAR(16) NOT NULL)";

const SESSIONS: usize = 16;

/// Runs one of the five installs.
async fn install_one<B>(pool: &Pool<B>, which: usize) -> Result<(), Error>
where
    B: KeyBackend + InboxBackend,
{
    match which {
        0 => idem_sqlx::install_sql(pool, &[TICKETS]).await,
        1 => idem_sqlx::install(pool).await,
        2 => SqlKeyStore::new(pool.clone()).install().await,
        3 => inbox::install(pool).await,
        _ => {
            assert!(history::install::<Ticket, B>(pool).await?);
            Ok(())
        }
    }
}

/// Sixteen sessions released together; session `i` runs the five installs
/// starting with install `i % 5`, so every table is raced for first.
/// Returns every error.
async fn install_concurrently<B>(pool: &Pool<B>) -> Vec<Error>
where
    B: KeyBackend + InboxBackend,
{
    let barrier = Arc::new(Barrier::new(SESSIONS));
    let tasks: Vec<_> = (0..SESSIONS)
        .map(|session| {
            let (pool, barrier) = (pool.clone(), Arc::clone(&barrier));
            tokio::spawn(async move {
                barrier.wait().await;
                let mut errors = Vec::new();
                for step in 0..5 {
                    if let Err(error) = install_one(&pool, (session + step) % 5).await {
                        errors.push(error);
                    }
                }
                errors
            })
        })
        .collect();
    let mut errors = Vec::new();
    for task in tasks {
        errors.extend(task.await.unwrap());
    }
    errors
}

struct Count;

#[async_trait]
impl<B: InboxBackend> InboxHandler<B> for Count {
    type Output = ();
    type Error = std::convert::Infallible;

    async fn handle(&self, _: &mut B::Connection, _: &EventId) -> Result<(), Self::Error> {
        Ok(())
    }
}

/// The installed key store and inbox work.
async fn keys_and_inbox_work<B>(pool: &Pool<B>)
where
    B: KeyBackend + InboxBackend,
{
    let store = SqlKeyStore::new(pool.clone());
    let scope = Scope::new("acme", "install").unwrap();
    let fingerprint = Fingerprint::of_request("POST", "/", b"");
    let claim = store
        .claim(
            &scope,
            &"k".parse().unwrap(),
            &fingerprint,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert!(matches!(claim, Claim::New(_)), "{claim:?}");
    let inbox = Inbox::new(pool.clone(), "install").unwrap();
    let event = EventId::new("evt-1").unwrap();
    assert_eq!(
        inbox.process(&event, &Count).await.unwrap(),
        Delivery::Processed(())
    );
    assert_eq!(
        inbox.process(&event, &Count).await.unwrap(),
        Delivery::Duplicate
    );
}

macro_rules! suite {
    ($backend:ident, $db:ty, $pool:expr) => {
        mod $backend {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sixteen_sessions_installing_every_table_at_once_all_succeed() {
                let Some(pool): Option<Pool<$db>> = $pool else {
                    return;
                };
                let errors = install_concurrently(&pool).await;
                assert!(
                    errors.is_empty(),
                    "{} installs failed: {errors:?}",
                    errors.len()
                );

                keys_and_inbox_work(&pool).await;
                sqlx::query("INSERT INTO tickets (id, state) VALUES (1, 'open')")
                    .execute(&pool)
                    .await
                    .unwrap();
                let outcome = Ticket::close().apply(&pool, 1i64).await.unwrap();
                assert_eq!(
                    outcome,
                    Outcome::Applied {
                        from: Ticket::Open,
                        to: Ticket::Closed
                    }
                );
                let history: i64 = sqlx::query_scalar("SELECT count(*) FROM ticket_history")
                    .fetch_one(&pool)
                    .await
                    .unwrap();
                assert_eq!(history, 1);
            }

            #[tokio::test]
            async fn installing_again_on_an_installed_database_changes_nothing() {
                let Some(pool): Option<Pool<$db>> = $pool else {
                    return;
                };
                for which in 0..5 {
                    install_one(&pool, which).await.unwrap();
                }
                keys_and_inbox_work(&pool).await;
                for which in 0..5 {
                    install_one(&pool, which).await.unwrap();
                }
                // The records written in between are still there.
                let keys: i64 = sqlx::query_scalar("SELECT count(*) FROM idem_keys")
                    .fetch_one(&pool)
                    .await
                    .unwrap();
                let markers: i64 = sqlx::query_scalar("SELECT count(*) FROM idem_inbox")
                    .fetch_one(&pool)
                    .await
                    .unwrap();
                assert_eq!((keys, markers), (1, 1));
            }
        }
    };
}

suite!(
    sqlite,
    sqlx::Sqlite,
    Some(common::sqlite(SESSIONS as u32).await)
);
suite!(
    postgres,
    sqlx::Postgres,
    common::postgres(SESSIONS as u32).await
);
suite!(mysql, sqlx::MySql, common::mysql(SESSIONS as u32).await);

/// A failing statement rolls the whole install back on PostgreSQL, whose
/// DDL is transactional: nothing is left half-installed.
#[tokio::test]
async fn on_postgres_a_failing_install_leaves_no_table_behind() {
    let Some(pool) = common::postgres(2).await else {
        return;
    };
    let broken = [TICKETS, "CREATE TABLE tickets (id BIGINT)"];
    let error = idem_sqlx::install_sql(&pool, &broken).await.unwrap_err();
    assert!(matches!(error, Error::Database(_)), "{error:?}");
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables \
         WHERE table_schema = current_schema() AND table_name = 'tickets'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(tables, 0);
}
