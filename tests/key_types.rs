//! The key's Rust type against the key column's SQL type (issue 10 item
//! 11), on every backend: a key is handled exactly or refused clearly,
//! never confused with another row, converted, or sent to a statement
//! cached for another type.
//!
//! - Integer keys of every width share one statement (PostgreSQL binds
//!   them all as `int8`): `i32` then `i64` on one connection both apply.
//! - A string that merely converts to an integer key (`"7abc"`, `"07"`,
//!   `" 7"`, `"7.0"`) finds no row on MySQL and SQLite, which compare the
//!   exact text forms beside `key = ?`; PostgreSQL refuses a text key on
//!   an integer column (`Error::KeyType`).
//! - An integer key on a text column finds only the row holding its
//!   decimal form (`7` moves `'7'`, never `'07'`); PostgreSQL refuses it.
//! - A text key after an integer key on one PostgreSQL connection is never
//!   read as an integer by a statement sqlx cached for integers.
//! - A UUID's 16 bytes never match an integer row (MySQL would convert
//!   `'7...'` to 7).
//!
//! Every case goes through `apply` (one source and several), `apply` on a
//! connection and in a transaction, `apply_with`, `apply_with_in`,
//! `apply_with_on` and `apply_many`.

mod common;
mod transitions_support;

use std::fmt::Debug;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use idem::prelude::*;
use idem_core::KeyFamily;
use idem_sqlx::{Backend, Error, HandlerError, Key};
use sqlx::{Acquire, Pool};
use transitions_support::Db;

/// Tickets, by a key column whose type each case chooses.
#[derive(StateMachine, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[state_machine(table = "tickets", column = "status", key = "id")]
#[state_machine(transitions(
    open: Draft -> Open,
    close: Draft | Open -> Closed,
))]
enum Ticket {
    #[state_machine(initial)]
    Draft,
    Open,
    Closed,
}

/// The same table with a history (MySQL and SQLite apply inside a
/// transaction of their own, and write the history row apart).
#[derive(StateMachine, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[state_machine(table = "tickets", column = "status", key = "id")]
#[state_machine(history = "ticket_history")]
#[state_machine(transitions(
    open: Draft -> Open,
    close: Draft | Open -> Closed,
))]
enum LoggedTicket {
    #[state_machine(initial)]
    Draft,
    Open,
    Closed,
}

/// Counts the changes it is handed.
#[derive(Default)]
struct Runs(AtomicUsize);

#[async_trait]
impl<S: State, DB: Backend, K: Key<DB>> TransitionHandler<S, DB, K> for Runs {
    type Error = String;

    async fn on_applied(&self, _: &mut DB::Connection, _: Change<'_, S, K>) -> Result<(), String> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

fn idem<T>(result: Result<T, HandlerError<String>>) -> Result<T, Error> {
    result.map_err(|e| match e {
        HandlerError::Idem(e) => e,
        HandlerError::Handler(e) => panic!("the handler failed: {e}"),
    })
}

/// `tickets` with a key column of `key_type` and the rows `(id, 'draft')`
/// for each of `ids` (SQL literals), and the history table.
async fn tickets<DB: Db>(pool: &Pool<DB>, key_type: &str, ids: &[&str]) {
    DB::exec(
        pool,
        &format!("CREATE TABLE tickets (id {key_type} PRIMARY KEY, status VARCHAR(16) NOT NULL)"),
    )
    .await;
    for id in ids {
        let insert = format!("INSERT INTO tickets (id, status) VALUES ({id}, 'draft')");
        DB::exec(pool, &insert).await;
    }
    assert!(idem_sqlx::history::install::<LoggedTicket, DB>(pool)
        .await
        .unwrap());
}

/// The statuses of every row, ordered by its key's text.
async fn statuses<DB: Db>(pool: &Pool<DB>) -> Vec<String> {
    let n = DB::count(pool, "SELECT COUNT(*) FROM tickets").await;
    let mut all = Vec::new();
    for i in 0..n {
        let sql = format!("SELECT status FROM tickets ORDER BY id LIMIT 1 OFFSET {i}");
        all.push(DB::text(pool, &sql).await.unwrap());
    }
    all
}

async fn history<DB: Db>(pool: &Pool<DB>) -> i64 {
    DB::count(pool, "SELECT COUNT(*) FROM ticket_history").await
}

/// Every path of `Ticket` (and of `LoggedTicket`, with a history) for
/// `key`, each outcome as text (`"NotFound"`, `"Applied { .. }"`), in
/// the order: for `open` then `close`, `apply`, `apply_many`,
/// `apply_with`, `apply_with_in`, `apply_with_on`; then for the logged
/// `open` and `close`, `apply` on a pool and in a transaction (rolled
/// back).
async fn every_path<DB: Db, K>(
    pool: &Pool<DB>,
    key: &K,
    runs: &Runs,
) -> Vec<(String, Result<String, Error>)>
where
    K: Key<DB> + Clone + 'static,
{
    fn text<T: Debug>(result: Result<T, Error>) -> Result<String, Error> {
        result.map(|o| format!("{o:?}"))
    }
    let mut results = Vec::new();
    for t in [Ticket::open(), Ticket::close()] {
        let name = |path: &str| format!("{} {path}", t.name());
        results.push((name("apply"), text(t.apply(pool, key.clone()).await)));
        let many = t.apply_many(pool, std::slice::from_ref(key)).await;
        results.push((name("apply_many"), text(many.map(|mut o| o.remove(0)))));
        let with = idem(t.apply_with(pool, key.clone(), runs).await);
        results.push((name("apply_with"), text(with)));
        let mut tx = pool.begin().await.unwrap();
        let within = idem(t.apply_with_in(&mut tx, key.clone(), runs).await);
        results.push((name("apply_with_in"), text(within)));
        tx.rollback().await.unwrap();
        let mut conn = pool.acquire().await.unwrap();
        let on = idem(t.apply_with_on(&mut *conn, key.clone(), runs).await);
        results.push((name("apply_with_on"), text(on)));
    }
    for t in [LoggedTicket::open(), LoggedTicket::close()] {
        let name = |path: &str| format!("logged {} {path}", t.name());
        results.push((name("apply"), text(t.apply(pool, key.clone()).await)));
        let mut conn = pool.acquire().await.unwrap();
        let mut tx = (&mut conn).begin().await.unwrap();
        let in_tx = t.apply(&mut tx, key.clone()).await;
        results.push((name("apply in a transaction"), text(in_tx)));
        tx.rollback().await.unwrap();
    }
    results
}

/// Every path gives `key`, which must find no row, `NotFound` on MySQL
/// and SQLite and `KeyType` naming `K` and its family on PostgreSQL;
/// nothing moves, no handler runs, no history row is written.
async fn every_path_finds_no_row<DB: Db, K>(pool: &Pool<DB>, key: K)
where
    K: Key<DB> + Clone + Debug + 'static,
{
    let before = statuses(pool).await;
    let runs = Runs::default();
    for (path, result) in every_path(pool, &key, &runs).await {
        match (DB::BACKEND, result) {
            (
                "postgres",
                Err(Error::KeyType {
                    key_type,
                    family,
                    transition,
                    table,
                    column,
                    ..
                }),
            ) => {
                assert_eq!(key_type, std::any::type_name::<K>(), "{path}");
                assert_eq!(family, key.value().family(), "{path}");
                assert!(path.contains(transition), "{path}: {transition}");
                assert_eq!((table, column), ("tickets", "id"));
            }
            ("postgres", other) => panic!("{path} {key:?}: expected KeyType, got {other:?}"),
            (_, Ok(outcome)) => assert_eq!(outcome, "NotFound", "{} {path} {key:?}", DB::BACKEND),
            (_, Err(error)) => panic!("{} {path} {key:?}: {error}", DB::BACKEND),
        }
    }
    assert_eq!(statuses(pool).await, before, "{key:?} moved a row");
    assert_eq!(runs.0.load(Ordering::SeqCst), 0);
    assert_eq!(history(pool).await, 0);
}

/// Issue 10 item 11's input: `open().apply(&pool, 7i32)`, then
/// `apply(&pool, 8i64)` on the same one connection, and every other
/// width and path after one another: each applies.
async fn integer_keys_of_every_width_apply_on_one_connection<DB: Db>(pool: Pool<DB>)
where
    i16: Key<DB>,
    i32: Key<DB>,
    i64: Key<DB>,
{
    let ids: Vec<String> = (1..=12).map(|i| i.to_string()).collect();
    tickets(
        &pool,
        "BIGINT",
        &ids.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await;
    let opened = Outcome::Applied {
        from: Ticket::Draft,
        to: Ticket::Open,
    };
    let closed = Outcome::Applied {
        from: Ticket::Draft,
        to: Ticket::Closed,
    };
    assert_eq!(Ticket::open().apply(&pool, 7i32).await.unwrap(), opened);
    assert_eq!(Ticket::open().apply(&pool, 8i64).await.unwrap(), opened);
    assert_eq!(Ticket::open().apply(&pool, 9i16).await.unwrap(), opened);
    assert_eq!(Ticket::close().apply(&pool, 1i64).await.unwrap(), closed);
    assert_eq!(Ticket::close().apply(&pool, 2i32).await.unwrap(), closed);
    assert_eq!(Ticket::close().apply(&pool, 3i16).await.unwrap(), closed);
    let many = Ticket::open().apply_many(&pool, &[4i32, 7]).await.unwrap();
    assert_eq!(
        many,
        [
            opened,
            Outcome::AlreadyApplied {
                state: Ticket::Open
            }
        ]
    );
    let many = Ticket::open().apply_many(&pool, &[5i64, 8]).await.unwrap();
    assert_eq!(
        many,
        [
            opened,
            Outcome::AlreadyApplied {
                state: Ticket::Open
            }
        ]
    );
    let runs = Runs::default();
    let with = idem(LoggedTicket::open().apply_with(&pool, 6i32, &runs).await).unwrap();
    assert!(with.is_applied());
    let mut tx = pool.begin().await.unwrap();
    let within = idem(
        LoggedTicket::open()
            .apply_with_in(&mut tx, 10i64, &runs)
            .await,
    );
    assert!(within.unwrap().is_applied());
    tx.commit().await.unwrap();
    let mut conn = pool.acquire().await.unwrap();
    let on = idem(
        LoggedTicket::close()
            .apply_with_on(&mut *conn, 11i16, &runs)
            .await,
    );
    assert!(on.unwrap().is_applied());
    drop(conn);
    let logged = LoggedTicket::close().apply(&pool, 12i32).await.unwrap();
    assert!(logged.is_applied());
    assert_eq!(runs.0.load(Ordering::SeqCst), 3);
    assert_eq!(history(&pool).await, 4);
    let moved = DB::count(
        &pool,
        "SELECT COUNT(*) FROM tickets WHERE status <> 'draft'",
    )
    .await;
    assert_eq!(moved, 12);
}

/// Strings that MySQL converts to 7 (`'7abc'` with a warning, `'07'`,
/// `' 7'`, `'7.0'`) and that SQLite's INTEGER affinity reads as 7 find no
/// row on an integer key column, on every path; PostgreSQL refuses a text
/// key on an integer column. The exact decimal form `"7"` finds the row
/// on MySQL and SQLite.
async fn strings_that_convert_to_an_integer_key_find_no_row<DB: Db>(pool: Pool<DB>)
where
    &'static str: Key<DB>,
    String: Key<DB>,
{
    tickets(&pool, "BIGINT", &["7", "8"]).await;
    for key in ["7abc", "07", " 7", "7.0", "7 ", "+7", "0x7"] {
        every_path_finds_no_row(&pool, key).await;
        every_path_finds_no_row(&pool, key.to_owned()).await;
    }
    let exact = Ticket::open().apply(&pool, "7").await;
    match DB::BACKEND {
        "postgres" => assert!(matches!(exact, Err(Error::KeyType { .. })), "{exact:?}"),
        _ => assert!(exact.unwrap().is_applied()),
    }
}

/// Issue 10 item 11's text column holding `'07'` and `'7'`, both drafts:
/// the integer key 7 moves `'7'` only, on every path (MySQL compares a
/// text column with a number as numbers, so `'07'` matched too);
/// PostgreSQL refuses an integer key on a text column.
async fn an_integer_key_moves_only_the_text_row_of_its_decimal_form<DB: Db>(pool: Pool<DB>)
where
    i64: Key<DB>,
    i32: Key<DB>,
{
    tickets(&pool, "VARCHAR(16)", &["'07'", "'7'", "' 7'", "'7.0'"]).await;
    let runs = Runs::default();
    for (path, result) in every_path(&pool, &7i64, &runs).await {
        match (DB::BACKEND, result) {
            ("postgres", Err(Error::KeyType { family, .. })) => {
                assert_eq!(family, KeyFamily::Integer, "{path}");
            }
            (_, Ok(outcome)) => {
                // Each path finds the row of '7' only: the first moves it.
                let one_row = ["NotFound", "Rejected", "AlreadyApplied", "Applied"];
                assert!(
                    one_row.iter().any(|o| outcome.starts_with(o)),
                    "{path}: {outcome}"
                );
            }
            (_, other) => panic!("{} {path}: {other:?}", DB::BACKEND),
        }
    }
    let rows = statuses(&pool).await;
    match DB::BACKEND {
        "postgres" => assert_eq!(rows, ["draft"; 4]),
        // Ordered by key: ' 7', '07', '7', '7.0'.
        _ => assert_eq!(rows, ["draft", "draft", "closed", "draft"]),
    }
    every_path_finds_no_row(&pool, 8i32).await;
}

/// A text key after an integer key on one connection: on PostgreSQL the
/// cached integer statement would read the 8 bytes of `"12345678"` as the
/// integer 3544952156018063160 and move that row; each family has its own
/// statement, so the text key is refused as a text key. MySQL and SQLite
/// find no row.
async fn a_text_key_is_never_sent_to_a_statement_cached_for_integers<DB: Db>(pool: Pool<DB>)
where
    i64: Key<DB>,
    &'static str: Key<DB>,
{
    let bytes = i64::from_be_bytes(*b"12345678");
    tickets(&pool, "BIGINT", &["1", &bytes.to_string()]).await;
    assert!(Ticket::open()
        .apply(&pool, 1i64)
        .await
        .unwrap()
        .is_applied());
    let many = Ticket::close().apply_many(&pool, &[1i64]).await.unwrap();
    assert!(many[0].is_applied());
    every_path_finds_no_row(&pool, "12345678").await;
    let status = format!("SELECT status FROM tickets WHERE id = {bytes}");
    assert_eq!(DB::text(&pool, &status).await.as_deref(), Some("draft"));
}

/// A UUID whose bytes begin with `7` against an integer key column: MySQL
/// compares a binary string with a number as numbers and would find row
/// 7; it finds no row, as on SQLite, and PostgreSQL refuses it. On a UUID
/// column a key finds its own row only.
async fn uuid_keys_match_only_their_own_bytes<DB: Db>(pool: Pool<DB>)
where
    uuid::Uuid: Key<DB>,
{
    tickets(&pool, "BIGINT", &["7"]).await;
    let seven = uuid::Uuid::from_bytes(*b"7\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0");
    every_path_finds_no_row(&pool, seven).await;
    DB::exec(&pool, "DROP TABLE tickets").await;
    DB::exec(&pool, "DROP TABLE ticket_history").await;
    let (a, b) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let literal = |u: uuid::Uuid| match DB::BACKEND {
        "postgres" => format!("'{u}'"),
        "mysql" => format!("UNHEX('{}')", u.simple()),
        _ => format!("X'{}'", u.simple()),
    };
    tickets(&pool, DB::UUID, &[&literal(a), &literal(b)]).await;
    assert!(Ticket::open().apply(&pool, a).await.unwrap().is_applied());
    let many = Ticket::close()
        .apply_many(&pool, &[a, uuid::Uuid::nil()])
        .await
        .unwrap();
    assert_eq!(
        many,
        [
            Outcome::Applied {
                from: Ticket::Open,
                to: Ticket::Closed
            },
            Outcome::NotFound
        ]
    );
    let untouched = DB::count(&pool, "SELECT COUNT(*) FROM tickets WHERE status = 'draft'").await;
    assert_eq!(untouched, 1);
}

// One connection: a statement cached by the first call is the one the
// next call meets.
transitions_support::every_backend!(
    1;
    integer_keys_of_every_width_apply_on_one_connection,
    strings_that_convert_to_an_integer_key_find_no_row,
    an_integer_key_moves_only_the_text_row_of_its_decimal_form,
    a_text_key_is_never_sent_to_a_statement_cached_for_integers,
    uuid_keys_match_only_their_own_bytes,
);
