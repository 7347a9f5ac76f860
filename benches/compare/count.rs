//! Counts the statements sqlx sends, by listening to its `sqlx::query`
//! events (one per statement it executes on PostgreSQL and MySQL, `BEGIN`
//! and `COMMIT` included; on SQLite sqlx runs `BEGIN`/`COMMIT` outside its
//! statement logger, so they are not counted there).
//!
//! The counter is off while figures are timed: then each statement costs
//! one relaxed atomic load on both sides of a comparison.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tracing::subscriber::Interest;
use tracing::{Event, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

const TARGET: &str = "sqlx::query";

static COUNTING: AtomicBool = AtomicBool::new(false);
static STATEMENTS: AtomicU64 = AtomicU64::new(0);

struct StatementCounter;

impl<S: Subscriber> Layer<S> for StatementCounter {
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        if metadata.target() == TARGET {
            Interest::sometimes()
        } else {
            Interest::never()
        }
    }

    fn enabled(&self, metadata: &Metadata<'_>, _: Context<'_, S>) -> bool {
        metadata.target() == TARGET && COUNTING.load(Ordering::Relaxed)
    }

    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        if event.metadata().target() == TARGET {
            STATEMENTS.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Installs the counter as the global subscriber (once, before any pool).
pub fn install() {
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(StatementCounter))
        .expect("the bench installs the only global subscriber");
}

/// Runs `work` with the counter on; returns its output and the number of
/// statements sent meanwhile (run nothing else concurrently).
pub async fn statements<F: Future>(work: F) -> (F::Output, u64) {
    STATEMENTS.store(0, Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    let output = work.await;
    COUNTING.store(false, Ordering::SeqCst);
    (output, STATEMENTS.load(Ordering::SeqCst))
}
