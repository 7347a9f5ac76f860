//! The transition conformance suite: the same tests on SQLite (always) and
//! on PostgreSQL and MySQL/MariaDB (when `IDEM_TEST_POSTGRES` /
//! `IDEM_TEST_MYSQL` are set; required in CI), plus the isolation-level
//! cases only a server backend has.

mod common;
mod transitions_support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use idem::prelude::*;
use idem_sqlx::{Error, HandlerError, RetryPolicy};
use sqlx::Pool;
use transitions_support::*;

/// One `Outcome` per variant, for counting.
fn tally<S: Copy>(outcomes: &[Outcome<S>]) -> [usize; 4] {
    let mut n = [0; 4];
    for o in outcomes {
        n[match o {
            Outcome::Applied { .. } => 0,
            Outcome::AlreadyApplied { .. } => 1,
            Outcome::Rejected { .. } => 2,
            Outcome::NotFound => 3,
        }] += 1;
    }
    n
}

macro_rules! suite {
    ($backend:ident, $db:ty) => {
        mod $backend {
            use super::*;

            type DB = $db;

            async fn pool(max: u32) -> Option<Pool<DB>> {
                let pool = <DB as Db>::pool(max).await?;
                setup(&pool).await;
                Some(pool)
            }

            /// Charges a card: inserts a row in `charges`, or fails when
            /// told to (after its write, which must be rolled back).
            #[derive(Default)]
            struct Charge {
                runs: AtomicUsize,
                decline: bool,
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
                    assert_eq!(change.transition, Invoice::pay());
                    assert_eq!((change.from, change.to), (Invoice::Issued, Invoice::Paid));
                    let sql = format!(
                        "INSERT INTO charges (invoice_id, amount) VALUES ({}, 100)",
                        change.key
                    );
                    sqlx::query(&sql)
                        .execute(conn)
                        .await
                        .map_err(|e| e.to_string())?;
                    if self.decline {
                        return Err("card declined".to_owned());
                    }
                    Ok(())
                }
            }

            #[tokio::test]
            async fn every_outcome_in_sequence() {
                let Some(pool) = pool(2).await else { return };
                invoice(&pool, 1, "draft").await;
                let apply = |t: &'static Transition<Invoice>, id: i64| {
                    let pool = pool.clone();
                    async move { t.apply(&pool, id).await.unwrap() }
                };
                use Invoice::*;
                assert_eq!(apply(Invoice::pay(), 1).await, Outcome::Rejected { current: Draft });
                assert_eq!(apply(Invoice::issue(), 1).await, Outcome::Applied { from: Draft, to: Issued });
                assert_eq!(apply(Invoice::issue(), 1).await, Outcome::AlreadyApplied { state: Issued });
                assert_eq!(apply(Invoice::pay(), 1).await, Outcome::Applied { from: Issued, to: Paid });
                assert_eq!(apply(Invoice::pay(), 1).await, Outcome::AlreadyApplied { state: Paid });
                assert_eq!(apply(Invoice::void(), 1).await, Outcome::Rejected { current: Paid });
                assert_eq!(apply(Invoice::refund(), 1).await, Outcome::Applied { from: Paid, to: Refunded });
                assert_eq!(apply(Invoice::issue(), 2).await, Outcome::NotFound);
                assert_eq!(apply(Invoice::void(), 2).await, Outcome::NotFound);
                assert_eq!(status(&pool, 1).await, "refunded");
                assert_eq!(
                    history(&pool, 1).await,
                    ["issue:draft->issued", "pay:issued->paid", "refund:paid->refunded"]
                );
            }

            #[tokio::test]
            async fn multi_source_transitions_report_the_state_they_moved_from() {
                let Some(pool) = pool(2).await else { return };
                invoice(&pool, 1, "draft").await;
                invoice(&pool, 2, "issued").await;
                invoice(&pool, 3, "paid").await;
                use Invoice::*;
                let void = Invoice::void();
                assert_eq!(void.apply(&pool, 1i64).await.unwrap(), Outcome::Applied { from: Draft, to: Void });
                assert_eq!(void.apply(&pool, 2i64).await.unwrap(), Outcome::Applied { from: Issued, to: Void });
                assert_eq!(void.apply(&pool, 2i64).await.unwrap(), Outcome::AlreadyApplied { state: Void });
                assert_eq!(void.apply(&pool, 3i64).await.unwrap(), Outcome::Rejected { current: Paid });
                assert_eq!(history(&pool, 1).await, ["void:draft->void"]);
                assert_eq!(history(&pool, 2).await, ["void:issued->void"]);
                assert!(history(&pool, 3).await.is_empty());
            }

            #[tokio::test]
            async fn a_wildcard_transition_moves_from_every_other_state() {
                let Some(pool) = pool(2).await else { return };
                let states = ["draft", "issued", "paid", "void", "refunded"];
                for (id, state) in states.iter().enumerate() {
                    invoice(&pool, id as i64, state).await;
                }
                for (id, state) in states.iter().enumerate() {
                    let outcome = Invoice::archive().apply(&pool, id as i64).await.unwrap();
                    assert_eq!(
                        outcome,
                        Outcome::Applied { from: Invoice::parse(state).unwrap(), to: Invoice::Archived }
                    );
                    assert_eq!(history(&pool, id as i64).await, [format!("archive:{state}->archived")]);
                }
                assert_eq!(
                    Invoice::archive().apply(&pool, 0i64).await.unwrap(),
                    Outcome::AlreadyApplied { state: Invoice::Archived }
                );
                assert_eq!(
                    Invoice::issue().apply(&pool, 0i64).await.unwrap(),
                    Outcome::Rejected { current: Invoice::Archived }
                );
            }

            #[tokio::test]
            async fn an_unknown_stored_value_is_a_typed_error() {
                let Some(pool) = pool(2).await else { return };
                invoice(&pool, 1, "lost").await;
                for t in [Invoice::issue(), Invoice::void(), Invoice::archive()] {
                    match t.apply(&pool, 1i64).await {
                        Err(Error::Core(idem::Error::UnknownState { type_name, value })) => {
                            assert_eq!((type_name, value.as_str()), ("Invoice", "lost"));
                        }
                        other => panic!("{}: expected UnknownState, got {other:?}", t.name()),
                    }
                }
                assert_eq!(status(&pool, 1).await, "lost");
                assert!(history(&pool, 1).await.is_empty());
            }

            #[tokio::test]
            async fn a_state_machine_without_a_table_is_a_typed_error() {
                let Some(pool) = pool(1).await else { return };
                let error = Door::close().apply(&pool, 1i64).await.unwrap_err();
                assert!(
                    matches!(error, Error::Core(idem::Error::NoTable { type_name: "Door", transition: "close" })),
                    "{error:?}"
                );
            }

            #[tokio::test]
            async fn statements_per_outcome_stay_within_the_budget() {
                let Some(pool) = pool(1).await else { return };
                for (id, state) in [(1, "draft"), (2, "draft"), (3, "issued"), (4, "paid")] {
                    invoice(&pool, id, state).await;
                }
                let rec = Recorder::default();
                let mut measured = Vec::new();
                let mut run = |case: &'static str, outcome: Outcome<Bare>, expected: Outcome<Bare>| {
                    assert_eq!(outcome, expected, "{case}");
                    measured.push((case, rec.take()));
                };
                use Bare::*;
                run("single-source Applied", rec.record(Bare::issue().apply(&pool, 1i64)).await.unwrap(),
                    Outcome::Applied { from: Draft, to: Issued });
                run("single-source AlreadyApplied", rec.record(Bare::issue().apply(&pool, 1i64)).await.unwrap(),
                    Outcome::AlreadyApplied { state: Issued });
                run("single-source Rejected", rec.record(Bare::refund().apply(&pool, 1i64)).await.unwrap(),
                    Outcome::Rejected { current: Issued });
                run("single-source NotFound", rec.record(Bare::issue().apply(&pool, 99i64)).await.unwrap(),
                    Outcome::NotFound);
                run("multi-source Applied", rec.record(Bare::void().apply(&pool, 2i64)).await.unwrap(),
                    Outcome::Applied { from: Draft, to: Void });
                run("multi-source Applied from the second source", rec.record(Bare::void().apply(&pool, 3i64)).await.unwrap(),
                    Outcome::Applied { from: Issued, to: Void });
                run("multi-source AlreadyApplied", rec.record(Bare::void().apply(&pool, 3i64)).await.unwrap(),
                    Outcome::AlreadyApplied { state: Void });
                run("multi-source Rejected", rec.record(Bare::void().apply(&pool, 4i64)).await.unwrap(),
                    Outcome::Rejected { current: Paid });
                run("multi-source NotFound", rec.record(Bare::void().apply(&pool, 99i64)).await.unwrap(),
                    Outcome::NotFound);
                for (case, statements) in &measured {
                    eprintln!("{} {case}: {} {statements:?}", DB::BACKEND, statements.len());
                }
                let expect = |case: &str| -> Vec<&str> {
                    let multi = case.starts_with("multi");
                    let applied = case.contains("Applied") && !case.contains("Already");
                    match (DB::BACKEND, multi, applied) {
                        ("postgres", _, _) => vec!["WITH"],
                        ("mysql", _, true) => vec!["UPDATE"],
                        ("mysql", _, false) => vec!["UPDATE", "SELECT"],
                        ("sqlite", false, true) => vec!["UPDATE"],
                        ("sqlite", false, false) => vec!["UPDATE", "SELECT"],
                        ("sqlite", true, true) => vec!["SELECT", "UPDATE"],
                        ("sqlite", true, false) => vec!["SELECT"],
                        other => unreachable!("{other:?}"),
                    }
                };
                for (case, statements) in &measured {
                    assert_eq!(statements, &expect(case), "{case}");
                    assert!(!statements.iter().any(|s| s.contains("FOR")), "{case}: {statements:?}");
                }
            }

            #[tokio::test]
            async fn the_history_row_costs_a_statement_only_where_update_cannot_insert() {
                let Some(pool) = pool(1).await else { return };
                invoice(&pool, 1, "issued").await;
                let rec = Recorder::default();
                let outcome = rec.record(Invoice::pay().apply(&pool, 1i64)).await.unwrap();
                assert!(outcome.is_applied());
                let applied = rec.take();
                let noop = rec.record(Invoice::pay().apply(&pool, 1i64)).await.unwrap();
                assert!(noop.is_noop());
                let noop = rec.take();
                eprintln!("{} with history: Applied {applied:?}, AlreadyApplied {noop:?}", DB::BACKEND);
                match DB::BACKEND {
                    "postgres" => {
                        assert_eq!(applied, ["WITH"]);
                        assert_eq!(noop, ["WITH"]);
                    }
                    // sqlx-sqlite runs BEGIN IMMEDIATE / COMMIT without
                    // logging them; the history test below proves the
                    // atomicity.
                    "sqlite" => {
                        assert_eq!(applied, ["UPDATE", "INSERT"]);
                        assert_eq!(noop, ["UPDATE", "SELECT"]);
                    }
                    _ => {
                        assert_eq!(applied, ["BEGIN", "UPDATE", "INSERT", "COMMIT"]);
                        assert_eq!(noop, ["BEGIN", "UPDATE", "SELECT", "COMMIT"]);
                    }
                }
                assert_eq!(history(&pool, 1).await, ["pay:issued->paid"]);
            }

            #[tokio::test]
            async fn a_failed_history_insert_leaves_the_row_unchanged() {
                let Some(pool) = pool(1).await else { return };
                invoice(&pool, 1, "issued").await;
                DB::exec(&pool, "DROP TABLE invoice_history").await;
                let error = Invoice::pay().apply(&pool, 1i64).await.unwrap_err();
                assert!(matches!(error, Error::Database(_)), "{error:?}");
                assert_eq!(status(&pool, 1).await, "issued");
                let mut tx = pool.begin().await.unwrap();
                assert!(Invoice::pay().apply(&mut tx, 1i64).await.is_err());
                if DB::BACKEND != "postgres" {
                    // MySQL and SQLite ran the update and the insert under a
                    // savepoint: the caller's transaction is still usable and
                    // holds no half-applied change.
                    tx.commit().await.unwrap();
                    assert_eq!(status(&pool, 1).await, "issued");
                }
            }

            #[tokio::test]
            async fn extra_assignments_are_made_by_the_same_update() {
                let Some(pool) = pool(1).await else { return };
                invoice(&pool, 1, "issued").await;
                invoice(&pool, 2, "draft").await;
                assert!(Invoice::pay().apply(&pool, 1i64).await.unwrap().is_applied());
                assert!(Invoice::pay().apply(&pool, 2i64).await.unwrap().is_rejected());
                let paid = |id| {
                    let pool = pool.clone();
                    async move {
                        DB::count(&pool, &format!("SELECT COUNT(*) FROM invoices WHERE id = {id} AND paid_at IS NOT NULL")).await
                    }
                };
                assert_eq!(paid(1).await, 1);
                assert_eq!(paid(2).await, 0);
            }

            #[tokio::test]
            async fn connections_and_transactions_are_executors_too() {
                let Some(pool) = pool(2).await else { return };
                invoice(&pool, 1, "draft").await;
                invoice(&pool, 2, "draft").await;
                let mut conn = pool.acquire().await.unwrap();
                assert!(Invoice::issue().apply(&mut *conn, 1i64).await.unwrap().is_applied());
                assert!(Invoice::issue().apply(&mut conn, 1i64).await.unwrap().is_noop());
                drop(conn);
                let mut tx = pool.begin().await.unwrap();
                assert!(Invoice::issue().apply(&mut tx, 2i64).await.unwrap().is_applied());
                assert!(Invoice::pay().apply(&mut *tx, 2i64).await.unwrap().is_applied());
                tx.commit().await.unwrap();
                assert_eq!(status(&pool, 2).await, "paid");
                assert_eq!(history(&pool, 2).await, ["issue:draft->issued", "pay:issued->paid"]);
            }

            #[tokio::test]
            async fn a_rolled_back_outer_transaction_leaves_row_and_history_unchanged() {
                let Some(pool) = pool(2).await else { return };
                invoice(&pool, 1, "issued").await;
                let mut tx = pool.begin().await.unwrap();
                assert_eq!(
                    Invoice::pay().apply(&mut tx, 1i64).await.unwrap(),
                    Outcome::Applied { from: Invoice::Issued, to: Invoice::Paid }
                );
                tx.rollback().await.unwrap();
                assert_eq!(status(&pool, 1).await, "issued");
                assert!(history(&pool, 1).await.is_empty());
                // The row is still there to be paid, once.
                assert!(Invoice::pay().apply(&pool, 1i64).await.unwrap().is_applied());
                assert_eq!(history(&pool, 1).await, ["pay:issued->paid"]);
            }

            #[tokio::test]
            async fn a_handler_error_rolls_back_the_state_and_the_handler_writes() {
                let Some(pool) = pool(2).await else { return };
                invoice(&pool, 1, "issued").await;
                let declining = Charge { decline: true, ..Charge::default() };
                match Invoice::pay().apply_with(&pool, 1i64, &declining).await {
                    Err(HandlerError::Handler(e)) => assert_eq!(e, "card declined"),
                    other => panic!("expected the handler's error, got {other:?}"),
                }
                assert_eq!(declining.runs.load(Ordering::SeqCst), 1);
                assert_eq!(status(&pool, 1).await, "issued");
                assert_eq!(charges(&pool, 1).await, 0);
                assert!(history(&pool, 1).await.is_empty());

                let charge = Charge::default();
                assert!(Invoice::pay().apply_with(&pool, 1i64, &charge).await.unwrap().is_applied());
                assert!(Invoice::pay().apply_with(&pool, 1i64, &charge).await.unwrap().is_noop());
                assert_eq!(charge.runs.load(Ordering::SeqCst), 1);
                assert_eq!(charges(&pool, 1).await, 1);
            }

            #[tokio::test]
            async fn handlers_in_the_callers_transaction_commit_with_it() {
                let Some(pool) = pool(2).await else { return };
                invoice(&pool, 1, "issued").await;
                invoice(&pool, 2, "issued").await;
                let charge = Charge::default();
                let declining = Charge { decline: true, ..Charge::default() };
                let mut tx = pool.begin().await.unwrap();
                assert!(Invoice::pay().apply_with_in(&mut tx, 1i64, &charge).await.unwrap().is_applied());
                assert!(matches!(
                    Invoice::pay().apply_with_in(&mut tx, 2i64, &declining).await,
                    Err(HandlerError::Handler(_))
                ));
                // The failed handler's savepoint is gone; the transaction goes on.
                assert!(Invoice::pay().apply_with_in(&mut tx, 1i64, &charge).await.unwrap().is_noop());
                tx.commit().await.unwrap();
                assert_eq!((status(&pool, 1).await, status(&pool, 2).await), ("paid".into(), "issued".into()));
                assert_eq!((charges(&pool, 1).await, charges(&pool, 2).await), (1, 0));
                assert_eq!(history(&pool, 1).await, ["pay:issued->paid"]);
                assert!(history(&pool, 2).await.is_empty());
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sixty_four_racing_duplicates_apply_once() {
                let Some(pool) = pool(64).await else { return };
                invoice(&pool, 1, "issued").await;
                let charge = Arc::new(Charge::default());
                let barrier = Arc::new(tokio::sync::Barrier::new(64));
                let tasks: Vec<_> = (0..64)
                    .map(|_| {
                        let (pool, charge, barrier) = (pool.clone(), charge.clone(), barrier.clone());
                        tokio::spawn(async move {
                            let conn = pool.acquire().await.unwrap();
                            barrier.wait().await;
                            drop(conn);
                            Invoice::pay().apply_with(&pool, 1i64, &*charge).await.unwrap()
                        })
                    })
                    .collect();
                let outcomes: Vec<_> = futures::future::join_all(tasks)
                    .await
                    .into_iter()
                    .map(Result::unwrap)
                    .collect();
                assert_eq!(tally(&outcomes), [1, 63, 0, 0], "{outcomes:?}");
                assert_eq!(charge.runs.load(Ordering::SeqCst), 1);
                assert_eq!(charges(&pool, 1).await, 1);
                assert_eq!(history(&pool, 1).await, ["pay:issued->paid"]);
                assert_eq!(status(&pool, 1).await, "paid");
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn pay_and_void_racing_from_the_same_state_have_one_winner() {
                let Some(pool) = pool(32).await else { return };
                for id in 0..16 {
                    invoice(&pool, id, "issued").await;
                }
                let tasks: Vec<_> = (0..16i64)
                    .flat_map(|id| [(id, Invoice::pay()), (id, Invoice::void())])
                    .map(|(id, t)| {
                        let pool = pool.clone();
                        tokio::spawn(async move { (id, t.apply(&pool, id).await.unwrap()) })
                    })
                    .collect();
                let outcomes: Vec<_> = futures::future::join_all(tasks)
                    .await
                    .into_iter()
                    .map(Result::unwrap)
                    .collect();
                for id in 0..16 {
                    let mine: Vec<_> = outcomes.iter().filter(|(i, _)| *i == id).map(|(_, o)| *o).collect();
                    let winner = mine.iter().find_map(|o| match o {
                        Outcome::Applied { from: Invoice::Issued, to } => Some(*to),
                        _ => None,
                    });
                    let winner = winner.unwrap_or_else(|| panic!("no winner for {id}: {mine:?}"));
                    assert_eq!(tally(&mine), [1, 0, 1, 0], "{id}: {mine:?}");
                    assert!(mine.contains(&Outcome::Rejected { current: winner }), "{id}: {mine:?}");
                    assert_eq!(status(&pool, id).await, winner.as_str());
                    assert_eq!(history(&pool, id).await.len(), 1);
                }
            }

            #[tokio::test]
            async fn apply_many_reports_an_outcome_per_key() {
                let Some(pool) = pool(1).await else { return };
                for (id, state) in [(1, "draft"), (2, "issued"), (3, "paid"), (4, "void"), (5, "draft")] {
                    invoice(&pool, id, state).await;
                }
                use Invoice::*;
                let keys = [1i64, 2, 3, 4, 99, 2, 5];
                let rec = Recorder::default();
                let outcomes = rec.record(Invoice::void().apply_many(&pool, &keys)).await.unwrap();
                assert_eq!(
                    outcomes,
                    [
                        Outcome::Applied { from: Draft, to: Void },
                        Outcome::Applied { from: Issued, to: Void },
                        Outcome::Rejected { current: Paid },
                        Outcome::AlreadyApplied { state: Void },
                        Outcome::NotFound,
                        Outcome::AlreadyApplied { state: Void },
                        Outcome::Applied { from: Draft, to: Void },
                    ]
                );
                let statements = rec.take();
                eprintln!("{} apply_many of 7 keys: {statements:?}", DB::BACKEND);
                match DB::BACKEND {
                    "postgres" => assert_eq!(statements, ["WITH"]),
                    // sqlx-sqlite does not log BEGIN / COMMIT; the read is a WITH ... VALUES join.
                    "sqlite" => assert_eq!(statements, ["WITH", "UPDATE", "INSERT", "INSERT", "UPDATE", "INSERT"]),
                    _ => assert_eq!(
                        statements,
                        ["BEGIN", "SELECT", "UPDATE", "INSERT", "INSERT", "UPDATE", "INSERT", "COMMIT"]
                    ),
                }
                assert_eq!(history(&pool, 1).await, ["void:draft->void"]);
                assert_eq!(history(&pool, 2).await, ["void:issued->void"]);
                assert_eq!(history(&pool, 5).await, ["void:draft->void"]);
                assert!(history(&pool, 3).await.is_empty());

                for (id, state) in [(11, "draft"), (12, "issued")] {
                    invoice(&pool, id, state).await;
                }
                let bare = rec.record(Bare::void().apply_many(&pool, &[11i64, 12, 98])).await.unwrap();
                assert_eq!(tally(&bare), [2, 0, 0, 1]);
                let statements = rec.take();
                eprintln!("{} apply_many of 3 keys without history: {statements:?}", DB::BACKEND);
                match DB::BACKEND {
                    "postgres" => assert_eq!(statements, ["WITH"]),
                    "sqlite" => assert_eq!(statements, ["WITH", "UPDATE", "UPDATE"]),
                    _ => assert_eq!(statements, ["BEGIN", "SELECT", "UPDATE", "UPDATE", "COMMIT"]),
                }
                assert!(Bare::void().apply_many::<DB, i64>(&pool, &[]).await.unwrap().is_empty());
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn concurrent_batches_apply_each_key_once() {
                let Some(pool) = pool(8).await else { return };
                for id in 0..10 {
                    invoice(&pool, id, if id % 2 == 0 { "draft" } else { "issued" }).await;
                }
                let keys: Vec<i64> = (0..10).collect();
                let tasks: Vec<_> = (0..8)
                    .map(|i| {
                        let pool = pool.clone();
                        let mut keys = keys.clone();
                        keys.rotate_left(i);
                        tokio::spawn(async move { Invoice::void().apply_many(&pool, &keys).await.unwrap() })
                    })
                    .collect();
                let outcomes: Vec<_> = futures::future::join_all(tasks)
                    .await
                    .into_iter()
                    .flat_map(Result::unwrap)
                    .collect();
                assert_eq!(tally(&outcomes), [10, 70, 0, 0], "{outcomes:?}");
                for id in 0..10 {
                    assert_eq!(history(&pool, id).await.len(), 1, "{id}");
                    assert_eq!(status(&pool, id).await, "void");
                }
            }

            #[tokio::test]
            async fn text_and_uuid_keys_work() {
                let Some(pool) = pool(2).await else { return };
                DB::exec(&pool, "INSERT INTO accounts (code, state) VALUES ('acme', 'open'), ('o''brien', 'open')").await;
                use Account::*;
                assert_eq!(Account::freeze().apply(&pool, "acme").await.unwrap(), Outcome::Applied { from: Open, to: Frozen });
                assert_eq!(
                    Account::close().apply(&pool, String::from("acme")).await.unwrap(),
                    Outcome::Applied { from: Frozen, to: Closed }
                );
                assert_eq!(Account::close().apply(&pool, "o'brien").await.unwrap(), Outcome::Applied { from: Open, to: Closed });
                assert_eq!(
                    Account::close().apply_many(&pool, &["acme", "o'brien", "nobody"]).await.unwrap(),
                    [Outcome::AlreadyApplied { state: Closed }, Outcome::AlreadyApplied { state: Closed }, Outcome::NotFound]
                );
                let rows = DB::count(&pool, "SELECT COUNT(*) FROM account_history WHERE entity_key = 'acme'").await;
                assert_eq!(rows, 2);

                let id = uuid::Uuid::new_v4();
                sqlx::query(&format!("INSERT INTO jobs (id, state) VALUES ({}, 'queued')", DB::param(1)))
                    .bind(id)
                    .execute(&pool)
                    .await
                    .unwrap();
                assert_eq!(Job::start().apply(&pool, id).await.unwrap(), Outcome::Applied { from: Job::Queued, to: Job::Running });
                assert_eq!(Job::start().apply(&pool, id).await.unwrap(), Outcome::AlreadyApplied { state: Job::Running });
                assert_eq!(Job::start().apply(&pool, uuid::Uuid::new_v4()).await.unwrap(), Outcome::NotFound);
            }

            #[tokio::test]
            async fn history_schema_is_idempotent_plain_sql() {
                let Some(pool) = pool(1).await else { return };
                let statements = idem_sqlx::history::schema_for::<Invoice>(<DB as idem_sqlx::Backend>::DIALECT).unwrap();
                for statement in &statements {
                    DB::exec(&pool, statement).await;
                }
                assert!(idem_sqlx::history::schema_for::<Bare>(<DB as idem_sqlx::Backend>::DIALECT).is_none());
            }
        }
    };
}

suite!(sqlite, sqlx::Sqlite);
suite!(postgres, sqlx::Postgres);
suite!(mysql, sqlx::MySql);

/// Pays invoice `id` in a transaction that stays open (holding the row
/// lock) while `waiters` callers on a pool with isolation `level` run
/// `apply_with` under `policy`; then commits. Returns their results and
/// the retries.
async fn blocked_callers<DB>(
    pool: &Pool<DB>,
    level: &'static str,
    id: i64,
    waiters: usize,
    policy: RetryPolicy,
) -> (Vec<Result<Outcome<Invoice>, HandlerError<String>>>, u32)
where
    DB: Locking,
    i64: idem_sqlx::Key<DB>,
    for<'c> &'c mut sqlx::Transaction<'static, DB>: sqlx::Acquire<'c, Database = DB>,
{
    struct Never;
    #[async_trait]
    impl<DB: idem_sqlx::Backend> TransitionHandler<Invoice, DB, i64> for Never
    where
        i64: idem_sqlx::Key<DB>,
    {
        type Error = String;
        async fn on_applied(
            &self,
            _: &mut DB::Connection,
            change: Change<'_, Invoice, i64>,
        ) -> Result<(), String> {
            panic!("the handler ran for {change:?}, but the holder applied the change")
        }
    }
    invoice(pool, id, "issued").await;
    let iso = DB::pool_with_isolation(pool, waiters as u32, level).await;
    let mut holder = pool.begin().await.unwrap();
    assert!(Invoice::pay()
        .apply(&mut holder, id)
        .await
        .unwrap()
        .is_applied());
    let rec = Recorder::default();
    let tasks: Vec<_> = (0..waiters)
        .map(|_| {
            let (iso, rec) = (iso.clone(), rec.clone());
            tokio::spawn(async move {
                rec.record(Invoice::pay().apply_with_policy(&iso, id, &Never, policy))
                    .await
            })
        })
        .collect();
    until_waiting(pool, waiters as i64).await;
    holder.commit().await.unwrap();
    let outcomes = futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    (outcomes, rec.retries())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_callers_blocked_on_the_row_retry_exactly_where_the_isolation_level_requires() {
    let Some(pool) = sqlx::Postgres::pool(4).await else {
        return;
    };
    setup(&pool).await;
    let three = RetryPolicy {
        max_attempts: 3,
        ..RetryPolicy::default()
    };
    for (id, level, expected_retries) in [
        (1, "READ COMMITTED", 0),
        (2, "REPEATABLE READ", 8),
        (3, "SERIALIZABLE", 8),
    ] {
        let (results, retries) = blocked_callers(&pool, level, id, 8, three).await;
        eprintln!("postgres {level}: {retries} retries for 8 blocked callers");
        let outcomes: Vec<_> = results.into_iter().map(Result::unwrap).collect();
        assert_eq!(tally(&outcomes), [0, 8, 0, 0], "{level}: {outcomes:?}");
        assert_eq!(retries, expected_retries, "{level}");
        assert_eq!(history(&pool, id).await, ["pay:issued->paid"], "{level}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_retries_stop_at_the_policys_bound() {
    let Some(pool) = sqlx::Postgres::pool(4).await else {
        return;
    };
    setup(&pool).await;
    let (results, retries) =
        blocked_callers(&pool, "REPEATABLE READ", 1, 4, RetryPolicy::none()).await;
    assert_eq!(retries, 0);
    for result in results {
        match result {
            Err(HandlerError::Idem(Error::RetriesExhausted { attempts: 1, .. })) => {}
            other => panic!("expected RetriesExhausted after 1 attempt, got {other:?}"),
        }
    }
    assert_eq!(history(&pool, 1).await, ["pay:issued->paid"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mysql_callers_blocked_on_the_row_see_the_committed_state_without_retrying() {
    let Some(pool) = sqlx::MySql::pool(4).await else {
        return;
    };
    setup(&pool).await;
    for (id, level) in [(1, "REPEATABLE READ"), (2, "READ COMMITTED")] {
        let (results, retries) = blocked_callers(&pool, level, id, 8, RetryPolicy::default()).await;
        let outcomes: Vec<_> = results.into_iter().map(Result::unwrap).collect();
        assert_eq!(tally(&outcomes), [0, 8, 0, 0], "{level}: {outcomes:?}");
        assert_eq!(retries, 0, "{level}");
        assert_eq!(history(&pool, id).await, ["pay:issued->paid"], "{level}");
    }
}

#[tokio::test]
async fn mysql_follow_up_read_sees_the_committed_row_not_the_repeatable_read_snapshot() {
    let Some(pool) = sqlx::MySql::pool(4).await else {
        return;
    };
    setup(&pool).await;
    invoice(&pool, 1, "issued").await;
    invoice(&pool, 2, "issued").await;
    let iso = sqlx::MySql::pool_with_isolation(&pool, 2, "REPEATABLE READ").await;
    let mut tx = iso.begin().await.unwrap();
    async fn snapshot(tx: &mut sqlx::Transaction<'static, sqlx::MySql>, id: i64) -> String {
        let sql = format!("SELECT status FROM invoices WHERE id = {id}");
        sqlx::query_scalar(&sql).fetch_one(&mut **tx).await.unwrap()
    }
    assert_eq!(snapshot(&mut tx, 1).await, "issued");
    assert!(Bare::pay().apply(&pool, 1i64).await.unwrap().is_applied());
    assert!(Bare::void().apply(&pool, 2i64).await.unwrap().is_applied());
    // The transaction's plain reads still see its snapshot ...
    assert_eq!(snapshot(&mut tx, 1).await, "issued");
    assert_eq!(snapshot(&mut tx, 2).await, "issued");
    // ... but idem's follow-up read is a locking read of the committed row.
    let rec = Recorder::default();
    assert_eq!(
        rec.record(Bare::pay().apply(&mut tx, 1i64)).await.unwrap(),
        Outcome::AlreadyApplied { state: Bare::Paid }
    );
    assert_eq!(rec.take(), ["UPDATE", "SELECT"]);
    assert_eq!(
        Bare::pay().apply(&mut tx, 2i64).await.unwrap(),
        Outcome::Rejected {
            current: Bare::Void
        }
    );
    tx.commit().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_reads_again_when_the_row_moved_while_the_statement_waited() {
    let Some(pool) = sqlx::Postgres::pool(4).await else {
        return;
    };
    setup(&pool).await;
    invoice(&pool, 1, "draft").await;
    let iso = sqlx::Postgres::pool_with_isolation(&pool, 1, "READ COMMITTED").await;
    let mut holder = pool.begin().await.unwrap();
    assert!(Invoice::issue()
        .apply(&mut holder, 1i64)
        .await
        .unwrap()
        .is_applied());
    let rec = Recorder::default();
    let waiter = {
        let (iso, rec) = (iso.clone(), rec.clone());
        tokio::spawn(async move { rec.record(Invoice::void().apply(&iso, 1i64)).await.unwrap() })
    };
    until_waiting(&pool, 1).await;
    holder.commit().await.unwrap();
    // The statement saw `draft`, the row became `issued` (also a source of
    // `void`): the compare-and-set on `draft` missed, a fresh read found
    // `issued`, and the update ran again from there.
    assert_eq!(
        waiter.await.unwrap(),
        Outcome::Applied {
            from: Invoice::Issued,
            to: Invoice::Void
        }
    );
    assert_eq!(rec.take(), ["WITH", "SELECT", "WITH"]);
    assert_eq!(
        history(&pool, 1).await,
        ["issue:draft->issued", "void:issued->void"]
    );
}

#[tokio::test]
async fn postgres_conflict_in_a_callers_repeatable_read_transaction_is_retryable() {
    let Some(pool) = sqlx::Postgres::pool(4).await else {
        return;
    };
    setup(&pool).await;
    invoice(&pool, 1, "issued").await;
    let iso = sqlx::Postgres::pool_with_isolation(&pool, 1, "REPEATABLE READ").await;
    let mut tx = iso.begin().await.unwrap();
    let seen: String = sqlx::query_scalar("SELECT status FROM invoices WHERE id = 1")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(seen, "issued");
    assert!(Invoice::void()
        .apply(&pool, 1i64)
        .await
        .unwrap()
        .is_applied());
    let error = Invoice::pay().apply(&mut tx, 1i64).await.unwrap_err();
    assert!(matches!(error, Error::Retryable(_)), "{error:?}");
    tx.rollback().await.unwrap();
    // Run again, the caller's transaction sees the winner.
    assert_eq!(
        Invoice::pay().apply(&iso, 1i64).await.unwrap(),
        Outcome::Rejected {
            current: Invoice::Void
        }
    );
}

/// Tickets stored in a native enum column (PostgreSQL `CREATE TYPE ... AS
/// ENUM`, MySQL `ENUM(...)`).
#[derive(StateMachine, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[state_machine(
    table = "tickets",
    column = "state",
    key = "id",
    history = "ticket_history"
)]
#[state_machine(transitions(hold: Open -> Pending, close: Open | Pending -> Closed))]
enum Ticket {
    #[state_machine(initial)]
    Open,
    Pending,
    Closed,
}

async fn native_enum_columns_work<DB>(pool: Pool<DB>, ddl: &[&str])
where
    DB: Db,
    i64: idem_sqlx::Key<DB>,
    for<'c> &'c Pool<DB>: sqlx::Acquire<'c, Database = DB>,
{
    for statement in ddl {
        DB::exec(&pool, statement).await;
    }
    assert!(idem_sqlx::history::install::<Ticket, DB>(&pool)
        .await
        .unwrap());
    DB::exec(
        &pool,
        "INSERT INTO tickets (id, state) VALUES (1, 'open'), (2, 'open'), (3, 'pending')",
    )
    .await;
    use Ticket::*;
    assert_eq!(
        Ticket::hold().apply(&pool, 1i64).await.unwrap(),
        Outcome::Applied {
            from: Open,
            to: Pending
        }
    );
    assert_eq!(
        Ticket::close().apply(&pool, 1i64).await.unwrap(),
        Outcome::Applied {
            from: Pending,
            to: Closed
        }
    );
    assert_eq!(
        Ticket::close().apply(&pool, 1i64).await.unwrap(),
        Outcome::AlreadyApplied { state: Closed }
    );
    assert_eq!(
        Ticket::hold().apply(&pool, 1i64).await.unwrap(),
        Outcome::Rejected { current: Closed }
    );
    assert_eq!(
        Ticket::close()
            .apply_many(&pool, &[2i64, 3, 1, 4])
            .await
            .unwrap(),
        [
            Outcome::Applied {
                from: Open,
                to: Closed
            },
            Outcome::Applied {
                from: Pending,
                to: Closed
            },
            Outcome::AlreadyApplied { state: Closed },
            Outcome::NotFound,
        ]
    );
    let rows = DB::count(
        &pool,
        "SELECT COUNT(*) FROM ticket_history WHERE from_state = 'pending' AND to_state = 'closed'",
    )
    .await;
    assert_eq!(rows, 2);
}

#[tokio::test]
async fn postgres_enum_columns_work() {
    let Some(pool) = sqlx::Postgres::pool(2).await else {
        return;
    };
    native_enum_columns_work(
        pool,
        &[
            "CREATE TYPE ticket_state AS ENUM ('open', 'pending', 'closed')",
            "CREATE TABLE tickets (id BIGINT PRIMARY KEY, state ticket_state NOT NULL)",
        ],
    )
    .await;
}

#[tokio::test]
async fn mysql_enum_columns_work() {
    let Some(pool) = sqlx::MySql::pool(2).await else {
        return;
    };
    native_enum_columns_work(
        pool,
        &["CREATE TABLE tickets (id BIGINT PRIMARY KEY, \
           state ENUM('open', 'pending', 'closed') NOT NULL)"],
    )
    .await;
}
