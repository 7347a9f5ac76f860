//! Waiting for the claimed work a layer runs on tasks of its own.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

/// A handle on the claimed requests an [`IdempotencyLayer`](crate::IdempotencyLayer)
/// (and every clone of it) is running on tasks of its own, made by
/// [`IdempotencyLayer::drain`](crate::IdempotencyLayer::drain).
///
/// A claimed request runs to its stored response even when its client
/// hangs up, on a task the layer spawns. A server's graceful shutdown
/// waits for its connections, not for those tasks: once the connections
/// are closed, the runtime is dropped and the tasks with it, cut short
/// mid-statement, their keys left claimed until their leases expire.
/// Await [`Drain::wait`] after the server stopped (bounded by a timeout
/// of your choice, such as the lease), before the runtime ends.
///
/// ```
/// use std::time::Duration;
/// use axum::{routing::post, Router};
/// use idem_core::keys::{MemoryStore, Scope};
/// use idem_http::IdempotencyLayer;
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let layer = IdempotencyLayer::new(MemoryStore::default(), |_| Scope::new("acme", "api").ok());
/// let drain = layer.drain();
/// let app: Router = Router::new().route("/charges", post(|| async { "charged" })).layer(layer);
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
/// axum::serve(listener, app)
///     .with_graceful_shutdown(async { /* a signal */ })
///     .await
///     .unwrap();
/// // The connections are closed; let the claimed requests finish.
/// let drained = tokio::time::timeout(Duration::from_secs(60), drain.wait()).await;
/// assert!(drained.is_ok());
/// assert_eq!(drain.running(), 0);
/// # });
/// ```
#[derive(Clone, Default)]
pub struct Drain {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    running: AtomicUsize,
    idle: Notify,
}

/// One running request: counted from [`Drain::enter`] until dropped.
pub(crate) struct Running(Arc<Inner>);

impl Drop for Running {
    fn drop(&mut self) {
        if self.0.running.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Drain {
    /// Counts one more running request until the guard is dropped.
    pub(crate) fn enter(&self) -> Running {
        self.inner.running.fetch_add(1, Ordering::AcqRel);
        Running(Arc::clone(&self.inner))
    }

    /// How many claimed requests are running on the layer's tasks now
    /// (their handler, or the reading and storing of their response).
    pub fn running(&self) -> usize {
        self.inner.running.load(Ordering::Acquire)
    }

    /// Resolves once no claimed request is running on the layer's tasks:
    /// at once when none is. Requests that start while it waits are
    /// waited for too. It never ends a request: bound it with a timeout.
    pub async fn wait(&self) {
        loop {
            let idle = self.inner.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.running() == 0 {
                return;
            }
            idle.await;
        }
    }
}

impl fmt::Debug for Drain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Drain")
            .field("running", &self.running())
            .finish()
    }
}
