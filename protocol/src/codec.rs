//! Frame codec: a big-endian `u32` length prefix followed by a bincode 2
//! (serde) body. The length is checked against the limit before anything is
//! allocated, a partial frame is "need more", and trailing bytes are an
//! error, so every byte of a frame is accounted for.

use serde::{de::DeserializeOwned, Serialize};

use crate::{error::CodecError, limits::MAX_FRAME_LEN};

/// Size of the length prefix.
pub const LEN_PREFIX: usize = 4;

/// bincode configuration shared by every frame: varint integers, and a
/// decode limit so a hostile collection length cannot allocate more than a
/// frame could hold.
fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_FRAME_LEN>()
}

/// Encodes `value` as a body without a length prefix (for Noise payloads,
/// which carry their own length).
pub fn encode_body<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    let body = bincode::serde::encode_to_vec(value, config())
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    if body.len() > MAX_FRAME_LEN {
        return Err(CodecError::TooLarge {
            len: body.len(),
            limit: MAX_FRAME_LEN,
        });
    }
    Ok(body)
}

/// Decodes a body that must be exactly one value, with no bytes left over,
/// in its one canonical encoding (bincode's varints would otherwise accept
/// several spellings of a number; control frames are small, so re-encoding
/// to check costs little and leaves no byte unaccounted for).
pub fn decode_body<T: DeserializeOwned + Serialize>(body: &[u8]) -> Result<T, CodecError> {
    if body.len() > MAX_FRAME_LEN {
        return Err(CodecError::TooLarge {
            len: body.len(),
            limit: MAX_FRAME_LEN,
        });
    }
    let (value, used) = bincode::serde::decode_from_slice(body, config())
        .map_err(|e| CodecError::Malformed(e.to_string()))?;
    if used != body.len() {
        return Err(CodecError::TrailingBytes {
            extra: body.len() - used,
        });
    }
    if encode_body(&value)? != body {
        return Err(CodecError::Malformed("non-canonical encoding".into()));
    }
    Ok(value)
}

/// Appends `value` to `out` as one length-prefixed frame.
pub fn encode_frame<T: Serialize>(value: &T, out: &mut Vec<u8>) -> Result<(), CodecError> {
    let body = encode_body(value)?;
    let len = u32::try_from(body.len()).map_err(|_| CodecError::TooLarge {
        len: body.len(),
        limit: MAX_FRAME_LEN,
    })?;
    out.reserve(LEN_PREFIX + body.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&body);
    Ok(())
}

/// Returns `value` as one length-prefixed frame.
pub fn frame_bytes<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::new();
    encode_frame(value, &mut out)?;
    Ok(out)
}

/// Reads a length prefix and checks it against `limit` (at most
/// [`MAX_FRAME_LEN`]), so a reader knows how many body bytes to wait for
/// before it allocates them.
pub fn body_len(prefix: [u8; LEN_PREFIX], limit: usize) -> Result<usize, CodecError> {
    let limit = limit.min(MAX_FRAME_LEN);
    let len = u32::from_be_bytes(prefix) as usize;
    if len > limit {
        return Err(CodecError::TooLarge { len, limit });
    }
    Ok(len)
}

/// Result of trying to take one frame from the front of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<T> {
    /// Not enough bytes yet; read more and try again.
    NeedMore,
    /// One frame and how many bytes of the buffer it used.
    Frame(T, usize),
}

/// Takes one length-prefixed frame from the front of `buf`.
pub fn decode_frame<T: DeserializeOwned + Serialize>(buf: &[u8]) -> Result<Decoded<T>, CodecError> {
    let Some(prefix) = buf.get(..LEN_PREFIX) else {
        return Ok(Decoded::NeedMore);
    };
    let mut len_bytes = [0u8; LEN_PREFIX];
    len_bytes.copy_from_slice(prefix);
    let len = body_len(len_bytes, MAX_FRAME_LEN)?;
    let Some(body) = buf.get(LEN_PREFIX..LEN_PREFIX + len) else {
        return Ok(Decoded::NeedMore);
    };
    Ok(Decoded::Frame(decode_body(body)?, LEN_PREFIX + len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::Deserialize;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    enum Sample {
        Empty,
        Text(String),
        Bytes(Vec<u8>),
        Pair { a: u64, b: Option<i32> },
    }

    fn sample() -> impl Strategy<Value = Sample> {
        prop_oneof![
            Just(Sample::Empty),
            ".{0,64}".prop_map(Sample::Text),
            proptest::collection::vec(any::<u8>(), 0..512).prop_map(Sample::Bytes),
            (any::<u64>(), any::<Option<i32>>()).prop_map(|(a, b)| Sample::Pair { a, b }),
        ]
    }

    proptest! {
        #[test]
        fn frames_round_trip(values in proptest::collection::vec(sample(), 1..8)) {
            let mut buf = Vec::new();
            for v in &values {
                encode_frame(v, &mut buf).unwrap();
            }
            let mut at = 0;
            for v in &values {
                match decode_frame::<Sample>(&buf[at..]).unwrap() {
                    Decoded::Frame(got, used) => { prop_assert_eq!(&got, v); at += used; }
                    Decoded::NeedMore => prop_assert!(false, "complete frame reported as partial"),
                }
            }
            prop_assert_eq!(at, buf.len());
        }

        #[test]
        fn every_proper_prefix_needs_more(v in sample()) {
            let buf = frame_bytes(&v).unwrap();
            for cut in 0..buf.len() {
                prop_assert_eq!(decode_frame::<Sample>(&buf[..cut]).unwrap(), Decoded::NeedMore);
            }
        }

        #[test]
        fn trailing_bytes_in_a_body_are_rejected(v in sample(), extra in proptest::collection::vec(any::<u8>(), 1..16)) {
            let mut body = encode_body(&v).unwrap();
            body.extend_from_slice(&extra);
            prop_assert!(decode_body::<Sample>(&body).is_err());
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_frame::<Sample>(&bytes);
            let _ = decode_body::<Sample>(&bytes);
        }

        #[test]
        fn oversize_prefixes_are_refused_before_the_body_arrives(len in (MAX_FRAME_LEN as u32 + 1)..=u32::MAX) {
            let buf = len.to_be_bytes();
            prop_assert_eq!(
                decode_frame::<Sample>(&buf),
                Err(CodecError::TooLarge { len: len as usize, limit: MAX_FRAME_LEN })
            );
        }
    }

    #[test]
    fn oversize_values_are_not_encoded() {
        let big = Sample::Bytes(vec![0; MAX_FRAME_LEN + 1]);
        assert!(matches!(
            encode_body(&big),
            Err(CodecError::TooLarge { .. })
        ));
    }

    #[test]
    fn hostile_collection_length_does_not_allocate() {
        // A Vec<u8> whose varint length claims u64::MAX elements.
        let body = [2u8, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];
        assert!(decode_body::<Sample>(&body).is_err());
    }

    #[test]
    fn non_canonical_varints_are_rejected() {
        // 0 spelled as a 3-byte varint (found by the frame_decode fuzzer).
        assert!(decode_body::<u64>(&[251, 0, 0]).is_err());
        assert_eq!(decode_body::<u64>(&[0]), Ok(0));
    }

    #[test]
    fn body_len_respects_a_smaller_limit() {
        assert_eq!(
            body_len(100u32.to_be_bytes(), 64),
            Err(CodecError::TooLarge {
                len: 100,
                limit: 64
            })
        );
        assert_eq!(body_len(64u32.to_be_bytes(), 64), Ok(64));
    }
}
