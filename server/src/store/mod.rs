//! The relay's durable state: users, hosts, grants, code records, attempt
//! counters, locks, invites and the audit log. Behind a trait so another
//! backend (PostgreSQL, for several relays) can replace the embedded SQLite
//! one without touching the relay logic. Every method commits before it
//! returns (SPEC B2).

mod accounts;
mod audit_event;
pub mod notice;
mod postgres;
mod relational;
mod sql;
mod sqlite;
#[cfg(test)]
pub(crate) mod suite;

use std::{net::IpAddr, sync::Arc};

pub use accounts::{AdminAccounts, AdminCredentials, AdminRow, ConsoleLogin};
pub use audit_event::AuditEvent;
use latchkey_protocol::{
    frame::{CodeTarget, HostInfo},
    handshake::CodeRecord,
    ids::{HostName, Platform, PublicKey, RecordId, SessionId, UserName},
    rights::{GrantRights, Rights},
    session::DesktopProtocol,
};
pub use postgres::{Postgres, PostgresStore};
pub use relational::SqlStore;
use serde::Serialize;
pub use sql::EventFeed;
pub use sqlite::{Sqlite, SqliteStore};

use crate::rules::lockout::{Proof, Settlement};
use thiserror::Error;

/// Where a relay keeps its state (the `store` setting).
#[derive(Clone, PartialEq, Eq)]
pub enum Location {
    /// SQLite, in the data directory: one relay.
    Embedded,
    /// PostgreSQL, by connection string.
    Postgres(String),
}

impl Location {
    /// Reads the `store` setting: absent or `sqlite` for the embedded
    /// store, else a PostgreSQL connection string.
    pub fn parse(setting: Option<&str>) -> Result<Self, StoreError> {
        match setting.map(str::trim) {
            None | Some("" | "sqlite") => Ok(Self::Embedded),
            Some(s)
                if s.starts_with("postgres://")
                    || s.starts_with("postgresql://")
                    || s.contains('=') =>
            {
                Ok(Self::Postgres(s.to_owned()))
            }
            Some(_) => Err(StoreError::Refused(
                "store must be 'sqlite' or a PostgreSQL connection string (postgres://...)".into(),
            )),
        }
    }

    /// Opens the store; the embedded one at `db_path`.
    pub fn open(&self, db_path: &std::path::Path) -> Result<Box<dyn Store>, StoreError> {
        Ok(match self {
            Self::Embedded => Box::new(SqliteStore::open(db_path)?),
            Self::Postgres(url) => Box::new(PostgresStore::connect(url)?),
        })
    }

    /// Opens the store for a serving relay, whose attempts, sessions and
    /// hosts carry a new id of its own, timing its transactions with
    /// `latency` if given (the relay's metrics). The data directory's lock
    /// keeps a second relay off the embedded store; on PostgreSQL any
    /// number serve at once.
    pub fn open_for_serving(
        &self,
        db_path: &std::path::Path,
        latency: Option<Arc<dyn TxTimer>>,
    ) -> Result<Box<dyn Store>, StoreError> {
        Ok(match self {
            Self::Embedded => Box::new(
                SqliteStore::open(db_path)?
                    .with_latency(latency)
                    .with_relay(relay_id()),
            ),
            Self::Postgres(url) => Box::new(
                PostgresStore::connect(url)?
                    .with_latency(latency)
                    .with_relay(relay_id()),
            ),
        })
    }

    /// Whether several relays may serve this store at once.
    pub fn is_shared(&self) -> bool {
        matches!(self, Self::Postgres(_))
    }
}

/// A serving relay's id for this run: random, so a restarted relay is a
/// new one and its last run's leftovers lapse like any dead relay's.
fn relay_id() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 8];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Never shows a connection string: it may hold a password.
impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Embedded => f.write_str("Embedded"),
            Self::Postgres(_) => f.write_str("Postgres(..)"),
        }
    }
}

/// Seconds since the Unix epoch; the store never reads a clock itself.
pub type UnixTime = i64;

/// Told how long each transaction took, commit and retries included (the
/// relay's metrics time the store through this).
pub trait TxTimer: Send + Sync {
    /// A read transaction took `took`.
    fn read(&self, took: std::time::Duration);
    /// A write transaction took `took`.
    fn write(&self, took: std::time::Duration);
}

/// Errors of the store layer. The messages are for the admin CLI and the
/// relay log; they never contain secrets.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The embedded database failed (disk, corruption, lock timeout).
    #[error("store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL failed or could not be reached.
    #[error("store: PostgreSQL: {}", postgres_detail(.0))]
    Postgres(#[from] ::postgres::Error),
    /// No PostgreSQL connection came free in time, or one broke.
    #[error("store: PostgreSQL: {0}")]
    Connection(String),
    /// No such user.
    #[error("no user named '{0}'")]
    NoSuchUser(String),
    /// No such host.
    #[error("no host named '{0}'")]
    NoSuchHost(String),
    /// The name is taken.
    #[error("{kind} '{name}' already exists")]
    Exists {
        /// "user" or "host".
        kind: &'static str,
        /// The name.
        name: String,
    },
    /// The device's key is not the one its name is enrolled with (any
    /// more): it was removed, or enrolled again elsewhere.
    #[error("'{0}' is not enrolled with this device")]
    NotEnrolled(String),
    /// The invite is unknown, used or expired.
    #[error("invite is unknown, already used or expired")]
    InvalidInvite,
    /// A grant or code change that the rules forbid.
    #[error("{0}")]
    Refused(String),
    /// Stored data that does not parse (written by a newer relay, or edited).
    #[error("store holds invalid data: {0}")]
    Corrupt(String),
}

/// A PostgreSQL error with its cause: the server's message and SQLSTATE
/// (never its `detail`, which quotes row values), or the client's reason.
fn postgres_detail(e: &::postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        // The client's own message already ends with its cause.
        None => e.to_string(),
    }
}

/// What kind of device an invite enrolls.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InviteKind {
    /// A user's device.
    User {
        /// Where notices go (the owner's "email from GoToMyPC").
        email: Option<String>,
    },
    /// A host, owned by a user.
    Host {
        /// The owner.
        owner: UserName,
        /// Failures that lock the new host.
        lockout_threshold: u32,
    },
}

/// The result of redeeming an invite.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Enrolled {
    /// The user or host name.
    pub name: String,
    /// Whether it is a host.
    pub is_host: bool,
}

/// A reserved login attempt (a row in `attempts`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttemptId(pub i64);

/// A user as the admin sees it.
#[derive(Clone, Debug, Serialize)]
pub struct UserRow {
    /// Name.
    pub name: String,
    /// Whether a device has enrolled.
    pub enrolled: bool,
    /// Email for notices, if any.
    pub email: Option<String>,
    /// The enrolled device's key fingerprint (first 8 bytes of its
    /// SHA-256, hex), if any.
    pub device: Option<String>,
}

/// A host as the admin sees it.
#[derive(Clone, Debug, Serialize)]
pub struct HostStatus {
    /// Name.
    pub name: String,
    /// Owner.
    pub owner: String,
    /// Whether the agent has enrolled.
    pub enrolled: bool,
    /// OS, once enrolled.
    pub platform: Option<String>,
    /// Whether the owner has set an access code.
    pub code_set: bool,
    /// Whether shared access may be granted.
    pub shared_access: bool,
    /// Failures that lock the host.
    pub lockout_threshold: u32,
    /// The lockout count: each user's failures since their last success or
    /// the last unlock, summed, plus attempts still pending.
    pub failures: u32,
    /// Whether the host is locked.
    pub locked: bool,
    /// Whether the agent is connected to a relay now.
    pub online: bool,
    /// When the agent last connected or left (Unix seconds), if ever.
    pub last_seen: Option<UnixTime>,
    /// The address of the relay its agent is connected to, while online.
    pub relay: Option<String>,
    /// Secondary users (their grants' terms: [`Store::grants_of`]).
    pub grants: Vec<String>,
}

/// What a grant gives besides the owner's code: what the user may do, and
/// until when.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GrantTerms {
    /// What the user may do (default: everything the host allows).
    pub rights: Rights,
    /// When the grant ends by itself (Unix seconds); `None`: when revoked.
    pub expires_at: Option<UnixTime>,
    /// A session with no channel traffic for this long ends (seconds).
    pub idle_secs: Option<u32>,
}

/// One audit log entry.
#[derive(Clone, Debug, Serialize)]
pub struct AuditRow {
    /// Row id (increasing).
    pub id: i64,
    /// When (Unix seconds).
    pub at: UnixTime,
    /// What happened (`login-ok`, `login-failed`, `host-locked`, ...).
    pub event: String,
    /// The host concerned.
    pub host: Option<String>,
    /// The user concerned.
    pub user: Option<String>,
    /// The remote address, for network events.
    pub source: Option<String>,
    /// Free text without secrets.
    pub detail: Option<String>,
}

/// One queued notice.
#[derive(Clone, Debug, Serialize)]
pub struct OutboxRow {
    /// Row id.
    pub id: i64,
    /// `email` or `host` (a notice on the host agent).
    pub channel: String,
    /// A user name, `admin`, or (for `host`) the host name.
    pub recipient: String,
    /// Subject line.
    pub subject: String,
    /// Text.
    pub body: String,
    /// Delivery attempts so far.
    pub attempts: u32,
    /// `pending`, `sent`, or `stored` (no way to deliver: kept and logged).
    pub state: String,
    /// The last delivery error.
    pub last_error: Option<String>,
}

/// Who made an admin change, for its audit row: the admin CLI (run by
/// an account on the relay's machine) or an admin of the console, from an
/// address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actor {
    /// `admin CLI (root)` or `console admin 'alice'`.
    pub name: String,
    /// Where the console request came from.
    pub source: Option<IpAddr>,
}

impl Actor {
    /// The admin CLI, run by the current OS account.
    pub fn cli() -> Self {
        let account = std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .unwrap_or_else(|_| "unknown account".into());
        Self {
            name: format!("admin CLI ({account})"),
            source: None,
        }
    }

    /// An admin signed in to the console.
    pub fn console(admin: &str, source: IpAddr) -> Self {
        Self {
            name: format!("console admin '{admin}'"),
            source: Some(source),
        }
    }

    /// The audit detail naming this actor.
    pub(crate) fn detail(&self) -> String {
        format!("by {}", self.name)
    }
}

/// What an unlock did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unlock {
    /// The host was locked, or counted failures: it is open and its
    /// decided failures are cleared (audited).
    Done {
        /// Whether it was locked.
        was_locked: bool,
        /// Attempts still being decided, which count until they end.
        still_counted: u32,
    },
    /// The host was open and counted no failure: nothing was changed, and
    /// nothing audited, so an unlock "just in case" leaves no noise.
    NotLocked,
}

/// A host agent's arrival or departure, as its relay records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostPresence {
    /// The agent connected, declaring this desktop (kept while it is away,
    /// so its users still see what the host offers).
    Online {
        /// The declared desktop's protocol.
        desktop: Option<DesktopProtocol>,
    },
    /// The agent left.
    Offline,
}

/// What removing a user or a host ended, for the admin's report.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Removal {
    /// The grants that ended: a removed user's hosts, or a removed host's
    /// shared users.
    pub grants: Vec<String>,
    /// Unused invites that could have enrolled the device again.
    pub invites_cancelled: u64,
}

impl Removal {
    /// The sentence the admin's report gives the cancelled invites, if
    /// there were any.
    pub fn invites_sentence(&self) -> Option<String> {
        (self.invites_cancelled > 0)
            .then(|| format!("Unused invites cancelled: {}.", self.invites_cancelled))
    }
}

/// A grant as the admin sees it.
#[derive(Clone, Debug, Serialize)]
pub struct GrantRow {
    /// The host.
    pub host: String,
    /// The secondary user.
    pub user: String,
    /// When shared access was granted (Unix seconds).
    pub granted_at: UnixTime,
    /// When the owner set the access code the grant inherited.
    pub code_set_at: Option<UnixTime>,
    /// What the shared user may do.
    pub rights: Rights,
    /// When the grant ends by itself, if it does.
    pub expires_at: Option<UnixTime>,
    /// A session with no channel traffic for this long ends (seconds).
    pub idle_secs: Option<u32>,
}

/// Which audit rows to show.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    /// Only about this host.
    pub host: Option<String>,
    /// Only about this user.
    pub user: Option<String>,
    /// Only this event (`login-failed`, `grant`, ...).
    pub event: Option<String>,
    /// Only rows older than this id (the next page).
    pub before: Option<i64>,
}

/// An audit event about to be written.
#[derive(Clone, Debug)]
pub struct Event<'a> {
    /// What happened.
    pub event: AuditEvent,
    /// The host concerned.
    pub host: Option<&'a str>,
    /// The user concerned.
    pub user: Option<&'a str>,
    /// The remote address.
    pub source: Option<IpAddr>,
    /// Free text without secrets.
    pub detail: Option<String>,
}

impl AuditRow {
    /// Whether the row records `event`.
    pub fn is(&self, event: AuditEvent) -> bool {
        self.event == event.name()
    }
}

/// The relay's durable state.
pub trait Store: AdminAccounts + Send + Sync + 'static {
    /// Reads a setting the relay keeps about itself.
    fn meta(&self, key: &str) -> Result<Option<String>, StoreError>;
    /// Writes a setting the relay keeps about itself.
    fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError>;
    /// Sets `key` to `value` unless it has a value already; returns the
    /// value it has now (the first writer's, when several race).
    fn claim_meta(&self, key: &str, value: &str) -> Result<String, StoreError>;

    /// Creates the user or host (without a device yet) and its invite.
    fn create_invite(
        &self,
        name: &str,
        kind: &InviteKind,
        digest: [u8; 32],
        expires_at: UnixTime,
        by: &Actor,
        now: UnixTime,
    ) -> Result<(), StoreError>;
    /// Redeems an invite exactly once, registering the device key.
    fn redeem_invite(
        &self,
        digest: [u8; 32],
        device_key: PublicKey,
        platform: Platform,
        source: IpAddr,
        now: UnixTime,
    ) -> Result<Enrolled, StoreError>;

    /// The device key of a user, if the user exists and has enrolled.
    fn user_key(&self, user: &UserName) -> Result<Option<PublicKey>, StoreError>;
    /// The device key of a host, if it exists and has enrolled.
    fn host_key(&self, host: &HostName) -> Result<Option<PublicKey>, StoreError>;
    /// The code record a user logs in to a host with, if they hold a grant
    /// (owners hold one) and a code was set.
    fn code_record(
        &self,
        user: &UserName,
        host: &HostName,
    ) -> Result<Option<CodeRecord>, StoreError>;
    /// Reserves one attempt against the host's count (SPEC A3, S6, S7),
    /// made with `record`. It counts as a failure until settled; none is
    /// reserved if the host is locked, or if pending attempts use up what is
    /// left before the lock ([`crate::rules::lockout::admit`]).
    fn reserve_attempt(
        &self,
        user: &UserName,
        host: &HostName,
        record: &RecordId,
        source: IpAddr,
        now: UnixTime,
    ) -> Result<latchkey_protocol::handshake::Reservation<AttemptId>, StoreError>;
    /// Whether a new attempt by `user` on `host` would be evaluated now,
    /// without reserving or auditing anything (a login waiting its turn asks).
    fn admission(
        &self,
        host: &HostName,
        user: &UserName,
    ) -> Result<crate::rules::lockout::Admission, StoreError>;
    /// Settles a pending attempt in one transaction with everything that
    /// depends on it (SPEC S4, S7a): the verdict of
    /// [`crate::rules::lockout::settle`] from a fresh look at the grant and the
    /// lock, the user's failures, the lock and its notices, and for a
    /// success the registration of `session`. `None` if the attempt was not
    /// pending any more (settled by the sweeper): then nothing may start.
    fn settle_attempt(
        &self,
        attempt: AttemptId,
        proof: Proof,
        detail: &str,
        session: &SessionId,
        now: UnixTime,
    ) -> Result<Option<Settlement>, StoreError>;
    /// Settles as failures the attempts still pending that were reserved
    /// before `reserved_before` (crash leftovers at start, strays later),
    /// with `detail` in the audit; returns how many.
    fn fail_pending_attempts(
        &self,
        reserved_before: UnixTime,
        detail: &str,
        now: UnixTime,
    ) -> Result<usize, StoreError>;

    /// Stores a new code record for the owner or one grant, set by the
    /// host's device `device`: checked in the same transaction, so a device
    /// removed or replaced meanwhile cannot set the code of the host that
    /// now has its name.
    fn set_code(
        &self,
        host: &HostName,
        device: &PublicKey,
        target: &CodeTarget,
        record: &CodeRecord,
        now: UnixTime,
    ) -> Result<(), StoreError>;

    /// Gives `user` shared access to `host` with the owner's current code.
    fn grant(
        &self,
        host: &HostName,
        user: &UserName,
        terms: &GrantTerms,
        by: &Actor,
        now: UnixTime,
    ) -> Result<(), StoreError>;
    /// Ends every shared-access grant whose time is up at `now`, each as a
    /// revoke ends one (audited `grant-expired`, which ends its sessions on
    /// every relay; owner and user are told); returns the (host, user)
    /// pairs ended. Each grant ends once, whichever relay sweeps first.
    fn expire_grants(&self, now: UnixTime) -> Result<Vec<(String, String)>, StoreError>;
    /// Sets what a shared user may do on a host (audited as `rights`; the
    /// relays holding the host tell it).
    fn set_rights(
        &self,
        host: &HostName,
        user: &UserName,
        rights: &Rights,
        idle_secs: Option<u32>,
        by: &Actor,
        now: UnixTime,
    ) -> Result<(), StoreError>;
    /// What `user` may do on `host`: everything for its owner, the grant's
    /// rights for a shared user, `None` without a grant.
    fn grant_rights(
        &self,
        host: &HostName,
        user: &UserName,
    ) -> Result<Option<GrantRights>, StoreError>;
    /// Removes a grant.
    fn revoke(
        &self,
        host: &HostName,
        user: &UserName,
        by: &Actor,
        now: UnixTime,
    ) -> Result<(), StoreError>;
    /// Revokes USER's grant and grants it again in one commit, so it
    /// inherits the owner's current code (their sessions end as for a
    /// revoke).
    fn regrant(
        &self,
        host: &HostName,
        user: &UserName,
        by: &Actor,
        now: UnixTime,
    ) -> Result<(), StoreError>;
    /// Removes a user: their device key, shared access, invites and
    /// tickets go; their history stays. Refused while they own a host.
    fn remove_user(
        &self,
        user: &UserName,
        by: &Actor,
        now: UnixTime,
    ) -> Result<Removal, StoreError>;
    /// Removes a host: its device key, grants, code records, invites and
    /// tickets go; its history stays.
    fn remove_host(
        &self,
        host: &HostName,
        by: &Actor,
        now: UnixTime,
    ) -> Result<Removal, StoreError>;
    /// Unlocks a host and clears every user's failures (attempts still
    /// pending stay counted until settled), audited; a host that is open
    /// and counts nothing is left as it is, unaudited, in the same
    /// transaction as the look.
    fn unlock(&self, host: &HostName, by: &Actor, now: UnixTime) -> Result<Unlock, StoreError>;

    /// Records which host agents connected or left, in one commit.
    fn set_presence(
        &self,
        changes: &[(HostName, HostPresence)],
        now: UnixTime,
    ) -> Result<(), StoreError>;
    /// Records `hosts` online on this store's relay again, each only if no
    /// relay holds it now (after another relay took this one for dead).
    fn reclaim_hosts(&self, hosts: &[HostName], now: UnixTime) -> Result<(), StoreError>;
    /// Marks this store's relay's hosts offline (at its start and stop;
    /// every host for a store that serves no relay).
    fn clear_online(&self, now: UnixTime) -> Result<(), StoreError>;

    /// All users.
    fn users(&self) -> Result<Vec<UserRow>, StoreError>;
    /// All hosts.
    fn hosts(&self) -> Result<Vec<HostStatus>, StoreError>;
    /// One host.
    fn host_status(&self, host: &HostName) -> Result<HostStatus, StoreError>;
    /// The hosts a user may reach.
    fn hosts_for_user(&self, user: &UserName) -> Result<Vec<HostInfo>, StoreError>;

    /// Sets (or clears) where a user's notices are emailed.
    fn set_email(
        &self,
        user: &UserName,
        email: Option<&str>,
        by: &Actor,
        now: UnixTime,
    ) -> Result<(), StoreError>;
    /// A user's email address.
    fn user_email(&self, user: &str) -> Result<Option<String>, StoreError>;
    /// Changes a host's shared-access policy.
    fn set_policy(
        &self,
        host: &HostName,
        shared_access: Option<bool>,
        lockout_threshold: Option<u32>,
        by: &Actor,
        now: UnixTime,
    ) -> Result<(), StoreError>;
    /// Records the end of a session (audit row, and for a secondary user the
    /// "change your code" notice to the owner, SPEC S3), in one commit;
    /// nothing if the session was not open (ended already, or never
    /// registered), so it may be called whenever a session might exist.
    fn session_ended(
        &self,
        session: &SessionId,
        reason: &str,
        how: SessionEnd,
        now: UnixTime,
    ) -> Result<(), StoreError>;
    /// Ends the sessions a previous run of the relay left open; returns how many.
    fn end_open_sessions(&self, now: UnixTime) -> Result<usize, StoreError>;
    /// Claims up to `limit` notices due for delivery, oldest first, until
    /// `claimed_until`: nobody else (another relay on the same store) is
    /// given them before then. A relay that stops while delivering one
    /// leaves it to be given out again when the claim lapses, so a notice
    /// goes out at least once, and twice only then.
    fn claim_notices(
        &self,
        now: UnixTime,
        claimed_until: UnixTime,
        limit: usize,
    ) -> Result<Vec<OutboxRow>, StoreError>;
    /// Marks a notice delivered (`sent`) or kept without a transport (`stored`).
    fn notice_done(&self, id: i64, state: &str, now: UnixTime) -> Result<(), StoreError>;
    /// Records a failed delivery and when to try again.
    fn notice_retry(
        &self,
        id: i64,
        error: &str,
        next_attempt_at: UnixTime,
    ) -> Result<(), StoreError>;
    /// The newest `limit` notices, oldest first.
    fn outbox(&self, limit: usize) -> Result<Vec<OutboxRow>, StoreError>;
    /// Audit rows committed from now on by any process on this store, in
    /// commit order (how a relay hears of admin actions).
    fn event_feed(&self) -> Result<Box<dyn EventFeed>, StoreError>;

    /// Issues a resume ticket for a reboot of `host` asked by `user` in
    /// `session`, after checking the grant and that shared access is
    /// enabled (SPEC R1). Only the ticket's digest is stored.
    fn create_ticket(
        &self,
        digest: [u8; 32],
        host: &HostName,
        user: &UserName,
        session: &str,
        expires_at: UnixTime,
        now: UnixTime,
    ) -> Result<(), StoreError>;
    /// Spends a resume ticket presented by `host`: the session it was issued
    /// for, or why it is refused (unknown, used, expired, another host's, or
    /// not the ticket of the reboot the relay waits for, `waiting`: the
    /// session that asked for it, `None` when no reboot waits). At most one
    /// redemption of a ticket ever succeeds.
    fn redeem_ticket(
        &self,
        digest: [u8; 32],
        host: &HostName,
        waiting: Option<&str>,
        source: IpAddr,
        now: UnixTime,
    ) -> Result<Result<String, &'static str>, StoreError>;

    /// Appends to the audit log.
    fn audit(&self, event: Event<'_>, now: UnixTime) -> Result<(), StoreError>;
    /// Deletes audit rows written before `before`; returns how many.
    fn prune_audit(&self, before: UnixTime) -> Result<usize, StoreError>;
    /// Records that `host`'s key connected from `newer` while it was
    /// connected from `older` (an audit row and a notice to the owner and
    /// the admin, in one commit).
    fn host_key_twice(
        &self,
        host: &HostName,
        older: &str,
        newer: &str,
        now: UnixTime,
    ) -> Result<(), StoreError>;
    /// Reads the newest `limit` audit rows (optionally for one host, and
    /// only those at or after `since`), oldest first.
    fn audit_log(
        &self,
        host: Option<&HostName>,
        since: Option<UnixTime>,
        limit: usize,
    ) -> Result<Vec<AuditRow>, StoreError>;
    /// The secondary users of `host` (of every host with `None`), with
    /// when each was granted and when the code it inherited was set, in
    /// one read.
    fn grants_of(&self, host: Option<&HostName>) -> Result<Vec<GrantRow>, StoreError>;
    /// At most `limit` audit rows that match `filter`, newest first.
    fn audit_page(&self, filter: &AuditFilter, limit: usize) -> Result<Vec<AuditRow>, StoreError>;
    /// How many audit rows of each event were written at or after `since`.
    fn audit_counts(&self, since: UnixTime) -> Result<Vec<(String, u64)>, StoreError>;

    /// What the metrics read at scrape time (SPEC O2), in one read.
    fn gauges(&self) -> Result<StoreGauges, StoreError>;

    /// Says this store's relay is alive and reached at `addr` (nothing for
    /// a store that serves no relay, such as the admin CLI's); `true` when
    /// the relay was not on record (its first heartbeat, or another relay
    /// forgot it as dead).
    fn heartbeat(&self, addr: &str, now: UnixTime) -> Result<bool, StoreError>;
    /// Gives `session` (of `user` on `host`, started with `record`) a new
    /// resume ticket by its digest, replacing the one before; `false` if
    /// the grant no longer has that record (no ticket then). Forgets
    /// expired tickets.
    #[allow(clippy::too_many_arguments)]
    fn issue_session_ticket(
        &self,
        session: &SessionId,
        digest: [u8; 32],
        host: &HostName,
        user: &UserName,
        record: &RecordId,
        expires_at: UnixTime,
        now: UnixTime,
    ) -> Result<bool, StoreError>;
    /// Whether `digest` is an unexpired resume ticket of `user` on `host`
    /// (read only: asked before anything about the host is answered).
    fn session_ticket_valid(
        &self,
        digest: [u8; 32],
        user: &UserName,
        host: &HostName,
        now: UnixTime,
    ) -> Result<bool, StoreError>;
    /// Spends the resume ticket `digest` of `user` on `host` and, if the
    /// lockout rule admits it (the same grant, the host not locked), starts
    /// `session` for this store's relay in the same commit, audited
    /// `session-resume` (a refusal `session-resume-refused`); returns the
    /// record the session uses and the session it continues, or why not.
    fn resume_session(
        &self,
        digest: [u8; 32],
        user: &UserName,
        host: &HostName,
        session: &SessionId,
        source: IpAddr,
        now: UnixTime,
    ) -> Result<Result<(RecordId, SessionId), &'static str>, StoreError>;
    /// Where to send a login for `host`: the address of another relay
    /// (heartbeat at or after `heartbeat_after`) that holds its agent now.
    fn host_elsewhere(
        &self,
        host: &HostName,
        heartbeat_after: UnixTime,
    ) -> Result<Option<String>, StoreError>;
    /// The addresses of the relays serving this store (heartbeat at or
    /// after `heartbeat_after`), oldest first: what invites list.
    fn relay_addrs(&self, heartbeat_after: UnixTime) -> Result<Vec<String>, StoreError>;
    /// Settles, as failures, the pending attempts of every other relay whose
    /// last heartbeat is older than `heartbeat_before`, ends their open
    /// sessions and forgets them. A relay
    /// that dies therefore holds no attempt against a host for longer than
    /// its lease, whichever relay outlives it.
    fn sweep_lapsed_relays(
        &self,
        heartbeat_before: UnixTime,
        now: UnixTime,
    ) -> Result<SweptRelays, StoreError>;
    /// Forgets this store's relay (a clean stop): it is no longer listed in
    /// invites or sent logins.
    fn relay_stopped(&self) -> Result<(), StoreError>;
}

/// How a session's end is recorded (always with its `session-end` row).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionEnd {
    /// It is over: its resume ticket goes, and a secondary user's owner is
    /// told to change the code (SPEC S3).
    Final,
    /// Its relay went away or handed it to another: the client may resume
    /// it with its ticket, so nobody is told it ended.
    Continues,
}

/// What [`Store::sweep_lapsed_relays`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweptRelays {
    /// Relays taken for dead.
    pub relays: usize,
    /// Their pending attempts, settled as failures.
    pub attempts: usize,
}

/// Counts only the store knows, for the metrics ([`Store::gauges`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreGauges {
    /// Hosts locked now.
    pub hosts_locked: u64,
    /// Notices waiting for delivery.
    pub notices_pending: u64,
    /// Notices delivered.
    pub notices_sent: u64,
    /// Notices kept without a transport (no SMTP, or no address).
    pub notices_stored: u64,
}
