//! Every frame type: whatever decodes must re-encode to the same bytes
//! (decoding is canonical and loses nothing), and nothing panics.
#![no_main]

use latchkey_protocol::{codec, frame::*, session::*};
use libfuzzer_sys::fuzz_target;
use serde::{de::DeserializeOwned, Serialize};

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(data: &[u8]) {
    if let Ok(codec::Decoded::Frame(value, used)) = codec::decode_frame::<T>(data) {
        let again = codec::frame_bytes(&value).expect("a decoded frame re-encodes");
        let codec::Decoded::Frame(back, used2) = codec::decode_frame::<T>(&again).expect("re-decodes") else {
            panic!("re-encoded frame is partial")
        };
        assert_eq!(back, value);
        assert_eq!(used2, again.len());
        assert!(used <= data.len());
    }
    if let Ok(value) = codec::decode_body::<T>(data) {
        assert_eq!(codec::encode_body(&value).expect("re-encodes"), data, "non-canonical body accepted");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, data)) = data.split_first() else { return };
    match which % 16 {
        0 => round_trip::<Hello>(data),
        1 => round_trip::<HelloReply>(data),
        2 => round_trip::<LoginFinish>(data),
        3 => round_trip::<LoginOutcome>(data),
        4 => round_trip::<ClientToRelay>(data),
        5 => round_trip::<RelayToClient>(data),
        6 => round_trip::<HostToRelay>(data),
        7 => round_trip::<RelayToHost>(data),
        8 => round_trip::<HandshakeRequest>(data),
        9 => round_trip::<HandshakeReply>(data),
        10 => round_trip::<ChannelReply>(data),
        11 => round_trip::<ShellIn>(data),
        12 => round_trip::<ShellOut>(data),
        13 => round_trip::<ExecIn>(data),
        14 => round_trip::<ChannelKind>(data),
        _ => round_trip::<ExecOut>(data),
    }
});
