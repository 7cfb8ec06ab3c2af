//! The channel record layer, sans-IO: what the client and the host send
//! each other inside a channel, sealed with AES-256-GCM under keys the
//! relay never has ([`e2e`](crate::e2e)). The relay splices the records
//! unchanged; it sees only their lengths.
//!
//! ```text
//! record     = len: u32 (big endian) ‖ ciphertext (len bytes, tag included)
//! plaintext  = type: u8 ‖ payload        type 0 = data, 1 = end,
//!                                         2 = padded data: len: u32 ‖ data ‖ zeros
//! nonce      = 0u32 ‖ counter: u64 (big endian), one counter per direction
//! ```
//!
//! Each channel direction has its own key, so a record cannot be moved to
//! another channel, turned around, reordered or replayed: the nonce is the
//! record's position. The end record makes a clean end distinguishable
//! from a stream the relay cut short.

use bytes::BytesMut;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use thiserror::Error;
use zeroize::Zeroizing;

/// Largest payload in one record: a whole control frame fits, and bulk
/// data moves in records this big.
pub const MAX_RECORD_PAYLOAD: usize = 64 * 1024;

/// The AEAD tag's length.
pub const TAG_LEN: usize = 16;

/// Largest ciphertext a record may announce (type byte, payload, tag).
pub const MAX_RECORD_LEN: usize = 1 + MAX_RECORD_PAYLOAD + TAG_LEN;

/// Size of a record's length prefix.
pub const RECORD_PREFIX: usize = 4;

/// Records one direction of a channel may carry before it must end: far
/// below AES-GCM's limits for one key (2^32 records is 256 TiB at the
/// largest size), so no channel ever comes close.
pub const MAX_RECORDS: u64 = 1 << 32;

const DATA: u8 = 0;
const END: u8 = 1;
const PADDED: u8 = 2;

/// Padded records round their plaintext up to a multiple of this, so a
/// channel's request (a command line, a path) shows the relay only its
/// size class, not its length.
pub const PAD_TO: usize = 256;

/// Why a record could not be sealed or opened.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecordError {
    /// The length prefix exceeds [`MAX_RECORD_LEN`] or is too short to
    /// hold a tag; nothing was allocated.
    #[error("record of {0} bytes is outside the limits")]
    BadLength(usize),
    /// The record did not authenticate: tampered with, reordered, replayed
    /// or sealed under another key.
    #[error("record failed to authenticate")]
    Forged,
    /// The plaintext's type byte is unknown.
    #[error("record of unknown type {0}")]
    UnknownType(u8),
    /// Data arrived after the end record.
    #[error("data after the end of the channel")]
    AfterEnd,
    /// The payload is larger than [`MAX_RECORD_PAYLOAD`] (caller bug).
    #[error("payload of {0} bytes is too large for one record")]
    TooLarge(usize),
    /// The direction used up its [`MAX_RECORDS`] records.
    #[error("the channel sent its last record; open a new channel")]
    Exhausted,
}

/// One direction's key and record counter.
struct Direction {
    key: LessSafeKey,
    counter: u64,
}

impl Direction {
    fn new(key: &Zeroizing<[u8; 32]>) -> Self {
        // 32 bytes is always AES-256's key length.
        let unbound = UnboundKey::new(&AES_256_GCM, key.as_slice())
            .unwrap_or_else(|_| unreachable!("a 32-byte key fits AES-256-GCM"));
        Self {
            key: LessSafeKey::new(unbound),
            counter: 0,
        }
    }

    fn next_nonce(&mut self) -> Result<Nonce, RecordError> {
        if self.counter >= MAX_RECORDS {
            return Err(RecordError::Exhausted);
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce[4..].copy_from_slice(&self.counter.to_be_bytes());
        self.counter += 1;
        Ok(Nonce::assume_unique_for_key(nonce))
    }
}

/// Seals the records one side sends on a channel.
pub struct Sealer(Direction);

impl Sealer {
    /// A sealer with `key` (from [`e2e::SessionKeys`](crate::e2e::SessionKeys)).
    pub(crate) fn new(key: &Zeroizing<[u8; 32]>) -> Self {
        Self(Direction::new(key))
    }

    /// Appends one data record carrying `payload` to `out`.
    pub fn seal(&mut self, payload: &[u8], out: &mut Vec<u8>) -> Result<(), RecordError> {
        self.seal_typed(DATA, payload, out)
    }

    /// Appends one data record carrying `payload`, padded to a multiple of
    /// [`PAD_TO`] bytes.
    pub fn seal_padded(&mut self, payload: &[u8], out: &mut Vec<u8>) -> Result<(), RecordError> {
        let len = u32::try_from(payload.len()).map_err(|_| RecordError::TooLarge(payload.len()))?;
        let mut body = len.to_be_bytes().to_vec();
        body.extend_from_slice(payload);
        // The type byte and the tag count too: the record's length is a
        // multiple of PAD_TO.
        let sealed = 1 + body.len() + TAG_LEN;
        let padded = sealed.div_ceil(PAD_TO) * PAD_TO;
        body.resize(body.len() + (padded - sealed), 0);
        self.seal_typed(PADDED, &body, out)
    }

    /// Appends the end record to `out`: nothing may follow it.
    pub fn seal_end(&mut self, out: &mut Vec<u8>) -> Result<(), RecordError> {
        self.seal_typed(END, &[], out)
    }

    fn seal_typed(
        &mut self,
        kind: u8,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), RecordError> {
        if payload.len() > MAX_RECORD_PAYLOAD {
            return Err(RecordError::TooLarge(payload.len()));
        }
        let nonce = self.0.next_nonce()?;
        let len = 1 + payload.len() + TAG_LEN;
        let start = out.len();
        out.reserve(RECORD_PREFIX + len);
        // `len` is at most MAX_RECORD_LEN, which fits a u32.
        out.extend_from_slice(&(len as u32).to_be_bytes());
        out.push(kind);
        out.extend_from_slice(payload);
        let tag = self.0.key.seal_in_place_separate_tag(
            nonce,
            Aad::empty(),
            &mut out[start + RECORD_PREFIX..],
        );
        match tag {
            Ok(tag) => out.extend_from_slice(tag.as_ref()),
            Err(_) => {
                out.truncate(start);
                return Err(RecordError::TooLarge(payload.len()));
            }
        }
        Ok(())
    }
}

/// What an opened record says.
#[derive(Debug, PartialEq, Eq)]
pub enum Opened<'a> {
    /// Channel data.
    Data(&'a [u8]),
    /// The sender's clean end of the channel.
    End,
}

/// Opens the records one side receives on a channel.
pub struct Opener {
    dir: Direction,
    ended: bool,
}

impl Opener {
    /// An opener with `key` (from [`e2e::SessionKeys`](crate::e2e::SessionKeys)).
    pub(crate) fn new(key: &Zeroizing<[u8; 32]>) -> Self {
        Self {
            dir: Direction::new(key),
            ended: false,
        }
    }

    /// Opens one record's ciphertext (without its length prefix) in place.
    pub fn open<'a>(&mut self, ciphertext: &'a mut [u8]) -> Result<Opened<'a>, RecordError> {
        match self.open_in_place(ciphertext)? {
            Some(range) => Ok(Opened::Data(&ciphertext[range])),
            None => Ok(Opened::End),
        }
    }

    /// [`Opener::open`], saying where the data lies in `ciphertext` after
    /// it was opened in place (`None` for the end record), so a reader can
    /// hand the data on without copying it.
    pub fn open_in_place(
        &mut self,
        ciphertext: &mut [u8],
    ) -> Result<Option<std::ops::Range<usize>>, RecordError> {
        if self.ended {
            return Err(RecordError::AfterEnd);
        }
        check_len(ciphertext.len())?;
        let nonce = self.dir.next_nonce()?;
        let plain = self
            .dir
            .key
            .open_in_place(nonce, Aad::empty(), ciphertext)
            .map_err(|_| RecordError::Forged)?;
        let (kind, payload) = plain.split_first().ok_or(RecordError::Forged)?;
        match *kind {
            DATA => Ok(Some(1..plain.len())),
            PADDED => {
                let (len, rest) = payload
                    .split_first_chunk::<4>()
                    .ok_or(RecordError::Forged)?;
                let len = u32::from_be_bytes(*len) as usize;
                let (_, padding) = rest.split_at_checked(len).ok_or(RecordError::Forged)?;
                if padding.iter().any(|b| *b != 0) {
                    return Err(RecordError::Forged);
                }
                Ok(Some(5..5 + len))
            }
            END if payload.is_empty() => {
                self.ended = true;
                Ok(None)
            }
            other => Err(RecordError::UnknownType(other)),
        }
    }
}

fn check_len(len: usize) -> Result<(), RecordError> {
    if (1 + TAG_LEN..=MAX_RECORD_LEN).contains(&len) {
        Ok(())
    } else {
        Err(RecordError::BadLength(len))
    }
}

/// Collects stream bytes into whole records, each length checked as soon
/// as its prefix is there. A reader adds what arrives only while no whole
/// record is buffered, so the buffer holds at most one partial record and
/// one read's bytes. Records come out without a copy.
#[derive(Default)]
pub struct RecordBuffer {
    buf: BytesMut,
}

impl RecordBuffer {
    /// Adds bytes read from the stream.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Whether nothing of a record has arrived (a stream may end here).
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The next whole record's ciphertext (without its prefix), if it is
    /// all there; a prefix outside the limits is an error at once.
    pub fn take(&mut self) -> Result<Option<BytesMut>, RecordError> {
        let Some(prefix) = self.buf.first_chunk::<RECORD_PREFIX>() else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(*prefix) as usize;
        check_len(len)?;
        if self.buf.len() < RECORD_PREFIX + len {
            return Ok(None);
        }
        let mut record = self.buf.split_to(RECORD_PREFIX + len);
        bytes::Buf::advance(&mut record, RECORD_PREFIX);
        Ok(Some(record))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Sealer, Opener) {
        let key = Zeroizing::new([7u8; 32]);
        (Sealer::new(&key), Opener::new(&key))
    }

    fn records(bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut buf = RecordBuffer::default();
        let mut out = Vec::new();
        for b in bytes {
            buf.extend(std::slice::from_ref(b));
            while let Some(r) = buf.take().expect("valid") {
                out.push(r.to_vec());
            }
        }
        assert!(buf.is_empty());
        out
    }

    #[test]
    fn records_round_trip_in_order_and_end_cleanly() {
        let (mut sealer, mut opener) = pair();
        let mut wire = Vec::new();
        sealer.seal(b"hello", &mut wire).expect("seal");
        sealer.seal(&[], &mut wire).expect("seal");
        sealer
            .seal(&[9u8; MAX_RECORD_PAYLOAD], &mut wire)
            .expect("seal");
        sealer.seal_end(&mut wire).expect("seal");
        let mut got = records(&wire);
        assert_eq!(got.len(), 4);
        assert_eq!(opener.open(&mut got[0]), Ok(Opened::Data(&b"hello"[..])));
        assert_eq!(opener.open(&mut got[1]), Ok(Opened::Data(&[][..])));
        assert!(
            matches!(opener.open(&mut got[2]), Ok(Opened::Data(d)) if d.len() == MAX_RECORD_PAYLOAD)
        );
        assert_eq!(opener.open(&mut got[3]), Ok(Opened::End));
        assert!(!wire.windows(5).any(|w| w == b"hello"));
    }

    #[test]
    fn reordered_replayed_flipped_or_foreign_records_are_refused() {
        let (mut sealer, _) = pair();
        let mut wire = Vec::new();
        sealer.seal(b"one", &mut wire).expect("seal");
        sealer.seal(b"two", &mut wire).expect("seal");
        let got = records(&wire);
        // Reordered.
        let (_, mut opener) = pair();
        assert_eq!(opener.open(&mut got[1].clone()), Err(RecordError::Forged));
        // Replayed.
        let (_, mut opener) = pair();
        assert!(opener.open(&mut got[0].clone()).is_ok());
        assert_eq!(opener.open(&mut got[0].clone()), Err(RecordError::Forged));
        // A bit flipped.
        let (_, mut opener) = pair();
        let mut flipped = got[0].clone();
        flipped[0] ^= 1;
        assert_eq!(opener.open(&mut flipped), Err(RecordError::Forged));
        // Another key.
        let mut other = Opener::new(&Zeroizing::new([8u8; 32]));
        assert_eq!(other.open(&mut got[0].clone()), Err(RecordError::Forged));
    }

    #[test]
    fn lengths_outside_the_limits_are_refused_before_allocation() {
        let mut buf = RecordBuffer::default();
        buf.extend(&((MAX_RECORD_LEN + 1) as u32).to_be_bytes());
        assert_eq!(buf.take(), Err(RecordError::BadLength(MAX_RECORD_LEN + 1)));
        let mut buf = RecordBuffer::default();
        buf.extend(&4u32.to_be_bytes());
        assert_eq!(buf.take(), Err(RecordError::BadLength(4)));
        let (mut sealer, _) = pair();
        assert_eq!(
            sealer.seal(&[0u8; MAX_RECORD_PAYLOAD + 1], &mut Vec::new()),
            Err(RecordError::TooLarge(MAX_RECORD_PAYLOAD + 1))
        );
    }

    #[test]
    fn padded_records_hide_the_length_within_a_size_class() {
        let (mut sealer, mut opener) = pair();
        let mut short = Vec::new();
        sealer.seal_padded(b"ls", &mut short).expect("seal");
        let mut long = Vec::new();
        sealer.seal_padded(&[b'x'; 200], &mut long).expect("seal");
        assert_eq!(short.len(), long.len());
        assert_eq!((short.len() - RECORD_PREFIX) % PAD_TO, 0);
        let mut got = records(&[short, long].concat());
        assert_eq!(opener.open(&mut got[0]), Ok(Opened::Data(&b"ls"[..])));
        assert_eq!(opener.open(&mut got[1]), Ok(Opened::Data(&[b'x'; 200][..])));
    }

    #[test]
    fn nothing_opens_after_the_end_record() {
        let (mut sealer, mut opener) = pair();
        let mut wire = Vec::new();
        sealer.seal_end(&mut wire).expect("seal");
        sealer.seal(b"late", &mut wire).expect("seal");
        let mut got = records(&wire);
        assert_eq!(opener.open(&mut got[0]), Ok(Opened::End));
        assert_eq!(opener.open(&mut got[1]), Err(RecordError::AfterEnd));
    }
}
