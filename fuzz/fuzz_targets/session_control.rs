//! The session control state machines, relay and client, driven together
//! by fuzzer-chosen events: every frame the relay's side emits goes through
//! the codec to the client's side, which must accept it and end up in the
//! matching phase; a parked or ended session is never paired; an
//! ended one never says another word. A second client follows raw
//! fuzzer-chosen frames and must only ever answer with a typed error.
#![no_main]

use std::time::{Duration, Instant};

use latchkey_protocol::{
    codec,
    control::{ClientSession, EndReason, Phase, RelaySession, Request, Waiting},
    frame::{ClientToRelay, RelayToClient},
};
use libfuzzer_sys::fuzz_target;

fn agree(relay: &RelaySession, client: &ClientSession) {
    match client.phase() {
        Phase::Ready => {
            assert!(relay.is_paired());
            assert!(relay.deadline().is_none());
        }
        Phase::Rebooting { waiting, .. } => {
            assert!(relay.deadline().is_some());
            assert!(!relay.is_paired());
            assert_eq!(*waiting == Waiting::HostAway, !relay.waits_for_reboot());
        }
        Phase::Ended(_) => assert!(relay.is_over()),
        Phase::Pairing => panic!("a paired client is pairing again"),
    }
}

fuzz_target!(|data: &[u8]| {
    let start = Instant::now();
    let mut now = start;
    // The first byte picks the grace for agents that drop (0 to 63 s).
    let grace = Duration::from_secs(u64::from(data.first().copied().unwrap_or(0) % 64));
    let mut relay = RelaySession::new("fuzzhost".parse().unwrap(), Duration::from_secs(60), grace);
    let mut client = ClientSession::new();
    let ready = RelayToClient::SessionReady {
        host_key: latchkey_protocol::ids::PublicKey([1; 32]),
        record: latchkey_protocol::ids::RecordId([2; 16]),
    };
    client.on_frame(ready, now).unwrap();
    let mut raw_client = ClientSession::new();

    let mut bytes = data.iter().copied();
    while let Some(op) = bytes.next() {
        let arg = bytes.next().unwrap_or(0);
        let was_over = relay.is_over();
        let frame = match op % 9 {
            0 => relay.host_lost(now, Some(now + Duration::from_secs(u64::from(arg) / 4))),
            1 => relay.host_lost(now, None),
            2 => relay.host_back(arg % 2 == 0),
            3 => {
                now += Duration::from_millis(u64::from(arg) * 100);
                relay.tick(now)
            }
            4 => match arg % 4 {
                0 => relay.end(EndReason::HostOffline),
                1 => relay.end(EndReason::RelayShutdown),
                2 => {
                    // The client left: nobody to tell, nothing to agree on.
                    assert_eq!(relay.end(EndReason::ClientLeft), None);
                    assert!(relay.is_over() && !relay.is_paired());
                    return;
                }
                _ => relay.end(EndReason::Ended(format!("admin {arg}"))),
            },
            5 => {
                let request = if arg % 2 == 0 { ClientToRelay::Reboot } else { ClientToRelay::ListHosts };
                match relay.request(&request) {
                    Request::Refuse(r) => Some(RelayToClient::Refused(r)),
                    Request::ListHosts => Some(RelayToClient::Hosts(vec![])),
                    Request::Ignore => None,
                    Request::Reboot => {
                        assert!(relay.is_paired(), "a reboot from a parked or ended session");
                        None
                    }
                }
            }
            6 => {
                client.connection_lost();
                return;
            }
            7 => {
                // Raw frames for the second client: up to `arg` bytes.
                let take: Vec<u8> = bytes.by_ref().take(usize::from(arg)).collect();
                if let Ok(codec::Decoded::Frame(frame, _)) = codec::decode_frame::<RelayToClient>(&take) {
                    let ended_before = matches!(raw_client.phase(), Phase::Ended(_));
                    let result = raw_client.on_frame(frame, now);
                    if ended_before {
                        assert!(result.is_err(), "an ended session moved");
                    }
                    if result.is_err() {
                        assert!(matches!(raw_client.phase(), Phase::Ended(_)));
                    }
                }
                None
            }
            _ => None,
        };
        if was_over {
            assert!(frame.is_none(), "an ended session spoke");
        }
        if let Some(frame) = frame {
            let bytes = codec::frame_bytes(&frame).expect("relay frames encode");
            let codec::Decoded::Frame(back, _) = codec::decode_frame::<RelayToClient>(&bytes).expect("decode") else {
                panic!("partial frame")
            };
            client.on_frame(back, now).expect("the client accepts every frame the relay sends");
        }
        agree(&relay, &client);
    }
});
