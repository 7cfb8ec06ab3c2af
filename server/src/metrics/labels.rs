//! The label values of the relay's metrics: small fixed sets, one enum per
//! label, each with every value (so [`super::Metrics::new`] can render them
//! all at zero) and the string a scraper sees. Never a user or host name or
//! an address: their number is unbounded.

/// What an authenticated connection turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnRole {
    /// A host agent's live link.
    Host,
    /// A host's administrative connection (`latchkey host set-code`).
    HostAdmin,
    /// A proven user without a session (the host list).
    User,
    /// A user's logged-in session with a host.
    Session,
}

impl ConnRole {
    pub(super) const ALL: [Self; 4] = [Self::Host, Self::HostAdmin, Self::User, Self::Session];

    pub(super) fn label(self) -> &'static str {
        match self {
            Self::Host => "host",
            Self::HostAdmin => "host_admin",
            Self::User => "user",
            Self::Session => "session",
        }
    }
}

/// How a connection's handshake ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeResult {
    /// The peer was proven and took a role ([`ConnRole`]).
    Authenticated,
    /// Answered and done: an enrolment, a refusal, or a login that did not
    /// start a session.
    Answered,
    /// The QUIC or Latchkey handshake failed (bad input, peer gone).
    Failed,
    /// A handshake deadline passed.
    Timeout,
    /// Its source had no connection tokens left.
    RateLimited,
}

impl HandshakeResult {
    pub(super) const ALL: [Self; 5] = [
        Self::Authenticated,
        Self::Answered,
        Self::Failed,
        Self::Timeout,
        Self::RateLimited,
    ];

    pub(super) fn label(self) -> &'static str {
        match self {
            Self::Authenticated => "authenticated",
            Self::Answered => "answered",
            Self::Failed => "failed",
            Self::Timeout => "timeout",
            Self::RateLimited => "rate_limited",
        }
    }
}

/// A login's verdict, as the relay decided it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoginResult {
    /// The right code: a session started.
    Ok,
    /// A wrong access code: counted against the host.
    Wrong,
    /// The host is locked (or was locked while the login ran).
    Locked,
    /// Attempts in flight used up the host's budget: nothing was tried.
    Busy,
    /// An unknown user, a device key that is not the user's, or no grant on
    /// the host (also a right code whose grant was revoked meanwhile).
    Outsider,
    /// The host is on another relay of the cluster: sent there, nothing
    /// was tried here.
    Redirected,
    /// The right code, but the user holds as many sessions as they may:
    /// no session started, nothing counted.
    TooManySessions,
}

impl LoginResult {
    pub(super) const ALL: [Self; 7] = [
        Self::Ok,
        Self::Wrong,
        Self::Locked,
        Self::Busy,
        Self::Outsider,
        Self::Redirected,
        Self::TooManySessions,
    ];

    pub(super) fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Wrong => "wrong",
            Self::Locked => "locked",
            Self::Busy => "busy",
            Self::Outsider => "outsider",
            Self::Redirected => "redirected",
            Self::TooManySessions => "too_many_sessions",
        }
    }
}

/// Why a connection was refused before its handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusedReason {
    /// Its source address had no connection tokens left.
    RateLimited,
    /// Every handshake place and place in line was taken.
    TooManyHandshakes,
}

impl RefusedReason {
    pub(super) const ALL: [Self; 2] = [Self::RateLimited, Self::TooManyHandshakes];

    pub(super) fn label(self) -> &'static str {
        match self {
            Self::RateLimited => "rate_limited",
            Self::TooManyHandshakes => "too_many_handshakes",
        }
    }
}

/// How a reboot request ended, as far as the relay sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RebootResult {
    /// The ticket was issued and the host asked to reboot.
    Asked,
    /// Refused by the relay (rate limit, policy, host offline).
    Refused,
    /// The host's reboot command failed; the host stayed up.
    Failed,
}

impl RebootResult {
    pub(super) const ALL: [Self; 3] = [Self::Asked, Self::Refused, Self::Failed];

    pub(super) fn label(self) -> &'static str {
        match self {
            Self::Asked => "asked",
            Self::Refused => "refused",
            Self::Failed => "failed",
        }
    }
}

/// Why the relay did not forward a routed datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForwardDrop {
    /// Not a route header this relay reads.
    Malformed,
    /// A leg no live route has.
    UnknownLeg,
    /// A live leg, from an address it is not bound to.
    WrongSource,
    /// The route's sender has used its byte budget for now.
    OverBudget,
    /// The relay's socket could not take the datagram (its send buffer
    /// was full): lost, as on any congested path.
    SendFailed,
}

impl ForwardDrop {
    /// Every value, in [`Self::index`] order.
    pub const ALL: [Self; 5] = [
        Self::Malformed,
        Self::UnknownLeg,
        Self::WrongSource,
        Self::OverBudget,
        Self::SendFailed,
    ];

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    pub(super) fn label(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::UnknownLeg => "unknown_leg",
            Self::WrongSource => "wrong_source",
            Self::OverBudget => "over_budget",
            Self::SendFailed => "send_failed",
        }
    }
}
