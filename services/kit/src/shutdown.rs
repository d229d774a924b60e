//! Graceful shutdown: one cancellation token observed by every task, named tasks tracked and
//! awaited under a grace period, SIGTERM/SIGINT as the trigger.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// The process's shutdown signal and its running tasks.
#[derive(Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    tasks: TaskTracker,
}

impl Shutdown {
    /// A new, untriggered shutdown.
    pub fn new() -> Self {
        Self::default()
    }

    /// The token tasks watch; cancelled when shutdown begins.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Spawns a long-running task named `name`, awaited by [`Shutdown::drain`].
    pub fn spawn<F>(&self, name: &'static str, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(fut.instrument(tracing::info_span!("task", name)));
    }

    /// Begins shutdown.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    /// Waits for SIGTERM or SIGINT (or an earlier [`Shutdown::trigger`]).
    pub async fn wait_for_signal(&self) {
        let term = async {
            #[cfg(unix)]
            {
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(mut s) => {
                        s.recv().await;
                    }
                    Err(_) => std::future::pending::<()>().await,
                }
            }
            #[cfg(not(unix))]
            std::future::pending::<()>().await
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received, shutting down"),
            _ = term => tracing::info!("SIGTERM received, shutting down"),
            _ = self.token.cancelled() => {}
        }
    }

    /// Cancels every task and waits up to `grace` for them to finish; `false` on time-out.
    pub async fn drain(&self, grace: Duration) -> bool {
        self.token.cancel();
        self.tasks.close();
        tokio::time::timeout(grace, self.tasks.wait()).await.is_ok()
    }
}
