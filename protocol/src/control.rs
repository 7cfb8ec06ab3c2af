//! The session control state machine (SPEC X1, R2-R4), without I/O: the
//! relay's side decides what a session may do in each phase and which
//! control frame tells the client; the client's side follows those frames
//! and refuses any that the relay's side could never have sent. Both the
//! relay and the client drive these, so the rules live in one place and a
//! fuzz target can check that the two sides always agree.
//!
//! A session is paired with its host (*ready*), parked while the host
//! reboots or while its agent is away (*rebooting*, *away*), or over
//! (*ended*). Only a ready session opens channels or asks for a reboot; a
//! parked one resumes when the host comes back (with its ticket, after a
//! reboot) or ends at the deadline; an ended one never moves again.

use std::time::{Duration, Instant};

use crate::{
    frame::{HostInfo, Refusal, RelayToClient},
    ids::{HostName, ResumeTicket},
    route::LegId,
};

/// Why a session ended, as the relay tells the client.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EndReason {
    /// The host's link closed without a reboot in progress.
    HostOffline,
    /// The host rebooted and did not come back in time.
    RebootTimedOut,
    /// The host's agent dropped and did not come back in time.
    AwayTimedOut,
    /// The relay is stopping.
    RelayShutdown,
    /// An admin ended it (revoke, lock, policy change), with their reason.
    Ended(String),
    /// The client closed its connection: nobody left to tell.
    ClientLeft,
}

/// What the relay does with a control request from the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Answer with the user's hosts.
    ListHosts,
    /// Ask the host to reboot (SPEC R1); the relay still checks its
    /// rate limit and the host's answer.
    Reboot,
    /// Answer with this refusal.
    Refuse(Refusal),
    /// Say nothing: the session is over and the client was told so.
    Ignore,
}

/// The relay's side of one session.
#[derive(Debug)]
pub struct RelaySession {
    host: HostName,
    reboot_wait: Duration,
    grace: Duration,
    phase: RelayPhase,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RelayPhase {
    Ready,
    /// Waiting for the host: `rebooting` after a reboot it acknowledged
    /// (resumed only by its ticket), else away (resumed when it reconnects).
    Parked {
        deadline: Instant,
        rebooting: bool,
    },
    Ended,
}

impl RelaySession {
    /// A session just paired with `host`; the caller sends
    /// [`RelayToClient::SessionReady`]. `reboot_wait` is the relay's
    /// configured reboot deadline, quoted when it runs out; `grace` how long
    /// a session waits for an agent that dropped without a reboot (zero:
    /// not at all).
    pub fn new(host: HostName, reboot_wait: Duration, grace: Duration) -> Self {
        Self {
            host,
            reboot_wait,
            grace,
            phase: RelayPhase::Ready,
        }
    }

    /// Whether the session is paired with its host now (it has a route):
    /// neither parked nor over.
    pub fn is_paired(&self) -> bool {
        self.phase == RelayPhase::Ready
    }

    /// Whether the session has ended.
    pub fn is_over(&self) -> bool {
        self.phase == RelayPhase::Ended
    }

    /// When [`Self::tick`] must be called, while parked.
    pub fn deadline(&self) -> Option<Instant> {
        match self.phase {
            RelayPhase::Parked { deadline, .. } => Some(deadline),
            _ => None,
        }
    }

    /// Whether the session waits for a host that is rebooting (as opposed
    /// to one whose agent dropped).
    pub fn waits_for_reboot(&self) -> bool {
        matches!(
            self.phase,
            RelayPhase::Parked {
                rebooting: true,
                ..
            }
        )
    }

    /// The host's link closed. `reboot_deadline` is set when the host had
    /// acknowledged a reboot: the session parks until then; otherwise it
    /// parks for the grace period (SPEC R5), or ends without one.
    pub fn host_lost(
        &mut self,
        now: Instant,
        reboot_deadline: Option<Instant>,
    ) -> Option<RelayToClient> {
        if self.phase != RelayPhase::Ready {
            return None;
        }
        match reboot_deadline {
            Some(deadline) if deadline > now => {
                self.phase = RelayPhase::Parked {
                    deadline,
                    rebooting: true,
                };
                let deadline_secs = deadline.duration_since(now).as_secs();
                Some(RelayToClient::HostRebooting { deadline_secs })
            }
            _ if !self.grace.is_zero() => {
                self.phase = RelayPhase::Parked {
                    deadline: now + self.grace,
                    rebooting: false,
                };
                Some(RelayToClient::HostAway {
                    deadline_secs: self.grace.as_secs(),
                })
            }
            _ => self.end(EndReason::HostOffline),
        }
    }

    /// The host is back: a parked session resumes, one parked for a reboot
    /// only when the host presented its ticket (`with_ticket`).
    pub fn host_back(&mut self, with_ticket: bool) -> Option<RelayToClient> {
        match self.phase {
            RelayPhase::Parked { rebooting, .. } if with_ticket || !rebooting => {
                self.phase = RelayPhase::Ready;
                Some(RelayToClient::HostBack)
            }
            _ => None,
        }
    }

    /// Time passed: a parked session whose deadline is reached ends.
    pub fn tick(&mut self, now: Instant) -> Option<RelayToClient> {
        match self.phase {
            RelayPhase::Parked {
                deadline,
                rebooting,
            } if now >= deadline => self.end(if rebooting {
                EndReason::RebootTimedOut
            } else {
                EndReason::AwayTimedOut
            }),
            _ => None,
        }
    }

    /// Ends the session; returns the frame that tells the client, unless
    /// it already ended or the client is the one who left.
    pub fn end(&mut self, reason: EndReason) -> Option<RelayToClient> {
        if self.phase == RelayPhase::Ended {
            return None;
        }
        self.phase = RelayPhase::Ended;
        let text = match reason {
            EndReason::ClientLeft => return None,
            EndReason::HostOffline => format!("host '{}' went offline", self.host),
            EndReason::RebootTimedOut => format!(
                "host '{}' did not come back within {} s after the reboot",
                self.host,
                self.reboot_wait.as_secs()
            ),
            EndReason::AwayTimedOut => format!(
                "host '{}' went offline and did not come back within {} s",
                self.host,
                self.grace.as_secs()
            ),
            EndReason::RelayShutdown => "the relay is shutting down".into(),
            EndReason::Ended(why) => why,
        };
        Some(RelayToClient::SessionEnded(text))
    }

    /// What to do with a control request the client sent in this phase.
    pub fn request(&self, frame: &crate::frame::ClientToRelay) -> Request {
        use crate::frame::ClientToRelay;
        match (frame, self.phase) {
            (_, RelayPhase::Ended) => Request::Ignore,
            (ClientToRelay::ListHosts, _) => Request::ListHosts,
            (ClientToRelay::Reboot, RelayPhase::Ready) => Request::Reboot,
            (
                ClientToRelay::Reboot,
                RelayPhase::Parked {
                    rebooting: true, ..
                },
            ) => Request::Refuse(Refusal::NotAllowed(format!(
                "host '{}' is already rebooting",
                self.host
            ))),
            (
                ClientToRelay::Reboot,
                RelayPhase::Parked {
                    rebooting: false, ..
                },
            ) => Request::Refuse(Refusal::NotAllowed(format!(
                "host '{}' is offline",
                self.host
            ))),
        }
    }
}

/// Where a session stands, as the client last heard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Logged in; waiting for the relay to pair us with the host.
    Pairing,
    /// Paired with the host.
    Ready,
    /// The session waits, up to `deadline_secs`: for its host to come
    /// back, or for a relay to resume it on.
    Rebooting {
        /// When we heard.
        since: Instant,
        /// How long the wait lasts.
        deadline_secs: u64,
        /// What the session waits for.
        waiting: Waiting,
    },
    /// Over, with the reason.
    Ended(String),
}

/// Why a session waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Waiting {
    /// The host reboots.
    Reboot,
    /// The host's agent dropped without a reboot (a restart, a blip).
    HostAway,
    /// The connection to the relay broke: the client resumes the session
    /// on a relay of the cluster.
    RelayLost,
}

/// What a control frame from the relay meant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The phase changed; read it with [`ClientSession::phase`].
    Phase,
    /// The relay refused a request (a reboot) or the pairing.
    Refused(Refusal),
    /// The answer to a host list request.
    Hosts(Vec<HostInfo>),
    /// A ticket that resumes the session elsewhere, valid this many
    /// seconds; it replaces the one before.
    Ticket(ResumeTicket, u64),
    /// A new route to the host: move the kept connection onto it, or
    /// connect (again) under this leg.
    Route {
        /// The client's own leg.
        leg: LegId,
        /// Whether the host kept the session's connection.
        kept: bool,
    },
}

/// A control frame the relay's side never sends in the client's phase.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("relay sent {frame} while the session was {phase}")]
pub struct UnexpectedFrame {
    /// Which frame.
    pub frame: &'static str,
    /// In which phase.
    pub phase: &'static str,
}

/// The client's side of one session.
#[derive(Debug)]
pub struct ClientSession {
    phase: Phase,
}

impl Default for ClientSession {
    fn default() -> Self {
        Self::new()
    }
}

impl ClientSession {
    /// A session whose login just succeeded.
    pub fn new() -> Self {
        Self {
            phase: Phase::Pairing,
        }
    }

    /// The current phase.
    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    /// Follows one frame from the relay; `now` stamps a reboot's start.
    /// After an error the session is ended: a relay that breaks the rules
    /// is not trusted further.
    pub fn on_frame(
        &mut self,
        frame: RelayToClient,
        now: Instant,
    ) -> Result<Event, UnexpectedFrame> {
        let next = match (&self.phase, frame) {
            (Phase::Ended(_), frame) => return Err(self.unexpected(&frame)),
            (Phase::Pairing, RelayToClient::SessionReady { .. }) => Phase::Ready,
            (Phase::Pairing, RelayToClient::Refused(r)) => {
                self.phase = Phase::Ended(format!("refused: {r:?}"));
                return Ok(Event::Refused(r));
            }
            (Phase::Ready | Phase::Rebooting { .. }, RelayToClient::Refused(r)) => {
                return Ok(Event::Refused(r))
            }
            (Phase::Ready | Phase::Rebooting { .. }, RelayToClient::Hosts(h)) => {
                return Ok(Event::Hosts(h))
            }
            (
                Phase::Ready | Phase::Rebooting { .. },
                RelayToClient::Resumable { ticket, valid_secs },
            ) => return Ok(Event::Ticket(ticket, valid_secs)),
            (Phase::Ready, RelayToClient::Route { leg, kept }) => {
                return Ok(Event::Route { leg, kept })
            }
            (Phase::Ready, RelayToClient::HostRebooting { deadline_secs }) => Phase::Rebooting {
                since: now,
                deadline_secs,
                waiting: Waiting::Reboot,
            },
            (Phase::Ready, RelayToClient::HostAway { deadline_secs }) => Phase::Rebooting {
                since: now,
                deadline_secs,
                waiting: Waiting::HostAway,
            },
            (Phase::Rebooting { .. }, RelayToClient::HostBack) => Phase::Ready,
            (Phase::Ready | Phase::Rebooting { .. }, RelayToClient::SessionEnded(why)) => {
                Phase::Ended(why)
            }
            (_, frame) => {
                let err = self.unexpected(&frame);
                self.phase = Phase::Ended(err.to_string());
                return Err(err);
            }
        };
        self.phase = next;
        Ok(Event::Phase)
    }

    /// The connection to the relay broke while the session was on: with a
    /// resume ticket in hand the client tries to resume it elsewhere for up
    /// to `wait_secs`, and the session waits as for a host gone away.
    /// `false` (nothing changes) if the session was over or not yet paired.
    pub fn relay_lost(&mut self, now: Instant, wait_secs: u64) -> bool {
        if !matches!(self.phase, Phase::Ready | Phase::Rebooting { .. }) {
            return false;
        }
        self.phase = Phase::Rebooting {
            since: now,
            deadline_secs: wait_secs,
            waiting: Waiting::RelayLost,
        };
        true
    }

    /// A resumed connection is up: the relay introduces the host again.
    pub fn resuming(&mut self) {
        if matches!(self.phase, Phase::Rebooting { .. }) {
            self.phase = Phase::Pairing;
        }
    }

    /// Ends the session with `why` (a resume that failed).
    pub fn end(&mut self, why: String) {
        self.phase = Phase::Ended(why);
    }

    /// The connection to the relay closed.
    pub fn connection_lost(&mut self) {
        if !matches!(self.phase, Phase::Ended(_)) {
            self.phase = Phase::Ended("connection to the relay lost".into());
        }
    }

    fn unexpected(&self, frame: &RelayToClient) -> UnexpectedFrame {
        UnexpectedFrame {
            frame: match frame {
                RelayToClient::Hosts(_) => "a host list",
                RelayToClient::Refused(_) => "a refusal",
                RelayToClient::SessionReady { .. } => "session-ready",
                RelayToClient::SessionEnded(_) => "session-ended",
                RelayToClient::HostRebooting { .. } => "host-rebooting",
                RelayToClient::HostBack => "host-back",
                RelayToClient::HostAway { .. } => "host-away",
                RelayToClient::Resumable { .. } => "a resume ticket",
                RelayToClient::Resumed { .. } => "resumed",
                RelayToClient::Route { .. } => "a route",
            },
            phase: match self.phase {
                Phase::Pairing => "pairing",
                Phase::Ready => "ready",
                Phase::Rebooting { .. } => "rebooting",
                Phase::Ended(_) => "over",
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        frame::ClientToRelay,
        ids::{PublicKey, RecordId},
    };

    fn ready() -> RelayToClient {
        RelayToClient::SessionReady {
            host_key: PublicKey([1; 32]),
            record: RecordId([2; 16]),
        }
    }

    fn pair() -> (RelaySession, ClientSession, Instant) {
        pair_with_grace(Duration::ZERO)
    }

    fn pair_with_grace(grace: Duration) -> (RelaySession, ClientSession, Instant) {
        let host: HostName = "mypc".parse().unwrap();
        let mut client = ClientSession::new();
        let now = Instant::now();
        assert_eq!(client.on_frame(ready(), now), Ok(Event::Phase));
        (
            RelaySession::new(host, Duration::from_secs(600), grace),
            client,
            now,
        )
    }

    fn deliver(client: &mut ClientSession, frame: Option<RelayToClient>, now: Instant) {
        client
            .on_frame(frame.expect("a frame for the client"), now)
            .unwrap();
    }

    #[test]
    fn reboot_parks_then_resumes() {
        let (mut relay, mut client, now) = pair();
        assert_eq!(relay.request(&ClientToRelay::Reboot), Request::Reboot);
        let frame = relay.host_lost(now, Some(now + Duration::from_secs(600)));
        assert_eq!(
            frame,
            Some(RelayToClient::HostRebooting { deadline_secs: 600 })
        );
        deliver(&mut client, frame, now);
        assert!(matches!(client.phase(), Phase::Rebooting { .. }));
        assert!(!relay.is_paired());
        assert!(matches!(
            relay.request(&ClientToRelay::Reboot),
            Request::Refuse(_)
        ));
        // Back without the ticket: still parked.
        assert_eq!(relay.host_back(false), None);
        deliver(&mut client, relay.host_back(true), now);
        assert_eq!(client.phase(), &Phase::Ready);
        assert!(relay.is_paired());
    }

    #[test]
    fn an_agent_that_drops_parks_the_session_for_the_grace_and_resumes_on_reconnect() {
        let (mut relay, mut client, now) = pair_with_grace(Duration::from_secs(60));
        let frame = relay.host_lost(now, None);
        assert_eq!(frame, Some(RelayToClient::HostAway { deadline_secs: 60 }));
        deliver(&mut client, frame, now);
        assert!(matches!(
            client.phase(),
            Phase::Rebooting {
                waiting: Waiting::HostAway,
                ..
            }
        ));
        assert!(!relay.is_paired() && !relay.waits_for_reboot());
        assert!(matches!(
            relay.request(&ClientToRelay::Reboot),
            Request::Refuse(_)
        ));
        deliver(&mut client, relay.host_back(false), now);
        assert_eq!(client.phase(), &Phase::Ready);
        // And at the end of the grace, a clear end.
        deliver(&mut client, relay.host_lost(now, None), now);
        deliver(&mut client, relay.tick(now + Duration::from_secs(60)), now);
        assert!(matches!(
            client.phase(),
            Phase::Ended(w) if w.contains("did not come back within 60 s")
        ));
    }

    #[test]
    fn parked_session_ends_at_the_deadline_only() {
        let (mut relay, mut client, now) = pair();
        let deadline = now + Duration::from_secs(5);
        deliver(&mut client, relay.host_lost(now, Some(deadline)), now);
        assert_eq!(relay.tick(deadline - Duration::from_millis(1)), None);
        let end = relay.tick(deadline);
        deliver(&mut client, end, now);
        let Phase::Ended(why) = client.phase() else {
            panic!("still {:?}", client.phase())
        };
        assert!(why.contains("did not come back within 600 s"), "{why}");
        assert_eq!(
            relay.host_back(true),
            None,
            "an ended session never resumes"
        );
        assert!(relay.is_over());
    }

    #[test]
    fn host_lost_without_a_reboot_ends() {
        let (mut relay, mut client, now) = pair();
        deliver(&mut client, relay.host_lost(now, None), now);
        assert!(matches!(client.phase(), Phase::Ended(w) if w.contains("went offline")));
        // A deadline already past counts as no reboot.
        let (mut relay, _, now) = pair();
        assert!(matches!(
            relay.host_lost(now, Some(now)),
            Some(RelayToClient::SessionEnded(_))
        ));
    }

    #[test]
    fn ended_is_final_and_silent() {
        let (mut relay, _, now) = pair();
        assert_eq!(relay.end(EndReason::ClientLeft), None);
        assert_eq!(relay.end(EndReason::RelayShutdown), None);
        assert_eq!(
            relay.host_lost(now, Some(now + Duration::from_secs(1))),
            None
        );
        assert_eq!(relay.tick(now + Duration::from_secs(9)), None);
        assert!(!relay.is_paired());
        assert_eq!(relay.request(&ClientToRelay::Reboot), Request::Ignore);
    }

    #[test]
    fn client_refuses_frames_the_relay_never_sends() {
        let now = Instant::now();
        let mut client = ClientSession::new();
        assert!(client.on_frame(RelayToClient::HostBack, now).is_err());
        assert!(matches!(client.phase(), Phase::Ended(_)));

        let (_, mut client, now) = pair();
        assert!(client.on_frame(ready(), now).is_err());

        let (_, mut client, now) = pair();
        assert!(client.on_frame(RelayToClient::HostBack, now).is_err());

        let (_, mut client, now) = pair();
        client
            .on_frame(RelayToClient::SessionEnded("bye".into()), now)
            .unwrap();
        assert!(client.on_frame(ready(), now).is_err());
        assert_eq!(client.phase(), &Phase::Ended("bye".into()));
    }

    #[test]
    fn refusals_and_host_lists_do_not_move_the_phase() {
        let (_, mut client, now) = pair();
        let r = Refusal::NotAllowed("too soon".into());
        assert_eq!(
            client.on_frame(RelayToClient::Refused(r.clone()), now),
            Ok(Event::Refused(r))
        );
        assert_eq!(
            client.on_frame(RelayToClient::Hosts(vec![]), now),
            Ok(Event::Hosts(vec![]))
        );
        assert_eq!(client.phase(), &Phase::Ready);
    }
}
