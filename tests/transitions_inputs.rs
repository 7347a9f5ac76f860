//! Transitions fed the inputs from the field of issue 10 (docs/guarantees.md,
//! "Inputs from the field"): a row whose state is NULL, batches past a
//! backend's bind-parameter limit, assignments that read a column the
//! statement writes, stored values a server mode could reinterpret and
//! schema-qualified tables. Each case is a plain generic `async fn`; the
//! macro at the end runs it on SQLite always and on PostgreSQL and
//! MySQL/MariaDB when `IDEM_TEST_POSTGRES` / `IDEM_TEST_MYSQL` are set
//! (always in CI).

mod common;
mod transitions_support;

use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use idem::prelude::*;
use idem_sqlx::{Error, HandlerError, Key};
use sqlx::{Acquire, Pool};
use transitions_support::{Db, Recorder};

// ---- a row whose state is NULL ---------------------------------------------

/// Issue 10 item 4's table: `inv (id BIGINT PRIMARY KEY, status TEXT)`.
#[derive(StateMachine, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[state_machine(table = "inv", column = "status", key = "id")]
#[state_machine(transitions(
    issue: Draft -> Issued,
    pay: Issued -> Paid,
    void: Draft | Issued -> Void,
))]
enum Inv {
    #[state_machine(initial)]
    Draft,
    Issued,
    Paid,
    Void,
}

/// The same table with a history: MySQL and SQLite apply inside a
/// transaction of their own.
#[derive(StateMachine, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[state_machine(table = "inv", column = "status", key = "id", history = "inv_history")]
#[state_machine(transitions(
    issue: Draft -> Issued,
    pay: Issued -> Paid,
    void: Draft | Issued -> Void,
))]
enum InvLogged {
    #[state_machine(initial)]
    Draft,
    Issued,
    Paid,
    Void,
}

/// `inv` with the rows `(id, status)`; `None` is NULL.
async fn inv<DB: Db>(pool: &Pool<DB>, rows: &[(i64, Option<&str>)]) {
    DB::exec(
        pool,
        "CREATE TABLE inv (id BIGINT PRIMARY KEY, status TEXT)",
    )
    .await;
    assert!(idem_sqlx::history::install::<InvLogged, DB>(pool)
        .await
        .unwrap());
    for (id, status) in rows {
        let status = status.map_or("NULL".to_owned(), |s| format!("'{s}'"));
        DB::exec(
            pool,
            &format!("INSERT INTO inv (id, status) VALUES ({id}, {status})"),
        )
        .await;
    }
}

/// The stored status of `inv` row `id` (`None`: NULL).
async fn inv_status<DB: Db>(pool: &Pool<DB>, id: i64) -> Option<String> {
    DB::text(pool, &format!("SELECT status FROM inv WHERE id = {id}")).await
}

async fn inv_history<DB: Db>(pool: &Pool<DB>) -> i64 {
    DB::count(pool, "SELECT COUNT(*) FROM inv_history").await
}

/// Panics unless `result` is `NullState` for `transition` of `type_name`.
fn assert_null_state<T: std::fmt::Debug>(
    result: Result<T, Error>,
    type_name: &str,
    transition: &str,
) {
    match result {
        Err(Error::Core(idem::Error::NullState {
            type_name: t,
            transition: n,
        })) if t == type_name && n == transition => {}
        other => panic!("{type_name}::{transition}: expected NullState, got {other:?}"),
    }
}

/// Panics unless `result` is `UnknownState` with the empty value.
fn assert_empty_state<T: std::fmt::Debug>(result: Result<T, Error>, what: &str) {
    match result {
        Err(Error::Core(idem::Error::UnknownState { value, .. })) if value.is_empty() => {}
        other => panic!("{what}: expected UnknownState(\"\"), got {other:?}"),
    }
}

/// Counts its runs; a NULL state must never reach it.
#[derive(Default)]
struct Runs(AtomicUsize);

#[async_trait]
impl<S: State, DB: idem_sqlx::Backend> TransitionHandler<S, DB, i64> for Runs
where
    i64: Key<DB>,
{
    type Error = String;

    async fn on_applied(
        &self,
        _: &mut DB::Connection,
        _: Change<'_, S, i64>,
    ) -> Result<(), String> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

fn idem_error<T>(result: Result<T, HandlerError<String>>) -> Result<T, Error> {
    result.map_err(|e| match e {
        HandlerError::Idem(e) => e,
        HandlerError::Handler(e) => panic!("the handler ran and failed: {e}"),
    })
}

/// Issue 10 item 4: `(1, NULL)` then `pay().apply(&pool, 1)`, and every
/// other single-row path, with and without a history table: `NullState`,
/// in the documented number of statements, nothing written. A missing row
/// is still `NotFound`.
async fn a_null_state_is_null_state_on_every_single_row_path<DB: Db>(pool: Pool<DB>)
where
    i64: Key<DB>,
{
    inv(&pool, &[(1, None)]).await;
    let rec = Recorder::default();
    for (t, multi) in [(Inv::pay(), false), (Inv::void(), true)] {
        assert_null_state(rec.record(t.apply(&pool, 1i64)).await, "Inv", t.name());
        let expected: &[&str] = match (DB::BACKEND, multi) {
            ("postgres", _) => &["WITH"],
            ("sqlite", true) => &["SELECT"],
            _ => &["UPDATE", "SELECT"],
        };
        assert_eq!(rec.take(), expected, "{} {}", DB::BACKEND, t.name());
        assert_eq!(t.apply(&pool, 2i64).await.unwrap(), Outcome::NotFound);
    }
    for t in [InvLogged::pay(), InvLogged::void()] {
        assert_null_state(t.apply(&pool, 1i64).await, "InvLogged", t.name());
        let mut conn = pool.acquire().await.unwrap();
        assert_null_state(t.apply(&mut conn, 1i64).await, "InvLogged", t.name());
        let mut tx = (&mut conn).begin().await.unwrap();
        assert_null_state(t.apply(&mut tx, 1i64).await, "InvLogged", t.name());
        tx.rollback().await.unwrap();
    }
    let runs = Runs::default();
    for t in [InvLogged::pay(), InvLogged::void()] {
        let name = t.name();
        assert_null_state(
            idem_error(t.apply_with(&pool, 1i64, &runs).await),
            "InvLogged",
            name,
        );
        let mut tx = pool.begin().await.unwrap();
        let result = t.apply_with_in(&mut tx, 1i64, &runs).await;
        assert_null_state(idem_error(result), "InvLogged", name);
        tx.rollback().await.unwrap();
        let mut conn = pool.acquire().await.unwrap();
        let result = t.apply_with_on(&mut *conn, 1i64, &runs).await;
        assert_null_state(idem_error(result), "InvLogged", name);
    }
    assert_eq!(runs.0.load(Ordering::SeqCst), 0);
    assert_eq!(inv_status(&pool, 1).await, None);
    assert_eq!(inv_history(&pool).await, 0);
}

/// A batch meeting a NULL state fails whole with `NullState` and moves
/// none of its rows, wherever the NULL row stands in it.
async fn a_batch_with_a_null_state_fails_whole_with_nothing_moved<DB: Db>(pool: Pool<DB>)
where
    i64: Key<DB>,
{
    inv(&pool, &[(1, None), (2, Some("issued")), (3, Some("draft"))]).await;
    for keys in [&[2i64, 1, 3][..], &[1], &[3, 2, 1, 99], &[1, 1]] {
        assert_null_state(Inv::void().apply_many(&pool, keys).await, "Inv", "void");
        assert_null_state(
            InvLogged::void().apply_many(&pool, keys).await,
            "InvLogged",
            "void",
        );
        assert_null_state(
            InvLogged::pay().apply_many(&pool, keys).await,
            "InvLogged",
            "pay",
        );
    }
    assert_eq!(inv_status(&pool, 1).await, None);
    assert_eq!(inv_status(&pool, 2).await.as_deref(), Some("issued"));
    assert_eq!(inv_status(&pool, 3).await.as_deref(), Some("draft"));
    assert_eq!(inv_history(&pool).await, 0);
    // Without the NULL row the same batch applies; a missing row is NotFound.
    let outcomes = InvLogged::void()
        .apply_many(&pool, &[2i64, 3, 99])
        .await
        .unwrap();
    assert_eq!(
        outcomes,
        [
            Outcome::Applied {
                from: InvLogged::Issued,
                to: InvLogged::Void
            },
            Outcome::Applied {
                from: InvLogged::Draft,
                to: InvLogged::Void
            },
            Outcome::NotFound,
        ]
    );
}

/// An empty string is a stored value that is no state: `UnknownState` with
/// the empty value on every path, never `NullState` or `NotFound`.
async fn an_empty_state_is_an_unknown_state_on_every_path<DB: Db>(pool: Pool<DB>)
where
    i64: Key<DB>,
{
    inv(&pool, &[(1, Some("")), (2, Some("issued"))]).await;
    let runs = Runs::default();
    for t in [InvLogged::pay(), InvLogged::void()] {
        assert_empty_state(t.apply(&pool, 1i64).await, t.name());
        assert_empty_state(idem_error(t.apply_with(&pool, 1i64, &runs).await), t.name());
        let mut tx = pool.begin().await.unwrap();
        assert_empty_state(
            idem_error(t.apply_with_in(&mut tx, 1i64, &runs).await),
            t.name(),
        );
        tx.rollback().await.unwrap();
        assert_empty_state(t.apply_many(&pool, &[2i64, 1]).await, t.name());
    }
    assert_eq!(runs.0.load(Ordering::SeqCst), 0);
    assert_eq!(inv_status(&pool, 1).await.as_deref(), Some(""));
    assert_eq!(inv_status(&pool, 2).await.as_deref(), Some("issued"));
    assert_eq!(inv_history(&pool).await, 0);
}

// ---- every case on every backend -------------------------------------------

macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        backend!(sqlite, sqlx::Sqlite: $($case),*);
        backend!(postgres, sqlx::Postgres: $($case),*);
        backend!(mysql, sqlx::MySql: $($case),*);
    };
}

macro_rules! backend {
    ($backend:ident, $db:ty: $($case:ident),*) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    if let Some(pool) = <$db as super::Db>::pool(4).await {
                        super::$case::<$db>(pool).await;
                    }
                }
            )*
        }
    };
}

suite!(
    a_null_state_is_null_state_on_every_single_row_path,
    a_batch_with_a_null_state_fails_whole_with_nothing_moved,
    an_empty_state_is_an_unknown_state_on_every_path,
);
