//! Fault injection on the login path, for tests only (cargo feature
//! `fault-injection`; without it every hook is a no-op). A test arms one
//! fault at one [`Step`]; the next login that reaches that step fails
//! there, in the way the test chose, and the test then checks that the
//! attempt settled (SPEC S7a). Peers that stop reading or close are played
//! by the test's client; these are the relay's own failures.

/// The failure an armed [`Fault::Error`] makes at its step.
#[derive(Debug, thiserror::Error)]
#[error("injected fault at {0:?}")]
pub struct Injected(pub Step);

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
pub(crate) async fn at(step: Step) -> Result<(), Injected> {
    #[cfg(feature = "fault-injection")]
    match armed::take(step) {
        Some(Fault::Error) => return Err(Injected(step)),
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

/// End-to-end faults of a test relay, armed by environment variables so
/// the end-to-end tests can start a real relay process with them (only in
/// builds with the `fault-injection` feature):
/// - `LATCHKEY_TEST_FORWARD_CAPTURE=FILE`: every datagram the relay
///   forwards between a client and a host is appended to FILE, so a test
///   can show that no plaintext ever passed through the relay;
/// - `LATCHKEY_TEST_IMPERSONATE_HOST=1`: the relay introduces a key of its
///   own as the host's, as a relay that wanted to read sessions would.
#[cfg(feature = "fault-injection")]
mod e2e_faults {
    use std::{io::Write, sync::Mutex, sync::OnceLock};

    use latchkey_protocol::handshake::Keypair;

    pub(super) fn capture() -> Option<&'static Mutex<std::fs::File>> {
        static FILE: OnceLock<Option<Mutex<std::fs::File>>> = OnceLock::new();
        FILE.get_or_init(|| {
            let path = std::env::var_os("LATCHKEY_TEST_FORWARD_CAPTURE")?;
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .ok()
                .map(Mutex::new)
        })
        .as_ref()
    }

    pub(super) fn write(file: &Mutex<std::fs::File>, bytes: &[u8]) {
        let _ = file
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .write_all(bytes);
    }

    /// The key the impersonating relay introduces as the host's.
    pub(super) fn impostor() -> Option<&'static Keypair> {
        static KEY: OnceLock<Option<Keypair>> = OnceLock::new();
        KEY.get_or_init(|| {
            std::env::var_os("LATCHKEY_TEST_IMPERSONATE_HOST")
                .map(|_| Keypair::generate(&mut rand::rngs::OsRng))
        })
        .as_ref()
    }
}

/// Shows a test relay's capture each datagram it forwards (a no-op
/// otherwise).
pub(crate) fn forwarded(_datagram: &[u8]) {
    #[cfg(feature = "fault-injection")]
    if let Some(file) = e2e_faults::capture() {
        e2e_faults::write(file, _datagram);
    }
}

/// The host key the relay introduces: the host's, unless a test relay
/// impersonates the host.
pub(crate) fn introduced_host_key(
    key: latchkey_protocol::ids::PublicKey,
) -> latchkey_protocol::ids::PublicKey {
    #[cfg(feature = "fault-injection")]
    if let Some(impostor) = e2e_faults::impostor() {
        return impostor.public;
    }
    key
}
