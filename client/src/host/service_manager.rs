//! Telling systemd (`Type=notify`) how the agent is: ready once it is set
//! up (it then dials its relays for as long as it runs, so waiting for a
//! relay would fail a boot without network), its status (online through
//! which relay, or reconnecting), stopping, and watchdog pings while its
//! runtime runs (`WatchdogSec=`). Not under systemd (no `NOTIFY_SOCKET`),
//! and off Unix, each call does nothing.

/// The agent is set up; `status` says what it does now.
pub(super) fn ready(status: &str) {
    #[cfg(unix)]
    send(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(status),
    ]);
    #[cfg(not(unix))]
    let _ = status;
}

/// What the agent does now (shown by `systemctl status`).
pub(super) fn status(status: &str) {
    #[cfg(unix)]
    send(&[sd_notify::NotifyState::Status(status)]);
    #[cfg(not(unix))]
    let _ = status;
}

/// The agent stops.
pub(super) fn stopping() {
    #[cfg(unix)]
    send(&[sd_notify::NotifyState::Stopping]);
}

/// Pings the watchdog at half the interval systemd asked for, from a task
/// of the agent's runtime, for as long as that runtime runs; nothing if no
/// watchdog was asked for.
pub(super) fn spawn_watchdog() {
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
