//! What a user may do in a session on a host: the rights of a grant, as an
//! admin set them (`shell`, `exec`, `copy-from`, `copy-to`, `forward`,
//! optionally to some targets only, and `reboot`). The relay keeps them
//! with the grant and tells the host; the host, which alone sees what a
//! channel is for, enforces them, narrowed further by its own config.

use std::{fmt, net::SocketAddr, str::FromStr};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::session::ChannelKind;

/// The most forward targets a grant may name.
pub const MAX_FORWARD_TARGETS: usize = 32;

/// One thing a grant may allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Right {
    /// An interactive shell (`latchkey connect`).
    Shell,
    /// One command (`latchkey exec`).
    Exec,
    /// Files from the host (`latchkey cp HOST:PATH ...`).
    CopyFrom,
    /// Files to the host (`latchkey cp ... HOST:PATH`).
    CopyTo,
    /// TCP forwards (`latchkey forward`, `proxy`, `desktop`).
    Forward,
    /// In-session reboot (`latchkey reboot`).
    Reboot,
}

impl Right {
    /// Every right, in the order lists show them.
    pub const ALL: [Self; 6] = [
        Self::Shell,
        Self::Exec,
        Self::CopyFrom,
        Self::CopyTo,
        Self::Forward,
        Self::Reboot,
    ];

    /// Its name in lists (`--allow exec,copy-from`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Shell => "shell",
            Self::Exec => "exec",
            Self::CopyFrom => "copy-from",
            Self::CopyTo => "copy-to",
            Self::Forward => "forward",
            Self::Reboot => "reboot",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }

    /// What it allows, for the sentence that refuses it: "your grant on
    /// mypc does not allow {doing} it".
    fn doing(self) -> &'static str {
        match self {
            Self::Shell => "opening a shell on",
            Self::Exec => "running commands on",
            Self::CopyFrom => "copying files from",
            Self::CopyTo => "copying files to",
            Self::Forward => "forwarding through",
            Self::Reboot => "rebooting",
        }
    }

    /// The right a channel of `kind` needs. A desktop is reached through
    /// forwards, so asking which one the host has needs `forward` too.
    pub fn needed_for(kind: &ChannelKind) -> Self {
        match kind {
            ChannelKind::Shell { .. } => Self::Shell,
            ChannelKind::Exec { .. } => Self::Exec,
            ChannelKind::Upload { .. } => Self::CopyTo,
            ChannelKind::Download { .. } => Self::CopyFrom,
            ChannelKind::Forward { .. }
            | ChannelKind::ForwardCheck { .. }
            | ChannelKind::Desktop => Self::Forward,
        }
    }

    /// The refusal a user sees when their grant on `host` lacks this right.
    pub fn refusal(self, host: &str) -> String {
        format!(
            "your grant on {host} does not allow {} it; ask your admin",
            self.doing()
        )
    }

    /// The refusal a shared user sees when the host's owner allows no
    /// shared user this right (the host's own config), whatever the grant.
    pub fn refusal_by_owner(self, host: &str) -> String {
        format!(
            "the owner of {host} allows no shared user {} it",
            self.doing()
        )
    }
}

impl fmt::Display for Right {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a list of rights could not be read.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RightsError {
    /// A name that is no right.
    #[error("unknown right '{0}': give a comma-separated list of shell, exec, copy-from, copy-to, forward, reboot (or all, or none)")]
    Unknown(String),
    /// A forward target that is not `IP:PORT`.
    #[error("forward target '{0}' is not IP:PORT")]
    Target(String),
    /// Too many forward targets.
    #[error("at most {MAX_FORWARD_TARGETS} forward targets")]
    TooManyTargets,
    /// Targets given without the `forward` right.
    #[error("forward targets were given, but the rights do not include forward")]
    TargetsWithoutForward,
    /// Bits no right stands for (a store written by a newer relay).
    #[error("unknown rights bits {0:#x}")]
    Bits(u8),
}

/// A set of rights, with the forward targets they are narrowed to (none
/// named: whatever the host allows).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "StoredRights")]
pub struct Rights {
    bits: u8,
    forward_to: Option<Vec<SocketAddr>>,
}

/// [`Rights`] as decoded, before its bits and targets are checked.
#[derive(Deserialize)]
struct StoredRights {
    bits: u8,
    forward_to: Option<Vec<SocketAddr>>,
}

impl TryFrom<StoredRights> for Rights {
    type Error = RightsError;

    fn try_from(raw: StoredRights) -> Result<Self, RightsError> {
        Rights::from_stored(raw.bits, raw.forward_to)
    }
}

impl Default for Rights {
    fn default() -> Self {
        Self::all()
    }
}

impl Rights {
    const ALL_BITS: u8 = (1 << Right::ALL.len()) - 1;

    /// Everything the host allows: an owner's rights, and a grant's unless
    /// the admin narrowed them.
    pub fn all() -> Self {
        Self {
            bits: Self::ALL_BITS,
            forward_to: None,
        }
    }

    /// Exactly `rights`, forwards to any target the host allows.
    pub fn only(rights: impl IntoIterator<Item = Right>) -> Self {
        Self {
            bits: rights.into_iter().fold(0, |b, r| b | r.bit()),
            forward_to: None,
        }
    }

    /// The same rights with forwards narrowed to `targets`.
    pub fn forwarding_only_to(mut self, targets: Vec<SocketAddr>) -> Result<Self, RightsError> {
        if !self.allows(Right::Forward) {
            return Err(RightsError::TargetsWithoutForward);
        }
        if targets.len() > MAX_FORWARD_TARGETS {
            return Err(RightsError::TooManyTargets);
        }
        self.forward_to = Some(targets);
        Ok(self)
    }

    /// Whether `right` is among them.
    pub fn allows(&self, right: Right) -> bool {
        self.bits & right.bit() != 0
    }

    /// Whether a forward to `target` is allowed by these rights (the host's
    /// `forward_allow` is checked besides).
    pub fn allows_forward_to(&self, target: SocketAddr) -> bool {
        self.allows(Right::Forward)
            && self
                .forward_to
                .as_ref()
                .is_none_or(|only| only.contains(&target))
    }

    /// The forward targets they are narrowed to, if any.
    pub fn forward_targets(&self) -> Option<&[SocketAddr]> {
        self.forward_to.as_deref()
    }

    /// What both allow: the narrower of two sets of rights.
    pub fn narrowed_by(&self, other: &Rights) -> Rights {
        let forward_to = match (&self.forward_to, &other.forward_to) {
            (None, None) => None,
            (Some(a), None) | (None, Some(a)) => Some(a.clone()),
            (Some(a), Some(b)) => Some(a.iter().filter(|t| b.contains(t)).copied().collect()),
        };
        Rights {
            bits: self.bits & other.bits,
            forward_to,
        }
    }

    /// Whether a channel of `kind` is allowed: `None` if so, else the right
    /// it lacks.
    pub fn lacks_for(&self, kind: &ChannelKind) -> Option<Right> {
        let right = Right::needed_for(kind);
        let allowed = match kind {
            ChannelKind::Forward { target } | ChannelKind::ForwardCheck { target } => target
                .parse::<SocketAddr>()
                .map_or(self.allows(right), |t| self.allows_forward_to(t)),
            _ => self.allows(right),
        };
        (!allowed).then_some(right)
    }

    /// The rights as a number, for the store.
    pub fn bits(&self) -> u8 {
        self.bits
    }

    /// Rights from the store's number and target list.
    pub fn from_stored(bits: u8, forward_to: Option<Vec<SocketAddr>>) -> Result<Self, RightsError> {
        if bits & !Self::ALL_BITS != 0 {
            return Err(RightsError::Bits(bits));
        }
        match forward_to {
            Some(targets) => Self {
                bits,
                forward_to: None,
            }
            .forwarding_only_to(targets),
            None => Ok(Self { bits, forward_to }),
        }
    }

    /// Whether these are all the rights there are (nothing narrowed).
    pub fn is_all(&self) -> bool {
        self.bits == Self::ALL_BITS && self.forward_to.is_none()
    }

    /// The rights allowed, in order.
    pub fn iter(&self) -> impl Iterator<Item = Right> + '_ {
        Right::ALL.into_iter().filter(|r| self.allows(*r))
    }
}

/// `all`, `none`, or the names of the rights, comma-separated; the
/// forward targets follow in parentheses: `exec,forward(127.0.0.1:22)`.
impl fmt::Display for Rights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_all() {
            return f.write_str("all");
        }
        if self.bits == 0 {
            return f.write_str("none");
        }
        let mut first = true;
        for right in self.iter() {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            f.write_str(right.name())?;
            if let (Right::Forward, Some(only)) = (right, &self.forward_to) {
                let list: Vec<String> = only.iter().map(ToString::to_string).collect();
                write!(f, "({})", list.join(" "))?;
            }
        }
        Ok(())
    }
}

/// Reads a list of right names (`exec,copy-from`, `all`, `none`); forward
/// targets are given apart ([`parse_targets`]).
impl FromStr for Rights {
    type Err = RightsError;

    fn from_str(s: &str) -> Result<Self, RightsError> {
        let mut rights = Vec::new();
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name {
                "all" => return Ok(Self::all()),
                "none" => {}
                _ => rights.push(
                    Right::ALL
                        .into_iter()
                        .find(|r| r.name() == name)
                        .ok_or_else(|| RightsError::Unknown(name.into()))?,
                ),
            }
        }
        Ok(Self::only(rights))
    }
}

/// A user's rights on a host as the relay tells the host: what the grant
/// allows, whether the user is a shared user (the host's own config narrows
/// only those; an owner is never narrowed), and when the grant's rights
/// were last set, so that of two messages crossing each other the host
/// keeps the newer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantRights {
    /// What the grant allows.
    pub rights: Rights,
    /// A shared user's grant, not the owner's.
    pub shared: bool,
    /// Grows each time an admin sets a grant's rights (store-wide).
    pub stamp: u64,
    /// A session with no channel traffic for this long ends (seconds).
    pub idle_secs: Option<u32>,
}

impl GrantRights {
    /// The owner's: everything, always.
    pub fn owner() -> Self {
        Self {
            rights: Rights::all(),
            shared: false,
            stamp: 0,
            idle_secs: None,
        }
    }
}

/// Reads forward targets, `IP:PORT`, comma-separated.
pub fn parse_targets(s: &str) -> Result<Vec<SocketAddr>, RightsError> {
    let targets = s
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| t.parse().map_err(|_| RightsError::Target(t.into())))
        .collect::<Result<Vec<SocketAddr>, _>>()?;
    if targets.len() > MAX_FORWARD_TARGETS {
        return Err(RightsError::TooManyTargets);
    }
    Ok(targets)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("address")
    }

    #[test]
    fn a_list_reads_and_prints_the_same() {
        let r: Rights = "exec, copy-from".parse().expect("rights");
        assert!(r.allows(Right::Exec) && r.allows(Right::CopyFrom));
        assert!(!r.allows(Right::Shell) && !r.allows(Right::CopyTo));
        assert_eq!(r.to_string(), "exec,copy-from");
        assert_eq!("all".parse::<Rights>(), Ok(Rights::all()));
        assert_eq!("none".parse::<Rights>().map(|r| r.bits()), Ok(0));
        assert_eq!(Rights::all().to_string(), "all");
        assert_eq!(
            "exec,sudo".parse::<Rights>(),
            Err(RightsError::Unknown("sudo".into()))
        );
    }

    #[test]
    fn forward_targets_narrow_forwards_only() {
        let r = Rights::only([Right::Forward, Right::Exec])
            .forwarding_only_to(vec![addr("127.0.0.1:22")])
            .expect("targets");
        assert!(r.allows_forward_to(addr("127.0.0.1:22")));
        assert!(!r.allows_forward_to(addr("127.0.0.1:5900")));
        assert_eq!(r.to_string(), "exec,forward(127.0.0.1:22)");
        let fwd = |t: &str| ChannelKind::Forward { target: t.into() };
        assert_eq!(r.lacks_for(&fwd("127.0.0.1:22")), None);
        assert_eq!(r.lacks_for(&fwd("127.0.0.1:5900")), Some(Right::Forward));
        assert_eq!(
            Rights::only([Right::Exec]).forwarding_only_to(vec![]),
            Err(RightsError::TargetsWithoutForward)
        );
    }

    #[test]
    fn the_narrower_of_two_wins() {
        let grant: Rights = "shell,exec,forward".parse().expect("rights");
        let host = Rights::only([Right::Exec, Right::Forward])
            .forwarding_only_to(vec![addr("127.0.0.1:22"), addr("127.0.0.1:80")])
            .expect("targets");
        let both = grant.narrowed_by(&host);
        assert_eq!(both.to_string(), "exec,forward(127.0.0.1:22 127.0.0.1:80)");
        let narrower = both.narrowed_by(
            &Rights::all()
                .forwarding_only_to(vec![addr("127.0.0.1:80")])
                .expect("targets"),
        );
        assert_eq!(
            narrower.forward_targets(),
            Some(&[addr("127.0.0.1:80")][..])
        );
        assert_eq!(Rights::all().narrowed_by(&Rights::all()), Rights::all());
    }

    #[test]
    fn each_channel_needs_its_right() {
        let copy_only: Rights = "copy-from".parse().expect("rights");
        let shell = ChannelKind::Shell {
            term: "xterm".into(),
            cols: 80,
            rows: 24,
        };
        assert_eq!(copy_only.lacks_for(&shell), Some(Right::Shell));
        let exec = ChannelKind::Exec { argv: vec![] };
        assert_eq!(copy_only.lacks_for(&exec), Some(Right::Exec));
        let down = ChannelKind::Download { path: "/x".into() };
        assert_eq!(copy_only.lacks_for(&down), None);
        let up = ChannelKind::Upload {
            path: "/x".into(),
            name: "x".into(),
            size: 0,
            mode: 0o644,
        };
        assert_eq!(copy_only.lacks_for(&up), Some(Right::CopyTo));
        assert_eq!(
            copy_only.lacks_for(&ChannelKind::Desktop),
            Some(Right::Forward)
        );
        assert_eq!(
            Right::CopyTo.refusal("mypc"),
            "your grant on mypc does not allow copying files to it; ask your admin"
        );
    }

    #[test]
    fn stored_bits_beyond_the_known_rights_are_refused() {
        assert_eq!(Rights::from_stored(0x3f, None), Ok(Rights::all()));
        assert_eq!(
            Rights::from_stored(0x80, None),
            Err(RightsError::Bits(0x80))
        );
    }
}
