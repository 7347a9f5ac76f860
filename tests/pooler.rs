//! idem behind a connection pooler: a private PgBouncer 1.18 in
//! transaction and session mode in front of the machine's PostgreSQL.

mod pooler_support;

use std::sync::Arc;

use async_trait::async_trait;
use idem::prelude::*;
use pooler_support::{PgBouncer, PoolMode};
use sqlx::{PgConnection, Postgres};

#[derive(StateMachine, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[state_machine(table = "invoices", column = "status", key = "id")]
#[state_machine(transitions(
    issue: Draft -> Issued,
    pay: Issued -> Paid,
))]
enum Invoice {
    #[state_machine(initial)]
    Draft,
    Issued,
    Paid,
}

struct RecordPayment;

#[async_trait]
impl TransitionHandler<Invoice, Postgres, i64> for RecordPayment {
    type Error = sqlx::Error;

    async fn on_applied(
        &self,
        conn: &mut PgConnection,
        change: Change<'_, Invoice, i64>,
    ) -> Result<(), sqlx::Error> {
        // Unnamed (not cached): a named statement would outlive the
        // transaction and land on another server connection.
        sqlx::query("INSERT INTO payments (invoice_id) VALUES ($1)")
            .bind(*change.key)
            .persistent(false)
            .execute(conn)
            .await?;
        Ok(())
    }
}

const INVOICES: i64 = 160;

/// Even invoices are issued, odd ones drafts.
async fn seed(bouncer: &PgBouncer) {
    let direct = bouncer.direct_pool(1).await;
    sqlx::raw_sql(&format!(
        "CREATE TABLE invoices (id BIGINT PRIMARY KEY, status TEXT NOT NULL);
         CREATE TABLE payments (invoice_id BIGINT NOT NULL);
         INSERT INTO invoices (id, status)
         SELECT i, CASE WHEN i % 2 = 0 THEN 'issued' ELSE 'draft' END
         FROM generate_series(1, {INVOICES}) AS i;"
    ))
    .execute(&direct)
    .await
    .unwrap();
    direct.close().await;
}

/// 8 tasks x 20 `pay().apply_with` through the pooler: every outcome is
/// one the transition table allows for that row, and the database agrees
/// with the outcomes (one payment per paid invoice, no draft paid).
async fn payments_through_the_pooler_follow_the_transition_table(mode: PoolMode) {
    // Session mode pins a server connection per client: give it one each.
    let servers = if mode == PoolMode::Session { 8 } else { 4 };
    let Some(bouncer) = PgBouncer::start(mode, servers).await else {
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
