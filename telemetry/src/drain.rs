//! The shutdown signal every task holds.

use hyper_util::server::graceful::GracefulConnection;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Tells tasks to stop accepting work and lets the owner wait until they have finished.
///
/// Cloning is cheap; every clone observes the same signal and registers with the same tracker.
#[derive(Debug, Clone, Default)]
pub struct Drain {
    signal: CancellationToken,
    tasks: TaskTracker,
}

impl Drain {
    /// A drain that has not been triggered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts draining: every [`Drain::signaled`] future completes.
    pub fn trigger(&self) {
        self.signal.cancel();
    }

    /// Completes once draining has started.
    pub async fn signaled(&self) {
        self.signal.cancelled().await;
    }

    /// True once draining has started.
    pub fn is_draining(&self) -> bool {
        self.signal.is_cancelled()
    }

    /// Spawns `task` so that [`Drain::wait`] waits for it.
    pub fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tasks.spawn(task)
    }

    /// Drives a hyper server connection to completion; once draining starts, the connection
    /// stops taking new requests, finishes those in flight, and closes (idle keep-alive
    /// connections close at once).
    pub async fn drive<C>(&self, conn: C) -> Result<(), C::Error>
    where
        C: GracefulConnection,
    {
        tokio::pin!(conn);
        tokio::select! {
            result = conn.as_mut() => result,
            () = self.signaled() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        }
    }

    /// Waits until every spawned task has finished, after [`Drain::trigger`].
    pub async fn wait(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// Completes on SIGTERM or SIGINT.
pub async fn wait_for_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
