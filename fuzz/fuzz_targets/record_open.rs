//! The channel record layer fed hostile bytes: a stream cut anywhere and
//! fed in fuzzer-chosen pieces, with records that are garbage, or real
//! records (sealed from fuzzer payloads) with bytes flipped. Nothing may
//! panic or allocate past the limit; real, untouched records open to what
//! was sealed, in order.
#![no_main]

use latchkey_protocol::{
    fuzzing,
    record::{Opened, RecordBuffer, MAX_RECORD_PAYLOAD},
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, data)) = data.split_first() else { return };
    let (mut sealer, mut opener) = fuzzing::record_pair([9; 32]);
    // Mode bit 0: the stream is real records of fuzzer payloads; else raw.
    let mut stream = Vec::new();
    let mut payloads = Vec::new();
    if mode & 1 == 1 {
        for payload in data.chunks(97) {
            let payload = &payload[..payload.len().min(MAX_RECORD_PAYLOAD)];
            sealer.seal(payload, &mut stream).unwrap();
            payloads.push(payload.to_vec());
        }
        sealer.seal_end(&mut stream).unwrap();
        // Mode bit 1: flip one byte the fuzzer picks.
        if mode & 2 == 2 && !stream.is_empty() {
            let at = usize::from(mode >> 2) * 31 % stream.len();
            stream[at] ^= 0x40;
        }
    } else {
        stream.extend_from_slice(data);
    }
    let tampered = mode & 3 != 1;
    // Fed in pieces of a fuzzer-chosen size, as reads would return them,
    // and only while no whole record is waiting (as the reader does).
    let piece = usize::from(mode >> 2).max(1);
    let mut buf = RecordBuffer::default();
    let mut opened = Vec::new();
    let mut at = 0;
    'feed: loop {
        match buf.take() {
            Ok(Some(mut record)) => match opener.open(&mut record) {
                Ok(Opened::Data(d)) => opened.push(d.to_vec()),
                Ok(Opened::End) | Err(_) => break 'feed,
            },
            Ok(None) if at < stream.len() => {
                let end = (at + piece).min(stream.len());
                buf.extend(&stream[at..end]);
                at = end;
            }
            Ok(None) | Err(_) => break,
        }
    }
    if !tampered {
        assert_eq!(opened, payloads);
    }
});
