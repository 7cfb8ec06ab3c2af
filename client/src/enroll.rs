//! Redeeming an invite: a new device key is made here, only its public half
//! goes to the relay (SPEC I2), and the relay's pin comes from the token.

use latchkey_protocol::{
    frame::Intent,
    handshake::{InitiatorReply, Keypair},
    ids::Platform,
    invite::Invite,
    HandshakeError,
};
use rand::rngs::OsRng;

use crate::net::{self, NetError};

/// Errors enrolling.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// The token does not parse.
    #[error(transparent)]
    Token(#[from] latchkey_protocol::ParseError),
    /// The token is for the other kind of device.
    #[error("{0}")]
    WrongKind(&'static str),
    /// The relay refused or could not be reached.
    #[error(transparent)]
    Net(#[from] NetError),
}

/// A redeemed invite.
pub struct Enrolled {
    /// The invite (relay address and pin).
    pub invite: Invite,
    /// The new device key.
    pub key: Keypair,
    /// The name the relay enrolled the device as.
    pub name: String,
}

/// Redeems `token` as a host (`as_host`) or a user's device.
pub async fn redeem(token: &str, as_host: bool) -> Result<Enrolled, EnrollError> {
    let invite = Invite::from_text(token)?;
    if invite.for_host != as_host {
        return Err(EnrollError::WrongKind(if invite.for_host {
            "this token enrolls a host: run `latchkey host enroll TOKEN` on that host"
        } else {
            "this token enrolls a user's device: run `latchkey enroll TOKEN`"
        }));
    }
    let key = Keypair::generate(&mut OsRng);
    let intent = Intent::Enroll {
        token: invite.secret.clone(),
        platform: Platform::current(),
    };
    let (control, reply) = net::hello(&invite.relays, &invite.pin, &key, intent).await?;
    control.relay.close(b"done").await;
    match reply {
        InitiatorReply::Enrolled { name, is_host } if is_host == as_host => {
            Ok(Enrolled { invite, key, name })
        }
        InitiatorReply::Refused(r) => Err(NetError::Refused(r).into()),
        _ => Err(
            NetError::Handshake(HandshakeError::PeerMisbehaved("unexpected enrolment reply"))
                .into(),
        ),
    }
}
