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

use clap::{Args, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::store::Connect;

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
    axum::serve(listener, api::router(app))
        .with_graceful_shutdown(shutdown())
        .await?;
    tracing::info!("shut down");
    Ok(ExitCode::SUCCESS)
}

/// Resolves on Ctrl-C or SIGTERM: in-flight requests finish, new
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
