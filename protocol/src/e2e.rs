//! End-to-end authentication between a user's client and a host, so the
//! relay, which carries every datagram of a session, reads none of them
//! (SPEC X4).
//!
//! A session is one QUIC connection from the client to the host, which the
//! relay forwards without holding its keys ([`crate::route`]). Its TLS
//! certificates prove nothing; what authenticates both ends is a Noise
//! handshake on the connection's first stream, before any other. At session
//! start the relay introduces the two device keys it knows: the host's to
//! the client, the user's (and the code record the login used) to the host.
//!
//! ```text
//! client (initiator)                               host (responder)
//!   psk, e, es, ss   ->     (stream 0 of the end-to-end connection)
//!                    <-     e, ee, se
//! psk      = HKDF-SHA256(OPAQUE export key, "latchkey e2e" ‖ record id)
//! prologue = "latchkey/3 e2e" ‖ session id ‖ record id ‖ TLS exporter
//! ```
//!
//! OPAQUE's export key comes out of the login on the client and out of the
//! registration on the host, which ran the client side of it; the relay
//! never learns it. A relay that introduces keys of its own therefore also
//! needs the psk, which means guessing the access code offline at one
//! Argon2id per guess. A relay that terminates the QUIC connection itself
//! shares one TLS session with each end, not one between them: the
//! exporters in the two prologues differ, and the handshake fails.

use hkdf::Hkdf;
use rand::{CryptoRng, RngCore};
use sha2::Sha256;
use snow::HandshakeState;
use zeroize::Zeroizing;

use crate::{
    error::HandshakeError,
    handshake::{noise_builder_for, read_noise, write_noise, Keypair},
    ids::{PublicKey, RecordId, SessionId},
};

/// The Noise protocol of the end-to-end handshake.
pub const E2E_NOISE_PARAMS: &str = "Noise_KKpsk0_25519_ChaChaPoly_BLAKE2s";

/// Prefix of the end-to-end prologue (with the protocol version in it).
const PROLOGUE_LABEL: &[u8] = b"latchkey/3 e2e";

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

fn prologue(binding: &Binding) -> Vec<u8> {
    let mut p = PROLOGUE_LABEL.to_vec();
    p.extend_from_slice(&binding.session.0);
    p.extend_from_slice(&binding.record.0);
    p.extend_from_slice(&binding.connection.0);
    p
}

/// The label of the TLS keying-material exporter ([RFC 5705], [RFC 8446
/// section 7.5]) whose output binds the handshake to its QUIC connection.
///
/// [RFC 5705]: https://www.rfc-editor.org/rfc/rfc5705
/// [RFC 8446 section 7.5]: https://www.rfc-editor.org/rfc/rfc8446#section-7.5
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-latchkey-e2e";

/// The end-to-end QUIC connection's keying material for
/// [`EXPORTER_LABEL`]: equal at both ends only if they share one TLS
/// session, so a relay that terminates the connection (two TLS sessions,
/// one with each end) makes the two prologues differ and the handshake
/// fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionBinding(pub [u8; 32]);

/// What both ends must agree on before the handshake: which session, which
/// code record's export key made the psk, and which QUIC connection it
/// runs on.
#[derive(Clone, Copy, Debug)]
pub struct Binding {
    /// The session.
    pub session: SessionId,
    /// The code record the login used.
    pub record: RecordId,
    /// The connection the handshake authenticates.
    pub connection: ConnectionBinding,
}

fn build(
    rng: &mut (impl RngCore + CryptoRng),
    me: &Keypair,
    peer: &PublicKey,
    psk: &SessionPsk,
    binding: &Binding,
    initiator: bool,
) -> Result<HandshakeState, HandshakeError> {
    let prologue = prologue(binding);
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
    /// introduced key or the export key of the record (the relay swapped a
    /// key, or the host lost or never had that record's key), or if the
    /// host's end of the connection is not this one's.
    pub fn finish(mut self, msg2: &[u8]) -> Result<(), HandshakeError> {
        let payload = read_noise(|m, b| self.hs.read_message(m, b), msg2)?;
        if !payload.is_empty() || !self.hs.is_handshake_finished() {
            return Err(HandshakeError::PeerMisbehaved(
                "unexpected end-to-end message",
            ));
        }
        Ok(())
    }
}

/// The host's side: reads message 1 from the user whose key is `user` and
/// returns message 2.
pub fn respond(
    rng: &mut (impl RngCore + CryptoRng),
    host: &Keypair,
    user: &PublicKey,
    psk: &SessionPsk,
    binding: &Binding,
    msg1: &[u8],
) -> Result<Vec<u8>, HandshakeError> {
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
    Ok(msg2)
}

#[cfg(test)]
mod tests {
    use super::*;
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
                connection: ConnectionBinding([9; 32]),
            },
        }
    }

    /// The host answers message 1 made under `client`'s binding with its
    /// own; the client reads the answer.
    fn handshake(f: &mut Fixture, host_binding: Binding) -> Result<(), HandshakeError> {
        let (init, msg1) =
            E2eInitiator::start(&mut f.rng, &f.user, &f.host.public, &f.psk, &f.binding)?;
        let msg2 = respond(
            &mut f.rng,
            &f.host,
            &f.user.public,
            &f.psk,
            &host_binding,
            &msg1,
        )?;
        init.finish(&msg2)
    }

    #[test]
    fn the_same_keys_session_record_and_connection_agree() {
        let mut f = fixture();
        let binding = f.binding;
        handshake(&mut f, binding).expect("handshake");
    }

    #[test]
    fn another_connection_fails_the_handshake() {
        // A relay that terminated the QUIC connection: each end exports
        // its own TLS session's keying material.
        let mut f = fixture();
        let other = Binding {
            connection: ConnectionBinding([8; 32]),
            ..f.binding
        };
        assert!(handshake(&mut f, other).is_err());
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
        assert!(init.finish(&[0u8; 48]).is_err());
        // Message 1 replayed into another session.
        let mut f = fixture();
        let other = Binding {
            session: SessionId([2; 16]),
            ..f.binding
        };
        assert!(handshake(&mut f, other).is_err());
    }
}
