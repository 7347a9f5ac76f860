//! A private PgBouncer (Debian's 1.18, as `.ci/run` installs it) in front
//! of the machine's PostgreSQL, for the pooler suites (`pooler.rs`, in
//! the simple protocol, and `pooler_prepared.rs`), and the state machine
//! and handlers they share: each test starts its
//! own on a free port, with its own config and log in a temporary folder,
//! and stops it when dropped. The shared PostgreSQL is never reconfigured;
//! each test gets a fresh database on it (through PgBouncer's `*`
//! fallback entry), because a pooler in transaction mode cannot keep a
//! session's `search_path`.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use idem::prelude::*;
use idem_sqlx::inbox::{EventId, InboxHandler};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Executor, PgConnection, Postgres};

/// The issue's invoices.
#[derive(StateMachine, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[state_machine(table = "invoices", column = "status", key = "id")]
#[state_machine(transitions(
    issue: Draft -> Issued,
    pay: Issued -> Paid,
))]
pub enum Invoice {
    #[state_machine(initial)]
    Draft,
    Issued,
    Paid,
}

/// Inserts a payment for the invoice that moved.
pub struct RecordPayment;

#[async_trait]
impl TransitionHandler<Invoice, Postgres, i64> for RecordPayment {
    type Error = sqlx::Error;

    async fn on_applied(
        &self,
        conn: &mut PgConnection,
        change: Change<'_, Invoice, i64>,
    ) -> Result<(), sqlx::Error> {
        // Unnamed (not cached): a named statement would outlive the
        // transaction and land on another server connection.
        sqlx::query("INSERT INTO payments (invoice_id) VALUES ($1)")
            .bind(*change.key)
            .persistent(false)
            .execute(conn)
            .await?;
        Ok(())
    }
}

/// Records the event in `deliveries`, unnamed.
pub struct CountDelivery;

#[async_trait]
impl InboxHandler<Postgres> for CountDelivery {
    type Output = ();
    type Error = sqlx::Error;

    async fn handle(&self, conn: &mut PgConnection, event: &EventId) -> Result<(), sqlx::Error> {
        sqlx::query("INSERT INTO deliveries (event_id) VALUES ($1)")
            .bind(event.as_str())
            .persistent(false)
            .execute(conn)
            .await?;
        Ok(())
    }
}

/// How PgBouncer hands out server connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolMode {
    /// A server connection per client transaction (the mode that breaks
    /// named prepared statements).
    Transaction,
    /// A server connection per client session.
    Session,
}

impl PoolMode {
    fn name(self) -> &'static str {
        match self {
            PoolMode::Transaction => "transaction",
            PoolMode::Session => "session",
        }
    }
}

/// A running private PgBouncer; killed on drop.
pub struct PgBouncer {
    child: Child,
    port: u16,
    dir: PathBuf,
    /// The database this test owns, on the shared server.
    pub database: String,
    admin: PgConnectOptions,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// The shared server's URL, or `None` (skip) outside CI when it is unset.
fn server_url() -> Option<String> {
    match std::env::var("IDEM_TEST_POSTGRES") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var_os("CI").is_some() => {
            panic!("CI is set but IDEM_TEST_POSTGRES is not: the pooler suite must run in CI")
        }
        _ => {
            eprintln!("IDEM_TEST_POSTGRES is not set: skipping the pooler suite");
            None
        }
    }
}

impl PgBouncer {
    /// Starts PgBouncer in `mode` with `server_connections` server
    /// connections, in front of a fresh database on the shared server.
    /// `None` when `IDEM_TEST_POSTGRES` is unset outside CI; panics in CI
    /// when PgBouncer is missing or does not come up.
    pub async fn start(mode: PoolMode, server_connections: u32) -> Option<PgBouncer> {
        let url = server_url()?;
        let admin = PgConnectOptions::from_str(&url).expect("IDEM_TEST_POSTGRES is a URL");
        let database = format!(
            "idem_pgb_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let mut conn = admin
            .connect()
            .await
            .expect("connect to IDEM_TEST_POSTGRES");
        conn.execute(format!("DROP DATABASE IF EXISTS {database}").as_str())
            .await
            .unwrap();
        conn.execute(format!("CREATE DATABASE {database}").as_str())
            .await
            .unwrap();

        let dir = std::env::temp_dir().join(format!("idem-{database}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let host = admin.get_host().to_owned();
        let server_port = admin.get_port();
        let user = admin.get_username().to_owned();
        let config = format!(
            "[databases]\n\
             * = host={host} port={server_port}\n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = trust\n\
             auth_file = {dir}/userlist.txt\n\
             pool_mode = {mode}\n\
             default_pool_size = {server_connections}\n\
             max_client_conn = 200\n\
             server_reset_query =\n\
             ignore_startup_parameters = extra_float_digits,options\n\
             logfile = {dir}/pgbouncer.log\n\
             pidfile = {dir}/pgbouncer.pid\n",
            dir = dir.display(),
            mode = mode.name(),
        );
        std::fs::write(dir.join("pgbouncer.ini"), config).unwrap();
        std::fs::write(dir.join("userlist.txt"), format!("\"{user}\" \"\"\n")).unwrap();
        // PgBouncer refuses to run as root: drop to `postgres` then, which
        // must be able to read and write the folder.
        let mut command = Command::new("pgbouncer");
        if is_root() {
            Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .expect("chown the PgBouncer folder");
            command.args(["-u", "postgres"]);
        }
        let child = command
            .arg(dir.join("pgbouncer.ini"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start pgbouncer (is it installed?): {e}"));
        let bouncer = PgBouncer {
            child,
            port,
            dir,
            database,
            admin,
        };
        bouncer.wait_until_up().await;
        Some(bouncer)
    }

    async fn wait_until_up(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.options().connect().await.is_ok() {
                return;
            }
            if Instant::now() > deadline {
                let log =
                    std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default();
                panic!("PgBouncer on port {} did not come up:\n{log}", self.port);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Options for a client of PgBouncer (this test's database).
    pub fn options(&self) -> PgConnectOptions {
        self.admin
            .clone()
            .host("127.0.0.1")
            .port(self.port)
            .database(&self.database)
    }

    /// Options for a direct connection to this test's database (setup and
    /// checks that must not go through the pooler).
    pub fn direct(&self) -> PgConnectOptions {
        self.admin.clone().database(&self.database)
    }

    /// A pool of `max` client connections through PgBouncer.
    pub async fn pool(&self, max: u32) -> PgPool {
        PgPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(Duration::from_secs(60))
            .connect_with(self.options())
            .await
            .expect("connect through PgBouncer")
    }

    /// A direct pool to this test's database.
    pub async fn direct_pool(&self, max: u32) -> PgPool {
        PgPoolOptions::new()
            .max_connections(max)
            .connect_with(self.direct())
            .await
            .expect("connect to the test database directly")
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
        // The database is dropped by a fresh process's cleanup if this one
        // cannot reach the server now; here, best effort.
        let admin = self.admin.clone();
        let database = self.database.clone();
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async move {
                let mut conn = admin.connect().await.ok()?;
                conn.execute(format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)").as_str())
                    .await
                    .ok()
            })
        })
        .join();
    }
}
