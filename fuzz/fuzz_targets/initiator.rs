//! The client's side fed a hostile message 2: raw bytes, and fuzzer-chosen
//! payloads inside a message 2 that really comes from the pinned relay (a
//! relay gone bad). Nothing may panic.
#![no_main]

use latchkey_protocol::{
    fuzzing,
    handshake::{Initiator, Keypair, RelayIdentity},
    ids::AccessCode,
};
use libfuzzer_sys::fuzz_target;
use rand::{rngs::StdRng, SeedableRng};

const BINDING: &[u8] = b"fuzz-binding";

fuzz_target!(|data: &[u8]| {
    let mut rng = StdRng::seed_from_u64(2);
    let relay = RelayIdentity::generate(&mut rng);
    let device = Keypair::generate(&mut rng);
    let code = AccessCode::for_login("fuzzing code".into()).unwrap();
    let Some((&mode, data)) = data.split_first() else { return };
    let (init, msg1) = Initiator::start_login(
        &mut rng, &device, &relay.public_key(), BINDING,
        "alice".parse().unwrap(), "mypc".parse().unwrap(), &code,
    ).unwrap();
    let msg2 = if mode % 2 == 0 {
        data.to_vec()
    } else {
        match fuzzing::msg2_with_payload(&mut rng, &relay, BINDING, &msg1, data) {
            Some(m) => m,
            None => return,
        }
    };
    let _ = init.read_msg2(&mut rng, &msg2, Some(&code));
});
