//! The relay's side fed hostile input: raw message 1 bytes, fuzzer-chosen
//! payloads inside a genuinely encrypted message 1, and hostile message 3
//! after a real KE2. Checks that nothing panics and that an attempt is
//! never verified without the code.
#![no_main]

use latchkey_protocol::{
    fuzzing,
    handshake::{
        registration_response, validate_upload, CodeRecord, CodeRegistration, Initiator, Keypair,
        LoginAuthority, Msg1, RelayIdentity, Reservation, Responder,
    },
    ids::{AccessCode, HostName, PublicKey, RecordId, UserName},
    ksf::KsfProfile,
};
use libfuzzer_sys::fuzz_target;
use rand::{rngs::StdRng, SeedableRng};
use std::sync::OnceLock;

const BINDING: &[u8] = b"fuzz-binding";

struct Fixture {
    relay: RelayIdentity,
    device: Keypair,
    record: CodeRecord,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let mut rng = StdRng::seed_from_u64(1);
        let mut relay = RelayIdentity::generate(&mut rng);
        relay.outsider_ksf = KsfProfile::InsecureFastForTests;
        let device = Keypair::generate(&mut rng);
        let code = AccessCode::new("fuzzing code".into()).unwrap();
        let (reg, req) = CodeRegistration::start(&mut rng, &code, KsfProfile::InsecureFastForTests).unwrap();
        let id = RecordId([1; 16]);
        let resp = registration_response(&relay, &req, id).unwrap();
        let (upload, _export_key) = reg.finish(&mut rng, &code, &resp).unwrap();
        let record = CodeRecord { id, ksf: KsfProfile::InsecureFastForTests, record: validate_upload(&upload).unwrap() };
        Fixture { relay, device, record }
    })
}

struct Store<'a> {
    f: &'a Fixture,
    reserved: u32,
}

impl LoginAuthority for Store<'_> {
    type Attempt = u32;
    fn device_key(&mut self, _: &UserName) -> Option<PublicKey> {
        Some(self.f.device.public)
    }
    fn code_record(&mut self, user: &UserName, _: &HostName) -> Option<CodeRecord> {
        (user.as_str() != "outsider").then(|| self.f.record.clone())
    }
    fn reserve_attempt(&mut self, _: &UserName, _: &HostName, _: &CodeRecord) -> Reservation<u32> {
        self.reserved += 1;
        Reservation::Reserved(self.reserved)
    }
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let mut rng = StdRng::seed_from_u64(data.len() as u64);
    let Some((&mode, data)) = data.split_first() else { return };
    let mut store = Store { f, reserved: 0 };
    let msg1 = match mode % 3 {
        0 => data.to_vec(),
        1 => match fuzzing::msg1_with_payload(&mut rng, &f.device, &f.relay.public_key(), BINDING, data) {
            Some(m) => m,
            None => return,
        },
        _ => {
            // A genuine login with a wrong code, then a hostile message 3.
            let code = AccessCode::for_login("not the code".into()).unwrap();
            let (_, msg1) = Initiator::start_login(
                &mut rng, &f.device, &f.relay.public_key(), BINDING,
                "alice".parse().unwrap(), "mypc".parse().unwrap(), &code,
            ).unwrap();
            let Ok(Msg1::Login(req)) = Responder::read_msg1(&f.relay, BINDING, &msg1, &mut rng) else {
                panic!("a genuine message 1 was refused")
            };
            let reply = req.respond(&f.relay, &mut store, &mut rng).unwrap();
            if let Some(awaiting) = reply.awaiting {
                if let Ok(result) = awaiting.read_msg3(data) {
                    assert!(!result.verified, "KE3 verified without the code");
                }
            }
            return;
        }
    };
    match Responder::read_msg1(&f.relay, BINDING, &msg1, &mut rng) {
        Ok(Msg1::Login(req)) => {
            let _ = req.respond(&f.relay, &mut store, &mut rng);
        }
        Ok(Msg1::Device(req)) => {
            let _ = req.intent();
        }
        Err(_) => {}
    }
});
