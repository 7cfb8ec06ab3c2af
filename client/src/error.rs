//! The one error type of the `latchkey` commands (user and host alike):
//! what failed is the identity files, the enrolment, the relay or the host
//! named, and each says what to do. (A session's channel errors convert to it where they
//! are defined, in `user/remote/error.rs`.)

use latchkey_protocol::{ids::HostName, HandshakeError};

use crate::{
    config::ConfigError, enroll::EnrollError, net::NetError, user::e2e::E2eError, wire::WireError,
};

/// Errors of `latchkey` commands.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// Identity files.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Enrolment.
    #[error(transparent)]
    Enroll(#[from] EnrollError),
    /// The relay.
    #[error(transparent)]
    Net(#[from] NetError),
    /// End-to-end encryption with a host.
    #[error(transparent)]
    EndToEnd(#[from] E2eError),
    /// The user named a host they have no access to (a typo, most often).
    #[error("no host '{host}' among yours: {} (`latchkey hosts` lists them)", listed(.yours))]
    UnknownHost {
        /// The name given.
        host: HostName,
        /// The hosts the user may reach.
        yours: Vec<HostName>,
    },
}

fn listed(hosts: &[HostName]) -> String {
    if hosts.is_empty() {
        return "you have none yet".into();
    }
    hosts
        .iter()
        .map(HostName::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

impl From<WireError> for CommandError {
    fn from(e: WireError) -> Self {
        Self::Net(e.into())
    }
}

impl From<HandshakeError> for CommandError {
    fn from(e: HandshakeError) -> Self {
        Self::Net(e.into())
    }
}
