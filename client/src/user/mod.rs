//! What a remote user runs: enrolment, the host list, and sessions on
//! hosts (shell, exec, forward, copy).

pub mod copy;
pub mod desktop;
pub mod e2e;
pub mod exec;
pub mod forward;
pub mod proxy;
pub mod remote;
pub mod reuse;
pub mod shell;
pub mod ssh_config;
pub mod status;

use latchkey_protocol::{
    frame::{ClientToRelay, HostInfo, Intent, Refusal, RelayToClient},
    ids::{AccessCode, HostName},
    HandshakeError,
};

use crate::{
    config::{Home, UserConfig},
    enroll,
    net::{self, NetError, Session},
    wire,
};

/// Errors of user commands.
pub use crate::error::CommandError as UserError;

/// `latchkey enroll TOKEN`.
pub async fn enroll(home: &Home, token: &str) -> Result<String, UserError> {
    let e = enroll::redeem(token, false).await?;
    let name = e.name.parse().map_err(|_| {
        NetError::Handshake(HandshakeError::PeerMisbehaved(
            "relay sent an invalid user name",
        ))
    })?;
    let cfg = UserConfig {
        relay: e.invite.relays[0].clone(),
        other_relays: e.invite.relays[1..].to_vec(),
        pin: e.invite.pin.to_text(),
        user: name,
        viewer: Default::default(),
    };
    home.save_user(&cfg, &e.key)?;
    Ok(e.name)
}

/// `latchkey hosts`.
pub async fn hosts(home: &Home) -> Result<Vec<HostInfo>, UserError> {
    let (cfg, key) = home.user()?;
    let pin = cfg.pin()?;
    let mut control = net::welcome(
        &cfg.relays(),
        &pin,
        &key,
        Intent::User {
            user: cfg.user.clone(),
        },
    )
    .await?;
    wire::write_frame(&mut control.send, &ClientToRelay::ListHosts)
        .await
        .map_err(NetError::from)?;
    let reply = wire::read_frame::<RelayToClient>(&mut control.recv)
        .await
        .map_err(NetError::from)?;
    control.relay.close(b"done").await;
    match reply {
        Some(RelayToClient::Hosts(hosts)) => Ok(hosts),
        Some(RelayToClient::Refused(r)) => Err(NetError::Refused(r).into()),
        _ => Err(NetError::Handshake(HandshakeError::PeerMisbehaved("unexpected reply")).into()),
    }
}

/// Checks that `host` is among the hosts this user may reach, so that a
/// typo is told as one, not as a wrong code. The list is the user's own
/// (what `latchkey hosts` shows), so nothing new is told. A device the
/// relay does not know (removed, or enrolled again elsewhere) is told so;
/// if the list cannot be had otherwise, the check passes and the login
/// says what it says.
pub async fn check_host_is_yours(home: &Home, host: &HostName) -> Result<(), UserError> {
    let hosts = match hosts(home).await {
        Ok(hosts) => hosts,
        Err(e @ UserError::Net(NetError::Refused(Refusal::UnknownDevice))) => return Err(e),
        Err(_) => return Ok(()),
    };
    if hosts.iter().any(|h| h.name == *host) {
        return Ok(());
    }
    Err(UserError::UnknownHost {
        host: host.clone(),
        yours: hosts.into_iter().map(|h| h.name).collect(),
    })
}

/// Logs in to `host` as this device's user.
pub async fn open_session(
    home: &Home,
    host: &HostName,
    code: AccessCode,
) -> Result<Session, UserError> {
    let (cfg, key) = home.user()?;
    let pin = cfg.pin()?;
    Ok(net::login(&cfg.relays(), &pin, &key, &cfg.user, host, code).await?)
}
