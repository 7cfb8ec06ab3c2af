//! In-session reboot (SPEC R1-R4): the relay checks the grant and the
//! host's policy, rate-limits, issues a single-use resume ticket bound to
//! the host and session (only its digest is stored), and asks the host to
//! reboot. Sessions on the host park until it presents the ticket.

use std::{sync::Arc, time::Duration};

use latchkey_protocol::{
    frame::RelayToHost,
    ids::{HostName, ResumeTicket, SessionId, UserName},
};
use rand::{rngs::OsRng, RngCore};
use tokio::time::Instant;
use tracing::info;

use crate::{now_unix, store::StoreError, Reboot, Shared};

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
    // The rate limit is checked and claimed under one lock, so two requests
    // cannot both pass; a request that fails later gives its claim back.
    let previous = {
        let mut reboots = shared.reboots();
        if let Some(last) = reboots.get(host).map(|r| r.at) {
            let since = last.elapsed();
            if since < min_interval {
                return Err(format!(
                    "host '{host}' was asked to reboot {} s ago; try again in {} s",
                    since.as_secs(),
                    (min_interval - since).as_secs().max(1)
                ));
            }
        }
        let at = Instant::now();
        reboots.insert(
            host.clone(),
            Reboot {
                at,
                deadline: at + Duration::from_secs(deadline_secs),
                pending: false,
                session,
            },
        )
    };
    let give_back = || {
        let mut reboots = shared.reboots();
        match previous {
            Some(p) => reboots.insert(host.clone(), p),
            None => reboots.remove(host),
        };
    };
    let result = ask(shared, user, host, session, deadline_secs).await;
    if result.is_err() {
        give_back();
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
    let link = shared.hosts().get(host).map(|l| l.tx.clone());
    let Some(link) = link else {
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
    if let Some(r) = shared.reboots().get_mut(host) {
        r.pending = true;
    }
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
    {
        // Only the reboot it reports on: a stray report frees no claim.
        let mut reboots = shared.reboots();
        if reboots.get(host).is_some_and(|r| r.session == session) {
            reboots.remove(host);
        }
    }
    shared.metrics.reboot(crate::metrics::RebootResult::Failed);
    tracing::warn!(%host, %session, %reason, "reboot failed on the host");
    let store = shared.store.clone();
    let (h, detail, now) = (
        host.clone(),
        format!("session {session}: {reason}"),
        now_unix(),
    );
    let audited = tokio::task::spawn_blocking(move || {
        store.audit(
            crate::store::Event {
                event: "reboot-failed",
                host: Some(h.as_str()),
                detail: Some(detail),
                ..Default::default()
            },
            now,
        )
    })
    .await;
    if !matches!(audited, Ok(Ok(()))) {
        tracing::warn!(%host, "could not audit the failed reboot");
    }
    let _ = shared.reboot_failed.send((session, reason));
}
