//! The insert_once conformance suite: one body per scenario, run on
//! SQLite, PostgreSQL and MySQL (when their URLs are set).

mod common;

use std::sync::Arc;

use idem::sqlx::{insert_once, Backend, Error, ErrorKind, Insert};
use idem::Dialect;
use tokio::sync::Barrier;

const RACERS: usize = 32;

macro_rules! insert_once_suite {
    ($backend:ident, $db:ty, $pool:path) => {
        mod $backend {
            use super::*;

            use sqlx::Pool;

            type Db = $db;

            async fn setup(connections: u32) -> Option<Pool<Db>> {
                let pool = $pool(connections).await?;
                for table in [
                    "CREATE TABLE orders (reference VARCHAR(64) PRIMARY KEY, total INTEGER NOT NULL)",
                    "CREATE TABLE audit (note VARCHAR(64) NOT NULL)",
                ] {
                    sqlx::query(table).execute(&pool).await.unwrap();
                }
                Some(pool)
            }

            /// `?` placeholders as the backend wants them.
            fn sql(text: &str) -> String {
                if <Db as Backend>::DIALECT != Dialect::Postgres {
                    return text.to_owned();
                }
                let mut out = String::new();
                for (n, part) in text.split('?').enumerate() {
                    if n > 0 {
                        out.push_str(&format!("${n}"));
                    }
                    out.push_str(part);
                }
                out
            }

            async fn count(pool: &Pool<Db>, table: &str) -> i64 {
                sqlx::query_scalar::<_, i64>(&format!("SELECT count(*) FROM {table}"))
                    .fetch_one(pool)
                    .await
                    .unwrap()
            }

            async fn plain_insert(conn: &mut <Db as sqlx::Database>::Connection, note: &str) {
                sqlx::query(&sql("INSERT INTO audit (note) VALUES (?)"))
                    .bind(note)
                    .execute(conn)
                    .await
                    .unwrap();
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn racing_inserts_of_one_key_insert_one_row_and_the_rest_already_exist() {
                let Some(pool) = setup(16).await else { return };
                let barrier = Arc::new(Barrier::new(RACERS));
                let insert = sql("INSERT INTO orders (reference, total) VALUES (?, ?)");
                let racers: Vec<_> = (0..RACERS)
                    .map(|n| {
                        let (pool, barrier, insert) = (pool.clone(), barrier.clone(), insert.clone());
                        tokio::spawn(async move {
                            barrier.wait().await;
                            let mut tx = pool.begin().await.unwrap();
                            let query = sqlx::query(&insert).bind("po-1").bind(n as i32);
                            let outcome = insert_once(&mut *tx, query).await.unwrap();
                            // The transaction is usable after either outcome.
                            plain_insert(&mut tx, &format!("racer {n}")).await;
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

            #[tokio::test]
            async fn a_duplicate_leaves_the_transaction_usable_for_other_writes() {
                let Some(pool) = setup(2).await else { return };
                sqlx::query("INSERT INTO orders VALUES ('po-1', 10)").execute(&pool).await.unwrap();
                let mut tx = pool.begin().await.unwrap();
                plain_insert(&mut tx, "before").await;
                let again = insert_once(&mut *tx, sqlx::query("INSERT INTO orders VALUES ('po-1', 10)"))
                    .await
                    .unwrap();
                assert!(again.already_exists());
                plain_insert(&mut tx, "after").await;
                let other = insert_once(&mut *tx, sqlx::query("INSERT INTO orders VALUES ('po-2', 20)"))
                    .await
                    .unwrap();
                assert!(matches!(other, Insert::Inserted(ref done) if done.rows_affected() == 1));
                tx.commit().await.unwrap();
                assert_eq!(count(&pool, "audit").await, 2);
                assert_eq!(count(&pool, "orders").await, 2);
            }

            #[tokio::test]
            async fn a_not_null_violation_stays_an_error_and_is_rolled_back_alone() {
                let Some(pool) = setup(2).await else { return };
                let mut tx = pool.begin().await.unwrap();
                let failed = insert_once(&mut *tx, sqlx::query("INSERT INTO orders VALUES ('po-1', NULL)")).await;
                match failed {
                    Err(Error::Database(e)) => assert_eq!(<Db as Backend>::error_kind(&e), ErrorKind::Other),
                    other => panic!("a NOT NULL violation is no duplicate: {other:?}"),
                }
                plain_insert(&mut tx, "after").await;
                tx.commit().await.unwrap();
                assert_eq!(count(&pool, "orders").await, 0);
                assert_eq!(count(&pool, "audit").await, 1);
            }

            #[tokio::test]
            async fn on_a_pool_the_insert_runs_in_its_own_transaction() {
                let Some(pool) = setup(2).await else { return };
                let insert = || sqlx::query("INSERT INTO orders VALUES ('po-1', 10)");
                assert!(insert_once(&pool, insert()).await.unwrap().is_inserted());
                assert!(insert_once(&pool, insert()).await.unwrap().already_exists());
                let mut conn = pool.acquire().await.unwrap();
                assert!(insert_once(&mut *conn, insert()).await.unwrap().already_exists());
                assert_eq!(count(&pool, "orders").await, 1);
            }

            #[tokio::test]
            async fn a_row_inserted_once_rolls_back_with_the_callers_transaction() {
                let Some(pool) = setup(2).await else { return };
                let mut tx = pool.begin().await.unwrap();
                let first = insert_once(&mut *tx, sqlx::query("INSERT INTO orders VALUES ('po-1', 10)"))
                    .await
                    .unwrap();
                assert!(first.is_inserted());
                tx.rollback().await.unwrap();
                assert_eq!(count(&pool, "orders").await, 0);
            }
        }
    };
}

async fn sqlite(connections: u32) -> Option<sqlx::SqlitePool> {
    Some(common::sqlite(connections).await)
}

insert_once_suite!(sqlite_insert_once, sqlx::Sqlite, sqlite);
insert_once_suite!(postgres_insert_once, sqlx::Postgres, common::postgres);
insert_once_suite!(mysql_insert_once, sqlx::MySql, common::mysql);

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
