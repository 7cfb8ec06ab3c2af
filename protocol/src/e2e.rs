//! End-to-end keys between a user's client and a host, so the relay, which
//! carries every byte of a session, reads none of them (SPEC X4).
//!
//! At session start the relay introduces the two device keys it knows: the
//! host's to the client, the user's (and the code record the login used)
//! to the host. The two then run Noise KKpsk0 through the relay:
//!
//! ```text
//! client (initiator)                               host (responder)
//!   psk, e, es, ss   ->     (the relay splices it)
//!                    <-     e, ee, se
//! psk = HKDF-SHA256(OPAQUE export key, "latchkey e2e" ‖ record id)
//! ```
//!
//! OPAQUE's export key comes out of the login on the client and out of the
//! registration on the host, which ran the client side of it; the relay
//! never learns it. A relay that introduces keys of its own therefore also
//! needs the psk, which means guessing the access code offline at one
//! Argon2id per guess. The handshake's split keys seed one key per channel
//! and direction ([`SessionKeys::channel`]), so opening a channel costs no
//! round trip; the records themselves are in [`record`](crate::record).

use hkdf::Hkdf;
use rand::{CryptoRng, RngCore};
use sha2::Sha256;
use snow::HandshakeState;
use zeroize::Zeroizing;

use crate::{
    error::HandshakeError,
    handshake::{noise_builder_for, read_noise, write_noise, Keypair},
    ids::{PublicKey, RecordId, SessionId},
    record::{Opener, Sealer},
};

/// The Noise protocol of the end-to-end handshake.
pub const E2E_NOISE_PARAMS: &str = "Noise_KKpsk0_25519_ChaChaPoly_BLAKE2s";

/// Prefix of the end-to-end prologue (with the protocol version in it).
const PROLOGUE_LABEL: &[u8] = b"latchkey/2 e2e";

/// OPAQUE's export key for one code record: the client's from its login,
/// the host's from registering the code. Wiped when dropped.
#[derive(Clone)]
pub struct ExportKey(Zeroizing<Vec<u8>>);

impl ExportKey {
    /// Wraps raw export-key bytes (from OPAQUE, or the host's key file).
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// The raw bytes, for the host's key file.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for ExportKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ExportKey(..)")
    }
}

/// The pre-shared key of a session's handshake, derived from the export key
/// of the record the login used. The client keeps it for the session's
/// life, so a reboot or resume re-handshakes without the code.
#[derive(Clone)]
pub struct SessionPsk(Zeroizing<[u8; 32]>);

impl SessionPsk {
    /// `HKDF-SHA256(export key, "latchkey e2e" ‖ record id)`.
    pub fn derive(export: &ExportKey, record: &RecordId) -> Self {
        let mut info = b"latchkey e2e".to_vec();
        info.extend_from_slice(&record.0);
        let mut psk = Zeroizing::new([0u8; 32]);
        // 32 bytes is far below HKDF-SHA256's output limit.
        Hkdf::<Sha256>::new(None, export.as_bytes())
            .expand(&info, psk.as_mut_slice())
            .unwrap_or_else(|_| unreachable!("32 bytes is a valid HKDF length"));
        Self(psk)
    }
}

impl std::fmt::Debug for SessionPsk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionPsk(..)")
    }
}

/// Which end of the session a [`SessionKeys`] belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The user's client (the handshake's initiator).
    Client,
    /// The host agent (the responder).
    Host,
}

/// The keys of one end-to-end handshake: every channel of the session
/// until the next handshake (after a reboot or a host's reconnect) takes
/// its keys from these.
pub struct SessionKeys {
    to_host: Zeroizing<[u8; 32]>,
    to_client: Zeroizing<[u8; 32]>,
    role: Role,
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SessionKeys({:?}, ..)", self.role)
    }
}

impl SessionKeys {
    fn from_split(hs: &mut HandshakeState, role: Role) -> Self {
        let (to_host, to_client) = hs.dangerously_get_raw_split();
        Self {
            to_host: Zeroizing::new(to_host),
            to_client: Zeroizing::new(to_client),
            role,
        }
    }

    /// The sealer and opener of channel `number`, for this end. Each
    /// number gives two fresh keys (one per direction); a number must be
    /// used for one channel only, which the host enforces.
    pub fn channel(&self, number: u64) -> (Sealer, Opener) {
        let to_host = channel_key(&self.to_host, b"to host", number);
        let to_client = channel_key(&self.to_client, b"to client", number);
        match self.role {
            Role::Client => (Sealer::new(&to_host), Opener::new(&to_client)),
            Role::Host => (Sealer::new(&to_client), Opener::new(&to_host)),
        }
    }
}

fn channel_key(secret: &[u8; 32], direction: &[u8], number: u64) -> Zeroizing<[u8; 32]> {
    let mut info = b"latchkey channel ".to_vec();
    info.extend_from_slice(direction);
    info.extend_from_slice(&number.to_be_bytes());
    let mut key = Zeroizing::new([0u8; 32]);
    Hkdf::<Sha256>::new(None, secret)
        .expand(&info, key.as_mut_slice())
        .unwrap_or_else(|_| unreachable!("32 bytes is a valid HKDF length"));
    key
}

fn prologue(session: &SessionId, record: &RecordId) -> Vec<u8> {
    let mut p = PROLOGUE_LABEL.to_vec();
    p.extend_from_slice(&session.0);
    p.extend_from_slice(&record.0);
    p
}

/// What both ends must agree on before the handshake: which session, and
/// which code record's export key made the psk.
#[derive(Clone, Copy, Debug)]
pub struct Binding {
    /// The session.
    pub session: SessionId,
    /// The code record the login used.
    pub record: RecordId,
}

fn build(
    rng: &mut (impl RngCore + CryptoRng),
    me: &Keypair,
    peer: &PublicKey,
    psk: &SessionPsk,
    binding: &Binding,
    initiator: bool,
) -> Result<HandshakeState, HandshakeError> {
    let prologue = prologue(&binding.session, &binding.record);
    let builder = noise_builder_for(E2E_NOISE_PARAMS, rng)
        .local_private_key(me.secret.as_bytes())
        .and_then(|b| b.remote_public_key(&peer.0))
        .and_then(|b| b.psk(0, &psk.0))
        .and_then(|b| b.prologue(&prologue));
    let hs = if initiator {
        builder.and_then(|b| b.build_initiator())
    } else {
        builder.and_then(|b| b.build_responder())
    };
    hs.map_err(|_| HandshakeError::Misuse("bad key material"))
}

/// The client's side of the handshake, after message 1 was written.
pub struct E2eInitiator {
    hs: HandshakeState,
}

impl E2eInitiator {
    /// Starts the handshake with the host whose key is `host`; returns
    /// message 1.
    pub fn start(
        rng: &mut (impl RngCore + CryptoRng),
        device: &Keypair,
        host: &PublicKey,
        psk: &SessionPsk,
        binding: &Binding,
    ) -> Result<(Self, Vec<u8>), HandshakeError> {
        let mut hs = build(rng, device, host, psk, binding, true)?;
        let msg1 = write_noise(|p, b| hs.write_message(p, b), &[])?;
        Ok((Self { hs }, msg1))
    }

    /// Reads the host's message 2. It fails if the host does not hold the
    /// introduced key or the export key of the record: the relay swapped a
    /// key, or the host lost (or never had) that record's key.
    pub fn finish(mut self, msg2: &[u8]) -> Result<SessionKeys, HandshakeError> {
        let payload = read_noise(|m, b| self.hs.read_message(m, b), msg2)?;
        if !payload.is_empty() || !self.hs.is_handshake_finished() {
            return Err(HandshakeError::PeerMisbehaved(
                "unexpected end-to-end message",
            ));
        }
        Ok(SessionKeys::from_split(&mut self.hs, Role::Client))
    }
}

/// The host's side: reads message 1 from the user whose key is `user` and
/// returns the session's keys and message 2.
pub fn respond(
    rng: &mut (impl RngCore + CryptoRng),
    host: &Keypair,
    user: &PublicKey,
    psk: &SessionPsk,
    binding: &Binding,
    msg1: &[u8],
) -> Result<(SessionKeys, Vec<u8>), HandshakeError> {
    let mut hs = build(rng, host, user, psk, binding, false)?;
    let payload = read_noise(|m, b| hs.read_message(m, b), msg1)?;
    if !payload.is_empty() {
        return Err(HandshakeError::PeerMisbehaved(
            "unexpected end-to-end message",
        ));
    }
    let msg2 = write_noise(|p, b| hs.write_message(p, b), &[])?;
    if !hs.is_handshake_finished() {
        return Err(HandshakeError::Misuse("handshake not finished"));
    }
    Ok((SessionKeys::from_split(&mut hs, Role::Host), msg2))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Opened;
    use rand::{rngs::StdRng, SeedableRng};

    struct Fixture {
        rng: StdRng,
        user: Keypair,
        host: Keypair,
        psk: SessionPsk,
        binding: Binding,
    }

    fn fixture() -> Fixture {
        let mut rng = StdRng::seed_from_u64(7);
        let user = Keypair::generate(&mut rng);
        let host = Keypair::generate(&mut rng);
        let record = RecordId([3; 16]);
        let psk = SessionPsk::derive(&ExportKey::from_bytes(vec![5; 64]), &record);
        Fixture {
            rng,
            user,
            host,
            psk,
            binding: Binding {
                session: SessionId([1; 16]),
                record,
            },
        }
    }

    fn handshake(f: &mut Fixture) -> Result<(SessionKeys, SessionKeys), HandshakeError> {
        let (init, msg1) =
            E2eInitiator::start(&mut f.rng, &f.user, &f.host.public, &f.psk, &f.binding)?;
        let (host_keys, msg2) = respond(
            &mut f.rng,
            &f.host,
            &f.user.public,
            &f.psk,
            &f.binding,
            &msg1,
        )?;
        Ok((init.finish(&msg2)?, host_keys))
    }

    #[test]
    fn both_ends_derive_the_same_channel_keys_and_channels_differ() {
        let mut f = fixture();
        let (client, host) = handshake(&mut f).expect("handshake");
        let (mut c_seal, mut c_open) = client.channel(1);
        let (mut h_seal, mut h_open) = host.channel(1);
        let mut wire = Vec::new();
        c_seal.seal(b"ls -l", &mut wire).expect("seal");
        assert_eq!(
            h_open.open(&mut wire[4..]).expect("open"),
            Opened::Data(&b"ls -l"[..])
        );
        let mut back = Vec::new();
        h_seal.seal(b"total 0", &mut back).expect("seal");
        assert_eq!(
            c_open.open(&mut back[4..]).expect("open"),
            Opened::Data(&b"total 0"[..])
        );
        // Channel 2's keys open nothing of channel 1.
        let (_, mut other) = host.channel(2);
        let mut again = Vec::new();
        client.channel(1).0.seal(b"x", &mut again).expect("seal");
        assert!(other.open(&mut again[4..]).is_err());
    }

    #[test]
    fn a_wrong_psk_a_swapped_key_or_another_session_fails_the_handshake() {
        // The host has another record's export key (or the relay guessed).
        let mut f = fixture();
        let (_, msg1) =
            E2eInitiator::start(&mut f.rng, &f.user, &f.host.public, &f.psk, &f.binding)
                .expect("start");
        let wrong = SessionPsk::derive(&ExportKey::from_bytes(vec![6; 64]), &f.binding.record);
        assert!(respond(
            &mut f.rng,
            &f.host,
            &f.user.public,
            &wrong,
            &f.binding,
            &msg1
        )
        .is_err());
        // A relay that introduced its own key as the host's, and answers
        // with that key but without the export key.
        let mut f = fixture();
        let relay = Keypair::generate(&mut f.rng);
        let (init, msg1) =
            E2eInitiator::start(&mut f.rng, &f.user, &relay.public, &f.psk, &f.binding)
                .expect("start");
        let guess = SessionPsk::derive(&ExportKey::from_bytes(vec![0; 64]), &f.binding.record);
        assert!(respond(
            &mut f.rng,
            &relay,
            &f.user.public,
            &guess,
            &f.binding,
            &msg1
        )
        .is_err());
        // Even answering with a message of its own, the client refuses it.
        let (fake_init, _) =
            E2eInitiator::start(&mut f.rng, &relay, &f.user.public, &guess, &f.binding)
                .expect("start");
        drop(fake_init);
        assert!(init.finish(&[0u8; 48]).is_err());
        // Message 1 replayed into another session.
        let mut f = fixture();
        let (_, msg1) =
            E2eInitiator::start(&mut f.rng, &f.user, &f.host.public, &f.psk, &f.binding)
                .expect("start");
        let other = Binding {
            session: SessionId([2; 16]),
            ..f.binding
        };
        assert!(respond(&mut f.rng, &f.host, &f.user.public, &f.psk, &other, &msg1).is_err());
    }
}
