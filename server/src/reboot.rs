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
    let last = shared.reboots().get(host).map(|r| r.at);
    if let Some(last) = last {
        let since = last.elapsed();
        if since < min_interval {
            return Err(format!(
                "host '{host}' was asked to reboot {} s ago; try again in {} s",
                since.as_secs(),
                (min_interval - since).as_secs().max(1)
            ));
        }
    }
    let link = shared.hosts().get(host).map(|l| l.tx.clone());
    let Some(link) = link else {
        return Err(format!("host '{host}' is offline"));
    };
    let mut ticket = [0u8; 32];
    OsRng.fill_bytes(&mut ticket);
    let ticket = ResumeTicket(ticket);
    let deadline_secs = shared.config.reboot_deadline_secs.max(1);
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
    let at = Instant::now();
    shared.reboots().insert(
        host.clone(),
        Reboot {
            at,
            deadline: at + Duration::from_secs(deadline_secs),
            pending: true,
        },
    );
    if link
        .send(RelayToHost::Reboot { session, ticket })
        .await
        .is_err()
    {
        shared.reboots().remove(host);
        return Err(format!("host '{host}' went offline"));
    }
    info!(%user, %host, %session, deadline_secs, "reboot requested");
    Ok(())
}
