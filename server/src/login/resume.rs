//! A session resumed with its ticket (SPEC R6, M5): after its relay went
//! away, a client proves its device key and presents the session's
//! single-use ticket to any relay of the cluster. The ticket is checked
//! before anything about the host is said; it is spent only where the host
//! is, in one commit with the session's start, and only if the lockout rule
//! admits it as it would a right code (the same grant and record, the host
//! not locked). Like a login's, the session is registered before that
//! commit, so a revoke committed after it finds the session.

use std::{net::IpAddr, sync::Arc};

use latchkey_protocol::{
    frame::Refusal,
    ids::{HostName, PublicKey, RecordId, ResumeTicket, UserName},
};
use tracing::info;

use crate::{
    clock::now_unix,
    error::{blocking, ConnError},
    session::registry::{Intro, SessionEntry, Sessions},
    state::Shared,
};

/// What a resume came to.
pub(crate) enum Resumed {
    /// The session goes on here.
    Session(Box<SessionEntry>),
    /// The host is held by another relay: the client goes there.
    Redirect(String),
    /// Refused, with what the device is told.
    Refused(Refusal),
}

/// Decides `user`'s resume of a session on `host` with `ticket`, from a
/// device with key `device` at `source`.
pub(crate) async fn resume(
    shared: &Arc<Shared>,
    user: UserName,
    host: HostName,
    ticket: ResumeTicket,
    device: PublicKey,
    source: IpAddr,
) -> Result<Resumed, ConnError> {
    let store = shared.store.clone();
    let now = now_unix();
    let (s, u) = (store.clone(), user.clone());
    let key = blocking(move || s.user_key(&u)).await??;
    if key != Some(device) {
        info!(%user, %source, "resume refused: unknown device key");
        return Ok(Resumed::Refused(Refusal::UnknownDevice));
    }
    // Nothing about the host is said to a device without a live ticket for
    // it (as logins say nothing to outsiders).
    let (s, u, h, digest) = (store.clone(), user.clone(), host.clone(), ticket.digest());
    let valid = blocking(move || s.session_ticket_valid(digest, &u, &h, now)).await??;
    if !valid {
        info!(%user, %host, %source, "resume refused: unknown, used or expired ticket");
        shared.admission.penalize(source, std::time::Instant::now());
        return Ok(Resumed::Refused(Refusal::NotAllowed(
            "its resume ticket is unknown, used or expired".into(),
        )));
    }
    // The ticket is spent only where the host is: elsewhere the client is
    // sent on, and while the host is on no relay it asks again.
    if !shared.hosts.is_here(&host) {
        let (s, h) = (shared.clone(), host.clone());
        let elsewhere = blocking(move || s.host_elsewhere(&h)).await??;
        return Ok(match elsewhere {
            Some(relay) => Resumed::Redirect(relay),
            None => Resumed::Refused(Refusal::HostOffline),
        });
    }
    let session = Sessions::new_id();
    let mut entry = shared.sessions.register(
        &shared.settler,
        session,
        user.clone(),
        host.clone(),
        Intro {
            user_key: device,
            // Until the store says which record the session uses.
            record: RecordId([0; 16]),
        },
    );
    let (u, h) = (user.clone(), host.clone());
    let resumed =
        blocking(move || store.resume_session(digest, &u, &h, &session, source, now)).await??;
    match resumed {
        Ok((record, continued)) => {
            info!(%user, %host, %source, %session, "session resumed with a ticket");
            entry.intro.record = record;
            entry.continues = Some(continued);
            entry.started();
            entry.count_in(shared.metrics.session());
            entry.ending_because("client left");
            Ok(Resumed::Session(Box::new(entry)))
        }
        Err(why) => {
            info!(%user, %host, %source, "resume refused: {why}");
            Ok(Resumed::Refused(Refusal::NotAllowed(why.into())))
        }
    }
}
