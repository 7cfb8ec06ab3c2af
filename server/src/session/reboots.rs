//! The reboots of this relay's hosts (SPEC R1-R4) and their rules: one
//! request per host and interval (checked and claimed at once), the
//! deadline waiting sessions keep, and the one ticket a returning host must
//! present. [`super::reboot`] asks hosts to reboot through it.

use std::{
    collections::HashMap,
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use latchkey_protocol::ids::{HostName, SessionId};
use tokio::{sync::broadcast, time::Instant};

/// A reboot in progress (or the last one, for the rate limit).
#[derive(Clone, Copy, Debug)]
pub(super) struct Reboot {
    /// When it was asked for.
    at: Instant,
    /// When waiting sessions give up.
    deadline: Instant,
    /// Whether the host has not come back yet.
    pending: bool,
    /// The session that asked (its ticket is the one that resumes).
    session: SessionId,
}

/// The reboots of this relay's hosts, and the news of failed ones.
pub(crate) struct Reboots {
    by_host: Mutex<HashMap<HostName, Reboot>>,
    /// Reboots whose command failed on the host: the session that asked
    /// and the host's reason.
    pub(super) failed: broadcast::Sender<(SessionId, String)>,
}

impl Default for Reboots {
    fn default() -> Self {
        Self {
            by_host: Mutex::default(),
            failed: broadcast::channel(64).0,
        }
    }
}

impl Reboots {
    fn by_host(&self) -> MutexGuard<'_, HashMap<HostName, Reboot>> {
        self.by_host.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The deadline of a reboot of `host` still in progress.
    pub(crate) fn deadline(&self, host: &HostName) -> Option<Instant> {
        self.by_host()
            .get(host)
            .filter(|r| r.pending && r.deadline > Instant::now())
            .map(|r| r.deadline)
    }

    /// The session whose ticket a returning `host` must present, while
    /// the relay waits for it.
    pub(crate) fn awaited_ticket(&self, host: &HostName) -> Option<SessionId> {
        self.by_host()
            .get(host)
            .filter(|r| r.pending)
            .map(|r| r.session)
    }

    /// `host` came back with its ticket: the reboot is over.
    pub(crate) fn came_back(&self, host: &HostName) {
        if let Some(r) = self.by_host().get_mut(host) {
            r.pending = false;
        }
    }

    /// Hears of reboots that failed from now on.
    pub(crate) fn failures(&self) -> broadcast::Receiver<(SessionId, String)> {
        self.failed.subscribe()
    }

    /// Claims the rate limit for a reboot of `host` (checked and claimed at
    /// once, so two requests cannot both pass); returns the claim it
    /// replaced, to give back if the request fails.
    pub(super) fn claim(
        &self,
        host: &HostName,
        session: SessionId,
        min_interval: Duration,
        deadline: Duration,
    ) -> Result<Option<Reboot>, String> {
        let mut by_host = self.by_host();
        if let Some(last) = by_host.get(host).map(|r| r.at) {
            let since = last.elapsed();
            if since < min_interval {
                return Err(format!(
                    "host '{host}' was asked to reboot {} s ago; try again in {} s",
                    since.as_secs(),
                    (min_interval - since).as_secs().max(1)
                ));
            }
        }
        let at = Instant::now();
        Ok(by_host.insert(
            host.clone(),
            Reboot {
                at,
                deadline: at + deadline,
                pending: false,
                session,
            },
        ))
    }

    pub(super) fn give_back(&self, host: &HostName, previous: Option<Reboot>) {
        let mut by_host = self.by_host();
        match previous {
            Some(p) => by_host.insert(host.clone(), p),
            None => by_host.remove(host),
        };
    }

    pub(super) fn asked(&self, host: &HostName) {
        if let Some(r) = self.by_host().get_mut(host) {
            r.pending = true;
        }
    }

    /// Forgets the reboot `session` asked for on `host` (only that one: a
    /// stray report frees no claim).
    pub(super) fn forget(&self, host: &HostName, session: SessionId) {
        let mut by_host = self.by_host();
        if by_host.get(host).is_some_and(|r| r.session == session) {
            by_host.remove(host);
        }
    }
}
