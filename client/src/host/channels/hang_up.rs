//! Ending a command whose client went away: SIGHUP to its process group,
//! as when a terminal hangs up, then SIGKILL after a grace period (a shell
//! is hung up through its PTY, with the same grace).

use std::time::Duration;

use tokio::time::timeout;
use tracing::info;

/// How long a command whose client went away has between SIGHUP and
/// SIGKILL (sshd sends SIGHUP only; a command that ignores it would run on
/// with nobody to see it).
pub(super) const HANGUP_GRACE: Duration = Duration::from_secs(2);

/// Ends what a channel started, its client being gone: SIGHUP to the
/// command's process group, then SIGKILL after [`HANGUP_GRACE`].
pub(super) async fn hang_up(child: &mut tokio::process::Child) {
    info!(pid = ?child.id(), "the client went away: hanging up the command");
    #[cfg(unix)]
    let group = child
        .id()
        .and_then(|pid| i32::try_from(pid).ok())
        .map(nix::unistd::Pid::from_raw);
    #[cfg(unix)]
    if let Some(group) = group {
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGHUP);
    }
    if timeout(HANGUP_GRACE, child.wait()).await.is_ok() {
        return;
    }
    #[cfg(unix)]
    if let Some(group) = group {
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
    }
    let _ = child.start_kill();
    let _ = child.wait().await;
}
