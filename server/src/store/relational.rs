//! The [`Store`] written once for every SQL backend: each method is one
//! transaction of statements in the dialect both engines run
//! ([`super::sql`]). The lockout rule itself is [`crate::rules::lockout`]; this
//! module loads what the rule reads and writes what it answers.

use std::{net::IpAddr, sync::Arc, time::Instant};

use latchkey_protocol::{
    frame::{CodeTarget, HostInfo},
    handshake::{CodeRecord, Reservation},
    ids::{HostName, Platform, PublicKey, RecordId, SessionId, UserName},
    ksf::KsfProfile,
};

use crate::rules::lockout::{self, Admission, Proof, Settlement, Tally, VoidReason};

use super::{
    notice::{self, Notice},
    sql::{args, audit_row, Backend, EventFeed, Row, Tx},
    Actor, AttemptId, AuditEvent, AuditFilter, AuditRow, Enrolled, Event, GrantRow, HostStatus,
    InviteKind, OutboxRow, SessionEnd, Store, StoreError, StoreGauges, SweptRelays, TxTimer,
    UnixTime, UserRow,
};

/// A store on the SQL backend `B`.
pub struct SqlStore<B> {
    pub(crate) backend: B,
    /// Times every transaction, for a serving relay's metrics.
    pub(crate) latency: Option<Arc<dyn TxTimer>>,
    /// The serving relay this store works for: its attempts and sessions
    /// carry this id, and its heartbeat keeps them its own.
    pub(crate) relay: Option<String>,
}

impl<B> SqlStore<B> {
    /// Times every transaction (from the wait for a connection to the
    /// commit, retries included) with `latency`, if given.
    pub fn with_latency(mut self, latency: Option<Arc<dyn TxTimer>>) -> Self {
        self.latency = latency;
        self
    }

    /// Works for the serving relay `id` (see [`Store::heartbeat`]).
    pub fn with_relay(mut self, id: impl Into<String>) -> Self {
        self.relay = Some(id.into());
        self
    }
}

// `Backend` is sealed: only this crate's backends implement it.
#[allow(private_bounds)]
impl<B: Backend> SqlStore<B> {
    pub(super) fn write<T>(
        &self,
        mut body: impl FnMut(&mut dyn Tx) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let result = self.backend.write(&mut body);
        if let Some(latency) = &self.latency {
            latency.write(started.elapsed());
        }
        result
    }

    pub(super) fn read<T>(
        &self,
        mut body: impl FnMut(&mut dyn Tx) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let result = self.backend.read(&mut body);
        if let Some(latency) = &self.latency {
            latency.read(started.elapsed());
        }
        result
    }
}

fn key_from(blob: Option<Vec<u8>>) -> Result<Option<PublicKey>, StoreError> {
    blob.map(|b| {
        b.try_into()
            .map(PublicKey)
            .map_err(|_| StoreError::Corrupt("device key is not 32 bytes".into()))
    })
    .transpose()
}

/// A device key as the admin sees it: the first 8 bytes of its SHA-256,
/// in hex.
fn fingerprint(key: &PublicKey) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(key.0)[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn user_id(tx: &mut dyn Tx, user: &str) -> Result<i64, StoreError> {
    tx.opt_row("SELECT id FROM users WHERE name = ?1", args![user])?
        .ok_or_else(|| StoreError::NoSuchUser(user.into()))?
        .int(0)
}

/// (id, owner id) of a host.
fn host_ids(tx: &mut dyn Tx, host: &str) -> Result<(i64, i64), StoreError> {
    let row = tx
        .opt_row(
            "SELECT id, owner_id FROM hosts WHERE name = ?1",
            args![host],
        )?
        .ok_or_else(|| StoreError::NoSuchHost(host.into()))?;
    Ok((row.int(0)?, row.int(1)?))
}

pub(super) fn insert_audit(
    tx: &mut dyn Tx,
    e: &Event<'_>,
    now: UnixTime,
) -> Result<(), StoreError> {
    let source = e.source.map(|s| s.to_string());
    tx.exec(
        r#"INSERT INTO audit (at, event, host, "user", source, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"#,
        args![now, e.event.name(), e.host, e.user, source.as_ref(), e.detail.as_ref()],
    )?;
    Ok(())
}

/// Reads `id, channel, recipient, subject, body, attempts, state, last_error`.
fn outbox_row(r: &Row) -> Result<OutboxRow, StoreError> {
    Ok(OutboxRow {
        id: r.int(0)?,
        channel: r.text(1)?,
        recipient: r.text(2)?,
        subject: r.text(3)?,
        body: r.text(4)?,
        attempts: r.u32(5)?,
        state: r.text(6)?,
        last_error: r.opt_text(7)?,
    })
}

/// The host's lockout state, as [`crate::rules::lockout`] reads it.
fn tally(tx: &mut dyn Tx, host_id: i64) -> Result<Tally, StoreError> {
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

/// Whether the user still holds the very grant a login (or a session's
/// ticket) was made under: the same code record, and not revoked and
/// granted again meanwhile (a new grant has a new generation).
fn grant_is_current(
    tx: &mut dyn Tx,
    host_id: i64,
    user_id: i64,
    record: &[u8],
    generation: i64,
) -> Result<bool, StoreError> {
    Ok(tx
        .opt_row(
            "SELECT 1 FROM grants
             WHERE host_id = ?1 AND user_id = ?2 AND record_id = ?3 AND generation = ?4",
            args![host_id, user_id, record, generation],
        )?
        .is_some())
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

/// Settles one pending attempt inside `tx`: the rule decides, this writes
/// the verdict, the user's failures, the lock with its audit row and
/// notices, and for a success the session. `None` if it was not pending.
fn settle_one(
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
            grant_is_current(tx, host_id, user_id, record, generation)?
        }
        _ => false,
    };
    let before = tally(tx, host_id)?;
    let user_before = user_failures(tx, host_id, user_id)?;
    let settlement = lockout::settle(proof, grant_current, &before);
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

/// Ends the open session `id` in the caller's transaction, its end
/// audited; a final end also spends its resume ticket and tells a
/// secondary user's owner (SPEC S3). `false` if it was not open.
fn end_session(
    tx: &mut dyn Tx,
    id: &str,
    reason: &str,
    how: SessionEnd,
    now: UnixTime,
) -> Result<bool, StoreError> {
    let Some(r) = tx.opt_row(
        "SELECT s.host_id, h.owner_id, s.user_id, h.name, u.name FROM sessions s
         JOIN hosts h ON h.id = s.host_id JOIN users u ON u.id = s.user_id
         WHERE s.id = ?1 AND s.ended_at IS NULL",
        args![id],
    )?
    else {
        return Ok(false);
    };
    let (host_id, owner_id, user_id) = (r.int(0)?, r.int(1)?, r.int(2)?);
    let (host, user) = (r.text(3)?, r.text(4)?);
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
        if user_id != owner_id {
            enqueue_for_owner(tx, host_id, now, |owner| {
                notice::secondary_session_ended(&host, owner, &user)
            })?;
        }
    }
    Ok(true)
}

/// Locks a host, with its audit row and notices, in the caller's transaction.
#[allow(clippy::too_many_arguments)]
fn lock_host(
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

/// Queues a notice that names the host's owner (every notice but the
/// admin's is addressed to them).
fn enqueue_for_owner(
    tx: &mut dyn Tx,
    host_id: i64,
    now: UnixTime,
    notice: impl FnOnce(&str) -> Notice,
) -> Result<(), StoreError> {
    let owner = owner_of(tx, host_id)?;
    enqueue(tx, &notice(&owner), now)
}

/// Queues a notice in the same transaction as the event it reports, so a
/// notice exists exactly when its event does (SPEC B2).
pub(super) fn enqueue(tx: &mut dyn Tx, notice: &Notice, now: UnixTime) -> Result<(), StoreError> {
    for (channel, recipient) in &notice.to {
        tx.exec(
            "INSERT INTO outbox (channel, recipient, subject, body, created_at, next_attempt_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
            args![
                channel.as_str(),
                recipient,
                &notice.subject,
                &notice.body,
                now
            ],
        )?;
    }
    Ok(())
}

fn owner_of(tx: &mut dyn Tx, host_id: i64) -> Result<String, StoreError> {
    tx.row(
        "SELECT u.name FROM hosts h JOIN users u ON u.id = h.owner_id WHERE h.id = ?1",
        args![host_id],
    )?
    .text(0)
}

/// An admin change's audit row: who made it, and from where.
fn by_admin<'a>(
    event: AuditEvent,
    host: Option<&'a str>,
    user: Option<&'a str>,
    by: &Actor,
) -> Event<'a> {
    Event {
        event,
        host,
        user,
        source: by.source,
        detail: Some(by.detail()),
    }
}

fn event<'a>(event: AuditEvent, host: Option<&'a str>, user: Option<&'a str>) -> Event<'a> {
    Event {
        event,
        host,
        user,
        source: None,
        detail: None,
    }
}

/// Gives `user` shared access to `host` with the owner's current code,
/// inside `tx`.
fn grant_in(
    tx: &mut dyn Tx,
    host: &HostName,
    user: &UserName,
    by: &Actor,
    now: UnixTime,
) -> Result<(), StoreError> {
    let (host_id, owner_id) = host_ids(tx, host.as_str())?;
    let user_id = user_id(tx, user.as_str())?;
    let r = tx.row(
        "SELECT h.shared_access, g.record_id FROM hosts h
             JOIN grants g ON g.host_id = h.id AND g.is_owner = 1 WHERE h.id = ?1",
        args![host_id],
    )?;
    let (shared, owner_record) = (r.flag(0)?, r.opt_blob(1)?);
    if !shared {
        return Err(StoreError::Refused(format!(
            "shared access is disabled on host '{host}': enable it first"
        )));
    }
    if user_id == owner_id {
        return Err(StoreError::Refused(format!(
            "'{user}' owns host '{host}' already"
        )));
    }
    let Some(record) = owner_record else {
        return Err(StoreError::Refused(format!(
            "the owner of host '{host}' has not set an access code yet (latchkey host set-code)"
        )));
    };
    let generation = tx
        .row(
            "UPDATE meta SET value = CAST(CAST(value AS BIGINT) + 1 AS TEXT)
                 WHERE key = 'grant_generation' RETURNING CAST(value AS BIGINT)",
            args![],
        )?
        .int(0)?;
    let inserted = tx.exec(
        "INSERT INTO grants (host_id, user_id, record_id, is_owner, created_at, generation)
             VALUES (?1, ?2, ?3, 0, ?4, ?5) ON CONFLICT DO NOTHING",
        args![host_id, user_id, &record, now, generation],
    )?;
    if inserted == 0 {
        return Err(StoreError::Refused(format!(
                "'{user}' has shared access to '{host}' already (revoke and grant again to give them the current code)"
            )));
    }
    insert_audit(
        tx,
        &by_admin(
            AuditEvent::Grant,
            Some(host.as_str()),
            Some(user.as_str()),
            by,
        ),
        now,
    )?;
    enqueue_for_owner(tx, host_id, now, |owner| {
        notice::granted(host.as_str(), owner, user.as_str())
    })
}

/// Takes `user`'s shared access to `host` away, inside `tx`.
fn revoke_in(
    tx: &mut dyn Tx,
    host: &HostName,
    user: &UserName,
    by: &Actor,
    now: UnixTime,
) -> Result<(), StoreError> {
    let (host_id, _) = host_ids(tx, host.as_str())?;
    let user_id = user_id(tx, user.as_str())?;
    let removed = tx.exec(
        "DELETE FROM grants WHERE host_id = ?1 AND user_id = ?2 AND is_owner = 0",
        args![host_id, user_id],
    )?;
    if removed == 0 {
        return Err(StoreError::Refused(format!(
            "'{user}' has no shared access to '{host}'"
        )));
    }
    insert_audit(
        tx,
        &by_admin(
            AuditEvent::Revoke,
            Some(host.as_str()),
            Some(user.as_str()),
            by,
        ),
        now,
    )?;
    enqueue_for_owner(tx, host_id, now, |owner| {
        notice::revoked(host.as_str(), owner, user.as_str())
    })
}

/// One host as the admin sees it, inside `tx`.
fn host_status(tx: &mut dyn Tx, id: i64) -> Result<HostStatus, StoreError> {
    let r = tx.row(
        "SELECT h.name, o.name, CASE WHEN h.device_key IS NULL THEN 0 ELSE 1 END, h.platform,
                CASE WHEN g.record_id IS NULL THEN 0 ELSE 1 END,
                h.shared_access, h.lockout_threshold,
                CASE WHEN h.locked_at IS NULL THEN 0 ELSE 1 END, h.online, h.last_seen,
                (SELECT r.addr FROM relays r WHERE r.id = h.relay_id)
         FROM hosts h JOIN users o ON o.id = h.owner_id
         JOIN grants g ON g.host_id = h.id AND g.is_owner = 1
         WHERE h.id = ?1",
        args![id],
    )?;
    let grants = tx
        .rows(
            "SELECT u.name FROM grants g JOIN users u ON u.id = g.user_id
             WHERE g.host_id = ?1 AND g.is_owner = 0 ORDER BY u.name",
            args![id],
        )?
        .iter()
        .map(|g| g.text(0))
        .collect::<Result<_, _>>()?;
    Ok(HostStatus {
        name: r.text(0)?,
        owner: r.text(1)?,
        enrolled: r.flag(2)?,
        platform: r.opt_text(3)?,
        code_set: r.flag(4)?,
        shared_access: r.flag(5)?,
        lockout_threshold: r.u32(6)?,
        failures: tally(tx, id)?.count(),
        locked: r.flag(7)?,
        online: r.flag(8)?,
        last_seen: r.opt_int(9)?,
        relay: r.opt_text(10)?,
        grants,
    })
}

fn parse_host(name: &str) -> Result<HostName, StoreError> {
    name.parse()
        .map_err(|_| StoreError::Corrupt(format!("host name {name:?}")))
}

#[allow(private_bounds)]
impl<B: Backend> Store for SqlStore<B> {
    fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.read(|tx| {
            tx.opt_row("SELECT value FROM meta WHERE key = ?1", args![key])?
                .map(|r| r.text(0))
                .transpose()
        })
    }

    fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.exec(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                args![key, value],
            )?;
            Ok(())
        })
    }

    fn claim_meta(&self, key: &str, value: &str) -> Result<String, StoreError> {
        self.write(|tx| {
            tx.exec(
                "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO NOTHING",
                args![key, value],
            )?;
            tx.row("SELECT value FROM meta WHERE key = ?1", args![key])?
                .text(0)
        })
    }

    fn create_invite(
        &self,
        name: &str,
        kind: &InviteKind,
        digest: [u8; 32],
        expires_at: UnixTime,
        by: &Actor,
        now: UnixTime,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            let kind_text = match kind {
                InviteKind::User { email } => {
                    tx.exec(
                        "INSERT INTO users (name, created_at) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                        args![name, now],
                    )?;
                    if let Some(email) = email {
                        tx.exec(
                            "UPDATE users SET email = ?1 WHERE name = ?2",
                            args![email, name],
                        )?;
                    }
                    "user"
                }
                InviteKind::Host {
                    owner,
                    lockout_threshold,
                } => {
                    let owner_id = user_id(tx, owner.as_str())?;
                    match host_ids(tx, name) {
                        Ok((_, existing_owner)) if existing_owner != owner_id => {
                            return Err(StoreError::Exists {
                                kind: "host",
                                name: name.into(),
                            })
                        }
                        Ok(_) => {}
                        Err(StoreError::NoSuchHost(_)) => {
                            let host_id = tx
                                .row(
                                    "INSERT INTO hosts (name, owner_id, lockout_threshold, created_at)
                                     VALUES (?1, ?2, ?3, ?4) RETURNING id",
                                    args![
                                        name,
                                        owner_id,
                                        lockout::checked_threshold(*lockout_threshold)
                                            .map_err(StoreError::Refused)?,
                                        now
                                    ],
                                )?
                                .int(0)?;
                            tx.exec(
                                "INSERT INTO grants (host_id, user_id, record_id, is_owner, created_at)
                                 VALUES (?1, ?2, NULL, 1, ?3)",
                                args![host_id, owner_id, now],
                            )?;
                        }
                        Err(e) => return Err(e),
                    }
                    "host"
                }
            };
            // A new invite replaces the earlier ones of the same device.
            let cancelled = tx.exec(
                "UPDATE invites SET used_at = ?1 WHERE kind = ?2 AND name = ?3 AND used_at IS NULL",
                args![now, kind_text, name],
            )?;
            tx.exec(
                "INSERT INTO invites (digest, kind, name, expires_at, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                args![&digest[..], kind_text, name, expires_at, now],
            )?;
            let cancelled = if cancelled > 0 {
                format!("; {cancelled} earlier invite(s) cancelled")
            } else {
                String::new()
            };
            let e = Event {
                detail: Some(format!(
                    "expires at {expires_at}{cancelled}; {}",
                    by.detail()
                )),
                ..by_admin(
                    AuditEvent::InviteCreated,
                    (kind_text == "host").then_some(name),
                    (kind_text == "user").then_some(name),
                    by,
                )
            };
            insert_audit(tx, &e, now)
        })
    }

    fn redeem_invite(
        &self,
        digest: [u8; 32],
        device_key: PublicKey,
        platform: Platform,
        source: IpAddr,
        now: UnixTime,
    ) -> Result<Enrolled, StoreError> {
        let outcome = self.write(|tx| {
            let Some(r) = tx.opt_row(
                "SELECT kind, name FROM invites
                 WHERE digest = ?1 AND used_at IS NULL AND expires_at > ?2",
                args![&digest[..], now],
            )?
            else {
                return Ok(None);
            };
            let (kind, name) = (r.text(0)?, r.text(1)?);
            tx.exec(
                "UPDATE invites SET used_at = ?1 WHERE digest = ?2",
                args![now, &digest[..]],
            )?;
            let is_host = kind == "host";
            if is_host {
                tx.exec(
                    "UPDATE hosts SET device_key = ?1, platform = ?2 WHERE name = ?3",
                    args![&device_key.0[..], platform.as_str(), &name],
                )?;
            } else {
                tx.exec(
                    "UPDATE users SET device_key = ?1 WHERE name = ?2",
                    args![&device_key.0[..], &name],
                )?;
            }
            let e = Event {
                source: Some(source),
                detail: Some(format!("device key {}", device_key.to_text())),
                ..event(
                    AuditEvent::Enrolled,
                    is_host.then_some(&name),
                    (!is_host).then_some(&name),
                )
            };
            insert_audit(tx, &e, now)?;
            Ok(Some(Enrolled { name, is_host }))
        })?;
        match outcome {
            Some(enrolled) => Ok(enrolled),
            None => {
                self.audit(
                    Event {
                        event: AuditEvent::EnrollRefused,
                        host: None,
                        user: None,
                        source: Some(source),
                        detail: Some("unknown, used or expired invite".into()),
                    },
                    now,
                )?;
                Err(StoreError::InvalidInvite)
            }
        }
    }

    fn user_key(&self, user: &UserName) -> Result<Option<PublicKey>, StoreError> {
        self.read(|tx| {
            let r = tx.opt_row(
                "SELECT device_key FROM users WHERE name = ?1",
                args![user.as_str()],
            )?;
            key_from(r.map(|r| r.opt_blob(0)).transpose()?.flatten())
        })
    }

    fn host_key(&self, host: &HostName) -> Result<Option<PublicKey>, StoreError> {
        self.read(|tx| {
            let r = tx.opt_row(
                "SELECT device_key FROM hosts WHERE name = ?1",
                args![host.as_str()],
            )?;
            key_from(r.map(|r| r.opt_blob(0)).transpose()?.flatten())
        })
    }

    fn code_record(
        &self,
        user: &UserName,
        host: &HostName,
    ) -> Result<Option<CodeRecord>, StoreError> {
        self.read(|tx| {
            let Some(r) = tx.opt_row(
                "SELECT r.id, r.ksf, r.record FROM grants g
                 JOIN users u ON u.id = g.user_id
                 JOIN hosts h ON h.id = g.host_id
                 JOIN code_records r ON r.id = g.record_id
                 WHERE u.name = ?1 AND h.name = ?2",
                args![user.as_str(), host.as_str()],
            )?
            else {
                return Ok(None);
            };
            let ksf = r.text(1)?;
            Ok(Some(CodeRecord {
                id: RecordId(
                    r.blob(0)?
                        .try_into()
                        .map_err(|_| StoreError::Corrupt("record id is not 16 bytes".into()))?,
                ),
                ksf: KsfProfile::parse(&ksf).ok_or_else(|| {
                    StoreError::Corrupt(format!("unknown key-stretching profile {ksf}"))
                })?,
                record: r.blob(2)?,
            }))
        })
    }

    fn reserve_attempt(
        &self,
        user: &UserName,
        host: &HostName,
        record: &RecordId,
        source: IpAddr,
        now: UnixTime,
    ) -> Result<Reservation<AttemptId>, StoreError> {
        let source_text = source.to_string();
        self.write(|tx| {
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
                                self.relay.as_deref()
                            ],
                        )?
                        .int(0)?;
                    Ok(Reservation::Reserved(AttemptId(id)))
                }
            }
        })
    }

    fn admission(&self, host: &HostName, user: &UserName) -> Result<Admission, StoreError> {
        self.read(|tx| {
            let (host_id, _) = host_ids(tx, host.as_str())?;
            let user_id = user_id(tx, user.as_str())?;
            Ok(lockout::admit(
                &tally(tx, host_id)?,
                user_pending(tx, host_id, user_id)?,
            ))
        })
    }

    fn settle_attempt(
        &self,
        attempt: AttemptId,
        proof: Proof,
        detail: &str,
        session: &SessionId,
        now: UnixTime,
    ) -> Result<Option<Settlement>, StoreError> {
        self.write(|tx| settle_one(tx, attempt.0, proof, detail, Some(session), now))
    }

    fn fail_pending_attempts(
        &self,
        reserved_before: UnixTime,
        detail: &str,
        now: UnixTime,
    ) -> Result<usize, StoreError> {
        self.write(|tx| {
            let pending = tx.rows(
                "SELECT id FROM attempts WHERE state = 'pending' AND created_at < ?1 ORDER BY id",
                args![reserved_before],
            )?;
            for r in &pending {
                settle_one(tx, r.int(0)?, Proof::NotProven, detail, None, now)?;
            }
            Ok(pending.len())
        })
    }

    fn set_code(
        &self,
        host: &HostName,
        target: &CodeTarget,
        record: &CodeRecord,
        now: UnixTime,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            let (host_id, owner_id) = host_ids(tx, host.as_str())?;
            tx.exec(
                "INSERT INTO code_records (id, host_id, ksf, record, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                args![&record.id.0[..], host_id, record.ksf.as_str(), &record.record, now],
            )?;
            let (user_id, event_name) = match target {
                CodeTarget::Owner => (owner_id, AuditEvent::CodeChanged),
                CodeTarget::Grant(user) => (user_id(tx, user.as_str())?, AuditEvent::CodeReset),
                _ => return Err(StoreError::Refused("unknown code target".into())),
            };
            let is_owner = matches!(target, CodeTarget::Owner);
            let changed = tx.exec(
                "UPDATE grants SET record_id = ?1 WHERE host_id = ?2 AND user_id = ?3 AND is_owner = ?4",
                args![&record.id.0[..], host_id, user_id, is_owner],
            )?;
            if changed == 0 {
                return Err(StoreError::Refused(format!(
                    "that user has no shared access to host '{host}'"
                )));
            }
            let user = tx
                .row("SELECT name FROM users WHERE id = ?1", args![user_id])?
                .text(0)?;
            insert_audit(tx, &event(event_name, Some(host.as_str()), Some(&user)), now)
        })
    }

    fn grant(
        &self,
        host: &HostName,
        user: &UserName,
        by: &Actor,
        now: UnixTime,
    ) -> Result<(), StoreError> {
        self.write(|tx| grant_in(tx, host, user, by, now))
    }

    fn revoke(
        &self,
        host: &HostName,
        user: &UserName,
        by: &Actor,
        now: UnixTime,
    ) -> Result<(), StoreError> {
        self.write(|tx| revoke_in(tx, host, user, by, now))
    }

    fn regrant(
        &self,
        host: &HostName,
        user: &UserName,
        by: &Actor,
        now: UnixTime,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            revoke_in(tx, host, user, by, now)?;
            grant_in(tx, host, user, by, now)
        })
    }

    fn unlock(&self, host: &HostName, by: &Actor, now: UnixTime) -> Result<u32, StoreError> {
        self.write(|tx| {
            let (host_id, _) = host_ids(tx, host.as_str())?;
            let after = lockout::unlocked(&tally(tx, host_id)?);
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
            Ok(after.count())
        })
    }

    fn set_presence(&self, changes: &[(HostName, bool)], now: UnixTime) -> Result<(), StoreError> {
        let me = self.relay.as_deref();
        self.write(|tx| {
            for (host, online) in changes {
                if *online {
                    tx.exec(
                        "UPDATE hosts SET online = 1, last_seen = ?1, relay_id = ?2 WHERE name = ?3",
                        args![now, me, host.as_str()],
                    )?;
                } else {
                    // Only while it is still ours: a host that moved to
                    // another relay meanwhile stays online there.
                    tx.exec(
                        "UPDATE hosts SET online = 0, last_seen = ?1, relay_id = NULL
                         WHERE name = ?2 AND (relay_id = ?3 OR relay_id IS NULL OR ?3 IS NULL)",
                        args![now, host.as_str(), me],
                    )?;
                }
            }
            Ok(())
        })
    }

    fn reclaim_hosts(&self, hosts: &[HostName], now: UnixTime) -> Result<(), StoreError> {
        let me = self.relay.as_deref();
        self.write(|tx| {
            for host in hosts {
                tx.exec(
                    "UPDATE hosts SET online = 1, last_seen = ?1, relay_id = ?2
                     WHERE name = ?3 AND (relay_id IS NULL OR relay_id = ?2)",
                    args![now, me, host.as_str()],
                )?;
            }
            Ok(())
        })
    }

    fn clear_online(&self, now: UnixTime) -> Result<(), StoreError> {
        let me = self.relay.as_deref();
        self.write(|tx| {
            tx.exec(
                "UPDATE hosts SET online = 0, relay_id = NULL,
                 last_seen = CASE WHEN online = 1 THEN ?1 ELSE last_seen END
                 WHERE online = 1 AND (relay_id = ?2 OR relay_id IS NULL OR ?2 IS NULL)",
                args![now, me],
            )?;
            Ok(())
        })
    }

    fn issue_session_ticket(
        &self,
        session: &SessionId,
        digest: [u8; 32],
        host: &HostName,
        user: &UserName,
        record: &RecordId,
        expires_at: UnixTime,
        now: UnixTime,
    ) -> Result<bool, StoreError> {
        let id = session.to_string();
        self.write(|tx| {
            tx.exec(
                "DELETE FROM session_tickets WHERE expires_at <= ?1 OR session = ?2",
                args![now, &id],
            )?;
            let issued = tx.exec(
                "INSERT INTO session_tickets
                     (session, digest, host_id, user_id, record_id, generation, expires_at)
                 SELECT ?1, ?2, g.host_id, g.user_id, g.record_id, g.generation, ?3
                 FROM grants g JOIN hosts h ON h.id = g.host_id JOIN users u ON u.id = g.user_id
                 WHERE h.name = ?4 AND u.name = ?5 AND g.record_id = ?6",
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
        })
    }

    fn session_ticket_valid(
        &self,
        digest: [u8; 32],
        user: &UserName,
        host: &HostName,
        now: UnixTime,
    ) -> Result<bool, StoreError> {
        self.read(|tx| {
            Ok(tx
                .opt_row(
                    "SELECT 1 FROM session_tickets t JOIN hosts h ON h.id = t.host_id
                     JOIN users u ON u.id = t.user_id
                     WHERE t.digest = ?1 AND h.name = ?2 AND u.name = ?3 AND t.expires_at > ?4",
                    args![&digest[..], host.as_str(), user.as_str(), now],
                )?
                .is_some())
        })
    }

    fn resume_session(
        &self,
        digest: [u8; 32],
        user: &UserName,
        host: &HostName,
        session: &SessionId,
        source: IpAddr,
        now: UnixTime,
    ) -> Result<Result<RecordId, &'static str>, StoreError> {
        let (id, relay) = (session.to_string(), self.relay.as_deref());
        self.write(|tx| {
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
            let grant_current = grant_is_current(tx, host_id, user_id, &record, generation)?;
            // The ticket proves what the login's right code did; the rule
            // decides as for a verdict.
            let refused =
                match lockout::settle(Proof::RightCode, grant_current, &tally(tx, host_id)?) {
                    Settlement::Success => None,
                    Settlement::Void(VoidReason::Locked) => Some("the host is locked"),
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
            end_session(
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
            Ok(Ok(record))
        })
    }

    fn host_elsewhere(
        &self,
        host: &HostName,
        heartbeat_after: UnixTime,
    ) -> Result<Option<String>, StoreError> {
        let me = self.relay.as_deref().unwrap_or("");
        self.read(|tx| {
            tx.opt_row(
                "SELECT r.addr FROM hosts h JOIN relays r ON r.id = h.relay_id
                 WHERE h.name = ?1 AND h.online = 1 AND r.id <> ?2
                   AND r.heartbeat_at >= ?3 AND r.addr IS NOT NULL",
                args![host.as_str(), me, heartbeat_after],
            )?
            .map(|r| r.text(0))
            .transpose()
        })
    }

    fn relay_addrs(&self, heartbeat_after: UnixTime) -> Result<Vec<String>, StoreError> {
        self.read(|tx| {
            tx.rows(
                "SELECT addr FROM relays WHERE heartbeat_at >= ?1 AND addr IS NOT NULL
                 ORDER BY started_at, id",
                args![heartbeat_after],
            )?
            .iter()
            .map(|r| r.text(0))
            .collect()
        })
    }

    fn users(&self) -> Result<Vec<UserRow>, StoreError> {
        self.read(|tx| {
            tx.rows(
                "SELECT name, device_key, email FROM users ORDER BY name",
                args![],
            )?
            .iter()
            .map(|r| {
                let device = key_from(r.opt_blob(1)?)?;
                Ok(UserRow {
                    name: r.text(0)?,
                    enrolled: device.is_some(),
                    email: r.opt_text(2)?,
                    device: device.map(|k| fingerprint(&k)),
                })
            })
            .collect()
        })
    }

    fn hosts(&self) -> Result<Vec<HostStatus>, StoreError> {
        self.read(|tx| {
            tx.rows("SELECT id FROM hosts ORDER BY name", args![])?
                .iter()
                .map(|r| host_status(tx, r.int(0)?))
                .collect()
        })
    }

    fn host_status(&self, host: &HostName) -> Result<HostStatus, StoreError> {
        self.read(|tx| {
            let (id, _) = host_ids(tx, host.as_str())?;
            host_status(tx, id)
        })
    }

    fn hosts_for_user(&self, user: &UserName) -> Result<Vec<HostInfo>, StoreError> {
        self.read(|tx| {
            tx.rows(
                "SELECT h.name, o.name, h.online, CASE WHEN h.locked_at IS NULL THEN 0 ELSE 1 END,
                        g.is_owner
                 FROM grants g JOIN users u ON u.id = g.user_id
                 JOIN hosts h ON h.id = g.host_id JOIN users o ON o.id = h.owner_id
                 WHERE u.name = ?1 ORDER BY h.name LIMIT ?2",
                args![
                    user.as_str(),
                    i64::try_from(latchkey_protocol::limits::MAX_HOSTS_LISTED).unwrap_or(i64::MAX)
                ],
            )?
            .iter()
            .map(|r| {
                let owner = r.text(1)?;
                Ok(HostInfo {
                    name: parse_host(&r.text(0)?)?,
                    owner: owner
                        .parse()
                        .map_err(|_| StoreError::Corrupt(format!("user name {owner:?}")))?,
                    online: r.flag(2)?,
                    locked: r.flag(3)?,
                    is_owner: r.flag(4)?,
                })
            })
            .collect()
        })
    }

    fn set_email(
        &self,
        user: &UserName,
        email: Option<&str>,
        by: &Actor,
        now: UnixTime,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            let id = user_id(tx, user.as_str())?;
            tx.exec(
                "UPDATE users SET email = ?1 WHERE id = ?2",
                args![email, id],
            )?;
            insert_audit(
                tx,
                &by_admin(AuditEvent::EmailChanged, None, Some(user.as_str()), by),
                now,
            )
        })
    }

    fn user_email(&self, user: &str) -> Result<Option<String>, StoreError> {
        self.read(|tx| {
            Ok(tx
                .opt_row("SELECT email FROM users WHERE name = ?1", args![user])?
                .map(|r| r.opt_text(0))
                .transpose()?
                .flatten())
        })
    }

    fn set_policy(
        &self,
        host: &HostName,
        shared_access: Option<bool>,
        lockout_threshold: Option<u32>,
        by: &Actor,
        now: UnixTime,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            let (host_id, _) = host_ids(tx, host.as_str())?;
            if let Some(shared) = shared_access {
                tx.exec(
                    "UPDATE hosts SET shared_access = ?1 WHERE id = ?2",
                    args![shared, host_id],
                )?;
            }
            if let Some(threshold) = lockout_threshold {
                lockout::checked_threshold(threshold).map_err(StoreError::Refused)?;
                tx.exec(
                    "UPDATE hosts SET lockout_threshold = ?1 WHERE id = ?2",
                    args![threshold, host_id],
                )?;
                // A host already at its new threshold locks now, rather than
                // stay "busy" and unlocked until an attempt settles.
                let now_tally = tally(tx, host_id)?;
                if lockout::locks_now(&now_tally) {
                    let cause = format!("the lockout threshold was lowered to {threshold}");
                    lock_host(
                        tx,
                        host_id,
                        host.as_str(),
                        None,
                        None,
                        &now_tally,
                        &cause,
                        now,
                    )?;
                }
            }
            let detail = format!(
                "shared access {}, lockout threshold {}; {}",
                shared_access.map_or("unchanged", |s| if s { "enabled" } else { "disabled" }),
                lockout_threshold.map_or("unchanged".to_string(), |t| t.to_string()),
                by.detail()
            );
            insert_audit(
                tx,
                &Event {
                    detail: Some(detail),
                    ..by_admin(AuditEvent::Policy, Some(host.as_str()), None, by)
                },
                now,
            )
        })
    }

    fn session_ended(
        &self,
        session: &SessionId,
        reason: &str,
        how: SessionEnd,
        now: UnixTime,
    ) -> Result<(), StoreError> {
        let id = session.to_string();
        self.write(|tx| {
            // Ended already (or never registered: a verdict whose commit
            // failed may or may not have registered it): nothing to do.
            end_session(tx, &id, reason, how, now).map(drop)
        })
    }

    fn end_open_sessions(&self, now: UnixTime) -> Result<usize, StoreError> {
        self.write(|tx| {
            let open = tx.rows("SELECT id FROM sessions WHERE ended_at IS NULL", args![])?;
            for r in &open {
                end_session(
                    tx,
                    &r.text(0)?,
                    "the relay stopped with it open",
                    SessionEnd::Continues,
                    now,
                )?;
            }
            Ok(open.len())
        })
    }

    fn claim_notices(
        &self,
        now: UnixTime,
        claimed_until: UnixTime,
        limit: usize,
    ) -> Result<Vec<OutboxRow>, StoreError> {
        // A claim moves the notice's next attempt to the claim's end, in a
        // write transaction: two relays claiming at once are serialized
        // (PostgreSQL retries the one that conflicts), so each notice is
        // given to one of them.
        let mut claimed = self.write(|tx| {
            tx.rows(
                "UPDATE outbox SET next_attempt_at = ?2
                 WHERE id IN (SELECT id FROM outbox
                              WHERE state = 'pending' AND next_attempt_at <= ?1
                              ORDER BY id LIMIT ?3)
                 RETURNING id, channel, recipient, subject, body, attempts, state, last_error",
                args![now, claimed_until, i64::try_from(limit).unwrap_or(i64::MAX)],
            )?
            .iter()
            .map(outbox_row)
            .collect::<Result<Vec<_>, _>>()
        })?;
        claimed.sort_by_key(|n| n.id);
        Ok(claimed)
    }

    fn notice_done(&self, id: i64, state: &str, now: UnixTime) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.exec(
                "UPDATE outbox SET state = ?1, sent_at = ?2, attempts = attempts + 1 WHERE id = ?3",
                args![state, now, id],
            )?;
            Ok(())
        })
    }

    fn notice_retry(
        &self,
        id: i64,
        error: &str,
        next_attempt_at: UnixTime,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.exec(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ?1, next_attempt_at = ?2 WHERE id = ?3",
                args![error, next_attempt_at, id],
            )?;
            Ok(())
        })
    }

    fn outbox(&self, limit: usize) -> Result<Vec<OutboxRow>, StoreError> {
        self.read(|tx| {
            let mut out = tx
                .rows(
                    "SELECT id, channel, recipient, subject, body, attempts, state, last_error FROM outbox
                     ORDER BY id DESC LIMIT ?1",
                    args![i64::try_from(limit).unwrap_or(i64::MAX)],
                )?
                .iter()
                .map(outbox_row)
                .collect::<Result<Vec<_>, _>>()?;
            out.reverse();
            Ok(out)
        })
    }

    fn event_feed(&self) -> Result<Box<dyn EventFeed>, StoreError> {
        self.backend.event_feed()
    }

    fn create_ticket(
        &self,
        digest: [u8; 32],
        host: &HostName,
        user: &UserName,
        session: &str,
        expires_at: UnixTime,
        now: UnixTime,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
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
        })
    }

    fn redeem_ticket(
        &self,
        digest: [u8; 32],
        host: &HostName,
        waiting: Option<&str>,
        source: IpAddr,
        now: UnixTime,
    ) -> Result<Result<String, &'static str>, StoreError> {
        self.write(|tx| {
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
        })
    }

    fn audit(&self, event: Event<'_>, now: UnixTime) -> Result<(), StoreError> {
        self.write(|tx| insert_audit(tx, &event, now))
    }

    fn prune_audit(&self, before: UnixTime) -> Result<usize, StoreError> {
        self.write(|tx| {
            let n = tx.exec("DELETE FROM audit WHERE at < ?1", args![before])?;
            Ok(usize::try_from(n).unwrap_or(usize::MAX))
        })
    }

    fn host_key_twice(
        &self,
        host: &HostName,
        older: &str,
        newer: &str,
        now: UnixTime,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            let (host_id, _) = host_ids(tx, host.as_str())?;
            let e = Event {
                detail: Some(format!(
                    "connected from {newer} while connected from {older}; the newer was refused"
                )),
                ..event(AuditEvent::HostKeyTwice, Some(host.as_str()), None)
            };
            insert_audit(tx, &e, now)?;
            enqueue_for_owner(tx, host_id, now, |owner| {
                notice::host_key_twice(host.as_str(), owner, older, newer)
            })
        })
    }

    fn audit_log(
        &self,
        host: Option<&HostName>,
        since: Option<UnixTime>,
        limit: usize,
    ) -> Result<Vec<AuditRow>, StoreError> {
        self.read(|tx| {
            let mut out = tx
                .rows(
                    r#"SELECT id, at, event, host, "user", source, detail FROM audit
                       WHERE (CAST(?1 AS TEXT) IS NULL OR host = ?1)
                         AND (CAST(?3 AS BIGINT) IS NULL OR at >= ?3)
                       ORDER BY id DESC LIMIT ?2"#,
                    args![
                        host.map(|h| h.as_str()),
                        i64::try_from(limit).unwrap_or(i64::MAX),
                        since
                    ],
                )?
                .iter()
                .map(audit_row)
                .collect::<Result<Vec<_>, _>>()?;
            out.reverse();
            Ok(out)
        })
    }

    fn grants_of(&self, host: Option<&HostName>) -> Result<Vec<GrantRow>, StoreError> {
        self.read(|tx| {
            tx.rows(
                "SELECT h.name, u.name, g.created_at, c.created_at FROM grants g
                 JOIN hosts h ON h.id = g.host_id
                 JOIN users u ON u.id = g.user_id
                 LEFT JOIN code_records c ON c.id = g.record_id
                 WHERE g.is_owner = 0 AND (CAST(?1 AS TEXT) IS NULL OR h.name = ?1)
                 ORDER BY h.name, u.name",
                args![host.map(|h| h.as_str())],
            )?
            .iter()
            .map(|r| {
                Ok(GrantRow {
                    host: r.text(0)?,
                    user: r.text(1)?,
                    granted_at: r.int(2)?,
                    code_set_at: r.opt_int(3)?,
                })
            })
            .collect()
        })
    }

    fn audit_page(&self, filter: &AuditFilter, limit: usize) -> Result<Vec<AuditRow>, StoreError> {
        self.read(|tx| {
            tx.rows(
                r#"SELECT id, at, event, host, "user", source, detail FROM audit
                   WHERE (CAST(?1 AS TEXT) IS NULL OR host = ?1)
                     AND (CAST(?2 AS TEXT) IS NULL OR "user" = ?2)
                     AND (CAST(?3 AS TEXT) IS NULL OR event = ?3)
                     AND (CAST(?4 AS BIGINT) IS NULL OR id < ?4)
                   ORDER BY id DESC LIMIT ?5"#,
                args![
                    filter.host.as_deref(),
                    filter.user.as_deref(),
                    filter.event.as_deref(),
                    filter.before,
                    i64::try_from(limit).unwrap_or(i64::MAX)
                ],
            )?
            .iter()
            .map(audit_row)
            .collect()
        })
    }

    fn audit_counts(&self, since: UnixTime) -> Result<Vec<(String, u64)>, StoreError> {
        self.read(|tx| {
            tx.rows(
                "SELECT event, COUNT(*) FROM audit WHERE at >= ?1 GROUP BY event ORDER BY event",
                args![since],
            )?
            .iter()
            .map(|r| Ok((r.text(0)?, u64::try_from(r.int(1)?).unwrap_or(0))))
            .collect()
        })
    }

    fn gauges(&self) -> Result<StoreGauges, StoreError> {
        self.read(|tx| {
            let r = tx.row(
                "SELECT (SELECT COUNT(*) FROM hosts WHERE locked_at IS NOT NULL),
                        (SELECT COUNT(*) FROM outbox WHERE state = 'pending'),
                        (SELECT COUNT(*) FROM outbox WHERE state = 'sent'),
                        (SELECT COUNT(*) FROM outbox WHERE state = 'stored')",
                args![],
            )?;
            let count = |i| r.int(i).map(|n| u64::try_from(n).unwrap_or(0));
            Ok(StoreGauges {
                hosts_locked: count(0)?,
                notices_pending: count(1)?,
                notices_sent: count(2)?,
                notices_stored: count(3)?,
            })
        })
    }

    fn heartbeat(&self, addr: &str, now: UnixTime) -> Result<bool, StoreError> {
        let Some(relay) = self.relay.as_deref() else {
            return Ok(false);
        };
        self.write(|tx| {
            let updated = tx.exec(
                "UPDATE relays SET heartbeat_at = ?2, addr = ?3 WHERE id = ?1",
                args![relay, now, addr],
            )?;
            if updated == 0 {
                tx.exec(
                    "INSERT INTO relays (id, started_at, heartbeat_at, addr) VALUES (?1, ?2, ?2, ?3)",
                    args![relay, now, addr],
                )?;
            }
            Ok(updated == 0)
        })
    }

    fn sweep_lapsed_relays(
        &self,
        heartbeat_before: UnixTime,
        now: UnixTime,
    ) -> Result<SweptRelays, StoreError> {
        let me = self.relay.as_deref().unwrap_or("");
        self.write(|tx| {
            let lapsed = tx.rows(
                "SELECT id FROM relays WHERE heartbeat_at < ?1 AND id <> ?2 ORDER BY id",
                args![heartbeat_before, me],
            )?;
            let mut settled = 0;
            for r in &lapsed {
                let relay = r.text(0)?;
                let pending = tx.rows(
                    "SELECT id FROM attempts WHERE state = 'pending' AND relay_id = ?1 ORDER BY id",
                    args![&relay],
                )?;
                let why = format!("its relay ({relay}) stopped answering");
                for a in &pending {
                    settle_one(tx, a.int(0)?, Proof::NotProven, &why, None, now)?;
                }
                settled += pending.len();
                let open = tx.rows(
                    "SELECT id FROM sessions WHERE ended_at IS NULL AND relay_id = ?1",
                    args![&relay],
                )?;
                for s in &open {
                    end_session(tx, &s.text(0)?, &why, SessionEnd::Continues, now)?;
                }
                tx.exec(
                    "UPDATE hosts SET online = 0, relay_id = NULL, last_seen = ?1 WHERE relay_id = ?2",
                    args![now, &relay],
                )?;
                tx.exec("DELETE FROM relays WHERE id = ?1", args![&relay])?;
            }
            Ok(SweptRelays {
                relays: lapsed.len(),
                attempts: settled,
            })
        })
    }

    fn relay_stopped(&self) -> Result<(), StoreError> {
        let Some(relay) = self.relay.as_deref() else {
            return Ok(());
        };
        self.write(|tx| {
            tx.exec("DELETE FROM relays WHERE id = ?1", args![relay])?;
            Ok(())
        })
    }
}
