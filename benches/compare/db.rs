//! The three backends: where the bench's database lives, its pools, its
//! tables, and the hand-written baselines — the SQL a user would write
//! without idem, sent through the same pool with the same statement cache.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use futures::future::BoxFuture;
use idem::keys::{Fingerprint, IdempotencyKey, Scope, StoredResponse};
use idem_sqlx::inbox::InboxBackend;
use idem_sqlx::keys::{Once, SqlKeyStore};
use idem_sqlx::Backend;
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sqlx::pool::PoolOptions;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection, Executor, MySql, Pool, Postgres, Sqlite};

/// The prefix of the bench's schemas (PostgreSQL), databases (MySQL) and
/// files (SQLite): `idem_bench_<pid>`.
const PREFIX: &str = "idem_bench_";

/// Pool settings shared by every pool of the bench, so that the baseline
/// and idem always run on identically configured connections: no ping
/// before acquire (PITFALLS.md), every connection open before timing, and
/// sqlx's default statement cache (100 prepared statements per connection).
fn pool_options<DB: sqlx::Database>(size: u32) -> PoolOptions<DB> {
    PoolOptions::new()
        .max_connections(size)
        .min_connections(size)
        .test_before_acquire(false)
        .acquire_timeout(Duration::from_secs(60))
}

/// The statements of the hand-written baselines and of the bench's own
/// bookkeeping, in one dialect.
pub struct Sql {
    pub schema: &'static str,
    /// The hand-written transition (scenarios a, b, d).
    pub guarded_update: &'static str,
    /// The naive pattern's read and its unguarded update (scenario c).
    pub read_for_update: &'static str,
    pub plain_update: &'static str,
    /// The one-row write of handlers and bare operations (d, f, g).
    pub insert_payment: &'static str,
    /// The inbox marker, the same statement idem sends (g).
    pub insert_marker: &'static str,
    pub reset_range: &'static str,
    pub count_range: &'static str,
    pub count_markers: &'static str,
    /// Run before each scenario: the resets leave PostgreSQL dead row
    /// versions that autovacuum, busy on a loaded machine, may not have
    /// cleaned yet; every scenario starts from a vacuumed table.
    pub maintenance: &'static str,
}

const POSTGRES_SQL: Sql = Sql {
    schema: "
CREATE TABLE bench_invoices (id BIGINT PRIMARY KEY, status VARCHAR(16) NOT NULL);
CREATE TABLE bench_payments (id BIGSERIAL PRIMARY KEY, invoice_id BIGINT NOT NULL);",
    guarded_update:
        "UPDATE bench_invoices SET status = 'issued' WHERE id = $1 AND status = 'draft'",
    read_for_update: "SELECT status FROM bench_invoices WHERE id = $1 FOR UPDATE",
    plain_update: "UPDATE bench_invoices SET status = 'issued' WHERE id = $1",
    insert_payment: "INSERT INTO bench_payments (invoice_id) VALUES ($1)",
    insert_marker:
        "INSERT INTO idem_inbox (consumer, event_id, processed_at) VALUES ($1, $2, now()) \
                    ON CONFLICT (consumer, event_id) DO NOTHING",
    reset_range:
        "UPDATE bench_invoices SET status = $1 WHERE id >= $2 AND id < $3 AND status <> $1",
    count_range: "SELECT count(*) FROM bench_invoices WHERE status = $1 AND id >= $2 AND id < $3",
    count_markers: "SELECT count(*) FROM idem_inbox WHERE consumer = $1",
    maintenance: "VACUUM ANALYZE bench_invoices, bench_payments, idem_keys, idem_inbox",
};

const MYSQL_SQL: Sql = Sql {
    schema: "
CREATE TABLE bench_invoices (id BIGINT PRIMARY KEY, status VARCHAR(16) NOT NULL) ENGINE = InnoDB;
CREATE TABLE bench_payments (id BIGINT AUTO_INCREMENT PRIMARY KEY, invoice_id BIGINT NOT NULL) ENGINE = InnoDB;",
    guarded_update: "UPDATE bench_invoices SET status = 'issued' WHERE id = ? AND status = 'draft'",
    read_for_update: "SELECT status FROM bench_invoices WHERE id = ? FOR UPDATE",
    plain_update: "UPDATE bench_invoices SET status = 'issued' WHERE id = ?",
    insert_payment: "INSERT INTO bench_payments (invoice_id) VALUES (?)",
    insert_marker: "INSERT IGNORE INTO idem_inbox (consumer, event_id, processed_at) \
                    VALUES (?, ?, UTC_TIMESTAMP(6))",
    reset_range: "UPDATE bench_invoices SET status = ? WHERE id >= ? AND id < ? AND status <> ?",
    count_range: "SELECT count(*) FROM bench_invoices WHERE status = ? AND id >= ? AND id < ?",
    count_markers: "SELECT count(*) FROM idem_inbox WHERE consumer = ?",
    maintenance: "",
};

const SQLITE_SQL: Sql = Sql {
    schema: "
CREATE TABLE bench_invoices (id INTEGER PRIMARY KEY, status TEXT NOT NULL);
CREATE TABLE bench_payments (id INTEGER PRIMARY KEY, invoice_id INTEGER NOT NULL);",
    guarded_update:
        "UPDATE bench_invoices SET status = 'issued' WHERE id = ?1 AND status = 'draft'",
    read_for_update: "SELECT status FROM bench_invoices WHERE id = ?1",
    plain_update: "UPDATE bench_invoices SET status = 'issued' WHERE id = ?1",
    insert_payment: "INSERT INTO bench_payments (invoice_id) VALUES (?1)",
    insert_marker: "INSERT INTO idem_inbox (consumer, event_id, processed_at) \
                    VALUES (?1, ?2, strftime('%Y-%m-%d %H:%M:%f', 'now')) \
                    ON CONFLICT (consumer, event_id) DO NOTHING",
    reset_range:
        "UPDATE bench_invoices SET status = ?1 WHERE id >= ?2 AND id < ?3 AND status <> ?1",
    count_range: "SELECT count(*) FROM bench_invoices WHERE status = ?1 AND id >= ?2 AND id < ?3",
    count_markers: "SELECT count(*) FROM idem_inbox WHERE consumer = ?1",
    maintenance: "",
};

/// Where one backend's bench database lives.
#[derive(Debug, Clone)]
pub enum Target {
    Sqlite(PathBuf),
    Postgres { url: String, schema: String },
    MySql { url: String, database: String },
}

fn bench_name() -> String {
    format!("{PREFIX}{}", std::process::id())
}

/// Whether a leftover `idem_bench_<pid>` belongs to a process that is gone.
fn is_stale(name: &str) -> bool {
    name.strip_prefix(PREFIX)
        .and_then(|pid| pid.parse::<u32>().ok())
        .is_some_and(|pid| {
            pid != std::process::id() && !PathBuf::from(format!("/proc/{pid}")).exists()
        })
}

impl Target {
    /// A fresh SQLite file (removed by [`Target::drop_all`]).
    pub fn sqlite() -> Target {
        let dir = std::env::temp_dir().join("idem-bench");
        std::fs::create_dir_all(&dir).expect("create the bench's temp directory");
        let entries = std::fs::read_dir(&dir).expect("list the bench's temp directory");
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let stem = name.split('.').next().unwrap_or_default();
            if is_stale(stem) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let path = dir.join(format!("{}.db", bench_name()));
        remove_sqlite_files(&path);
        Target::Sqlite(path)
    }

    /// Creates a fresh schema on the PostgreSQL server at `url`, dropping
    /// leftovers of bench processes that are gone.
    pub async fn postgres(url: &str) -> Target {
        let options = PgConnectOptions::from_str(url).expect("the PostgreSQL URL is valid");
        let mut admin = options
            .connect()
            .await
            .unwrap_or_else(|e| panic!("cannot connect to PostgreSQL at {url}: {e}"));
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'idem\\_bench\\_%'",
        )
        .fetch_all(&mut admin)
        .await
        .expect("list schemas");
        for name in names.into_iter().filter(|n| is_stale(n)) {
            admin
                .execute(format!("DROP SCHEMA IF EXISTS {name} CASCADE").as_str())
                .await
                .expect("drop a stale bench schema");
        }
        let schema = bench_name();
        admin
            .execute(
                format!("DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}").as_str(),
            )
            .await
            .expect("create the bench schema");
        admin.close().await.expect("close");
        Target::Postgres {
            url: url.to_owned(),
            schema,
        }
    }

    /// Creates a fresh database on the MySQL/MariaDB server at `url`,
    /// dropping leftovers of bench processes that are gone.
    pub async fn mysql(url: &str) -> Target {
        let options = MySqlConnectOptions::from_str(url).expect("the MySQL URL is valid");
        let mut admin = options
            .connect()
            .await
            .unwrap_or_else(|e| panic!("cannot connect to MySQL at {url}: {e}"));
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT CAST(schema_name AS CHAR) FROM information_schema.schemata \
             WHERE schema_name LIKE 'idem\\_bench\\_%'",
        )
        .fetch_all(&mut admin)
        .await
        .expect("list databases");
        for name in names.into_iter().filter(|n| is_stale(n)) {
            admin
                .execute(format!("DROP DATABASE IF EXISTS {name}").as_str())
                .await
                .expect("drop a stale bench database");
        }
        let database = bench_name();
        admin
            .execute(format!("DROP DATABASE IF EXISTS {database}").as_str())
            .await
            .expect("drop the bench database");
        admin
            .execute(format!("CREATE DATABASE {database}").as_str())
            .await
            .expect("create the bench database");
        admin.close().await.expect("close");
        Target::MySql {
            url: url.to_owned(),
            database,
        }
    }

    /// Drops the schema, database or file.
    pub async fn drop_all(&self) {
        match self {
            Target::Sqlite(path) => remove_sqlite_files(path),
            Target::Postgres { url, schema } => {
                let mut admin = PgConnectOptions::from_str(url)
                    .expect("valid URL")
                    .connect()
                    .await
                    .expect("connect to drop the bench schema");
                admin
                    .execute(format!("DROP SCHEMA IF EXISTS {schema} CASCADE").as_str())
                    .await
                    .expect("drop the bench schema");
            }
            Target::MySql { url, database } => {
                let mut admin = MySqlConnectOptions::from_str(url)
                    .expect("valid URL")
                    .connect()
                    .await
                    .expect("connect to drop the bench database");
                admin
                    .execute(format!("DROP DATABASE IF EXISTS {database}").as_str())
                    .await
                    .expect("drop the bench database");
            }
        }
    }
}

fn remove_sqlite_files(path: &std::path::Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        let _ = std::fs::remove_file(file);
    }
}

/// A backend the bench runs on: idem's statements come from idem, the
/// baseline's from [`BenchDb::SQL`], both through pools from
/// [`BenchDb::pool`].
pub trait BenchDb: Backend + InboxBackend {
    const LABEL: &'static str;
    const SQL: &'static Sql;

    /// A pool of `size` connections, all open.
    fn pool(target: &Target, size: u32) -> BoxFuture<'_, Pool<Self>>;

    /// The server's version.
    fn version(pool: &Pool<Self>) -> BoxFuture<'_, String>;

    /// Runs statements without parameters (DDL, bulk inserts).
    fn exec<'a>(pool: &'a Pool<Self>, sql: &'a str) -> BoxFuture<'a, ()>;

    /// Sets `status` on the rows `lo..hi` that have another one.
    fn reset_range<'a>(
        pool: &'a Pool<Self>,
        status: &'a str,
        lo: i64,
        hi: i64,
    ) -> BoxFuture<'a, ()>;

    /// How many rows of `lo..hi` have `status`.
    fn count_range<'a>(
        pool: &'a Pool<Self>,
        status: &'a str,
        lo: i64,
        hi: i64,
    ) -> BoxFuture<'a, i64>;

    /// A `SELECT count(*)` without parameters.
    fn count<'a>(pool: &'a Pool<Self>, sql: &'a str) -> BoxFuture<'a, i64>;

    /// How many inbox markers `consumer` has.
    fn count_markers<'a>(pool: &'a Pool<Self>, consumer: &'a str) -> BoxFuture<'a, i64>;

    /// Baseline a/b: the guarded `UPDATE`; returns `rows_affected`.
    fn guarded_update(pool: &Pool<Self>, id: i64) -> BoxFuture<'_, u64>;

    /// Baseline c: `BEGIN; SELECT status ... FOR UPDATE; UPDATE; COMMIT`
    /// (a plain `SELECT` after `BEGIN IMMEDIATE` on SQLite); `true` when it
    /// moved the row.
    fn naive_move(pool: &Pool<Self>, id: i64) -> BoxFuture<'_, bool>;

    /// Baseline d: in one transaction, the guarded `UPDATE` and, when it
    /// moved the row, the one-row insert; `true` when it moved the row.
    fn move_and_record(pool: &Pool<Self>, id: i64) -> BoxFuture<'_, bool>;

    /// The one-row insert of handlers, inside their transaction.
    fn insert_payment(
        conn: &mut Self::Connection,
        id: i64,
    ) -> BoxFuture<'_, Result<(), sqlx::Error>>;

    /// Baseline f: the bare operation, the one-row insert on its own.
    fn bare_insert(pool: &Pool<Self>, id: i64) -> BoxFuture<'_, ()>;

    /// Baseline g: in one transaction, insert the marker and, when it was
    /// new, the one-row insert; `true` when the marker was new.
    fn marker_and_record<'a>(
        pool: &'a Pool<Self>,
        consumer: &'a str,
        event_id: &'a str,
        id: i64,
    ) -> BoxFuture<'a, bool>;

    /// idem f: the one-row insert under an idempotency key, transactional
    /// mode ([`SqlKeyStore::run_once`]).
    fn run_once<'a>(
        store: &'a SqlKeyStore<Self>,
        scope: &'a Scope,
        key: &'a IdempotencyKey,
        fingerprint: &'a Fingerprint,
        id: i64,
    ) -> BoxFuture<'a, Once>;

    /// Installs idem's key and inbox tables.
    fn install_idem(pool: &Pool<Self>) -> BoxFuture<'_, ()>;
}

/// `unwrap_or_else(fail("..."))`: the bench stops at the first database
/// error, so a broken path is never timed.
fn fail<E: std::fmt::Display, T>(what: &'static str) -> impl Fn(E) -> T {
    move |e| panic!("{what}: {e}")
}

macro_rules! bench_db {
    ($db:ty, $label:literal, $sql:expr) => {
        impl BenchDb for $db {
            const LABEL: &'static str = $label;
            const SQL: &'static Sql = &$sql;

            fn pool(target: &Target, size: u32) -> BoxFuture<'_, Pool<Self>> {
                Box::pin(connect(target, size))
            }

            fn version(pool: &Pool<Self>) -> BoxFuture<'_, String> {
                Box::pin(async move {
                    let sql = match <$db as Backend>::DIALECT {
                        idem::Dialect::Sqlite => "SELECT sqlite_version()",
                        _ => "SELECT version()",
                    };
                    sqlx::query_scalar(sql)
                        .fetch_one(pool)
                        .await
                        .unwrap_or_else(fail("read the server version"))
                })
            }

            fn exec<'a>(pool: &'a Pool<Self>, sql: &'a str) -> BoxFuture<'a, ()> {
                Box::pin(async move {
                    sqlx::raw_sql(sql)
                        .execute(pool)
                        .await
                        .unwrap_or_else(fail("run bench SQL"));
                })
            }

            fn reset_range<'a>(
                pool: &'a Pool<Self>,
                status: &'a str,
                lo: i64,
                hi: i64,
            ) -> BoxFuture<'a, ()> {
                Box::pin(async move {
                    let query = sqlx::query(Self::SQL.reset_range)
                        .bind(status)
                        .bind(lo)
                        .bind(hi);
                    // MySQL's `?` are positional: bind the status twice.
                    let query = if <$db as Backend>::DIALECT == idem::Dialect::MySql {
                        query.bind(status)
                    } else {
                        query
                    };
                    query.execute(pool).await.unwrap_or_else(fail("reset rows"));
                })
            }

            fn count_range<'a>(
                pool: &'a Pool<Self>,
                status: &'a str,
                lo: i64,
                hi: i64,
            ) -> BoxFuture<'a, i64> {
                Box::pin(async move {
                    sqlx::query_scalar(Self::SQL.count_range)
                        .bind(status)
                        .bind(lo)
                        .bind(hi)
                        .fetch_one(pool)
                        .await
                        .unwrap_or_else(fail("count rows"))
                })
            }

            fn count<'a>(pool: &'a Pool<Self>, sql: &'a str) -> BoxFuture<'a, i64> {
                Box::pin(async move {
                    sqlx::query_scalar(sql)
                        .fetch_one(pool)
                        .await
                        .unwrap_or_else(fail("count rows"))
                })
            }

            fn count_markers<'a>(pool: &'a Pool<Self>, consumer: &'a str) -> BoxFuture<'a, i64> {
                Box::pin(async move {
                    sqlx::query_scalar(Self::SQL.count_markers)
                        .bind(consumer)
                        .fetch_one(pool)
                        .await
                        .unwrap_or_else(fail("count markers"))
                })
            }

            fn guarded_update(pool: &Pool<Self>, id: i64) -> BoxFuture<'_, u64> {
                Box::pin(async move {
                    sqlx::query(Self::SQL.guarded_update)
                        .bind(id)
                        .execute(pool)
                        .await
                        .unwrap_or_else(fail("baseline: guarded update"))
                        .rows_affected()
                })
            }

            fn naive_move(pool: &Pool<Self>, id: i64) -> BoxFuture<'_, bool> {
                Box::pin(async move {
                    let mut tx = pool
                        .begin_with(<$db as Backend>::BEGIN_WRITE)
                        .await
                        .unwrap_or_else(fail("baseline: begin"));
                    let status: Option<String> = sqlx::query_scalar(Self::SQL.read_for_update)
                        .bind(id)
                        .fetch_optional(&mut *tx)
                        .await
                        .unwrap_or_else(fail("baseline: read for update"));
                    if status.as_deref() != Some("draft") {
                        tx.rollback()
                            .await
                            .unwrap_or_else(fail("baseline: rollback"));
                        return false;
                    }
                    sqlx::query(Self::SQL.plain_update)
                        .bind(id)
                        .execute(&mut *tx)
                        .await
                        .unwrap_or_else(fail("baseline: update"));
                    tx.commit().await.unwrap_or_else(fail("baseline: commit"));
                    true
                })
            }

            fn move_and_record(pool: &Pool<Self>, id: i64) -> BoxFuture<'_, bool> {
                Box::pin(async move {
                    let mut tx = pool
                        .begin_with(<$db as Backend>::BEGIN_WRITE)
                        .await
                        .unwrap_or_else(fail("baseline: begin"));
                    let moved = sqlx::query(Self::SQL.guarded_update)
                        .bind(id)
                        .execute(&mut *tx)
                        .await
                        .unwrap_or_else(fail("baseline: guarded update"))
                        .rows_affected()
                        == 1;
                    if moved {
                        Self::insert_payment(&mut tx, id)
                            .await
                            .unwrap_or_else(fail("baseline: insert"));
                    }
                    tx.commit().await.unwrap_or_else(fail("baseline: commit"));
                    moved
                })
            }

            fn insert_payment(
                conn: &mut Self::Connection,
                id: i64,
            ) -> BoxFuture<'_, Result<(), sqlx::Error>> {
                Box::pin(async move {
                    sqlx::query(Self::SQL.insert_payment)
                        .bind(id)
                        .execute(conn)
                        .await?;
                    Ok(())
                })
            }

            fn bare_insert(pool: &Pool<Self>, id: i64) -> BoxFuture<'_, ()> {
                Box::pin(async move {
                    sqlx::query(Self::SQL.insert_payment)
                        .bind(id)
                        .execute(pool)
                        .await
                        .unwrap_or_else(fail("baseline: insert"));
                })
            }

            fn marker_and_record<'a>(
                pool: &'a Pool<Self>,
                consumer: &'a str,
                event_id: &'a str,
                id: i64,
            ) -> BoxFuture<'a, bool> {
                Box::pin(async move {
                    let mut tx = pool
                        .begin_with(<$db as Backend>::BEGIN_WRITE)
                        .await
                        .unwrap_or_else(fail("baseline: begin"));
                    let new = sqlx::query(Self::SQL.insert_marker)
                        .bind(consumer)
                        .bind(event_id)
                        .execute(&mut *tx)
                        .await
                        .unwrap_or_else(fail("baseline: insert marker"))
                        .rows_affected()
                        == 1;
                    if new {
                        Self::insert_payment(&mut tx, id)
                            .await
                            .unwrap_or_else(fail("baseline: insert"));
                    }
                    tx.commit().await.unwrap_or_else(fail("baseline: commit"));
                    new
                })
            }

            fn run_once<'a>(
                store: &'a SqlKeyStore<Self>,
                scope: &'a Scope,
                key: &'a IdempotencyKey,
                fingerprint: &'a Fingerprint,
                id: i64,
            ) -> BoxFuture<'a, Once> {
                Box::pin(async move {
                    store
                        .run_once::<sqlx::Error, _>(scope, key, fingerprint, move |tx| {
                            Box::pin(async move {
                                Self::insert_payment(tx, id).await?;
                                Ok(StoredResponse::new(201, b"paid".to_vec()))
                            })
                        })
                        .await
                        .unwrap_or_else(fail("idem: run_once"))
                })
            }

            fn install_idem(pool: &Pool<Self>) -> BoxFuture<'_, ()> {
                Box::pin(async move {
                    SqlKeyStore::new(pool.clone())
                        .install()
                        .await
                        .unwrap_or_else(fail("install idem_keys"));
                    idem_sqlx::inbox::install(pool)
                        .await
                        .unwrap_or_else(fail("install idem_inbox"));
                })
            }
        }
    };
}

bench_db!(Postgres, "PostgreSQL", POSTGRES_SQL);
bench_db!(MySql, "MySQL", MYSQL_SQL);
bench_db!(Sqlite, "SQLite", SQLITE_SQL);

/// Pools of every backend, from a [`Target`] of that backend.
trait Connect: sqlx::Database {
    fn connect(target: &Target, size: u32) -> BoxFuture<'_, Pool<Self>>;
}

async fn connect<DB: Connect>(target: &Target, size: u32) -> Pool<DB> {
    DB::connect(target, size).await
}

impl Connect for Postgres {
    fn connect(target: &Target, size: u32) -> BoxFuture<'_, Pool<Self>> {
        Box::pin(async move {
            let Target::Postgres { url, schema } = target else {
                panic!("a PostgreSQL pool needs a PostgreSQL target")
            };
            // `IDEM_BENCH_PG_SYNCHRONOUS_COMMIT=off` sets the session's
            // synchronous_commit on every connection of both sides, so that
            // commits stop waiting for the disk and the figures show what
            // the statements cost (the server's setting is left alone).
            let mut set = format!("SET search_path TO {schema}");
            if let Ok(value) = std::env::var("IDEM_BENCH_PG_SYNCHRONOUS_COMMIT") {
                assert!(
                    ["on", "off", "local", "remote_write", "remote_apply"]
                        .contains(&value.as_str()),
                    "IDEM_BENCH_PG_SYNCHRONOUS_COMMIT={value} is not a synchronous_commit value"
                );
                set.push_str(&format!("; SET synchronous_commit = {value}"));
            }
            let options: PgPoolOptions = pool_options(size);
            options
                .after_connect(move |conn, _| {
                    let set = set.clone();
                    Box::pin(async move {
                        conn.execute(set.as_str()).await?;
                        Ok(())
                    })
                })
                .connect_with(PgConnectOptions::from_str(url).expect("valid URL"))
                .await
                .unwrap_or_else(fail("open the PostgreSQL pool"))
        })
    }
}

impl Connect for MySql {
    fn connect(target: &Target, size: u32) -> BoxFuture<'_, Pool<Self>> {
        Box::pin(async move {
            let Target::MySql { url, database } = target else {
                panic!("a MySQL pool needs a MySQL target")
            };
            let options: MySqlPoolOptions = pool_options(size);
            options
                .connect_with(
                    MySqlConnectOptions::from_str(url)
                        .expect("valid URL")
                        .database(database),
                )
                .await
                .unwrap_or_else(fail("open the MySQL pool"))
        })
    }
}

impl Connect for Sqlite {
    fn connect(target: &Target, size: u32) -> BoxFuture<'_, Pool<Self>> {
        Box::pin(async move {
            let Target::Sqlite(path) = target else {
                panic!("a SQLite pool needs a SQLite target")
            };
            // WAL with synchronous = NORMAL, the usual production setting
            // for WAL: commits do not wait for an fsync, so the figures
            // show the statements' cost rather than the disk's.
            let connect = SqliteConnectOptions::new()
                .filename(path)
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(30));
            let options: SqlitePoolOptions = pool_options(size);
            options
                .connect_with(connect)
                .await
                .unwrap_or_else(fail("open the SQLite pool"))
        })
    }
}
