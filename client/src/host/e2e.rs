//! The host's end of a session (SPEC X4, see `latchkey_protocol::e2e`):
//! the sessions the relay announced, each with its route and at most one
//! end-to-end connection, which the host accepts only under that route and
//! serves only after the client's handshake proved the user's key and the
//! code's export key. The relay names the session and the user; the
//! handshake proves the rest.
//!
//! When the agent's link to its relay goes (the relay died, the network
//! blinked), a session's connection is kept, without a route, until the
//! session is announced again on the next link (on this relay or another,
//! see [`Sessions::announce`]): it then goes on without a new handshake,
//! its channels intact. One not announced within [`CONTINUE_WAIT`] of the
//! next link, or silent for the connection's idle timeout, ends: a session
//! the relay no longer admits (revoked meanwhile) is not resumed, and its
//! channels end soon after the host is back online.

use std::{
    net::SocketAddr,
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use latchkey_protocol::{
    channel::{ChannelRecv, ChannelSend},
    e2e::{respond, Binding, SessionPsk},
    handshake::Keypair,
    ids::{PublicKey, RecordId, SessionId, UserName},
    route::LegId,
    session::{HandshakeReply, HandshakeRequest},
};
use rand::rngs::OsRng;
use tokio::time::timeout;
use tracing::{debug, info};

use super::fair_share::FairShare;
use crate::{
    config::Home,
    net::{peer, socket::Peers},
};

/// Connections a client may start under one announcement of its session:
/// its first, and a few more where one failed or its end was lost (a
/// relay's death in the middle of a handshake, a route announced as not
/// kept while the host kept it). Each costs the host a TLS handshake.
const CONNECTIONS_PER_ANNOUNCEMENT: u8 = 3;

/// How long a client has, once its connection is up, to complete the
/// handshake on it.
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(15);

/// How long a session kept across a lost relay link waits, once the agent
/// has a new link, for the relay to announce it again: a client resumes
/// within seconds of the relay (its retry is once a second).
pub(crate) const CONTINUE_WAIT: Duration = Duration::from_secs(10);

/// Who a session is for, as the relay announced it.
#[derive(Clone, Debug)]
pub(crate) struct SessionUser {
    pub(crate) session: SessionId,
    pub(crate) user: UserName,
    pub(crate) user_key: PublicKey,
    pub(crate) record: RecordId,
}

/// Where an announced session's connection stands.
enum Arrival {
    /// None has arrived yet.
    Waiting,
    /// One is being accepted: no other is let in meanwhile, so a client
    /// that sends Initial after Initial under its route holds one pending
    /// handshake at most, not one per packet.
    Accepting,
    /// Accepted: the session's one connection.
    Accepted(quinn::Connection),
}

/// One announced session: its virtual address (the client, as this host's
/// quinn sees it) and its connection. Dropped, it closes the connection
/// and forgets the route.
struct Announced {
    who: SessionUser,
    at: SocketAddr,
    peers: Peers,
    arrival: Arrival,
    /// Kept across a lost relay link, not announced again yet.
    detached: bool,
    /// Connections taken under this announcement so far.
    attempts: u8,
}

impl Announced {
    /// Whether this session's connection may go on as `who`'s: it is alive
    /// and was proved by the same user's key with the same code record.
    fn can_continue_as(&self, who: &SessionUser) -> bool {
        let same = (&self.who.user, self.who.user_key, self.who.record)
            == (&who.user, who.user_key, who.record);
        same && matches!(&self.arrival, Arrival::Accepted(c) if c.close_reason().is_none())
    }
}

impl Drop for Announced {
    fn drop(&mut self) {
        if let Arrival::Accepted(conn) = &self.arrival {
            conn.close(quinn::VarInt::from_u32(0), b"session ended");
        }
        self.peers.remove(self.at);
    }
}

/// The sessions the relay announced. Beyond a user's fair share, their
/// least recently announced session goes (its connection closes), never
/// another user's ([`FairShare`]).
pub(crate) struct Sessions {
    home: Home,
    key: Keypair,
    inner: Mutex<FairShare<SessionId, Announced>>,
}

impl Sessions {
    pub(crate) fn new(home: Home, key: Keypair) -> Self {
        Self {
            home,
            key,
            inner: Mutex::new(FairShare::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, FairShare<SessionId, Announced>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The relay admitted the session `who` and routes it to this host
    /// through `relay` under `leg`. If the session (or the one it
    /// `continues`, for a resume) still has its connection, for the same
    /// user, key and code record, that connection moves onto the route and
    /// `true` is returned. Otherwise one new connection may arrive under
    /// the route, replacing whatever the session had.
    pub(crate) fn announce(
        &self,
        peers: &Peers,
        relay: SocketAddr,
        who: SessionUser,
        leg: LegId,
        continues: Option<SessionId>,
    ) -> bool {
        let mut inner = self.lock();
        let kept = [Some(who.session), continues]
            .into_iter()
            .flatten()
            .find(|id| inner.get_mut(id).is_some_and(|a| a.can_continue_as(&who)));
        let (session, user) = (who.session, who.user.clone());
        let (announced, kept) = match kept.and_then(|id| inner.remove(&id)) {
            Some(mut announced) if peers.set(announced.at, relay, leg).is_ok() => {
                info!(user = %who.user, %session, "session continues on a new route");
                announced.who = who;
                announced.detached = false;
                announced.attempts = 0;
                (announced, true)
            }
            // Not kept (dropped here if it was: its connection closes).
            _ => {
                let at = peers.allocate();
                if let Err(e) = peers.set(at, relay, leg) {
                    debug!(%session, "session not routed: {e}");
                    return false;
                }
                let announced = Announced {
                    who,
                    at,
                    peers: peers.clone(),
                    arrival: Arrival::Waiting,
                    detached: false,
                    attempts: 0,
                };
                (announced, false)
            }
        };
        let evicted = inner.insert(session, user, announced);
        if !evicted.is_empty() {
            debug!(
                sessions = evicted.len(),
                "least recent sessions of a user closed"
            );
        }
        kept
    }

    /// The session ended: its connection closes and its route goes.
    /// Whose session `session` is, if the host holds it.
    pub(crate) fn user_of(&self, session: SessionId) -> Option<UserName> {
        self.lock().get_mut(&session).map(|a| a.who.user.clone())
    }

    pub(crate) fn end(&self, session: SessionId) {
        let ended = self.lock().remove(&session);
        drop(ended);
    }

    /// Closes every session's connection, its route kept so that the close
    /// reaches the client (the agent stops: the client cuts its channels
    /// at once rather than at the connection's idle timeout).
    pub(crate) fn close_all(&self, reason: &[u8]) {
        for announced in self.lock().values() {
            if let Arrival::Accepted(conn) = &announced.arrival {
                conn.close(quinn::VarInt::from_u32(0), reason);
            }
        }
    }

    /// Every session ends here (another agent holds the host).
    pub(crate) fn end_all(&self) {
        let all = self.lock().drain();
        drop(all);
    }

    /// The relay link is gone, and with it every route: sessions with a
    /// connection keep it, unrouted, until they are announced again or it
    /// times out; the others end (the relay announces them again when they
    /// resume, and their clients connect anew).
    pub(crate) fn detach_all(&self) {
        self.lock().retain(|a| match &a.arrival {
            Arrival::Accepted(conn) if conn.close_reason().is_none() => {
                a.peers.remove(a.at);
                a.detached = true;
                true
            }
            _ => false,
        });
    }

    /// The sessions kept across a lost link that the relay did not announce
    /// again in time end.
    pub(crate) fn end_detached(&self) {
        self.lock().retain(|a| !a.detached);
    }

    /// The connection `conn` ended (timed out, closed by either end): its
    /// session, if it still has it, ends too.
    pub(crate) fn finished(&self, conn: &quinn::Connection) {
        let id = conn.stable_id();
        let mut inner = self.lock();
        let session = inner
            .find_mut(|a| matches!(&a.arrival, Arrival::Accepted(c) if c.stable_id() == id))
            .map(|a| a.who.session);
        if let Some(session) = session {
            let ended = inner.remove(&session);
            drop(inner);
            drop(ended);
        }
    }

    /// Takes `incoming` if it arrived under an announced session's route,
    /// none is being accepted for that session, and the announcement has
    /// not used up its [`CONNECTIONS_PER_ANNOUNCEMENT`]; `None` (refused)
    /// otherwise. A connection the session had is closed: its client made
    /// a new one, having lost its own end. So a client cannot make the host
    /// run handshake after handshake under one route.
    pub(crate) fn admit(
        &self,
        incoming: quinn::Incoming,
    ) -> Option<(SessionUser, quinn::Incoming)> {
        let from = incoming.remote_address();
        let mut inner = self.lock();
        let found = inner.find_mut(|a| {
            a.at == from
                && !matches!(a.arrival, Arrival::Accepting)
                && a.attempts < CONNECTIONS_PER_ANNOUNCEMENT
        });
        match found {
            Some(announced) => {
                announced.attempts += 1;
                let old = std::mem::replace(&mut announced.arrival, Arrival::Accepting);
                if let Arrival::Accepted(conn) = old {
                    conn.close(quinn::VarInt::from_u32(0), b"replaced by a new connection");
                }
                Some((announced.who.clone(), incoming))
            }
            None => {
                drop(inner);
                incoming.refuse();
                None
            }
        }
    }

    /// Settles the connection being accepted for `session`: kept as the
    /// session's connection (so that the session's end closes it), or, with
    /// `None`, the session waits for another. `false` if the session ended
    /// meanwhile (then `conn` is closed now).
    fn arrived(&self, session: SessionId, conn: Option<&quinn::Connection>) -> bool {
        let mut inner = self.lock();
        let accepting = inner
            .get_mut(&session)
            .filter(|a| matches!(a.arrival, Arrival::Accepting));
        match (accepting, conn) {
            (Some(announced), Some(conn)) => {
                announced.arrival = Arrival::Accepted(conn.clone());
                true
            }
            (Some(announced), None) => {
                announced.arrival = Arrival::Waiting;
                false
            }
            (None, Some(conn)) => {
                conn.close(quinn::VarInt::from_u32(0), b"session ended");
                false
            }
            (None, None) => false,
        }
    }

    /// Accepts a session's connection and answers its handshake on the
    /// first stream; returns the connection once the client proved itself.
    pub(crate) async fn handshake(
        &self,
        who: &SessionUser,
        incoming: quinn::Incoming,
    ) -> Option<quinn::Connection> {
        let conn = match timeout(HANDSHAKE_DEADLINE, incoming).await {
            Ok(Ok(conn)) => conn,
            _ => {
                self.arrived(who.session, None);
                return None;
            }
        };
        if !self.arrived(who.session, Some(&conn)) {
            return None;
        }
        let answered = timeout(HANDSHAKE_DEADLINE, self.answer(who, &conn)).await;
        match answered {
            Ok(Ok(())) => {
                info!(user = %who.user, session = %who.session, key = %who.user_key.fingerprint(), "end-to-end handshake");
                Some(conn)
            }
            Ok(Err(why)) => {
                info!(user = %who.user, session = %who.session, "end-to-end handshake refused: {why}");
                conn.close(quinn::VarInt::from_u32(0), b"handshake refused");
                None
            }
            Err(_) => {
                conn.close(quinn::VarInt::from_u32(0), b"handshake timed out");
                None
            }
        }
    }

    /// Reads message 1 on the connection's first stream and answers it;
    /// `Err` says why not (the client is told too, where it can be).
    async fn answer(&self, who: &SessionUser, conn: &quinn::Connection) -> Result<(), String> {
        let (send, recv) = conn.accept_bi().await.map_err(|e| e.to_string())?;
        let (mut send, mut recv) = (ChannelSend::new(send), ChannelRecv::new(recv));
        let request = recv
            .read_frame::<HandshakeRequest>()
            .await
            .map_err(|e| e.to_string())?
            .ok_or("no handshake")?;
        let reply = match self.respond(who, conn, &request.msg1) {
            Ok(msg2) => HandshakeReply::Msg2(msg2),
            Err(why) => HandshakeReply::Refused(why),
        };
        let refused = match &reply {
            HandshakeReply::Refused(why) => Some(why.clone()),
            _ => None,
        };
        send.write_frame(&reply).await.map_err(|e| e.to_string())?;
        let _ = send.finish().await;
        match refused {
            Some(why) => {
                // Let the refusal reach the client before the close.
                let _ = timeout(Duration::from_secs(1), send.stopped()).await;
                Err(why)
            }
            None => Ok(()),
        }
    }

    fn respond(
        &self,
        who: &SessionUser,
        conn: &quinn::Connection,
        msg1: &[u8],
    ) -> Result<Vec<u8>, String> {
        let export = match self.home.export_key(&who.record, &who.user) {
            Ok(Some(export)) => export,
            Ok(None) => {
                return Err(
                    "this host has no end-to-end key for the access code you used (it was set \
                     before end-to-end encryption, on another copy of the host, or for another \
                     user): on the host, set it again with `latchkey host set-code` (the owner's \
                     code) or `latchkey host reset-code --user NAME` (a user's own code)"
                        .into(),
                )
            }
            Err(e) => {
                // The detail (paths) stays in the host's log.
                tracing::warn!("cannot read the end-to-end keys: {e}");
                return Err("the host cannot read its end-to-end keys (its log says why)".into());
            }
        };
        let binding = Binding {
            session: who.session,
            record: who.record,
            connection: peer::binding(conn).map_err(|e| e.to_string())?,
        };
        let psk = SessionPsk::derive(&export, &who.record);
        respond(&mut OsRng, &self.key, &who.user_key, &psk, &binding, msg1).map_err(|_| {
            "the end-to-end handshake failed: the key the relay introduced for you, the code \
             key, or the connection does not match (the relay, or someone between, may be \
             trying to read your session)"
                .to_string()
        })
    }
}
