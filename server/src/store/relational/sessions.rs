//! Sessions after their login: their ends, the tickets that let a client
//! resume one on another relay when its relay goes away, and the tickets
//! that let a host's session come back after an in-session reboot.

use std::net::IpAddr;

use latchkey_protocol::{
    ids::{HostName, RecordId, SessionId, UserName},
    rights::Right,
};

use super::{
    attempts::{open_sessions, tally},
    audit::{event, insert_audit},
    grants::{self, grant_is_current},
    outbox::enqueue_for_owner,
    rows::{host_ids, user_id},
};
use crate::{
    rules::{
        lockout::{self, Proof, Settlement, VoidReason},
        session_cap,
    },
    store::{
        notice,
        sql::{args, Tx},
        AuditEvent, Event, SessionEnd, StoreError, UnixTime,
    },
};

/// Ends the open session `id` in the caller's transaction, its end
/// audited; a final end also spends its resume ticket and tells a
/// secondary user's owner (SPEC S3). `false` if it was not open.
pub(super) fn end(
    tx: &mut dyn Tx,
    id: &str,
    reason: &str,
    how: SessionEnd,
    now: UnixTime,
) -> Result<bool, StoreError> {
    let Some(r) = tx.opt_row(
        "SELECT s.host_id, h.owner_id, s.user_id, h.name, u.name, s.started_at FROM sessions s
         JOIN hosts h ON h.id = s.host_id JOIN users u ON u.id = s.user_id
         WHERE s.id = ?1 AND s.ended_at IS NULL",
        args![id],
    )?
    else {
        return Ok(false);
    };
    let (host_id, owner_id, user_id) = (r.int(0)?, r.int(1)?, r.int(2)?);
    let (host, user, started_at) = (r.text(3)?, r.text(4)?, r.int(5)?);
    tx.exec(
        "UPDATE sessions SET ended_at = ?1 WHERE id = ?2",
        args![now, id],
    )?;
    let e = Event {
        detail: Some(format!("session {id}: {reason}")),
        ..event(AuditEvent::SessionEnd, Some(&host), Some(&user))
    };
    insert_audit(tx, &e, now)?;
    if how == SessionEnd::Final {
        tx.exec("DELETE FROM session_tickets WHERE session = ?1", args![id])?;
        if user_id != owner_id && ends_a_run(tx, id, host_id, user_id, started_at, now)? {
            enqueue_for_owner(tx, host_id, now, |owner| {
                notice::secondary_session_ended(&host, owner, &user)
            })?;
        }
    }
    Ok(true)
}

/// Whether the end of session `id` (started at `started_at`) is the one
/// the owner hears of: the last of a run. A run is the user's sessions on
/// the host with gaps under [`notice::SESSION_RUN_GAP_SECS`]; its end is
/// told once, when no other session of the user is open there and the
/// run's previous end (kept on the grant) is older than the gap. A user
/// without a grant (revoked, removed) is not told of: their revoke sent
/// its own notice.
fn ends_a_run(
    tx: &mut dyn Tx,
    id: &str,
    host_id: i64,
    user_id: i64,
    started_at: UnixTime,
    now: UnixTime,
) -> Result<bool, StoreError> {
    let others_open = tx
        .row(
            "SELECT COUNT(*) FROM sessions
             WHERE host_id = ?1 AND user_id = ?2 AND id <> ?3 AND ended_at IS NULL",
            args![host_id, user_id, id],
        )?
        .int(0)?;
    if others_open > 0 {
        return Ok(false);
    }
    let Some(grant) = tx.opt_row(
        "SELECT run_ended_at FROM grants WHERE host_id = ?1 AND user_id = ?2",
        args![host_id, user_id],
    )?
    else {
        return Ok(false);
    };
    let previous_end = grant.opt_int(0)?;
    tx.exec(
        "UPDATE grants SET run_ended_at = ?3 WHERE host_id = ?1 AND user_id = ?2",
        args![host_id, user_id, now],
    )?;
    Ok(previous_end.is_none_or(|end| end < started_at - notice::SESSION_RUN_GAP_SECS))
}

/// Ends every open session, as a relay's last run left them; returns how
/// many.
pub(super) fn end_open(tx: &mut dyn Tx, now: UnixTime) -> Result<usize, StoreError> {
    let open = tx.rows("SELECT id FROM sessions WHERE ended_at IS NULL", args![])?;
    for r in &open {
        end(
            tx,
            &r.text(0)?,
            "the relay stopped with it open",
            SessionEnd::Continues,
            now,
        )?;
    }
    Ok(open.len())
}

/// Gives `session` a new resume ticket while its grant still has
/// `record` and the host is not locked; forgets expired tickets.
#[allow(clippy::too_many_arguments)]
pub(super) fn issue_ticket(
    tx: &mut dyn Tx,
    session: &SessionId,
    digest: [u8; 32],
    host: &HostName,
    user: &UserName,
    record: &RecordId,
    expires_at: UnixTime,
    now: UnixTime,
) -> Result<bool, StoreError> {
    let id = session.to_string();
    tx.exec(
        "DELETE FROM session_tickets WHERE expires_at <= ?1 OR session = ?2",
        args![now, &id],
    )?;
    let issued = tx.exec(
        "INSERT INTO session_tickets
             (session, digest, host_id, user_id, record_id, generation, expires_at)
         SELECT ?1, ?2, g.host_id, g.user_id, g.record_id, g.generation, ?3
         FROM grants g JOIN hosts h ON h.id = g.host_id JOIN users u ON u.id = g.user_id
         WHERE h.name = ?4 AND u.name = ?5 AND g.record_id = ?6 AND h.locked_at IS NULL",
        args![
            &id,
            &digest[..],
            expires_at,
            host.as_str(),
            user.as_str(),
            &record.0[..]
        ],
    )?;
    Ok(issued > 0)
}

/// Whether `digest` is an unexpired resume ticket of `user` on `host`.
pub(super) fn ticket_valid(
    tx: &mut dyn Tx,
    digest: [u8; 32],
    user: &UserName,
    host: &HostName,
    now: UnixTime,
) -> Result<bool, StoreError> {
    Ok(tx
        .opt_row(
            "SELECT 1 FROM session_tickets t JOIN hosts h ON h.id = t.host_id
             JOIN users u ON u.id = t.user_id
             WHERE t.digest = ?1 AND h.name = ?2 AND u.name = ?3 AND t.expires_at > ?4",
            args![&digest[..], host.as_str(), user.as_str(), now],
        )?
        .is_some())
}

/// Spends a resume ticket and, if the rule admits it, continues its
/// session as `session` on the serving relay `relay`.
#[allow(clippy::too_many_arguments)]
pub(super) fn resume(
    tx: &mut dyn Tx,
    digest: [u8; 32],
    user: &UserName,
    host: &HostName,
    session: &SessionId,
    source: IpAddr,
    now: UnixTime,
    relay: Option<&str>,
) -> Result<Result<(RecordId, SessionId), &'static str>, StoreError> {
    let id = session.to_string();
    let Some(t) = tx.opt_row(
        "SELECT t.session, t.host_id, t.user_id, t.record_id, t.generation, t.expires_at
         FROM session_tickets t JOIN hosts h ON h.id = t.host_id
         JOIN users u ON u.id = t.user_id
         WHERE t.digest = ?1 AND h.name = ?2 AND u.name = ?3",
        args![&digest[..], host.as_str(), user.as_str()],
    )?
    else {
        return Ok(Err("the resume ticket is unknown or was used"));
    };
    let (old, host_id, user_id) = (t.text(0)?, t.int(1)?, t.int(2)?);
    let (record, generation, expires_at) = (t.blob(3)?, t.int(4)?, t.int(5)?);
    // Single use, whatever follows.
    tx.exec(
        "DELETE FROM session_tickets WHERE digest = ?1",
        args![&digest[..]],
    )?;
    if expires_at <= now {
        return Ok(Err("the resume ticket expired"));
    }
    let grant_current = grant_is_current(tx, host_id, user_id, &record, generation, now)?;
    // The ticket proves what the login's right code did; the rule
    // decides as for a verdict. A resumed session takes its old one's
    // place if the old one still holds it; one already ended (its relay
    // stopped) gave its place up, and the user's cap applies as to a login.
    let tally = tally(tx, host_id)?;
    let mut open = open_sessions(tx, host_id, user_id)?;
    let old_still_open = tx
        .opt_row(
            "SELECT 1 FROM sessions WHERE id = ?1 AND ended_at IS NULL",
            args![&old],
        )?
        .is_some();
    if old_still_open {
        open.on_host = open.on_host.saturating_sub(1);
        open.in_all = open.in_all.saturating_sub(1);
    }
    let room = session_cap::room_for_one_more(open);
    let refused = match lockout::settle(Proof::RightCode, grant_current, &tally, room) {
        Settlement::Success => None,
        Settlement::Void(VoidReason::Locked) => Some("the host is locked"),
        Settlement::Void(VoidReason::SessionsFull(_)) => {
            Some("you hold as many sessions as one user may: end one, then log in again")
        }
        _ => Some("your access was revoked or its code replaced since you logged in"),
    };
    if let Some(why) = refused {
        let e = Event {
            source: Some(source),
            detail: Some(format!("session {old}: {why}")),
            ..event(
                AuditEvent::SessionResumeRefused,
                Some(host.as_str()),
                Some(user.as_str()),
            )
        };
        insert_audit(tx, &e, now)?;
        return Ok(Err(why));
    }
    let record = RecordId(
        record
            .try_into()
            .map_err(|_| StoreError::Corrupt("record id is not 16 bytes".into()))?,
    );
    end(
        tx,
        &old,
        &format!("its relay went away; it continues as session {id}"),
        SessionEnd::Continues,
        now,
    )?;
    tx.exec(
        "INSERT INTO sessions (id, host_id, user_id, started_at, relay_id)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        args![&id, host_id, user_id, now, relay],
    )?;
    let e = Event {
        source: Some(source),
        detail: Some(format!("session {id} continues session {old}")),
        ..event(
            AuditEvent::SessionResume,
            Some(host.as_str()),
            Some(user.as_str()),
        )
    };
    insert_audit(tx, &e, now)?;
    let continued = SessionId(
        latchkey_protocol::ids::from_text(&old, "session id")
            .map_err(|_| StoreError::Corrupt("a resume ticket's session id".into()))?,
    );
    Ok(Ok((record, continued)))
}

/// Stores the digest of the ticket a host presents after the reboot
/// `user` asked for in `session`, once the grant and shared access are
/// checked (SPEC R1).
pub(super) fn create_reboot_ticket(
    tx: &mut dyn Tx,
    digest: [u8; 32],
    host: &HostName,
    user: &UserName,
    session: &str,
    expires_at: UnixTime,
    now: UnixTime,
) -> Result<(), StoreError> {
    let (host_id, _) = host_ids(tx, host.as_str())?;
    let user_id = user_id(tx, user.as_str())?;
    let shared = tx
        .row(
            "SELECT shared_access FROM hosts WHERE id = ?1",
            args![host_id],
        )?
        .flag(0)?;
    if !shared {
        return Err(StoreError::Refused(format!(
            "in-session reboot needs shared access enabled on host '{host}'"
        )));
    }
    match grants::rights_of(tx, host, user)? {
        None => {
            return Err(StoreError::Refused(format!(
                "'{user}' has no access to host '{host}'"
            )))
        }
        // Here, in the same commit as the ticket, so a right taken away
        // a moment ago is never used (the host checks it again).
        Some(granted) if !granted.rights.allows(Right::Reboot) => {
            return Err(StoreError::Refused(Right::Reboot.refusal(host.as_str())))
        }
        Some(_) => {}
    }
    if tx
        .opt_row(
            "SELECT 1 FROM grants WHERE host_id = ?1 AND user_id = ?2 AND record_id IS NOT NULL",
            args![host_id, user_id],
        )?
        .is_none()
    {
        return Err(StoreError::Refused(format!(
            "'{user}' has no access to host '{host}'"
        )));
    }
    tx.exec(
        "INSERT INTO resume_tickets (digest, host_id, user_id, session, created_at, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        args![&digest[..], host_id, user_id, session, now, expires_at],
    )?;
    let e = Event {
        detail: Some(format!("session {session}")),
        ..event(AuditEvent::Reboot, Some(host.as_str()), Some(user.as_str()))
    };
    insert_audit(tx, &e, now)
}

/// Spends a reboot ticket presented by `host`: the session it was
/// issued for, or why not; audited either way.
pub(super) fn redeem_reboot_ticket(
    tx: &mut dyn Tx,
    digest: [u8; 32],
    host: &HostName,
    waiting: Option<&str>,
    source: IpAddr,
    now: UnixTime,
) -> Result<Result<String, &'static str>, StoreError> {
    let ticket = tx
        .opt_row(
            "SELECT h.name, t.session, t.expires_at, t.used_at FROM resume_tickets t
             JOIN hosts h ON h.id = t.host_id WHERE t.digest = ?1",
            args![&digest[..]],
        )?
        .map(|r| Ok::<_, StoreError>((r.text(0)?, r.text(1)?, r.int(2)?, r.opt_int(3)?)))
        .transpose()?;
    let verdict = match ticket.clone() {
        None => Err("unknown ticket"),
        Some((ticket_host, _, _, _)) if ticket_host != host.as_str() => {
            Err("ticket of another host")
        }
        Some((_, _, _, Some(_))) => Err("ticket already used"),
        Some((_, _, expires_at, None)) if expires_at <= now => Err("ticket expired"),
        Some((_, session, _, None)) if waiting != Some(session.as_str()) => {
            Err("no reboot of this host waits for this ticket")
        }
        Some((_, session, _, None)) => Ok(session),
    };
    if matches!(ticket.as_ref(), Some((h, _, _, None)) if h == host.as_str()) {
        tx.exec(
            "UPDATE resume_tickets SET used_at = ?1 WHERE digest = ?2",
            args![now, &digest[..]],
        )?;
    }
    let (name, detail) = match &verdict {
        Ok(session) => (AuditEvent::Resume, format!("session {session}")),
        Err(why) => (AuditEvent::ResumeRefused, (*why).to_string()),
    };
    let e = Event {
        source: Some(source),
        detail: Some(detail),
        ..event(name, Some(host.as_str()), None)
    };
    insert_audit(tx, &e, now)?;
    Ok(verdict)
}
