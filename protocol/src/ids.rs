//! Typed names, keys and secrets. Each is parsed once at the edge (CLI,
//! config, wire) and is valid from then on; secrets never print.

use std::fmt;

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::{
    error::ParseError,
    limits::{MAX_ACCESS_CODE_LEN, MAX_NAME_LEN, MIN_ACCESS_CODE_LEN},
};

fn check_name(s: &str) -> Result<(), ParseError> {
    let ok = !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ParseError::Name(s.chars().take(MAX_NAME_LEN + 8).collect()))
    }
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = ParseError;
            fn try_from(s: String) -> Result<Self, ParseError> {
                check_name(&s)?;
                Ok(Self(s))
            }
        }

        impl std::str::FromStr for $name {
            type Err = ParseError;
            fn from_str(s: &str) -> Result<Self, ParseError> {
                Self::try_from(s.to_owned())
            }
        }

        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", self.0)
            }
        }
    };
}

name_type!(
    /// A person's account name on the relay.
    UserName
);
name_type!(
    /// A host's name on the relay (unique per relay).
    HostName
);

/// Encodes bytes the way keys and tokens are shown to people: URL-safe
/// base64 without padding (copy-pastes cleanly, no shell quoting).
pub fn to_text(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes [`to_text`] output of any length.
pub fn from_text_vec(s: &str, what: &'static str) -> Result<Vec<u8>, ParseError> {
    URL_SAFE_NO_PAD
        .decode(s.trim())
        .map_err(|_| ParseError::Encoding {
            what,
            why: "not URL-safe base64",
        })
}

/// Decodes [`to_text`] output into exactly `N` bytes.
pub fn from_text<const N: usize>(s: &str, what: &'static str) -> Result<[u8; N], ParseError> {
    from_text_vec(s, what)?
        .try_into()
        .map_err(|_| ParseError::Encoding {
            what,
            why: "wrong length",
        })
}

/// A Curve25519 public key: a device's (user or host) or the relay's Noise
/// static key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// The key as shown to people.
    pub fn to_text(&self) -> String {
        to_text(&self.0)
    }

    /// Parses [`PublicKey::to_text`] output.
    pub fn from_text(s: &str) -> Result<Self, ParseError> {
        from_text(s, "public key").map(Self)
    }

    /// A short fingerprint for people to compare by eye (`latchkey host
    /// info` on a host, `latchkey hosts --keys` on a client): the first 16
    /// bytes of SHA-256 over the key, in hex groups.
    pub fn fingerprint(&self) -> String {
        fingerprint(b"latchkey device key v1", &[&self.0])
    }
}

/// The first 16 bytes of SHA-256 over `label` and `parts`, in hex groups
/// of two bytes: what people compare by eye.
fn fingerprint(label: &[u8], parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    h.update(label);
    for part in parts {
        h.update(part);
    }
    let digest = h.finalize();
    digest[..16]
        .chunks(2)
        .map(|c| format!("{:02x}{:02x}", c[0], c[1]))
        .collect::<Vec<_>>()
        .join(":")
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_text())
    }
}

/// What a client or host pins about a relay: its Noise static key (used
/// for the Noise IK pre-message) and the SHA-256 of its TLS certificate
/// (checked before the TLS handshake completes). A relay that fails either
/// check is refused before anything secret is sent (SPEC I1).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RelayPin {
    /// The relay's Noise static public key.
    pub noise_key: PublicKey,
    /// SHA-256 of the relay's DER-encoded TLS certificate.
    pub cert_sha256: [u8; 32],
}

impl RelayPin {
    /// A short fingerprint for people to compare by eye: the first 16 bytes
    /// of SHA-256 over both pinned values, in hex groups.
    pub fn fingerprint(&self) -> String {
        fingerprint(
            b"latchkey relay pin v1",
            &[&self.noise_key.0, &self.cert_sha256],
        )
    }

    /// The pin as one copy-pastable string.
    pub fn to_text(&self) -> String {
        let mut bytes = [0u8; 64];
        bytes[..32].copy_from_slice(&self.noise_key.0);
        bytes[32..].copy_from_slice(&self.cert_sha256);
        to_text(&bytes)
    }

    /// Parses [`RelayPin::to_text`] output.
    pub fn from_text(s: &str) -> Result<Self, ParseError> {
        let bytes: [u8; 64] = from_text(s, "relay pin")?;
        let mut noise_key = [0u8; 32];
        let mut cert_sha256 = [0u8; 32];
        noise_key.copy_from_slice(&bytes[..32]);
        cert_sha256.copy_from_slice(&bytes[32..]);
        Ok(Self {
            noise_key: PublicKey(noise_key),
            cert_sha256,
        })
    }
}

impl fmt::Debug for RelayPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RelayPin({})", self.fingerprint())
    }
}

/// A Curve25519 private key. Zeroed on drop, never printed.
#[derive(Clone, Serialize, Deserialize)]
pub struct SecretKey(Zeroizing<[u8; 32]>);

impl SecretKey {
    /// Wraps raw key bytes (from a key file).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// The raw key bytes, for the key file and the Noise builder.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

/// The secret half of an invite token. The relay stores only its SHA-256,
/// so a copy of the store does not let anyone enroll.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenSecret(pub [u8; 32]);

impl Drop for TokenSecret {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl TokenSecret {
    /// What the relay stores and looks tokens up by.
    pub fn digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"latchkey invite v1");
        h.update(self.0);
        h.finalize().into()
    }
}

impl fmt::Debug for TokenSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenSecret(..)")
    }
}

/// A single-use ticket that lets a rebooted host resume the sessions that
/// were waiting for it (SPEC R3). The relay stores only its digest.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumeTicket(pub [u8; 32]);

impl Drop for ResumeTicket {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl ResumeTicket {
    /// What the relay stores and looks tickets up by.
    pub fn digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"latchkey resume ticket v1");
        h.update(self.0);
        h.finalize().into()
    }
}

impl fmt::Debug for ResumeTicket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResumeTicket(..)")
    }
}

/// Identifies one immutable access-code record on the relay. Random, not a
/// row number, because it is also the OPAQUE credential identifier, which
/// must be known before the record exists.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RecordId(pub [u8; 16]);

impl RecordId {
    /// The id as text (in the host's export-key file).
    pub fn to_text(&self) -> String {
        to_text(&self.0)
    }

    /// Parses [`RecordId::to_text`] output.
    pub fn from_text(s: &str) -> Result<Self, ParseError> {
        from_text(s, "record id").map(Self)
    }

    /// The OPAQUE credential identifier for this record.
    pub fn credential_id(&self) -> Vec<u8> {
        let mut id = b"latchkey-record:".to_vec();
        id.extend_from_slice(&self.0);
        id
    }
}

impl fmt::Debug for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RecordId({})", to_text(&self.0))
    }
}

/// Identifies one authenticated session between a user and a host.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SessionId(pub [u8; 16]);

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({})", to_text(&self.0))
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&to_text(&self.0))
    }
}

/// An access code, as typed by a person. Zeroed on drop, never printed.
#[derive(Clone)]
pub struct AccessCode(Zeroizing<String>);

impl AccessCode {
    /// Checks the length rules for a new code. Login accepts whatever was
    /// typed (a wrong code is just a wrong code), so only setting a code
    /// goes through this.
    pub fn new(code: String) -> Result<Self, ParseError> {
        let code = Zeroizing::new(code);
        let n = code.len();
        if !(MIN_ACCESS_CODE_LEN..=MAX_ACCESS_CODE_LEN).contains(&n) {
            return Err(ParseError::AccessCodeLength {
                min: MIN_ACCESS_CODE_LEN,
                max: MAX_ACCESS_CODE_LEN,
            });
        }
        Ok(Self(code))
    }

    /// Wraps a code typed at login without judging it; only the length cap
    /// applies (it bounds the work of key stretching).
    pub fn for_login(code: String) -> Result<Self, ParseError> {
        let code = Zeroizing::new(code);
        if code.len() > MAX_ACCESS_CODE_LEN {
            return Err(ParseError::AccessCodeLength {
                min: 0,
                max: MAX_ACCESS_CODE_LEN,
            });
        }
        Ok(Self(code))
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// The code as typed, to hand to the process that logs in with it
    /// (over a pipe); never to print.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AccessCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessCode(..)")
    }
}

/// The operating system a host runs, recorded at enrollment so the relay
/// and admins know which reboot path applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Platform {
    /// Linux.
    Linux,
    /// macOS.
    MacOs,
    /// Windows.
    Windows,
    /// Anything else.
    Other,
}

impl Platform {
    /// The platform this code was compiled for.
    pub fn current() -> Self {
        if cfg!(target_os = "linux") {
            Self::Linux
        } else if cfg!(target_os = "macos") {
            Self::MacOs
        } else if cfg!(target_os = "windows") {
            Self::Windows
        } else {
            Self::Other
        }
    }

    /// Lower-case name for tables and the store.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Linux => "linux",
            Self::MacOs => "macos",
            Self::Windows => "windows",
            Self::Other => "other",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_on_parse_and_on_decode() {
        assert!("mypc".parse::<HostName>().is_ok());
        assert!("alice.smith-2_x".parse::<UserName>().is_ok());
        for bad in ["", "-x", ".x", "a b", "ä", "a/b", &"x".repeat(65)] {
            assert!(bad.parse::<UserName>().is_err(), "{bad:?} accepted");
        }
        let encoded = crate::codec::encode_body(&"a b".to_string()).unwrap();
        assert!(crate::codec::decode_body::<UserName>(&encoded).is_err());
    }

    #[test]
    fn pin_text_round_trips_and_fingerprint_is_stable() {
        let pin = RelayPin {
            noise_key: PublicKey([7; 32]),
            cert_sha256: [9; 32],
        };
        assert_eq!(RelayPin::from_text(&pin.to_text()).unwrap(), pin);
        assert_eq!(pin.fingerprint().len(), 8 * 4 + 7);
        assert!(RelayPin::from_text("abc").is_err());
    }

    #[test]
    fn secrets_do_not_print() {
        let code = AccessCode::new("hunter22-secret".into()).unwrap();
        assert!(!format!("{code:?}").contains("hunter"));
        assert!(!format!("{:?}", TokenSecret([1; 32])).contains('1'));
        assert!(AccessCode::new("short".into()).is_err());
    }
}
