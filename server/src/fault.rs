//! Fault injection on the login path, for tests only (cargo feature
//! `fault-injection`; without it every hook is a no-op). A test arms one
//! fault at one [`Step`]; the next login that reaches that step fails
//! there, in the way the test chose, and the test then checks that the
//! attempt settled (SPEC S7a). Peers that stop reading or close are played
//! by the test's client; these are the relay's own failures.

use crate::error::ConnError;

/// A step of a login after its attempt was reserved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Step {
    /// Before message 2 (KE2) is written.
    Ke2Write,
    /// Before KE3 is read.
    AwaitKe3,
    /// Before KE3 is checked.
    Ke3Check,
    /// Before the verdict commits.
    VerdictCommit,
    /// Before the verdict (message 4) is written.
    VerdictWrite,
    /// Before the session is paired with the host.
    SessionRegistration,
}

/// How a step fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// An error (as a store or write error would be).
    Error,
    /// The step hangs until the handshake deadline cuts it.
    Stall,
    /// The connection's task is cancelled there (its future dropped).
    Cancel,
}

#[cfg(feature = "fault-injection")]
mod armed {
    use std::sync::Mutex;

    use super::{Fault, Step};

    pub(super) static ARMED: Mutex<Option<(Step, Fault)>> = Mutex::new(None);
    pub(super) static CANCEL: tokio::sync::Notify = tokio::sync::Notify::const_new();

    pub(super) fn take(step: Step) -> Option<Fault> {
        let mut armed = ARMED.lock().unwrap_or_else(|p| p.into_inner());
        match *armed {
            Some((s, fault)) if s == step => {
                *armed = None;
                Some(fault)
            }
            _ => None,
        }
    }
}

/// Arms `fault` at `step` for the next login that gets there.
#[cfg(feature = "fault-injection")]
pub fn inject(step: Step, fault: Fault) {
    *armed::ARMED.lock().unwrap_or_else(|p| p.into_inner()) = Some((step, fault));
}

/// Whether an armed fault is still waiting for its step.
#[cfg(feature = "fault-injection")]
pub fn armed() -> bool {
    armed::ARMED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .is_some()
}

/// The hook at `step`.
pub(crate) async fn at(step: Step) -> Result<(), ConnError> {
    #[cfg(feature = "fault-injection")]
    match armed::take(step) {
        Some(Fault::Error) => return Err(ConnError::Injected(step)),
        Some(Fault::Stall) => std::future::pending::<()>().await,
        Some(Fault::Cancel) => {
            armed::CANCEL.notify_one();
            std::future::pending::<()>().await
        }
        None => {}
    }
    let _ = step;
    Ok(())
}

/// Resolves when a [`Fault::Cancel`] fires: the connection task drops its
/// handshake there. Never resolves without the feature.
pub(crate) async fn cancelled() {
    #[cfg(feature = "fault-injection")]
    armed::CANCEL.notified().await;
    #[cfg(not(feature = "fault-injection"))]
    std::future::pending::<()>().await
}
