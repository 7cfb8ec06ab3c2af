//! The signals that end a command: an interruption (Ctrl-C, SIGTERM, or
//! SIGHUP from a closed terminal), and a request to stop (Ctrl-C, SIGTERM).

/// Waits for Ctrl-C, SIGTERM or SIGHUP (the terminal closed); returns the
/// exit status a shell gives a command they end (128 + the signal's number).
pub(super) async fn interrupted() -> u8 {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let (Ok(mut term), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) {
            tokio::select! {
                _ = term.recv() => return 143,
                _ = hup.recv() => return 129,
                _ = tokio::signal::ctrl_c() => return 130,
            }
        }
    }
    let _ = tokio::signal::ctrl_c().await;
    130
}

/// Waits for Ctrl-C or SIGTERM.
pub(super) async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
