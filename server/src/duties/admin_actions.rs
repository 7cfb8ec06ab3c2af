//! Admin actions made anywhere (this relay's console, another relay, the
//! admin CLI) reach this relay's live sessions through the store's feed of
//! audit rows: a revoke ends the user's sessions on the host within a tick
//! (SPEC S4, M4), whatever the mail server does; a lock ends every session
//! on the host (X4); a device enrolled again loses what its old key holds
//! here, and a removed one all it holds.

use std::{sync::Arc, time::Duration};

use latchkey_protocol::frame::RelayToHost;
use tracing::{info, warn};

use crate::{
    error::logged_store_call,
    state::Shared,
    store::{AuditEvent, AuditRow, Store, StoreError},
};

/// How often the relay looks for admin actions.
const TICK: Duration = Duration::from_millis(200);

async fn blocking<T: Send + 'static>(
    shared: &Arc<Shared>,
    f: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
) -> Option<T> {
    logged_store_call(&shared.store, f).await
}

/// Waits a moment before trying the store again; `true` if the relay is
/// stopping meanwhile.
async fn paused(shared: &Shared) -> bool {
    tokio::select! {
        _ = shared.shutdown.cancelled() => true,
        _ = tokio::time::sleep(TICK * 5) => false,
    }
}

/// Applies admin actions made outside the relay (the admin CLI) to live
/// sessions, until shutdown. The feed picks up where it stopped after an
/// error, so it is opened again only if its task was lost.
pub(crate) async fn run(shared: Arc<Shared>) {
    let mut feed = None;
    loop {
        let mut current = match feed.take() {
            Some(current) => current,
            None => match blocking(&shared, |s| s.event_feed()).await {
                Some(new) => new,
                None if paused(&shared).await => return,
                None => continue,
            },
        };
        let next = tokio::task::spawn_blocking(move || {
            let events = current.next(TICK);
            (current, events)
        });
        let (current, events) = tokio::select! {
            biased;
            _ = shared.shutdown.cancelled() => return,
            joined = next => match joined {
                Ok(pair) => pair,
                Err(e) => {
                    warn!("the audit feed's task failed ({e}); opening it again");
                    continue;
                }
            },
        };
        feed = Some(current);
        match events {
            Ok(events) => {
                for event in &events {
                    end_revoked_sessions(&shared, event);
                    if event.is(AuditEvent::Rights) {
                        // On a task of its own: a host slow to take it
                        // holds up no other admin action.
                        tokio::spawn(tell_host_rights(shared.clone(), event.clone()));
                    }
                    end_locked_sessions(&shared, event);
                    if event.is(AuditEvent::Enrolled) {
                        end_replaced_device(&shared, event).await;
                    }
                    end_removed_device(&shared, event);
                }
            }
            Err(e) => {
                warn!("reading the audit log: {e}");
                if paused(&shared).await {
                    return;
                }
            }
        }
    }
}

/// A revoke, or a grant's end, ends the user's live sessions on the host.
fn end_revoked_sessions(shared: &Shared, event: &AuditRow) {
    let how = if event.is(AuditEvent::Revoke) {
        "was revoked"
    } else if event.is(AuditEvent::GrantExpired) {
        "expired"
    } else {
        return;
    };
    if let (Some(host), Some(user)) = (&event.host, &event.user) {
        let ended =
            shared
                .sessions
                .end(host, user, &format!("your shared access to '{host}' {how}"));
        if ended > 0 {
            info!(%host, %user, sessions = ended, "shared access {how}: live sessions ended");
        }
    }
}

/// A shared user's rights changed, at any relay of the store: the relay
/// that holds the host tells it what they are now (read from the store, so
/// the newest wins whatever order the rows come in; the host keeps the
/// newest stamp it was told).
async fn tell_host_rights(shared: Arc<Shared>, event: AuditRow) {
    let (Some(host), Some(user)) = (&event.host, &event.user) else {
        return;
    };
    let (Ok(host), Ok(user)) = (
        host.parse::<latchkey_protocol::ids::HostName>(),
        user.parse::<latchkey_protocol::ids::UserName>(),
    ) else {
        return;
    };
    let Some(tx) = shared.hosts.tx(&host) else {
        return;
    };
    let (h, u) = (host.clone(), user.clone());
    let Some(Some(rights)) = blocking(&shared, move |s| s.grant_rights(&h, &u)).await else {
        return;
    };
    let frame = RelayToHost::Rights {
        user: user.clone(),
        rights,
    };
    match tokio::time::timeout(TELL_HOST, tx.send(Box::new(frame))).await {
        Ok(Ok(())) => info!(%host, %user, "rights changed: host told"),
        // A host that cannot take it now reads them again with the
        // session's next announcement; until then its sessions end, so
        // nothing runs under rights taken away.
        _ => {
            let ended = shared.sessions.end(
                host.as_str(),
                user.as_str(),
                &format!("your rights on '{host}' changed; connect again"),
            );
            warn!(%host, %user, sessions = ended, "rights changed: the host could not be told in time, so the user's sessions ended");
        }
    }
}

/// How long the relay waits for room in a host's queue of control frames
/// to tell it of changed rights.
const TELL_HOST: Duration = Duration::from_secs(5);

/// A lock, at any relay of the store, ends every live session on the host
/// (SPEC X4): a locked host is locked for the sessions that were already
/// in, kept ones included, not only for new logins.
fn end_locked_sessions(shared: &Shared, event: &AuditRow) {
    if !event.is(AuditEvent::HostLocked) {
        return;
    }
    if let Some(host) = &event.host {
        let ended = shared.sessions.end_on_host(
            host,
            &format!(
                "'{host}' was locked after failed access-code attempts; an admin must unlock it"
            ),
        );
        if ended > 0 {
            info!(%host, sessions = ended, "locked: live sessions ended");
        }
    }
}

/// A device enrolled again, at any relay of the store: what its old key
/// holds here ends. The key it has now is read from the store (the audit
/// row may be older than a later enrolment).
async fn end_replaced_device(shared: &Arc<Shared>, event: &AuditRow) {
    let (name, is_host) = match (&event.host, &event.user) {
        (Some(host), _) => (host.clone(), true),
        (None, Some(user)) => (user.clone(), false),
        (None, None) => return,
    };
    let key = if is_host {
        let Ok(host) = name.parse::<latchkey_protocol::ids::HostName>() else {
            return;
        };
        blocking(shared, move |s| s.host_key(&host)).await
    } else {
        let Ok(user) = name.parse::<latchkey_protocol::ids::UserName>() else {
            return;
        };
        blocking(shared, move |s| s.user_key(&user)).await
    };
    if let Some(Some(key)) = key {
        shared.device_replaced(&name, is_host, Some(&key));
    }
}

/// A user or host was removed, at any relay of the store: what it holds
/// here ends (a removed row never gets a key back; inviting the name again
/// makes a new device, which enrols after this row).
fn end_removed_device(shared: &Shared, event: &AuditRow) {
    let removed = if event.is(AuditEvent::HostRemoved) {
        event.host.as_deref().map(|h| (h, true))
    } else if event.is(AuditEvent::UserRemoved) {
        event.user.as_deref().map(|u| (u, false))
    } else {
        None
    };
    if let Some((name, is_host)) = removed {
        shared.device_replaced(name, is_host, None);
    }
}
