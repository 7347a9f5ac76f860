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
use transitions_support::{Db, Recorder, Sessions};

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

/// The statements `rec` recorded, without the `SET`s of a connection the
/// pool opened meanwhile (sqlx's session setup, the harness's
/// `search_path`).
fn sent(rec: &Recorder) -> Vec<String> {
    let mut statements = rec.take();
    statements.retain(|s| s != "SET");
    statements
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
        assert_eq!(sent(&rec), expected, "{} {}", DB::BACKEND, t.name());
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

// ---- batches past a backend's bind-parameter limit -------------------------

/// How many keys one statement of `apply_many` binds on MySQL and SQLite
/// (documented on `TransitionExt::apply_many`).
const CHUNK: usize = 1_024;

/// Creates `inv` and inserts a row for every id of `ids` whose `state` is
/// `Some`, a thousand rows per statement.
async fn inv_rows<DB: Db>(
    pool: &Pool<DB>,
    ids: std::ops::Range<i64>,
    state: fn(i64) -> Option<&'static str>,
) {
    inv(pool, &[]).await;
    let rows: Vec<String> = ids
        .filter_map(|id| state(id).map(|s| format!("({id}, '{s}')")))
        .collect();
    for rows in rows.chunks(1_000) {
        let sql = format!("INSERT INTO inv (id, status) VALUES {}", rows.join(", "));
        DB::exec(pool, &sql).await;
    }
}

/// Six kinds of row in turn: draft, issued, paid, void, none, issued.
fn mixed(id: i64) -> Option<&'static str> {
    [
        Some("draft"),
        Some("issued"),
        Some("paid"),
        Some("void"),
        None,
        Some("issued"),
    ][id.rem_euclid(6) as usize]
}

/// What applying `t` to each key alone, in order, gives: the outcomes and
/// the rows each source state moves (to count the `UPDATE`s per source).
fn alone<S: State>(
    t: &Transition<S>,
    state: fn(i64) -> Option<&'static str>,
    keys: &[i64],
) -> (Vec<Outcome<S>>, Vec<usize>) {
    let mut rows: std::collections::HashMap<i64, Option<S>> = std::collections::HashMap::new();
    let mut moved = vec![0; t.sources().len()];
    let outcomes = keys
        .iter()
        .map(|key| {
            let row = rows
                .entry(*key)
                .or_insert_with(|| state(*key).map(|s| S::parse(s).unwrap()));
            match *row {
                Some(from) if t.allows(from) => {
                    moved[t.source_index(from).unwrap()] += 1;
                    *row = Some(t.target());
                    t.applied_from(from)
                }
                current => t.settled(current).unwrap(),
            }
        })
        .collect();
    (outcomes, moved)
}

/// `size` keys from `start`, with the first key given again at the chunk
/// border and at the end (a repeat across chunks), and one key again
/// after it was rejected.
fn batch(start: i64, size: usize) -> Vec<i64> {
    let mut keys: Vec<i64> = (start..start + size as i64 - 3).collect();
    let rejected = keys
        .iter()
        .copied()
        .find(|k| mixed(*k) == Some("paid"))
        .unwrap();
    keys.insert(CHUNK.min(keys.len()), start);
    keys.push(rejected);
    keys.push(start);
    assert_eq!(keys.len(), size);
    keys
}

/// Applies `void` to `keys` and checks every outcome, every row and the
/// statements: per `CHUNK` distinct keys a read and per source state a
/// `UPDATE` per `CHUNK` of its rows on MySQL and SQLite, one statement on
/// PostgreSQL.
async fn void_matches_applying_each_key_alone<DB: Db>(pool: &Pool<DB>, keys: &[i64])
where
    i64: Key<DB>,
{
    let rec = Recorder::default();
    let outcomes = rec
        .record(Inv::void().apply_many(pool, keys))
        .await
        .unwrap();
    let (expected, moved) = alone(Inv::void(), mixed, keys);
    assert_eq!(outcomes.len(), keys.len());
    for (i, (got, want)) in outcomes.iter().zip(&expected).enumerate() {
        assert_eq!(got, want, "{} keys: key {} at {i}", keys.len(), keys[i]);
    }
    let statements = sent(&rec);
    let reads = statements
        .iter()
        .filter(|s| *s == "WITH" || *s == "SELECT")
        .count();
    let updates = statements.iter().filter(|s| *s == "UPDATE").count();
    if DB::BACKEND == "postgres" {
        assert_eq!(statements, ["WITH"], "{} keys", keys.len());
    } else {
        let distinct = keys.iter().collect::<std::collections::HashSet<_>>().len();
        assert_eq!(
            reads,
            distinct.div_ceil(CHUNK),
            "{} keys: {statements:?}",
            keys.len()
        );
        let per_source: usize = moved.iter().map(|n| n.div_ceil(CHUNK)).sum();
        assert_eq!(updates, per_source, "{} keys: {statements:?}", keys.len());
    }
    let moved_rows = DB::count(
        pool,
        &format!(
            "SELECT COUNT(*) FROM inv WHERE status = 'void' AND id BETWEEN {} AND {}",
            keys.iter().min().unwrap(),
            keys.iter().max().unwrap()
        ),
    )
    .await;
    let void_before = keys
        .iter()
        .collect::<std::collections::HashSet<_>>()
        .into_iter()
        .filter(|k| mixed(**k) == Some("void"))
        .count();
    assert_eq!(
        moved_rows as usize,
        void_before + moved.iter().sum::<usize>()
    );
}

/// Issue 10 item 3: 32,767 rows in `issued`, then `apply_many(pay,
/// 1..=32767)`: `Ok` with 32,767 `Applied` outcomes.
async fn a_batch_of_32767_issued_invoices_is_paid_whole<DB: Db>(pool: Pool<DB>)
where
    i64: Key<DB>,
{
    inv_rows(&pool, 1..32_768, |_| Some("issued")).await;
    let keys: Vec<i64> = (1..=32_767).collect();
    let outcomes = Inv::pay().apply_many(&pool, &keys).await.unwrap();
    assert_eq!(outcomes.len(), 32_767);
    let paid = Outcome::Applied {
        from: Inv::Issued,
        to: Inv::Paid,
    };
    assert!(outcomes.iter().all(|o| *o == paid));
    assert_eq!(
        DB::count(&pool, "SELECT COUNT(*) FROM inv WHERE status = 'paid'").await,
        32_767
    );
}

/// Batches one key below, at and above the chunk size, with repeats across
/// the chunk border: each outcome as if applied alone.
async fn batches_around_the_chunk_size_get_each_outcome_as_if_applied_alone<DB: Db>(pool: Pool<DB>)
where
    i64: Key<DB>,
{
    let sizes = [CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK + 1];
    inv_rows(&pool, 0..sizes.iter().sum::<usize>() as i64, mixed).await;
    let mut start = 0;
    for size in sizes {
        void_matches_applying_each_key_alone(&pool, &batch(start, size)).await;
        start += size as i64;
    }
}

/// Batches one key below, at and above the most keys one statement could
/// bind (SQLite 16,383 as the batch `UPDATE` binds each key twice, MySQL
/// 21,845 as the read binds each key three times, PostgreSQL 65,535
/// although its batch binds one array): each outcome as if applied alone.
async fn batches_around_the_bind_parameter_limit_get_each_outcome_as_if_applied_alone<DB: Db>(
    pool: Pool<DB>,
) where
    i64: Key<DB>,
{
    let limit = DB::UNSPLIT_KEYS;
    let sizes = [limit - 1, limit, limit + 1];
    inv_rows(&pool, 0..sizes.iter().sum::<usize>() as i64, mixed).await;
    let mut start = 0;
    for size in sizes {
        void_matches_applying_each_key_alone(&pool, &batch(start, size)).await;
        start += size as i64;
    }
}

/// A batch spanning chunks writes one history row per moved key, and a
/// NULL or unknown state in its last chunk fails it whole: nothing moved
/// in the chunks before.
async fn a_batch_spanning_chunks_is_atomic_and_writes_its_history<DB: Db>(pool: Pool<DB>)
where
    i64: Key<DB>,
{
    let n = 2 * CHUNK as i64 + 10;
    inv_rows(&pool, 0..n, |_| Some("issued")).await;
    DB::exec(
        &pool,
        &format!("UPDATE inv SET status = NULL WHERE id = {}", n - 1),
    )
    .await;
    DB::exec(
        &pool,
        &format!("UPDATE inv SET status = 'lost' WHERE id = {}", n - 2),
    )
    .await;
    let keys: Vec<i64> = (0..n).collect();
    // The NULL row last, the unknown one left out; then the other way round.
    let null_last: Vec<i64> = keys.iter().copied().filter(|k| *k != n - 2).collect();
    let result = InvLogged::pay().apply_many(&pool, &null_last).await;
    assert_null_state(result, "InvLogged", "pay");
    match InvLogged::pay()
        .apply_many(&pool, &keys[..keys.len() - 1])
        .await
    {
        Err(Error::Core(idem::Error::UnknownState { value, .. })) => assert_eq!(value, "lost"),
        other => panic!("expected UnknownState, got {other:?}"),
    }
    let issued = DB::count(&pool, "SELECT COUNT(*) FROM inv WHERE status = 'issued'").await;
    assert_eq!(issued, n - 2);
    assert_eq!(
        DB::count(&pool, "SELECT COUNT(*) FROM inv_history").await,
        0
    );
    let good = &keys[..keys.len() - 2];
    let outcomes = InvLogged::pay().apply_many(&pool, good).await.unwrap();
    assert!(outcomes.iter().all(Outcome::is_applied));
    assert_eq!(
        DB::count(&pool, "SELECT COUNT(*) FROM inv_history").await,
        n - 2
    );
}

/// Issue 10 item 3 exactly as reported: on `sqlite::memory:`.
#[tokio::test]
async fn sqlite_in_memory_a_batch_of_32767_issued_invoices_is_paid_whole() {
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect("sqlite::memory:")
        .await
        .unwrap();
    a_batch_of_32767_issued_invoices_is_paid_whole::<sqlx::Sqlite>(pool).await;
}

// ---- assignments that read a column the statement writes -----------------

/// Issue 10 item 7's input: `close: Open -> Closed` records the state it
/// closed from.
#[derive(StateMachine, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[state_machine(table = "accts", column = "status", key = "id")]
#[state_machine(transitions(close: Open -> Closed))]
#[state_machine(assign(close, closed_from = "status"))]
enum Acct {
    #[state_machine(initial)]
    Open,
    Closed,
}

/// The same with several sources (MySQL reports the source through
/// `LAST_INSERT_ID` inside the state column's assignment) and a history.
#[derive(StateMachine, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[state_machine(
    table = "accts",
    column = "status",
    key = "id",
    history = "acct_history"
)]
#[state_machine(transitions(freeze: Open -> Frozen, close: Open | Frozen -> Closed))]
#[state_machine(assign(
    close,
    closed_from = "status",
    note = "CASE status WHEN 'frozen' THEN 'thawed' ELSE 'direct' END"
))]
enum AcctFrozen {
    #[state_machine(initial)]
    Open,
    Frozen,
    Closed,
}

/// `closed_from` and `note` of account `id`.
async fn closed<DB: Db>(pool: &Pool<DB>, id: i64) -> (Option<String>, Option<String>) {
    let read = |column: &str| format!("SELECT {column} FROM accts WHERE id = {id}");
    (
        DB::text(pool, &read("closed_from")).await,
        DB::text(pool, &read("note")).await,
    )
}

/// An extra assignment that reads the state column gets the state before
/// the transition on every backend (MySQL evaluates `SET` left to right,
/// so the state column is assigned last), through `apply` and
/// `apply_many`, with one source and with several.
async fn an_assignment_reading_the_state_column_gets_the_state_before<DB: Db>(pool: Pool<DB>)
where
    i64: Key<DB>,
{
    DB::exec(
        &pool,
        "CREATE TABLE accts (id BIGINT PRIMARY KEY, status VARCHAR(16) NOT NULL, \
         closed_from VARCHAR(16), note VARCHAR(16))",
    )
    .await;
    assert!(idem_sqlx::history::install::<AcctFrozen, DB>(&pool)
        .await
        .unwrap());
    DB::exec(
        &pool,
        "INSERT INTO accts (id, status) VALUES (1, 'open'), (2, 'open'), (3, 'frozen'), \
         (4, 'open'), (5, 'frozen'), (6, 'open')",
    )
    .await;
    let open = |note: Option<&str>| (Some("open".to_owned()), note.map(str::to_owned));
    let frozen = (Some("frozen".to_owned()), Some("thawed".to_owned()));
    assert!(Acct::close().apply(&pool, 1i64).await.unwrap().is_applied());
    assert_eq!(closed(&pool, 1).await, open(None));
    use AcctFrozen::*;
    let close = AcctFrozen::close();
    assert_eq!(
        close.apply(&pool, 2i64).await.unwrap(),
        Outcome::Applied {
            from: Open,
            to: Closed
        }
    );
    assert_eq!(closed(&pool, 2).await, open(Some("direct")));
    assert_eq!(
        close.apply(&pool, 3i64).await.unwrap(),
        Outcome::Applied {
            from: Frozen,
            to: Closed
        }
    );
    assert_eq!(closed(&pool, 3).await, frozen);
    let outcomes = close.apply_many(&pool, &[4i64, 5]).await.unwrap();
    assert_eq!(
        outcomes,
        [
            Outcome::Applied {
                from: Open,
                to: Closed
            },
            Outcome::Applied {
                from: Frozen,
                to: Closed
            }
        ]
    );
    assert_eq!(closed(&pool, 4).await, open(Some("direct")));
    assert_eq!(closed(&pool, 5).await, frozen);
    assert!(Acct::close().apply_many(&pool, &[6i64]).await.unwrap()[0].is_applied());
    assert_eq!(closed(&pool, 6).await, open(None));
    let history = DB::count(
        &pool,
        "SELECT COUNT(*) FROM acct_history WHERE to_state = 'closed' AND \
         ((entity_key IN ('2', '4') AND from_state = 'open') \
         OR (entity_key IN ('3', '5') AND from_state = 'frozen'))",
    )
    .await;
    assert_eq!(history, 4);
}

/// MariaDB's `SIMULTANEOUS_ASSIGNMENT` mode (10.3.5+) makes `SET` read the
/// row as it was, as standard SQL does: the same values in either mode.
#[tokio::test]
async fn mariadb_an_assignment_reading_the_state_column_gets_the_state_before_in_simultaneous_assignment_mode(
) {
    let Some(base) = <sqlx::MySql as Db>::pool(1).await else {
        return;
    };
    let version = <sqlx::MySql as Db>::text(&base, "SELECT VERSION()")
        .await
        .unwrap();
    if !version.contains("MariaDB") {
        eprintln!("{version} is not MariaDB: no SIMULTANEOUS_ASSIGNMENT mode");
        return;
    }
    let set = "SET SESSION sql_mode = CONCAT(@@sql_mode, ',SIMULTANEOUS_ASSIGNMENT')".to_owned();
    let pool = sqlx::MySql::pool_with_session(&base, 4, set).await;
    let mode = <sqlx::MySql as Db>::text(&pool, "SELECT CAST(@@SESSION.sql_mode AS CHAR)").await;
    assert!(mode.unwrap().contains("SIMULTANEOUS_ASSIGNMENT"));
    an_assignment_reading_the_state_column_gets_the_state_before(pool).await;
}

// ---- literals a server mode could reinterpret ------------------------------

/// Stored values with every character the derive renders into a literal
/// and that some dialect or mode treats specially outside a string: quotes,
/// `%` and `_`, placeholders (`?`, `$1`), comment openers, non-ASCII. (A
/// backslash or a control character is a compile error:
/// `idem-derive/tests/ui/fail/unportable_literal.rs`.)
#[derive(StateMachine, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[state_machine(table = "docs", column = "status", key = "id", history = "doc_history")]
#[state_machine(transitions(hold: Active -> Held, archive: Active | Held -> Archived))]
enum Doc {
    #[state_machine(initial)]
    Active,
    #[state_machine(rename = "on hold: it's \"50%\"_? $1 -- /* é ✓")]
    Held,
    #[state_machine(rename = "archived/2024 'q' ?")]
    Archived,
}

async fn doc_status<DB: Db>(pool: &Pool<DB>, id: i64) -> String {
    DB::text(pool, &format!("SELECT status FROM docs WHERE id = {id}"))
        .await
        .unwrap()
}

/// The history of document `id`, oldest first, as `(from, to)`.
async fn doc_history<DB: Db>(pool: &Pool<DB>, id: i64) -> Vec<(String, String)> {
    let n = DB::count(
        pool,
        &format!("SELECT COUNT(*) FROM doc_history WHERE entity_key = '{id}'"),
    )
    .await;
    let mut rows = Vec::new();
    for i in 0..n {
        let row = |column: &str| {
            format!(
                "SELECT {column} FROM doc_history WHERE entity_key = '{id}' \
                 ORDER BY id LIMIT 1 OFFSET {i}"
            )
        };
        let from = DB::text(pool, &row("from_state")).await.unwrap();
        let to = DB::text(pool, &row("to_state")).await.unwrap();
        rows.push((from, to));
    }
    rows
}

/// Every stored value is written and read back exactly, in rows and in
/// history, through `apply` and `apply_many`, and a second call is a
/// no-op (issue 10 item 12: on MariaDB a mangled value made it
/// `UnknownState`).
async fn stored_values_keep_every_character<DB: Db>(pool: Pool<DB>)
where
    i64: Key<DB>,
{
    DB::exec(
        &pool,
        "CREATE TABLE docs (id BIGINT PRIMARY KEY, status VARCHAR(64) NOT NULL)",
    )
    .await;
    assert!(idem_sqlx::history::install::<Doc, DB>(&pool).await.unwrap());
    DB::exec(&pool, "INSERT INTO docs (id, status) VALUES (1, 'active'), (2, 'active'), (3, 'active'), (4, 'active')").await;
    use Doc::*;
    assert_eq!(
        Doc::hold().apply(&pool, 1i64).await.unwrap(),
        Outcome::Applied {
            from: Active,
            to: Held
        }
    );
    assert_eq!(doc_status(&pool, 1).await, Held.as_str());
    assert_eq!(
        Doc::archive().apply(&pool, 1i64).await.unwrap(),
        Outcome::Applied {
            from: Held,
            to: Archived
        }
    );
    assert_eq!(
        Doc::archive().apply(&pool, 1i64).await.unwrap(),
        Outcome::AlreadyApplied { state: Archived }
    );
    assert_eq!(
        Doc::hold().apply(&pool, 1i64).await.unwrap(),
        Outcome::Rejected { current: Archived }
    );
    assert_eq!(doc_status(&pool, 1).await, Archived.as_str());
    assert_eq!(
        Doc::archive().apply(&pool, 2i64).await.unwrap(),
        Outcome::Applied {
            from: Active,
            to: Archived
        }
    );
    let held = Doc::hold().apply_many(&pool, &[3i64, 4, 3]).await.unwrap();
    assert_eq!(
        held,
        [
            Outcome::Applied {
                from: Active,
                to: Held
            },
            Outcome::Applied {
                from: Active,
                to: Held
            },
            Outcome::AlreadyApplied { state: Held },
        ]
    );
    let archived = Doc::archive()
        .apply_many(&pool, &[3i64, 4, 2])
        .await
        .unwrap();
    assert_eq!(
        archived,
        [
            Outcome::Applied {
                from: Held,
                to: Archived
            },
            Outcome::Applied {
                from: Held,
                to: Archived
            },
            Outcome::AlreadyApplied { state: Archived },
        ]
    );
    let (active, held, archived) = (Active.to_string(), Held.to_string(), Archived.to_string());
    for id in [1, 3, 4] {
        assert_eq!(doc_status(&pool, id).await, archived);
        assert_eq!(
            doc_history(&pool, id).await,
            [
                (active.clone(), held.clone()),
                (held.clone(), archived.clone())
            ]
        );
    }
    assert_eq!(doc_history(&pool, 2).await, [(active, archived)]);
}

/// [`stored_values_keep_every_character`] on MariaDB with the session's
/// `sql_mode` set to `mode` (an expression), which must hold
/// NO_BACKSLASH_ESCAPES or not as `no_backslash_escapes` says.
async fn on_mysql_with_sql_mode(mode: &str, no_backslash_escapes: bool) {
    let Some(base) = <sqlx::MySql as Db>::pool(1).await else {
        return;
    };
    let set = format!("SET SESSION sql_mode = {mode}");
    let pool = sqlx::MySql::pool_with_session(&base, 4, set).await;
    let read = "SELECT CAST(@@SESSION.sql_mode AS CHAR)";
    let mode = <sqlx::MySql as Db>::text(&pool, read).await.unwrap();
    assert_eq!(
        mode.contains("NO_BACKSLASH_ESCAPES"),
        no_backslash_escapes,
        "{mode}"
    );
    stored_values_keep_every_character(pool).await;
}

#[tokio::test]
async fn mysql_stored_values_keep_every_character_with_no_backslash_escapes() {
    on_mysql_with_sql_mode("CONCAT(@@sql_mode, ',NO_BACKSLASH_ESCAPES')", true).await;
}

/// The server's default has it off; cleared explicitly all the same.
#[tokio::test]
async fn mysql_stored_values_keep_every_character_without_no_backslash_escapes() {
    on_mysql_with_sql_mode("REPLACE(@@sql_mode, 'NO_BACKSLASH_ESCAPES', '')", false).await;
}

/// PostgreSQL with standard_conforming_strings off on the session
/// (backslashes in ordinary literals are escapes then).
#[tokio::test]
async fn postgres_stored_values_keep_every_character_with_standard_conforming_strings_off() {
    let Some(base) = <sqlx::Postgres as Db>::pool(1).await else {
        return;
    };
    let set = "SET standard_conforming_strings = off".to_owned();
    let pool = sqlx::Postgres::pool_with_session(&base, 4, set).await;
    let setting = <sqlx::Postgres as Db>::text(&pool, "SHOW standard_conforming_strings").await;
    assert_eq!(setting.as_deref(), Some("off"));
    stored_values_keep_every_character(pool).await;
}

// ---- schema-qualified tables ----------------------------------------------

/// Invoices in another schema (PostgreSQL), database (MySQL) or attached
/// database (SQLite), with their history there too. The name is fixed at
/// compile time, so the server tests hold a lock while they use it.
#[derive(StateMachine, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[state_machine(
    table = "idem_billing.invoices",
    column = "status",
    key = "id",
    history = "idem_billing.invoice_history"
)]
#[state_machine(transitions(
    issue: Draft -> Issued,
    pay: Issued -> Paid,
    void: Draft | Issued -> Void,
))]
#[state_machine(assign(pay, paid_at = "CURRENT_TIMESTAMP"))]
enum Billed {
    #[state_machine(initial)]
    Draft,
    Issued,
    Paid,
    Void,
}

/// Runs the charge of a payment in the transition's transaction.
struct Charge;

#[async_trait]
impl<DB: idem_sqlx::Backend> TransitionHandler<Billed, DB, i64> for Charge
where
    i64: Key<DB>,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
{
    type Error = sqlx::Error;

    async fn on_applied(
        &self,
        conn: &mut DB::Connection,
        change: Change<'_, Billed, i64>,
    ) -> Result<(), sqlx::Error> {
        let sql = format!(
            "INSERT INTO idem_billing.charges (invoice_id) VALUES ({})",
            change.key
        );
        sqlx::query(&sql).execute(conn).await?;
        Ok(())
    }
}

/// `history::install`, `apply` (one source and several), `apply_with`
/// and `apply_many` on tables in the schema `idem_billing`, which `pool`
/// reaches by that name and which is empty.
async fn schema_qualified_tables_install_and_apply<DB: Db>(pool: Pool<DB>, index: &str)
where
    i64: Key<DB>,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
{
    let ts = DB::TIMESTAMP;
    DB::exec(
        &pool,
        &format!(
            "CREATE TABLE idem_billing.invoices \
             (id BIGINT PRIMARY KEY, status VARCHAR(16) NOT NULL, paid_at {ts})"
        ),
    )
    .await;
    DB::exec(
        &pool,
        "CREATE TABLE idem_billing.charges (invoice_id BIGINT NOT NULL)",
    )
    .await;
    for _ in 0..2 {
        assert!(idem_sqlx::history::install::<Billed, DB>(&pool)
            .await
            .unwrap());
    }
    assert_eq!(
        DB::count(&pool, index).await,
        1,
        "the history index, in idem_billing"
    );
    let rows = (1..=6)
        .map(|id| format!("({id}, 'draft')"))
        .collect::<Vec<_>>();
    DB::exec(
        &pool,
        &format!(
            "INSERT INTO idem_billing.invoices (id, status) VALUES {}",
            rows.join(", ")
        ),
    )
    .await;
    use Billed::*;
    assert_eq!(
        Billed::issue().apply(&pool, 1i64).await.unwrap(),
        Outcome::Applied {
            from: Draft,
            to: Issued
        }
    );
    assert_eq!(
        Billed::issue().apply(&pool, 1i64).await.unwrap(),
        Outcome::AlreadyApplied { state: Issued }
    );
    assert_eq!(
        Billed::void().apply(&pool, 2i64).await.unwrap(),
        Outcome::Applied {
            from: Draft,
            to: Void
        }
    );
    let mut tx = pool.begin().await.unwrap();
    assert!(Billed::pay()
        .apply_with_in(&mut tx, 1i64, &Charge)
        .await
        .unwrap()
        .is_applied());
    tx.commit().await.unwrap();
    assert!(Billed::pay()
        .apply_with(&pool, 1i64, &Charge)
        .await
        .unwrap()
        .is_noop());
    let issued = Billed::issue()
        .apply_many(&pool, &[3i64, 4, 3, 99])
        .await
        .unwrap();
    assert_eq!(
        issued,
        [
            Outcome::Applied {
                from: Draft,
                to: Issued
            },
            Outcome::Applied {
                from: Draft,
                to: Issued
            },
            Outcome::AlreadyApplied { state: Issued },
            Outcome::NotFound,
        ]
    );
    let voided = Billed::void()
        .apply_many(&pool, &[3i64, 5, 1])
        .await
        .unwrap();
    assert_eq!(
        voided,
        [
            Outcome::Applied {
                from: Issued,
                to: Void
            },
            Outcome::Applied {
                from: Draft,
                to: Void
            },
            Outcome::Rejected { current: Paid },
        ]
    );
    let count = |sql: &'static str| {
        let pool = pool.clone();
        async move { DB::count(&pool, sql).await }
    };
    assert_eq!(count("SELECT COUNT(*) FROM idem_billing.charges").await, 1);
    assert_eq!(
        count("SELECT COUNT(*) FROM idem_billing.invoices WHERE paid_at IS NOT NULL").await,
        1
    );
    // issue 1, void 2, pay 1, issue 3 and 4, void 3 and 5.
    assert_eq!(
        count("SELECT COUNT(*) FROM idem_billing.invoice_history").await,
        7
    );
    assert_eq!(
        count(
            "SELECT COUNT(*) FROM idem_billing.invoice_history \
             WHERE entity_key = '3' AND from_state = 'issued' AND to_state = 'void'"
        )
        .await,
        1
    );
}

/// SQLite with an attached database `idem_billing` (attached on every
/// connection of the pool): issue 10 item 13's input.
#[tokio::test]
async fn sqlite_schema_qualified_tables_install_and_apply() {
    let main = common::sqlite(1).await;
    let file: String =
        sqlx::query_scalar("SELECT file FROM pragma_database_list WHERE name = 'main'")
            .fetch_one(&main)
            .await
            .unwrap();
    let billing = format!("{file}.billing");
    let attach = format!("ATTACH DATABASE '{billing}' AS idem_billing");
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(4)
        .after_connect(move |conn, _| {
            let attach = attach.clone();
            Box::pin(async move {
                sqlx::Executor::execute(conn, attach.as_str()).await?;
                Ok(())
            })
        })
        .connect_with(
            // ATTACH opens its file with the connection's flags: creating
            // it needs SQLITE_OPEN_CREATE.
            sqlx::sqlite::SqliteConnectOptions::new()
                .filename(&file)
                .create_if_missing(true)
                .busy_timeout(std::time::Duration::from_secs(30)),
        )
        .await
        .unwrap();
    let index = "SELECT COUNT(*) FROM idem_billing.sqlite_master \
                 WHERE type = 'index' AND name = 'invoice_history_entity_key'";
    schema_qualified_tables_install_and_apply(pool, index).await;
}

/// PostgreSQL with the schema `idem_billing`, made afresh under an
/// advisory lock that other runs of this test wait for.
#[tokio::test]
async fn postgres_schema_qualified_tables_install_and_apply() {
    let Some(pool) = <sqlx::Postgres as Db>::pool(4).await else {
        return;
    };
    let mut lock = pool.acquire().await.unwrap();
    sqlx::query("SELECT pg_advisory_lock(hashtext('idem_billing'))")
        .execute(&mut *lock)
        .await
        .unwrap();
    <sqlx::Postgres as Db>::exec(&pool, "DROP SCHEMA IF EXISTS idem_billing CASCADE").await;
    <sqlx::Postgres as Db>::exec(&pool, "CREATE SCHEMA idem_billing").await;
    let index = "SELECT COUNT(*) FROM pg_indexes \
                 WHERE schemaname = 'idem_billing' AND indexname = 'invoice_history_entity_key'";
    schema_qualified_tables_install_and_apply(pool.clone(), index).await;
    <sqlx::Postgres as Db>::exec(&pool, "DROP SCHEMA idem_billing CASCADE").await;
}

/// MySQL/MariaDB with the database `idem_billing`, made afresh under a
/// named lock that other runs of this test wait for.
#[tokio::test]
async fn mysql_schema_qualified_tables_install_and_apply() {
    let Some(pool) = <sqlx::MySql as Db>::pool(4).await else {
        return;
    };
    let mut lock = pool.acquire().await.unwrap();
    sqlx::query("SELECT GET_LOCK('idem_billing', 600)")
        .execute(&mut *lock)
        .await
        .unwrap();
    <sqlx::MySql as Db>::exec(&pool, "DROP DATABASE IF EXISTS idem_billing").await;
    <sqlx::MySql as Db>::exec(&pool, "CREATE DATABASE idem_billing").await;
    let index = "SELECT COUNT(DISTINCT index_name) FROM information_schema.statistics \
                 WHERE table_schema = 'idem_billing' AND table_name = 'invoice_history' \
                 AND index_name = 'invoice_history_entity_key'";
    schema_qualified_tables_install_and_apply(pool.clone(), index).await;
    <sqlx::MySql as Db>::exec(&pool, "DROP DATABASE idem_billing").await;
}

// ---- every case on every backend -------------------------------------------

transitions_support::every_backend!(
    4;
    a_null_state_is_null_state_on_every_single_row_path,
    a_batch_with_a_null_state_fails_whole_with_nothing_moved,
    an_empty_state_is_an_unknown_state_on_every_path,
    a_batch_of_32767_issued_invoices_is_paid_whole,
    batches_around_the_chunk_size_get_each_outcome_as_if_applied_alone,
    batches_around_the_bind_parameter_limit_get_each_outcome_as_if_applied_alone,
    a_batch_spanning_chunks_is_atomic_and_writes_its_history,
    an_assignment_reading_the_state_column_gets_the_state_before,
    stored_values_keep_every_character,
);
