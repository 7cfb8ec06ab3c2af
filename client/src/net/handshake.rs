//! The Noise IK handshake on a relay connection's first stream, bound to
//! the connection by the TLS exporter: a device says what it comes for (an
//! enrolment, a host's link, a user's request, a session's resumption) and
//! the relay welcomes, redirects or refuses it. Every step has a timeout.

use std::time::Duration;

use latchkey_protocol::{
    frame::{Intent, RelayToClient},
    handshake::{Initiator, InitiatorReply, Keypair},
    ids::{HostName, RelayPin, ResumeTicket, SessionId, UserName},
    HandshakeError,
};
use quinn::{RecvStream, SendStream};
use rand::rngs::OsRng;
use tokio::time::timeout;

use super::{
    dial::{connect_any, Liveness, Local, RelayConn},
    error::{relay_gave_up, NetError},
};
use crate::wire::{self, WireError};

/// TLS exporter label for the Noise prologue (the relay uses the same).
const EXPORTER_LABEL: &[u8] = b"EXPORTER-latchkey/1 channel binding";
/// How long to wait for the relay at each step.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(15);

/// The Noise prologue binding for this connection.
pub fn channel_binding(conn: &quinn::Connection) -> Result<[u8; 32], NetError> {
    let mut out = [0u8; 32];
    conn.export_keying_material(&mut out, EXPORTER_LABEL, b"")
        .map_err(|_| NetError::Local("cannot export TLS keying material".into()))?;
    Ok(out)
}

/// An authenticated connection: the control stream follows the handshake.
pub struct Control {
    /// The QUIC connection.
    pub relay: RelayConn,
    /// Control stream, relay-bound.
    pub send: SendStream,
    /// Control stream, from the relay.
    pub recv: RecvStream,
}

/// One step of a handshake with the relay at `relay`: at most
/// [`STEP_TIMEOUT`], and the relay's closing for a handshake that took too
/// long read as such.
pub(super) async fn step<T>(
    relay: &str,
    f: impl std::future::Future<Output = Result<T, WireError>>,
) -> Result<T, NetError> {
    timeout(STEP_TIMEOUT, f)
        .await
        .map_err(|_| NetError::RelayTimeout(relay.into()))?
        .map_err(|e| match e {
            WireError::Read(quinn::ReadError::ConnectionLost(c))
            | WireError::Write(quinn::WriteError::ConnectionLost(c))
                if relay_gave_up(&c) =>
            {
                NetError::RelayGaveUp
            }
            e => NetError::from(e),
        })
}

/// Runs a non-login handshake with the first of `relays` that answers;
/// returns the control stream and the reply.
pub async fn hello(
    relays: &[String],
    pin: &RelayPin,
    device: &Keypair,
    intent: Intent,
) -> Result<(Control, InitiatorReply), NetError> {
    hello_from(&Local::Any, relays, pin, device, intent).await
}

/// [`hello`] from a chosen local socket.
pub async fn hello_from(
    local: &Local,
    relays: &[String],
    pin: &RelayPin,
    device: &Keypair,
    intent: Intent,
) -> Result<(Control, InitiatorReply), NetError> {
    // Only long-lived links need to notice a dead relay fast.
    let liveness = match intent {
        Intent::Host { .. } | Intent::Resume { .. } => Liveness::Watchful,
        _ => Liveness::Patient,
    };
    let (rc, relay) = connect_any(local, relays, pin, liveness).await?;
    let binding = channel_binding(&rc.conn)?;
    let (mut send, mut recv) = rc.conn.open_bi().await?;
    let (init, msg1) = Initiator::start(&mut OsRng, device, &pin.noise_key, &binding, intent)?;
    step(&relay, wire::write_message(&mut send, &msg1)).await?;
    let msg2 = step(&relay, wire::read_message(&mut recv)).await?;
    let reply = init.read_msg2(&mut OsRng, &msg2, None)?;
    Ok((
        Control {
            relay: rc,
            send,
            recv,
        },
        reply,
    ))
}

/// Opens a device connection that must be welcomed (host agent, host
/// admin, user requests).
pub async fn welcome(
    relays: &[String],
    pin: &RelayPin,
    device: &Keypair,
    intent: Intent,
) -> Result<Control, NetError> {
    welcome_from(&Local::Any, relays, pin, device, intent).await
}

/// [`welcome`] from a chosen local socket.
pub async fn welcome_from(
    local: &Local,
    relays: &[String],
    pin: &RelayPin,
    device: &Keypair,
    intent: Intent,
) -> Result<Control, NetError> {
    let (control, reply) = hello_from(local, relays, pin, device, intent).await?;
    match reply {
        InitiatorReply::Welcome { .. } => Ok(control),
        InitiatorReply::Refused(r) => Err(NetError::Refused(r)),
        _ => Err(NetError::Handshake(HandshakeError::PeerMisbehaved(
            "unexpected reply",
        ))),
    }
}

/// Resumes a session whose relay went away, with its latest `ticket`, on
/// the first of `relays` that answers, dialled from `local`; returns the control stream and the
/// session's new id. [`NetError::Redirected`] names the relay that holds
/// the host; [`Refusal::HostOffline`] means no relay does yet (the ticket
/// is not spent: ask again).
///
/// [`Refusal::HostOffline`]: latchkey_protocol::frame::Refusal::HostOffline
pub async fn resume(
    local: &Local,
    relays: &[String],
    pin: &RelayPin,
    device: &Keypair,
    user: &UserName,
    host: &HostName,
    ticket: &ResumeTicket,
) -> Result<(Control, SessionId), NetError> {
    let intent = Intent::Resume {
        user: user.clone(),
        host: host.clone(),
        ticket: ticket.clone(),
    };
    let (mut control, reply) = hello_from(local, relays, pin, device, intent).await?;
    match reply {
        InitiatorReply::Welcome { .. } => {}
        InitiatorReply::Redirect { relay } => {
            control
                .relay
                .conn
                .close(quinn::VarInt::from_u32(0), b"redirected");
            return Err(NetError::Redirected(relay));
        }
        InitiatorReply::Refused(r) => return Err(NetError::Refused(r)),
        _ => {
            return Err(NetError::Handshake(HandshakeError::PeerMisbehaved(
                "unexpected reply to a resume",
            )))
        }
    }
    let relay = super::relay_text(control.relay.conn.remote_address());
    match step(&relay, wire::read_frame::<RelayToClient>(&mut control.recv)).await? {
        Some(RelayToClient::Resumed { session }) => Ok((control, session)),
        _ => Err(NetError::Handshake(HandshakeError::PeerMisbehaved(
            "a resumed session did not say its id",
        ))),
    }
}
