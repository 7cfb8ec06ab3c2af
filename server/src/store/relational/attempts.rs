//! Login attempts and the host lockout they feed: an attempt is reserved
//! against the host's count before the code is checked and settled with
//! its verdict after. The lockout rule itself is [`crate::rules::lockout`];
//! this module loads what the rule reads (the [`Tally`]) and writes what it
//! answers: the attempt's state, the user's failures, the lock with its
//! audit row and notices, and an admin's unlock.

use std::net::IpAddr;

use latchkey_protocol::{
    handshake::Reservation,
    ids::{HostName, RecordId, SessionId, UserName},
};

use super::{
    audit::{by_admin, event, insert_audit},
    grants::grant_is_current,
    outbox::enqueue_for_owner,
    rows::{host_ids, user_id},
};
use crate::{
    rules::{
        lockout::{self, Admission, Proof, Settlement, Tally, VoidReason},
        session_cap,
    },
    store::{
        notice,
        sql::{args, Tx},
        Actor, AttemptId, AuditEvent, Event, StoreError, UnixTime, Unlock,
    },
};

/// The host's lockout state, as [`crate::rules::lockout`] reads it.
pub(super) fn tally(tx: &mut dyn Tx, host_id: i64) -> Result<Tally, StoreError> {
    let r = tx.row(
        "SELECT lockout_threshold, CASE WHEN locked_at IS NULL THEN 0 ELSE 1 END,
                (SELECT CAST(COALESCE(SUM(failures), 0) AS BIGINT) FROM user_failures WHERE host_id = ?1),
                (SELECT COUNT(*) FROM attempts WHERE host_id = ?1 AND state = 'pending')
         FROM hosts WHERE id = ?1",
        args![host_id],
    )?;
    Ok(Tally {
        threshold: r.u32(0)?,
        locked: r.flag(1)?,
        decided: r.u32(2)?,
        pending: r.u32(3)?,
    })
}

fn user_pending(tx: &mut dyn Tx, host_id: i64, user_id: i64) -> Result<u32, StoreError> {
    tx.row(
        "SELECT COUNT(*) FROM attempts WHERE host_id = ?1 AND user_id = ?2 AND state = 'pending'",
        args![host_id, user_id],
    )?
    .u32(0)
}

fn user_failures(tx: &mut dyn Tx, host_id: i64, user_id: i64) -> Result<u32, StoreError> {
    tx.opt_row(
        "SELECT failures FROM user_failures WHERE host_id = ?1 AND user_id = ?2",
        args![host_id, user_id],
    )?
    .map_or(Ok(0), |r| r.u32(0))
}

/// Reserves an attempt by `user` on `host` for the serving relay `relay`,
/// if the rule admits one; a refusal is audited.
pub(super) fn reserve(
    tx: &mut dyn Tx,
    user: &UserName,
    host: &HostName,
    record: &RecordId,
    source: IpAddr,
    now: UnixTime,
    relay: Option<&str>,
) -> Result<Reservation<AttemptId>, StoreError> {
    let source_text = source.to_string();
    let (host_id, _) = host_ids(tx, host.as_str())?;
    let user_id = user_id(tx, user.as_str())?;
    let ev = |name| Event {
        source: Some(source),
        ..event(name, Some(host.as_str()), Some(user.as_str()))
    };
    let admission = lockout::admit(&tally(tx, host_id)?, user_pending(tx, host_id, user_id)?);
    match admission {
        Admission::Locked => {
            insert_audit(tx, &ev(AuditEvent::LoginLocked), now)?;
            Ok(Reservation::Locked)
        }
        Admission::Busy => {
            insert_audit(tx, &ev(AuditEvent::LoginBusy), now)?;
            Ok(Reservation::Busy)
        }
        Admission::Reserve => {
            let id = tx
                .row(
                    "INSERT INTO attempts (host_id, user_id, record_id, grant_generation, source, state, created_at, relay_id)
                     VALUES (?1, ?2, ?3,
                             (SELECT generation FROM grants WHERE host_id = ?1 AND user_id = ?2),
                             ?4, 'pending', ?5, ?6)
                     RETURNING id",
                    args![
                        host_id,
                        user_id,
                        &record.0[..],
                        &source_text,
                        now,
                        relay
                    ],
                )?
                .int(0)?;
            Ok(Reservation::Reserved(AttemptId(id)))
        }
    }
}

/// What the rule would answer a new attempt by `user` on `host`.
pub(super) fn admission(
    tx: &mut dyn Tx,
    host: &HostName,
    user: &UserName,
) -> Result<Admission, StoreError> {
    let (host_id, _) = host_ids(tx, host.as_str())?;
    let user_id = user_id(tx, user.as_str())?;
    Ok(lockout::admit(
        &tally(tx, host_id)?,
        user_pending(tx, host_id, user_id)?,
    ))
}

/// The user's open sessions, on `host_id` and in all.
pub(super) fn open_sessions(
    tx: &mut dyn Tx,
    host_id: i64,
    user_id: i64,
) -> Result<session_cap::Open, StoreError> {
    let r = tx.row(
        "SELECT COUNT(*), COALESCE(SUM(CASE WHEN host_id = ?2 THEN 1 ELSE 0 END), 0)
         FROM sessions WHERE user_id = ?1 AND ended_at IS NULL",
        args![user_id, host_id],
    )?;
    Ok(session_cap::Open {
        in_all: r.u32(0)?,
        on_host: r.u32(1)?,
    })
}

/// Settles one pending attempt: the rule decides, this writes the verdict,
/// the user's failures, the lock with its audit row and notices, and for a
/// success the session. `None` if it was not pending.
pub(super) fn settle(
    tx: &mut dyn Tx,
    attempt: i64,
    proof: Proof,
    detail: &str,
    session: Option<&SessionId>,
    now: UnixTime,
) -> Result<Option<Settlement>, StoreError> {
    let Some(r) = tx.opt_row(
        "SELECT a.host_id, a.user_id, h.name, u.name, a.source, a.record_id, a.grant_generation
         FROM attempts a JOIN hosts h ON h.id = a.host_id JOIN users u ON u.id = a.user_id
         WHERE a.id = ?1 AND a.state = 'pending'",
        args![attempt],
    )?
    else {
        return Ok(None);
    };
    let (host_id, user_id, host, user) = (r.int(0)?, r.int(1)?, r.text(2)?, r.text(3)?);
    let source: Option<IpAddr> = r.text(4)?.parse().ok();
    let (record, generation) = (r.opt_blob(5)?, r.opt_int(6)?);
    let grant_current = match (&record, generation) {
        (Some(record), Some(generation)) => {
            grant_is_current(tx, host_id, user_id, record, generation, now)?
        }
        _ => false,
    };
    let before = tally(tx, host_id)?;
    let user_before = user_failures(tx, host_id, user_id)?;
    let room = session_cap::room_for_one_more(open_sessions(tx, host_id, user_id)?);
    let settlement = lockout::settle(proof, grant_current, &before, room);
    let (after, locks) = lockout::after_settling(&before, settlement, user_before);
    let (state, event_name, detail) = match settlement {
        Settlement::Success => ("success", AuditEvent::LoginOk, None),
        Settlement::Failure => ("failed", AuditEvent::LoginFailed, Some(detail.to_string())),
        Settlement::Void(VoidReason::GrantGone) => (
            "refused",
            AuditEvent::LoginRefused,
            Some("right code, but the grant was revoked or its code replaced meanwhile".into()),
        ),
        Settlement::Void(VoidReason::Locked) => (
            "refused",
            AuditEvent::LoginRefused,
            Some("right code, but the host was locked meanwhile".into()),
        ),
        Settlement::Void(VoidReason::SessionsFull(full)) => (
            "refused",
            AuditEvent::LoginRefused,
            Some(format!(
                "right code, but the user holds too many sessions ({})",
                match full {
                    session_cap::Full::OnHost => "on this host",
                    session_cap::Full::InAll => "in all",
                }
            )),
        ),
    };
    tx.exec(
        "UPDATE attempts SET state = ?1, finished_at = ?2 WHERE id = ?3",
        args![state, now, attempt],
    )?;
    tx.exec(
        "INSERT INTO user_failures (host_id, user_id, failures) VALUES (?1, ?2, ?3)
         ON CONFLICT (host_id, user_id) DO UPDATE SET failures = excluded.failures",
        args![
            host_id,
            user_id,
            lockout::user_failures_after(settlement, user_before)
        ],
    )?;
    let e = Event {
        source,
        detail,
        ..event(event_name, Some(&host), Some(&user))
    };
    insert_audit(tx, &e, now)?;
    if let (Settlement::Success, Some(session)) = (settlement, session) {
        let id = session.to_string();
        tx.exec(
            "INSERT INTO sessions (id, host_id, user_id, started_at, relay_id)
             VALUES (?1, ?2, ?3, ?4, (SELECT relay_id FROM attempts WHERE id = ?5))",
            args![&id, host_id, user_id, now, attempt],
        )?;
        let e = Event {
            source,
            detail: Some(format!("session {session}")),
            ..event(AuditEvent::SessionStart, Some(&host), Some(&user))
        };
        insert_audit(tx, &e, now)?;
    }
    if locks {
        let cause = format!(
            "the last by {user} from {}",
            source.map_or("an unknown address".to_string(), |s| s.to_string())
        );
        lock_host(tx, host_id, &host, Some(&user), source, &after, &cause, now)?;
    }
    Ok(Some(settlement))
}

/// Settles as failures the attempts pending since before
/// `reserved_before`; returns how many.
pub(super) fn fail_pending(
    tx: &mut dyn Tx,
    reserved_before: UnixTime,
    detail: &str,
    now: UnixTime,
) -> Result<usize, StoreError> {
    let pending = tx.rows(
        "SELECT id FROM attempts WHERE state = 'pending' AND created_at < ?1 ORDER BY id",
        args![reserved_before],
    )?;
    for r in &pending {
        settle(tx, r.int(0)?, Proof::NotProven, detail, None, now)?;
    }
    Ok(pending.len())
}

/// Locks a host, with its audit row and notices, in the caller's
/// transaction; the host's resume tickets are spent.
#[allow(clippy::too_many_arguments)]
pub(super) fn lock_host(
    tx: &mut dyn Tx,
    host_id: i64,
    host: &str,
    user: Option<&str>,
    source: Option<IpAddr>,
    tally: &Tally,
    cause: &str,
    now: UnixTime,
) -> Result<(), StoreError> {
    tx.exec(
        "UPDATE hosts SET locked_at = ?1 WHERE id = ?2",
        args![now, host_id],
    )?;
    // A lock ends every session on the host (SPEC X4), those waiting to
    // resume too: their tickets go with it, and an unlock revives none.
    tx.exec(
        "DELETE FROM session_tickets WHERE host_id = ?1",
        args![host_id],
    )?;
    let e = Event {
        source,
        detail: Some(format!(
            "{} failed attempts (threshold {}): {cause}",
            tally.decided, tally.threshold
        )),
        ..event(AuditEvent::HostLocked, Some(host), user)
    };
    insert_audit(tx, &e, now)?;
    enqueue_for_owner(tx, host_id, now, |owner| {
        notice::locked(host, owner, cause, tally.decided)
    })
}

/// An admin's unlock, as the rule answers it; returns the count left.
pub(super) fn unlock(
    tx: &mut dyn Tx,
    host: &HostName,
    by: &Actor,
    now: UnixTime,
) -> Result<Unlock, StoreError> {
    let (host_id, _) = host_ids(tx, host.as_str())?;
    let before = tally(tx, host_id)?;
    if !before.locked && before.count() == 0 {
        return Ok(Unlock::NotLocked);
    }
    let after = lockout::unlocked(&before);
    if !after.locked {
        tx.exec(
            "UPDATE hosts SET locked_at = NULL WHERE id = ?1",
            args![host_id],
        )?;
    }
    if after.decided == 0 {
        tx.exec(
            "DELETE FROM user_failures WHERE host_id = ?1",
            args![host_id],
        )?;
    }
    insert_audit(
        tx,
        &by_admin(AuditEvent::Unlock, Some(host.as_str()), None, by),
        now,
    )?;
    Ok(Unlock::Done {
        was_locked: before.locked,
        still_counted: after.count(),
    })
}
