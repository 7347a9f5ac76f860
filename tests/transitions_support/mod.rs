//! What the transition conformance suite needs beyond tests/common: the
//! state machines under test, per-backend DDL and raw SQL helpers, pools
//! with a chosen isolation level, and a tracing subscriber that records the
//! statements (and retries) one future sends.
#![allow(dead_code)]

use std::cell::RefCell;
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use idem::StateMachine;
use idem_sqlx::Backend;
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Executor, MySql, Pool, Postgres, Sqlite};
use tracing::subscriber::Interest;
use tracing::Instrument;
use tracing::{Event, Metadata, Subscriber};

use crate::common;

/// Invoices with a history table and an extra assignment on `pay`.
#[derive(StateMachine, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[state_machine(
    table = "invoices",
    column = "status",
    key = "id",
    history = "invoice_history"
)]
#[state_machine(transitions(
    issue: Draft -> Issued,
    pay: Issued -> Paid,
    void: Draft | Issued -> Void,
    refund: Paid -> Refunded,
    archive: _ -> Archived,
))]
#[state_machine(assign(pay, paid_at = "CURRENT_TIMESTAMP"))]
pub enum Invoice {
    #[state_machine(initial)]
    Draft,
    Issued,
    Paid,
    Void,
    Refunded,
    Archived,
}

/// The same table without history: the statement budget of a bare call.
#[derive(StateMachine, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[state_machine(table = "invoices", column = "status", key = "id")]
#[state_machine(transitions(
    issue: Draft -> Issued,
    pay: Issued -> Paid,
    void: Draft | Issued -> Void,
    refund: Paid -> Refunded,
    archive: _ -> Archived,
))]
pub enum Bare {
    #[state_machine(initial)]
    Draft,
    Issued,
    Paid,
    Void,
    Refunded,
    Archived,
}

/// Accounts keyed by a text code.
#[derive(StateMachine, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[state_machine(
    table = "accounts",
    column = "state",
    key = "code",
    history = "account_history"
)]
#[state_machine(transitions(close: Open | Frozen -> Closed, freeze: Open -> Frozen))]
pub enum Account {
    #[state_machine(initial)]
    Open,
    Frozen,
    Closed,
}

/// Jobs keyed by a UUID.
#[derive(StateMachine, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[state_machine(table = "jobs", column = "state", key = "id")]
#[state_machine(transitions(start: Queued -> Running))]
pub enum Job {
    #[state_machine(initial)]
    Queued,
    Running,
}

/// A state machine with no table binding.
#[derive(StateMachine, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[state_machine(transitions(close: Open -> Shut))]
pub enum Door {
    #[state_machine(initial)]
    Open,
    Shut,
}

/// A server backend whose sessions can be set up.
pub trait Sessions: Db {
    /// A second pool of `max` connections on the same database (schema) as
    /// `pool` whose every connection runs `set` (one or more `SET`
    /// statements) when it opens.
    fn pool_with_session(
        pool: &Pool<Self>,
        max: u32,
        set: String,
    ) -> BoxFuture<'static, Pool<Self>>;
}

/// A server backend whose writers queue on row locks.
pub trait Locking: Sessions {
    /// A second pool on the same database as `pool` whose sessions use the
    /// isolation level `level` (`"READ COMMITTED"`, ...).
    fn pool_with_isolation(
        pool: &Pool<Self>,
        max: u32,
        level: &'static str,
    ) -> BoxFuture<'static, Pool<Self>>;

    /// How many sessions of the pools made by `pool_with_isolation` on
    /// this database wait for a row lock.
    fn waiting(pool: &Pool<Self>) -> BoxFuture<'_, i64>;
}

/// A backend the suite runs on: isolated pools and raw SQL helpers.
pub trait Db: Backend + Sized {
    /// The backend's name in messages.
    const BACKEND: &'static str;
    /// A column type for timestamps.
    const TIMESTAMP: &'static str;
    /// A column type for the UUID key.
    const UUID: &'static str;
    /// How many keys one batch statement could bind if `apply_many` did
    /// not split its batch: the bind-parameter limit over the most
    /// parameters one of its statements binds per key (MySQL's read binds
    /// each key three times, SQLite's `UPDATE` twice; PostgreSQL: the
    /// protocol's 65,535, although its batch binds one array).
    const UNSPLIT_KEYS: usize;
    /// Placeholder `n` (1-based).
    fn param(n: usize) -> String;

    /// A fresh isolated database, or `None` when the backend is not set up.
    fn pool(max: u32) -> BoxFuture<'static, Option<Pool<Self>>>;

    fn exec<'a>(pool: &'a Pool<Self>, sql: &'a str) -> BoxFuture<'a, ()>;
    fn count<'a>(pool: &'a Pool<Self>, sql: &'a str) -> BoxFuture<'a, i64>;
    fn text<'a>(pool: &'a Pool<Self>, sql: &'a str) -> BoxFuture<'a, Option<String>>;
}

/// The raw-SQL helpers of [`Db`]: the same body on every backend, written
/// once (the driver types differ, so a generic default would need a wall of
/// executor bounds).
macro_rules! raw_sql {
    () => {
        fn exec<'a>(pool: &'a Pool<Self>, sql: &'a str) -> BoxFuture<'a, ()> {
            Box::pin(async move {
                pool.execute(sql).await.unwrap();
            })
        }
        fn count<'a>(pool: &'a Pool<Self>, sql: &'a str) -> BoxFuture<'a, i64> {
            Box::pin(async move { sqlx::query_scalar(sql).fetch_one(pool).await.unwrap() })
        }
        fn text<'a>(pool: &'a Pool<Self>, sql: &'a str) -> BoxFuture<'a, Option<String>> {
            Box::pin(async move { sqlx::query_scalar(sql).fetch_one(pool).await.unwrap() })
        }
    };
}

/// How many charges the `charges` table holds for invoice `id`.
pub async fn charges<DB: Db>(pool: &Pool<DB>, id: i64) -> i64 {
    DB::count(
        pool,
        &format!("SELECT COUNT(*) FROM charges WHERE invoice_id = {id}"),
    )
    .await
}

impl Db for Sqlite {
    const BACKEND: &'static str = "sqlite";
    const TIMESTAMP: &'static str = "TEXT";
    const UUID: &'static str = "BLOB";
    const UNSPLIT_KEYS: usize = 32_766 / 2;
    fn param(_: usize) -> String {
        "?".into()
    }
    fn pool(max: u32) -> BoxFuture<'static, Option<Pool<Self>>> {
        Box::pin(async move { Some(common::sqlite(max).await) })
    }
    raw_sql!();
}

impl Db for Postgres {
    const BACKEND: &'static str = "postgres";
    const TIMESTAMP: &'static str = "TIMESTAMPTZ";
    const UUID: &'static str = "UUID";
    const UNSPLIT_KEYS: usize = 65_535;
    fn param(n: usize) -> String {
        format!("${n}")
    }
    fn pool(max: u32) -> BoxFuture<'static, Option<Pool<Self>>> {
        Box::pin(common::postgres(max))
    }
    raw_sql!();
}

impl Sessions for Postgres {
    fn pool_with_session(
        pool: &Pool<Self>,
        max: u32,
        set: String,
    ) -> BoxFuture<'static, Pool<Self>> {
        let pool = pool.clone();
        Box::pin(async move {
            let schema: String = sqlx::query_scalar("SELECT current_schema()::text")
                .fetch_one(&pool)
                .await
                .unwrap();
            let url = std::env::var("IDEM_TEST_POSTGRES").unwrap();
            PgPoolOptions::new()
                .max_connections(max)
                .acquire_timeout(Duration::from_secs(60))
                .after_connect(move |conn, _| {
                    let set = format!(
                        "SET search_path TO {schema}; SET application_name TO '{schema}'; {set}"
                    );
                    Box::pin(async move {
                        conn.execute(set.as_str()).await?;
                        Ok(())
                    })
                })
                .connect_with(PgConnectOptions::from_str(&url).unwrap())
                .await
                .unwrap()
        })
    }
}

impl Locking for Postgres {
    fn pool_with_isolation(
        pool: &Pool<Self>,
        max: u32,
        level: &'static str,
    ) -> BoxFuture<'static, Pool<Self>> {
        let set = format!("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL {level}");
        Self::pool_with_session(pool, max, set)
    }
    fn waiting(pool: &Pool<Self>) -> BoxFuture<'_, i64> {
        Box::pin(Self::count(
            pool,
            "SELECT count(*) FROM pg_stat_activity \
             WHERE wait_event_type = 'Lock' AND application_name = current_schema()",
        ))
    }
}

impl Db for MySql {
    const BACKEND: &'static str = "mysql";
    const TIMESTAMP: &'static str = "TIMESTAMP(6) NULL";
    const UUID: &'static str = "BINARY(16)";
    const UNSPLIT_KEYS: usize = 65_535 / 3;
    fn param(_: usize) -> String {
        "?".into()
    }
    fn pool(max: u32) -> BoxFuture<'static, Option<Pool<Self>>> {
        Box::pin(common::mysql(max))
    }
    raw_sql!();
}

impl Sessions for MySql {
    fn pool_with_session(
        pool: &Pool<Self>,
        max: u32,
        set: String,
    ) -> BoxFuture<'static, Pool<Self>> {
        let pool = pool.clone();
        Box::pin(async move {
            let database: String = sqlx::query_scalar("SELECT CAST(DATABASE() AS CHAR)")
                .fetch_one(&pool)
                .await
                .unwrap();
            let url = std::env::var("IDEM_TEST_MYSQL").unwrap();
            MySqlPoolOptions::new()
                .max_connections(max)
                .acquire_timeout(Duration::from_secs(60))
                .after_connect(move |conn, _| {
                    let set = set.clone();
                    Box::pin(async move {
                        // The MySQL protocol runs one statement per query.
                        for statement in set.split(';').filter(|s| !s.trim().is_empty()) {
                            conn.execute(statement).await?;
                        }
                        Ok(())
                    })
                })
                .connect_with(
                    MySqlConnectOptions::from_str(&url)
                        .unwrap()
                        .database(&database),
                )
                .await
                .unwrap()
        })
    }
}

impl Locking for MySql {
    fn pool_with_isolation(
        pool: &Pool<Self>,
        max: u32,
        level: &'static str,
    ) -> BoxFuture<'static, Pool<Self>> {
        let set = format!("SET SESSION TRANSACTION ISOLATION LEVEL {level}");
        Self::pool_with_session(pool, max, set)
    }
    fn waiting(pool: &Pool<Self>) -> BoxFuture<'_, i64> {
        Box::pin(Self::count(
            pool,
            "SELECT COUNT(*) FROM information_schema.INNODB_TRX t \
             JOIN information_schema.PROCESSLIST p ON p.ID = t.trx_mysql_thread_id \
             WHERE t.trx_state = 'LOCK WAIT' AND p.DB = DATABASE()",
        ))
    }
}

/// Waits until `n` sessions of the isolation pools wait for a row lock.
pub async fn until_waiting<DB: Locking>(pool: &Pool<DB>, n: i64) {
    // InnoDB refreshes INNODB_TRX only when it was not read in the last
    // 100 ms: poll more slowly than that.
    for _ in 0..100 {
        if DB::waiting(pool).await >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    panic!(
        "{}: {n} sessions never queued for the row lock (last count {})",
        DB::BACKEND,
        DB::waiting(pool).await
    );
}

/// Creates the suite's tables (idem installs the history tables itself).
pub async fn setup<DB: Db>(pool: &Pool<DB>) {
    let ts = DB::TIMESTAMP;
    let text = if DB::BACKEND == "mysql" {
        "VARCHAR(64)"
    } else {
        "TEXT"
    };
    DB::exec(
        pool,
        &format!(
            "CREATE TABLE invoices (id BIGINT PRIMARY KEY, status {text} NOT NULL, paid_at {ts})"
        ),
    )
    .await;
    DB::exec(
        pool,
        &format!("CREATE TABLE accounts (code {text} PRIMARY KEY, state {text} NOT NULL)"),
    )
    .await;
    DB::exec(
        pool,
        &format!(
            "CREATE TABLE jobs (id {} PRIMARY KEY, state {text} NOT NULL)",
            DB::UUID
        ),
    )
    .await;
    DB::exec(
        pool,
        "CREATE TABLE charges (invoice_id BIGINT NOT NULL, amount BIGINT NOT NULL)",
    )
    .await;
    assert!(idem_sqlx::history::install::<Invoice, DB>(pool)
        .await
        .unwrap());
    // Installing twice is harmless.
    assert!(idem_sqlx::history::install::<Invoice, DB>(pool)
        .await
        .unwrap());
    assert!(idem_sqlx::history::install::<Account, DB>(pool)
        .await
        .unwrap());
    assert!(!idem_sqlx::history::install::<Bare, DB>(pool).await.unwrap());
}

/// Inserts invoice `id` in `status`.
pub async fn invoice<DB: Db>(pool: &Pool<DB>, id: i64, status: &str) {
    DB::exec(
        pool,
        &format!("INSERT INTO invoices (id, status) VALUES ({id}, '{status}')"),
    )
    .await;
}

/// The stored status of invoice `id`.
pub async fn status<DB: Db>(pool: &Pool<DB>, id: i64) -> String {
    DB::text(
        pool,
        &format!("SELECT status FROM invoices WHERE id = {id}"),
    )
    .await
    .unwrap()
}

/// The history rows of invoice `id`, oldest first, as `transition:from->to`.
pub async fn history<DB: Db>(pool: &Pool<DB>, id: i64) -> Vec<String> {
    let n = DB::count(
        pool,
        &format!("SELECT COUNT(*) FROM invoice_history WHERE entity_key = '{id}'"),
    )
    .await;
    let mut rows = Vec::new();
    for i in 0..n {
        let row = DB::text(
            pool,
            &format!(
                "SELECT {} FROM invoice_history WHERE entity_key = '{id}' ORDER BY id LIMIT 1 OFFSET {i}",
                concat(DB::BACKEND, &["transition", "':'", "from_state", "'->'", "to_state"])
            ),
        )
        .await
        .unwrap();
        rows.push(row);
    }
    rows
}

fn concat(backend: &str, parts: &[&str]) -> String {
    if backend == "mysql" {
        format!("CONCAT({})", parts.join(", "))
    } else {
        parts.join(" || ")
    }
}

/// What a future sent to the database while it ran: every statement sqlx
/// logged (target `sqlx::query`) and every retry idem logged.
///
/// The future runs inside a span that identifies the recorder. sqlx's
/// SQLite driver runs statements on a worker thread that enters the
/// caller's span, so a process-wide subscriber attributes each event to
/// the recorder of the innermost span entered on the emitting thread.
#[derive(Clone, Default)]
pub struct Recorder {
    log: Arc<Log>,
}

#[derive(Default)]
struct Log {
    statements: Mutex<Vec<String>>,
    retries: Mutex<u32>,
}

const RECORD_TARGET: &str = "idem_test::record";

impl Recorder {
    /// Runs `future` inside a span that routes its statements here.
    pub async fn record<F: std::future::Future>(&self, future: F) -> F::Output {
        install();
        let id = {
            let mut router = ROUTER.lock().unwrap();
            router.next_recorder += 1;
            let id = router.next_recorder;
            router.recorders.insert(id, self.log.clone());
            id
        };
        let span =
            tracing::span!(target: RECORD_TARGET, tracing::Level::INFO, "record", recorder = id);
        future.instrument(span).await
    }

    /// The first word of every statement recorded so far (`UPDATE`,
    /// `WITH`, `BEGIN`, ...), then forgets them. SQLite's `PRAGMA`s are
    /// left out: sqlx sends them when the pool opens a connection, which
    /// it may do in the middle of a recorded call.
    pub fn take(&self) -> Vec<String> {
        let mut statements = std::mem::take(&mut *self.log.statements.lock().unwrap());
        statements.retain(|statement| statement != "PRAGMA");
        statements
    }

    /// How many retries were logged.
    pub fn retries(&self) -> u32 {
        *self.log.retries.lock().unwrap()
    }
}

#[derive(Default)]
struct Router {
    next_recorder: u64,
    next_span: u64,
    recorders: HashMap<u64, Arc<Log>>,
    /// span id -> (recorder id, metadata)
    spans: HashMap<u64, (u64, &'static Metadata<'static>)>,
}

static ROUTER: LazyLock<Mutex<Router>> = LazyLock::new(Mutex::default);

thread_local! {
    static ENTERED: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

fn install() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        tracing::subscriber::set_global_default(Global)
            .expect("no other global tracing subscriber in this test binary");
    });
}

struct Global;

struct Fields {
    recorder: u64,
    summary: String,
}

impl tracing::field::Visit for Fields {
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        if field.name() == "recorder" {
            self.recorder = value;
        }
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "summary" {
            self.summary = value.to_owned();
        }
    }
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "summary" {
            self.summary = format!("{value:?}");
        }
    }
}

impl Subscriber for Global {
    fn register_callsite(&self, meta: &'static Metadata<'static>) -> Interest {
        if self.enabled(meta) {
            Interest::always()
        } else {
            Interest::never()
        }
    }
    fn enabled(&self, meta: &Metadata<'_>) -> bool {
        [RECORD_TARGET, "sqlx::query", idem_sqlx::RETRY_TARGET].contains(&meta.target())
    }
    fn new_span(&self, attrs: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        let mut fields = Fields {
            recorder: 0,
            summary: String::new(),
        };
        attrs.record(&mut fields);
        let mut router = ROUTER.lock().unwrap();
        router.next_span += 1;
        let id = router.next_span;
        router.spans.insert(id, (fields.recorder, attrs.metadata()));
        tracing::span::Id::from_u64(id)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &Event<'_>) {
        let Some(span) = ENTERED.with(|e| e.borrow().last().copied()) else {
            return;
        };
        let log = {
            let router = ROUTER.lock().unwrap();
            let Some((recorder, _)) = router.spans.get(&span) else {
                return;
            };
            let Some(log) = router.recorders.get(recorder) else {
                return;
            };
            log.clone()
        };
        if event.metadata().target() == idem_sqlx::RETRY_TARGET {
            *log.retries.lock().unwrap() += 1;
            return;
        }
        let mut fields = Fields {
            recorder: 0,
            summary: String::new(),
        };
        event.record(&mut fields);
        let first = fields
            .summary
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_uppercase();
        log.statements.lock().unwrap().push(first);
    }
    fn enter(&self, span: &tracing::span::Id) {
        ENTERED.with(|e| e.borrow_mut().push(span.into_u64()));
    }
    fn exit(&self, span: &tracing::span::Id) {
        ENTERED.with(|e| {
            let mut e = e.borrow_mut();
            if let Some(i) = e.iter().rposition(|s| *s == span.into_u64()) {
                e.remove(i);
            }
        });
    }
    fn current_span(&self) -> tracing_core::span::Current {
        let Some(span) = ENTERED.with(|e| e.borrow().last().copied()) else {
            return tracing_core::span::Current::none();
        };
        match ROUTER.lock().unwrap().spans.get(&span) {
            Some((_, meta)) => {
                tracing_core::span::Current::new(tracing::span::Id::from_u64(span), meta)
            }
            None => tracing_core::span::Current::none(),
        }
    }
}

/// Runs each case — a plain generic `async fn(Pool<DB>)` of the calling
/// test file — on SQLite, PostgreSQL and MySQL, with a pool of `$max`
/// connections: `every_backend!(4; case_a, case_b)`. (Test binaries that
/// share this module without calling it would warn.)
#[allow(unused_macros)]
macro_rules! every_backend {
    ($max:literal; $($case:ident),* $(,)?) => {
        $crate::transitions_support::every_backend!(@ sqlite, sqlx::Sqlite, $max: $($case),*);
        $crate::transitions_support::every_backend!(@ postgres, sqlx::Postgres, $max: $($case),*);
        $crate::transitions_support::every_backend!(@ mysql, sqlx::MySql, $max: $($case),*);
    };
    (@ $backend:ident, $db:ty, $max:literal: $($case:ident),*) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    use $crate::transitions_support::Db as _;
                    if let Some(pool) = <$db>::pool($max).await {
                        super::$case::<$db>(pool).await;
                    }
                }
            )*
        }
    };
}

#[allow(unused_imports)]
pub(crate) use every_backend;
