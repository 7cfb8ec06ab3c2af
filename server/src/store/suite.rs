//! The store test suite, written against [`Store`] so every backend runs
//! the same cases: each backend's test module only says how to make a
//! fresh store.
//!
//! The lockout rule (SPEC S6, S7, S7a) against a reference model: random
//! interleavings of reservations, verdicts (right or wrong code), revokes
//! and re-grants, code changes, unlocks, sweeps of stale attempts and
//! crashes, by three users of one host. The model is written as plainly as
//! possible and does not call `crate::rules::lockout`.

use std::{collections::BTreeMap, net::IpAddr};

use latchkey_protocol::{
    frame::CodeTarget,
    handshake::{CodeRecord, Reservation},
    ids::{HostName, Platform, PublicKey, RecordId, SessionId, UserName},
    ksf::KsfProfile,
    rights::Rights,
    session::DesktopProtocol,
};
use proptest::prelude::*;

use super::{
    Actor, AttemptId, AuditEvent, Event, GrantTerms, HostPresence, InviteKind, SessionEnd, Store,
    StoreError, SweptRelays,
};
use crate::rules::lockout::{Proof, Settlement, VoidReason};

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
    /// Sessions each user started (none ends here).
    sessions: [u32; 3],
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
        } else if self.sessions[user] >= crate::rules::session_cap::PER_HOST {
            Some(Settlement::Void(VoidReason::SessionsFull(
                crate::rules::session_cap::Full::OnHost,
            )))
        } else {
            self.failures[user] = 0;
            self.sessions[user] += 1;
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
                .create_invite(u.as_str(), &kind, [i as u8 + 1; 32], 10, &Actor::cli(), 0)
                .expect("invite");
        }
        let host: HostName = "mypc".parse().expect("name");
        let kind = InviteKind::Host {
            owner: users[0].clone(),
            lockout_threshold: THRESHOLD,
        };
        store
            .create_invite("mypc", &kind, [9; 32], 10, &Actor::cli(), 0)
            .expect("host");
        enroll_host(&*store, [9; 32]);
        let mut w = Self {
            store,
            host,
            users,
            records: BTreeMap::new(),
        };
        w.set_code(0, 0, &CodeTarget::Owner);
        for u in 1..3 {
            w.store
                .grant(
                    &w.host,
                    &w.users[u],
                    &GrantTerms::default(),
                    &Actor::cli(),
                    0,
                )
                .expect("grant");
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
            .set_code(&self.host, &HOST_KEY, target, &record, now)
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
        .create_invite(
            "alice",
            &InviteKind::User { email: None },
            [1; 32],
            10,
            &Actor::cli(),
            0,
        )
        .expect("invite");
    let kind = InviteKind::Host {
        owner: alice.clone(),
        lockout_threshold: threshold,
    };
    store
        .create_invite("mypc", &kind, [2; 32], 10, &Actor::cli(), 0)
        .expect("host");
    enroll_host(store, [2; 32]);
    let record = CodeRecord {
        id: RecordId([5; 16]),
        ksf: KsfProfile::InsecureFastForTests,
        record: vec![0; 8],
    };
    store
        .set_code(&host, &HOST_KEY, &CodeTarget::Owner, &record, 0)
        .expect("code");
    (alice, host, record)
}

/// The device key the test hosts enroll with.
const HOST_KEY: PublicKey = PublicKey([0x48; 32]);

/// Redeems a host's invite with [`HOST_KEY`].
fn enroll_host(store: &dyn Store, invite: [u8; 32]) {
    let source = "127.0.0.1".parse().expect("address");
    store
        .redeem_invite(invite, HOST_KEY, Platform::Linux, source, 0)
        .expect("host enrolled");
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
    store
        .set_policy(&host, None, Some(2), &Actor::cli(), 2)
        .expect("policy");
    let status = store.host_status(&host).expect("status");
    assert!(status.locked && status.failures == 2, "{status:?}");
}

/// The retention deletes the rows older than a time and keeps the rest.
pub(crate) fn audit_rows_are_pruned_by_age(store: &dyn Store) {
    let (_, host, _) = alice_owns_mypc(store, 3);
    let event = |detail: &str| Event {
        event: AuditEvent::LoginRefused,
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

/// Runs the model check on `cases` stores made by `fresh`.
pub(crate) fn lockout_agrees_with_the_model(cases: u32, fresh: impl Fn() -> Box<dyn Store>) {
    let config = ProptestConfig {
        cases,
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
        sessions: [0; 3],
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
                let revoked = w
                    .store
                    .revoke(&w.host, &w.users[u], &Actor::cli(), now)
                    .is_ok();
                prop_assert_eq!(revoked, model.grants[u].is_some());
                model.grants[u] = None;
            }
            Op::Grant(u) => {
                let granted = w
                    .store
                    .grant(
                        &w.host,
                        &w.users[u],
                        &GrantTerms::default(),
                        &Actor::cli(),
                        now,
                    )
                    .is_ok();
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
                let done = w.store.unlock(&w.host, &Actor::cli(), now).expect("unlock");
                let expected = if !model.locked && model.count() == 0 {
                    super::Unlock::NotLocked
                } else {
                    super::Unlock::Done {
                        was_locked: model.locked,
                        still_counted: model.pending.len() as u32,
                    }
                };
                model.locked = false;
                model.failures = [0; 3];
                prop_assert_eq!(done, expected);
                prop_assert_eq!(model.count(), model.pending.len() as u32);
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

/// Another connection to the store under test (as another relay, or the
/// admin CLI, would have).
pub(crate) type Open<'a> = &'a (dyn Fn() -> Box<dyn Store> + Sync);

/// Wrong codes for one host from many connections at once, by many grant
/// holders: exactly `threshold` attempts are evaluated, every one of them
/// fails, and the host ends locked (SPEC S6, S7, M2).
pub(crate) fn attempts_from_many_connections_at_once_evaluate_exactly_the_threshold(
    open: Open<'_>,
) {
    const THREADS: usize = 8;
    const THRESHOLD: u32 = 3;
    let store = open();
    let (_, host, _) = alice_owns_mypc(&*store, THRESHOLD);
    let users: Vec<UserName> = (0..THREADS)
        .map(|i| format!("u{i}").parse().expect("name"))
        .collect();
    for (i, user) in users.iter().enumerate() {
        store
            .create_invite(
                user.as_str(),
                &InviteKind::User { email: None },
                [100 + i as u8; 32],
                10,
                &Actor::cli(),
                0,
            )
            .expect("invite");
        store
            .grant(&host, user, &GrantTerms::default(), &Actor::cli(), 0)
            .expect("grant");
    }
    let reserved: u32 = std::thread::scope(|scope| {
        let handles: Vec<_> = users
            .iter()
            .map(|user| {
                let host = &host;
                scope.spawn(move || {
                    let store = open();
                    let record = store
                        .code_record(user, host)
                        .expect("record")
                        .expect("a grant");
                    let source = "127.0.0.1".parse().expect("address");
                    let mut reserved = 0;
                    for round in 0..20 {
                        match store
                            .reserve_attempt(user, host, &record.id, source, 1)
                            .expect("reserve")
                        {
                            Reservation::Reserved(a) => {
                                reserved += 1;
                                let session = SessionId([round; 16]);
                                store
                                    .settle_attempt(a, Proof::NotProven, "wrong", &session, 1)
                                    .expect("settle");
                            }
                            Reservation::Locked => break,
                            Reservation::Busy => std::thread::yield_now(),
                        }
                    }
                    reserved
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("thread")).sum()
    });
    assert_eq!(reserved, THRESHOLD);
    let status = store.host_status(&host).expect("status");
    assert!(status.locked && status.failures == THRESHOLD, "{status:?}");
    let failed = store
        .audit_log(Some(&host), None, 10_000)
        .expect("audit")
        .iter()
        .filter(|r| r.event == "login-failed")
        .count();
    assert_eq!(failed, THRESHOLD as usize);
}

/// A resume ticket raced by eight connections is spent exactly once, and
/// every other reason to refuse one holds.
pub(crate) fn a_ticket_redeemed_from_many_connections_succeeds_exactly_once(open: Open<'_>) {
    // The reboot the relay waits for: each test ticket's own.
    fn live(session: &str) -> Option<&str> {
        Some(session)
    }
    let store = open();
    let (alice, host, _) = alice_owns_mypc(&*store, 3);
    store
        .create_ticket([7; 32], &host, &alice, "s1", 1_000, 0)
        .expect("ticket");
    let wins: usize = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let host = host.clone();
                scope.spawn(move || {
                    let store = open();
                    let source = "127.0.0.1".parse().expect("address");
                    usize::from(
                        store
                            .redeem_ticket([7; 32], &host, live("s1"), source, 5)
                            .expect("redeem")
                            .is_ok(),
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("thread")).sum()
    });
    assert_eq!(wins, 1);
    let source = "127.0.0.1".parse().expect("address");
    let redeem = |digest: u8, host: &HostName, waiting: Option<&str>| {
        store
            .redeem_ticket([digest; 32], host, waiting, source, 5)
            .expect("redeem")
    };
    assert_eq!(redeem(7, &host, live("s1")), Err("ticket already used"));
    assert_eq!(redeem(8, &host, live("s1")), Err("unknown ticket"));
    store
        .create_ticket([9; 32], &host, &alice, "s2", 4, 0)
        .expect("ticket");
    assert_eq!(redeem(9, &host, live("s2")), Err("ticket expired"));
    let other: HostName = "other".parse().expect("name");
    let kind = InviteKind::Host {
        owner: alice.clone(),
        lockout_threshold: 3,
    };
    store
        .create_invite("other", &kind, [3; 32], 10, &Actor::cli(), 0)
        .expect("invite");
    store
        .create_ticket([10; 32], &host, &alice, "s3", 1_000, 0)
        .expect("ticket");
    assert_eq!(
        redeem(10, &other, live("s3")),
        Err("ticket of another host")
    );
    assert!(redeem(10, &host, live("s3")).is_ok());
    // Not the ticket of the reboot the relay waits for (or none waits).
    store
        .create_ticket([11; 32], &host, &alice, "s4", 1_000, 0)
        .expect("ticket");
    assert_eq!(
        redeem(11, &host, live("s5")),
        Err("no reboot of this host waits for this ticket")
    );
    assert_eq!(redeem(11, &host, None), Err("ticket already used"));
}

/// An event feed sees rows committed by another connection, in commit
/// order, and only those committed after it started.
pub(crate) fn the_event_feed_sees_other_connections_commits_in_order(open: Open<'_>) {
    let store = open();
    let (_, host, _) = alice_owns_mypc(&*store, 3);
    let mut feed = store.event_feed().expect("feed");
    let other = open();
    let event = |detail: &str| Event {
        event: AuditEvent::Policy,
        host: Some(host.as_str()),
        user: None,
        source: None,
        detail: Some(detail.into()),
    };
    for n in 0..5 {
        other.audit(event(&n.to_string()), 10).expect("write");
    }
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while seen.len() < 5 && std::time::Instant::now() < deadline {
        seen.extend(
            feed.next(std::time::Duration::from_millis(200))
                .expect("feed")
                .into_iter()
                .filter_map(|r| r.detail),
        );
    }
    assert_eq!(seen, ["0", "1", "2", "3", "4"]);
    assert!(feed
        .next(std::time::Duration::from_millis(300))
        .expect("feed")
        .is_empty());
}

/// A session's end is recorded once, and only for a session the verdict
/// registered: the relay may report an end it is unsure began.
pub(crate) fn a_sessions_end_is_recorded_once_and_only_if_it_began(store: &dyn Store) {
    let (alice, host, record) = alice_owns_mypc(store, 3);
    let source = "127.0.0.1".parse().expect("address");
    let ends = || {
        store
            .audit_log(Some(&host), None, 1000)
            .expect("audit")
            .iter()
            .filter(|r| r.event == "session-end")
            .count()
    };
    let never_began = SessionId([1; 16]);
    store
        .session_ended(&never_began, "test", SessionEnd::Final, 1)
        .expect("end");
    assert_eq!(ends(), 0);
    let Reservation::Reserved(a) = store
        .reserve_attempt(&alice, &host, &record.id, source, 1)
        .expect("reserve")
    else {
        panic!("not reserved")
    };
    let began = SessionId([2; 16]);
    store
        .settle_attempt(a, Proof::RightCode, "", &began, 1)
        .expect("settle");
    for _ in 0..2 {
        store
            .session_ended(&began, "test", SessionEnd::Final, 2)
            .expect("end");
    }
    assert_eq!(ends(), 1);
}

/// A user holds at most `session_cap::PER_HOST` sessions on a host: the
/// next right code starts none and counts nothing, a session that ends
/// frees a place, and another user is not held back.
pub(crate) fn a_right_code_starts_no_session_beyond_the_users_cap(store: &dyn Store) {
    use crate::rules::session_cap::{Full, PER_HOST};
    let (alice, host, record) = alice_owns_mypc(store, 3);
    let source = "127.0.0.1".parse().expect("address");
    let login = |n: u8| {
        let Reservation::Reserved(a) = store
            .reserve_attempt(&alice, &host, &record.id, source, 1)
            .expect("reserve")
        else {
            panic!("not reserved")
        };
        store
            .settle_attempt(a, Proof::RightCode, "", &SessionId([n; 16]), 1)
            .expect("settle")
    };
    for n in 0..PER_HOST {
        let n = u8::try_from(n).expect("small") + 1;
        assert_eq!(login(n), Some(Settlement::Success), "session {n}");
    }
    assert_eq!(
        login(200),
        Some(Settlement::Void(VoidReason::SessionsFull(Full::OnHost)))
    );
    let status = store.host_status(&host).expect("status");
    assert_eq!((status.failures, status.locked), (0, false));
    store
        .session_ended(&SessionId([1; 16]), "test", SessionEnd::Final, 2)
        .expect("end");
    assert_eq!(login(201), Some(Settlement::Success));
    // A session whose relay went away keeps its ticket, but gives its place
    // up: resumed after another login took the place, it is refused.
    assert!(store
        .issue_session_ticket(
            &SessionId([2; 16]),
            [9; 32],
            &host,
            &alice,
            &record.id,
            100,
            3
        )
        .expect("ticket"));
    store
        .session_ended(
            &SessionId([2; 16]),
            "relay stopped",
            SessionEnd::Continues,
            3,
        )
        .expect("end");
    assert_eq!(login(202), Some(Settlement::Success));
    let resumed = store
        .resume_session([9; 32], &alice, &host, &SessionId([203; 16]), source, 4)
        .expect("resume");
    assert!(
        resumed.is_err_and(|why| why.contains("as many sessions")),
        "a resume went beyond the cap"
    );
    // One whose old session still holds its place takes that place.
    assert!(store
        .issue_session_ticket(
            &SessionId([3; 16]),
            [10; 32],
            &host,
            &alice,
            &record.id,
            100,
            5
        )
        .expect("ticket"));
    let resumed = store
        .resume_session([10; 32], &alice, &host, &SessionId([204; 16]), source, 6)
        .expect("resume");
    assert_eq!(resumed, Ok((record.id, SessionId([3; 16]))));
}

/// The metrics' store gauges count locked hosts and notices by state,
/// and follow a lock, a delivery and an unlock.
pub(crate) fn gauges_count_locked_hosts_and_notices_by_state(store: &dyn Store) {
    let (alice, host, record) = alice_owns_mypc(store, 1);
    assert_eq!(
        store.gauges().expect("gauges"),
        super::StoreGauges::default()
    );
    let source = "127.0.0.1".parse().expect("address");
    let Reservation::Reserved(a) = store
        .reserve_attempt(&alice, &host, &record.id, source, 1)
        .expect("reserve")
    else {
        panic!("not reserved")
    };
    store
        .settle_attempt(a, Proof::NotProven, "wrong", &SessionId([0; 16]), 1)
        .expect("settle");
    let notices = store.outbox(1000).expect("outbox");
    assert!(!notices.is_empty(), "a lock queues notices");
    store
        .notice_done(notices[0].id, "sent", 2)
        .expect("delivered");
    let by_state = |state: &str| {
        store
            .outbox(1000)
            .expect("outbox")
            .iter()
            .filter(|n| n.state == state)
            .count() as u64
    };
    let gauges = store.gauges().expect("gauges");
    assert_eq!(
        gauges,
        super::StoreGauges {
            hosts_locked: 1,
            notices_pending: by_state("pending"),
            notices_sent: 1,
            notices_stored: by_state("stored"),
        }
    );
    store.unlock(&host, &Actor::cli(), 3).expect("unlock");
    assert_eq!(store.gauges().expect("gauges").hosts_locked, 0);
}

/// Notices claimed from many connections at once are each given to one of
/// them; a claim that lapses gives the notice out again.
pub(crate) fn each_notice_is_claimed_by_one_connection_at_a_time(open: Open<'_>) {
    let store = open();
    let (_, host, _) = alice_owns_mypc(&*store, 3);
    for i in 0..20 {
        store
            .host_key_twice(&host, &format!("10.0.0.{i}:1"), "10.0.1.1:1", 1)
            .expect("notices");
    }
    let all: Vec<i64> = store
        .outbox(1000)
        .expect("outbox")
        .iter()
        .map(|n| n.id)
        .collect();
    assert!(all.len() >= 40, "{} notices", all.len());
    let mut claimed: Vec<i64> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                scope.spawn(|| {
                    let store = open();
                    let mut mine = Vec::new();
                    loop {
                        let got = store.claim_notices(10, 100, 3).expect("claim");
                        if got.is_empty() {
                            return mine;
                        }
                        mine.extend(got.iter().map(|n| n.id));
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("thread"))
            .collect()
    });
    claimed.sort_unstable();
    let mut expected = all.clone();
    expected.sort_unstable();
    assert_eq!(claimed, expected, "a notice was claimed twice or never");
    // Claimed, not delivered: nothing until the claim lapses, then all.
    assert!(store
        .claim_notices(99, 200, 1000)
        .expect("claim")
        .is_empty());
    assert_eq!(
        store.claim_notices(100, 200, 1000).expect("claim").len(),
        all.len()
    );
    // Delivered ones are not given out again.
    store.notice_done(all[0], "sent", 150).expect("done");
    let again = store.claim_notices(200, 300, 1000).expect("claim");
    assert_eq!(again.len(), all.len() - 1);
    assert!(again.iter().all(|n| n.id != all[0]));
}

/// Opens a store on the shared database for the serving relay named.
pub(crate) type OpenAs<'a> = &'a dyn Fn(&str) -> Box<dyn Store>;

/// A relay that stops heartbeating loses its pending attempts (settled as
/// failures, counted against the host) and its open sessions to the relay
/// that outlives it; that relay's own attempts are untouched.
pub(crate) fn a_dead_relays_attempts_are_settled_by_the_one_that_outlives_it(open: OpenAs<'_>) {
    let (a, b) = (open("relay-a"), open("relay-b"));
    let (alice, host, record) = alice_owns_mypc(&*a, 5);
    let bob: UserName = "bob".parse().expect("name");
    a.create_invite(
        "bob",
        &InviteKind::User { email: None },
        [3; 32],
        10,
        &Actor::cli(),
        0,
    )
    .expect("invite");
    a.grant(&host, &bob, &GrantTerms::default(), &Actor::cli(), 0)
        .expect("grant");
    assert!(a.heartbeat("a.example:4433", 0).expect("heartbeat"), "new");
    assert!(b.heartbeat("b.example:4433", 0).expect("heartbeat"), "new");
    assert!(
        !a.heartbeat("a.example:4433", 0).expect("heartbeat"),
        "known"
    );
    // The host's agent is on A: B sends its logins there, A keeps them.
    a.set_presence(&[(host.clone(), HostPresence::Online { desktop: None })], 1)
        .expect("presence");
    assert_eq!(
        b.host_elsewhere(&host, 0).expect("where").as_deref(),
        Some("a.example:4433")
    );
    assert_eq!(a.host_elsewhere(&host, 0).expect("where"), None);
    assert_eq!(
        b.relay_addrs(0).expect("addrs").len(),
        2,
        "both relays are listed"
    );
    let source = "127.0.0.1".parse().expect("address");
    let reserve = |s: &dyn Store, user: &UserName| match s
        .reserve_attempt(user, &host, &record.id, source, 1)
        .expect("reserve")
    {
        Reservation::Reserved(id) => id,
        _ => panic!("not reserved"),
    };
    // On relay A: bob's session, and alice's attempt still being decided.
    let bobs = reserve(&*a, &bob);
    a.settle_attempt(bobs, Proof::RightCode, "ok", &SessionId([1; 16]), 1)
        .expect("settle");
    let alices = reserve(&*a, &alice);
    // On relay B: bob's next attempt.
    let bobs_next = reserve(&*b, &bob);
    // A dies; B lives on past A's lease. A lapsed relay is no longer a
    // place to send logins to, even before it is swept.
    b.heartbeat("b.example:4433", 30).expect("heartbeat");
    assert_eq!(b.host_elsewhere(&host, 10).expect("where"), None);
    assert_eq!(b.relay_addrs(10).expect("addrs"), ["b.example:4433"]);
    assert_eq!(
        b.sweep_lapsed_relays(10, 30).expect("sweep"),
        SweptRelays {
            relays: 1,
            attempts: 1
        }
    );
    assert_eq!(
        b.sweep_lapsed_relays(10, 31).expect("sweep"),
        SweptRelays::default(),
        "swept twice"
    );
    // alice's attempt counted as a failure, bob's on B still pending.
    assert_eq!(b.host_status(&host).expect("status").failures, 2);
    assert_eq!(
        a.settle_attempt(alices, Proof::RightCode, "late", &SessionId([2; 16]), 31)
            .expect("settle"),
        None,
        "the dead relay's attempt was still pending"
    );
    assert!(b
        .settle_attempt(
            bobs_next,
            Proof::NotProven,
            "wrong",
            &SessionId([3; 16]),
            31
        )
        .expect("settle")
        .is_some());
    let why = b.audit_log(Some(&host), None, 50).expect("audit");
    assert!(why.iter().any(|r| r
        .detail
        .as_deref()
        .is_some_and(|d| d.contains("its relay (relay-a) stopped answering"))));
    // bob's session on A was ended, its end audited (and alice told, as
    // for any end of a secondary user's session): no open session is left.
    assert!(why.iter().any(|r| r.event == "session-end"
        && r.detail
            .as_deref()
            .is_some_and(|d| d.contains("stopped answering"))));
    assert_eq!(b.end_open_sessions(40).expect("end"), 0);
    // Its host is offline, and A, had it only stalled, learns that it was
    // forgotten at its next heartbeat.
    assert!(!b.host_status(&host).expect("status").online);
    assert!(a.heartbeat("a.example:4433", 41).expect("heartbeat"));
    // A late "offline" from A does not undo the host's arrival on B.
    b.set_presence(&[(host.clone(), HostPresence::Online { desktop: None })], 1)
        .expect("presence");
    a.set_presence(&[(host.clone(), HostPresence::Offline)], 2)
        .expect("presence");
    assert!(b.host_status(&host).expect("status").online);
    assert_eq!(
        a.host_elsewhere(&host, 0).expect("where").as_deref(),
        Some("b.example:4433")
    );
    a.clear_online(3).expect("clear");
    assert!(
        b.host_status(&host).expect("status").online,
        "A cleared B's host"
    );
    // Nor does A reclaiming its hosts, once it finds itself forgotten.
    a.reclaim_hosts(std::slice::from_ref(&host), 4)
        .expect("reclaim");
    assert_eq!(
        a.host_elsewhere(&host, 0).expect("where").as_deref(),
        Some("b.example:4433")
    );
    // A relay that keeps its heartbeat is never swept.
    let c = open("relay-c");
    c.heartbeat("c.example:4433", 50).expect("heartbeat");
    let carols = reserve(&*c, &alice);
    // (A's heartbeat at 41 has lapsed by then: A alone is swept.)
    assert_eq!(
        b.sweep_lapsed_relays(45, 55).expect("sweep"),
        SweptRelays {
            relays: 1,
            attempts: 0
        }
    );
    // A relay that stops cleanly is no longer listed.
    c.relay_stopped().expect("stopped");
    assert_eq!(b.relay_addrs(0).expect("addrs"), ["b.example:4433"]);
    assert!(c
        .settle_attempt(carols, Proof::NotProven, "wrong", &SessionId([4; 16]), 56)
        .expect("settle")
        .is_some());
}

/// A session's resume ticket, as relays A and B of one store use it: it
/// resumes once, for its user on its host, on another relay; not after it
/// expired, the grant changed or the host locked; a session's new ticket
/// replaces its last; expired ones are forgotten.
pub(crate) fn a_session_ticket_resumes_once_and_only_while_the_rule_admits_it(open: OpenAs<'_>) {
    let (a, b) = (open("relay-a"), open("relay-b"));
    let (alice, host, record) = alice_owns_mypc(&*a, 3);
    let source = "127.0.0.1".parse().expect("address");
    let first = SessionId([1; 16]);
    let issue = |digest: [u8; 32], expires_at: i64| {
        a.issue_session_ticket(&first, digest, &host, &alice, &record.id, expires_at, 10)
            .expect("issue")
    };
    assert!(issue([7; 32], 100));
    // A newer ticket replaces the older one.
    assert!(issue([8; 32], 100));
    let resume = |digest: [u8; 32], user: &UserName, id: u8, now: i64| {
        b.resume_session(digest, user, &host, &SessionId([id; 16]), source, now)
            .expect("resume")
    };
    assert!(resume([7; 32], &alice, 2, 20).is_err(), "a replaced ticket");
    // Someone else's claim spends nothing.
    let bob: UserName = "bob".parse().expect("name");
    assert!(resume([8; 32], &bob, 2, 20).is_err());
    // It names the session it continues.
    assert_eq!(resume([8; 32], &alice, 2, 20), Ok((record.id, first)));
    assert!(resume([8; 32], &alice, 3, 21).is_err(), "used twice");
    let events = b.audit_log(Some(&host), None, 50).expect("audit");
    assert_eq!(
        events
            .iter()
            .filter(|e| e.event == "session-resume")
            .count(),
        1
    );
    // Expired.
    let second = SessionId([2; 16]);
    assert!(b
        .issue_session_ticket(&second, [9; 32], &host, &alice, &record.id, 30, 20)
        .expect("issue"));
    assert_eq!(
        resume([9; 32], &alice, 4, 30),
        Err("the resume ticket expired")
    );
    // Locked.
    assert!(b
        .issue_session_ticket(&second, [10; 32], &host, &alice, &record.id, 100, 40)
        .expect("issue"));
    for n in 0..3 {
        let Reservation::Reserved(id) = b
            .reserve_attempt(&alice, &host, &record.id, source, 41)
            .expect("reserve")
        else {
            panic!("not reserved");
        };
        b.settle_attempt(id, Proof::NotProven, "wrong", &SessionId([20 + n; 16]), 41)
            .expect("settle");
    }
    // The lock spent the host's tickets, none is issued while it holds,
    // and after an unlock one from before the lock resumes nothing.
    assert!(!b
        .issue_session_ticket(&second, [14; 32], &host, &alice, &record.id, 100, 42)
        .expect("issue"));
    b.unlock(&host, &Actor::cli(), 43).expect("unlock");
    assert_eq!(
        resume([10; 32], &alice, 5, 43),
        Err("the resume ticket is unknown or was used")
    );
    // The code replaced: the session's record is not the grant's any more.
    assert!(b
        .issue_session_ticket(&second, [11; 32], &host, &alice, &record.id, 100, 44)
        .expect("issue"));
    let newer = CodeRecord {
        id: RecordId([6; 16]),
        ..record.clone()
    };
    b.set_code(&host, &HOST_KEY, &CodeTarget::Owner, &newer, 45)
        .expect("code");
    assert!(resume([11; 32], &alice, 6, 46).is_err());
    // No ticket for a record the grant no longer has.
    assert!(!b
        .issue_session_ticket(&second, [12; 32], &host, &alice, &record.id, 100, 47)
        .expect("issue"));
    // Expired tickets are forgotten at the next issue.
    assert!(b
        .issue_session_ticket(
            &SessionId([3; 16]),
            [13; 32],
            &host,
            &alice,
            &newer.id,
            50,
            48
        )
        .expect("issue"));
    assert!(b
        .issue_session_ticket(
            &SessionId([4; 16]),
            [14; 32],
            &host,
            &alice,
            &newer.id,
            200,
            60
        )
        .expect("issue"));
    assert_eq!(
        resume([13; 32], &alice, 7, 61),
        Err("the resume ticket is unknown or was used")
    );
    // A session that ends for good takes its ticket along.
    assert_eq!(
        resume([14; 32], &alice, 8, 62),
        Ok((newer.id, SessionId([4; 16])))
    );
    let last = SessionId([8; 16]);
    assert!(b
        .issue_session_ticket(&last, [15; 32], &host, &alice, &newer.id, 300, 63)
        .expect("issue"));
    assert!(b
        .session_ticket_valid([15; 32], &alice, &host, 64)
        .expect("valid"));
    assert!(!b
        .session_ticket_valid([15; 32], &bob, &host, 64)
        .expect("valid"));
    // Resumed once more: S8 ends as continuing as S9.
    assert_eq!(resume([15; 32], &alice, 9, 65), Ok((newer.id, last)));
    let last = SessionId([9; 16]);
    assert!(b
        .issue_session_ticket(&last, [16; 32], &host, &alice, &newer.id, 300, 66)
        .expect("issue"));
    b.session_ended(&last, "client left", SessionEnd::Final, 67)
        .expect("end");
    assert!(!b
        .session_ticket_valid([16; 32], &alice, &host, 68)
        .expect("valid"));
    // The resumed session ends as continuing elsewhere.
    let ends = b.audit_log(Some(&host), None, 100).expect("audit");
    assert!(ends.iter().any(|e| e.event == "session-end"
        && e.detail
            .as_deref()
            .is_some_and(|d| d.contains("continues as session"))));
    // A refusal for a live ticket is audited.
    assert!(ends.iter().any(|e| e.event == "session-resume-refused"));
}

/// bob, enrolled with a device key.
fn bob_enrolled(store: &dyn Store) -> UserName {
    let bob: UserName = "bob".parse().expect("name");
    let user = InviteKind::User {
        email: Some("bob@example.com".into()),
    };
    store
        .create_invite("bob", &user, [3; 32], 100, &Actor::cli(), 0)
        .expect("invite");
    store
        .redeem_invite(
            [3; 32],
            PublicKey([7; 32]),
            Platform::Linux,
            "127.0.0.1".parse().expect("address"),
            1,
        )
        .expect("enrol");
    bob
}

/// bob, enrolled with a device key and granted shared access to alice's
/// mypc.
fn bob_shares_mypc(store: &dyn Store, host: &HostName) -> UserName {
    let bob = bob_enrolled(store);
    store
        .grant(host, &bob, &GrantTerms::default(), &Actor::cli(), 1)
        .expect("grant");
    bob
}

/// Whether the outbox holds a notice to `recipient` whose subject has `text`.
fn notice_to(store: &dyn Store, recipient: &str, text: &str) -> bool {
    store
        .outbox(1000)
        .expect("outbox")
        .iter()
        .any(|n| n.recipient == recipient && n.subject.contains(text))
}

/// A grant's rights: stored with it, read for the host with a stamp that
/// grows with each change, kept by a regrant, audited and told to the user;
/// an owner's are everything and cannot be narrowed.
pub(crate) fn a_grants_rights_are_kept_stamped_and_never_narrow_the_owner(store: &dyn Store) {
    let (alice, host, _) = alice_owns_mypc(store, 3);
    let bob = bob_shares_mypc(store, &host);
    let first = store
        .grant_rights(&host, &bob)
        .expect("read")
        .expect("bob's");
    assert!(first.shared && first.rights.is_all());
    let copy_only: Rights = "copy-from,copy-to".parse().expect("rights");
    store
        .set_rights(&host, &bob, &copy_only, None, &Actor::cli(), 2)
        .expect("set");
    let second = store
        .grant_rights(&host, &bob)
        .expect("read")
        .expect("bob's");
    assert_eq!(second.rights, copy_only);
    // A reboot is refused in the store, in the commit that would make its
    // ticket, so a right taken away a moment ago is never used.
    let refused = store.create_ticket([9; 32], &host, &bob, "bobs", 100, 2);
    assert!(
        matches!(&refused, Err(StoreError::Refused(why)) if why.contains("does not allow rebooting")),
        "{refused:?}"
    );
    assert!(second.stamp > first.stamp);
    let forward_only = Rights::only([latchkey_protocol::rights::Right::Forward])
        .forwarding_only_to(vec!["127.0.0.1:22".parse().expect("addr")])
        .expect("targets");
    store
        .set_rights(&host, &bob, &forward_only, Some(900), &Actor::cli(), 3)
        .expect("set");
    store
        .regrant(&host, &bob, &Actor::cli(), 4)
        .expect("regrant");
    let third = store
        .grant_rights(&host, &bob)
        .expect("read")
        .expect("bob's");
    assert_eq!(third.rights, forward_only, "a regrant keeps the rights");
    assert_eq!(third.idle_secs, Some(900), "and the idle limit");
    assert!(third.stamp > second.stamp);
    assert_eq!(
        store.grants_of(Some(&host)).expect("grants")[0]
            .rights
            .to_string(),
        "forward(127.0.0.1:22)"
    );
    let owner = store
        .grant_rights(&host, &alice)
        .expect("read")
        .expect("alice's");
    assert!(!owner.shared && owner.rights.is_all());
    assert!(matches!(
        store.set_rights(&host, &alice, &copy_only, None, &Actor::cli(), 5),
        Err(StoreError::Refused(_))
    ));
    let carol: UserName = "carol".parse().expect("name");
    assert!(store.grant_rights(&host, &carol).expect("read").is_none());
    let audit = store.audit_log(None, None, 1000).expect("audit");
    assert_eq!(audit.iter().filter(|r| r.event == "rights").count(), 2);
    assert!(notice_to(store, "bob", "Your rights on mypc changed"));
}

/// A grant with an end: listed with it, kept by a regrant, refused in the
/// past; past its end no login or resume is admitted even before a sweep,
/// and the sweep ends it once (audited, owner and user told).
pub(crate) fn a_grant_with_an_end_ends_once_as_a_revoke_does(store: &dyn Store) {
    let (_, host, record) = alice_owns_mypc(store, 3);
    let bob = bob_enrolled(store);
    let ending = |at| GrantTerms {
        expires_at: Some(at),
        ..GrantTerms::default()
    };
    assert!(matches!(
        store.grant(&host, &bob, &ending(5), &Actor::cli(), 5),
        Err(StoreError::Refused(_))
    ));
    store
        .grant(&host, &bob, &ending(20), &Actor::cli(), 5)
        .expect("grant");
    store
        .regrant(&host, &bob, &Actor::cli(), 6)
        .expect("regrant");
    assert_eq!(
        store.grants_of(Some(&host)).expect("grants")[0].expires_at,
        Some(20)
    );
    // Past the end, before any sweep: a right code starts no session.
    let source = "127.0.0.1".parse().expect("address");
    let Reservation::Reserved(a) = store
        .reserve_attempt(&bob, &host, &record.id, source, 19)
        .expect("reserve")
    else {
        panic!("not reserved")
    };
    let settled = store
        .settle_attempt(a, Proof::RightCode, "right code", &SessionId([1; 16]), 21)
        .expect("settle");
    assert_eq!(
        settled,
        Some(Settlement::Void(VoidReason::GrantGone)),
        "a login past the grant's end started a session"
    );
    assert!(store.expire_grants(19).expect("sweep").is_empty());
    assert_eq!(
        store.expire_grants(21).expect("sweep"),
        [("mypc".to_string(), "bob".to_string())]
    );
    assert!(store.expire_grants(22).expect("sweep").is_empty());
    assert!(store.grant_rights(&host, &bob).expect("read").is_none());
    let audit = store.audit_log(None, None, 1000).expect("audit");
    assert_eq!(
        audit.iter().filter(|r| r.event == "grant-expired").count(),
        1
    );
    assert!(notice_to(
        store,
        "alice",
        "bob's shared access to mypc expired"
    ));
    assert!(notice_to(
        store,
        "bob",
        "Your shared access to mypc expired"
    ));
}

/// Removing a user takes their device key, grants, invites and email in
/// one commit, keeps the failures they made (the host's count) and their
/// history, and tells the owners; a user who owns a host is refused; the
/// name invited again is a new user with nothing.
pub(crate) fn a_removed_user_keeps_nothing_that_lets_them_in(store: &dyn Store) {
    let (alice, host, record) = alice_owns_mypc(store, 3);
    let bob = bob_shares_mypc(store, &host);
    let source = "127.0.0.1".parse().expect("address");
    let Reservation::Reserved(a) = store
        .reserve_attempt(&bob, &host, &record.id, source, 2)
        .expect("reserve")
    else {
        panic!("not reserved")
    };
    store
        .settle_attempt(a, Proof::NotProven, "wrong", &SessionId([0; 16]), 2)
        .expect("settle");
    let user = InviteKind::User { email: None };
    store
        .create_invite("bob", &user, [4; 32], 100, &Actor::cli(), 2)
        .expect("a second invite");
    // bob asked for a reboot, which the owner's session waits for too.
    store
        .create_ticket([12; 32], &host, &bob, "bobs", 1_000, 2)
        .expect("reboot ticket");

    let refused = store.remove_user(&alice, &Actor::cli(), 3);
    assert!(
        matches!(&refused, Err(StoreError::Refused(why)) if why.contains("owns mypc")),
        "{refused:?}"
    );
    let removed = store.remove_user(&bob, &Actor::cli(), 3).expect("remove");
    assert_eq!(removed.grants, ["mypc"]);
    assert_eq!(removed.invites_cancelled, 1);
    assert_eq!(store.user_key(&bob).expect("key"), None);
    assert!(store.code_record(&bob, &host).expect("record").is_none());
    assert!(store
        .users()
        .expect("users")
        .iter()
        .all(|u| u.name != "bob"));
    assert_eq!(store.user_email("bob").expect("email"), None);
    assert_eq!(store.host_status(&host).expect("status").failures, 1);
    assert_eq!(
        store
            .redeem_ticket([12; 32], &host, Some("bobs"), source, 3)
            .expect("redeem"),
        Ok("bobs".to_string()),
        "the host comes back from the reboot bob asked for"
    );
    assert!(store
        .redeem_invite([4; 32], PublicKey([8; 32]), Platform::Linux, source, 4)
        .is_err());
    assert!(matches!(
        store.grant(&host, &bob, &GrantTerms::default(), &Actor::cli(), 4),
        Err(StoreError::NoSuchUser(_))
    ));
    assert!(matches!(
        store.remove_user(&bob, &Actor::cli(), 4),
        Err(StoreError::NoSuchUser(_))
    ));
    let audit = store.audit_log(None, None, 1000).expect("audit");
    assert!(audit
        .iter()
        .any(|r| r.event == "user-removed" && r.user.as_deref() == Some("bob")));
    assert!(notice_to(store, "alice", "bob was removed"));

    store
        .create_invite("bob", &user, [5; 32], 100, &Actor::cli(), 5)
        .expect("invited again");
    store
        .redeem_invite([5; 32], PublicKey([9; 32]), Platform::Linux, source, 5)
        .expect("enrolled again");
    assert_eq!(store.user_key(&bob).expect("key"), Some(PublicKey([9; 32])));
    assert!(store
        .users()
        .expect("users")
        .iter()
        .any(|u| u.name == "bob"));
    assert!(store.code_record(&bob, &host).expect("record").is_none());
}

/// Removing a host takes its device key, grants, code records and invites
/// in one commit and tells its owner and shared users; the name invited
/// again is a new host, unlocked, with a new owner and no code.
pub(crate) fn a_removed_host_keeps_nothing_that_lets_it_in(store: &dyn Store) {
    let (alice, host, record) = alice_owns_mypc(store, 1);
    let bob = bob_shares_mypc(store, &host);
    let source = "127.0.0.1".parse().expect("address");
    let Reservation::Reserved(a) = store
        .reserve_attempt(&bob, &host, &record.id, source, 2)
        .expect("reserve")
    else {
        panic!("not reserved")
    };
    store
        .settle_attempt(a, Proof::NotProven, "wrong", &SessionId([0; 16]), 2)
        .expect("settle");
    assert!(store.host_status(&host).expect("status").locked);
    // Its agent declared a VNC desktop, which its users see while it is
    // away too.
    let vnc = HostPresence::Online {
        desktop: Some(DesktopProtocol::Vnc),
    };
    store
        .set_presence(&[(host.clone(), vnc)], 2)
        .expect("online");
    store
        .set_presence(&[(host.clone(), HostPresence::Offline)], 2)
        .expect("offline");
    let listed = store.hosts_for_user(&bob).expect("hosts");
    assert_eq!(
        listed
            .iter()
            .map(|h| (h.online, h.desktop))
            .collect::<Vec<_>>(),
        [(false, Some(DesktopProtocol::Vnc))]
    );

    // The agent, away, has not had the grant's notice yet.
    assert!(notice_to(store, "mypc", "Shared access enabled"));

    let removed = store.remove_host(&host, &Actor::cli(), 3).expect("remove");
    assert_eq!(removed.grants, ["bob"]);
    assert!(matches!(
        store.set_code(&host, &HOST_KEY, &CodeTarget::Owner, &record, 3),
        Err(StoreError::NotEnrolled(_))
    ));
    let for_agent: Vec<_> = store
        .outbox(1000)
        .expect("outbox")
        .into_iter()
        .filter(|n| n.recipient == "mypc" && n.channel == "host")
        .map(|n| (n.state, n.last_error))
        .collect();
    assert!(!for_agent.is_empty());
    assert!(
        for_agent.iter().all(|(state, why)| state == "stored"
            && why.as_deref() == Some("the host was removed before delivery")),
        "a notice for the removed agent would reach the next machine of the name: {for_agent:?}"
    );
    assert_eq!(store.host_key(&host).expect("key"), None);
    assert!(store.code_record(&alice, &host).expect("record").is_none());
    assert!(store.code_record(&bob, &host).expect("record").is_none());
    assert!(store.hosts().expect("hosts").is_empty());
    assert!(store.hosts_for_user(&bob).expect("hosts").is_empty());
    assert!(matches!(
        store.host_status(&host),
        Err(StoreError::NoSuchHost(_))
    ));
    assert!(matches!(
        store.reserve_attempt(&alice, &host, &record.id, source, 3),
        Err(StoreError::NoSuchHost(_))
    ));
    let audit = store.audit_log(Some(&host), None, 1000).expect("audit");
    assert!(audit.iter().any(|r| r.event == "host-removed"));
    assert!(
        audit.iter().any(|r| r.event == "login-failed"),
        "history stays"
    );
    assert!(notice_to(store, "alice", "mypc was removed"));
    assert!(notice_to(store, "bob", "mypc was removed"));
    // bob owned nothing, so he may go; alice, who owned mypc, may now too.
    store
        .remove_user(&alice, &Actor::cli(), 4)
        .expect("owner removed");

    let kind = InviteKind::Host {
        owner: bob.clone(),
        lockout_threshold: 3,
    };
    store
        .create_invite("mypc", &kind, [6; 32], 100, &Actor::cli(), 5)
        .expect("invited again");
    let status = store.host_status(&host).expect("status");
    assert_eq!(
        (
            status.owner.as_str(),
            status.locked,
            status.failures,
            status.code_set
        ),
        ("bob", false, 0, false)
    );
    assert!(status.grants.is_empty());
    let listed = store.hosts_for_user(&bob).expect("hosts");
    assert_eq!(
        listed.iter().map(|h| h.desktop).collect::<Vec<_>>(),
        [None],
        "the old agent's desktop is not the new host's"
    );
    // The removed device, if it still holds a connection, cannot set the
    // new host's code: neither before the new device enrolls nor after.
    let stale = CodeRecord {
        id: RecordId([8; 16]),
        ..record.clone()
    };
    let set_by_old = |at| store.set_code(&host, &HOST_KEY, &CodeTarget::Owner, &stale, at);
    assert!(matches!(set_by_old(6), Err(StoreError::NotEnrolled(_))));
    let new_key = PublicKey([0x49; 32]);
    store
        .redeem_invite([6; 32], new_key, Platform::Linux, source, 6)
        .expect("new device");
    assert!(matches!(set_by_old(7), Err(StoreError::NotEnrolled(_))));
    assert!(!store.host_status(&host).expect("status").code_set);
    store
        .set_code(&host, &new_key, &CodeTarget::Owner, &stale, 8)
        .expect("the new device sets its code");
}

/// The owner is told once per run of a secondary user's sessions (gaps
/// under an hour), when the last open one ends; not for a session ended by
/// a revoke, whose own notice tells them.
pub(crate) fn a_run_of_secondary_sessions_tells_the_owner_once(store: &dyn Store) {
    use super::notice::SESSION_RUN_GAP_SECS as GAP;
    let (_, host, record) = alice_owns_mypc(store, 3);
    let bob = bob_shares_mypc(store, &host);
    let source = "127.0.0.1".parse().expect("address");
    let start = |n: u8, at: i64| {
        let Reservation::Reserved(a) = store
            .reserve_attempt(&bob, &host, &record.id, source, at)
            .expect("reserve")
        else {
            panic!("not reserved")
        };
        let settled = store
            .settle_attempt(a, Proof::RightCode, "", &SessionId([n; 16]), at)
            .expect("settle");
        assert_eq!(settled, Some(Settlement::Success));
    };
    let end = |n: u8, at: i64| {
        store
            .session_ended(&SessionId([n; 16]), "client left", SessionEnd::Final, at)
            .expect("end")
    };
    let told = || {
        store
            .outbox(1000)
            .expect("outbox")
            .iter()
            .filter(|n| n.recipient == "alice" && n.subject.contains("bob ended"))
            .count()
    };
    start(1, 10);
    end(1, 20);
    assert_eq!(told(), 1, "the first session's end");
    start(2, 20 + GAP - 1);
    end(2, 20 + GAP + 100);
    assert_eq!(told(), 1, "a session within the gap continues the run");
    // Two sessions at once, a gap later: the last to end tells.
    let later = 20 + 3 * GAP;
    start(3, later);
    start(4, later + 1);
    end(3, later + 2);
    assert_eq!(told(), 1, "bob's other session is still open");
    end(4, later + 3);
    assert_eq!(told(), 2, "the end of a new run");
    // A session ended by a revoke: the revoke's notice says it.
    let last = later + 3 * GAP;
    start(5, last);
    store
        .revoke(&host, &bob, &Actor::cli(), last + 1)
        .expect("revoke");
    end(5, last + 2);
    assert_eq!(told(), 2, "told of a revoked user's session end");
}
