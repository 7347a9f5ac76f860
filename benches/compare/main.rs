//! idem against the hand-written baseline, in one run (BENCHMARKS.md).
//!
//! ```text
//! IDEM_BENCH_POSTGRES=postgres://postgres@127.0.0.1:5432/test \
//! IDEM_BENCH_MYSQL=mysql://root@127.0.0.1:3306/test \
//! cargo bench --bench compare
//! ```
//!
//! SQLite (a file in WAL mode) always runs; PostgreSQL and MySQL run when
//! their URL is set (`IDEM_BENCH_*`, else `IDEM_TEST_*`). Each backend gets
//! its own `idem_bench_<pid>` schema, database or file, dropped at the end.
//! Every scenario runs with one task on a pool of one connection, then with
//! 16 tasks on a pool of 8, in rounds that alternate baseline and idem.
//!
//! Environment:
//! - `IDEM_BENCH_SCENARIOS`: comma-separated subset of `a,b,c,d,e,f,g,http`
//!   (default all);
//! - `IDEM_BENCH_BACKENDS`: subset of `sqlite,postgres,mysql` (default all
//!   whose URL is set);
//! - `IDEM_BENCH_SECONDS`: time budget of one side in one round (0.15);
//! - `IDEM_BENCH_ROUNDS`: timed rounds per scenario (10);
//! - `IDEM_BENCH_PG_SYNCHRONOUS_COMMIT`: `SET synchronous_commit` on every
//!   PostgreSQL connection of both sides (e.g. `off`: commits do not wait
//!   for the disk, so the statements' cost shows).
//!
//! Without `--bench` (as `cargo test --benches` runs it) it makes one quick
//! pass over every scenario on SQLite and in process with tiny sizes: a
//! check that every measured path works, not a measurement.

mod count;
mod db;
mod http;
mod report;
mod runner;
mod scenarios;

use std::time::{Duration, Instant};

use idem_sqlx::keys::SqlKeyStore;
use idem_sqlx::Key;
use sqlx::{MySql, Postgres, Sqlite};

use crate::db::{BenchDb, Target};
use crate::report::Row;
use crate::runner::Timing;
use crate::scenarios::{Bench, Mode, Plan, Sizes, MODES};

const ALL_SCENARIOS: &str = "a,b,c,d,e,f,g,http";

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn url(backend: &str) -> Option<String> {
    env(&format!("IDEM_BENCH_{backend}")).or_else(|| env(&format!("IDEM_TEST_{backend}")))
}

fn parse_env<T: std::str::FromStr>(name: &str, default: T) -> T {
    match env(name) {
        Some(value) => value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value} is not a valid value")),
        None => default,
    }
}

fn list(name: &str, default: &str) -> Vec<String> {
    env(name)
        .unwrap_or_else(|| default.to_owned())
        .split(',')
        .map(|s| s.trim().to_lowercase())
        .filter(|s| !s.is_empty())
        .collect()
}

/// The plan of a real run, or of the quick check.
fn plan(measure: bool) -> Plan {
    let scenarios = list("IDEM_BENCH_SCENARIOS", ALL_SCENARIOS);
    for s in &scenarios {
        assert!(
            ALL_SCENARIOS.split(',').any(|known| known == s),
            "IDEM_BENCH_SCENARIOS: unknown scenario {s:?} (known: {ALL_SCENARIOS})"
        );
    }
    if !measure {
        return Plan {
            timing: Timing {
                budget: Duration::from_millis(10),
                rounds: 1,
                counted_ops: 2,
                warm_up: true,
            },
            sizes: Sizes {
                moves: 400,
                noops: 20,
                batch: 20,
                replay_keys: 20,
            },
            scenarios,
        };
    }
    Plan {
        timing: Timing {
            budget: Duration::from_secs_f64(parse_env("IDEM_BENCH_SECONDS", 0.15)),
            rounds: parse_env("IDEM_BENCH_ROUNDS", 10),
            counted_ops: 50,
            warm_up: true,
        },
        sizes: Sizes {
            moves: 20_000,
            noops: 1_000,
            batch: 1_000,
            replay_keys: 1_000,
        },
        scenarios,
    }
}

/// Runs the plan's scenarios on one backend, both modes.
async fn run_backend<DB: BenchDb>(plan: &Plan, target: Target) -> Vec<Row>
where
    i64: Key<DB>,
    SqlKeyStore<DB>: idem::keys::KeyStore<Error = idem_sqlx::Error>,
{
    let started = Instant::now();
    {
        let pool = DB::pool(&target, 1).await;
        println!("\n## {}: {}", DB::LABEL, DB::version(&pool).await);
        scenarios::setup(&pool, &plan.sizes).await;
        pool.close().await;
    }
    let mut rows = Vec::new();
    for mode in MODES {
        let pool = DB::pool(&target, mode.pool).await;
        let bench = Bench {
            pool: &pool,
            plan,
            mode,
            // Statements are counted one operation at a time: once is enough.
            count: mode.tasks == 1,
        };
        let mut mode_rows = Vec::new();
        if plan.wants("a") {
            mode_rows.push(bench.a().await);
        }
        if plan.wants("b") {
            mode_rows.push(bench.b().await);
        }
        if plan.wants("c") {
            mode_rows.push(bench.c().await);
        }
        if plan.wants("d") {
            mode_rows.push(bench.d().await);
        }
        if plan.wants("e") {
            mode_rows.push(bench.e().await);
        }
        if plan.wants("f") {
            mode_rows.extend(bench.f().await);
        }
        if plan.wants("g") {
            mode_rows.push(bench.g().await);
        }
        pool.close().await;
        report::print_table(&format!("{}, {}", DB::LABEL, mode.name), &mode_rows);
        rows.extend(mode_rows);
    }
    target.drop_all().await;
    println!("\n({} took {:.0?})", DB::LABEL, started.elapsed());
    rows
}

async fn run(measure: bool) {
    let plan = plan(measure);
    let backends = list("IDEM_BENCH_BACKENDS", "sqlite,postgres,mysql");
    // Backends run only when a database scenario is selected.
    let databases = plan.scenarios.iter().any(|s| s != "http");
    let wants = |b: &str| databases && backends.iter().any(|x| x == b);
    let started = Instant::now();
    println!(
        "# idem bench: {} s per side per round, {} rounds, {} threads",
        plan.timing.budget.as_secs_f64(),
        plan.timing.rounds,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let mut rows = Vec::new();
    if wants("sqlite") {
        rows.extend(run_backend::<Sqlite>(&plan, Target::sqlite()).await);
    }
    // The quick check stays on SQLite: it must not depend on servers.
    if measure && wants("postgres") {
        match url("POSTGRES") {
            Some(url) => {
                rows.extend(run_backend::<Postgres>(&plan, Target::postgres(&url).await).await)
            }
            None => {
                println!("\nPostgreSQL skipped: set IDEM_BENCH_POSTGRES (or IDEM_TEST_POSTGRES)")
            }
        }
    }
    if measure && wants("mysql") {
        match url("MYSQL") {
            Some(url) => rows.extend(run_backend::<MySql>(&plan, Target::mysql(&url).await).await),
            None => println!("\nMySQL skipped: set IDEM_BENCH_MYSQL (or IDEM_TEST_MYSQL)"),
        }
    }
    if plan.wants("http") {
        for Mode { name, tasks, .. } in MODES {
            let layer_rows = http::layer(&plan.timing, tasks, name).await;
            let title = format!("IdempotencyLayer over MemoryStore, in process, {tasks} task(s)");
            report::print_table(&title, &layer_rows);
            rows.extend(layer_rows);
        }
    }
    report::print_summary(&rows);
    println!("\nTotal: {:.0?}", started.elapsed());
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not.
    let measure = std::env::args().any(|a| a == "--bench");
    count::install();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(run(measure));
}
