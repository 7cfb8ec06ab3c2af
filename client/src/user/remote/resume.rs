//! Keeping a session alive across a relay's death: the task that owns the
//! session's control stream ([`Follow`]) follows what the relay says about
//! the session, and when the connection to its relay breaks it resumes the
//! session with its latest ticket ([`Resume`]) on another relay of the
//! cluster (or the same one restarted), without the access code.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use latchkey_protocol::{
    control::{ClientSession, Event, Phase, Waiting},
    frame::{ClientToRelay, Refusal, RelayToClient},
    handshake::Keypair,
    ids::{HostName, RelayPin, ResumeTicket, SessionId, UserName},
};
use tokio::{sync::watch, time::timeout};

use super::host_link::{settle, HostConnection, Link};
use crate::{
    net::{self, NetError, STEP_TIMEOUT},
    user::e2e::Handshaker,
    wire,
};

/// How long a session whose relay went away tries to resume before it
/// ends, unless [`set_resume_wait`] said otherwise (a relay's heartbeat
/// lapses after 20 s; its hosts are back on another relay within about
/// 7 s).
const RESUME_WAIT: Duration = Duration::from_secs(60);

static RESUME_WAIT_SET: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();

/// Sets how long sessions try to resume (`latchkey --resume-wait`); the
/// first call wins.
pub fn set_resume_wait(wait: Duration) {
    let _ = RESUME_WAIT_SET.set(wait);
}

/// How long sessions try to resume.
pub fn resume_wait() -> Duration {
    RESUME_WAIT_SET.get().copied().unwrap_or(RESUME_WAIT)
}

/// How soon a resume that found no relay holding the host asks again: the
/// host's agent comes back on another relay about when the client noticed
/// the loss, so the first rounds should not wait long.
const ASK_AGAIN: Duration = Duration::from_millis(300);

/// `relays` with the one at `lost` (when it is written as that address)
/// moved to the end.
fn lost_last(relays: &[String], lost: std::net::SocketAddr) -> Vec<String> {
    let is_lost = |r: &String| r.parse::<std::net::SocketAddr>() == Ok(lost);
    let (dead, live): (Vec<String>, Vec<String>) = relays.iter().cloned().partition(is_lost);
    live.into_iter().chain(dead).collect()
}

/// What resuming a session needs.
pub(super) struct Resume {
    pub(super) relays: Vec<String>,
    pub(super) pin: RelayPin,
    pub(super) device: Keypair,
    pub(super) user: UserName,
    pub(super) host: HostName,
}

impl Resume {
    /// Resumes with `ticket`, following a redirect at once and asking again
    /// every [`ASK_AGAIN`] while no relay holds the host or none answers,
    /// for up to [`RESUME_WAIT`]; returns why not. The relay that was lost
    /// (at `lost`) is asked last: it costs each round a connect's head
    /// start while it stays dead.
    async fn run(
        &self,
        local: &net::Local,
        ticket: &ResumeTicket,
        lost: std::net::SocketAddr,
    ) -> Result<(net::Control, SessionId), String> {
        let until = tokio::time::Instant::now() + resume_wait();
        let ring = lost_last(&self.relays, lost);
        let mut target = ring.clone();
        // One redirect per round: relays whose records disagree for a
        // moment cannot send the client round in circles.
        let mut followed = false;
        loop {
            let result = net::resume(
                local,
                &target,
                &self.pin,
                &self.device,
                &self.user,
                &self.host,
                ticket,
            )
            .await;
            let e = match result {
                Ok(resumed) => return Ok(resumed),
                Err(NetError::Redirected(to))
                    if !followed && tokio::time::Instant::now() < until =>
                {
                    net::check_redirect(&to).map_err(|e| e.to_string())?;
                    target = vec![to];
                    followed = true;
                    continue;
                }
                Err(NetError::Refused(Refusal::HostOffline)) => {
                    NetError::HostOffline(self.host.clone())
                }
                // Spent, refused, or not our relay: asking again cannot help.
                Err(
                    e @ (NetError::Refused(Refusal::NotAllowed(_) | Refusal::UnknownDevice)
                    | NetError::PinMismatch(_)),
                ) => return Err(e.to_string()),
                Err(e) => e,
            };
            if tokio::time::Instant::now() >= until {
                return Err(e.to_string());
            }
            tracing::debug!("resuming the session: {e}; asking again");
            tokio::time::sleep(ASK_AGAIN).await;
            target = ring.clone();
            followed = false;
        }
    }
}

/// How following the control stream ended.
enum Followed {
    /// The session is over (the relay said so, or broke the rules).
    Over,
    /// The connection to the relay broke.
    Lost,
    /// This client closed the connection (the command is done).
    Closed,
}

/// The task that owns a session's control stream.
pub(super) struct Follow {
    pub(super) machine: ClientSession,
    pub(super) phase_tx: watch::Sender<Phase>,
    pub(super) refusal_tx: tokio::sync::mpsc::Sender<String>,
    pub(super) requests: tokio::sync::mpsc::Receiver<ClientToRelay>,
    pub(super) handshaker: Arc<Handshaker>,
    pub(super) host_link: Arc<watch::Sender<Link>>,
    pub(super) link_tx: watch::Sender<net::RelayConn>,
    pub(super) resume: Resume,
    /// The end-to-end connection being made.
    pub(super) connecting: tokio::task::JoinHandle<()>,
    /// The session's connection while it has no route (its relay went, or
    /// the host's agent did): moved onto the next route if the host kept
    /// its end, closed otherwise.
    pub(super) held: Option<Arc<HostConnection>>,
    /// When the relay was last heard from.
    pub(super) heard: Heard,
    /// Since when the relay has been silent, once that is worth telling.
    pub(super) quiet_tx: watch::Sender<Option<Instant>>,
}

/// How often the session looks whether its relay still sends anything.
const LOOK: Duration = Duration::from_millis(500);

/// How long a relay that keeps the link alive (keep-alives every second,
/// each answered) may say nothing before the user is told: well before the
/// connection gives the relay up.
const QUIET: Duration = Duration::from_millis(2500);

/// When the relay was last heard from: the datagrams received on its
/// connection, counted, and when the count last moved. A connection's end
/// says the relay was lost; this says since when.
#[derive(Default)]
pub(super) struct Heard {
    last: Option<(u64, Instant)>,
}

impl Heard {
    /// `count` datagrams received by `now`; returns since when the relay
    /// has been silent.
    fn look(&mut self, count: u64, now: Instant) -> Instant {
        match self.last {
            Some((before, since)) if before == count => since,
            _ => {
                self.last = Some((count, now));
                now
            }
        }
    }

    /// When the count last moved (the relay's last word, to a look's
    /// precision).
    fn since(&self) -> Option<Instant> {
        self.last.map(|(_, since)| since)
    }

    /// A new connection: nothing heard on it yet.
    fn forget(&mut self) {
        self.last = None;
    }
}

type Frames = latchkey_protocol::quic::FrameReader<RelayToClient>;

impl Follow {
    /// Follows the session, resuming it on another relay (with the latest
    /// ticket) whenever the connection to its relay breaks, until it ends.
    pub(super) async fn run(mut self, send: quinn::SendStream, recv: quinn::RecvStream) {
        self.follow_all(send, recv).await;
        let why = match self.machine.phase() {
            Phase::Ended(why) => latchkey_protocol::text::shown(why).into_owned(),
            _ => "the session is over".into(),
        };
        self.set_link(Link::Failed(why));
    }

    async fn follow_all(&mut self, send: quinn::SendStream, recv: quinn::RecvStream) {
        let (mut send, mut frames) = (send, wire::frame_reader::<RelayToClient>(recv));
        let mut ticket: Option<(ResumeTicket, tokio::time::Instant)> = None;
        loop {
            match self.follow(&mut send, &mut frames, &mut ticket).await {
                Followed::Over => {
                    self.publish();
                    return;
                }
                Followed::Closed => {
                    self.machine.connection_lost();
                    self.publish();
                    return;
                }
                Followed::Lost => {}
            }
            let now = tokio::time::Instant::now();
            // The outage began with the relay's silence, not when the
            // connection gave it up.
            // As of the last look: the datagram that ended the connection
            // (a reset from a restarted relay) says nothing of when the
            // relay went.
            let silent_since = self.heard.since().unwrap_or_else(Instant::now);
            self.heard.forget();
            let t = match ticket.take() {
                Some((t, until))
                    if now < until
                        && self
                            .machine
                            .relay_lost(silent_since, resume_wait().as_secs()) =>
                {
                    t
                }
                _ => {
                    self.machine.connection_lost();
                    self.publish();
                    return;
                }
            };
            // The relay is gone, and the route with it: the connection is
            // held for the resumed session's route, and new channels wait.
            self.hold_link(Link::Pending);
            self.publish();
            // Only now, so that whoever watches sees the session waiting
            // when the silence is cleared, and does not take the new
            // connection's start for the relay answering again.
            self.quiet_tx.send_replace(None);
            match self.resumed(&t).await {
                Ok((s, f)) => (send, frames) = (s, f),
                Err(why) => {
                    self.machine.end(format!(
                        "the connection to the relay was lost and the session could not be \
                         resumed: {why}"
                    ));
                    self.publish();
                    return;
                }
            }
        }
    }

    /// Looks whether the relay was heard from since the last look, and
    /// tells whoever watches when it has been silent for [`QUIET`] (and
    /// when it speaks again); returns since when it has been silent.
    fn look_at_relay(&mut self) -> Instant {
        let count = self.link_tx.borrow().conn.stats().udp_rx.datagrams;
        let now = Instant::now();
        let since = self.heard.look(count, now);
        let quiet = (now.duration_since(since) >= QUIET).then_some(since);
        self.quiet_tx.send_if_modified(|told| {
            let changed = told.is_some() != quiet.is_some();
            if changed {
                *told = quiet;
            }
            changed
        });
        since
    }

    fn publish(&self) {
        let _ = self.phase_tx.send(self.machine.phase().clone());
    }

    /// Stops making a connection, and says where the link stands now (the
    /// connection it had or held, if any, closes).
    fn set_link(&mut self, link: Link) {
        self.connecting.abort();
        self.held = None;
        self.host_link.send_replace(link);
    }

    /// The route is gone: says `meanwhile` to new channels, and holds the
    /// connection (its channels stay open) for the next route.
    fn hold_link(&mut self, meanwhile: Link) {
        let ready = match &*self.host_link.borrow() {
            Link::Ready(conn) => Some(conn.clone()),
            _ => None,
        };
        let held = ready.or_else(|| self.held.take());
        self.set_link(meanwhile);
        self.held = held;
    }

    /// The relay gave a route to the host: the held connection moves onto
    /// it if the host kept its end, or a new one is made over it.
    fn route(&mut self, leg: latchkey_protocol::route::LegId, kept: bool) {
        let relay = self.link_tx.borrow().clone();
        let moved = match self.held.take() {
            Some(conn) if kept => match conn.move_to(&relay, leg) {
                Ok(()) => Some(conn),
                Err(e) => {
                    tracing::debug!("the session's connection cannot continue: {e}");
                    None
                }
            },
            _ => None,
        };
        match moved {
            Some(conn) => {
                tracing::debug!(host = %self.resume.host, "the session's connection continues on a new route");
                self.set_link(Link::Ready(conn));
            }
            None => self.connect(relay, leg),
        }
    }

    /// Connects to the host (again) over the route the relay just gave.
    fn connect(&mut self, relay: net::RelayConn, leg: latchkey_protocol::route::LegId) {
        self.set_link(Link::Pending);
        self.connecting = tokio::spawn(settle(
            self.handshaker.clone(),
            relay,
            leg,
            self.host_link.clone(),
        ));
    }

    /// The phase changed: publishes it, and with it where the link stands.
    /// A host that went leaves the session's connection dead (channels are
    /// refused at once meanwhile, saying why: said after the phase, so a
    /// waiter that sees the refusal sees the host away too); one that came
    /// back is reached again once its route comes (said before the phase,
    /// so channels asked for once it is back wait for the connection).
    fn on_phase(&mut self) {
        let was_ready = matches!(*self.phase_tx.borrow(), Phase::Ready);
        match self.machine.phase() {
            Phase::Ready if !was_ready => {
                self.hold_link(Link::Pending);
                self.publish();
            }
            Phase::Rebooting { waiting, .. } => {
                let rebooting = *waiting == Waiting::Reboot;
                self.publish();
                let meanwhile = Link::Failed(format!(
                    "host '{}' went offline; waiting for it to come back",
                    self.resume.host
                ));
                if rebooting {
                    // The host's agent is gone with its end of the
                    // connection.
                    self.set_link(meanwhile);
                } else {
                    // An agent whose link dropped may have kept its end.
                    self.hold_link(meanwhile);
                }
            }
            Phase::Ended(why) => {
                let why = latchkey_protocol::text::shown(why).into_owned();
                self.publish();
                self.set_link(Link::Failed(why));
            }
            _ => self.publish(),
        }
    }

    async fn follow(
        &mut self,
        send: &mut quinn::SendStream,
        frames: &mut Frames,
        ticket: &mut Option<(ResumeTicket, tokio::time::Instant)>,
    ) -> Followed {
        let mut look = tokio::time::interval(LOOK);
        loop {
            tokio::select! {
                _ = look.tick() => {
                    self.look_at_relay();
                }
                Some(request) = self.requests.recv() => {
                    if wire::write_frame(send, &request).await.is_err() {
                        // The frames' side says whether it was closed here.
                        continue;
                    }
                }
                frame = frames.recv() => match frame {
                    Some(Ok(Some(frame))) => match self.machine.on_frame(frame, Instant::now()) {
                        Ok(Event::Phase) => self.on_phase(),
                        Ok(Event::Route { leg, kept }) => self.route(leg, kept),
                        Ok(Event::Refused(r)) => {
                            let _ = self.refusal_tx.try_send(net::refusal_text(&r));
                        }
                        Ok(Event::Ticket(t, valid_secs)) => {
                            let valid = Duration::from_secs(valid_secs);
                            *ticket = Some((t, tokio::time::Instant::now() + valid));
                        }
                        Ok(Event::Hosts(_)) => {}
                        Err(e) => {
                            tracing::warn!("{e}");
                            return Followed::Over;
                        }
                    },
                    // Closed here (the command is done, or the session
                    // refused), or lost.
                    _ => {
                        let closed_here = matches!(
                            self.link_tx.borrow().conn.close_reason(),
                            Some(quinn::ConnectionError::LocallyClosed)
                        );
                        return if closed_here {
                            Followed::Closed
                        } else {
                            Followed::Lost
                        };
                    }
                },
            }
            if matches!(self.machine.phase(), Phase::Ended(_)) {
                return Followed::Over;
            }
        }
    }

    /// Resumes the session with `ticket`: a new relay connection on the
    /// session's socket, the host introduced again with the key and record
    /// the session started with, the session's new id bound; the route
    /// that follows carries the held end-to-end connection, or a new one.
    async fn resumed(
        &mut self,
        ticket: &ResumeTicket,
    ) -> Result<(quinn::SendStream, Frames), String> {
        // From the session's own socket, where its end-to-end connection
        // lives: the new relay's route is bound to that socket's address.
        let (local, lost) = {
            let relay = self.link_tx.borrow();
            let local = net::Local::Shared(net::DeviceEndpoint {
                endpoint: relay.endpoint.clone(),
                peers: relay.peers.clone(),
            });
            (local, relay.conn.remote_address())
        };
        let (control, session) = self.resume.run(&local, ticket, lost).await?;
        let net::Control { relay, send, recv } = control;
        let mut frames = wire::frame_reader::<RelayToClient>(recv);
        let first = timeout(STEP_TIMEOUT, frames.recv())
            .await
            .map_err(|_| "the relay did not introduce the host".to_string())?;
        let expected = (self.handshaker.host_key, self.handshaker.record);
        match first {
            Some(Ok(Some(ready @ RelayToClient::SessionReady { host_key, record })))
                if (host_key, record) == expected =>
            {
                self.machine.resuming();
                self.machine
                    .on_frame(ready, Instant::now())
                    .map_err(|e| e.to_string())?;
            }
            Some(Ok(Some(RelayToClient::Refused(Refusal::HostOffline)))) => {
                return Err(format!("host '{}' went offline", self.resume.host))
            }
            Some(Ok(Some(RelayToClient::Refused(r)))) => return Err(net::refusal_text(&r)),
            _ => {
                relay
                    .conn
                    .close(quinn::VarInt::from_u32(0), b"not the session's host");
                return Err(
                    "the relay introduced another host key or code record; refusing to continue"
                        .into(),
                );
            }
        }
        self.handshaker.rebind(session);
        self.link_tx.send_replace(relay);
        self.publish();
        tracing::debug!(host = %self.resume.host, "session resumed on a relay of the cluster");
        Ok((send, frames))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lost_relay_is_asked_last() {
        let relays: Vec<String> = ["10.0.0.1:4433", "10.0.0.2:4433", "relay.example:4433"]
            .map(String::from)
            .to_vec();
        let lost = "10.0.0.1:4433".parse().expect("address");
        assert_eq!(
            lost_last(&relays, lost),
            ["10.0.0.2:4433", "relay.example:4433", "10.0.0.1:4433"]
        );
        let elsewhere = "10.0.0.9:4433".parse().expect("address");
        assert_eq!(lost_last(&relays, elsewhere), relays);
    }
}
