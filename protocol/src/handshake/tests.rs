//! In-memory initiator/responder pairs: every property of SPEC A1-A4 that
//! does not need a network.

use std::collections::HashMap;

use rand::{rngs::StdRng, SeedableRng};

use super::*;
use crate::{
    e2e::ExportKey,
    frame::{HelloReply, Intent, LoginOutcome, Refusal, PROTOCOL_VERSION},
    ids::{AccessCode, HostName, RecordId, SessionId, UserName},
};

const BINDING: &[u8] = b"tls-exporter-of-connection-1";
const CODE: &str = "correct horse battery";

fn rng() -> StdRng {
    StdRng::seed_from_u64(7)
}

fn name<T: std::str::FromStr>(s: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    s.parse().unwrap()
}

/// A store in memory with the lockout rule of SPEC S6.
struct Memory {
    users: HashMap<UserName, PublicKey>,
    grants: HashMap<(UserName, HostName), CodeRecord>,
    locked: bool,
    failures: u32,
    reserved: u32,
    threshold: u32,
}

impl LoginAuthority for Memory {
    type Attempt = u32;
    fn device_key(&mut self, user: &UserName) -> Option<PublicKey> {
        self.users.get(user).copied()
    }
    fn code_record(&mut self, user: &UserName, host: &HostName) -> Option<CodeRecord> {
        self.grants.get(&(user.clone(), host.clone())).cloned()
    }
    fn reserve_attempt(&mut self, _: &UserName, _: &HostName, _: &CodeRecord) -> Reservation<u32> {
        if self.locked {
            return Reservation::Locked;
        }
        self.reserved += 1;
        self.failures += 1;
        self.locked = self.failures >= self.threshold;
        Reservation::Reserved(self.reserved)
    }
}

struct World {
    relay: RelayIdentity,
    alice: Keypair,
    store: Memory,
    export_key: ExportKey,
}

fn register(relay: &RelayIdentity, code: &str, rng: &mut StdRng) -> (CodeRecord, ExportKey) {
    let code = AccessCode::new(code.into()).unwrap();
    let ksf = KsfProfile::InsecureFastForTests;
    let (reg, request) = CodeRegistration::start(rng, &code, ksf).unwrap();
    let id = RecordId([3; 16]);
    let response = registration_response(relay, &request, id).unwrap();
    let (upload, export_key) = reg.finish(rng, &code, &response).unwrap();
    let record = CodeRecord {
        id,
        ksf,
        record: validate_upload(&upload).unwrap(),
    };
    (record, export_key)
}

fn world(rng: &mut StdRng) -> World {
    let mut relay = RelayIdentity::generate(rng);
    relay.outsider_ksf = KsfProfile::InsecureFastForTests;
    let alice = Keypair::generate(rng);
    let (record, export_key) = register(&relay, CODE, rng);
    let mut users = HashMap::new();
    users.insert(name("alice"), alice.public);
    users.insert(name("bob"), Keypair::generate(rng).public);
    let mut grants = HashMap::new();
    grants.insert((name("alice"), name("mypc")), record);
    World {
        relay,
        alice,
        store: Memory {
            users,
            grants,
            locked: false,
            failures: 0,
            reserved: 0,
            threshold: 3,
        },
        export_key,
    }
}

fn login_msg1(
    w: &World,
    device: &Keypair,
    user: &str,
    code: &str,
    rng: &mut StdRng,
) -> (Initiator, Vec<u8>) {
    Initiator::start_login(
        rng,
        device,
        &w.relay.public_key(),
        BINDING,
        name(user),
        name("mypc"),
        &AccessCode::for_login(code.into()).unwrap(),
    )
    .unwrap()
}

/// Runs msg 1 and msg 2; returns what each side saw.
fn attempt(
    w: &mut World,
    device: &Keypair,
    user: &str,
    code: &str,
    rng: &mut StdRng,
) -> (
    usize,
    AttemptDecision,
    Option<AwaitingKe3<u32>>,
    InitiatorReply,
) {
    let (init, msg1) = login_msg1(w, device, user, code, rng);
    let Msg1::Login(req) = Responder::read_msg1(&w.relay, BINDING, &msg1, rng).unwrap() else {
        panic!("not a login")
    };
    let LoginReply {
        msg2,
        decision,
        awaiting,
    } = req.respond(&w.relay, &mut w.store, rng).unwrap();
    let code = AccessCode::for_login(code.into()).unwrap();
    let reply = init.read_msg2(rng, &msg2, Some(&code)).unwrap();
    (msg2.len(), decision, awaiting, reply)
}

#[test]
fn right_code_succeeds_and_both_sides_agree_on_the_handshake_hash() {
    let mut rng = rng();
    let mut w = world(&mut rng);
    let alice = w.alice.clone();
    let (_, decision, awaiting, reply) = attempt(&mut w, &alice, "alice", CODE, &mut rng);
    assert_eq!(decision, AttemptDecision::Evaluated);
    let InitiatorReply::SendKe3 {
        msg3,
        awaiting: client,
    } = reply
    else {
        panic!("right code refused: {reply:?}")
    };
    let relay = awaiting.unwrap();
    assert_eq!(client.handshake_hash(), relay.handshake_hash());
    let mut result = relay.read_msg3(&msg3).map_err(|(e, _)| e).unwrap();
    assert!(result.verified);
    assert_eq!(result.attempt, Some(1));
    let outcome = LoginOutcome::Accepted {
        session: SessionId([1; 16]),
    };
    let msg4 = result.reply(&outcome).unwrap();
    let (got, key) = client.read_outcome(&msg4).unwrap();
    assert_eq!(got, outcome);
    // The login's export key is the one the host got when it registered the
    // code: the end-to-end psk both derive without the relay.
    assert_eq!(key.unwrap().as_bytes(), w.export_key.as_bytes());
}

#[test]
fn wrong_code_fails_at_ke2_and_spends_exactly_one_attempt() {
    let mut rng = rng();
    let mut w = world(&mut rng);
    let alice = w.alice.clone();
    let (_, decision, awaiting, reply) = attempt(&mut w, &alice, "alice", "wrong code!", &mut rng);
    assert!(
        matches!(reply, InitiatorReply::WrongCode { .. }),
        "{reply:?}"
    );
    assert_eq!(decision, AttemptDecision::Evaluated);
    // The client stops here; the relay's pending attempt is abandoned and
    // stays a failure (it was counted when it was reserved).
    assert_eq!(awaiting.unwrap().attempt(), Some(&1));
    assert_eq!((w.store.reserved, w.store.failures), (1, 1));
}

#[test]
fn a_ke3_from_a_guesser_who_kept_going_is_not_verified() {
    // A malicious client with the wrong code cannot produce a valid KE3;
    // here it replays the KE3 of a successful login on its own transport.
    let mut rng = rng();
    let mut w = world(&mut rng);
    let alice = w.alice.clone();
    let (_, _, good_relay, good) = attempt(&mut w, &alice, "alice", CODE, &mut rng);
    let InitiatorReply::SendKe3 { msg3, .. } = good else {
        panic!()
    };
    let (_, _, other_relay, _) = attempt(&mut w, &alice, "alice", "wrong code!", &mut rng);
    // msg3 is encrypted for the first session: the second cannot decrypt it.
    let (_, attempt) = other_relay.unwrap().read_msg3(&msg3).err().unwrap();
    assert_eq!(attempt, Some(2));
    assert!(
        good_relay
            .unwrap()
            .read_msg3(&msg3)
            .map_err(|(e, _)| e)
            .unwrap()
            .verified
    );
}

#[test]
fn outsiders_look_like_a_wrong_code_and_spend_nothing() {
    let mut rng = rng();
    let mut w = world(&mut rng);
    let alice = w.alice.clone();
    let (wrong_len, _, _, _) = attempt(&mut w, &alice, "alice", "wrong code!", &mut rng);
    let spent = w.store.reserved;
    let stranger = Keypair::generate(&mut rng);
    let cases = [
        ("unknown user", stranger.clone(), "mallory"),
        ("device key that is not the user's", stranger, "alice"),
        (
            "user without a grant",
            w.store
                .users
                .get(&name("bob"))
                .map(|_| Keypair::generate(&mut rng))
                .unwrap(),
            "bob",
        ),
    ];
    for (what, device, user) in cases {
        if user == "bob" {
            w.store.users.insert(name("bob"), device.public);
        }
        let (len, decision, awaiting, reply) = attempt(&mut w, &device, user, CODE, &mut rng);
        assert_eq!(
            len, wrong_len,
            "{what}: message 2 size differs from a wrong code"
        );
        assert_eq!(decision, AttemptDecision::Outsider, "{what}");
        assert!(
            matches!(reply, InitiatorReply::WrongCode { .. }),
            "{what}: {reply:?}"
        );
        assert!(awaiting.unwrap().attempt().is_none(), "{what}");
        assert_eq!(w.store.reserved, spent, "{what} spent an attempt");
    }
}

#[test]
fn a_relay_with_another_key_makes_the_initiator_abort_at_msg2() {
    let mut rng = rng();
    let w = world(&mut rng);
    let impostor = RelayIdentity::generate(&mut rng);
    let (init, msg1) = login_msg1(&w, &w.alice, "alice", CODE, &mut rng);
    // The impostor cannot even read message 1...
    assert!(Responder::read_msg1(&impostor, BINDING, &msg1, &mut rng).is_err());
    // ...and whatever it answers (here a genuine message 2 of its own,
    // made for a client that pinned it) does not decrypt: no KE3 is made.
    let (_, msg1b) = Initiator::start(
        &mut rng,
        &w.alice,
        &impostor.public_key(),
        BINDING,
        Intent::User {
            user: name("alice"),
        },
    )
    .unwrap();
    let Msg1::Device(req) = Responder::read_msg1(&impostor, BINDING, &msg1b, &mut rng).unwrap()
    else {
        panic!()
    };
    let (msg2, _) = req.reply(&HelloReply::Welcome).unwrap();
    let code = AccessCode::for_login(CODE.into()).unwrap();
    let err = init.read_msg2(&mut rng, &msg2, Some(&code)).unwrap_err();
    assert!(matches!(err, HandshakeError::Malformed(_)), "{err:?}");
}

#[test]
fn a_flipped_bit_in_any_message_is_an_error_never_a_panic() {
    let mut rng = rng();
    let mut w = world(&mut rng);
    let alice = w.alice.clone();
    let code = AccessCode::for_login(CODE.into()).unwrap();
    let (_, msg1) = login_msg1(&w, &alice, "alice", CODE, &mut rng);
    for bit in 0..msg1.len() * 8 {
        let mut m = msg1.clone();
        m[bit / 8] ^= 1 << (bit % 8);
        assert!(
            Responder::read_msg1(&w.relay, BINDING, &m, &mut rng).is_err(),
            "msg1 bit {bit}"
        );
    }
    for bit in (0..1000).step_by(7) {
        let (init, msg1) = login_msg1(&w, &alice, "alice", CODE, &mut rng);
        let Msg1::Login(req) = Responder::read_msg1(&w.relay, BINDING, &msg1, &mut rng).unwrap()
        else {
            panic!()
        };
        w.store.locked = false;
        let mut msg2 = req.respond(&w.relay, &mut w.store, &mut rng).unwrap().msg2;
        let at = bit % (msg2.len() * 8);
        msg2[at / 8] ^= 1 << (at % 8);
        assert!(
            init.read_msg2(&mut rng, &msg2, Some(&code)).is_err(),
            "msg2 bit {at}"
        );
    }
    w.store.locked = false;
    let (_, _, relay, reply) = attempt(&mut w, &alice, "alice", CODE, &mut rng);
    let InitiatorReply::SendKe3 { mut msg3, .. } = reply else {
        panic!()
    };
    msg3[5] ^= 0x10;
    assert!(relay.unwrap().read_msg3(&msg3).is_err());
}

#[test]
fn a_different_prologue_fails() {
    let mut rng = rng();
    let w = world(&mut rng);
    let (_, msg1) = login_msg1(&w, &w.alice, "alice", CODE, &mut rng);
    assert!(
        Responder::read_msg1(&w.relay, b"tls-exporter-of-connection-2", &msg1, &mut rng).is_err()
    );
}

#[test]
fn a_locked_host_spends_no_attempt_and_issues_no_ke2() {
    let mut rng = rng();
    let mut w = world(&mut rng);
    let alice = w.alice.clone();
    for _ in 0..3 {
        attempt(&mut w, &alice, "alice", "wrong code!", &mut rng);
    }
    assert!(w.store.locked);
    let (_, decision, awaiting, reply) = attempt(&mut w, &alice, "alice", CODE, &mut rng);
    assert_eq!(decision, AttemptDecision::Locked);
    assert!(awaiting.is_none());
    assert!(matches!(reply, InitiatorReply::Locked), "{reply:?}");
    assert_eq!(w.store.reserved, 3);
}

#[test]
fn device_intents_get_the_callers_reply_and_other_versions_are_refused() {
    let mut rng = rng();
    let w = world(&mut rng);
    let (init, msg1) = Initiator::start(
        &mut rng,
        &w.alice,
        &w.relay.public_key(),
        BINDING,
        Intent::User {
            user: name("alice"),
        },
    )
    .unwrap();
    let Msg1::Device(req) = Responder::read_msg1(&w.relay, BINDING, &msg1, &mut rng).unwrap()
    else {
        panic!()
    };
    assert_eq!(req.device_key(), w.alice.public);
    assert_eq!(
        req.intent(),
        Some(&Intent::User {
            user: name("alice")
        })
    );
    let (msg2, relay_hash) = req.reply(&HelloReply::Welcome).unwrap();
    let InitiatorReply::Welcome { handshake_hash } = init.read_msg2(&mut rng, &msg2, None).unwrap()
    else {
        panic!()
    };
    assert_eq!(handshake_hash, relay_hash);

    // A message 1 from version 2 is refused with the version we speak.
    let relay_key = w.relay.public_key();
    let builder = noise_builder(&mut rng)
        .local_private_key(w.alice.secret.as_bytes())
        .unwrap()
        .remote_public_key(&relay_key.0)
        .unwrap();
    let prologue = prologue(BINDING);
    let mut hs = builder
        .prologue(&prologue)
        .unwrap()
        .build_initiator()
        .unwrap();
    let future = PROTOCOL_VERSION + 1;
    let payload = crate::codec::encode_body(&(future, "something new")).unwrap();
    let msg1 = write_noise(|p, b| hs.write_message(p, b), &payload).unwrap();
    let Msg1::Device(req) = Responder::read_msg1(&w.relay, BINDING, &msg1, &mut rng).unwrap()
    else {
        panic!()
    };
    assert_eq!((req.version(), req.intent()), (future, None));
    let (msg2, _) = req.reply(&HelloReply::Welcome).unwrap();
    let body = read_noise(|m, b| hs.read_message(m, b), &msg2).unwrap();
    let reply: HelloReply = crate::codec::decode_body(&body).unwrap();
    assert_eq!(
        reply,
        HelloReply::Refused(Refusal::UnsupportedVersion {
            supported: PROTOCOL_VERSION
        })
    );
}

#[test]
fn relay_identity_survives_a_round_trip_through_bytes() {
    let mut rng = rng();
    let w = world(&mut rng);
    let again = RelayIdentity::from_bytes(&w.relay.to_bytes()).unwrap();
    assert_eq!(again.public_key(), w.relay.public_key());
    assert!(RelayIdentity::from_bytes(&[0; 10]).is_err());
    // A record registered before the round trip still verifies after it.
    let mut w2 = World {
        relay: again,
        alice: w.alice.clone(),
        store: w.store,
        export_key: w.export_key,
    };
    w2.relay.outsider_ksf = KsfProfile::InsecureFastForTests;
    let alice = w2.alice.clone();
    let (_, _, _, reply) = attempt(&mut w2, &alice, "alice", CODE, &mut rng);
    assert!(matches!(reply, InitiatorReply::SendKe3 { .. }));
}

#[test]
fn message_sizes_match_the_documented_figures() {
    let mut rng = rng();
    let mut w = world(&mut rng);
    let alice = w.alice.clone();
    let (_, msg1) = login_msg1(&w, &alice, "alice", CODE, &mut rng);
    let (len2, _, _, reply) = attempt(&mut w, &alice, "alice", CODE, &mut rng);
    let InitiatorReply::SendKe3 { msg3, .. } = reply else {
        panic!()
    };
    // 32 e + 48 s + 16 tag + payload (version, names, 96-byte KE1).
    assert!((190..260).contains(&msg1.len()), "msg1 {}", msg1.len());
    // 32 e + 16 tag + payload (KE2 is 320 bytes).
    assert!((360..380).contains(&len2), "msg2 {len2}");
    assert!((80..100).contains(&msg3.len()), "msg3 {}", msg3.len());
}
