//! The test harness shared by the conformance suites: one isolated database
//! per test on every backend.
//!
//! SQLite always runs (a fresh file in WAL mode per test). PostgreSQL and
//! MySQL run when `IDEM_TEST_POSTGRES` / `IDEM_TEST_MYSQL` hold URLs; each
//! test gets its own schema (PostgreSQL) or database (MySQL), named
//! `idem_t_<pid>_<n>`, and leftovers of finished processes are dropped.
//! With `CI` set, a missing URL or an unreachable server fails the test: a
//! backend is never skipped silently in CI.
#![allow(dead_code)]

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::{ConnectOptions, Connection, Executor};
use tokio::sync::OnceCell;

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn unique_name() -> String {
    format!(
        "idem_t_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// The URL of a backend, or `None` to skip it. Panics in CI when unset.
fn url(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var_os("CI").is_some() => {
            panic!("CI is set but {var} is not: every backend suite must run in CI")
        }
        _ => {
            eprintln!("{var} is not set: skipping this backend (set it to run the suite)");
            None
        }
    }
}

/// Whether a leftover `idem_t_<pid>_<n>` belongs to a process that is gone.
fn is_stale(name: &str) -> bool {
    let pid = name
        .strip_prefix("idem_t_")
        .and_then(|rest| rest.split('_').next())
        .and_then(|pid| pid.parse::<u32>().ok());
    match pid {
        Some(pid) => pid != std::process::id() && !PathBuf::from(format!("/proc/{pid}")).exists(),
        None => false,
    }
}

/// A fresh SQLite database file in WAL mode with a busy timeout, shared by
/// `max` connections.
pub async fn sqlite(max: u32) -> SqlitePool {
    let dir = std::env::temp_dir().join("idem-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{}.db", unique_name()));
    let _ = std::fs::remove_file(&path);
    let options = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(30));
    SqlitePoolOptions::new()
        .max_connections(max)
        .connect_with(options)
        .await
        .expect("open SQLite test database")
}

static PG_CLEANED: OnceCell<()> = OnceCell::const_new();

/// A pool of `max` connections whose `search_path` is a fresh schema, or
/// `None` when `IDEM_TEST_POSTGRES` is unset outside CI.
///
/// With `IDEM_TEST_POSTGRES_PROTOCOL=simple` the test binary sends idem's
/// statements with the simple query protocol
/// (`idem_sqlx::postgres::set_protocol`), so a whole suite can be run in
/// that mode: `IDEM_TEST_POSTGRES_PROTOCOL=simple cargo test --test keys`.
pub async fn postgres(max: u32) -> Option<PgPool> {
    let url = url("IDEM_TEST_POSTGRES")?;
    if std::env::var("IDEM_TEST_POSTGRES_PROTOCOL").as_deref() == Ok("simple") {
        idem_sqlx::postgres::set_protocol(idem_sqlx::postgres::Protocol::Simple);
    }
    let options = PgConnectOptions::from_str(&url).expect("IDEM_TEST_POSTGRES is a valid URL");
    let mut admin = options
        .connect()
        .await
        .unwrap_or_else(|e| panic!("cannot connect to IDEM_TEST_POSTGRES={url}: {e}"));
    PG_CLEANED
        .get_or_init(|| async {
            let names: Vec<String> = sqlx::query_scalar(
                "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'idem\\_t\\_%'",
            )
            .fetch_all(&mut admin)
            .await
            .unwrap();
            for name in names.into_iter().filter(|n| is_stale(n)) {
                let _ = admin
                    .execute(format!("DROP SCHEMA IF EXISTS {name} CASCADE").as_str())
                    .await;
            }
        })
        .await;
    let schema = unique_name();
    admin
        .execute(format!("CREATE SCHEMA {schema}").as_str())
        .await
        .unwrap();
    admin.close().await.unwrap();
    let pool = PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(60))
        .after_connect(move |conn, _| {
            let set = format!("SET search_path TO {schema}");
            Box::pin(async move {
                conn.execute(set.as_str()).await?;
                Ok(())
            })
        })
        .connect_with(options)
        .await
        .unwrap();
    Some(pool)
}

static MY_CLEANED: OnceCell<()> = OnceCell::const_new();

/// A pool of `max` connections to a fresh database, or `None` when
/// `IDEM_TEST_MYSQL` is unset outside CI.
pub async fn mysql(max: u32) -> Option<MySqlPool> {
    let url = url("IDEM_TEST_MYSQL")?;
    let options = MySqlConnectOptions::from_str(&url).expect("IDEM_TEST_MYSQL is a valid URL");
    let mut admin = options
        .connect()
        .await
        .unwrap_or_else(|e| panic!("cannot connect to IDEM_TEST_MYSQL={url}: {e}"));
    MY_CLEANED
        .get_or_init(|| async {
            let names: Vec<String> = sqlx::query_scalar(
                "SELECT CAST(schema_name AS CHAR) FROM information_schema.schemata \
                 WHERE schema_name LIKE 'idem\\_t\\_%'",
            )
            .fetch_all(&mut admin)
            .await
            .unwrap();
            for name in names.into_iter().filter(|n| is_stale(n)) {
                let _ = admin
                    .execute(format!("DROP DATABASE IF EXISTS {name}").as_str())
                    .await;
            }
        })
        .await;
    let database = unique_name();
    admin
        .execute(format!("CREATE DATABASE {database}").as_str())
        .await
        .unwrap();
    admin.close().await.unwrap();
    let pool = MySqlPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(60))
        .connect_with(options.database(&database))
        .await
        .unwrap();
    Some(pool)
}
