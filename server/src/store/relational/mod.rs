//! The [`Store`] written once for every SQL backend: each method is one
//! transaction of statements in the dialect both engines run
//! ([`super::sql`]). This file opens the transactions; the domain modules
//! hold their bodies, so the `impl` below reads as a table of contents.
//!
//! The modules, lowest first (each uses only those above it):
//! - [`rows`]: the id lookups and the device-key reader several domains share;
//! - [`audit`] and [`outbox`]: the audit rows and notices every change
//!   writes in its own transaction, and their reads;
//! - [`meta`], [`enrolment`], [`users`], [`grants`]: settings, invites and
//!   device keys, users, grants and code records;
//! - [`attempts`]: logins and the lockout they feed (the rule itself is
//!   [`crate::rules::lockout`]);
//! - [`hosts`] and [`sessions`]: presence, status and policy; session ends
//!   and their tickets;
//! - [`removal`]: offboarding a user or a host;
//! - [`cluster`]: several relays on one store, and the sweep of dead ones.

mod attempts;
mod audit;
mod cluster;
mod enrolment;
mod grants;
mod hosts;
mod meta;
mod outbox;
mod removal;
mod rows;
mod sessions;
mod users;

use std::{net::IpAddr, sync::Arc, time::Instant};

use latchkey_protocol::{
    frame::{CodeTarget, HostInfo},
    handshake::{CodeRecord, Reservation},
    ids::{HostName, Platform, PublicKey, RecordId, SessionId, UserName},
    rights::{GrantRights, Rights},
};

pub(super) use self::{audit::insert_audit, outbox::enqueue};
use super::{
    sql::{Backend, EventFeed, Tx},
    Actor, AttemptId, AuditFilter, AuditRow, Enrolled, Event, GrantRow, GrantTerms, HostPresence,
    HostStatus, InviteKind, OutboxRow, Removal, SessionEnd, Store, StoreError, StoreGauges,
    SweptRelays, TxTimer, UnixTime, Unlock, UserRow,
};
use crate::rules::lockout::{Admission, Proof, Settlement};

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

#[allow(private_bounds)]
impl<B: Backend> Store for SqlStore<B> {
    fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.read(|tx| meta::get(tx, key))
    }

    fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.write(|tx| meta::set(tx, key, value))
    }

    fn claim_meta(&self, key: &str, value: &str) -> Result<String, StoreError> {
        self.write(|tx| meta::claim(tx, key, value))
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
        self.write(|tx| enrolment::create_invite(tx, name, kind, digest, expires_at, by, now))
    }

    fn redeem_invite(
        &self,
        digest: [u8; 32],
        device_key: PublicKey,
        platform: Platform,
        source: IpAddr,
        now: UnixTime,
    ) -> Result<Enrolled, StoreError> {
        let outcome =
            self.write(|tx| enrolment::redeem(tx, digest, device_key, platform, source, now))?;
        match outcome {
            Some(enrolled) => Ok(enrolled),
            None => {
                self.audit(enrolment::refused(source), now)?;
                Err(StoreError::InvalidInvite)
            }
        }
    }

    fn user_key(&self, user: &UserName) -> Result<Option<PublicKey>, StoreError> {
        self.read(|tx| enrolment::user_key(tx, user))
    }

    fn host_key(&self, host: &HostName) -> Result<Option<PublicKey>, StoreError> {
        self.read(|tx| enrolment::host_key(tx, host))
    }

    fn code_record(
        &self,
        user: &UserName,
        host: &HostName,
    ) -> Result<Option<CodeRecord>, StoreError> {
        self.read(|tx| grants::code_record(tx, user, host))
    }

    fn reserve_attempt(
        &self,
        user: &UserName,
        host: &HostName,
        record: &RecordId,
        source: IpAddr,
        now: UnixTime,
    ) -> Result<Reservation<AttemptId>, StoreError> {
        let relay = self.relay.as_deref();
        self.write(|tx| attempts::reserve(tx, user, host, record, source, now, relay))
    }

    fn admission(&self, host: &HostName, user: &UserName) -> Result<Admission, StoreError> {
        self.read(|tx| attempts::admission(tx, host, user))
    }

    fn settle_attempt(
        &self,
        attempt: AttemptId,
        proof: Proof,
        detail: &str,
        session: &SessionId,
        now: UnixTime,
    ) -> Result<Option<Settlement>, StoreError> {
        self.write(|tx| attempts::settle(tx, attempt.0, proof, detail, Some(session), now))
    }

    fn fail_pending_attempts(
        &self,
        reserved_before: UnixTime,
        detail: &str,
        now: UnixTime,
    ) -> Result<usize, StoreError> {
        self.write(|tx| attempts::fail_pending(tx, reserved_before, detail, now))
    }

    fn set_code(
        &self,
        host: &HostName,
        device: &PublicKey,
        target: &CodeTarget,
        record: &CodeRecord,
        now: UnixTime,
    ) -> Result<(), StoreError> {
        self.write(|tx| grants::set_code(tx, host, device, target, record, now))
    }

    fn grant(
        &self,
        host: &HostName,
        user: &UserName,
        terms: &GrantTerms,
        by: &Actor,
        now: UnixTime,
    ) -> Result<(), StoreError> {
        self.write(|tx| grants::grant(tx, host, user, terms, by, now))
    }

    fn expire_grants(&self, now: UnixTime) -> Result<Vec<(String, String)>, StoreError> {
        // Asked several times a second by every relay: the write lock (and
        // PostgreSQL's serializable transaction) only when one is due.
        if !self.read(|tx| grants::any_ended(tx, now))? {
            return Ok(Vec::new());
        }
        self.write(|tx| grants::expire(tx, now))
    }

    fn set_rights(
        &self,
        host: &HostName,
        user: &UserName,
        rights: &Rights,
        idle_secs: Option<u32>,
        by: &Actor,
        now: UnixTime,
    ) -> Result<(), StoreError> {
        self.write(|tx| grants::set_rights(tx, host, user, rights, idle_secs, by, now))
    }

    fn grant_rights(
        &self,
        host: &HostName,
        user: &UserName,
    ) -> Result<Option<GrantRights>, StoreError> {
        self.read(|tx| grants::rights_of(tx, host, user))
    }

    fn revoke(
        &self,
        host: &HostName,
        user: &UserName,
        by: &Actor,
        now: UnixTime,
    ) -> Result<(), StoreError> {
        self.write(|tx| grants::revoke(tx, host, user, by, now))
    }

    fn regrant(
        &self,
        host: &HostName,
        user: &UserName,
        by: &Actor,
        now: UnixTime,
    ) -> Result<(), StoreError> {
        self.write(|tx| grants::regrant(tx, host, user, by, now))
    }

    fn remove_user(
        &self,
        user: &UserName,
        by: &Actor,
        now: UnixTime,
    ) -> Result<Removal, StoreError> {
        self.write(|tx| removal::remove_user(tx, user.as_str(), by, now))
    }

    fn remove_host(
        &self,
        host: &HostName,
        by: &Actor,
        now: UnixTime,
    ) -> Result<Removal, StoreError> {
        self.write(|tx| removal::remove_host(tx, host.as_str(), by, now))
    }

    fn unlock(&self, host: &HostName, by: &Actor, now: UnixTime) -> Result<Unlock, StoreError> {
        self.write(|tx| attempts::unlock(tx, host, by, now))
    }

    fn set_presence(
        &self,
        changes: &[(HostName, HostPresence)],
        now: UnixTime,
    ) -> Result<(), StoreError> {
        let me = self.relay.as_deref();
        self.write(|tx| hosts::set_presence(tx, changes, now, me))
    }

    fn reclaim_hosts(&self, hosts: &[HostName], now: UnixTime) -> Result<(), StoreError> {
        let me = self.relay.as_deref();
        self.write(|tx| hosts::reclaim(tx, hosts, now, me))
    }

    fn clear_online(&self, now: UnixTime) -> Result<(), StoreError> {
        let me = self.relay.as_deref();
        self.write(|tx| hosts::clear_online(tx, now, me))
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
        self.write(|tx| {
            sessions::issue_ticket(tx, session, digest, host, user, record, expires_at, now)
        })
    }

    fn session_ticket_valid(
        &self,
        digest: [u8; 32],
        user: &UserName,
        host: &HostName,
        now: UnixTime,
    ) -> Result<bool, StoreError> {
        self.read(|tx| sessions::ticket_valid(tx, digest, user, host, now))
    }

    fn resume_session(
        &self,
        digest: [u8; 32],
        user: &UserName,
        host: &HostName,
        session: &SessionId,
        source: IpAddr,
        now: UnixTime,
    ) -> Result<Result<(RecordId, SessionId), &'static str>, StoreError> {
        let relay = self.relay.as_deref();
        self.write(|tx| sessions::resume(tx, digest, user, host, session, source, now, relay))
    }

    fn host_elsewhere(
        &self,
        host: &HostName,
        heartbeat_after: UnixTime,
    ) -> Result<Option<String>, StoreError> {
        let me = self.relay.as_deref();
        self.read(|tx| cluster::host_elsewhere(tx, host, heartbeat_after, me))
    }

    fn relay_addrs(&self, heartbeat_after: UnixTime) -> Result<Vec<String>, StoreError> {
        self.read(|tx| cluster::relay_addrs(tx, heartbeat_after))
    }

    fn users(&self) -> Result<Vec<UserRow>, StoreError> {
        self.read(users::all)
    }

    fn hosts(&self) -> Result<Vec<HostStatus>, StoreError> {
        self.read(hosts::all)
    }

    fn host_status(&self, host: &HostName) -> Result<HostStatus, StoreError> {
        self.read(|tx| hosts::status(tx, host))
    }

    fn hosts_for_user(&self, user: &UserName) -> Result<Vec<HostInfo>, StoreError> {
        self.read(|tx| hosts::for_user(tx, user))
    }

    fn set_email(
        &self,
        user: &UserName,
        email: Option<&str>,
        by: &Actor,
        now: UnixTime,
    ) -> Result<(), StoreError> {
        self.write(|tx| users::set_email(tx, user, email, by, now))
    }

    fn user_email(&self, user: &str) -> Result<Option<String>, StoreError> {
        self.read(|tx| users::email(tx, user))
    }

    fn set_policy(
        &self,
        host: &HostName,
        shared_access: Option<bool>,
        lockout_threshold: Option<u32>,
        by: &Actor,
        now: UnixTime,
    ) -> Result<(), StoreError> {
        self.write(|tx| hosts::set_policy(tx, host, shared_access, lockout_threshold, by, now))
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
            sessions::end(tx, &id, reason, how, now).map(drop)
        })
    }

    fn end_open_sessions(&self, now: UnixTime) -> Result<usize, StoreError> {
        self.write(|tx| sessions::end_open(tx, now))
    }

    fn claim_notices(
        &self,
        now: UnixTime,
        claimed_until: UnixTime,
        limit: usize,
    ) -> Result<Vec<OutboxRow>, StoreError> {
        self.write(|tx| outbox::claim(tx, now, claimed_until, limit))
    }

    fn notice_done(&self, id: i64, state: &str, now: UnixTime) -> Result<(), StoreError> {
        self.write(|tx| outbox::done(tx, id, state, now))
    }

    fn notice_retry(
        &self,
        id: i64,
        error: &str,
        next_attempt_at: UnixTime,
    ) -> Result<(), StoreError> {
        self.write(|tx| outbox::retry(tx, id, error, next_attempt_at))
    }

    fn outbox(&self, limit: usize) -> Result<Vec<OutboxRow>, StoreError> {
        self.read(|tx| outbox::list(tx, limit))
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
            sessions::create_reboot_ticket(tx, digest, host, user, session, expires_at, now)
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
        self.write(|tx| sessions::redeem_reboot_ticket(tx, digest, host, waiting, source, now))
    }

    fn audit(&self, event: Event<'_>, now: UnixTime) -> Result<(), StoreError> {
        self.write(|tx| insert_audit(tx, &event, now))
    }

    fn prune_audit(&self, before: UnixTime) -> Result<usize, StoreError> {
        self.write(|tx| audit::prune(tx, before))
    }

    fn host_key_twice(
        &self,
        host: &HostName,
        older: &str,
        newer: &str,
        now: UnixTime,
    ) -> Result<(), StoreError> {
        self.write(|tx| hosts::key_twice(tx, host, older, newer, now))
    }

    fn audit_log(
        &self,
        host: Option<&HostName>,
        since: Option<UnixTime>,
        limit: usize,
    ) -> Result<Vec<AuditRow>, StoreError> {
        self.read(|tx| audit::log(tx, host, since, limit))
    }

    fn grants_of(&self, host: Option<&HostName>) -> Result<Vec<GrantRow>, StoreError> {
        self.read(|tx| grants::list(tx, host))
    }

    fn audit_page(&self, filter: &AuditFilter, limit: usize) -> Result<Vec<AuditRow>, StoreError> {
        self.read(|tx| audit::page(tx, filter, limit))
    }

    fn audit_counts(&self, since: UnixTime) -> Result<Vec<(String, u64)>, StoreError> {
        self.read(|tx| audit::counts(tx, since))
    }

    fn gauges(&self) -> Result<StoreGauges, StoreError> {
        self.read(audit::gauges)
    }

    fn heartbeat(&self, addr: &str, now: UnixTime) -> Result<bool, StoreError> {
        // A store that serves no relay (the admin CLI's) has no heartbeat,
        // and opens no transaction for it.
        let Some(relay) = self.relay.as_deref() else {
            return Ok(false);
        };
        self.write(|tx| cluster::heartbeat(tx, relay, addr, now))
    }

    fn sweep_lapsed_relays(
        &self,
        heartbeat_before: UnixTime,
        now: UnixTime,
    ) -> Result<SweptRelays, StoreError> {
        let me = self.relay.as_deref();
        self.write(|tx| cluster::sweep_lapsed(tx, heartbeat_before, now, me))
    }

    fn relay_stopped(&self) -> Result<(), StoreError> {
        let Some(relay) = self.relay.as_deref() else {
            return Ok(());
        };
        self.write(|tx| cluster::forget(tx, relay))
    }
}
