//! The embedded default store: one SQLite database in the relay's data
//! directory, in WAL mode so the admin CLI can read and write while the
//! relay runs. Writes use `BEGIN IMMEDIATE`, so two processes (or two
//! tasks) never interleave a read-modify-write of a counter, and
//! `synchronous = FULL`, so a committed attempt survives a crash.

use std::{
    path::Path,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use rusqlite::{
    types::{ToSqlOutput, ValueRef},
    Connection, ToSql, TransactionBehavior,
};

use super::{
    relational::SqlStore,
    sql::{args, audit_row, Backend, Body, Cell, EventFeed, Row, Tx, Value},
    AuditRow, StoreError,
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
    // The admin console: its accounts, when each host was last seen, and
    // the audit log by time (the overview counts the last hour's events;
    // PostgreSQL's schema has had this index from its start).
    r#"
CREATE INDEX audit_at ON audit(at);
ALTER TABLE hosts ADD COLUMN last_seen INTEGER;
CREATE TABLE admins (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    email TEXT,
    password_hash TEXT,
    totp_secret BLOB,
    totp_last_step INTEGER NOT NULL DEFAULT 0,
    setup_digest BLOB UNIQUE,
    setup_expires_at INTEGER,
    failures INTEGER NOT NULL DEFAULT 0,
    locked_at INTEGER,
    created_at INTEGER NOT NULL
);
"#,
    // Several relays on one store (SPEC M2): each serving relay's
    // heartbeat, and whose attempts and sessions are whose.
    r#"
CREATE TABLE relays (
    id TEXT PRIMARY KEY,
    started_at INTEGER NOT NULL,
    heartbeat_at INTEGER NOT NULL
);
ALTER TABLE attempts ADD COLUMN relay_id TEXT;
ALTER TABLE sessions ADD COLUMN relay_id TEXT;
"#,
    // Several relays serving at once (SPEC M3): where each relay is
    // reached, and which relay holds each online host.
    r#"
ALTER TABLE relays ADD COLUMN addr TEXT;
ALTER TABLE hosts ADD COLUMN relay_id TEXT;
"#,
    // Sessions that outlive their relay (SPEC M5): each live
    // session's latest resume ticket, by digest, single-use.
    r#"
CREATE TABLE session_tickets (
    session TEXT PRIMARY KEY,
    digest BLOB NOT NULL UNIQUE,
    host_id INTEGER NOT NULL,
    user_id INTEGER NOT NULL,
    record_id BLOB NOT NULL,
    generation INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX session_tickets_expiry ON session_tickets (expires_at);
"#,
    // Offboarding: a removed user or host keeps its row (and so its
    // lockout counts and the history that points at it) but nothing that
    // lets a device in; inviting the name again brings it back.
    r#"
ALTER TABLE users ADD COLUMN removed_at INTEGER;
ALTER TABLE hosts ADD COLUMN removed_at INTEGER;
"#,
    // When a secondary user's last run of sessions on a host ended, so the
    // owner is told of a run once, not of every session.
    r#"
ALTER TABLE grants ADD COLUMN run_ended_at INTEGER;
"#,
    // The remote desktop a host's agent declared when it last came online
    // (its protocol only), for its users' host lists.
    r#"
ALTER TABLE hosts ADD COLUMN desktop TEXT;
"#,
    // What a shared user may do (a bit per right, see
    // `latchkey_protocol::rights`), the forward targets they are narrowed
    // to (space-separated, none: any the host allows), and when an admin
    // last set them (from the store-wide counter, so a host keeps the
    // newer of two messages that cross); when the grant ends by itself, and
    // after how long without channel traffic a session ends.
    r#"
ALTER TABLE grants ADD COLUMN rights INTEGER NOT NULL DEFAULT 63;
ALTER TABLE grants ADD COLUMN forward_to TEXT;
ALTER TABLE grants ADD COLUMN rights_stamp INTEGER NOT NULL DEFAULT 0;
ALTER TABLE grants ADD COLUMN expires_at INTEGER;
ALTER TABLE grants ADD COLUMN idle_secs INTEGER;
CREATE INDEX grants_expiry ON grants (expires_at);
"#,
];

/// How long a writer waits for another process's transaction.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// How often an event feed looks for new audit rows: SQLite cannot tell
/// another process's connection that a row was committed.
const FEED_POLL: Duration = Duration::from_millis(100);

/// The store on SQLite.
pub type SqliteStore = SqlStore<Sqlite>;

/// The embedded backend: one connection, shared by the relay's tasks.
pub struct Sqlite {
    conn: Arc<Mutex<Connection>>,
}

impl SqlStore<Sqlite> {
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
        Ok(SqlStore {
            backend: Sqlite {
                conn: Arc::new(Mutex::new(conn)),
            },
            latency: None,
            relay: None,
        })
    }
}

fn locked(conn: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    conn.lock().unwrap_or_else(|p| p.into_inner())
}

impl Backend for Sqlite {
    fn write<T>(&self, body: Body<'_, T>) -> Result<T, StoreError> {
        let mut conn = locked(&self.conn);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let value = body(&mut SqliteTx(&tx))?;
        tx.commit()?;
        Ok(value)
    }

    fn read<T>(&self, body: Body<'_, T>) -> Result<T, StoreError> {
        let conn = locked(&self.conn);
        body(&mut SqliteTx(&conn))
    }

    fn event_feed(&self) -> Result<Box<dyn EventFeed>, StoreError> {
        let last = locked(&self.conn)
            .prepare_cached("SELECT COALESCE(MAX(id), 0) FROM audit")?
            .query_row([], |r| r.get(0))?;
        Ok(Box::new(SqliteFeed {
            conn: self.conn.clone(),
            last,
        }))
    }
}

/// Polls the audit table. Rows come in id order, which is commit order
/// here: SQLite has one writer at a time, across processes.
struct SqliteFeed {
    conn: Arc<Mutex<Connection>>,
    last: i64,
}

impl EventFeed for SqliteFeed {
    fn next(&mut self, wait: Duration) -> Result<Vec<AuditRow>, StoreError> {
        let deadline = Instant::now() + wait;
        loop {
            let rows = {
                let conn = locked(&self.conn);
                SqliteTx(&conn).rows(
                    r#"SELECT id, at, event, host, "user", source, detail FROM audit
                       WHERE id > ?1 ORDER BY id LIMIT 1000"#,
                    args![self.last],
                )?
            };
            let rows = rows.iter().map(audit_row).collect::<Result<Vec<_>, _>>()?;
            if let Some(last) = rows.last() {
                self.last = last.id;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if !rows.is_empty() || left.is_zero() {
                return Ok(rows);
            }
            std::thread::sleep(left.min(FEED_POLL));
        }
    }
}

/// Statements go through SQLite's statement cache: parsing each anew took
/// about 9 % of the relay's CPU per login.
struct SqliteTx<'c>(&'c Connection);

impl ToSql for Value<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match *self {
            Value::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::Int(v) => ToSqlOutput::Borrowed(ValueRef::Integer(v)),
            Value::Text(v) => ToSqlOutput::Borrowed(ValueRef::Text(v.as_bytes())),
            Value::Blob(v) => ToSqlOutput::Borrowed(ValueRef::Blob(v)),
        })
    }
}

impl Tx for SqliteTx<'_> {
    fn exec(&mut self, sql: &'static str, args: &[Value<'_>]) -> Result<u64, StoreError> {
        let changed = self
            .0
            .prepare_cached(sql)?
            .execute(rusqlite::params_from_iter(args))?;
        Ok(changed as u64)
    }

    fn rows(&mut self, sql: &'static str, args: &[Value<'_>]) -> Result<Vec<Row>, StoreError> {
        let mut stmt = self.0.prepare_cached(sql)?;
        let columns = stmt.column_count();
        let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let cells = (0..columns)
                .map(|i| {
                    Ok(match r.get_ref(i)? {
                        ValueRef::Null => Cell::Null,
                        ValueRef::Integer(v) => Cell::Int(v),
                        ValueRef::Text(t) => Cell::Text(String::from_utf8_lossy(t).into_owned()),
                        ValueRef::Blob(b) => Cell::Blob(b.to_vec()),
                        ValueRef::Real(_) => {
                            return Err(StoreError::Corrupt(format!("column {i} holds a real")))
                        }
                    })
                })
                .collect::<Result<_, StoreError>>()?;
            out.push(Row(cells));
        }
        Ok(out)
    }
}

/// Distinct statements the store runs, with room to spare.
const STATEMENT_CACHE: usize = 256;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{suite, Store};

    fn fresh() -> SqliteStore {
        SqliteStore::in_memory().expect("in-memory store")
    }

    /// Connections to one database file, as the relay and the admin CLI
    /// (or several processes) have.
    fn on_file(test: impl FnOnce(suite::Open<'_>)) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("relay.db");
        test(&|| Box::new(SqliteStore::open(&path).expect("open")) as Box<dyn Store>);
    }

    #[test]
    fn the_embedded_store_agrees_with_the_lockout_model() {
        suite::lockout_agrees_with_the_model(1000, || Box::new(fresh()));
    }

    #[test]
    fn lowering_the_threshold_to_the_failures_counted_locks_at_once() {
        suite::lowering_the_threshold_to_the_failures_counted_locks_at_once(&fresh());
    }

    #[test]
    fn audit_rows_are_pruned_by_age() {
        suite::audit_rows_are_pruned_by_age(&fresh());
    }

    #[test]
    fn a_sessions_end_is_recorded_once_and_only_if_it_began() {
        suite::a_sessions_end_is_recorded_once_and_only_if_it_began(&fresh());
    }

    #[test]
    fn a_right_code_starts_no_session_beyond_the_users_cap() {
        suite::a_right_code_starts_no_session_beyond_the_users_cap(&fresh());
    }

    #[test]
    fn attempts_from_many_connections_at_once_evaluate_exactly_the_threshold() {
        on_file(suite::attempts_from_many_connections_at_once_evaluate_exactly_the_threshold);
    }

    #[test]
    fn a_ticket_redeemed_from_many_connections_succeeds_exactly_once() {
        on_file(suite::a_ticket_redeemed_from_many_connections_succeeds_exactly_once);
    }

    #[test]
    fn the_event_feed_sees_other_connections_commits_in_order() {
        on_file(suite::the_event_feed_sees_other_connections_commits_in_order);
    }

    #[test]
    fn a_dead_relays_attempts_are_settled_by_the_one_that_outlives_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("relay.db");
        suite::a_dead_relays_attempts_are_settled_by_the_one_that_outlives_it(&|relay| {
            Box::new(SqliteStore::open(&path).expect("open").with_relay(relay))
        });
    }

    #[test]
    fn a_session_ticket_resumes_once_and_only_while_the_rule_admits_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("relay.db");
        suite::a_session_ticket_resumes_once_and_only_while_the_rule_admits_it(&|relay| {
            Box::new(SqliteStore::open(&path).expect("open").with_relay(relay))
        });
    }

    #[test]
    fn each_notice_is_claimed_by_one_connection_at_a_time() {
        on_file(suite::each_notice_is_claimed_by_one_connection_at_a_time);
    }

    #[test]
    fn gauges_count_locked_hosts_and_notices_by_state() {
        suite::gauges_count_locked_hosts_and_notices_by_state(&fresh());
    }

    #[test]
    fn a_removed_user_keeps_nothing_that_lets_them_in() {
        suite::a_removed_user_keeps_nothing_that_lets_them_in(&fresh());
    }

    #[test]
    fn a_grants_rights_are_kept_stamped_and_never_narrow_the_owner() {
        suite::a_grants_rights_are_kept_stamped_and_never_narrow_the_owner(&fresh());
    }

    #[test]
    fn a_grant_with_an_end_ends_once_as_a_revoke_does() {
        suite::a_grant_with_an_end_ends_once_as_a_revoke_does(&fresh());
    }

    #[test]
    fn a_removed_host_keeps_nothing_that_lets_it_in() {
        suite::a_removed_host_keeps_nothing_that_lets_it_in(&fresh());
    }

    #[test]
    fn a_run_of_secondary_sessions_tells_the_owner_once() {
        suite::a_run_of_secondary_sessions_tells_the_owner_once(&fresh());
    }
}
