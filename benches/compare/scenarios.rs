//! Scenarios a-g of issue 7 on one backend: each pairs a hand-written
//! baseline with the idem call that does the same work, on the same table,
//! and checks the database after every round.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use idem::inbox::{Delivery, EventId};
use idem::keys::{Claim, Fingerprint, IdempotencyKey, KeyStore, Scope};
use idem::prelude::*;
use idem_sqlx::inbox::{Inbox, InboxHandler};
use idem_sqlx::keys::{Once, SqlKeyStore};
use idem_sqlx::Key;
use sqlx::Pool;

use crate::db::BenchDb;
use crate::report::{Goal, Row};
use crate::runner::{compare, Hook, Op, Side, Stats, Timing};

/// The bench's state machine: `issue` is a one-source transition, the
/// common case (a and b measure it; their baseline is its `UPDATE`).
#[derive(StateMachine, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[state_machine(table = "bench_invoices", column = "status", key = "id")]
#[state_machine(transitions(issue: Draft -> Issued, pay: Issued -> Paid))]
pub enum Invoice {
    #[state_machine(initial)]
    Draft,
    Issued,
    Paid,
}

/// Ids of the rows that stay `issued` (scenario b's no-ops).
const NOOP_BASE: i64 = 1_000_000;
/// `invoice_id` of the baseline's bare inserts in f, apart from idem's.
const BARE_BASE: i64 = 10_000_000;

/// How much data the scenarios prepare.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    /// Rows `0..moves` start each round in `draft` (a, c, d, e).
    pub moves: usize,
    /// Rows kept `issued` for the no-ops of b.
    pub noops: usize,
    /// Rows per `apply_many` batch (e).
    pub batch: usize,
    /// Completed idempotency keys replayed in f.
    pub replay_keys: usize,
}

/// Which scenarios to run and how.
pub struct Plan {
    pub timing: Timing,
    pub sizes: Sizes,
    pub scenarios: Vec<String>,
}

impl Plan {
    pub fn wants(&self, scenario: &str) -> bool {
        self.scenarios.iter().any(|s| s == scenario)
    }
}

/// One connection, one task; or 16 tasks sharing 8 connections.
#[derive(Debug, Clone, Copy)]
pub struct Mode {
    pub name: &'static str,
    pub pool: u32,
    pub tasks: usize,
}

pub const MODES: [Mode; 2] = [
    Mode {
        name: "1 task, pool of 1",
        pool: 1,
        tasks: 1,
    },
    Mode {
        name: "16 tasks, pool of 8",
        pool: 8,
        tasks: 16,
    },
];

fn op<F, Fut>(f: F) -> Op
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    Arc::new(move |i| Box::pin(f(i)))
}

fn hook<'a, F, Fut>(f: F) -> Hook<'a>
where
    F: Fn(usize) -> Fut + 'a,
    Fut: Future<Output = ()> + Send + 'a,
{
    Box::new(move |n| Box::pin(f(n)))
}

fn id(index: usize) -> i64 {
    i64::try_from(index).expect("row index fits i64")
}

/// The handler of d: the one-row insert, in idem's transaction.
struct RecordPayment;

#[async_trait]
impl<DB: BenchDb> TransitionHandler<Invoice, DB, i64> for RecordPayment
where
    i64: Key<DB>,
{
    type Error = sqlx::Error;

    async fn on_applied(
        &self,
        conn: &mut DB::Connection,
        change: Change<'_, Invoice, i64>,
    ) -> Result<(), sqlx::Error> {
        DB::insert_payment(conn, *change.key).await
    }
}

/// The handler of g: the one-row insert, in the inbox's transaction.
struct RecordEvent(i64);

#[async_trait]
impl<DB: BenchDb> InboxHandler<DB> for RecordEvent {
    type Output = ();
    type Error = sqlx::Error;

    async fn handle(&self, conn: &mut DB::Connection, _: &EventId) -> Result<(), sqlx::Error> {
        DB::insert_payment(conn, self.0).await
    }
}

/// Everything the scenarios of one backend and mode share.
pub struct Bench<'p, DB: BenchDb> {
    pub pool: &'p Pool<DB>,
    pub plan: &'p Plan,
    pub mode: Mode,
    pub count: bool,
}

impl<'p, DB: BenchDb> Bench<'p, DB>
where
    i64: Key<DB>,
    SqlKeyStore<DB>: KeyStore<Error = idem_sqlx::Error>,
{
    fn moves(&self) -> i64 {
        id(self.plan.sizes.moves)
    }

    async fn compare(&self, baseline: &Side<'_>, idem: &Side<'_>) -> (Stats, Stats) {
        self.compare_with(self.plan.timing, baseline, idem).await
    }

    async fn compare_with(
        &self,
        timing: Timing,
        baseline: &Side<'_>,
        idem: &Side<'_>,
    ) -> (Stats, Stats) {
        if !DB::SQL.maintenance.is_empty() {
            DB::exec(self.pool, DB::SQL.maintenance).await;
        }
        compare(&timing, self.mode.tasks, self.count, baseline, idem).await
    }

    fn row(&self, id: &'static str, title: &'static str, per_op: usize, goal: Goal) -> Row {
        Row {
            backend: DB::LABEL,
            mode: self.mode.name,
            id,
            title,
            per_op,
            goal,
            base: Stats::default(),
            idem: Stats::default(),
        }
    }

    /// Puts rows `0..moves` back in `draft` and empties the write tables.
    fn reset(&self) -> Hook<'p> {
        let pool = self.pool;
        let moves = self.moves();
        hook(move |_| async move {
            DB::reset_range(pool, "draft", 0, moves).await;
            DB::exec(pool, "DELETE FROM bench_payments").await;
        })
    }

    /// Checks that exactly `ops * per_op` rows moved and, with `payments`,
    /// that each move wrote one payment.
    fn moved(&self, per_op: usize, payments: bool) -> Hook<'p> {
        let pool = self.pool;
        let moves = self.moves();
        hook(move |ops| async move {
            let moved = DB::count_range(pool, "issued", 0, moves).await;
            assert_eq!(moved, id(ops * per_op), "{}: rows moved", DB::LABEL);
            if payments {
                let paid = DB::count(pool, "SELECT count(*) FROM bench_payments").await;
                assert_eq!(paid, id(ops), "{}: one payment per move", DB::LABEL);
            }
        })
    }

    fn apply_moves(&self) -> Op {
        let pool = self.pool.clone();
        op(move |i| {
            let pool = pool.clone();
            async move {
                match Invoice::issue().apply(&pool, id(i)).await {
                    Ok(Outcome::Applied { .. }) => {}
                    other => panic!("{}: apply of a draft row: {other:?}", DB::LABEL),
                }
            }
        })
    }

    /// a: `apply` that moves the row vs. the guarded `UPDATE`.
    pub async fn a(&self) -> Row {
        let pool = self.pool.clone();
        let baseline = Side {
            op: op(move |i| {
                let pool = pool.clone();
                async move {
                    let n = DB::guarded_update(&pool, id(i)).await;
                    assert_eq!(n, 1, "{}: baseline moved a draft row", DB::LABEL);
                }
            }),
            max_ops: self.plan.sizes.moves,
            prepare: self.reset(),
            verify: self.moved(1, false),
        };
        let idem = Side {
            op: self.apply_moves(),
            max_ops: self.plan.sizes.moves,
            prepare: self.reset(),
            verify: self.moved(1, false),
        };
        let mut row = self.row(
            "a",
            "apply (moves) vs guarded UPDATE",
            1,
            Goal::AtLeast(0.95),
        );
        (row.base, row.idem) = self.compare(&baseline, &idem).await;
        row
    }

    /// b: `apply` that is a no-op vs. the guarded `UPDATE` matching nothing.
    pub async fn b(&self) -> Row {
        let noops = id(self.plan.sizes.noops);
        let unchanged = || {
            let pool = self.pool;
            hook(move |_| async move {
                let issued = DB::count_range(pool, "issued", NOOP_BASE, NOOP_BASE + noops).await;
                assert_eq!(issued, noops, "{}: no-ops changed no row", DB::LABEL);
            })
        };
        let pool = self.pool.clone();
        let baseline = Side {
            op: op(move |i| {
                let pool = pool.clone();
                async move {
                    let n = DB::guarded_update(&pool, NOOP_BASE + id(i) % noops).await;
                    assert_eq!(n, 0, "{}: baseline no-op", DB::LABEL);
                }
            }),
            max_ops: usize::MAX,
            prepare: unchanged(),
            verify: unchanged(),
        };
        let pool = self.pool.clone();
        let idem = Side {
            op: op(move |i| {
                let pool = pool.clone();
                async move {
                    match Invoice::issue()
                        .apply(&pool, NOOP_BASE + id(i) % noops)
                        .await
                    {
                        Ok(Outcome::AlreadyApplied { .. }) => {}
                        other => panic!("{}: duplicate apply: {other:?}", DB::LABEL),
                    }
                }
            }),
            max_ops: usize::MAX,
            prepare: unchanged(),
            verify: unchanged(),
        };
        let mut row = self.row(
            "b",
            "apply (no-op) vs guarded UPDATE",
            1,
            Goal::AtLeast(0.95),
        );
        (row.base, row.idem) = self.compare(&baseline, &idem).await;
        row
    }

    /// c: the naive lock-then-update transaction vs. `apply`.
    pub async fn c(&self) -> Row {
        let pool = self.pool.clone();
        let baseline = Side {
            op: op(move |i| {
                let pool = pool.clone();
                async move {
                    assert!(
                        DB::naive_move(&pool, id(i)).await,
                        "{}: naive move",
                        DB::LABEL
                    );
                }
            }),
            max_ops: self.plan.sizes.moves,
            prepare: self.reset(),
            verify: self.moved(1, false),
        };
        let idem = Side {
            op: self.apply_moves(),
            max_ops: self.plan.sizes.moves,
            prepare: self.reset(),
            verify: self.moved(1, false),
        };
        let mut row = self.row(
            "c",
            "apply vs BEGIN; SELECT FOR UPDATE; UPDATE; COMMIT",
            1,
            Goal::Above,
        );
        (row.base, row.idem) = self.compare(&baseline, &idem).await;
        row
    }

    /// d: `apply_with` and a one-row handler vs. the same two statements
    /// in a hand-written transaction.
    pub async fn d(&self) -> Row {
        let pool = self.pool.clone();
        let baseline = Side {
            op: op(move |i| {
                let pool = pool.clone();
                async move {
                    let moved = DB::move_and_record(&pool, id(i)).await;
                    assert!(moved, "{}: baseline update + insert", DB::LABEL);
                }
            }),
            max_ops: self.plan.sizes.moves,
            prepare: self.reset(),
            verify: self.moved(1, true),
        };
        let pool = self.pool.clone();
        let idem = Side {
            op: op(move |i| {
                let pool = pool.clone();
                async move {
                    match Invoice::issue()
                        .apply_with(&pool, id(i), &RecordPayment)
                        .await
                    {
                        Ok(Outcome::Applied { .. }) => {}
                        other => panic!("{}: apply_with: {other:?}", DB::LABEL),
                    }
                }
            }),
            max_ops: self.plan.sizes.moves,
            prepare: self.reset(),
            verify: self.moved(1, true),
        };
        let mut row = self.row(
            "d",
            "apply_with + 1-row handler vs hand-written tx",
            1,
            Goal::AtLeast(0.95),
        );
        (row.base, row.idem) = self.compare(&baseline, &idem).await;
        row
    }

    /// e: `apply_many` over a batch vs. one `apply` per row.
    pub async fn e(&self) -> Row {
        let batch = self.plan.sizes.batch;
        let batches = self.plan.sizes.moves / batch;
        let pool = self.pool.clone();
        let baseline = Side {
            op: op(move |i| {
                let pool = pool.clone();
                async move {
                    for key in id(i * batch)..id((i + 1) * batch) {
                        match Invoice::issue().apply(&pool, key).await {
                            Ok(Outcome::Applied { .. }) => {}
                            other => panic!("{}: single apply: {other:?}", DB::LABEL),
                        }
                    }
                }
            }),
            max_ops: batches,
            prepare: self.reset(),
            verify: self.moved(batch, false),
        };
        let pool = self.pool.clone();
        let idem = Side {
            op: op(move |i| {
                let pool = pool.clone();
                async move {
                    let keys: Vec<i64> = (id(i * batch)..id((i + 1) * batch)).collect();
                    let outcomes = Invoice::issue()
                        .apply_many(&pool, &keys)
                        .await
                        .unwrap_or_else(|e| panic!("{}: apply_many: {e}", DB::LABEL));
                    assert_eq!(outcomes.len(), batch);
                    assert!(
                        outcomes.iter().all(Outcome::is_applied),
                        "{}: apply_many moved every draft row",
                        DB::LABEL
                    );
                }
            }),
            max_ops: batches,
            prepare: self.reset(),
            verify: self.moved(batch, false),
        };
        let mut row = self.row(
            "e",
            "apply_many vs single apply calls",
            batch,
            Goal::AtLeast(10.0),
        );
        let timing = self.plan.timing.heavy();
        (row.base, row.idem) = self.compare_with(timing, &baseline, &idem).await;
        row
    }

    /// f: the bare one-row insert vs. the same insert under an idempotency
    /// key (first execution, and the two replays).
    pub async fn f(&self) -> Vec<Row> {
        let pool = self.pool;
        let store = Arc::new(SqlKeyStore::new(self.pool.clone()));
        let scope = Arc::new(Scope::new("bench", "payments").expect("valid scope"));
        let fingerprint = Fingerprint::of_request("POST", "/payments", b"amount=100");
        let keys: Arc<Vec<IdempotencyKey>> = Arc::new(
            (0..self.plan.sizes.moves.max(self.plan.sizes.replay_keys))
                .map(|i| IdempotencyKey::new(format!("order-{i}")).expect("valid key"))
                .collect(),
        );

        let bare_pool = self.pool.clone();
        let bare = || Side {
            op: op({
                let pool = bare_pool.clone();
                move |i| {
                    let pool = pool.clone();
                    async move { DB::bare_insert(&pool, BARE_BASE + id(i)).await }
                }
            }),
            max_ops: self.plan.sizes.moves,
            prepare: hook(move |_| async move {
                DB::exec(
                    pool,
                    "DELETE FROM bench_payments WHERE invoice_id >= 10000000",
                )
                .await;
            }),
            verify: hook(move |ops| async move {
                let n = DB::count(
                    pool,
                    "SELECT count(*) FROM bench_payments WHERE invoice_id >= 10000000",
                )
                .await;
                assert_eq!(n, id(ops), "{}: one bare insert per op", DB::LABEL);
            }),
        };

        // First execution: a fresh key per operation.
        let first = Side {
            op: op({
                let (store, scope, keys) = (store.clone(), scope.clone(), keys.clone());
                move |i| {
                    let (store, scope, keys) = (store.clone(), scope.clone(), keys.clone());
                    async move {
                        let once =
                            DB::run_once(&store, &scope, &keys[i], &fingerprint, id(i)).await;
                        assert!(
                            matches!(once, Once::Ran(_)),
                            "{}: first run: {once:?}",
                            DB::LABEL
                        );
                    }
                }
            }),
            max_ops: self.plan.sizes.moves,
            prepare: hook(move |_| async move {
                DB::exec(pool, "DELETE FROM bench_payments; DELETE FROM idem_keys").await;
            }),
            verify: hook(move |ops| async move {
                let paid = DB::count(pool, "SELECT count(*) FROM bench_payments").await;
                let done =
                    DB::count(pool, "SELECT count(*) FROM idem_keys WHERE state = 'done'").await;
                assert_eq!(
                    (paid, done),
                    (id(ops), id(ops)),
                    "{}: one run per key",
                    DB::LABEL
                );
            }),
        };
        let mut first_row = self.row(
            "f",
            "run_once first execution vs bare INSERT",
            1,
            Goal::Reported,
        );
        (first_row.base, first_row.idem) = self.compare(&bare(), &first).await;

        // Replays: keys 0..replay_keys completed once, then replayed.
        let replay_keys = self.plan.sizes.replay_keys;
        DB::exec(pool, "DELETE FROM bench_payments; DELETE FROM idem_keys").await;
        for (i, key) in keys.iter().take(replay_keys).enumerate() {
            let once = DB::run_once(&store, &scope, key, &fingerprint, id(i)).await;
            assert!(
                matches!(once, Once::Ran(_)),
                "{}: completing key {key}",
                DB::LABEL
            );
        }
        let untouched = move || {
            hook(move |_| async move {
                let paid = DB::count(
                    pool,
                    "SELECT count(*) FROM bench_payments WHERE invoice_id < 10000000",
                )
                .await;
                let done =
                    DB::count(pool, "SELECT count(*) FROM idem_keys WHERE state = 'done'").await;
                assert_eq!(
                    (paid, done),
                    (id(replay_keys), id(replay_keys)),
                    "{}: replays ran nothing",
                    DB::LABEL
                );
            })
        };
        let claim_replay = Side {
            op: op({
                let (store, scope, keys) = (store.clone(), scope.clone(), keys.clone());
                move |i| {
                    let (store, scope, keys) = (store.clone(), scope.clone(), keys.clone());
                    async move {
                        let claim = store
                            .claim(
                                &scope,
                                &keys[i % replay_keys],
                                &fingerprint,
                                Duration::from_secs(60),
                            )
                            .await
                            .unwrap_or_else(|e| panic!("{}: claim: {e}", DB::LABEL));
                        assert!(
                            matches!(claim, Claim::Replay(_)),
                            "{}: replay: {claim:?}",
                            DB::LABEL
                        );
                    }
                }
            }),
            max_ops: usize::MAX,
            prepare: untouched(),
            verify: untouched(),
        };
        let mut claim_row = self.row(
            "f",
            "key replay (claim, as the layer does) vs bare INSERT",
            1,
            Goal::Statements(1.0),
        );
        (claim_row.base, claim_row.idem) = self.compare(&bare(), &claim_replay).await;

        let once_replay = Side {
            op: op({
                let (store, scope, keys) = (store.clone(), scope.clone(), keys.clone());
                move |i| {
                    let (store, scope, keys) = (store.clone(), scope.clone(), keys.clone());
                    async move {
                        let key = &keys[i % replay_keys];
                        let once = DB::run_once(&store, &scope, key, &fingerprint, id(i)).await;
                        assert!(
                            matches!(once, Once::Replayed(_)),
                            "{}: replay: {once:?}",
                            DB::LABEL
                        );
                    }
                }
            }),
            max_ops: usize::MAX,
            prepare: untouched(),
            verify: untouched(),
        };
        let mut once_row = self.row(
            "f",
            "key replay (run_once) vs bare INSERT",
            1,
            Goal::Statements(1.0),
        );
        (once_row.base, once_row.idem) = self.compare(&bare(), &once_replay).await;
        vec![first_row, claim_row, once_row]
    }

    /// g: inbox `process` vs. a hand-written marker-and-handle transaction.
    pub async fn g(&self) -> Row {
        let pool = self.pool;
        let events: Arc<Vec<EventId>> = Arc::new(
            (0..self.plan.sizes.moves)
                .map(|i| EventId::new(format!("evt-{i}")).expect("valid event id"))
                .collect(),
        );
        let side = |consumer: &'static str, op: Op| Side {
            op,
            max_ops: self.plan.sizes.moves,
            prepare: hook(move |_| async move {
                DB::exec(pool, "DELETE FROM bench_payments; DELETE FROM idem_inbox").await;
            }),
            verify: hook(move |ops| async move {
                let paid = DB::count(pool, "SELECT count(*) FROM bench_payments").await;
                let markers = DB::count_markers(pool, consumer).await;
                assert_eq!(
                    (paid, markers),
                    (id(ops), id(ops)),
                    "{}: one marker and one write per event",
                    DB::LABEL
                );
            }),
        };
        let baseline = side(
            "bench-hand",
            op({
                let (pool, events) = (self.pool.clone(), events.clone());
                move |i| {
                    let (pool, events) = (pool.clone(), events.clone());
                    async move {
                        let new =
                            DB::marker_and_record(&pool, "bench-hand", events[i].as_str(), id(i))
                                .await;
                        assert!(new, "{}: baseline marker was new", DB::LABEL);
                    }
                }
            }),
        );
        let inbox = Inbox::new(self.pool.clone(), "bench-idem").expect("valid consumer");
        let idem = side(
            "bench-idem",
            op(move |i| {
                let (inbox, events) = (inbox.clone(), events.clone());
                async move {
                    match inbox.process(&events[i], &RecordEvent(id(i))).await {
                        Ok(Delivery::Processed(())) => {}
                        other => panic!("{}: process: {other:?}", DB::LABEL),
                    }
                }
            }),
        );
        let mut row = self.row(
            "g",
            "inbox process vs hand-written marker tx",
            1,
            Goal::AtLeast(0.95),
        );
        (row.base, row.idem) = self.compare(&baseline, &idem).await;
        row
    }
}

/// Creates the tables and rows on a fresh database.
pub async fn setup<DB: BenchDb>(pool: &Pool<DB>, sizes: &Sizes) {
    DB::exec(pool, DB::SQL.schema).await;
    DB::install_idem(pool).await;
    let rows = |range: std::ops::Range<i64>, status: &'static str| {
        range
            .map(move |id| format!("({id}, '{status}')"))
            .collect::<Vec<_>>()
    };
    let all = rows(0..id(sizes.moves), "draft")
        .into_iter()
        .chain(rows(NOOP_BASE..NOOP_BASE + id(sizes.noops), "issued"));
    let all: Vec<String> = all.collect();
    for chunk in all.chunks(1000) {
        let sql = format!(
            "INSERT INTO bench_invoices (id, status) VALUES {}",
            chunk.join(", ")
        );
        DB::exec(pool, &sql).await;
    }
}
