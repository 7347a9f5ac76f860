//! Timing: runs one side of a comparison for a time budget with a number
//! of concurrent tasks, and interleaves rounds of both sides so that both
//! see the same machine load.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;

use crate::count;

/// One operation, given its index (which picks the rows it touches). It
/// panics when the result is not the expected one: a broken path is never
/// timed.
pub type Op = Arc<dyn Fn(usize) -> BoxFuture<'static, ()> + Send + Sync>;

/// Work before a side runs (resetting rows), or its check afterwards
/// (given how many operations ran).
pub type Hook<'a> = Box<dyn Fn(usize) -> BoxFuture<'a, ()> + 'a>;

/// How long and how often to run.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Time budget of one side in one round.
    pub budget: Duration,
    /// Timed rounds (each runs both sides, alternating which goes first).
    pub rounds: usize,
    /// Operations of each side whose statements are counted.
    pub counted_ops: usize,
    /// Whether a discarded warm-up round (a fifth of the budget) runs first.
    pub warm_up: bool,
}

impl Timing {
    /// For operations that take longer than the budget (e: a thousand
    /// single calls each): at most two rounds, no warm-up, one counted
    /// operation.
    pub fn heavy(self) -> Timing {
        Timing {
            rounds: self.rounds.min(2),
            counted_ops: 1,
            warm_up: false,
            ..self
        }
    }
}

/// One side of a comparison: the baseline or idem.
pub struct Side<'a> {
    pub op: Op,
    /// Operations available per round (rows prepared); a task stops early
    /// when they run out.
    pub max_ops: usize,
    /// Resets the rows before a round (argument unused: 0).
    pub prepare: Hook<'a>,
    /// Checks the database after a round, given how many operations ran.
    pub verify: Hook<'a>,
}

/// Timings of one side over all rounds.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub ops: usize,
    pub elapsed: Duration,
    /// Per-operation latencies in nanoseconds, sorted.
    pub latencies: Vec<u64>,
    /// Statements per operation, when counted.
    pub statements: Option<f64>,
    /// Operations per second of each timed round, in order.
    pub round_rates: Vec<f64>,
}

impl Stats {
    pub fn per_second(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn mean_us(&self) -> f64 {
        if self.latencies.is_empty() {
            return 0.0;
        }
        self.latencies.iter().sum::<u64>() as f64 / self.latencies.len() as f64 / 1e3
    }

    pub fn percentile_us(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return 0.0;
        }
        let rank = ((p / 100.0) * self.latencies.len() as f64).ceil() as usize;
        self.latencies[rank.clamp(1, self.latencies.len()) - 1] as f64 / 1e3
    }

    fn absorb(&mut self, run: Run) {
        self.round_rates
            .push(run.latencies.len() as f64 / run.elapsed.as_secs_f64().max(1e-9));
        self.ops += run.latencies.len();
        self.elapsed += run.elapsed;
        self.latencies.extend(run.latencies);
    }
}

struct Run {
    elapsed: Duration,
    latencies: Vec<u64>,
}

/// Runs `op` on `tasks` concurrent tasks until `budget` is spent or
/// `max_ops` operations were handed out; every task runs at least one
/// operation (if any is left), so a slow operation still gets measured.
async fn timed(op: &Op, tasks: usize, budget: Duration, max_ops: usize) -> Run {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let deadline = start + budget;
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let op = Arc::clone(op);
            let next = Arc::clone(&next);
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                loop {
                    if !latencies.is_empty() && Instant::now() >= deadline {
                        break;
                    }
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    if index >= max_ops {
                        break;
                    }
                    let begun = Instant::now();
                    op(index).await;
                    latencies.push(begun.elapsed().as_nanos() as u64);
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for handle in handles {
        match handle.await {
            Ok(mut task) => latencies.append(&mut task),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
    Run {
        elapsed: start.elapsed(),
        latencies,
    }
}

async fn round(side: &Side<'_>, tasks: usize, budget: Duration) -> Run {
    (side.prepare)(0).await;
    let run = timed(&side.op, tasks, budget, side.max_ops).await;
    (side.verify)(run.latencies.len()).await;
    run
}

/// Counts the statements of `ops` operations of `side`, one at a time.
async fn count_statements(side: &Side<'_>, ops: usize) -> f64 {
    let ops = ops.min(side.max_ops).max(1);
    (side.prepare)(0).await;
    let ((), statements) = count::statements(async {
        for index in 0..ops {
            (side.op)(index).await;
        }
    })
    .await;
    (side.verify)(ops).await;
    statements as f64 / ops as f64
}

/// Runs a warm-up round (discarded), then `timing.rounds` rounds of both
/// sides, alternating which side goes first; with `count`, counts each
/// side's statements afterwards.
pub async fn compare(
    timing: &Timing,
    tasks: usize,
    count: bool,
    baseline: &Side<'_>,
    idem: &Side<'_>,
) -> (Stats, Stats) {
    if timing.warm_up {
        round(baseline, tasks, timing.budget / 5).await;
        round(idem, tasks, timing.budget / 5).await;
    }
    let mut stats = (Stats::default(), Stats::default());
    for r in 0..timing.rounds {
        if r % 2 == 0 {
            stats.0.absorb(round(baseline, tasks, timing.budget).await);
            stats.1.absorb(round(idem, tasks, timing.budget).await);
        } else {
            stats.1.absorb(round(idem, tasks, timing.budget).await);
            stats.0.absorb(round(baseline, tasks, timing.budget).await);
        }
    }
    stats.0.latencies.sort_unstable();
    stats.1.latencies.sort_unstable();
    if count {
        stats.0.statements = Some(count_statements(baseline, timing.counted_ops).await);
        stats.1.statements = Some(count_statements(idem, timing.counted_ops).await);
    }
    stats
}
