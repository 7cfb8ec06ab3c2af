//! The relay's live sessions, so admin actions reach them (SPEC S4).
//!
//! A login registers its session *before* its verdict commits: a revoke
//! that commits after the verdict then always finds the session here (the
//! relay hears of admin actions after they commit), and a revoke that
//! commits before the verdict makes the verdict refuse (the store checks
//! the grant in the verdict's transaction). A [`SessionEntry`] leaves the
//! map when dropped, and records the session's end if it had started, so
//! the map holds exactly the sessions that are alive.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
};

use latchkey_protocol::{
    ids::{HostName, PublicKey, RecordId, SessionId, UserName},
    route::RouteCounts,
};
use tokio::sync::watch;

use crate::{login::settle::Settler, metrics::Open, routes::OpenRoute, store::SessionEnd};

struct Live {
    user: UserName,
    host: HostName,
    /// The device key the session was opened with.
    user_key: PublicKey,
    /// Set to the reason when the relay ends the session.
    end: watch::Sender<Option<String>>,
}

/// Every live session of this relay.
#[derive(Default)]
pub(crate) struct Sessions {
    map: Mutex<HashMap<SessionId, Live>>,
}

impl Sessions {
    fn map(&self) -> MutexGuard<'_, HashMap<SessionId, Live>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new session's id: random, so it says nothing and cannot be guessed.
    pub(crate) fn new_id() -> SessionId {
        let mut id = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut id);
        SessionId(id)
    }

    /// Registers a session about to be decided.
    pub(crate) fn register(
        self: &Arc<Self>,
        settler: &Settler,
        id: SessionId,
        user: UserName,
        host: HostName,
        intro: Intro,
    ) -> SessionEntry {
        let (end, ended) = watch::channel(None);
        self.map().insert(
            id,
            Live {
                user: user.clone(),
                host: host.clone(),
                user_key: intro.user_key,
                end,
            },
        );
        SessionEntry {
            sessions: self.clone(),
            settler: settler.clone(),
            id,
            user,
            host,
            ended,
            intro,
            continues: None,
            route: None,
            carried: RouteCounts::default(),
            started: false,
            reason: "client left".into(),
            how: SessionEnd::Final,
            counted: None,
        }
    }

    /// Ends the live sessions that `matches` picks; returns how many.
    fn end_where(&self, reason: &str, matches: impl Fn(&Live) -> bool) -> usize {
        let map = self.map();
        let mut ended = 0;
        for live in map.values().filter(|l| matches(l)) {
            live.end.send_replace(Some(reason.to_string()));
            ended += 1;
        }
        ended
    }

    /// Ends the live session `id` if it is on `host` (a host ends only its
    /// own); whether it did.
    pub(crate) fn end_one(&self, host: &HostName, id: SessionId, reason: &str) -> bool {
        match self.map().get(&id) {
            Some(live) if live.host == *host => {
                live.end.send_replace(Some(reason.to_string()));
                true
            }
            _ => false,
        }
    }

    /// Ends every live session of `user` on `host`.
    pub(crate) fn end(&self, host: &str, user: &str, reason: &str) -> usize {
        self.end_where(reason, |l| {
            l.host.as_str() == host && l.user.as_str() == user
        })
    }

    /// Ends every live session of `user` not opened with `keep` (their
    /// device was enrolled again with that key; with `None`, removed).
    pub(crate) fn end_user_except(
        &self,
        user: &str,
        keep: Option<&PublicKey>,
        reason: &str,
    ) -> usize {
        self.end_where(reason, |l| {
            l.user.as_str() == user && Some(&l.user_key) != keep
        })
    }

    /// Ends every live session on `host`.
    pub(crate) fn end_on_host(&self, host: &str, reason: &str) -> usize {
        self.end_where(reason, |l| l.host.as_str() == host)
    }

    /// Sessions alive now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map().len()
    }
}

/// One registered session: leaves the map when dropped, and records its end
/// in the store if the verdict started it.
pub(crate) struct SessionEntry {
    sessions: Arc<Sessions>,
    settler: Settler,
    pub(crate) id: SessionId,
    pub(crate) user: UserName,
    pub(crate) host: HostName,
    /// Changes when the relay ends the session.
    pub(crate) ended: watch::Receiver<Option<String>>,
    /// What the relay introduces to the two ends for their handshake.
    pub(crate) intro: Intro,
    /// The session this one continues (a resume with a ticket), whose
    /// end-to-end connection the host may have kept.
    pub(crate) continues: Option<SessionId>,
    /// The route the session's connection takes now, while the session is
    /// paired with its host: removed with the entry, so no end of a session
    /// leaves it behind.
    route: Option<(OpenRoute, Open)>,
    /// What the session's closed routes carried (recorded with its end).
    carried: RouteCounts,
    started: bool,
    reason: String,
    /// Whether the session is over, or continues on another relay.
    how: SessionEnd,
    /// Counts the session in the metrics while it lives, once started.
    counted: Option<crate::metrics::Open>,
}

impl SessionEntry {
    /// The verdict committed the session (its `session-start` is audited):
    /// from now on dropping the entry records `session-end`.
    pub(crate) fn started(&mut self) {
        self.started = true;
    }

    /// Counts the started session in the metrics until the entry drops.
    pub(crate) fn count_in(&mut self, open: crate::metrics::Open) {
        self.counted = Some(open);
    }

    /// Why the session ends, for the audit.
    pub(crate) fn ending_because(&mut self, reason: impl Into<String>) {
        self.reason = reason.into();
        self.how = SessionEnd::Final;
    }

    /// The session leaves this relay but goes on: its client resumes it
    /// elsewhere with its ticket (the relay stops, or the host moved).
    pub(crate) fn handing_over(&mut self, reason: impl Into<String>) {
        self.reason = reason.into();
        self.how = SessionEnd::Continues;
    }

    /// The session's connection takes `route` from now on (the one before,
    /// if any, is closed); `counted` counts it in the metrics while it lives.
    pub(crate) fn route_through(&mut self, route: OpenRoute, counted: Open) {
        self.close_route();
        self.route = Some((route, counted));
    }

    /// The session's current route, if it is paired with its host.
    pub(crate) fn route(&mut self) -> Option<&mut OpenRoute> {
        self.route.as_mut().map(|(route, _)| route)
    }

    /// Closes the session's route (its host went, or the session ends):
    /// from now on the relay forwards none of its datagrams.
    pub(crate) fn close_route(&mut self) {
        if let Some((route, _counted)) = self.route.take() {
            let counts = route.close();
            self.carried.from_client.add(counts.from_client);
            self.carried.from_host.add(counts.from_host);
        }
    }

    /// What the session's routes carried, for the audit: all the relay can
    /// know of a session's traffic, since it forwards datagrams it cannot
    /// read (the host keeps the channel log).
    fn traffic(&self) -> String {
        format!(
            "{} bytes to the host, {} to the client",
            self.carried.from_client.bytes, self.carried.from_host.bytes
        )
    }
}

/// The keys the relay introduces for a session's end-to-end handshake
/// (see `latchkey_protocol::e2e`): the user's device key to the host, and
/// the code record the login used to both.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Intro {
    pub(crate) user_key: PublicKey,
    pub(crate) record: RecordId,
}

impl Drop for SessionEntry {
    fn drop(&mut self) {
        self.close_route();
        self.sessions.map().remove(&self.id);
        if self.started {
            let reason = format!("{} ({})", self.reason, self.traffic());
            self.settler.session_ended(self.id, reason, self.how);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_entry_leaves_the_map_when_dropped_and_sees_an_end_sent_before_it_listens() {
        let sessions = Arc::new(Sessions::default());
        let store: Arc<dyn crate::store::Store> =
            Arc::new(crate::store::SqliteStore::in_memory().unwrap());
        let metrics = Arc::new(crate::metrics::Metrics::new().unwrap());
        let (settler, _settling) =
            Settler::spawn(store, std::time::Duration::from_secs(1), metrics);
        let mut entry = sessions.register(
            &settler,
            SessionId([1; 16]),
            "bob".parse().unwrap(),
            "mypc".parse().unwrap(),
            Intro {
                user_key: PublicKey([1; 32]),
                record: RecordId([2; 16]),
            },
        );
        assert_eq!(sessions.len(), 1);
        assert_eq!(sessions.end("mypc", "bob", "revoked"), 1);
        assert_eq!(sessions.end("mypc", "alice", "revoked"), 0);
        // The end was sent before anyone listened: it is still seen.
        entry.ended.changed().await.unwrap();
        assert_eq!(entry.ended.borrow().as_deref(), Some("revoked"));
        drop(entry);
        assert_eq!(sessions.len(), 0);
    }
}
