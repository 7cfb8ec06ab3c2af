//! Logging in to a host with its access code: the Noise handshake carries
//! OPAQUE (key stretching on a blocking thread), a busy relay is asked again
//! with backoff, and a relay that does not hold the host's agent redirects
//! the login, once, to the relay of its cluster that does.

use latchkey_protocol::{
    e2e::ExportKey,
    frame::{LoginOutcome, Refusal},
    handshake::{Initiator, InitiatorReply, Keypair},
    ids::{AccessCode, HostName, RelayPin, SessionId, UserName},
    HandshakeError,
};
use rand::rngs::OsRng;

use super::{
    dial::{check_redirect, connect_any, Liveness, Local},
    error::NetError,
    handshake::{channel_binding, step, Control},
};
use crate::wire;

/// An open session with a host.
pub struct Session {
    /// The session id the relay gave.
    pub id: SessionId,
    /// The connection and control stream.
    pub control: Control,
    /// OPAQUE's export key from the login: the session's end-to-end psk
    /// comes from it (`latchkey_protocol::e2e`).
    pub export_key: ExportKey,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Session({})", self.id)
    }
}

/// Logs in to `host` with the access code (SPEC A1-A3), on the first of
/// `relays` that answers. Key stretching runs on a blocking thread. The
/// code is tried once; a wrong code is an error, never retried.
pub async fn login(
    relays: &[String],
    pin: &RelayPin,
    device: &Keypair,
    user: &UserName,
    host: &HostName,
    code: AccessCode,
) -> Result<Session, NetError> {
    login_from(&Local::Any, relays, pin, device, user, host, code).await
}

/// [`login`] from a chosen local socket. A relay that holds no agent for
/// the host sends the login to the relay of its cluster that does, before
/// anything is tried; that redirect is followed once.
pub async fn login_from(
    local: &Local,
    relays: &[String],
    pin: &RelayPin,
    device: &Keypair,
    user: &UserName,
    host: &HostName,
    code: AccessCode,
) -> Result<Session, NetError> {
    match login_on(local, relays, pin, device, user, host, code.clone()).await {
        Err(NetError::Redirected(to)) => {
            check_redirect(&to)?;
            match login_on(
                local,
                std::slice::from_ref(&to),
                pin,
                device,
                user,
                host,
                code,
            )
            .await
            {
                Err(NetError::Redirected(_)) => Err(NetError::HostMoving(host.clone())),
                Err(
                    e @ (NetError::RelayTimeout(_)
                    | NetError::Unreachable { .. }
                    | NetError::RelayGaveUp
                    | NetError::Resolve(_)),
                ) => Err(NetError::HostsRelayUnreachable {
                    host: host.clone(),
                    relay: to,
                    why: e.to_string(),
                }),
                other => other,
            }
        }
        other => other,
    }
}

/// A login on the first of `relays` that answers. A "busy" answer (other
/// attempts on the host still being decided) spends nothing, so it is tried
/// again a few times, with jittered backoff, for up to about ten seconds.
async fn login_on(
    local: &Local,
    relays: &[String],
    pin: &RelayPin,
    device: &Keypair,
    user: &UserName,
    host: &HostName,
    code: AccessCode,
) -> Result<Session, NetError> {
    use backon::{ExponentialBuilder, Retryable};
    let backoff = ExponentialBuilder::default()
        .with_min_delay(std::time::Duration::from_millis(100))
        .with_max_delay(std::time::Duration::from_secs(2))
        .with_jitter()
        .with_max_times(8);
    let attempt = || login_once(local, relays, pin, device, user, host, code.clone());
    attempt
        .retry(backoff)
        .when(|e| matches!(e, NetError::Refused(Refusal::Busy)))
        .await
}

/// One login, without retrying.
async fn login_once(
    local: &Local,
    relays: &[String],
    pin: &RelayPin,
    device: &Keypair,
    user: &UserName,
    host: &HostName,
    code: AccessCode,
) -> Result<Session, NetError> {
    let (rc, relay) = connect_any(local, relays, pin, Liveness::Watchful).await?;
    let binding = channel_binding(&rc.conn)?;
    let (mut send, mut recv) = rc.conn.open_bi().await?;
    let (init, msg1) = Initiator::start_login(
        &mut OsRng,
        device,
        &pin.noise_key,
        &binding,
        user.clone(),
        host.clone(),
        &code,
    )?;
    step(&relay, wire::write_message(&mut send, &msg1)).await?;
    let msg2 = step(&relay, wire::read_message(&mut recv)).await?;
    let reply = tokio::task::spawn_blocking(move || init.read_msg2(&mut OsRng, &msg2, Some(&code)))
        .await
        .map_err(|_| NetError::Local("key stretching failed".into()))??;
    match reply {
        InitiatorReply::SendKe3 { msg3, awaiting } => {
            step(&relay, wire::write_message(&mut send, &msg3)).await?;
            let msg4 = step(&relay, wire::read_message(&mut recv)).await?;
            match awaiting.read_outcome(&msg4)? {
                (LoginOutcome::Accepted { session }, Some(export_key)) => Ok(Session {
                    id: session,
                    control: Control {
                        relay: rc,
                        send,
                        recv,
                    },
                    export_key,
                }),
                (LoginOutcome::Accepted { .. }, None) => Err(NetError::Handshake(
                    HandshakeError::PeerMisbehaved("accepted a login that did not check out"),
                )),
                (outcome, _) => match outcome {
                    LoginOutcome::Locked => Err(NetError::Locked(host.clone())),
                    LoginOutcome::Refused(r) => Err(NetError::Refused(r)),
                    _ => Err(NetError::WrongCode(host.clone())),
                },
            }
        }
        InitiatorReply::WrongCode { abort, awaiting } => {
            // Tell the relay at once and wait until it has the failure on
            // record, so what the user does next sees the counter as it is.
            let _ = step(&relay, wire::write_message(&mut send, &abort)).await;
            if let Ok(msg4) = step(&relay, wire::read_message(&mut recv)).await {
                let _ = awaiting.read_outcome(&msg4);
            }
            rc.conn.close(quinn::VarInt::from_u32(0), b"wrong code");
            Err(NetError::WrongCode(host.clone()))
        }
        InitiatorReply::Locked => Err(NetError::Locked(host.clone())),
        InitiatorReply::Refused(r) => Err(NetError::Refused(r)),
        InitiatorReply::Redirect { relay } => {
            rc.conn.close(quinn::VarInt::from_u32(0), b"redirected");
            Err(NetError::Redirected(relay))
        }
        _ => Err(NetError::Handshake(HandshakeError::PeerMisbehaved(
            "unexpected reply",
        ))),
    }
}
