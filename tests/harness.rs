//! The harness itself: every backend that is configured hands out an
//! isolated, working database.

mod common;

#[tokio::test]
async fn sqlite_databases_are_isolated_files_in_wal_mode() {
    let a = common::sqlite(2).await;
    let b = common::sqlite(2).await;
    sqlx::query("CREATE TABLE t (x INTEGER)")
        .execute(&a)
        .await
        .unwrap();
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&a)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    let in_b: i64 = sqlx::query_scalar("SELECT count(*) FROM sqlite_master WHERE name = 't'")
        .fetch_one(&b)
        .await
        .unwrap();
    assert_eq!(in_b, 0);
}

#[tokio::test]
async fn postgres_schemas_are_isolated() {
    let (Some(a), Some(b)) = (common::postgres(2).await, common::postgres(2).await) else {
        return;
    };
    sqlx::query("CREATE TABLE t (x INT)")
        .execute(&a)
        .await
        .unwrap();
    sqlx::query("CREATE TABLE t (x INT)")
        .execute(&b)
        .await
        .unwrap();
    sqlx::query("INSERT INTO t VALUES (1)")
        .execute(&a)
        .await
        .unwrap();
    let in_b: i64 = sqlx::query_scalar("SELECT count(*) FROM t")
        .fetch_one(&b)
        .await
        .unwrap();
    assert_eq!(in_b, 0);
}

#[tokio::test]
async fn mysql_databases_are_isolated() {
    let (Some(a), Some(b)) = (common::mysql(2).await, common::mysql(2).await) else {
        return;
    };
    sqlx::query("CREATE TABLE t (x INT)")
        .execute(&a)
        .await
        .unwrap();
    sqlx::query("CREATE TABLE t (x INT)")
        .execute(&b)
        .await
        .unwrap();
    sqlx::query("INSERT INTO t VALUES (1)")
        .execute(&a)
        .await
        .unwrap();
    let in_b: i64 = sqlx::query_scalar("SELECT count(*) FROM t")
        .fetch_one(&b)
        .await
        .unwrap();
    assert_eq!(in_b, 0);
}
