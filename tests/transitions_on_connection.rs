//! `TransitionExt::apply_with_on`: a handled transition on a connection the
//! caller holds — inside the caller's transaction (a savepoint), outside
//! any (a transaction of its own), and inside an inbox handler — on SQLite
//! always and on PostgreSQL and MySQL/MariaDB when their URLs are set.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use idem::prelude::*;
use idem_sqlx::HandlerError;
use tokio::sync::Barrier;

#[derive(StateMachine, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[state_machine(table = "invoices", column = "status", key = "id")]
#[state_machine(transitions(pay: Issued -> Paid))]
enum Invoice {
    #[state_machine(initial)]
    Issued,
    Paid,
}

const SCHEMA: [&str; 3] = [
    "CREATE TABLE invoices (id BIGINT NOT NULL PRIMARY KEY, status VARCHAR(16) NOT NULL)",
    "CREATE TABLE payments (invoice_id BIGINT NOT NULL)",
    "CREATE TABLE audit (note VARCHAR(64) NOT NULL)",
];

const PAID: Outcome<Invoice> = Outcome::Applied {
    from: Invoice::Issued,
    to: Invoice::Paid,
};

/// Records a payment, then fails when told to (after its write, so a
/// rollback has something to undo).
#[derive(Default)]
struct RecordPayment {
    fail: bool,
    runs: AtomicUsize,
}

impl RecordPayment {
    fn failing() -> Self {
        RecordPayment {
            fail: true,
            runs: AtomicUsize::new(0),
        }
    }

    fn runs(&self) -> usize {
        self.runs.load(Ordering::SeqCst)
    }
}

/// An inbox consumer that pays invoice 1 through `apply_with_on`.
struct PayOnEvent(RecordPayment);

macro_rules! suite {
    ($backend:ident, $db:ty, $pool:expr) => {
        mod $backend {
            use super::*;
            use async_trait::async_trait;
            use idem::Change;
            use idem_sqlx::inbox::{self, Delivery, EventId, Inbox, InboxHandler};
            use sqlx::{Connection, Pool};

            type DB = $db;
            type Conn = <DB as sqlx::Database>::Connection;

            #[async_trait]
            impl TransitionHandler<Invoice, DB, i64> for RecordPayment {
                type Error = &'static str;

                async fn on_applied(
                    &self,
                    conn: &mut Conn,
                    change: Change<'_, Invoice, i64>,
                ) -> Result<(), &'static str> {
                    self.runs.fetch_add(1, Ordering::SeqCst);
                    let insert =
                        format!("INSERT INTO payments (invoice_id) VALUES ({})", change.key);
                    sqlx::query(&insert)
                        .execute(conn)
                        .await
                        .map_err(|_| "the payment insert failed")?;
                    if self.fail {
                        return Err("declined");
                    }
                    Ok(())
                }
            }

            #[async_trait]
            impl InboxHandler<DB> for PayOnEvent {
                type Output = Outcome<Invoice>;
                type Error = HandlerError<&'static str>;

                async fn handle(
                    &self,
                    conn: &mut Conn,
                    _: &EventId,
                ) -> Result<Outcome<Invoice>, Self::Error> {
                    Invoice::pay().apply_with_on(conn, 1i64, &self.0).await
                }
            }

            /// A fresh database with invoices 1..=n issued.
            async fn setup(max: u32, n: i64) -> Option<Pool<DB>> {
                let pool: Pool<DB> = $pool(max).await?;
                for ddl in SCHEMA {
                    sqlx::query(ddl).execute(&pool).await.unwrap();
                }
                for id in 1..=n {
                    let insert =
                        format!("INSERT INTO invoices (id, status) VALUES ({id}, 'issued')");
                    sqlx::query(&insert).execute(&pool).await.unwrap();
                }
                inbox::install(&pool).await.unwrap();
                Some(pool)
            }

            async fn count(pool: &Pool<DB>, table: &str) -> i64 {
                let sql = format!("SELECT count(*) FROM {table}");
                sqlx::query_scalar(&sql).fetch_one(pool).await.unwrap()
            }

            async fn status(pool: &Pool<DB>, id: i64) -> String {
                let sql = format!("SELECT status FROM invoices WHERE id = {id}");
                sqlx::query_scalar(&sql).fetch_one(pool).await.unwrap()
            }

            async fn audit(conn: &mut Conn) {
                sqlx::query("INSERT INTO audit (note) VALUES ('caller')")
                    .execute(conn)
                    .await
                    .unwrap();
            }

            #[tokio::test]
            async fn inside_a_transaction_the_change_and_the_handler_commit_with_the_callers() {
                let Some(pool) = setup(2, 2).await else {
                    return;
                };
                let handler = RecordPayment::default();
                let mut tx = pool.begin().await.unwrap();
                audit(&mut tx).await;
                let outcome = Invoice::pay().apply_with_on(&mut *tx, 1i64, &handler).await;
                assert_eq!(outcome.unwrap(), PAID);
                tx.commit().await.unwrap();
                assert_eq!(status(&pool, 1).await, "paid");
                assert_eq!(
                    (count(&pool, "payments").await, count(&pool, "audit").await),
                    (1, 1)
                );

                // The caller rolls back: the change and the payment go with it.
                let mut tx = pool.begin().await.unwrap();
                let outcome = Invoice::pay().apply_with_on(&mut *tx, 2i64, &handler).await;
                assert_eq!(outcome.unwrap(), PAID);
                tx.rollback().await.unwrap();
                assert_eq!(status(&pool, 2).await, "issued");
                assert_eq!(count(&pool, "payments").await, 1);
                assert_eq!(handler.runs(), 2);
            }

            #[tokio::test]
            async fn a_handler_error_rolls_back_its_savepoint_and_keeps_the_callers_writes() {
                let Some(pool) = setup(2, 1).await else {
                    return;
                };
                let declined = RecordPayment::failing();
                let mut tx = pool.begin().await.unwrap();
                audit(&mut tx).await;
                let outcome = Invoice::pay()
                    .apply_with_on(&mut *tx, 1i64, &declined)
                    .await;
                assert!(
                    matches!(outcome, Err(HandlerError::Handler("declined"))),
                    "{outcome:?}"
                );
                // The transaction is still usable: the retry with a handler
                // that succeeds applies in it.
                let handler = RecordPayment::default();
                let outcome = Invoice::pay().apply_with_on(&mut *tx, 1i64, &handler).await;
                assert_eq!(outcome.unwrap(), PAID);
                tx.commit().await.unwrap();
                assert_eq!(status(&pool, 1).await, "paid");
                assert_eq!(
                    (count(&pool, "payments").await, count(&pool, "audit").await),
                    (1, 1)
                );
                assert_eq!((declined.runs(), handler.runs()), (1, 1));
            }

            #[tokio::test]
            async fn outside_a_transaction_it_commits_in_a_transaction_of_its_own() {
                let Some(pool) = setup(2, 2).await else {
                    return;
                };
                let mut conn = pool.acquire().await.unwrap();
                let declined = RecordPayment::failing();
                let outcome = Invoice::pay()
                    .apply_with_on(&mut *conn, 1i64, &declined)
                    .await;
                assert!(
                    matches!(outcome, Err(HandlerError::Handler("declined"))),
                    "{outcome:?}"
                );
                assert!(!conn.is_in_transaction());
                assert_eq!(status(&pool, 1).await, "issued");
                assert_eq!(count(&pool, "payments").await, 0);

                let handler = RecordPayment::default();
                let outcome = Invoice::pay()
                    .apply_with_on(&mut *conn, 1i64, &handler)
                    .await;
                assert_eq!(outcome.unwrap(), PAID);
                assert!(!conn.is_in_transaction());
                drop(conn);
                assert_eq!(status(&pool, 1).await, "paid");
                assert_eq!(count(&pool, "payments").await, 1);
            }

            #[tokio::test]
            async fn a_duplicate_is_a_noop_and_the_handler_does_not_run_again() {
                let Some(pool) = setup(2, 1).await else {
                    return;
                };
                let handler = RecordPayment::default();
                let mut conn = pool.acquire().await.unwrap();
                for expected in [
                    PAID,
                    Outcome::AlreadyApplied {
                        state: Invoice::Paid,
                    },
                ] {
                    let mut tx = conn.begin().await.unwrap();
                    let outcome = Invoice::pay().apply_with_on(&mut *tx, 1i64, &handler).await;
                    assert_eq!(outcome.unwrap(), expected);
                    tx.commit().await.unwrap();
                }
                let missing = Invoice::pay()
                    .apply_with_on(&mut *conn, 9i64, &handler)
                    .await;
                assert_eq!(missing.unwrap(), Outcome::NotFound);
                assert_eq!(handler.runs(), 1);
                drop(conn);
                assert_eq!(count(&pool, "payments").await, 1);
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sixteen_racing_connections_pay_once() {
                let Some(pool) = setup(16, 1).await else {
                    return;
                };
                let handler = Arc::new(RecordPayment::default());
                let barrier = Arc::new(Barrier::new(16));
                let tasks: Vec<_> = (0..16)
                    .map(|_| {
                        let (pool, handler, barrier) =
                            (pool.clone(), Arc::clone(&handler), Arc::clone(&barrier));
                        tokio::spawn(async move {
                            let mut conn = pool.acquire().await.unwrap();
                            barrier.wait().await;
                            Invoice::pay()
                                .apply_with_on(&mut *conn, 1i64, &*handler)
                                .await
                                .unwrap()
                        })
                    })
                    .collect();
                let mut applied = 0;
                for task in tasks {
                    match task.await.unwrap() {
                        Outcome::Applied { .. } => applied += 1,
                        Outcome::AlreadyApplied {
                            state: Invoice::Paid,
                        } => {}
                        other => panic!("unexpected {other:?}"),
                    }
                }
                assert_eq!(applied, 1);
                assert_eq!(handler.runs(), 1);
                assert_eq!(count(&pool, "payments").await, 1);
            }

            #[tokio::test]
            async fn in_an_inbox_handler_the_marker_the_change_and_the_payment_commit_together() {
                let Some(pool) = setup(2, 1).await else {
                    return;
                };
                let inbox = Inbox::new(pool.clone(), "payments").unwrap();
                let event = EventId::new("evt-1").unwrap();
                let declined = PayOnEvent(RecordPayment::failing());
                let failed = inbox.process(&event, &declined).await;
                assert!(
                    matches!(
                        failed,
                        Err(HandlerError::Handler(HandlerError::Handler("declined")))
                    ),
                    "{failed:?}"
                );
                assert_eq!(count(&pool, "idem_inbox").await, 0);
                assert_eq!(status(&pool, 1).await, "issued");

                let pay = PayOnEvent(RecordPayment::default());
                let delivered = inbox.process(&event, &pay).await.unwrap();
                assert_eq!(delivered, Delivery::Processed(PAID));
                let again = inbox.process(&event, &pay).await.unwrap();
                assert_eq!(again, Delivery::Duplicate);
                let other = inbox
                    .process(&EventId::new("evt-2").unwrap(), &pay)
                    .await
                    .unwrap();
                assert_eq!(
                    other,
                    Delivery::Processed(Outcome::AlreadyApplied {
                        state: Invoice::Paid
                    })
                );
                assert_eq!(status(&pool, 1).await, "paid");
                assert_eq!(count(&pool, "payments").await, 1);
                assert_eq!(count(&pool, "idem_inbox").await, 2);
                assert_eq!(pay.0.runs(), 1);
            }
        }
    };
}

suite!(sqlite, sqlx::Sqlite, |max| async move {
    Some(common::sqlite(max).await)
});
suite!(postgres, sqlx::Postgres, common::postgres);
suite!(mysql, sqlx::MySql, common::mysql);
