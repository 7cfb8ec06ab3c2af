//! The Latchkey handshake: Noise IK carrying an OPAQUE login, sans-IO.
//!
//! ```text
//! client (initiator)                                   relay (responder)
//!   msg 1  e, es, s, ss   Hello{version, intent}  ->   proves the device key
//!   msg 2  e, ee, se      HelloReply              <-   KE2 (real or fake) / Locked / ...
//!   msg 3  transport      LoginFinish::Ke3        ->   (logins only)
//!   msg 4  transport      LoginOutcome            <-
//! ```
//!
//! The caller supplies the prologue (the QUIC connection's TLS exporter), so
//! a message recorded on one connection fails on any other. The OPAQUE
//! `context` is the Noise handshake hash after message 1, which binds the
//! login to the device key, the payload and the prologue at once.

mod initiator;
mod registration;
mod responder;
mod x25519;

pub use initiator::{AwaitingOutcome, Initiator, InitiatorReply};
pub use registration::{registration_response, validate_upload, CodeRecord, CodeRegistration};
pub use responder::{
    AttemptDecision, AwaitingKe3, DeviceRequest, Ke3Result, LoginAuthority, LoginReply,
    LoginRequest, Msg1, Reservation, Responder,
};

use rand::{CryptoRng, RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use snow::{
    params::{CipherChoice, DHChoice, HashChoice},
    resolvers::{CryptoResolver, DefaultResolver},
    types::{Cipher, Dh, Hash, Random},
};

use crate::{
    error::HandshakeError,
    ids::{PublicKey, SecretKey},
    ksf::KsfProfile,
    limits::MAX_NOISE_MESSAGE,
};

/// The Noise protocol name (SPEC A1).
pub const NOISE_PARAMS: &str = "Noise_IK_25519_ChaChaPoly_BLAKE2s";

/// Prefix of every prologue, so keys used here never verify anything else.
const PROLOGUE_LABEL: &[u8] = b"latchkey/1 handshake";

/// The OPAQUE cipher suite: ristretto255 for the OPRF and the key exchange,
/// SHA-512, Argon2id as key stretching (SPEC A2).
pub(crate) struct Suite;

impl opaque_ke::CipherSuite for Suite {
    type OprfCs = opaque_ke::Ristretto255;
    type KeyExchange = opaque_ke::TripleDh<opaque_ke::Ristretto255, sha2::Sha512>;
    type Ksf = argon2::Argon2<'static>;
}

/// A device's (or the relay's) Noise static keypair.
#[derive(Clone, Debug)]
pub struct Keypair {
    /// The private half (never leaves the device).
    pub secret: SecretKey,
    /// The public half (what the relay registers, or what clients pin).
    pub public: PublicKey,
}

impl Keypair {
    /// Makes a new keypair from the caller's RNG.
    pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> Self {
        let mut secret = [0u8; 32];
        rng.fill_bytes(&mut secret);
        Self::from_secret(SecretKey::from_bytes(secret))
    }

    /// Rebuilds the keypair from a stored private key.
    pub fn from_secret(secret: SecretKey) -> Self {
        let mut dh = curve25519();
        dh.set(secret.as_bytes());
        let mut public = [0u8; 32];
        public.copy_from_slice(dh.pubkey());
        Self {
            secret,
            public: PublicKey(public),
        }
    }
}

fn curve25519() -> Box<dyn Dh> {
    Box::new(x25519::AwsLcX25519::default())
}

/// The relay's long-term secrets: the Noise static key and the OPAQUE
/// server setup (OPRF seed and key-exchange keypair).
pub struct RelayIdentity {
    pub(crate) keypair: Keypair,
    opaque: opaque_ke::ServerSetup<Suite>,
    /// Profile named in fake challenges; should be the profile real records
    /// use, so the two cannot be told apart.
    pub outsider_ksf: KsfProfile,
}

impl RelayIdentity {
    /// Makes a new identity from the caller's RNG.
    pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> Self {
        Self {
            keypair: Keypair::generate(rng),
            opaque: opaque_ke::ServerSetup::new(rng),
            outsider_ksf: KsfProfile::DEFAULT,
        }
    }

    /// The relay's Noise static public key (what clients pin).
    pub fn public_key(&self) -> PublicKey {
        self.keypair.public
    }

    /// Serializes the secrets for the relay's key file (wiped when dropped).
    pub fn to_bytes(&self) -> zeroize::Zeroizing<Vec<u8>> {
        let mut out = zeroize::Zeroizing::new(self.keypair.secret.as_bytes().to_vec());
        out.extend_from_slice(&zeroize::Zeroizing::new(self.opaque.serialize().to_vec()));
        out
    }

    /// Parses [`RelayIdentity::to_bytes`] output.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, HandshakeError> {
        let (noise, opaque) = bytes
            .split_first_chunk::<32>()
            .ok_or(HandshakeError::Malformed("relay identity too short"))?;
        let opaque = opaque_ke::ServerSetup::<Suite>::deserialize(opaque)
            .map_err(|_| HandshakeError::Malformed("relay identity: bad OPAQUE setup"))?;
        Ok(Self {
            keypair: Keypair::from_secret(SecretKey::from_bytes(*noise)),
            opaque,
            outsider_ksf: KsfProfile::DEFAULT,
        })
    }
}

/// Builds the prologue from the caller's channel binding.
pub(crate) fn prologue(binding: &[u8]) -> Vec<u8> {
    let mut p = PROLOGUE_LABEL.to_vec();
    p.extend_from_slice(binding);
    p
}

/// Gives snow an RNG seeded from the caller's, so the protocol crate draws
/// no OS randomness of its own and tests can be deterministic.
struct SeededResolver([u8; 32]);

struct SeededRandom(ChaCha20Rng);

impl Random for SeededRandom {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        self.0.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoResolver for SeededResolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        Some(Box::new(SeededRandom(ChaCha20Rng::from_seed(self.0))))
    }
    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        match choice {
            DHChoice::Curve25519 => Some(curve25519()),
            other => DefaultResolver.resolve_dh(other),
        }
    }
    fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn Hash>> {
        DefaultResolver.resolve_hash(choice)
    }
    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        DefaultResolver.resolve_cipher(choice)
    }
}

pub(crate) fn noise_builder<'a>(rng: &mut (impl RngCore + CryptoRng)) -> snow::Builder<'a> {
    noise_builder_for(NOISE_PARAMS, rng)
}

/// A builder for `params` (one of this crate's constant protocol names).
pub(crate) fn noise_builder_for<'a>(
    params: &str,
    rng: &mut (impl RngCore + CryptoRng),
) -> snow::Builder<'a> {
    let mut seed = [0u8; 32];
    rng.fill_bytes(&mut seed);
    let params = params
        .parse()
        .unwrap_or_else(|_| unreachable!("the crate's Noise names are valid patterns"));
    snow::Builder::with_resolver(params, Box::new(SeededResolver(seed)))
}

/// Noise-encrypts `payload` as one handshake or transport message.
pub(crate) fn write_noise(
    write: impl FnOnce(&[u8], &mut [u8]) -> Result<usize, snow::Error>,
    payload: &[u8],
) -> Result<Vec<u8>, HandshakeError> {
    let mut buf = vec![0u8; MAX_NOISE_MESSAGE];
    let n = write(payload, &mut buf).map_err(|_| HandshakeError::Misuse("payload too large"))?;
    buf.truncate(n);
    Ok(buf)
}

/// Decrypts one Noise message; any failure means the bytes were not made
/// for this handshake (tampered, replayed, truncated or for another key).
pub(crate) fn read_noise(
    read: impl FnOnce(&[u8], &mut [u8]) -> Result<usize, snow::Error>,
    message: &[u8],
) -> Result<Vec<u8>, HandshakeError> {
    if message.len() > MAX_NOISE_MESSAGE {
        return Err(HandshakeError::Malformed("noise message too large"));
    }
    let mut buf = vec![0u8; message.len()];
    let n = read(message, &mut buf)
        .map_err(|_| HandshakeError::Malformed("noise message failed to decrypt"))?;
    buf.truncate(n);
    Ok(buf)
}

#[cfg(test)]
mod tests;
