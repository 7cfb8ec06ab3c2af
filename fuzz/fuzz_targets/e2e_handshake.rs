//! The end-to-end handshake fed hostile messages: the host's side gets any
//! message 1, the client's side any message 2 (as a relay, or a host gone
//! bad, could send). Nothing may panic, and garbage never completes it.
#![no_main]

use latchkey_protocol::{
    e2e::{respond, Binding, ConnectionBinding, E2eInitiator, ExportKey, SessionPsk},
    handshake::Keypair,
    ids::{RecordId, SessionId},
};
use libfuzzer_sys::fuzz_target;
use rand::{rngs::StdRng, SeedableRng};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, data)) = data.split_first() else { return };
    let mut rng = StdRng::seed_from_u64(3);
    let user = Keypair::generate(&mut rng);
    let host = Keypair::generate(&mut rng);
    let binding = Binding {
        session: SessionId([1; 16]),
        record: RecordId([2; 16]),
        connection: ConnectionBinding([3; 32]),
    };
    let psk = SessionPsk::derive(&ExportKey::from_bytes(vec![7; 64]), &binding.record);
    if mode % 2 == 0 {
        let answered = respond(&mut rng, &host, &user.public, &psk, &binding, data);
        assert!(answered.is_err(), "a fuzzed message 1 was answered");
    } else {
        let (init, _) = E2eInitiator::start(&mut rng, &user, &host.public, &psk, &binding).unwrap();
        assert!(init.finish(data).is_err(), "a fuzzed message 2 finished the handshake");
    }
});
