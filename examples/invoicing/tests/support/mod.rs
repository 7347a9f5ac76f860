//! The end-to-end harness: a fresh database per test on each backend, the
//! real `invoicing` binary started on a free port against it, and a small
//! HTTP client.
//!
//! SQLite always runs (a fresh file). PostgreSQL and MySQL run when
//! `IDEM_TEST_POSTGRES` / `IDEM_TEST_MYSQL` hold an admin URL: each test
//! creates its own database `idem_app_<pid>_<n>` and drops it at the end
//! (leftovers of dead test processes are dropped on the next run). With
//! `CI` set, a missing URL fails the test instead of skipping the backend.
#![allow(dead_code, unused_imports, unused_macros)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use serde_json::Value;
use sqlx::{Connection, Executor, MySqlConnection, PgConnection, SqliteConnection};
use tokio::sync::OnceCell;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_invoicing");

static COUNTER: AtomicU32 = AtomicU32::new(0);

const PREFIX: &str = "idem_app_";

fn unique_name() -> String {
    format!(
        "{PREFIX}{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Whether a leftover `idem_app_<pid>_<n>` belongs to a process that is gone.
fn is_stale(name: &str) -> bool {
    let pid = name
        .strip_prefix(PREFIX)
        .and_then(|rest| rest.split('_').next())
        .and_then(|pid| pid.parse::<u32>().ok());
    match pid {
        Some(pid) => pid != std::process::id() && !PathBuf::from(format!("/proc/{pid}")).exists(),
        None => false,
    }
}

/// The admin URL of a backend, or `None` to skip it. Panics in CI when
/// unset: a backend is never skipped silently there.
fn admin_url(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var_os("CI").is_some() => {
            panic!(
                "CI is set but {var} is not: the end-to-end tests must run on every backend in CI"
            )
        }
        _ => {
            eprintln!("{var} is not set: skipping this backend (set it to run the tests)");
            None
        }
    }
}

/// `scheme://user@host:port/<database>?query` with the database replaced.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (url, String::new()),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    format!("{}/{database}{query}", &base[..path_start])
}

/// Which database server a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A file.
    Sqlite,
    /// `IDEM_TEST_POSTGRES`.
    Postgres,
    /// `IDEM_TEST_MYSQL`.
    Mysql,
}

/// A database of its own for one test; dropped with it.
pub struct Db {
    /// The URL the server is started with.
    pub url: String,
    /// The backend.
    pub backend: Backend,
    admin: Option<String>,
    name: String,
    file: Option<PathBuf>,
}

static PG_CLEANED: OnceCell<()> = OnceCell::const_new();
static MY_CLEANED: OnceCell<()> = OnceCell::const_new();

impl Db {
    /// A fresh SQLite file.
    pub fn sqlite() -> Db {
        let dir = std::env::temp_dir().join("invoicing-e2e");
        std::fs::create_dir_all(&dir).unwrap();
        let name = unique_name();
        let file = dir.join(format!("{name}.db"));
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", file.display()));
        }
        Db {
            url: format!("sqlite://{}", file.display()),
            backend: Backend::Sqlite,
            admin: None,
            name,
            file: Some(file),
        }
    }

    /// A fresh PostgreSQL database, or `None` outside CI without
    /// `IDEM_TEST_POSTGRES`.
    pub async fn postgres() -> Option<Db> {
        let admin = admin_url("IDEM_TEST_POSTGRES")?;
        let mut conn = PgConnection::connect(&admin)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to IDEM_TEST_POSTGRES={admin}: {e}"));
        PG_CLEANED
            .get_or_init(|| async {
                let names: Vec<String> = sqlx::query_scalar(
                    "SELECT datname::text FROM pg_database WHERE datname LIKE 'idem\\_app\\_%'",
                )
                .fetch_all(&mut conn)
                .await
                .unwrap();
                for name in names.into_iter().filter(|n| is_stale(n)) {
                    let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    let _ = conn.execute(drop.as_str()).await;
                }
            })
            .await;
        let name = unique_name();
        conn.execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .unwrap();
        conn.close().await.unwrap();
        Some(Db {
            url: with_database(&admin, &name),
            backend: Backend::Postgres,
            admin: Some(admin),
            name,
            file: None,
        })
    }

    /// A fresh MySQL/MariaDB database, or `None` outside CI without
    /// `IDEM_TEST_MYSQL`.
    pub async fn mysql() -> Option<Db> {
        let admin = admin_url("IDEM_TEST_MYSQL")?;
        let mut conn = MySqlConnection::connect(&admin)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to IDEM_TEST_MYSQL={admin}: {e}"));
        MY_CLEANED
            .get_or_init(|| async {
                let names: Vec<String> = sqlx::query_scalar(
                    "SELECT CAST(schema_name AS CHAR) FROM information_schema.schemata \
                     WHERE schema_name LIKE 'idem\\_app\\_%'",
                )
                .fetch_all(&mut conn)
                .await
                .unwrap();
                for name in names.into_iter().filter(|n| is_stale(n)) {
                    let _ = conn
                        .execute(format!("DROP DATABASE IF EXISTS {name}").as_str())
                        .await;
                }
            })
            .await;
        let name = unique_name();
        conn.execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .unwrap();
        conn.close().await.unwrap();
        Some(Db {
            url: with_database(&admin, &name),
            backend: Backend::Mysql,
            admin: Some(admin),
            name,
            file: None,
        })
    }

    /// Runs `sql` (returning two integer columns) on the database directly,
    /// not through the service.
    pub async fn pairs(&self, sql: &str) -> Vec<(i64, i64)> {
        match self.backend {
            Backend::Sqlite => {
                let mut conn = SqliteConnection::connect(&self.url).await.unwrap();
                sqlx::query_as(sql).fetch_all(&mut conn).await.unwrap()
            }
            Backend::Postgres => {
                let mut conn = PgConnection::connect(&self.url).await.unwrap();
                sqlx::query_as(sql).fetch_all(&mut conn).await.unwrap()
            }
            Backend::Mysql => {
                let mut conn = MySqlConnection::connect(&self.url).await.unwrap();
                sqlx::query_as(sql).fetch_all(&mut conn).await.unwrap()
            }
        }
    }

    /// Runs a statement on the database directly.
    pub async fn execute(&self, sql: &str) {
        match self.backend {
            Backend::Sqlite => {
                let mut conn = SqliteConnection::connect(&self.url).await.unwrap();
                conn.execute(sql).await.unwrap();
            }
            Backend::Postgres => {
                let mut conn = PgConnection::connect(&self.url).await.unwrap();
                conn.execute(sql).await.unwrap();
            }
            Backend::Mysql => {
                let mut conn = MySqlConnection::connect(&self.url).await.unwrap();
                conn.execute(sql).await.unwrap();
            }
        }
    }

    /// Locks the `invoices` table from a connection of its own, so that
    /// the server's writes to it wait (on SQLite the whole database: its
    /// claims wait too), until [`TableLock::release`].
    pub async fn lock_invoices(&self) -> TableLock {
        match self.backend {
            Backend::Sqlite => {
                let mut conn = SqliteConnection::connect(&self.url).await.unwrap();
                conn.execute("BEGIN EXCLUSIVE").await.unwrap();
                TableLock::Sqlite(conn)
            }
            Backend::Postgres => {
                let mut conn = PgConnection::connect(&self.url).await.unwrap();
                conn.execute("BEGIN; LOCK TABLE invoices IN ACCESS EXCLUSIVE MODE")
                    .await
                    .unwrap();
                TableLock::Postgres(conn)
            }
            Backend::Mysql => {
                let mut conn = MySqlConnection::connect(&self.url).await.unwrap();
                conn.execute("LOCK TABLES invoices WRITE").await.unwrap();
                TableLock::Mysql(conn)
            }
        }
    }

    /// Rows in `table`, counted in the database.
    pub async fn count(&self, table: &str) -> i64 {
        let sql = format!("SELECT COUNT(*), COUNT(*) FROM {table}");
        self.pairs(&sql).await[0].0
    }

    /// Payments per invoice id, counted in the database (every invoice,
    /// including those without a payment).
    pub async fn payments_per_invoice(&self) -> BTreeMap<i64, i64> {
        self.pairs(
            "SELECT i.id, COUNT(p.id) FROM invoices i \
             LEFT JOIN payments p ON p.invoice_id = i.id GROUP BY i.id ORDER BY i.id",
        )
        .await
        .into_iter()
        .collect()
    }
}

/// A lock on `invoices` held by a connection of the test's.
pub enum TableLock {
    /// `BEGIN EXCLUSIVE`.
    Sqlite(SqliteConnection),
    /// `LOCK TABLE ... IN ACCESS EXCLUSIVE MODE` in a transaction.
    Postgres(PgConnection),
    /// `LOCK TABLES ... WRITE`.
    Mysql(MySqlConnection),
}

impl TableLock {
    /// Lets the waiting writers in.
    pub async fn release(self) {
        match self {
            TableLock::Sqlite(mut conn) => conn.execute("COMMIT").await.map(drop).unwrap(),
            TableLock::Postgres(mut conn) => conn.execute("COMMIT").await.map(drop).unwrap(),
            TableLock::Mysql(mut conn) => conn.execute("UNLOCK TABLES").await.map(drop).unwrap(),
        }
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        if let Some(file) = &self.file {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", file.display()));
            }
        }
        let Some(admin) = self.admin.clone() else {
            return;
        };
        let (backend, name) = (self.backend, self.name.clone());
        // Drop runs inside the test's runtime: do the async cleanup on a
        // thread of its own.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                match backend {
                    Backend::Postgres => {
                        if let Ok(mut conn) = PgConnection::connect(&admin).await {
                            let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                            let _ = conn.execute(drop.as_str()).await;
                        }
                    }
                    Backend::Mysql => {
                        if let Ok(mut conn) = MySqlConnection::connect(&admin).await {
                            let drop = format!("DROP DATABASE IF EXISTS {name}");
                            let _ = conn.execute(drop.as_str()).await;
                        }
                    }
                    Backend::Sqlite => {}
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// A running `invoicing` server, killed when dropped.
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    _stdout: BufReader<ChildStdout>,
}

impl Server {
    /// Starts the binary on a free port against `db` and waits until it
    /// listens (it prints its address once the schema is installed).
    pub fn start(db: &Db) -> Server {
        let mut command = Command::new(BIN);
        command
            .args(["--database-url", &db.url])
            .env_remove("DATABASE_URL");
        Server::spawn(command)
    }

    /// Like [`Server::start`], with the database named by `DATABASE_URL`.
    pub fn start_from_env(db: &Db) -> Server {
        let mut command = Command::new(BIN);
        command.env("DATABASE_URL", &db.url);
        Server::spawn(command)
    }

    fn spawn(command: Command) -> Server {
        Server::launch(command).ready()
    }

    /// Starts `n` servers on `db` at the same moment (they install the
    /// schema concurrently) and waits until all listen.
    pub fn start_together(db: &Db, n: usize) -> Vec<Server> {
        let launched: Vec<Launched> = (0..n)
            .map(|_| {
                let mut command = Command::new(BIN);
                command
                    .args(["--database-url", &db.url])
                    .env_remove("DATABASE_URL");
                Server::launch(command)
            })
            .collect();
        launched.into_iter().map(Launched::ready).collect()
    }

    fn launch(mut command: Command) -> Launched {
        let child = command
            .args(["--listen", "127.0.0.1:0", "--max-connections", "8"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the invoicing binary");
        Launched { child: Some(child) }
    }
}

/// A server process that may not listen yet; killed if dropped before.
struct Launched {
    child: Option<Child>,
}

impl Launched {
    /// Waits for the line the server prints once it listens (after the
    /// schema is installed).
    fn ready(mut self) -> Server {
        let mut child = self.child.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        let read = stdout.read_line(&mut line);
        let url = match line.trim().strip_prefix("invoicing listening on ") {
            Some(url) if read.is_ok() => url.to_owned(),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the server did not start (it printed {line:?}; its log is above)");
            }
        };
        Server {
            url,
            child,
            _stdout: stdout,
        }
    }
}

impl Drop for Launched {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Server {
    /// Sends SIGTERM and waits (at most 30 s) for the process to exit;
    /// returns whether it exited with success.
    pub fn terminate(mut self) -> bool {
        let signal = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(signal.success());
        for _ in 0..300 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the server did not exit within 30 s of SIGTERM");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Reply {
    /// The status.
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    /// The body as JSON (`Value::Null` when it is not JSON).
    pub json: Value,
    /// The body as text.
    pub text: String,
}

impl Reply {
    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Whether the idempotency layer replayed a stored response.
    pub fn replayed(&self) -> bool {
        self.header("idempotent-replayed") == Some("true")
    }

    /// Asserts an `application/problem+json` error with `status` whose
    /// detail mentions `needle`.
    #[track_caller]
    pub fn assert_problem(&self, status: u16, needle: &str) {
        assert_eq!(self.status.as_u16(), status, "{}", self.text);
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "{}",
            self.text
        );
        assert_eq!(self.json["status"], status, "{}", self.text);
        let detail = self.json["detail"].as_str().unwrap_or_default();
        assert!(
            detail.contains(needle),
            "expected the detail to mention {needle:?}: {}",
            self.text
        );
    }
}

/// A client of one server.
#[derive(Clone)]
pub struct Api {
    client: reqwest::Client,
    /// The server's base URL.
    pub base: String,
}

impl Api {
    /// A client of `server`.
    pub fn new(server: &Server) -> Api {
        Api {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
            base: server.url.clone(),
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        let response = request.send().await.expect("the server answers");
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            json,
            text,
        }
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Reply {
        self.send(self.client.get(format!("{}{path}", self.base)))
            .await
    }

    /// `POST path` with a raw body and headers.
    pub async fn post_raw(&self, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
        let mut request = self.client.post(format!("{}{path}", self.base));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        self.send(request.body(body.to_owned())).await
    }

    /// `POST path` with a JSON body and an optional idempotency key.
    pub async fn post(&self, path: &str, key: Option<&str>, body: &Value) -> Reply {
        let mut headers = vec![("content-type", "application/json")];
        if let Some(key) = key {
            headers.push(("idempotency-key", key));
        }
        self.post_raw(path, &headers, &body.to_string()).await
    }

    /// Creates an invoice and returns its id.
    pub async fn create(&self, key: &str, amount_cents: i64) -> i64 {
        let reply = self
            .post(
                "/invoices",
                Some(key),
                &serde_json::json!({"customer": "ACME", "amount_cents": amount_cents, "currency": "EUR"}),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
        reply.json["id"].as_i64().unwrap()
    }

    /// `POST /invoices/{id}/<transition>` without a key or a body.
    pub async fn transition(&self, id: i64, transition: &str) -> Reply {
        self.post_raw(&format!("/invoices/{id}/{transition}"), &[], "")
            .await
    }
}

/// Runs `invoicing storm --json` against `urls` and returns whether it
/// exited with success, and its report.
pub async fn storm(
    urls: &[&str],
    invoices: usize,
    duplicates: usize,
    concurrency: usize,
) -> (bool, Value) {
    let mut command = Command::new(BIN);
    command.arg("storm").arg("--json");
    for url in urls {
        command.args(["--url", url]);
    }
    command
        .args(["--invoices", &invoices.to_string()])
        .args(["--duplicates", &duplicates.to_string()])
        .args(["--concurrency", &concurrency.to_string()])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("run the storm");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("the storm printed no JSON report ({e}): {stdout}"));
    (output.status.success(), report)
}

/// Instantiates each scenario (an `async fn(Db)` beside the invocation)
/// once per backend: `sqlite`, `postgres` and `mysql` modules of tests.
macro_rules! on_every_backend {
    ($($scenario:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(super::Db::sqlite()).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    if let Some(db) = super::Db::postgres().await {
                        super::$scenario(db).await;
                    }
                }
            )*
        }
        mod mysql {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    if let Some(db) = super::Db::mysql().await {
                        super::$scenario(db).await;
                    }
                }
            )*
        }
    };
}
pub(crate) use on_every_backend;
