//! In-session reboot (SPEC R1-R4): the relay checks the grant and the
//! host's policy, rate-limits, issues a single-use resume ticket bound to
//! the host and session (only its digest is stored), and asks the host to
//! reboot. Sessions on the host park until it presents the ticket; the
//! reboots in progress and their rules are [`super::reboots`]'s.

use std::{sync::Arc, time::Duration};

use latchkey_protocol::{
    frame::RelayToHost,
    ids::{HostName, ResumeTicket, SessionId, UserName},
    text::Shown,
};
use rand::{rngs::OsRng, RngCore};
use tracing::info;

use crate::{
    clock::now_unix,
    metrics::RebootResult,
    state::Shared,
    store::{AuditEvent, Event, StoreError},
};

/// Asks `host` to reboot on behalf of `user`'s `session`; the error is the
/// reason to show the user.
pub(crate) async fn request(
    shared: &Arc<Shared>,
    user: &UserName,
    host: &HostName,
    session: SessionId,
) -> Result<(), String> {
    let min_interval = Duration::from_secs(shared.config.reboot_min_interval_secs);
    let deadline_secs = shared.config.reboot_deadline_secs.max(1);
    let previous = shared.reboots.claim(
        host,
        session,
        min_interval,
        Duration::from_secs(deadline_secs),
    )?;
    let result = ask(shared, user, host, session, deadline_secs).await;
    if result.is_err() {
        shared.reboots.give_back(host, previous);
    }
    result
}

/// Issues the ticket and asks the host, once the rate limit is claimed.
async fn ask(
    shared: &Arc<Shared>,
    user: &UserName,
    host: &HostName,
    session: SessionId,
    deadline_secs: u64,
) -> Result<(), String> {
    let Some(link) = shared.hosts.tx(host) else {
        return Err(format!("host '{host}' is offline"));
    };
    let mut ticket = [0u8; 32];
    OsRng.fill_bytes(&mut ticket);
    let ticket = ResumeTicket(ticket);
    let store = shared.store.clone();
    let (digest, h, u, s, now) = (
        ticket.digest(),
        host.clone(),
        user.clone(),
        session.to_string(),
        now_unix(),
    );
    let expires_at = now + i64::try_from(deadline_secs).unwrap_or(i64::MAX / 2);
    let created = tokio::task::spawn_blocking(move || {
        store.create_ticket(digest, &h, &u, &s, expires_at, now)
    })
    .await
    .map_err(|_| "the relay failed; try again".to_string())?;
    match created {
        Ok(()) => {}
        Err(StoreError::Refused(why)) => return Err(why),
        Err(e) => {
            tracing::warn!("store: {e}");
            return Err("the relay failed; try again".into());
        }
    }
    shared.reboots.asked(host);
    if link
        .send(Box::new(RelayToHost::Reboot { session, ticket }))
        .await
        .is_err()
    {
        return Err(format!("host '{host}' went offline"));
    }
    info!(%user, %host, %session, deadline_secs, "reboot requested");
    Ok(())
}

/// The longest reason from a host that is passed on and audited.
const MAX_REASON: usize = 512;

/// The host's reboot command failed and the host stays up. The rate-limit
/// claim is given back (the user may try again at once) and the reboot is
/// no longer in progress, so a later drop of the host parks no session as
/// if it were rebooting; the session that asked is told why.
pub(crate) async fn failed(
    shared: &Arc<Shared>,
    host: &HostName,
    session: SessionId,
    reason: String,
) {
    let reason: String = reason.chars().take(MAX_REASON).collect();
    shared.reboots.forget(host, session);
    shared.metrics.reboot(RebootResult::Failed);
    tracing::warn!(%host, %session, reason = %Shown(&reason), "reboot failed on the host");
    let store = shared.store.clone();
    let (h, detail, now) = (
        host.clone(),
        format!("session {session}: {reason}"),
        now_unix(),
    );
    let audited = tokio::task::spawn_blocking(move || {
        store.audit(
            Event {
                event: AuditEvent::RebootFailed,
                host: Some(h.as_str()),
                user: None,
                source: None,
                detail: Some(detail),
            },
            now,
        )
    })
    .await;
    if !matches!(audited, Ok(Ok(()))) {
        tracing::warn!(%host, "could not audit the failed reboot");
    }
    let _ = shared.reboots.failed.send((session, reason));
}
