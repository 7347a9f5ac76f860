//! idem's example: an invoicing HTTP service where a payment is taken
//! once, whatever the client, the network or the broker does.
//!
//! - `invoicing` serves the API on 127.0.0.1:3000 with an SQLite file
//!   `invoicing.db` (`--listen`, `--database-url` / `DATABASE_URL` for
//!   PostgreSQL or MySQL).
//! - `invoicing storm` pays invoices many times over, concurrently, and
//!   checks each was paid exactly once.
//! - `invoicing sql --dialect postgres` prints the invoice state machine
//!   and the SQL each transition compiles to.

mod api;
mod invoice;
mod problem;
mod sql_cmd;
mod store;
mod storm;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use idem::keys::{KeyStore, DEFAULT_RETENTION};

use crate::store::{Connect, Keys, Repository};

/// An invoicing service that takes each payment once.
#[derive(Debug, Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the API (the default).
    Serve(ServeArgs),
    /// Pay invoices many times over, concurrently, and check each was paid
    /// exactly once.
    Storm(storm::StormArgs),
    /// Print the invoice state machine and the SQL of each transition.
    Sql(sql_cmd::SqlArgs),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// The address to listen on (port 0 picks a free port; the address is
    /// printed on standard output).
    #[arg(long, default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// sqlite://FILE, postgres://USER@HOST/DB or mysql://USER@HOST/DB.
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite://invoicing.db")]
    database_url: String,
    /// Connections in the database pool.
    #[arg(long, default_value_t = 16)]
    max_connections: u32,
    /// Seconds between two purges of expired idempotency keys and inbox
    /// markers.
    #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
    purge_every_secs: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            None => serve(cli.serve).await,
            Some(Command::Serve(args)) => serve(args).await,
            Some(Command::Storm(args)) => storm::run(args).await,
            Some(Command::Sql(args)) => {
                sql_cmd::print(&args);
                Ok(ExitCode::SUCCESS)
            }
        }
    });
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Any failure that ends the program.
type AnyError = Box<dyn std::error::Error + Send + Sync>;

async fn serve(args: ServeArgs) -> Result<ExitCode, AnyError> {
    let connect = Connect {
        url: args.database_url,
        max_connections: args.max_connections,
    };
    let services = store::open(&connect)
        .await
        .map_err(|e| format!("cannot open the database `{}`: {e}", connect.url))?;
    let backend = services.repo.backend();
    purge(services.repo.as_ref(), &services.keys).await;
    let purger = tokio::spawn(purge_every(
        Duration::from_secs(args.purge_every_secs),
        services.repo.clone(),
        services.keys.clone(),
    ));
    let app = api::App {
        repo: services.repo,
        keys: services.keys,
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let address = listener.local_addr()?;
    tracing::info!(%address, backend, "serving the invoicing API");
    println!("invoicing listening on http://{address}");
    let (router, drain) = api::router(app);
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown())
        .await?;
    // The connections are closed, but an idempotent request whose client
    // hung up may still run on the layer's task: let it store its
    // response (at most one lease: after that its key is taken over
    // anyway).
    if tokio::time::timeout(api::KEY_LEASE, drain.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            running = drain.running(),
            "idempotent requests still running one lease after the shutdown began: leaving them"
        );
    }
    purger.abort();
    tracing::info!("shut down");
    Ok(ExitCode::SUCCESS)
}

/// Deletes idempotency-key records older than their retention and inbox
/// markers older than their window (both 24 h). Safe with several
/// instances on one database: each old row is deleted by one of them.
async fn purge(repo: &dyn Repository, keys: &Keys) {
    match keys.purge(DEFAULT_RETENTION).await {
        Ok(purged) => tracing::info!(purged, "purged expired idempotency keys"),
        Err(error) => tracing::warn!(%error, "purging idempotency keys failed"),
    }
    match repo.purge_inbox().await {
        Ok(purged) => tracing::info!(purged, "purged expired inbox markers"),
        Err(error) => tracing::warn!(%error, "purging inbox markers failed"),
    }
}

/// [`purge`] every `period`, from one period from now.
async fn purge_every(period: Duration, repo: Arc<dyn Repository>, keys: Keys) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        ticks.tick().await;
        purge(repo.as_ref(), &keys).await;
    }
}

/// Resolves on Ctrl-C or SIGTERM: in-flight requests finish (and, after
/// the server stopped, the idempotent ones whose client hung up), new
/// connections are refused.
async fn shutdown() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutting down: finishing in-flight requests");
}
