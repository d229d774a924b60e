//! The tasks of a process: what a service spawns to run beside its requests (relays,
//! consumers, batchers), stopped together by [`crate::serve::Running::stop`]. Below `serve`,
//! so the parts a server runs (outbox, PDP) can spawn without knowing the server.

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The tasks of a process: every long-running task a service or the process spawns, stopped
/// together once requests have drained, and awaited by [`Running::stop`].
#[derive(Clone, Default)]
pub struct Tasks {
    tracker: TaskTracker,
    stop: CancellationToken,
}

impl Tasks {
    /// An empty set of tasks.
    pub fn new() -> Self {
        Self::default()
    }

    /// Spawns `task` as one of the process's workers. It is dropped when the process stops
    /// working (after in-flight requests have drained), if it has not ended by then; shutdown
    /// waits for it either way.
    pub fn spawn<F>(&self, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let stop = self.stop.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                () = task => {}
                () = stop.cancelled() => {}
            }
        });
    }

    /// The token cancelled when the process stops working, for tasks that wind down themselves
    /// (an outbox relay flushes first).
    pub fn stopping(&self) -> CancellationToken {
        self.stop.clone()
    }
}

impl Tasks {
    /// The tracker and the stop token, for the server that stops and awaits them.
    pub(crate) fn into_parts(self) -> (TaskTracker, CancellationToken) {
        (self.tracker, self.stop)
    }
}
