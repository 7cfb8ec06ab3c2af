//! The embedded default store: one SQLite database in the relay's data
//! directory, in WAL mode so the admin CLI can read and write while the
//! relay runs. Writes use `BEGIN IMMEDIATE`, so two processes (or two
//! tasks) never interleave a read-modify-write of a counter, and
//! `synchronous = FULL`, so a committed attempt survives a crash.

use std::{net::IpAddr, path::Path, sync::Mutex, time::Duration};

use latchkey_protocol::{
    frame::{CodeTarget, HostInfo},
    handshake::{CodeRecord, Reservation},
    ids::{HostName, Platform, PublicKey, RecordId, SessionId, UserName},
    ksf::KsfProfile,
};
use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};

use crate::lockout::{self, Admission, Proof, Settlement, Tally, VoidReason};

use super::{
    notice::{self, Notice},
    AttemptId, AuditRow, Enrolled, Event, HostStatus, InviteKind, OutboxRow, Store, StoreError,
    UnixTime, UserRow,
};

/// Schema migrations, applied in order; `PRAGMA user_version` counts how
/// many have run. Never edit one that has shipped: append.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE users (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    device_key BLOB,
    email TEXT,
    created_at INTEGER NOT NULL
);
CREATE TABLE hosts (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    owner_id INTEGER NOT NULL REFERENCES users(id),
    device_key BLOB,
    platform TEXT,
    shared_access INTEGER NOT NULL DEFAULT 1,
    lockout_threshold INTEGER NOT NULL DEFAULT 3,
    failures INTEGER NOT NULL DEFAULT 0,
    locked_at INTEGER,
    online INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
);
CREATE TABLE code_records (
    id BLOB PRIMARY KEY,
    host_id INTEGER NOT NULL REFERENCES hosts(id),
    ksf TEXT NOT NULL,
    record BLOB NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE grants (
    host_id INTEGER NOT NULL REFERENCES hosts(id),
    user_id INTEGER NOT NULL REFERENCES users(id),
    record_id BLOB REFERENCES code_records(id),
    is_owner INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (host_id, user_id)
);
CREATE TABLE invites (
    digest BLOB PRIMARY KEY,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at INTEGER,
    created_at INTEGER NOT NULL
);
CREATE TABLE attempts (
    id INTEGER PRIMARY KEY,
    host_id INTEGER NOT NULL REFERENCES hosts(id),
    user_id INTEGER NOT NULL REFERENCES users(id),
    source TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'success', 'failed')),
    created_at INTEGER NOT NULL,
    finished_at INTEGER
);
CREATE INDEX attempts_pending ON attempts(state) WHERE state = 'pending';
CREATE TABLE audit (
    id INTEGER PRIMARY KEY,
    at INTEGER NOT NULL,
    event TEXT NOT NULL,
    host TEXT,
    user TEXT,
    source TEXT,
    detail TEXT
);
CREATE INDEX audit_host ON audit(host, id);
"#,
    r#"
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY,
    channel TEXT NOT NULL CHECK (channel IN ('email', 'host')),
    recipient TEXT NOT NULL,
    subject TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sent', 'stored')),
    last_error TEXT,
    sent_at INTEGER
);
CREATE INDEX outbox_due ON outbox(next_attempt_at) WHERE state = 'pending';
"#,
    r#"
CREATE TABLE resume_tickets (
    digest BLOB PRIMARY KEY,
    host_id INTEGER NOT NULL REFERENCES hosts(id),
    user_id INTEGER NOT NULL REFERENCES users(id),
    session TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at INTEGER
);
"#,
    // The lockout count per user (SPEC S6: a success clears only the
    // succeeding user's failures). Counts kept before this migration are
    // given to the host's owner: nothing counted is lost. Attempts remember
    // the code record they were reserved with (a verdict checks the grant
    // still points at it) and may end 'refused' (a right code that may not
    // start a session, which counts nothing). Sessions are registered in
    // the verdict's transaction.
    r#"
CREATE TABLE user_failures (
    host_id INTEGER NOT NULL REFERENCES hosts(id),
    user_id INTEGER NOT NULL REFERENCES users(id),
    failures INTEGER NOT NULL,
    PRIMARY KEY (host_id, user_id)
);
INSERT INTO user_failures (host_id, user_id, failures)
    SELECT h.id, h.owner_id,
           h.failures - (SELECT COUNT(*) FROM attempts a WHERE a.host_id = h.id AND a.state = 'pending')
    FROM hosts h
    WHERE h.failures > (SELECT COUNT(*) FROM attempts a WHERE a.host_id = h.id AND a.state = 'pending');
ALTER TABLE hosts DROP COLUMN failures;
CREATE TABLE attempts_v4 (
    id INTEGER PRIMARY KEY,
    host_id INTEGER NOT NULL REFERENCES hosts(id),
    user_id INTEGER NOT NULL REFERENCES users(id),
    record_id BLOB,
    source TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'success', 'failed', 'refused')),
    created_at INTEGER NOT NULL,
    finished_at INTEGER
);
INSERT INTO attempts_v4 (id, host_id, user_id, record_id, source, state, created_at, finished_at)
    SELECT id, host_id, user_id, NULL, source, state, created_at, finished_at FROM attempts;
DROP TABLE attempts;
ALTER TABLE attempts_v4 RENAME TO attempts;
CREATE INDEX attempts_pending ON attempts(host_id) WHERE state = 'pending';
CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    host_id INTEGER NOT NULL REFERENCES hosts(id),
    user_id INTEGER NOT NULL REFERENCES users(id),
    started_at INTEGER NOT NULL,
    ended_at INTEGER
);
CREATE INDEX sessions_open ON sessions(host_id) WHERE ended_at IS NULL;
"#,
    // A grant's generation: a revoke and a re-grant make a new one, so an
    // attempt reserved before the revoke never starts a session after it,
    // even when the new grant points at the same code record.
    r#"
ALTER TABLE grants ADD COLUMN generation INTEGER NOT NULL DEFAULT 0;
ALTER TABLE attempts ADD COLUMN grant_generation INTEGER;
INSERT OR IGNORE INTO meta (key, value) VALUES ('grant_generation', '0');
"#,
];

/// How long a writer waits for another process's transaction.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The SQLite store.
pub struct SqliteStore {
    conn: Mutex<Connection>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and migrates it.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path)?;
        Self::init(conn)
    }

    /// An in-memory store, for unit tests.
    pub fn in_memory() -> Result<Self, StoreError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(mut conn: Connection) -> Result<Self, StoreError> {
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // The relay and the admin CLI may open the store at the same time:
        // the version is read inside the write transaction, so each
        // migration runs exactly once.
        loop {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let version: usize = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
            if version > MIGRATIONS.len() {
                return Err(StoreError::Corrupt(format!(
                    "schema version {version} is newer than this relay ({})",
                    MIGRATIONS.len()
                )));
            }
            let Some(sql) = MIGRATIONS.get(version) else {
                break;
            };
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", version + 1)?;
            tx.commit()?;
        }
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    /// Runs `f` in an immediate transaction and commits it.
    fn write<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let value = f(&tx)?;
        tx.commit()?;
        Ok(value)
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&conn)
    }
}

/// Statements go through SQLite's statement cache: parsing each anew took
/// about 9 % of the relay's CPU per login (issue 16).
trait Cached {
    fn exec<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize>;
    fn row<T, P: rusqlite::Params>(
        &self,
        sql: &str,
        params: P,
        f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T>;
}

impl Cached for Connection {
    fn exec<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize> {
        self.prepare_cached(sql)?.execute(params)
    }

    fn row<T, P: rusqlite::Params>(
        &self,
        sql: &str,
        params: P,
        f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        self.prepare_cached(sql)?.query_row(params, f)
    }
}

/// Distinct statements the store runs, with room to spare.
const STATEMENT_CACHE: usize = 256;

fn key_from(blob: Option<Vec<u8>>) -> Result<Option<PublicKey>, StoreError> {
    blob.map(|b| {
        b.try_into()
            .map(PublicKey)
            .map_err(|_| StoreError::Corrupt("device key is not 32 bytes".into()))
    })
    .transpose()
}

fn user_id(tx: &Connection, user: &str) -> Result<i64, StoreError> {
    tx.row("SELECT id FROM users WHERE name = ?1", [user], |r| r.get(0))
        .optional()?
        .ok_or_else(|| StoreError::NoSuchUser(user.into()))
}

/// (id, owner id) of a host.
fn host_ids(tx: &Connection, host: &str) -> Result<(i64, i64), StoreError> {
    tx.row(
        "SELECT id, owner_id FROM hosts WHERE name = ?1",
        [host],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()?
    .ok_or_else(|| StoreError::NoSuchHost(host.into()))
}

fn insert_audit(tx: &Connection, e: &Event<'_>, now: UnixTime) -> Result<(), StoreError> {
    tx.exec(
        "INSERT INTO audit (at, event, host, user, source, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            now,
            e.event,
            e.host,
            e.user,
            e.source.map(|s| s.to_string()),
            e.detail
        ],
    )?;
    Ok(())
}

/// Reads `id, at, event, host, user, source, detail`.
fn audit_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AuditRow> {
    Ok(AuditRow {
        id: r.get(0)?,
        at: r.get(1)?,
        event: r.get(2)?,
        host: r.get(3)?,
        user: r.get(4)?,
        source: r.get(5)?,
        detail: r.get(6)?,
    })
}

/// Reads `id, channel, recipient, subject, body, attempts, state, last_error`.
fn outbox_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<OutboxRow> {
    Ok(OutboxRow {
        id: r.get(0)?,
        channel: r.get(1)?,
        recipient: r.get(2)?,
        subject: r.get(3)?,
        body: r.get(4)?,
        attempts: r.get(5)?,
        state: r.get(6)?,
        last_error: r.get(7)?,
    })
}

/// The host's lockout state, as [`crate::lockout`] reads it.
fn tally(tx: &Connection, host_id: i64) -> Result<Tally, StoreError> {
    Ok(tx.row(
        "SELECT lockout_threshold, locked_at IS NOT NULL,
                (SELECT COALESCE(SUM(failures), 0) FROM user_failures WHERE host_id = ?1),
                (SELECT COUNT(*) FROM attempts WHERE host_id = ?1 AND state = 'pending')
         FROM hosts WHERE id = ?1",
        [host_id],
        |r| {
            Ok(Tally {
                threshold: r.get(0)?,
                locked: r.get(1)?,
                decided: r.get(2)?,
                pending: r.get(3)?,
            })
        },
    )?)
}

fn user_pending(tx: &Connection, host_id: i64, user_id: i64) -> Result<u32, StoreError> {
    Ok(tx.row(
        "SELECT COUNT(*) FROM attempts WHERE host_id = ?1 AND user_id = ?2 AND state = 'pending'",
        [host_id, user_id],
        |r| r.get(0),
    )?)
}

fn user_failures(tx: &Connection, host_id: i64, user_id: i64) -> Result<u32, StoreError> {
    Ok(tx
        .row(
            "SELECT failures FROM user_failures WHERE host_id = ?1 AND user_id = ?2",
            [host_id, user_id],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(0))
}

/// Settles one pending attempt inside `tx`: the rule decides, this writes
/// the verdict, the user's failures, the lock with its audit row and
/// notices, and for a success the session. `None` if it was not pending.
fn settle_one(
    tx: &Connection,
    attempt: i64,
    proof: Proof,
    detail: &str,
    session: Option<&SessionId>,
    now: UnixTime,
) -> Result<Option<Settlement>, StoreError> {
    type Row = (
        i64,
        i64,
        String,
        String,
        String,
        Option<Vec<u8>>,
        Option<i64>,
    );
    let row: Option<Row> = tx
        .row(
            "SELECT a.host_id, a.user_id, h.name, u.name, a.source, a.record_id, a.grant_generation
             FROM attempts a JOIN hosts h ON h.id = a.host_id JOIN users u ON u.id = a.user_id
             WHERE a.id = ?1 AND a.state = 'pending'",
            [attempt],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                ))
            },
        )
        .optional()?;
    let Some((host_id, user_id, host, user, source, record, generation)) = row else {
        return Ok(None);
    };
    let source: Option<IpAddr> = source.parse().ok();
    // The very grant the attempt was reserved under: the same code record,
    // and not revoked and granted again meanwhile.
    let grant_current = match (&record, generation) {
        (Some(record), Some(generation)) => tx
            .row(
                "SELECT 1 FROM grants
                 WHERE host_id = ?1 AND user_id = ?2 AND record_id = ?3 AND generation = ?4",
                params![host_id, user_id, record, generation],
                |_| Ok(()),
            )
            .optional()?
            .is_some(),
        _ => false,
    };
    let before = tally(tx, host_id)?;
    let user_before = user_failures(tx, host_id, user_id)?;
    let settlement = lockout::settle(proof, grant_current, &before);
    let (after, locks) = lockout::after_settling(&before, settlement, user_before);
    let (state, event_name, detail) = match settlement {
        Settlement::Success => ("success", "login-ok", None),
        Settlement::Failure => ("failed", "login-failed", Some(detail.to_string())),
        Settlement::Void(VoidReason::GrantGone) => (
            "refused",
            "login-refused",
            Some("right code, but the grant was revoked or its code replaced meanwhile".into()),
        ),
        Settlement::Void(VoidReason::Locked) => (
            "refused",
            "login-refused",
            Some("right code, but the host was locked meanwhile".into()),
        ),
    };
    tx.exec(
        "UPDATE attempts SET state = ?1, finished_at = ?2 WHERE id = ?3",
        params![state, now, attempt],
    )?;
    tx.exec(
        "INSERT INTO user_failures (host_id, user_id, failures) VALUES (?1, ?2, ?3)
         ON CONFLICT (host_id, user_id) DO UPDATE SET failures = excluded.failures",
        params![
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
        tx.exec(
            "INSERT INTO sessions (id, host_id, user_id, started_at) VALUES (?1, ?2, ?3, ?4)",
            params![session.to_string(), host_id, user_id, now],
        )?;
        let e = Event {
            source,
            detail: Some(format!("session {session}")),
            ..event("session-start", Some(&host), Some(&user))
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

/// Locks a host, with its audit row and notices, in the caller's transaction.
#[allow(clippy::too_many_arguments)]
fn lock_host(
    tx: &Connection,
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
        params![now, host_id],
    )?;
    let e = Event {
        source,
        detail: Some(format!(
            "{} failed attempts (threshold {}): {cause}",
            tally.decided, tally.threshold
        )),
        ..event("host-locked", Some(host), user)
    };
    insert_audit(tx, &e, now)?;
    let owner = owner_of(tx, host_id)?;
    enqueue(tx, &notice::locked(host, &owner, cause, tally.decided), now)
}

/// Queues a notice in the same transaction as the event it reports, so a
/// notice exists exactly when its event does (SPEC B2).
fn enqueue(tx: &Connection, notice: &Notice, now: UnixTime) -> Result<(), StoreError> {
    for (channel, recipient) in &notice.to {
        tx.exec(
            "INSERT INTO outbox (channel, recipient, subject, body, created_at, next_attempt_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
            params![
                channel.as_str(),
                recipient,
                notice.subject,
                notice.body,
                now
            ],
        )?;
    }
    Ok(())
}

fn owner_of(tx: &Connection, host_id: i64) -> Result<String, StoreError> {
    Ok(tx.row(
        "SELECT u.name FROM hosts h JOIN users u ON u.id = h.owner_id WHERE h.id = ?1",
        [host_id],
        |r| r.get(0),
    )?)
}

fn event<'a>(event: &'a str, host: Option<&'a str>, user: Option<&'a str>) -> Event<'a> {
    Event {
        event,
        host,
        user,
        ..Default::default()
    }
}

impl Store for SqliteStore {
    fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.read(|c| {
            Ok(
                c.row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
                    .optional()?,
            )
        })
    }

    fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.exec(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                [key, value],
            )?;
            Ok(())
        })
    }

    fn create_invite(
        &self,
        name: &str,
        kind: &InviteKind,
        digest: [u8; 32],
        expires_at: UnixTime,
        now: UnixTime,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            let kind_text = match kind {
                InviteKind::User { email } => {
                    tx.exec(
                        "INSERT OR IGNORE INTO users (name, created_at) VALUES (?1, ?2)",
                        params![name, now],
                    )?;
                    if let Some(email) = email {
                        tx.exec("UPDATE users SET email = ?1 WHERE name = ?2", params![email, name])?;
                    }
                    "user"
                }
                InviteKind::Host { owner, lockout_threshold } => {
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
                            tx.exec(
                                "INSERT INTO hosts (name, owner_id, lockout_threshold, created_at) VALUES (?1, ?2, ?3, ?4)",
                                params![name, owner_id, lockout_threshold.max(&1), now],
                            )?;
                            let host_id = tx.last_insert_rowid();
                            tx.exec(
                                "INSERT INTO grants (host_id, user_id, record_id, is_owner, created_at)
                                 VALUES (?1, ?2, NULL, 1, ?3)",
                                params![host_id, owner_id, now],
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
                params![now, kind_text, name],
            )?;
            tx.exec(
                "INSERT INTO invites (digest, kind, name, expires_at, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![&digest[..], kind_text, name, expires_at, now],
            )?;
            let cancelled = if cancelled > 0 {
                format!("; {cancelled} earlier invite(s) cancelled")
            } else {
                String::new()
            };
            let e = Event {
                detail: Some(format!("expires at {expires_at}{cancelled}")),
                ..event("invite-created", (kind_text == "host").then_some(name), (kind_text == "user").then_some(name))
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
            let row: Option<(String, String, UnixTime, Option<UnixTime>)> = tx
                .row(
                    "SELECT kind, name, expires_at, used_at FROM invites WHERE digest = ?1",
                    [&digest[..]],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .optional()?;
            let Some((kind, name, expires_at, None)) = row.filter(|r| r.2 > now) else {
                return Ok(None);
            };
            tx.exec(
                "UPDATE invites SET used_at = ?1 WHERE digest = ?2",
                params![now, &digest[..]],
            )?;
            let is_host = kind == "host";
            if is_host {
                tx.exec(
                    "UPDATE hosts SET device_key = ?1, platform = ?2 WHERE name = ?3",
                    params![&device_key.0[..], platform.as_str(), name],
                )?;
            } else {
                tx.exec(
                    "UPDATE users SET device_key = ?1 WHERE name = ?2",
                    params![&device_key.0[..], name],
                )?;
            }
            let e = Event {
                source: Some(source),
                detail: Some(format!("device key {}", device_key.to_text())),
                ..event(
                    "enrolled",
                    is_host.then_some(&name),
                    (!is_host).then_some(&name),
                )
            };
            insert_audit(tx, &e, now)?;
            let _ = expires_at;
            Ok(Some(Enrolled { name, is_host }))
        })?;
        match outcome {
            Some(enrolled) => Ok(enrolled),
            None => {
                self.audit(
                    Event {
                        event: "enroll-refused",
                        source: Some(source),
                        detail: Some("unknown, used or expired invite".into()),
                        ..Default::default()
                    },
                    now,
                )?;
                Err(StoreError::InvalidInvite)
            }
        }
    }

    fn user_key(&self, user: &UserName) -> Result<Option<PublicKey>, StoreError> {
        self.read(|c| {
            let blob: Option<Option<Vec<u8>>> = c
                .row(
                    "SELECT device_key FROM users WHERE name = ?1",
                    [user.as_str()],
                    |r| r.get(0),
                )
                .optional()?;
            key_from(blob.flatten())
        })
    }

    fn host_key(&self, host: &HostName) -> Result<Option<PublicKey>, StoreError> {
        self.read(|c| {
            let blob: Option<Option<Vec<u8>>> = c
                .row(
                    "SELECT device_key FROM hosts WHERE name = ?1",
                    [host.as_str()],
                    |r| r.get(0),
                )
                .optional()?;
            key_from(blob.flatten())
        })
    }

    fn code_record(
        &self,
        user: &UserName,
        host: &HostName,
    ) -> Result<Option<CodeRecord>, StoreError> {
        self.read(|c| {
            let row: Option<(Vec<u8>, String, Vec<u8>)> = c
                .row(
                    "SELECT r.id, r.ksf, r.record FROM grants g
                     JOIN users u ON u.id = g.user_id
                     JOIN hosts h ON h.id = g.host_id
                     JOIN code_records r ON r.id = g.record_id
                     WHERE u.name = ?1 AND h.name = ?2",
                    [user.as_str(), host.as_str()],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            row.map(|(id, ksf, record)| {
                Ok(CodeRecord {
                    id: RecordId(
                        id.try_into()
                            .map_err(|_| StoreError::Corrupt("record id is not 16 bytes".into()))?,
                    ),
                    ksf: KsfProfile::parse(&ksf).ok_or_else(|| {
                        StoreError::Corrupt(format!("unknown key-stretching profile {ksf}"))
                    })?,
                    record,
                })
            })
            .transpose()
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
        self.write(|tx| {
            let (host_id, _) = host_ids(tx, host.as_str())?;
            let user_id = user_id(tx, user.as_str())?;
            let ev = |name| Event {
                source: Some(source),
                ..event(name, Some(host.as_str()), Some(user.as_str()))
            };
            match lockout::admit(&tally(tx, host_id)?, user_pending(tx, host_id, user_id)?) {
                Admission::Locked => {
                    insert_audit(tx, &ev("login-locked"), now)?;
                    Ok(Reservation::Locked)
                }
                Admission::Busy => {
                    insert_audit(tx, &ev("login-busy"), now)?;
                    Ok(Reservation::Busy)
                }
                Admission::Reserve => {
                    tx.exec(
                        "INSERT INTO attempts (host_id, user_id, record_id, grant_generation, source, state, created_at)
                         VALUES (?1, ?2, ?3,
                                 (SELECT generation FROM grants WHERE host_id = ?1 AND user_id = ?2),
                                 ?4, 'pending', ?5)",
                        params![host_id, user_id, &record.0[..], source.to_string(), now],
                    )?;
                    Ok(Reservation::Reserved(AttemptId(tx.last_insert_rowid())))
                }
            }
        })
    }

    fn admission(&self, host: &HostName, user: &UserName) -> Result<Admission, StoreError> {
        self.read(|c| {
            let (host_id, _) = host_ids(c, host.as_str())?;
            let user_id = user_id(c, user.as_str())?;
            Ok(lockout::admit(
                &tally(c, host_id)?,
                user_pending(c, host_id, user_id)?,
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
            let pending: Vec<i64> = {
                let mut stmt = tx.prepare_cached(
                    "SELECT id FROM attempts WHERE state = 'pending' AND created_at < ?1 ORDER BY id",
                )?;
                let rows = stmt.query_map([reserved_before], |r| r.get(0))?;
                rows.collect::<Result<_, _>>()?
            };
            for id in &pending {
                settle_one(tx, *id, Proof::NotProven, detail, None, now)?;
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
                params![&record.id.0[..], host_id, record.ksf.as_str(), record.record, now],
            )?;
            let (user_id, event_name) = match target {
                CodeTarget::Owner => (owner_id, "code-changed"),
                CodeTarget::Grant(user) => (user_id(tx, user.as_str())?, "code-reset"),
                _ => return Err(StoreError::Refused("unknown code target".into())),
            };
            let is_owner = matches!(target, CodeTarget::Owner);
            let changed = tx.exec(
                "UPDATE grants SET record_id = ?1 WHERE host_id = ?2 AND user_id = ?3 AND is_owner = ?4",
                params![&record.id.0[..], host_id, user_id, is_owner],
            )?;
            if changed == 0 {
                return Err(StoreError::Refused(format!(
                    "that user has no shared access to host '{host}'"
                )));
            }
            let user: String = tx.row("SELECT name FROM users WHERE id = ?1", [user_id], |r| r.get(0))?;
            insert_audit(tx, &event(event_name, Some(host.as_str()), Some(&user)), now)
        })
    }

    fn grant(&self, host: &HostName, user: &UserName, now: UnixTime) -> Result<(), StoreError> {
        self.write(|tx| {
            let (host_id, owner_id) = host_ids(tx, host.as_str())?;
            let user_id = user_id(tx, user.as_str())?;
            let (shared, owner_record): (bool, Option<Vec<u8>>) = tx.row(
                "SELECT h.shared_access, g.record_id FROM hosts h
                 JOIN grants g ON g.host_id = h.id AND g.is_owner = 1 WHERE h.id = ?1",
                [host_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            if !shared {
                return Err(StoreError::Refused(format!(
                    "shared access is disabled on host '{host}': enable it first"
                )));
            }
            if user_id == owner_id {
                return Err(StoreError::Refused(format!("'{user}' owns host '{host}' already")));
            }
            let Some(record) = owner_record else {
                return Err(StoreError::Refused(format!(
                    "the owner of host '{host}' has not set an access code yet (latchkey host set-code)"
                )));
            };
            let generation: i64 = tx.row(
                "UPDATE meta SET value = CAST(value AS INTEGER) + 1
                 WHERE key = 'grant_generation' RETURNING CAST(value AS INTEGER)",
                [],
                |r| r.get(0),
            )?;
            let inserted = tx.exec(
                "INSERT OR IGNORE INTO grants (host_id, user_id, record_id, is_owner, created_at, generation)
                 VALUES (?1, ?2, ?3, 0, ?4, ?5)",
                params![host_id, user_id, record, now, generation],
            )?;
            if inserted == 0 {
                return Err(StoreError::Refused(format!(
                    "'{user}' has shared access to '{host}' already (revoke and grant again to give them the current code)"
                )));
            }
            insert_audit(tx, &event("grant", Some(host.as_str()), Some(user.as_str())), now)?;
            let owner = owner_of(tx, host_id)?;
            enqueue(tx, &notice::granted(host.as_str(), &owner, user.as_str()), now)
        })
    }

    fn revoke(&self, host: &HostName, user: &UserName, now: UnixTime) -> Result<(), StoreError> {
        self.write(|tx| {
            let (host_id, _) = host_ids(tx, host.as_str())?;
            let user_id = user_id(tx, user.as_str())?;
            let removed = tx.exec(
                "DELETE FROM grants WHERE host_id = ?1 AND user_id = ?2 AND is_owner = 0",
                params![host_id, user_id],
            )?;
            if removed == 0 {
                return Err(StoreError::Refused(format!(
                    "'{user}' has no shared access to '{host}'"
                )));
            }
            insert_audit(
                tx,
                &event("revoke", Some(host.as_str()), Some(user.as_str())),
                now,
            )?;
            let owner = owner_of(tx, host_id)?;
            enqueue(
                tx,
                &notice::revoked(host.as_str(), &owner, user.as_str()),
                now,
            )
        })
    }

    fn unlock(&self, host: &HostName, now: UnixTime) -> Result<u32, StoreError> {
        self.write(|tx| {
            let (host_id, _) = host_ids(tx, host.as_str())?;
            tx.exec("UPDATE hosts SET locked_at = NULL WHERE id = ?1", [host_id])?;
            tx.exec("DELETE FROM user_failures WHERE host_id = ?1", [host_id])?;
            insert_audit(tx, &event("unlock", Some(host.as_str()), None), now)?;
            // Attempts still pending stay counted until they are settled.
            Ok(tally(tx, host_id)?.count())
        })
    }

    fn set_presence(&self, changes: &[(HostName, bool)]) -> Result<(), StoreError> {
        self.write(|tx| {
            let mut update = tx.prepare_cached("UPDATE hosts SET online = ?1 WHERE name = ?2")?;
            for (host, online) in changes {
                update.execute(params![online, host.as_str()])?;
            }
            Ok(())
        })
    }

    fn clear_online(&self) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.exec("UPDATE hosts SET online = 0", [])?;
            Ok(())
        })
    }

    fn users(&self) -> Result<Vec<UserRow>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT name, device_key IS NOT NULL, email FROM users ORDER BY name",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(UserRow {
                    name: r.get(0)?,
                    enrolled: r.get(1)?,
                    email: r.get(2)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    fn hosts(&self) -> Result<Vec<HostStatus>, StoreError> {
        let names: Vec<String> = self.read(|c| {
            let mut stmt = c.prepare_cached("SELECT name FROM hosts ORDER BY name")?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })?;
        names
            .into_iter()
            .map(|n| {
                let name: HostName = n
                    .parse()
                    .map_err(|_| StoreError::Corrupt(format!("host name {n:?}")))?;
                self.host_status(&name)
            })
            .collect()
    }

    fn host_status(&self, host: &HostName) -> Result<HostStatus, StoreError> {
        self.read(|c| {
            let (id, _) = host_ids(c, host.as_str())?;
            let mut status = c.row(
                "SELECT h.name, o.name, h.device_key IS NOT NULL, h.platform, g.record_id IS NOT NULL,
                        h.shared_access, h.lockout_threshold, h.locked_at IS NOT NULL, h.online
                 FROM hosts h JOIN users o ON o.id = h.owner_id
                 JOIN grants g ON g.host_id = h.id AND g.is_owner = 1
                 WHERE h.id = ?1",
                [id],
                |r| {
                    Ok(HostStatus {
                        name: r.get(0)?,
                        owner: r.get(1)?,
                        enrolled: r.get(2)?,
                        platform: r.get(3)?,
                        code_set: r.get(4)?,
                        shared_access: r.get(5)?,
                        lockout_threshold: r.get(6)?,
                        failures: 0,
                        locked: r.get(7)?,
                        online: r.get(8)?,
                        grants: Vec::new(),
                    })
                },
            )?;
            let mut stmt = c.prepare_cached(
                "SELECT u.name FROM grants g JOIN users u ON u.id = g.user_id
                 WHERE g.host_id = ?1 AND g.is_owner = 0 ORDER BY u.name",
            )?;
            let rows = stmt.query_map([id], |r| r.get(0))?;
            status.grants = rows.collect::<Result<_, _>>()?;
            status.failures = tally(c, id)?.count();
            Ok(status)
        })
    }

    fn hosts_for_user(&self, user: &UserName) -> Result<Vec<HostInfo>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT h.name, o.name, h.online, h.locked_at IS NOT NULL, g.is_owner
                 FROM grants g JOIN users u ON u.id = g.user_id
                 JOIN hosts h ON h.id = g.host_id JOIN users o ON o.id = h.owner_id
                 WHERE u.name = ?1 ORDER BY h.name LIMIT ?2",
            )?;
            let rows = stmt.query_map(
                params![user.as_str(), latchkey_protocol::limits::MAX_HOSTS_LISTED],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                    ))
                },
            )?;
            rows.map(|row| {
                let (name, owner, online, locked, is_owner) = row?;
                Ok(HostInfo {
                    name: name
                        .parse()
                        .map_err(|_| StoreError::Corrupt(format!("host name {name:?}")))?,
                    owner: owner
                        .parse()
                        .map_err(|_| StoreError::Corrupt(format!("user name {owner:?}")))?,
                    online,
                    locked,
                    is_owner,
                })
            })
            .collect()
        })
    }

    fn set_email(
        &self,
        user: &UserName,
        email: Option<&str>,
        now: UnixTime,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            let id = user_id(tx, user.as_str())?;
            tx.exec(
                "UPDATE users SET email = ?1 WHERE id = ?2",
                params![email, id],
            )?;
            insert_audit(tx, &event("email-changed", None, Some(user.as_str())), now)
        })
    }

    fn user_email(&self, user: &str) -> Result<Option<String>, StoreError> {
        self.read(|c| {
            Ok(
                c.row("SELECT email FROM users WHERE name = ?1", [user], |r| {
                    r.get(0)
                })
                .optional()?
                .flatten(),
            )
        })
    }

    fn set_policy(
        &self,
        host: &HostName,
        shared_access: Option<bool>,
        lockout_threshold: Option<u32>,
        now: UnixTime,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            let (host_id, _) = host_ids(tx, host.as_str())?;
            if let Some(shared) = shared_access {
                tx.exec(
                    "UPDATE hosts SET shared_access = ?1 WHERE id = ?2",
                    params![shared, host_id],
                )?;
            }
            if let Some(threshold) = lockout_threshold {
                if threshold == 0 {
                    return Err(StoreError::Refused(
                        "the lockout threshold must be at least 1".into(),
                    ));
                }
                tx.exec(
                    "UPDATE hosts SET lockout_threshold = ?1 WHERE id = ?2",
                    params![threshold, host_id],
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
                "shared access {}, lockout threshold {}",
                shared_access.map_or("unchanged", |s| if s { "enabled" } else { "disabled" }),
                lockout_threshold.map_or("unchanged".to_string(), |t| t.to_string())
            );
            insert_audit(
                tx,
                &Event {
                    detail: Some(detail),
                    ..event("policy", Some(host.as_str()), None)
                },
                now,
            )
        })
    }

    fn session_ended(
        &self,
        session: &SessionId,
        host: &HostName,
        user: &UserName,
        reason: &str,
        now: UnixTime,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            let (host_id, owner_id) = host_ids(tx, host.as_str())?;
            let user_id = user_id(tx, user.as_str())?;
            tx.exec(
                "UPDATE sessions SET ended_at = ?1 WHERE id = ?2 AND ended_at IS NULL",
                params![now, session.to_string()],
            )?;
            let e = Event {
                detail: Some(format!("session {session}: {reason}")),
                ..event("session-end", Some(host.as_str()), Some(user.as_str()))
            };
            insert_audit(tx, &e, now)?;
            if user_id != owner_id {
                let owner = owner_of(tx, host_id)?;
                enqueue(
                    tx,
                    &notice::secondary_session_ended(host.as_str(), &owner, user.as_str()),
                    now,
                )?;
            }
            Ok(())
        })
    }

    fn prune_audit(&self, before: UnixTime) -> Result<usize, StoreError> {
        self.write(|tx| Ok(tx.exec("DELETE FROM audit WHERE at < ?1", [before])?))
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
            let owner = owner_of(tx, host_id)?;
            let e = Event {
                detail: Some(format!(
                    "connected from {newer} while connected from {older}; the newer was refused"
                )),
                ..event("host-key-twice", Some(host.as_str()), None)
            };
            insert_audit(tx, &e, now)?;
            enqueue(
                tx,
                &notice::host_key_twice(host.as_str(), &owner, older, newer),
                now,
            )
        })
    }

    fn end_open_sessions(&self, now: UnixTime) -> Result<usize, StoreError> {
        self.write(|tx| {
            Ok(tx.exec(
                "UPDATE sessions SET ended_at = ?1 WHERE ended_at IS NULL",
                [now],
            )?)
        })
    }

    fn due_notices(&self, now: UnixTime, limit: usize) -> Result<Vec<OutboxRow>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, channel, recipient, subject, body, attempts, state, last_error FROM outbox
                 WHERE state = 'pending' AND next_attempt_at <= ?1 ORDER BY id LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![now, limit as i64], outbox_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    fn notice_done(&self, id: i64, state: &str, now: UnixTime) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.exec(
                "UPDATE outbox SET state = ?1, sent_at = ?2, attempts = attempts + 1 WHERE id = ?3",
                params![state, now, id],
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
                params![error, next_attempt_at, id],
            )?;
            Ok(())
        })
    }

    fn outbox(&self, limit: usize) -> Result<Vec<OutboxRow>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, channel, recipient, subject, body, attempts, state, last_error FROM outbox
                 ORDER BY id DESC LIMIT ?1",
            )?;
            let rows = stmt.query_map([limit as i64], outbox_row)?;
            let mut out: Vec<OutboxRow> = rows.collect::<Result<_, _>>()?;
            out.reverse();
            Ok(out)
        })
    }

    fn events_after(&self, after: i64, limit: usize) -> Result<Vec<AuditRow>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, at, event, host, user, source, detail FROM audit WHERE id > ?1 ORDER BY id LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![after, limit as i64], audit_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    fn last_event_id(&self) -> Result<i64, StoreError> {
        self.read(|c| Ok(c.row("SELECT COALESCE(MAX(id), 0) FROM audit", [], |r| r.get(0))?))
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
            let shared: bool = tx.row("SELECT shared_access FROM hosts WHERE id = ?1", [host_id], |r| r.get(0))?;
            if !shared {
                return Err(StoreError::Refused(format!(
                    "in-session reboot needs shared access enabled on host '{host}'"
                )));
            }
            if tx
                .row(
                    "SELECT 1 FROM grants WHERE host_id = ?1 AND user_id = ?2 AND record_id IS NOT NULL",
                    params![host_id, user_id],
                    |_| Ok(()),
                )
                .optional()?
                .is_none()
            {
                return Err(StoreError::Refused(format!("'{user}' has no access to host '{host}'")));
            }
            tx.exec(
                "INSERT INTO resume_tickets (digest, host_id, user_id, session, created_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![&digest[..], host_id, user_id, session, now, expires_at],
            )?;
            let e = Event { detail: Some(format!("session {session}")), ..event("reboot", Some(host.as_str()), Some(user.as_str())) };
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
            let row: Option<(String, String, UnixTime, Option<UnixTime>)> = tx
                .row(
                    "SELECT h.name, t.session, t.expires_at, t.used_at FROM resume_tickets t
                     JOIN hosts h ON h.id = t.host_id WHERE t.digest = ?1",
                    [&digest[..]],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .optional()?;
            let verdict = match row.clone() {
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
            if matches!(row.as_ref(), Some((h, _, _, None)) if h == host.as_str()) {
                tx.exec(
                    "UPDATE resume_tickets SET used_at = ?1 WHERE digest = ?2",
                    params![now, &digest[..]],
                )?;
            }
            let (name, detail) = match &verdict {
                Ok(session) => ("resume", format!("session {session}")),
                Err(why) => ("resume-refused", (*why).to_string()),
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

    fn audit_log(
        &self,
        host: Option<&HostName>,
        since: Option<UnixTime>,
        limit: usize,
    ) -> Result<Vec<AuditRow>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, at, event, host, user, source, detail FROM audit
                 WHERE (?1 IS NULL OR host = ?1) AND (?3 IS NULL OR at >= ?3)
                 ORDER BY id DESC LIMIT ?2",
            )?;
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let rows =
                stmt.query_map(params![host.map(|h| h.as_str()), limit, since], audit_row)?;
            let mut out: Vec<AuditRow> = rows.collect::<Result<_, _>>()?;
            out.reverse();
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh() -> SqliteStore {
        SqliteStore::in_memory().expect("in-memory store")
    }

    #[test]
    fn the_embedded_store_agrees_with_the_lockout_model() {
        crate::store::suite::lockout_agrees_with_the_model(|| Box::new(fresh()));
    }

    #[test]
    fn lowering_the_threshold_to_the_failures_counted_locks_at_once() {
        crate::store::suite::lowering_the_threshold_to_the_failures_counted_locks_at_once(&fresh());
    }

    #[test]
    fn audit_rows_are_pruned_by_age() {
        crate::store::suite::audit_rows_are_pruned_by_age(&fresh());
    }
}

#[cfg(test)]
mod ticket_tests {
    use super::*;

    /// The reboot the relay waits for: each test ticket's own.
    fn live(session: &str) -> Option<&str> {
        Some(session)
    }

    #[test]
    fn a_ticket_redeemed_concurrently_from_many_connections_succeeds_exactly_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.db");
        let store = SqliteStore::open(&path).unwrap();
        let (alice, host, _) = crate::store::suite::alice_owns_mypc(&store, 3);
        store
            .create_ticket([7; 32], &host, &alice, "s1", 1_000, 0)
            .unwrap();
        // Eight connections (as eight relays would have) race to spend it.
        let wins: usize = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let path = path.clone();
                    let host = host.clone();
                    scope.spawn(move || {
                        let store = SqliteStore::open(&path).unwrap();
                        let source = "127.0.0.1".parse().unwrap();
                        usize::from(
                            store
                                .redeem_ticket([7; 32], &host, live("s1"), source, 5)
                                .unwrap()
                                .is_ok(),
                        )
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(wins, 1);
        let source = "127.0.0.1".parse().unwrap();
        assert_eq!(
            store
                .redeem_ticket([7; 32], &host, live("s1"), source, 5)
                .unwrap(),
            Err("ticket already used")
        );
        assert_eq!(
            store
                .redeem_ticket([8; 32], &host, live("s1"), source, 5)
                .unwrap(),
            Err("unknown ticket")
        );
        store
            .create_ticket([9; 32], &host, &alice, "s2", 10, 0)
            .unwrap();
        assert_eq!(
            store
                .redeem_ticket([9; 32], &host, live("s2"), source, 11)
                .unwrap(),
            Err("ticket expired")
        );
        let other: HostName = "other".parse().unwrap();
        store
            .create_invite(
                "other",
                &InviteKind::Host {
                    owner: alice,
                    lockout_threshold: 3,
                },
                [3; 32],
                10,
                0,
            )
            .unwrap();
        store
            .create_ticket([10; 32], &host, &"alice".parse().unwrap(), "s3", 1_000, 0)
            .unwrap();
        assert_eq!(
            store
                .redeem_ticket([10; 32], &other, live("s3"), source, 5)
                .unwrap(),
            Err("ticket of another host")
        );
        assert!(store
            .redeem_ticket([10; 32], &host, live("s3"), source, 5)
            .unwrap()
            .is_ok());
        // Not the ticket of the reboot the relay waits for (or none waits).
        store
            .create_ticket([11; 32], &host, &"alice".parse().unwrap(), "s4", 1_000, 0)
            .unwrap();
        assert_eq!(
            store
                .redeem_ticket([11; 32], &host, live("s5"), source, 5)
                .unwrap(),
            Err("no reboot of this host waits for this ticket")
        );
        assert_eq!(
            store
                .redeem_ticket([11; 32], &host, None, source, 5)
                .unwrap(),
            Err("ticket already used")
        );
    }
}
