//! SIGTERM (Kubernetes) or Ctrl-C cancels the root token; everything else stops from it.

use tokio_util::sync::CancellationToken;

pub fn cancel_on_signal(root: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => tracing::info!("interrupt received; shutting down"),
            _ = term => tracing::info!("SIGTERM received; shutting down"),
        }
        root.cancel();
    });
}
