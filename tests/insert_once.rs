//! The insert_once conformance suite: one generic body per case, listed
//! once per backend (SQLite always; PostgreSQL and MySQL/MariaDB when their
//! URLs are set). Only a violation of the business key the caller names is
//! `AlreadyExists`; any other unique key is an error that names it; the
//! caller's transaction is usable after each.

mod common;
mod transitions_support;

use std::sync::Arc;

use idem::sqlx::{insert_once, Backend, BusinessKey, Error, ErrorKind, Insert, InsertBackend};
use sqlx::{Acquire, Pool};
use tokio::sync::Barrier;
use transitions_support::Db;

const RACERS: usize = 32;

/// A backend of this suite.
trait Suite: Db + InsertBackend {
    /// Whether the primary key is checked before the table's other unique
    /// keys (PostgreSQL, MySQL); SQLite checks the last declared first.
    const PRIMARY_KEY_FIRST: bool;

    /// Whether a duplicate-key error names the key's table. MariaDB's does
    /// not ("for key 'PRIMARY'"); MySQL 8's does ("for key 'orders.PRIMARY'").
    async fn names_key_table(pool: &Pool<Self>) -> bool;
}

impl Suite for sqlx::Sqlite {
    const PRIMARY_KEY_FIRST: bool = false;
    async fn names_key_table(_: &Pool<Self>) -> bool {
        true
    }
}

impl Suite for sqlx::Postgres {
    const PRIMARY_KEY_FIRST: bool = true;
    async fn names_key_table(_: &Pool<Self>) -> bool {
        true
    }
}

impl Suite for sqlx::MySql {
    const PRIMARY_KEY_FIRST: bool = true;
    async fn names_key_table(pool: &Pool<Self>) -> bool {
        let version: String = sqlx::query_scalar("SELECT VERSION()")
            .fetch_one(pool)
            .await
            .unwrap();
        !version.contains("MariaDB")
    }
}

/// A result for a failure message (the driver's result has no `Debug`).
fn shown<T>(result: Result<Insert<T>, Error>) -> Result<&'static str, Error> {
    result.map(|insert| match insert {
        Insert::Inserted(_) => "Inserted",
        Insert::AlreadyExists => "AlreadyExists",
    })
}

fn key(table: &str, columns: &[&str]) -> BusinessKey {
    BusinessKey::new(table, columns.iter().copied()).unwrap()
}

/// The table: a business key and another unique column.
async fn orders<DB: Suite>(connections: u32) -> Option<Pool<DB>> {
    let pool = DB::pool(connections).await?;
    DB::exec(
        &pool,
        "CREATE TABLE orders (reference VARCHAR(64) PRIMARY KEY, email VARCHAR(64) UNIQUE, \
         total INTEGER NOT NULL DEFAULT 0)",
    )
    .await;
    DB::exec(&pool, "CREATE TABLE audit (note VARCHAR(64) NOT NULL)").await;
    Some(pool)
}

async fn count<DB: Db>(pool: &Pool<DB>, table: &str) -> i64 {
    DB::count(pool, &format!("SELECT count(*) FROM {table}")).await
}

/// A plain write in the caller's transaction: proves it is still usable.
async fn note<DB: Db>(conn: &mut DB::Connection, note: &str) {
    DB::execute_plain(conn, &format!("INSERT INTO audit (note) VALUES ('{note}')"))
        .await
        .unwrap();
}

/// `insert_once` of `sql` under `key` must fail with a unique key other
/// than the business key; returns what it named.
async fn other_key<'c, A>(acquire: A, key: &BusinessKey, sql: &str) -> idem::sqlx::ViolatedKey
where
    A: Acquire<'c> + Send,
    A::Database: InsertBackend,
{
    match insert_once(acquire, key, sql).await {
        Err(Error::OtherUniqueViolation {
            violated, source, ..
        }) => {
            assert_eq!(
                <A::Database as Backend>::error_kind(&source),
                ErrorKind::UniqueViolation
            );
            *violated
        }
        other => panic!(
            "{sql} under {key}: expected another key's violation, got {:?}",
            shown(other)
        ),
    }
}

// ---- the cases ----------------------------------------------------------------

async fn racing_inserts_of_one_key_insert_one_row_and_the_rest_already_exist<DB: Suite>(
    pool: Pool<DB>,
) {
    let barrier = Arc::new(Barrier::new(RACERS));
    let racers: Vec<_> = (0..RACERS)
        .map(|n| {
            let (pool, barrier) = (pool.clone(), barrier.clone());
            tokio::spawn(async move {
                let order = key("orders", &["reference"]);
                barrier.wait().await;
                let mut tx = pool.begin().await.unwrap();
                let insert = format!("INSERT INTO orders (reference, total) VALUES ('po-1', {n})");
                let outcome = insert_once(&mut tx, &order, insert.as_str()).await.unwrap();
                // The transaction is usable after either outcome.
                note::<DB>(&mut tx, &format!("racer {n}")).await;
                tx.commit().await.unwrap();
                outcome.is_inserted()
            })
        })
        .collect();
    let mut inserted = 0;
    for racer in racers {
        inserted += usize::from(racer.await.unwrap());
    }
    assert_eq!((inserted, RACERS - inserted), (1, RACERS - 1));
    assert_eq!(count(&pool, "orders").await, 1);
    assert_eq!(count(&pool, "audit").await, RACERS as i64);
}

async fn a_duplicate_leaves_the_transaction_usable_for_other_writes<DB: Suite>(pool: Pool<DB>) {
    let order = key("orders", &["reference"]);
    DB::exec(&pool, "INSERT INTO orders (reference) VALUES ('po-1')").await;
    let mut tx = pool.begin().await.unwrap();
    note::<DB>(&mut tx, "before").await;
    let again = insert_once(
        &mut tx,
        &order,
        "INSERT INTO orders (reference) VALUES ('po-1')",
    )
    .await
    .unwrap();
    assert!(again.already_exists());
    note::<DB>(&mut tx, "after").await;
    let other = insert_once(
        &mut tx,
        &order,
        "INSERT INTO orders (reference) VALUES ('po-2')",
    )
    .await
    .unwrap();
    assert!(matches!(other, Insert::Inserted(ref done) if DB::rows_affected(done) == 1));
    tx.commit().await.unwrap();
    assert_eq!(count(&pool, "audit").await, 2);
    assert_eq!(count(&pool, "orders").await, 2);
}

async fn a_not_null_violation_stays_an_error_and_is_rolled_back_alone<DB: Suite>(pool: Pool<DB>) {
    let order = key("orders", &["reference"]);
    let mut tx = pool.begin().await.unwrap();
    let failed = insert_once(
        &mut tx,
        &order,
        "INSERT INTO orders (reference, total) VALUES ('po-1', NULL)",
    )
    .await;
    match failed {
        Err(Error::Database(e)) => assert_eq!(DB::error_kind(&e), ErrorKind::Other),
        other => panic!("a NOT NULL violation is no duplicate: {:?}", shown(other)),
    }
    note::<DB>(&mut tx, "after").await;
    tx.commit().await.unwrap();
    assert_eq!(count(&pool, "orders").await, 0);
    assert_eq!(count(&pool, "audit").await, 1);
}

async fn on_a_pool_the_insert_runs_in_its_own_transaction<DB: Suite>(pool: Pool<DB>) {
    let order = key("orders", &["reference"]);
    let insert = "INSERT INTO orders (reference) VALUES ('po-1')";
    assert!(insert_once(&pool, &order, insert)
        .await
        .unwrap()
        .is_inserted());
    assert!(insert_once(&pool, &order, insert)
        .await
        .unwrap()
        .already_exists());
    let mut conn = pool.acquire().await.unwrap();
    assert!(insert_once(&mut conn, &order, insert)
        .await
        .unwrap()
        .already_exists());
    let violated = other_key(
        &mut conn,
        &key("orders", &["email"]),
        "INSERT INTO orders (reference, email) VALUES ('po-1', 'x@example.test')",
    )
    .await;
    assert_eq!(violated.columns, ["reference"]);
    assert_eq!(count(&pool, "orders").await, 1);
}

async fn a_row_inserted_once_rolls_back_with_the_callers_transaction<DB: Suite>(pool: Pool<DB>) {
    let order = key("orders", &["reference"]);
    let mut tx = pool.begin().await.unwrap();
    let first = insert_once(
        &mut tx,
        &order,
        "INSERT INTO orders (reference) VALUES ('po-1')",
    )
    .await
    .unwrap();
    assert!(first.is_inserted());
    tx.rollback().await.unwrap();
    assert_eq!(count(&pool, "orders").await, 0);
}

/// The input: a second order with the first one's e-mail address
/// is no duplicate of it.
async fn another_unique_key_is_an_error_that_names_it_and_never_already_exists<DB: Suite>(
    pool: Pool<DB>,
) {
    let order = key("orders", &["reference"]);
    let mut tx = pool.begin().await.unwrap();
    let first = "INSERT INTO orders (reference, email) VALUES ('po-1', 'buyer@example.test')";
    assert!(insert_once(&mut tx, &order, first)
        .await
        .unwrap()
        .is_inserted());
    let second = "INSERT INTO orders (reference, email) VALUES ('po-2', 'buyer@example.test')";
    let violated = other_key(&mut tx, &order, second).await;
    assert_eq!(violated.table.as_deref(), Some("orders"));
    assert_eq!(violated.columns, ["email"]);
    // PostgreSQL names the constraint, MySQL/MariaDB the key; SQLite only
    // lists the columns.
    if DB::BACKEND != "sqlite" {
        assert!(violated.name.unwrap().contains("email"));
    }
    note::<DB>(&mut tx, "after").await;
    tx.commit().await.unwrap();
    assert_eq!(count(&pool, "orders").await, 1);
    assert_eq!(count(&pool, "audit").await, 1);
}

/// The same two keys with the roles swapped: the key named decides.
async fn the_key_named_decides_between_already_exists_and_another_key<DB: Suite>(pool: Pool<DB>) {
    let email = key("orders", &["email"]);
    let mut tx = pool.begin().await.unwrap();
    let first = "INSERT INTO orders (reference, email) VALUES ('po-1', 'buyer@example.test')";
    assert!(insert_once(&mut tx, &email, first)
        .await
        .unwrap()
        .is_inserted());
    let same_buyer = "INSERT INTO orders (reference, email) VALUES ('po-2', 'buyer@example.test')";
    assert!(insert_once(&mut tx, &email, same_buyer)
        .await
        .unwrap()
        .already_exists());
    let same_reference =
        "INSERT INTO orders (reference, email) VALUES ('po-1', 'other@example.test')";
    let violated = other_key(&mut tx, &email, same_reference).await;
    assert_eq!(violated.columns, ["reference"]);
    note::<DB>(&mut tx, "after").await;
    tx.commit().await.unwrap();
    assert_eq!(count(&pool, "orders").await, 1);
}

/// An identical retry of a row repeats both unique keys; the database
/// reports the one it checks first, and only that one can be
/// `AlreadyExists`: the other business key gets an error naming it.
async fn a_row_repeating_two_keys_is_attributed_to_the_key_the_database_reports<DB: Suite>(
    pool: Pool<DB>,
) {
    let insert = "INSERT INTO orders (reference, email) VALUES ('po-1', 'buyer@example.test')";
    DB::exec(&pool, insert).await;
    let (reported, other) = if DB::PRIMARY_KEY_FIRST {
        ("reference", "email")
    } else {
        ("email", "reference")
    };
    let mut tx = pool.begin().await.unwrap();
    let same = insert_once(&mut tx, &key("orders", &[reported]), insert).await;
    assert!(same.unwrap().already_exists());
    let violated = other_key(&mut tx, &key("orders", &[other]), insert).await;
    assert_eq!(violated.columns, [reported]);
    note::<DB>(&mut tx, "after").await;
    tx.commit().await.unwrap();
    assert_eq!(count(&pool, "orders").await, 1);
}

/// A composite key matches its columns in any order, and only all of them.
async fn a_composite_key_is_its_whole_column_set_in_any_order<DB: Suite>(pool: Pool<DB>) {
    DB::exec(
        &pool,
        "CREATE TABLE order_lines (invoice_id INTEGER NOT NULL, line_no INTEGER NOT NULL, \
         note VARCHAR(64), PRIMARY KEY (invoice_id, line_no))",
    )
    .await;
    let insert = "INSERT INTO order_lines (invoice_id, line_no) VALUES (1, 1)";
    let mut tx = pool.begin().await.unwrap();
    let reversed = key("order_lines", &["line_no", "invoice_id"]);
    assert!(insert_once(&mut tx, &reversed, insert)
        .await
        .unwrap()
        .is_inserted());
    assert!(insert_once(&mut tx, &reversed, insert)
        .await
        .unwrap()
        .already_exists());
    let part = other_key(&mut tx, &key("order_lines", &["invoice_id"]), insert).await;
    assert_eq!(part.columns, ["invoice_id", "line_no"]);
    let more = key("order_lines", &["invoice_id", "line_no", "note"]);
    let _ = other_key(&mut tx, &more, insert).await;
    note::<DB>(&mut tx, "after").await;
    tx.commit().await.unwrap();
    assert_eq!(count(&pool, "order_lines").await, 1);
}

/// A trigger's insert into another table violates that table's key: never
/// the business key. On MariaDB, whose message does not name the table,
/// idem cannot tell `audit`'s `PRIMARY` from `orders`'s and says so; a
/// business key whose index has a name of its own is found even there.
async fn a_key_of_another_table_violated_by_a_trigger_is_never_already_exists<DB: Suite>(
    pool: Pool<DB>,
) {
    DB::exec(
        &pool,
        "CREATE TABLE shipments (id INTEGER PRIMARY KEY, reference VARCHAR(64) NOT NULL, \
         UNIQUE (reference))",
    )
    .await;
    DB::exec(&pool, "CREATE TABLE ledger (id INTEGER PRIMARY KEY)").await;
    let trigger = match DB::BACKEND {
        "postgres" => {
            DB::exec(
                &pool,
                "CREATE FUNCTION ledger_row() RETURNS trigger LANGUAGE plpgsql AS \
                 $$ BEGIN INSERT INTO ledger (id) VALUES (1); RETURN NEW; END $$",
            )
            .await;
            "CREATE TRIGGER booked AFTER INSERT ON shipments FOR EACH ROW EXECUTE FUNCTION ledger_row()"
        }
        "mysql" => {
            "CREATE TRIGGER booked AFTER INSERT ON shipments FOR EACH ROW \
             INSERT INTO ledger (id) VALUES (1)"
        }
        _ => {
            "CREATE TRIGGER booked AFTER INSERT ON shipments \
             BEGIN INSERT INTO ledger (id) VALUES (1); END"
        }
    };
    DB::exec(&pool, trigger).await;
    let by_id = key("shipments", &["id"]);
    let by_reference = key("shipments", &["reference"]);
    let mut tx = pool.begin().await.unwrap();
    let first = "INSERT INTO shipments (id, reference) VALUES (1, 's-1')";
    assert!(insert_once(&mut tx, &by_id, first)
        .await
        .unwrap()
        .is_inserted());
    // A new shipment: its own keys are free, the trigger's ledger row is not.
    let second = "INSERT INTO shipments (id, reference) VALUES (2, 's-2')";
    match insert_once(&mut tx, &by_id, second).await {
        Err(Error::OtherUniqueViolation { violated, .. }) => {
            assert_eq!(violated.table.as_deref(), Some("ledger"));
            assert_eq!(violated.columns, ["id"]);
        }
        Err(Error::UnresolvedUniqueViolation { violated, .. })
            if !DB::names_key_table(&pool).await =>
        {
            assert_eq!(violated.name.as_deref(), Some("PRIMARY"));
        }
        other => panic!("the ledger's key is not the shipment's: {:?}", shown(other)),
    }
    // A true duplicate of the primary key: MariaDB cannot tell it from the
    // ledger's `PRIMARY` while the table has a trigger.
    let again = insert_once(&mut tx, &by_id, first).await;
    if DB::names_key_table(&pool).await {
        assert!(again.unwrap().already_exists());
    } else {
        assert!(
            matches!(again, Err(Error::UnresolvedUniqueViolation { .. })),
            "{:?}",
            shown(again)
        );
    }
    // A key with an index name of its own is found on every backend.
    let same_reference = "INSERT INTO shipments (id, reference) VALUES (3, 's-1')";
    let by_reference_again = insert_once(&mut tx, &by_reference, same_reference).await;
    assert!(by_reference_again.unwrap().already_exists());
    note::<DB>(&mut tx, "after").await;
    tx.commit().await.unwrap();
    assert_eq!(count(&pool, "shipments").await, 1);
    assert_eq!(count(&pool, "ledger").await, 1);
    assert_eq!(count(&pool, "audit").await, 1);
}

/// A key naming a table the statement does not write, or columns in the
/// wrong case on PostgreSQL, never matches.
async fn a_key_of_another_table_or_unknown_columns_never_matches<DB: Suite>(pool: Pool<DB>) {
    DB::exec(&pool, "INSERT INTO orders (reference) VALUES ('po-1')").await;
    let insert = "INSERT INTO orders (reference) VALUES ('po-1')";
    let mut tx = pool.begin().await.unwrap();
    for wrong in [key("audit", &["reference"]), key("orders", &["ref"])] {
        match insert_once(&mut tx, &wrong, insert).await {
            Err(Error::OtherUniqueViolation { .. } | Error::UnresolvedUniqueViolation { .. }) => {}
            other => panic!("{wrong} is not the violated key: {:?}", shown(other)),
        }
    }
    let upper = insert_once(&mut tx, &key("orders", &["REFERENCE"]), insert).await;
    if DB::BACKEND == "postgres" {
        assert!(
            matches!(upper, Err(Error::OtherUniqueViolation { .. })),
            "{:?}",
            shown(upper)
        );
    } else {
        // Column names are case-insensitive on MySQL and SQLite.
        assert!(upper.unwrap().already_exists());
    }
    note::<DB>(&mut tx, "after").await;
    tx.commit().await.unwrap();
}

/// A unique index on an expression cannot be compared with columns:
/// an error naming it, never `AlreadyExists` (not on MariaDB, which has no
/// such indexes).
async fn a_unique_index_on_an_expression_is_unresolved<DB: Suite>(pool: Pool<DB>) {
    DB::exec(
        &pool,
        "CREATE UNIQUE INDEX orders_email_folded ON orders (lower(email))",
    )
    .await;
    let mut tx = pool.begin().await.unwrap();
    let order = key("orders", &["email"]);
    let first = "INSERT INTO orders (reference, email) VALUES ('po-1', 'Buyer@example.test')";
    assert!(insert_once(&mut tx, &order, first)
        .await
        .unwrap()
        .is_inserted());
    let folded = "INSERT INTO orders (reference, email) VALUES ('po-2', 'buyer@example.test')";
    match insert_once(&mut tx, &order, folded).await {
        Err(Error::UnresolvedUniqueViolation { violated, .. }) => {
            assert_eq!(violated.name.as_deref(), Some("orders_email_folded"));
        }
        other => panic!(
            "an index on lower(email) is not the column email: {:?}",
            shown(other)
        ),
    }
    note::<DB>(&mut tx, "after").await;
    tx.commit().await.unwrap();
    assert_eq!(count(&pool, "orders").await, 1);
}

#[test]
fn a_business_key_without_a_table_or_columns_is_a_typed_error() {
    let no_columns: [&str; 0] = [];
    for (table, columns) in [
        ("", &["a"][..]),
        ("orders", &no_columns[..]),
        ("orders", &["a", "A"][..]),
        ("orders", &[""][..]),
        ("a.b.c", &["a"][..]),
        ("orders\n", &["a"][..]),
        (".orders", &["a"][..]),
    ] {
        match BusinessKey::new(table, columns.iter().copied()) {
            Err(Error::InvalidBusinessKey(reason)) => assert!(!reason.is_empty()),
            other => panic!("{table:?} {columns:?}: {other:?}"),
        }
    }
    let qualified = BusinessKey::new("billing.orders", ["reference"]).unwrap();
    assert_eq!(
        (qualified.schema(), qualified.table()),
        (Some("billing"), "orders")
    );
}

// ---- the backends ---------------------------------------------------------------

macro_rules! suite {
    ($backend:ident, $db:ty: $($case:ident($connections:expr)),* $(,)?) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    if let Some(pool) = super::orders::<$db>($connections).await {
                        super::$case::<$db>(pool).await;
                    }
                }
            )*
        }
    };
}

macro_rules! conformance {
    ($($backend:ident: $db:ty),* $(,)?) => {
        $(
            suite!($backend, $db:
                racing_inserts_of_one_key_insert_one_row_and_the_rest_already_exist(16),
                a_duplicate_leaves_the_transaction_usable_for_other_writes(2),
                a_not_null_violation_stays_an_error_and_is_rolled_back_alone(2),
                on_a_pool_the_insert_runs_in_its_own_transaction(2),
                a_row_inserted_once_rolls_back_with_the_callers_transaction(2),
                another_unique_key_is_an_error_that_names_it_and_never_already_exists(2),
                the_key_named_decides_between_already_exists_and_another_key(2),
                a_row_repeating_two_keys_is_attributed_to_the_key_the_database_reports(2),
                a_composite_key_is_its_whole_column_set_in_any_order(2),
                a_key_of_another_table_violated_by_a_trigger_is_never_already_exists(2),
                a_key_of_another_table_or_unknown_columns_never_matches(2),
            );
        )*
    };
}

conformance!(sqlite: sqlx::Sqlite, postgres: sqlx::Postgres, mysql: sqlx::MySql);

suite!(sqlite_expressions, sqlx::Sqlite: a_unique_index_on_an_expression_is_unresolved(2));
suite!(postgres_expressions, sqlx::Postgres: a_unique_index_on_an_expression_is_unresolved(2));

/// The PostgreSQL behaviour insert_once exists for, shown without it.
#[tokio::test]
async fn a_bare_duplicate_insert_aborts_a_postgres_transaction() {
    let Some(pool) = common::postgres(1).await else {
        return;
    };
    sqlx::query("CREATE TABLE orders (reference TEXT PRIMARY KEY)")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO orders VALUES ('po-1')")
        .execute(&pool)
        .await
        .unwrap();
    let mut tx = pool.begin().await.unwrap();
    let duplicate = sqlx::query("INSERT INTO orders VALUES ('po-1')")
        .execute(&mut *tx)
        .await;
    assert_eq!(
        <sqlx::Postgres as Backend>::error_kind(&duplicate.unwrap_err()),
        ErrorKind::UniqueViolation
    );
    let next = sqlx::query("INSERT INTO orders VALUES ('po-2')")
        .execute(&mut *tx)
        .await;
    let code = next
        .unwrap_err()
        .as_database_error()
        .and_then(|e| e.code())
        .map(|c| c.into_owned());
    assert_eq!(code.as_deref(), Some("25P02"), "in_failed_sql_transaction");
}
