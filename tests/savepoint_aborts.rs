//! When the database ends a transaction while idem works under a savepoint
//! in it: real deadlocks (two transactions locking rows in crossed order),
//! SQLite's busy lock upgrades and its transaction-ending errors, and
//! futures dropped at every `.await`. Each path that opens a savepoint in
//! a caller's (or an inbox handler's) transaction — `insert_once`,
//! `apply_with_in`, `apply_with_on`, `apply` with a history table — must
//! answer `Retryable` (or `TransactionRolledBack`), leave the caller's
//! `rollback()` working and the pooled connection in step with the server.

mod common;
mod transitions_support;

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;
use idem::prelude::*;
use idem::sqlx::inbox::{self, Delivery, EventId, Inbox, InboxBackend, InboxHandler};
use idem::sqlx::{
    insert_once, Backend, BusinessKey, Error, ErrorKind, HandlerError, InsertBackend, Key,
};
use sqlx::{Connection, Pool, Transaction};
use tokio::sync::Barrier;
use transitions_support::Db;

#[derive(StateMachine, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[state_machine(table = "invoices", column = "status", key = "id")]
#[state_machine(transitions(pay: Issued -> Paid))]
enum Invoice {
    #[state_machine(initial)]
    Issued,
    Paid,
}

/// The same table with a history: MySQL and SQLite write the history row
/// with a second statement, under a savepoint inside a transaction.
#[derive(StateMachine, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[state_machine(
    table = "invoices",
    column = "status",
    key = "id",
    history = "invoice_history"
)]
#[state_machine(transitions(pay: Issued -> Paid))]
enum Logged {
    #[state_machine(initial)]
    Issued,
    Paid,
}

/// A backend of this suite.
trait Server: Db + InsertBackend + InboxBackend {
    /// Whether a deadlock's victim loses its whole transaction (InnoDB) or
    /// only the statement's savepoint (PostgreSQL).
    const DEADLOCK_ENDS_TRANSACTION: bool;
    /// Whether the history row is written by the transition's own
    /// statement (no savepoint for `apply`).
    const HISTORY_IN_ONE_STATEMENT: bool;
    /// What each session of the pool runs first.
    const SESSION: &'static str;
    /// Makes the session's lock waits time out within a second.
    const SHORT_LOCK_WAIT: &'static str;
    /// The server's id of the session on `conn`, when it has one.
    fn session_id(conn: &mut Self::Connection) -> BoxFuture<'_, Option<i64>>;
}

/// [`Server::session_id`] with the backend's query (`None`: SQLite).
macro_rules! session_id {
    (None) => {
        fn session_id(_: &mut Self::Connection) -> BoxFuture<'_, Option<i64>> {
            Box::pin(async { None })
        }
    };
    ($query:literal) => {
        fn session_id(conn: &mut Self::Connection) -> BoxFuture<'_, Option<i64>> {
            Box::pin(async move { Some(sqlx::query_scalar($query).fetch_one(conn).await.unwrap()) })
        }
    };
}

impl Server for sqlx::Sqlite {
    const DEADLOCK_ENDS_TRANSACTION: bool = false;
    const HISTORY_IN_ONE_STATEMENT: bool = false;
    const SESSION: &'static str = "SELECT 1";
    const SHORT_LOCK_WAIT: &'static str = "SELECT 1";
    session_id!(None);
}

impl Server for sqlx::Postgres {
    const DEADLOCK_ENDS_TRANSACTION: bool = false;
    const HISTORY_IN_ONE_STATEMENT: bool = true;
    // The default of one second per deadlock makes the suite slow.
    const SESSION: &'static str = "SET deadlock_timeout = '50ms'";
    const SHORT_LOCK_WAIT: &'static str = "SET lock_timeout = '300ms'";
    session_id!("SELECT pg_backend_pid()::bigint");
}

impl Server for sqlx::MySql {
    const DEADLOCK_ENDS_TRANSACTION: bool = true;
    const HISTORY_IN_ONE_STATEMENT: bool = false;
    // A crossed test that does not deadlock fails in seconds, not minutes.
    const SESSION: &'static str = "SET SESSION innodb_lock_wait_timeout = 20";
    const SHORT_LOCK_WAIT: &'static str = "SET SESSION innodb_lock_wait_timeout = 1";
    session_id!("SELECT CAST(CONNECTION_ID() AS SIGNED)");
}

/// A fresh database: `t(k)` for `insert_once`, invoices 1 and 2 issued,
/// payments, a history table and the inbox.
async fn setup<DB: Server>(connections: u32) -> Option<Pool<DB>> {
    let pool = DB::pool(connections).await?;
    prepare(&pool, connections).await;
    Some(pool)
}

/// [`setup`] on an existing pool of `connections`.
async fn prepare<DB: Server>(pool: &Pool<DB>, connections: u32) {
    for ddl in [
        "CREATE TABLE t (k VARCHAR(16) PRIMARY KEY)",
        "CREATE TABLE invoices (id BIGINT PRIMARY KEY, status VARCHAR(16) NOT NULL)",
        "CREATE TABLE payments (invoice_id BIGINT NOT NULL)",
        "CREATE TABLE effects (event_id VARCHAR(64) NOT NULL)",
        "INSERT INTO invoices (id, status) VALUES (1, 'issued'), (2, 'issued')",
    ] {
        DB::exec(pool, ddl).await;
    }
    idem::sqlx::history::install::<Logged, DB>(pool)
        .await
        .unwrap();
    inbox::install(pool).await.unwrap();
    let mut conns = Vec::new();
    for _ in 0..connections {
        let mut conn = pool.acquire().await.unwrap();
        DB::execute_plain(&mut conn, DB::SESSION).await.unwrap();
        conns.push(conn);
    }
}

fn t_key() -> BusinessKey {
    BusinessKey::new("t", ["k"]).unwrap()
}

/// `t`'s key for step `n`: `a`, `b`, ...
fn name(n: i64) -> String {
    char::from(b'a' + u8::try_from(n - 1).unwrap()).to_string()
}

/// Records a payment for the invoice it applies to; hands a transient
/// conflict of its own statement back.
struct RecordPayment;

#[async_trait]
impl<S: State, DB: Backend> TransitionHandler<S, DB, i64> for RecordPayment
where
    i64: Key<DB>,
{
    type Error = sqlx::Error;

    async fn on_applied(
        &self,
        conn: &mut DB::Connection,
        change: Change<'_, S, i64>,
    ) -> Result<(), sqlx::Error> {
        let insert = format!("INSERT INTO payments (invoice_id) VALUES ({})", change.key);
        DB::execute_plain(conn, &insert).await
    }

    fn transient(&self, error: sqlx::Error) -> Result<sqlx::Error, sqlx::Error> {
        match DB::error_kind(&error) {
            ErrorKind::Transient => Ok(error),
            _ => Err(error),
        }
    }
}

/// The ways idem opens a savepoint in a caller's transaction.
#[derive(Clone, Copy, Debug)]
enum Path {
    InsertOnce,
    /// `insert_once` inside a savepoint of the caller's own, which the
    /// caller then rolls back itself.
    NestedInsertOnce,
    ApplyWithIn,
    ApplyWithOn,
    ApplyWithHistory,
}

const PATHS: [Path; 5] = [
    Path::InsertOnce,
    Path::NestedInsertOnce,
    Path::ApplyWithIn,
    Path::ApplyWithOn,
    Path::ApplyWithHistory,
];

impl Path {
    /// Whether this path runs under a savepoint on `DB`.
    fn uses_savepoint<DB: Server>(self) -> bool {
        !matches!(self, Path::ApplyWithHistory) || !DB::HISTORY_IN_ONE_STATEMENT
    }
}

fn idem_error<E: std::fmt::Debug>(error: HandlerError<E>) -> Error {
    match error {
        HandlerError::Idem(error) => error,
        HandlerError::Handler(error) => panic!("the handler failed: {error:?}"),
    }
}

/// Step `n` of a crossed pair through `path` in `tx`: locks row `n` (of
/// `t` for `insert_once`, of `invoices` otherwise).
async fn step<DB: Server>(
    tx: &mut Transaction<'static, DB>,
    path: Path,
    n: i64,
) -> Result<(), Error>
where
    i64: Key<DB>,
{
    let paid = |outcome: Outcome<_>| assert!(outcome.is_applied(), "{outcome:?}");
    match path {
        Path::InsertOnce => {
            let insert = format!("INSERT INTO t (k) VALUES ('{}')", name(n));
            let done = insert_once(&mut *tx, &t_key(), insert.as_str()).await?;
            assert!(done.is_inserted());
        }
        Path::NestedInsertOnce => assert!(nested_insert_once::<DB>(&mut **tx, n).await?),
        Path::ApplyWithIn => {
            let outcome = Invoice::pay().apply_with_in(tx, n, &RecordPayment).await;
            paid(outcome.map_err(idem_error)?);
        }
        Path::ApplyWithOn => {
            let outcome = Invoice::pay()
                .apply_with_on(&mut **tx, n, &RecordPayment)
                .await;
            paid(outcome.map_err(idem_error)?);
        }
        Path::ApplyWithHistory => {
            let outcome = Logged::pay().apply(&mut *tx, n).await?;
            assert!(outcome.is_applied(), "{outcome:?}");
        }
    }
    Ok(())
}

/// `insert_once` of `t`'s row `n` inside a savepoint of the caller's own
/// on `conn`: committed on success, rolled back by the caller on an error,
/// which must succeed.
async fn nested_insert_once<DB: Server>(conn: &mut DB::Connection, n: i64) -> Result<bool, Error> {
    let mut own = conn.begin().await.map_err(Error::Database)?;
    let insert = format!("INSERT INTO t (k) VALUES ('{}')", name(n));
    match insert_once(&mut own, &t_key(), insert.as_str()).await {
        Ok(done) => {
            own.commit().await.map_err(Error::Database)?;
            Ok(done.is_inserted())
        }
        Err(error) => {
            own.rollback()
                .await
                .expect("the caller's own savepoint rolls back");
            Err(error)
        }
    }
}

/// The session ids of every connection of `pool` (which holds `size`),
/// after checking that each is out of any transaction and can write.
async fn sessions<DB: Server>(pool: &Pool<DB>, size: u32) -> Vec<i64> {
    let mut conns = Vec::new();
    for _ in 0..size {
        conns.push(pool.acquire().await.unwrap());
    }
    let mut ids = Vec::new();
    for conn in &mut conns {
        assert!(
            !conn.is_in_transaction(),
            "sqlx believes a transaction is open"
        );
        let mut tx = conn.begin().await.unwrap();
        DB::execute_plain(&mut tx, "INSERT INTO effects (event_id) VALUES ('probe')")
            .await
            .expect("the pooled connection writes");
        tx.rollback().await.unwrap();
        ids.extend(DB::session_id(conn).await);
    }
    ids.sort_unstable();
    ids
}

/// Who won a crossed pair.
#[derive(Debug, PartialEq, Eq)]
enum Side {
    Won,
    Lost,
}

/// The second step of one side: commits when it wins; when it is the
/// deadlock's victim, checks the error, whether the transaction still
/// takes a write, and that it rolls back.
async fn finish<DB: Server>(
    mut tx: Transaction<'static, DB>,
    path: Path,
    n: i64,
    delay: Duration,
) -> Side
where
    i64: Key<DB>,
{
    tokio::time::sleep(delay).await;
    match step(&mut tx, path, n).await {
        Ok(()) => {
            tx.commit().await.unwrap();
            Side::Won
        }
        Err(Error::Retryable(conflict)) => {
            assert_eq!(DB::error_kind(&conflict), ErrorKind::Transient);
            // InnoDB rolled the whole transaction back: idem left a
            // read-only one, so a write fails instead of committing alone.
            // PostgreSQL only rolled back idem's savepoint.
            let write = DB::execute_plain(&mut tx, "INSERT INTO t (k) VALUES ('z')").await;
            let usable = !DB::DEADLOCK_ENDS_TRANSACTION && path.uses_savepoint::<DB>();
            assert_eq!(
                write.is_ok(),
                usable,
                "{path:?}: a write after the conflict: {write:?}"
            );
            tx.rollback().await.expect("the victim's rollback succeeds");
            Side::Lost
        }
        Err(other) => panic!("{path:?}: expected a retryable conflict, got {other:?}"),
    }
}

/// The input, through every path: T1 locks row 1 and T2 row 2,
/// then T1 asks for row 2 (and waits) and T2 for row 1. One of them is the
/// deadlock's victim: `Retryable` carrying the deadlock, and its
/// `rollback()` succeeds; the other commits; the pool's two connections
/// are the same sessions as before, out of any transaction.
async fn crossed_steps_deadlock_into_retryable_and_the_victim_rolls_back<DB: Server>(pool: Pool<DB>)
where
    i64: Key<DB>,
{
    for path in PATHS {
        let before = sessions(&pool, 2).await;
        let mut t1 = pool.begin().await.unwrap();
        let mut t2 = pool.begin().await.unwrap();
        step(&mut t1, path, 1).await.unwrap();
        step(&mut t2, path, 2).await.unwrap();
        let (first, second) = tokio::join!(
            finish(t1, path, 2, Duration::ZERO),
            finish(t2, path, 1, Duration::from_millis(200)),
        );
        let mut sides = [first, second];
        sides.sort_by_key(|side| *side == Side::Won);
        assert_eq!(sides, [Side::Lost, Side::Won], "{path:?}");
        assert_eq!(
            sessions(&pool, 2).await,
            before,
            "{path:?}: a connection was replaced"
        );
        // Reset for the next path: the winner's rows go.
        for sql in [
            "DELETE FROM t",
            "DELETE FROM payments",
            "DELETE FROM invoice_history",
            "UPDATE invoices SET status = 'issued'",
        ] {
            DB::exec(&pool, sql).await;
        }
    }
}

/// An inbox consumer whose handler locks two rows through `path`, in the
/// order its event says, waiting for the other delivery between the two
/// on its first run only: the two first runs deadlock, and the victim's
/// delivery must run again and commit its effect exactly once.
struct Crossed {
    path: Path,
    rows: [i64; 2],
    barrier: Arc<Barrier>,
    runs: AtomicUsize,
    conflicts: AtomicUsize,
}

#[async_trait]
impl<DB: Server> InboxHandler<DB> for Crossed
where
    i64: Key<DB>,
{
    type Output = ();
    type Error = Error;

    async fn handle(&self, conn: &mut DB::Connection, event: &EventId) -> Result<(), Error> {
        let run = self.runs.fetch_add(1, Ordering::SeqCst) + 1;
        for (i, row) in self.rows.into_iter().enumerate() {
            if i == 1 && run == 1 {
                self.barrier.wait().await;
            }
            match self.path {
                // The rerun finds the winner's rows.
                Path::NestedInsertOnce => _ = nested_insert_once::<DB>(conn, row).await?,
                _ => {
                    let outcome = Invoice::pay()
                        .apply_with_on(conn, row, &RecordPayment)
                        .await
                        .map_err(idem_error)?;
                    // The rerun finds the winner's payments.
                    assert!(outcome.is_applied() || outcome.is_noop(), "{outcome:?}");
                }
            }
        }
        let effect = format!(
            "INSERT INTO effects (event_id) VALUES ('{}')",
            event.as_str()
        );
        DB::execute_plain(conn, &effect)
            .await
            .map_err(Error::Database)
    }

    fn transient(&self, error: Error) -> Result<sqlx::Error, Error> {
        let conflict = error.into_transient()?;
        self.conflicts.fetch_add(1, Ordering::SeqCst);
        Ok(conflict)
    }
}

async fn an_inbox_whose_handler_deadlocks_runs_it_again_and_commits_each_effect_once<DB: Server>(
    pool: Pool<DB>,
) where
    i64: Key<DB>,
    Crossed: InboxHandler<DB, Output = (), Error = Error>,
{
    for path in [Path::NestedInsertOnce, Path::ApplyWithOn] {
        let inbox = Inbox::new(pool.clone(), "crossed").unwrap();
        let barrier = Arc::new(Barrier::new(2));
        let handler = |rows| Crossed {
            path,
            rows,
            barrier: barrier.clone(),
            runs: AtomicUsize::new(0),
            conflicts: AtomicUsize::new(0),
        };
        let (one, two) = (handler([1, 2]), handler([2, 1]));
        let (e1, e2) = (
            EventId::new(format!("{path:?}-1")).unwrap(),
            EventId::new(format!("{path:?}-2")).unwrap(),
        );
        let (first, second) = tokio::join!(inbox.process(&e1, &one), inbox.process(&e2, &two));
        assert!(
            matches!(first, Ok(Delivery::Processed(()))),
            "{path:?}: {first:?}"
        );
        assert!(
            matches!(second, Ok(Delivery::Processed(()))),
            "{path:?}: {second:?}"
        );
        let conflicts = one.conflicts.load(Ordering::SeqCst) + two.conflicts.load(Ordering::SeqCst);
        let runs = one.runs.load(Ordering::SeqCst) + two.runs.load(Ordering::SeqCst);
        assert!(conflicts >= 1, "{path:?}: the first runs did not deadlock");
        assert_eq!(runs, 2 + conflicts, "{path:?}: one run more per conflict");
        for event in [&e1, &e2] {
            let effects = format!(
                "SELECT COUNT(*) FROM effects WHERE event_id = '{}'",
                event.as_str()
            );
            assert_eq!(DB::count(&pool, &effects).await, 1, "{path:?}: {event}");
        }
        match path {
            Path::NestedInsertOnce => {
                assert_eq!(DB::count(&pool, "SELECT COUNT(*) FROM t").await, 2)
            }
            _ => assert_eq!(DB::count(&pool, "SELECT COUNT(*) FROM payments").await, 2),
        }
    }
}

/// A lock wait that times out under idem's savepoint, through every path:
/// `Retryable` (PostgreSQL's `lock_not_available`, InnoDB's 1205). When
/// the server rolls back only the statement (PostgreSQL; InnoDB by
/// default), the caller's transaction goes on and commits its earlier
/// note; when it rolls back the whole transaction (InnoDB with
/// `innodb_rollback_on_timeout`), a write fails and the rollback succeeds.
async fn lock_wait_timeouts<DB: Server>(pool: &Pool<DB>, ends_transaction: bool)
where
    i64: Key<DB>,
{
    for path in PATHS {
        let before = sessions(pool, 2).await;
        let mut holder = pool.begin().await.unwrap();
        step(&mut holder, path, 1).await.unwrap();
        let mut waiter = pool.begin().await.unwrap();
        DB::execute_plain(&mut waiter, DB::SHORT_LOCK_WAIT)
            .await
            .unwrap();
        DB::execute_plain(
            &mut waiter,
            "INSERT INTO effects (event_id) VALUES ('note')",
        )
        .await
        .unwrap();
        match step(&mut waiter, path, 1).await {
            Err(Error::Retryable(timeout)) => {
                assert_eq!(DB::error_kind(&timeout), ErrorKind::Transient, "{timeout}");
            }
            other => panic!("{path:?}: expected a retryable lock timeout, got {other:?}"),
        }
        let usable = !ends_transaction && path.uses_savepoint::<DB>();
        let write = DB::execute_plain(&mut waiter, "INSERT INTO t (k) VALUES ('z')").await;
        assert_eq!(write.is_ok(), usable, "{path:?}: {write:?}");
        if usable {
            waiter.commit().await.unwrap();
        } else {
            waiter.rollback().await.expect("the rollback succeeds");
        }
        holder.rollback().await.unwrap();
        let notes = DB::count(pool, "SELECT COUNT(*) FROM effects WHERE event_id = 'note'").await;
        assert_eq!(notes, i64::from(usable), "{path:?}");
        assert_eq!(sessions(pool, 2).await, before, "{path:?}");
        for sql in ["DELETE FROM t", "DELETE FROM effects"] {
            DB::exec(pool, sql).await;
        }
    }
}

async fn a_lock_wait_timeout_under_a_savepoint_is_retryable<DB: Server>(pool: Pool<DB>)
where
    i64: Key<DB>,
{
    lock_wait_timeouts(&pool, false).await;
}

/// A private MariaDB started with `--innodb-rollback-on-timeout`, which the
/// shared server does not have (and which cannot be set at run time): its
/// lock wait timeouts roll the whole transaction back.
#[tokio::test]
async fn mysql_a_lock_wait_timeout_that_ends_the_transaction_is_retryable() {
    if std::env::var_os("IDEM_TEST_MYSQL").is_none() {
        return;
    }
    let Some(server) = PrivateMariaDb::start(&["--innodb-rollback-on-timeout=ON"]) else {
        return;
    };
    let admin = sqlx::MySqlPool::connect(&server.url("mysql"))
        .await
        .unwrap();
    sqlx::query("CREATE DATABASE timeouts")
        .execute(&admin)
        .await
        .unwrap();
    let pool = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(2)
        .connect(&server.url("timeouts"))
        .await
        .unwrap();
    prepare(&pool, 2).await;
    lock_wait_timeouts(&pool, true).await;
}

/// A MariaDB server of the test's own, on a free port with its data in a
/// temporary folder, stopped (by its process id) and removed on drop.
struct PrivateMariaDb {
    child: std::process::Child,
    dir: std::path::PathBuf,
    port: u16,
}

impl PrivateMariaDb {
    /// `None` (the test is skipped) when MariaDB is not installed, except
    /// in CI, where that fails the test.
    fn start(options: &[&str]) -> Option<Self> {
        use std::process::{Command, Stdio};
        const SERVER: &str = "/usr/sbin/mariadbd";
        if !std::path::Path::new(SERVER).exists() {
            assert!(std::env::var_os("CI").is_none(), "CI needs {SERVER}");
            eprintln!("{SERVER} is not installed: skipping");
            return None;
        }
        let dir = std::env::temp_dir().join(format!("idem-mariadb-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let data = dir.join("data");
        let installed = Command::new("mariadb-install-db")
            .args(["--no-defaults", "--auth-root-authentication-method=normal"])
            .args(["--skip-test-db", "--user=root"])
            .arg(format!("--datadir={}", data.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run mariadb-install-db");
        assert!(installed.success(), "mariadb-install-db failed");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(SERVER)
            .args(["--no-defaults", "--user=root", "--skip-grant-tables"])
            .args(["--bind-address=127.0.0.1", "--innodb-buffer-pool-size=16M"])
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", dir.join("sock").display()))
            .arg(format!("--port={port}"))
            .arg(format!("--log-error={}", dir.join("error.log").display()))
            .args(options)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mariadbd");
        let server = PrivateMariaDb { child, dir, port };
        for _ in 0..120 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(server);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!("the private MariaDB did not come up on port {port}");
    }

    fn url(&self, database: &str) -> String {
        format!("mysql://root@127.0.0.1:{}/{database}", self.port)
    }
}

impl Drop for PrivateMariaDb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---- cancellation ----------------------------------------------------------------

/// Polls `future` until it completes or has been pending `polls` times,
/// then drops it where it stands.
async fn cancel_after<F: Future>(future: F, polls: usize) -> Option<F::Output> {
    let mut future = pin!(future);
    let mut pending = 0;
    std::future::poll_fn(move |cx| match future.as_mut().poll(cx) {
        Poll::Ready(output) => Poll::Ready(Some(output)),
        Poll::Pending => {
            pending += 1;
            if pending >= polls {
                Poll::Ready(None)
            } else {
                Poll::Pending
            }
        }
    })
    .await
}

/// The caller's write after the dropped future, then its commit: `true`
/// only when both succeeded.
///
/// `None` when sqlx lost track of the caller's transaction, a known fault
/// of sqlx 0.8.6 outside idem's reach: on PostgreSQL,
/// `PgTransactionManager::begin` arms a drop guard before it sends
/// `SAVEPOINT` and raises its depth only after the answer, so a future
/// dropped in between makes the guard queue the rollback of the level
/// below (the caller's `ROLLBACK`) and lower the depth: the caller's
/// transaction is gone and `is_in_transaction()` is false. Only the first
/// pending poll of a call that opens a savepoint can hit it; this checks
/// that nothing else ever does.
async fn caller_finishes<DB: Server>(
    mut tx: Transaction<'static, DB>,
    polls: usize,
) -> Option<bool> {
    if !tx.is_in_transaction() {
        assert!(
            DB::BACKEND == "postgres" && polls == 1,
            "sqlx lost the caller's transaction after {polls} polls on {}",
            DB::BACKEND
        );
        return None;
    }
    let after = DB::execute_plain(&mut tx, "INSERT INTO effects (event_id) VALUES ('after')").await;
    Some(after.is_ok() && tx.commit().await.is_ok())
}

/// The caller's notes (`before`, `after`) that committed.
async fn notes<DB: Server>(pool: &Pool<DB>) -> i64 {
    DB::count(
        pool,
        "SELECT COUNT(*) FROM effects WHERE event_id IN ('before', 'after')",
    )
    .await
}

async fn reset<DB: Server>(pool: &Pool<DB>) {
    for sql in [
        "DELETE FROM t WHERE k <> 'a'",
        "DELETE FROM effects",
        "DELETE FROM payments",
        "UPDATE invoices SET status = 'issued'",
    ] {
        DB::exec(pool, sql).await;
    }
}

/// Runs `work` in a caller's transaction, between the caller's two notes,
/// dropped after 1, 2, ... pending polls until it completes; after each
/// round reads `state` (counts of what `work` writes). Whenever the
/// caller's later write and commit succeed, both notes are in (the
/// caller's transaction was never lost) and the state is `done` when the
/// call completed, and all of `done` or none of it when it was dropped
/// (dropped after its savepoint was released, the work is whole and only
/// its result is lost). When they fail, nothing is in.
async fn sweep<DB: Server, W: Work<DB>>(pool: &Pool<DB>, work: W, state: &[&str], done: &[i64]) {
    // A call can complete at its first poll when every answer it waits
    // for is already there (a loaded machine, a multi-threaded runtime):
    // that round drops nothing, so it is run again, a bounded number of
    // times, before the sweep goes on to two polls.
    let mut polls = 1;
    let mut at_once = 0;
    loop {
        let mut tx = pool.begin().await.unwrap();
        DB::execute_plain(&mut tx, "INSERT INTO effects (event_id) VALUES ('before')")
            .await
            .unwrap();
        let completed = cancel_after(work.run(&mut tx), polls).await.is_some();
        let finished = caller_finishes(tx, polls).await;
        let mut now = Vec::new();
        for query in state {
            now.push(DB::count(pool, query).await);
        }
        let notes = notes(pool).await;
        let none = vec![0; done.len()];
        match (finished, completed) {
            // sqlx lost the caller's transaction (see `caller_finishes`).
            (None, _) => {}
            (Some(true), true) => assert_eq!((notes, &now[..]), (2, done), "{polls}"),
            (Some(true), false) => assert!(
                notes == 2 && (now == done || now == none),
                "{polls}: half a change: {notes} {now:?}"
            ),
            (Some(false), _) => {
                assert_eq!((notes, now), (0, none), "{polls}: a failed commit kept")
            }
        }
        reset(pool).await;
        if completed && polls == 1 && at_once < 50 {
            at_once += 1;
            continue;
        }
        if completed {
            assert!(polls > 1, "the call was never dropped");
            break;
        }
        assert!(polls < 100, "the call never completed");
        polls += 1;
    }
    sessions(pool, 2).await;
}

/// A call [`sweep`] drops: its result is not needed.
trait Work<DB: Server> {
    fn run<'t>(&'t self, tx: &'t mut Transaction<'static, DB>) -> BoxFuture<'t, ()>;
}

/// `insert_once` of `t`'s row.
struct InsertRow(&'static str);

impl<DB: Server> Work<DB> for InsertRow {
    fn run<'t>(&'t self, tx: &'t mut Transaction<'static, DB>) -> BoxFuture<'t, ()> {
        Box::pin(async move {
            let insert = format!("INSERT INTO t (k) VALUES ('{}')", self.0);
            let _ = insert_once(tx, &t_key(), insert.as_str()).await;
        })
    }
}

/// `apply_with_in` of `pay` on invoice 1, recording the payment.
struct PayInvoice;

impl<DB: Server> Work<DB> for PayInvoice
where
    i64: Key<DB>,
{
    fn run<'t>(&'t self, tx: &'t mut Transaction<'static, DB>) -> BoxFuture<'t, ()> {
        Box::pin(async move {
            let _ = Invoice::pay().apply_with_in(tx, 1, &RecordPayment).await;
        })
    }
}

/// `insert_once` dropped at every `.await` ([`sweep`]), on its success
/// path (`b`) and on its failure path (`a` exists).
async fn a_dropped_insert_once_never_leaves_half_a_change<DB: Server>(pool: Pool<DB>) {
    DB::exec(&pool, "INSERT INTO t (k) VALUES ('a')").await;
    let fresh = ["SELECT COUNT(*) FROM t WHERE k <> 'a'"];
    sweep(&pool, InsertRow("b"), &fresh, &[1]).await;
    sweep(&pool, InsertRow("a"), &fresh, &[0]).await;
}

/// `apply_with_in` with a handler that records the payment, dropped at
/// every `.await` ([`sweep`]): the change and its payment, or neither.
async fn a_dropped_apply_with_in_never_leaves_half_a_change<DB: Server>(pool: Pool<DB>)
where
    i64: Key<DB>,
{
    // sqlx 0.8.6 cannot drop a MySQL statement while it is being prepared
    // (the server's answer stays unread and the connection fails or hangs
    // on its next command): prepare the transition's statement on each
    // connection first, so that the drops below exercise idem, not that.
    let mut conns = Vec::new();
    for _ in 0..2 {
        let mut conn = pool.acquire().await.unwrap();
        let mut tx = conn.begin().await.unwrap();
        let _ = Invoice::pay()
            .apply_with_in(&mut tx, 1, &RecordPayment)
            .await
            .unwrap();
        tx.rollback().await.unwrap();
        conns.push(conn);
    }
    drop(conns);
    let state = [
        "SELECT COUNT(*) FROM invoices WHERE id = 1 AND status = 'paid'",
        "SELECT COUNT(*) FROM payments",
    ];
    sweep(&pool, PayInvoice, &state, &[1, 1]).await;
}

/// One side of [`dropping_the_deadlocked_calls_never_leaves_half_a_change`]:
/// its second step, dropped after `polls` pending polls; then, as a caller
/// that ignores the result would, its marker `m<side>` and its commit.
/// Whether the call completed.
async fn dropped_side<DB: Server>(
    mut tx: Transaction<'static, DB>,
    side: i64,
    row: i64,
    polls: usize,
    delay: u64,
) -> bool {
    tokio::time::sleep(Duration::from_millis(delay)).await;
    let insert = format!("INSERT INTO t (k) VALUES ('{}')", name(row));
    let done = cancel_after(insert_once(&mut tx, &t_key(), insert.as_str()), polls).await;
    if !tx.is_in_transaction() {
        // sqlx's own fault on PostgreSQL: see `caller_finishes`.
        assert!(DB::BACKEND == "postgres" && polls == 1, "{polls}");
        return done.is_some();
    }
    let marker = format!("INSERT INTO effects (event_id) VALUES ('m{side}')");
    if DB::execute_plain(&mut tx, &marker).await.is_ok() {
        let _ = tx.commit().await;
    }
    done.is_some()
}

/// The crossed `insert_once` deadlock with both second steps dropped after
/// each number of pending polls, the victim's error handling included;
/// each side then writes a marker and commits whatever the result, as a
/// caller that ignores errors would. Whatever a side committed is its
/// whole transaction: its marker never without the note it wrote before
/// the crossing (InnoDB's victim finds a read-only transaction, so its
/// marker fails instead of committing alone).
async fn dropping_the_deadlocked_calls_never_leaves_half_a_change<DB: Server>(pool: Pool<DB>)
where
    i64: Key<DB>,
{
    for polls in 1..40 {
        let mut t1 = pool.begin().await.unwrap();
        let mut t2 = pool.begin().await.unwrap();
        for (side, tx) in [(1, &mut t1), (2, &mut t2)] {
            let note = format!("INSERT INTO effects (event_id) VALUES ('f{side}')");
            DB::execute_plain(tx, &note).await.unwrap();
            step(tx, Path::InsertOnce, side).await.unwrap();
        }
        let (done1, done2) = tokio::join!(
            dropped_side(t1, 1, 2, polls, 0),
            dropped_side(t2, 2, 1, polls, 200),
        );
        for side in [1, 2] {
            let count = |event: String| {
                let pool = pool.clone();
                async move {
                    let sql = format!("SELECT COUNT(*) FROM effects WHERE event_id = '{event}'");
                    DB::count(&pool, &sql).await
                }
            };
            let (note, marker) = (
                count(format!("f{side}")).await,
                count(format!("m{side}")).await,
            );
            assert_eq!(
                note, marker,
                "{polls}: side {side} committed half of its transaction"
            );
        }
        DB::exec(&pool, "DELETE FROM t").await;
        DB::exec(&pool, "DELETE FROM effects").await;
        if done1 && done2 {
            break;
        }
    }
    sessions(&pool, 2).await;
}

// ---- SQLite ------------------------------------------------------------------------

/// Two deferred transactions read, then both write (WAL): the second's
/// lock upgrade fails with SQLITE_BUSY (or SQLITE_BUSY_SNAPSHOT once the
/// first committed: its snapshot is stale). SQLite keeps the transaction:
/// `Retryable`, and the rollback succeeds.
async fn a_busy_lock_upgrade_is_retryable_and_the_transaction_rolls_back(pool: Pool<sqlx::Sqlite>) {
    for path in [Path::InsertOnce, Path::ApplyWithIn, Path::ApplyWithHistory] {
        let mut t1 = pool.begin().await.unwrap();
        let mut t2 = pool.begin().await.unwrap();
        for tx in [&mut t1, &mut t2] {
            sqlx::query("SELECT COUNT(*) FROM invoices")
                .fetch_one(&mut **tx)
                .await
                .unwrap();
        }
        step(&mut t1, path, 1).await.unwrap();
        let commit = async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            t1.commit().await
        };
        let (upgrade, commit) = tokio::join!(step(&mut t2, path, 2), commit);
        commit.unwrap();
        match upgrade {
            // SQLITE_BUSY, or SQLITE_BUSY_SNAPSHOT once the first committed.
            Err(Error::Retryable(busy)) => {
                let code = busy.as_database_error().unwrap().code();
                assert!(matches!(code.as_deref(), Some("5" | "517")), "{code:?}");
            }
            other => panic!("{path:?}: expected SQLite's busy error, got {other:?}"),
        }
        t2.rollback().await.unwrap();
        sessions(&pool, 2).await;
        for sql in [
            "DELETE FROM t",
            "DELETE FROM payments",
            "UPDATE invoices SET status = 'issued'",
        ] {
            sqlx::query(sql).execute(&pool).await.unwrap();
        }
    }
}

/// The same in rollback-journal mode: the first's commit waits for the
/// second's read lock, and SQLite answers the second's upgrade with
/// SQLITE_BUSY at once rather than deadlock. The second rolls back and
/// the first commits.
#[tokio::test]
async fn sqlite_a_lock_upgrade_deadlock_in_rollback_journal_mode_is_retryable() {
    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
    let wal = common::sqlite(1).await;
    let file: String =
        sqlx::query_scalar("SELECT file FROM pragma_database_list WHERE name = 'main'")
            .fetch_one(&wal)
            .await
            .unwrap();
    wal.close().await;
    let options = SqliteConnectOptions::new()
        .filename(&file)
        .journal_mode(SqliteJournalMode::Delete)
        .busy_timeout(Duration::from_secs(10));
    let pool = SqlitePoolOptions::new()
        .max_connections(2)
        .connect_with(options)
        .await
        .unwrap();
    sqlx::query("CREATE TABLE t (k VARCHAR(16) PRIMARY KEY)")
        .execute(&pool)
        .await
        .unwrap();
    let mut t1 = pool.begin().await.unwrap();
    let mut t2 = pool.begin().await.unwrap();
    for tx in [&mut t1, &mut t2] {
        sqlx::query("SELECT COUNT(*) FROM t")
            .fetch_one(&mut **tx)
            .await
            .unwrap();
    }
    let key = t_key();
    let first = insert_once(&mut t1, &key, "INSERT INTO t (k) VALUES ('a')").await;
    assert!(first.unwrap().is_inserted());
    let second = async {
        let upgrade = insert_once(&mut t2, &key, "INSERT INTO t (k) VALUES ('b')").await;
        assert!(
            matches!(upgrade, Err(Error::Retryable(_))),
            "{:?}",
            upgrade.map(|i| i.is_inserted())
        );
        t2.rollback().await.unwrap();
    };
    let first = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        t1.commit().await.unwrap();
    };
    tokio::join!(first, second);
    let rows: Vec<String> = sqlx::query_scalar("SELECT k FROM t")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(rows, ["a"]);
}

/// The tables whose writes make SQLite end the transaction: a key
/// declared `ON CONFLICT ROLLBACK` (holding `x`), a trigger's
/// `RAISE(ROLLBACK)`, and a table to fill the database with.
async fn transaction_enders(pool: &Pool<sqlx::Sqlite>) {
    for ddl in [
        "CREATE TABLE guarded (k TEXT PRIMARY KEY ON CONFLICT ROLLBACK)",
        "INSERT INTO guarded (k) VALUES ('x')",
        "CREATE TABLE refused (k TEXT PRIMARY KEY)",
        "CREATE TRIGGER refuse BEFORE INSERT ON refused BEGIN SELECT RAISE(ROLLBACK, 'refused'); END",
        "CREATE TABLE big (v BLOB)",
    ] {
        sqlx::query(ddl).execute(pool).await.unwrap();
    }
}

/// SQLite itself ends the transaction under `insert_once`'s savepoint: a
/// duplicate of a key declared `ON CONFLICT ROLLBACK` (never
/// `AlreadyExists`), a trigger's `RAISE(ROLLBACK)`, a full database.
/// `TransactionRolledBack`, the caller's earlier write is gone, its
/// `rollback()` succeeds and the pool's one connection is in step.
async fn sqlite_insert_once_in_a_transaction_sqlite_ended_is_transaction_rolled_back(
    pool: Pool<sqlx::Sqlite>,
) {
    transaction_enders(&pool).await;
    let cases = [
        ("guarded", "INSERT INTO guarded (k) VALUES ('x')"),
        ("refused", "INSERT INTO refused (k) VALUES ('y')"),
        ("big", "INSERT INTO big (v) VALUES (zeroblob(1000000))"),
    ];
    for (table, insert) in cases {
        let mut tx = pool.begin().await.unwrap();
        if table == "big" {
            // The connection's limit: a few pages more than the file has.
            let pages: i64 = sqlx::query_scalar("PRAGMA page_count")
                .fetch_one(&mut *tx)
                .await
                .unwrap();
            sqlx::query(&format!("PRAGMA max_page_count = {}", pages + 4))
                .execute(&mut *tx)
                .await
                .unwrap();
        }
        sqlx::query("INSERT INTO effects (event_id) VALUES ('before')")
            .execute(&mut *tx)
            .await
            .unwrap();
        let key = BusinessKey::new(table, [if table == "big" { "v" } else { "k" }]).unwrap();
        match insert_once(&mut tx, &key, insert).await {
            Err(Error::TransactionRolledBack(_)) => {}
            other => panic!("{table}: {:?}", other.map(|i| i.is_inserted())),
        }
        tx.rollback().await.expect("the caller's rollback succeeds");
        sqlx::query("PRAGMA max_page_count = 1073741823")
            .execute(&pool)
            .await
            .unwrap();
        assert_eq!(
            sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM effects")
                .fetch_one(&pool)
                .await
                .unwrap(),
            0
        );
        sessions(&pool, 1).await;
    }
}

/// A handler whose statement hits a trigger's `RAISE(ROLLBACK)`.
struct Refused;

#[async_trait]
impl TransitionHandler<Invoice, sqlx::Sqlite, i64> for Refused {
    type Error = sqlx::Error;

    async fn on_applied(
        &self,
        conn: &mut sqlx::SqliteConnection,
        _: Change<'_, Invoice, i64>,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("INSERT INTO refused (k) VALUES ('y')")
            .execute(conn)
            .await?;
        Ok(())
    }
}

/// The same under `apply_with_in`, from the handler's own statement: the
/// handler's error cannot say that the caller's transaction is gone, so
/// idem says it (`TransactionRolledBack`), and the rollback succeeds.
async fn sqlite_a_handler_whose_transaction_sqlite_ended_is_transaction_rolled_back(
    pool: Pool<sqlx::Sqlite>,
) {
    transaction_enders(&pool).await;
    let mut tx = pool.begin().await.unwrap();
    let outcome = Invoice::pay().apply_with_in(&mut tx, 1, &Refused).await;
    assert!(
        matches!(
            outcome,
            Err(HandlerError::Idem(Error::TransactionRolledBack(_)))
        ),
        "{outcome:?}"
    );
    tx.rollback().await.unwrap();
    sessions(&pool, 1).await;
}

/// In transactions idem owns (`apply_with`, an inbox), a handler whose
/// statement ends the transaction gets its own error back, and the pool's
/// one connection goes back in step: sqlx's `ROLLBACK` of a transaction
/// SQLite already ended used to fail and leave sqlx believing it open.
async fn sqlite_a_transaction_idem_owns_that_sqlite_ended_leaves_the_pool_in_step(
    pool: Pool<sqlx::Sqlite>,
) {
    transaction_enders(&pool).await;
    let outcome = Invoice::pay().apply_with(&pool, 1, &Refused).await;
    assert!(
        matches!(outcome, Err(HandlerError::Handler(_))),
        "{outcome:?}"
    );
    sessions(&pool, 1).await;
    let inbox = Inbox::new(pool.clone(), "refused").unwrap();
    let event = EventId::new("e").unwrap();
    let delivery = inbox.process(&event, &PayOnEvent(Refused)).await;
    assert!(
        matches!(delivery, Err(HandlerError::Handler(_))),
        "{delivery:?}"
    );
    sessions(&pool, 1).await;
    assert_eq!(
        inbox
            .process(&event, &PayOnEvent(RecordPayment))
            .await
            .unwrap(),
        Delivery::Processed(Outcome::Applied {
            from: Invoice::Issued,
            to: Invoice::Paid
        })
    );
}

/// Pays invoice 1 with the handler it holds.
struct PayOnEvent<H>(H);

#[async_trait]
impl<H> InboxHandler<sqlx::Sqlite> for PayOnEvent<H>
where
    H: TransitionHandler<Invoice, sqlx::Sqlite, i64, Error = sqlx::Error>,
{
    type Output = Outcome<Invoice>;
    type Error = HandlerError<sqlx::Error>;

    async fn handle(
        &self,
        conn: &mut sqlx::SqliteConnection,
        _: &EventId,
    ) -> Result<Self::Output, Self::Error> {
        Invoice::pay().apply_with_on(conn, 1i64, &self.0).await
    }
}

// ---- the backends ---------------------------------------------------------------

macro_rules! suite {
    ($backend:ident, $db:ty: $($case:ident($connections:expr)),* $(,)?) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    if let Some(pool) = super::setup::<$db>($connections).await {
                        super::$case(pool).await;
                    }
                }
            )*
        }
    };
}

macro_rules! servers {
    ($($backend:ident: $db:ty),* $(,)?) => {
        $(
            suite!($backend, $db:
                crossed_steps_deadlock_into_retryable_and_the_victim_rolls_back(2),
                an_inbox_whose_handler_deadlocks_runs_it_again_and_commits_each_effect_once(2),
                dropping_the_deadlocked_calls_never_leaves_half_a_change(2),
                a_lock_wait_timeout_under_a_savepoint_is_retryable(2),
                a_dropped_insert_once_never_leaves_half_a_change(2),
                a_dropped_apply_with_in_never_leaves_half_a_change(2),
            );
        )*
    };
}

servers!(postgres: sqlx::Postgres, mysql: sqlx::MySql);

suite!(sqlite, sqlx::Sqlite:
    a_dropped_insert_once_never_leaves_half_a_change(2),
    a_dropped_apply_with_in_never_leaves_half_a_change(2),
    a_busy_lock_upgrade_is_retryable_and_the_transaction_rolls_back(2),
    sqlite_insert_once_in_a_transaction_sqlite_ended_is_transaction_rolled_back(1),
    sqlite_a_handler_whose_transaction_sqlite_ended_is_transaction_rolled_back(1),
    sqlite_a_transaction_idem_owns_that_sqlite_ended_leaves_the_pool_in_step(1),
);
