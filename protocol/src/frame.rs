//! Everything that crosses the wire, as one enum per direction. Every enum
//! is `#[non_exhaustive]` and new variants are only ever appended (bincode
//! numbers variants by position), so a variant number is never reused.
//!
//! A connection starts with the Noise handshake on its first stream
//! ([`Hello`] in message 1, [`HelloReply`] in message 2, then for a login
//! [`LoginFinish`] and [`LoginOutcome`] as Noise transport messages). After
//! that the same stream carries length-prefixed control frames
//! ([`codec`](crate::codec)) in the direction-specific enums below.

use serde::{Deserialize, Serialize};

use crate::{
    ids::{
        HostName, Platform, PublicKey, RecordId, ResumeTicket, SessionId, TokenSecret, UserName,
    },
    ksf::KsfProfile,
    rights::GrantRights,
    route::LegId,
    session::DesktopProtocol,
};

/// The protocol version this crate speaks. Message 1 carries it, so a relay
/// can refuse (or later adapt to) another version before doing any work.
/// Version 2 made every channel end-to-end encrypted; version 3 carries a
/// session as one end-to-end QUIC connection the relay forwards without
/// reading ([`crate::route`]); version 4 tells the host what each session
/// may do ([`crate::rights`]); version 5 says, as a channel opens,
/// whether the host records it. A peer of another version is refused with a
/// message that says to upgrade; there is no fallback.
pub const PROTOCOL_VERSION: u16 = 5;

/// Payload of Noise message 1: who is asking, for what.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The initiator's [`PROTOCOL_VERSION`].
    pub version: u16,
    /// What the initiator wants from this connection.
    pub intent: Intent,
}

/// What a connection is for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Intent {
    /// A user opens a session on a host, proving the access code by OPAQUE.
    Login {
        /// The user's account.
        user: UserName,
        /// The host to reach.
        host: HostName,
        /// OPAQUE KE1 (credential request).
        ke1: Vec<u8>,
    },
    /// A host agent comes online (its device key is the proof).
    Host {
        /// The host's name.
        host: HostName,
        /// The protocol of the remote desktop the host declares, shown in
        /// its users' host lists; where it listens stays on the host.
        desktop: Option<DesktopProtocol>,
    },
    /// A user asks for something that needs no access code (the host list).
    User {
        /// The user's account.
        user: UserName,
    },
    /// A new device redeems an invite; the Noise static key becomes its key.
    Enroll {
        /// The invite's secret.
        token: TokenSecret,
        /// The device's OS (recorded for hosts).
        platform: Platform,
    },
    /// A host's local administration (setting codes) on a connection of its
    /// own, so it does not replace the running agent's link.
    HostAdmin {
        /// The host's name.
        host: HostName,
    },
    /// A user's session whose relay went away continues on another relay
    /// of the cluster (or the same one, restarted) without the access code:
    /// the single-use ticket the relay gave ([`RelayToClient::Resumable`]).
    /// Answered with [`HelloReply::Welcome`] and then
    /// [`RelayToClient::Resumed`], a redirect, or a refusal.
    Resume {
        /// The user's account.
        user: UserName,
        /// The session's host.
        host: HostName,
        /// The session's latest ticket.
        ticket: ResumeTicket,
    },
}

/// Payload of Noise message 2.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum HelloReply {
    /// OPAQUE KE2 (credential response), real or fake: the client cannot
    /// tell which until it checks the code.
    Challenge {
        /// Key stretching the client must use with this record.
        ksf: KsfProfile,
        /// OPAQUE KE2.
        ke2: Vec<u8>,
    },
    /// The host is locked (only ever said to a proven grant holder).
    Locked,
    /// The device is known; control frames follow.
    Welcome,
    /// The invite was redeemed.
    Enrolled {
        /// The user or host name the device is now enrolled as.
        name: String,
        /// Whether the device is a host (else a user).
        is_host: bool,
    },
    /// The relay will not serve this connection.
    Refused(Refusal),
    /// Only to a proven grant holder's login: the host's agent is on
    /// another relay of the same cluster (same pin); log in there. Nothing
    /// was reserved here. A client follows one redirect per login.
    Redirect {
        /// That relay's address, `host:port`.
        relay: String,
    },
}

/// Why the relay refused a connection or a request. Short and vague on
/// purpose (SPEC A4); the relay's log has the detail.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Refusal {
    /// Another protocol version is needed.
    UnsupportedVersion {
        /// The version the relay speaks.
        supported: u16,
    },
    /// The device key is not enrolled under that name.
    UnknownDevice,
    /// The invite is unknown, used or expired.
    InvalidToken,
    /// Too many attempts from this address; try later.
    RateLimited,
    /// The relay is overloaded or shutting down; try later.
    Busy,
    /// The request is not allowed (details in the relay's log).
    NotAllowed(String),
    /// The host's agent is not connected.
    HostOffline,
}

/// First Noise transport message of a login (client to relay).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum LoginFinish {
    /// OPAQUE KE3 (credential finalization).
    Ke3(Vec<u8>),
    /// The client saw at KE2 that the code is wrong and gives up; the relay
    /// records the failure before it answers, so the client's next step
    /// sees the counter as it is.
    Abort,
}

/// The relay's verdict on a login (Noise transport message, relay to client).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum LoginOutcome {
    /// The code was right; the session exists.
    Accepted {
        /// The new session.
        session: SessionId,
    },
    /// The code was wrong.
    Rejected,
    /// The code was right, but a concurrent attempt locked the host before
    /// the verdict committed: no session, nothing counted.
    Locked,
    /// The code was right, but no session may start (the grant was revoked
    /// meanwhile); nothing counted.
    Refused(Refusal),
}

/// Where a new access code applies.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum CodeTarget {
    /// The owner's code; grants made from now on inherit it (SPEC S1).
    Owner,
    /// One secondary user's own grant ("Forgot your access code", SPEC S5).
    Grant(UserName),
}

/// One host as a user sees it in `latchkey hosts`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostInfo {
    /// The host's name.
    pub name: HostName,
    /// The host's owner.
    pub owner: UserName,
    /// Whether the host agent is connected now.
    pub online: bool,
    /// Whether the host is locked out.
    pub locked: bool,
    /// Whether the asking user is the owner (else a secondary user).
    pub is_owner: bool,
    /// The remote desktop the host declared when its agent last came
    /// online (`latchkey desktop` opens it), if any.
    pub desktop: Option<DesktopProtocol>,
    /// When the asking user's shared access ends by itself (Unix seconds),
    /// if the admin gave it an end.
    pub expires_at: Option<i64>,
}

/// Control frames from a user's client to the relay.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ClientToRelay {
    /// List the hosts this user may reach.
    ListHosts,
    /// Reboot the session's host and keep the session waiting for it (SPEC R1).
    Reboot,
}

/// Control frames from the relay to a user's client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum RelayToClient {
    /// Answer to [`ClientToRelay::ListHosts`].
    Hosts(Vec<HostInfo>),
    /// The request was refused.
    Refused(Refusal),
    /// After a login: the host is paired. The client checks `host_key`
    /// against its pin, runs the end-to-end handshake with it
    /// ([`crate::e2e`]), then opens channels.
    SessionReady {
        /// The host's device key, as the relay knows it.
        host_key: PublicKey,
        /// The code record the login used (its export key makes the psk).
        record: RecordId,
    },
    /// The session is over (revoked, host gone, relay stopping).
    SessionEnded(String),
    /// The host is rebooting; the session waits for it (SPEC R2).
    HostRebooting {
        /// Seconds the relay waits before giving up.
        deadline_secs: u64,
    },
    /// The host is back after a reboot; run the end-to-end handshake
    /// again, then open channels (SPEC R3).
    HostBack,
    /// The host's agent dropped without a reboot (a restart, a network
    /// blip); the session waits for it (SPEC R5).
    HostAway {
        /// Seconds the relay waits before giving up.
        deadline_secs: u64,
    },
    /// A single-use ticket that resumes this session on any relay of the
    /// cluster if this one goes ([`Intent::Resume`]); it replaces the one
    /// before and expires after `valid_secs`. The client keeps it in memory
    /// only.
    Resumable {
        /// The ticket.
        ticket: ResumeTicket,
        /// Seconds it stays valid.
        valid_secs: u64,
    },
    /// First frame after a resume: the session's new id (the end-to-end
    /// handshake binds it); [`RelayToClient::SessionReady`] follows.
    Resumed {
        /// The session's id on this relay.
        session: SessionId,
    },
    /// The relay opened a route to the host for this session (after
    /// [`RelayToClient::SessionReady`], and again after
    /// [`RelayToClient::HostBack`]): the client's end-to-end datagrams go
    /// to this relay under `leg` ([`crate::route`]). With `kept`, the host
    /// kept the session's end-to-end connection: the client moves its own
    /// onto the route (no new handshake) if it still has it; otherwise it
    /// connects to the host (again) over the route.
    Route {
        /// The client's own leg of the route.
        leg: LegId,
        /// Whether the host kept the session's connection.
        kept: bool,
    },
}

/// Control frames from a host agent to the relay.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum HostToRelay {
    /// Start setting an access code: OPAQUE registration request.
    RegisterCode {
        /// Whose code.
        target: CodeTarget,
        /// Key stretching used for this record.
        ksf: KsfProfile,
        /// OPAQUE registration request.
        request: Vec<u8>,
    },
    /// Finish setting an access code: OPAQUE registration upload.
    UploadCode {
        /// OPAQUE registration upload (the record).
        upload: Vec<u8>,
    },
    /// Keep-alive answer.
    Pong,
    /// The host got the reboot request and its ticket, and reboots now.
    RebootAck,
    /// First frame after a reboot: resume the sessions that waited.
    Resume(ResumeTicket),
    /// The host is ready for an announced session's route
    /// ([`RelayToHost::Session`]); `kept` says that it kept the
    /// session's end-to-end connection (from before a relay's loss or its
    /// own link's), which then continues on the new route without a new
    /// handshake.
    Routed {
        /// The session, as announced.
        session: SessionId,
        /// Whether its connection was kept.
        kept: bool,
    },
    /// The reboot command failed and the host stays up: the relay tells
    /// the session that asked, and the host may be asked again at once.
    RebootFailed {
        /// The session that asked.
        session: SessionId,
        /// What failed: the command's exit status and the first line of
        /// its standard error.
        reason: String,
    },
    /// A session had no channel traffic for its grant's idle limit: the
    /// host closed its connection, and the relay ends it with the reason.
    SessionIdle {
        /// The session.
        session: SessionId,
        /// The limit it reached, in seconds.
        idle_secs: u32,
    },
}

/// Control frames from the relay to a host agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum RelayToHost {
    /// OPAQUE registration response.
    CodeChallenge {
        /// OPAQUE registration response.
        response: Vec<u8>,
        /// The new record's id: the host files the registration's export
        /// key under it.
        record: RecordId,
    },
    /// The new code is stored.
    CodeSet {
        /// Whose code changed.
        target: CodeTarget,
    },
    /// Something the owner should read (SPEC S2, S3).
    Notice(String),
    /// Keep-alive probe.
    Ping,
    /// The request was refused.
    Refused(Refusal),
    /// Reboot now; present `ticket` when back (SPEC R2).
    Reboot {
        /// The session that asked.
        session: SessionId,
        /// Single-use, expiring, bound to this host.
        ticket: ResumeTicket,
    },
    /// The ticket was accepted: the sessions waiting for the host resume.
    Resumed,
    /// A session ended: the host closes its end-to-end connection.
    SessionEnded {
        /// The session.
        session: SessionId,
    },
    /// A session the relay admitted, and its route: the host accepts one
    /// end-to-end connection arriving under `leg`, and on it the Noise
    /// handshake of `user_key` with the export key of `record`
    /// ([`crate::e2e`]). Sent again (with a new leg) whenever the session
    /// is paired with this host anew, or resumed on another relay. The host
    /// answers [`HostToRelay::Routed`] before the client learns its own
    /// leg, so the client's first datagram finds the host ready.
    Session {
        /// The session.
        session: SessionId,
        /// The session this one continues (a resume with a ticket gives a
        /// session a new id): a host that still holds that session's
        /// connection, for the same user and key, keeps it on the new
        /// route.
        continues: Option<SessionId>,
        /// The authenticated user (the relay's word; the handshake proves
        /// the key and the code record's export key).
        user: UserName,
        /// The user's device key, as the relay knows it.
        user_key: PublicKey,
        /// The code record the login used.
        record: RecordId,
        /// The host's own leg of the route.
        leg: LegId,
        /// What the user may do in it.
        rights: GrantRights,
    },
    /// An admin changed a shared user's rights on this host: the host
    /// applies them to the user's sessions at once, ending running channels
    /// the rights no longer allow.
    Rights {
        /// Whose.
        user: UserName,
        /// The rights now.
        rights: GrantRights,
    },
}
