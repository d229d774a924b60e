//! The shutdown trigger: SIGTERM (what Kubernetes sends) or SIGINT (Ctrl-C). What happens
//! next — stop accepting, drain, flush — is [`crate::serve::Running::stop`].

/// Waits for SIGTERM or SIGINT.
pub async fn signal() {
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
    }
}
