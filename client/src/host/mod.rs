//! What runs on a host: enrolment, setting access codes, and the agent
//! that keeps the host reachable.

mod account;
mod agent;
mod channel_log;
mod channels;
mod e2e;
mod fair_share;
pub mod file_helper;
pub mod recording;
mod rights;
mod service_manager;
pub mod windows_service;

pub use agent::{dial, run, RelayRing};
pub use channel_log::CHANNEL_LOG;

use latchkey_protocol::{
    frame::{CodeTarget, HostToRelay, Intent, RelayToHost},
    handshake::CodeRegistration,
    ids::AccessCode,
    ksf::KsfProfile,
    HandshakeError,
};
use rand::rngs::OsRng;

use crate::{
    config::{Home, HostConfig},
    enroll,
    net::{self, NetError},
    wire,
};

/// Errors of host commands.
pub use crate::error::CommandError as HostError;

/// `latchkey host enroll TOKEN [--session-user NAME]`. The account is
/// checked before the token is spent.
pub async fn enroll(
    home: &Home,
    token: &str,
    session_user: Option<String>,
) -> Result<String, HostError> {
    account::SessionAccount::for_setting(session_user.as_deref()).map_err(NetError::Local)?;
    let e = enroll::redeem(token, true).await?;
    let name = e.name.parse().map_err(|_| {
        NetError::Handshake(HandshakeError::PeerMisbehaved(
            "relay sent an invalid host name",
        ))
    })?;
    let mut cfg = HostConfig::new(&e.invite.relays, e.invite.pin.to_text(), name);
    cfg.session_user = session_user;
    home.save_host(&cfg, &e.key)?;
    Ok(e.name)
}

/// `latchkey host set-code` and `latchkey host reset-code --user USER`:
/// OPAQUE registration over the host's own authenticated connection; the
/// code is stretched here and never leaves the host.
pub async fn set_code(
    home: &Home,
    target: CodeTarget,
    code: AccessCode,
    ksf: KsfProfile,
) -> Result<(), HostError> {
    let (cfg, key) = home.host()?;
    let pin = cfg.pin()?;
    let mut control = net::welcome(
        &cfg.relays(),
        &pin,
        &key,
        Intent::HostAdmin {
            host: cfg.host.clone(),
        },
    )
    .await?;
    let (registration, request) = CodeRegistration::start(&mut OsRng, &code, ksf)?;
    wire::write_frame(
        &mut control.send,
        &HostToRelay::RegisterCode {
            target: target.clone(),
            ksf,
            request,
        },
    )
    .await?;
    let (response, record) = match wire::read_frame::<RelayToHost>(&mut control.recv).await? {
        Some(RelayToHost::CodeChallenge { response, record }) => (response, record),
        Some(RelayToHost::Refused(r)) => return Err(NetError::Refused(r).into()),
        _ => {
            return Err(
                HandshakeError::PeerMisbehaved("unexpected reply to a code registration").into(),
            )
        }
    };
    let (upload, export_key) =
        tokio::task::spawn_blocking(move || registration.finish(&mut OsRng, &code, &response))
            .await
            .map_err(|_| NetError::Local("key stretching failed".into()))??;
    // Kept before the upload: a key whose upload then fails is never used,
    // but a record without its key on the host could open no session.
    let only_for = match &target {
        CodeTarget::Grant(user) => Some(user),
        _ => None,
    };
    home.save_export_key(&record, &export_key, only_for)?;
    wire::write_frame(&mut control.send, &HostToRelay::UploadCode { upload }).await?;
    let reply = wire::read_frame::<RelayToHost>(&mut control.recv).await?;
    control.relay.close(b"done").await;
    match reply {
        Some(RelayToHost::CodeSet { target: t }) if t == target => Ok(()),
        Some(RelayToHost::Refused(r)) => Err(NetError::Refused(r).into()),
        _ => Err(HandshakeError::PeerMisbehaved("unexpected reply to a code upload").into()),
    }
}
