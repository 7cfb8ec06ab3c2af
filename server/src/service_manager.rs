//! Telling systemd (`Type=notify`) how the relay is: ready once it
//! listens, stopping when it stops, and watchdog pings while its runtime
//! runs (`WatchdogSec=`), so a relay whose tasks no longer run is
//! restarted. Not under systemd (no `NOTIFY_SOCKET`), and off Unix, each
//! call does nothing. The relay binary's own: the library knows nothing of
//! it.

/// The relay serves: `status` says where.
pub(crate) fn ready(status: &str) {
    #[cfg(unix)]
    send(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(status),
    ]);
    #[cfg(not(unix))]
    let _ = status;
}

/// The relay stops.
pub(crate) fn stopping() {
    #[cfg(unix)]
    send(&[sd_notify::NotifyState::Stopping]);
}

/// Pings the watchdog at half the interval systemd asked for, from a task
/// of the relay's runtime, for as long as that runtime runs; nothing if
/// no watchdog was asked for.
pub(crate) fn spawn_watchdog() {
    #[cfg(unix)]
    {
        let Some(interval) = watchdog_interval() else {
            return;
        };
        let every = interval / 2;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                send(&[sd_notify::NotifyState::Watchdog]);
            }
        });
    }
}

/// The watchdog interval systemd asked for (`WATCHDOG_USEC`), as
/// libsystemd's `sd_watchdog_enabled` reads it: for this process unless
/// `WATCHDOG_PID` names another (sd-notify also wants it set).
#[cfg(unix)]
fn watchdog_interval() -> Option<std::time::Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    let ours =
        std::env::var("WATCHDOG_PID").map_or(true, |pid| pid.parse() == Ok(std::process::id()));
    (ours && usec > 0).then(|| std::time::Duration::from_micros(usec))
}

#[cfg(unix)]
fn send(states: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::debug!("telling the service manager: {e}");
    }
}
