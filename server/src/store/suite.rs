//! The store test suite, written against [`Store`] so every backend runs
//! the same cases: each backend's test module only says how to make a
//! fresh store.
//!
//! The lockout rule (SPEC S6, S7, S7a) against a reference model: random
//! interleavings of reservations, verdicts (right or wrong code), revokes
//! and re-grants, code changes, unlocks, sweeps of stale attempts and
//! crashes, by three users of one host. The model is written as plainly as
//! possible and does not call `crate::lockout`.

use std::{collections::BTreeMap, net::IpAddr};

use latchkey_protocol::{
    frame::CodeTarget,
    handshake::{CodeRecord, Reservation},
    ids::{HostName, RecordId, SessionId, UserName},
    ksf::KsfProfile,
};
use proptest::prelude::*;

use super::{AttemptId, Event, InviteKind, Store};
use crate::lockout::{Proof, Settlement, VoidReason};

const THRESHOLD: u32 = 3;
/// Users: 0 owns the host, 1 and 2 hold grants (at first).
const USERS: [&str; 3] = ["alice", "bob", "dave"];

#[derive(Clone, Debug)]
enum Op {
    Reserve(usize),
    /// Settle the i-th reservation with the right code or not.
    Settle(usize, bool),
    Revoke(usize),
    Grant(usize),
    ChangeCode(usize),
    Unlock,
    /// Settle attempts reserved at least this many ticks ago.
    Sweep(i64),
    /// The relay dies and starts again.
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..3usize).prop_map(Op::Reserve),
        6 => (0..12usize, any::<bool>()).prop_map(|(i, ok)| Op::Settle(i, ok)),
        1 => (1..3usize).prop_map(Op::Revoke),
        1 => (1..3usize).prop_map(Op::Grant),
        1 => (0..3usize).prop_map(Op::ChangeCode),
        1 => Just(Op::Unlock),
        1 => (1..4i64).prop_map(Op::Sweep),
        1 => Just(Op::Crash),
    ]
}

/// The rule, plainly.
#[derive(Debug)]
struct Model {
    /// Decided failures per user since their last success or the unlock.
    failures: [u32; 3],
    /// Pending attempts: index → (user, (record, grant generation), reserved at).
    pending: BTreeMap<usize, (usize, (u8, u32), i64)>,
    locked: bool,
    /// The record each user's grant points at and the grant's generation
    /// (a revoke and a re-grant make a new one), if they hold one.
    grants: [Option<(u8, u32)>; 3],
    owner_record: u8,
    generations: u32,
}

impl Model {
    fn count(&self) -> u32 {
        self.failures.iter().sum::<u32>() + self.pending.len() as u32
    }

    fn lock_if_due(&mut self) {
        if self.failures.iter().sum::<u32>() >= THRESHOLD {
            self.locked = true;
        }
    }

    fn settle(&mut self, i: usize, right: bool) -> Option<Settlement> {
        let (user, grant, _) = self.pending.remove(&i)?;
        if !right {
            self.failures[user] += 1;
            self.lock_if_due();
            return Some(Settlement::Failure);
        }
        if self.grants[user] != Some(grant) {
            Some(Settlement::Void(VoidReason::GrantGone))
        } else if self.locked {
            Some(Settlement::Void(VoidReason::Locked))
        } else {
            self.failures[user] = 0;
            Some(Settlement::Success)
        }
    }
}

struct World {
    store: Box<dyn Store>,
    host: HostName,
    users: Vec<UserName>,
    /// Record ids by the model's small numbers.
    records: BTreeMap<u8, RecordId>,
}

impl World {
    fn new(store: Box<dyn Store>) -> Self {
        let users: Vec<UserName> = USERS.iter().map(|u| u.parse().expect("name")).collect();
        for (i, u) in users.iter().enumerate() {
            let kind = InviteKind::User { email: None };
            store
                .create_invite(u.as_str(), &kind, [i as u8 + 1; 32], 10, 0)
                .expect("invite");
        }
        let host: HostName = "mypc".parse().expect("name");
        let kind = InviteKind::Host {
            owner: users[0].clone(),
            lockout_threshold: THRESHOLD,
        };
        store
            .create_invite("mypc", &kind, [9; 32], 10, 0)
            .expect("host");
        let mut w = Self {
            store,
            host,
            users,
            records: BTreeMap::new(),
        };
        w.set_code(0, 0, &CodeTarget::Owner);
        for u in 1..3 {
            w.store.grant(&w.host, &w.users[u], 0).expect("grant");
        }
        w
    }

    fn set_code(&mut self, n: u8, now: i64, target: &CodeTarget) {
        let id = RecordId([n; 16]);
        let record = CodeRecord {
            id,
            ksf: KsfProfile::InsecureFastForTests,
            record: vec![n; 8],
        };
        self.store
            .set_code(&self.host, target, &record, now)
            .expect("set code");
        self.records.insert(n, id);
    }

    fn number(&self, id: &RecordId) -> u8 {
        self.records
            .iter()
            .find(|(_, r)| *r == id)
            .map(|(n, _)| *n)
            .expect("known record")
    }
}

/// alice owns mypc (threshold `threshold`) with a code set: the names and
/// the owner's code record.
pub(crate) fn alice_owns_mypc(
    store: &dyn Store,
    threshold: u32,
) -> (UserName, HostName, CodeRecord) {
    let alice: UserName = "alice".parse().expect("name");
    let host: HostName = "mypc".parse().expect("name");
    store
        .create_invite("alice", &InviteKind::User { email: None }, [1; 32], 10, 0)
        .expect("invite");
    let kind = InviteKind::Host {
        owner: alice.clone(),
        lockout_threshold: threshold,
    };
    store
        .create_invite("mypc", &kind, [2; 32], 10, 0)
        .expect("host");
    let record = CodeRecord {
        id: RecordId([5; 16]),
        ksf: KsfProfile::InsecureFastForTests,
        record: vec![0; 8],
    };
    store
        .set_code(&host, &CodeTarget::Owner, &record, 0)
        .expect("code");
    (alice, host, record)
}

/// Lowering a host's threshold to the failures it already counts locks it
/// at once, rather than leave it "busy" and unlocked.
pub(crate) fn lowering_the_threshold_to_the_failures_counted_locks_at_once(store: &dyn Store) {
    let (alice, host, record) = alice_owns_mypc(store, 5);
    let source = "127.0.0.1".parse().expect("address");
    let session = SessionId([0; 16]);
    for _ in 0..2 {
        let Reservation::Reserved(a) = store
            .reserve_attempt(&alice, &host, &record.id, source, 1)
            .expect("reserve")
        else {
            panic!("not reserved")
        };
        store
            .settle_attempt(a, Proof::NotProven, "wrong", &session, 1)
            .expect("settle");
    }
    assert!(!store.host_status(&host).expect("status").locked);
    store.set_policy(&host, None, Some(2), 2).expect("policy");
    let status = store.host_status(&host).expect("status");
    assert!(status.locked && status.failures == 2, "{status:?}");
}

/// The retention deletes the rows older than a time and keeps the rest.
pub(crate) fn audit_rows_are_pruned_by_age(store: &dyn Store) {
    let (_, host, _) = alice_owns_mypc(store, 3);
    let event = |detail: &str| Event {
        event: "login-refused",
        host: Some(host.as_str()),
        user: Some("carol"),
        source: None,
        detail: Some(detail.into()),
    };
    store.audit(event("old one"), 100).expect("write");
    store.audit(event("old two"), 100).expect("write");
    store.audit(event("new"), 200).expect("write");
    let count = |s: &dyn Store| {
        s.audit_log(Some(&host), None, 1000)
            .expect("read")
            .iter()
            .filter(|r| r.event == "login-refused")
            .count()
    };
    assert_eq!(count(store), 3);
    let pruned = store.prune_audit(150).expect("prune");
    assert!(pruned >= 2, "{pruned}");
    assert_eq!(count(store), 1);
}

/// Runs the model check on stores made by `fresh`, 1,000 cases.
pub(crate) fn lockout_agrees_with_the_model(fresh: impl Fn() -> Box<dyn Store>) {
    let config = ProptestConfig {
        cases: 1000,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(ops in proptest::collection::vec(op(), 1..60))| {
        run(fresh(), ops)?;
    });
}

fn run(store: Box<dyn Store>, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut w = World::new(store);
    let mut model = Model {
        failures: [0; 3],
        pending: BTreeMap::new(),
        locked: false,
        grants: [Some((0, 0)), Some((0, 1)), Some((0, 2))],
        owner_record: 0,
        generations: 2,
    };
    let source: IpAddr = "127.0.0.1".parse().expect("address");
    let mut attempts: Vec<AttemptId> = Vec::new();
    let mut next_record = 1u8;
    for (now, op) in ops.into_iter().enumerate() {
        let now = now as i64 + 1;
        let session = SessionId([now as u8; 16]);
        match op {
            Op::Reserve(u) => {
                let Some(record) = w.store.code_record(&w.users[u], &w.host).expect("record")
                else {
                    prop_assert!(model.grants[u].is_none());
                    continue;
                };
                let n = w.number(&record.id);
                prop_assert_eq!(model.grants[u].map(|(r, _)| r), Some(n));
                let grant = model.grants[u].expect("a grant");
                let got = w
                    .store
                    .reserve_attempt(&w.users[u], &w.host, &record.id, source, now)
                    .expect("reserve");
                let mine = model
                    .pending
                    .values()
                    .filter(|(who, _, _)| *who == u)
                    .count();
                let want = if model.locked {
                    "locked"
                } else if model.count() >= THRESHOLD || mine >= 1 {
                    "busy"
                } else {
                    "reserved"
                };
                match got {
                    Reservation::Reserved(id) => {
                        prop_assert_eq!(want, "reserved");
                        model.pending.insert(attempts.len(), (u, grant, now));
                        attempts.push(id);
                    }
                    Reservation::Locked => prop_assert_eq!(want, "locked"),
                    Reservation::Busy => prop_assert_eq!(want, "busy"),
                }
            }
            Op::Settle(i, right) => {
                if let Some(id) = attempts.get(i) {
                    let proof = if right {
                        Proof::RightCode
                    } else {
                        Proof::NotProven
                    };
                    let got = w
                        .store
                        .settle_attempt(*id, proof, "test", &session, now)
                        .expect("settle");
                    prop_assert_eq!(got, model.settle(i, right));
                }
            }
            Op::Revoke(u) => {
                let revoked = w.store.revoke(&w.host, &w.users[u], now).is_ok();
                prop_assert_eq!(revoked, model.grants[u].is_some());
                model.grants[u] = None;
            }
            Op::Grant(u) => {
                let granted = w.store.grant(&w.host, &w.users[u], now).is_ok();
                prop_assert_eq!(granted, model.grants[u].is_none());
                if granted {
                    model.generations += 1;
                    model.grants[u] = Some((model.owner_record, model.generations));
                }
            }
            Op::ChangeCode(u) => {
                if model.grants[u].is_none() {
                    continue;
                }
                let n = next_record;
                next_record += 1;
                let target = if u == 0 {
                    model.owner_record = n;
                    CodeTarget::Owner
                } else {
                    CodeTarget::Grant(w.users[u].clone())
                };
                w.set_code(n, now, &target);
                model.grants[u] = model.grants[u].map(|(_, generation)| (n, generation));
            }
            Op::Unlock => {
                let left = w.store.unlock(&w.host, now).expect("unlock");
                model.locked = false;
                model.failures = [0; 3];
                prop_assert_eq!(left, model.count());
            }
            Op::Sweep(age) => {
                let before = now - age;
                let n = w
                    .store
                    .fail_pending_attempts(before, "swept", now)
                    .expect("sweep");
                let stale: Vec<usize> = model
                    .pending
                    .iter()
                    .filter(|(_, (_, _, at))| *at < before)
                    .map(|(i, _)| *i)
                    .collect();
                prop_assert_eq!(n, stale.len());
                for i in stale {
                    model.settle(i, false);
                }
            }
            Op::Crash => {
                w.store
                    .fail_pending_attempts(i64::MAX, "crash", now)
                    .expect("crash");
                let all: Vec<usize> = model.pending.keys().copied().collect();
                for i in all {
                    model.settle(i, false);
                }
            }
        }
        let status = w.store.host_status(&w.host).expect("status");
        prop_assert_eq!(status.locked, model.locked);
        prop_assert_eq!(status.failures, model.count());
    }
    Ok(())
}
