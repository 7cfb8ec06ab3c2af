//! The client side of the handshake (user devices, host agents, enrolling
//! devices). It only ever talks to the pinned relay key: a relay without
//! that key cannot produce a message 2 that decrypts, so the initiator
//! stops there and never computes or sends KE3.

use opaque_ke::{
    errors::ProtocolError, ClientLogin, ClientLoginFinishParameters, CredentialResponse,
    Identifiers,
};
use rand::{CryptoRng, RngCore};
use snow::{HandshakeState, TransportState};

use super::{noise_builder, prologue, read_noise, write_noise, Keypair, Suite};
use crate::{
    codec::{decode_body, encode_body},
    e2e::ExportKey,
    error::HandshakeError,
    frame::{Hello, HelloReply, Intent, LoginFinish, LoginOutcome, Refusal, PROTOCOL_VERSION},
    ids::{AccessCode, HostName, PublicKey, UserName},
};

/// A handshake in flight, after message 1 was written.
pub struct Initiator {
    hs: HandshakeState,
    login: Option<PendingLogin>,
}

struct PendingLogin {
    state: ClientLogin<Suite>,
    /// Noise handshake hash after message 1: the OPAQUE context.
    context: Vec<u8>,
}

/// What message 2 said, from the initiator's point of view.
#[derive(Debug)]
#[non_exhaustive]
pub enum InitiatorReply {
    /// The code checked out against KE2: send `msg3`, then read message 4
    /// with `awaiting`.
    SendKe3 {
        /// Noise transport message carrying KE3.
        msg3: Vec<u8>,
        /// Reads the relay's verdict.
        awaiting: AwaitingOutcome,
    },
    /// The code is wrong (or, indistinguishably, the user has no access).
    /// Send `abort` and read the relay's answer with `awaiting`, so the
    /// failure is on record before the user is told.
    WrongCode {
        /// Noise transport message carrying [`LoginFinish::Abort`].
        abort: Vec<u8>,
        /// Reads the relay's answer.
        awaiting: AwaitingOutcome,
    },
    /// The host is locked.
    Locked,
    /// The device was recognised; control frames follow.
    Welcome {
        /// Noise handshake hash (a channel binding for later use).
        handshake_hash: Vec<u8>,
    },
    /// The invite was redeemed.
    Enrolled {
        /// The name the device is enrolled as.
        name: String,
        /// Whether it was enrolled as a host.
        is_host: bool,
    },
    /// The relay refused the connection.
    Refused(Refusal),
    /// The host is on another relay of the cluster: log in there.
    Redirect {
        /// That relay's address, `host:port`.
        relay: String,
    },
}

/// After KE3 was sent: waits for the relay's verdict (message 4).
pub struct AwaitingOutcome {
    transport: TransportState,
    handshake_hash: Vec<u8>,
    /// OPAQUE's export key, when the code checked out: the session's
    /// end-to-end handshake derives its psk from it ([`crate::e2e`]).
    export_key: Option<ExportKey>,
}

impl std::fmt::Debug for AwaitingOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AwaitingOutcome(..)")
    }
}

impl AwaitingOutcome {
    /// The Noise handshake hash; equal on both sides of a genuine handshake.
    pub fn handshake_hash(&self) -> &[u8] {
        &self.handshake_hash
    }

    /// Reads message 4. With an accepted login it also returns OPAQUE's
    /// export key, which only the client and the host that registered the
    /// code know.
    pub fn read_outcome(
        mut self,
        msg4: &[u8],
    ) -> Result<(LoginOutcome, Option<ExportKey>), HandshakeError> {
        let body = read_noise(|m, b| self.transport.read_message(m, b), msg4)?;
        let outcome: LoginOutcome = decode_body(&body)?;
        let key = match outcome {
            LoginOutcome::Accepted { .. } => self.export_key.take(),
            _ => None,
        };
        Ok((outcome, key))
    }
}

impl Initiator {
    /// Starts a login: message 1 carries `{version, user, host, KE1}`.
    pub fn start_login(
        rng: &mut (impl RngCore + CryptoRng),
        device: &Keypair,
        relay: &PublicKey,
        binding: &[u8],
        user: UserName,
        host: HostName,
        code: &AccessCode,
    ) -> Result<(Self, Vec<u8>), HandshakeError> {
        let start = ClientLogin::<Suite>::start(rng, code.as_bytes())
            .map_err(|_| HandshakeError::Misuse("cannot start OPAQUE login"))?;
        let ke1 = start.message.serialize().to_vec();
        let (mut me, msg1) = Self::start(
            rng,
            device,
            relay,
            binding,
            Intent::Login { user, host, ke1 },
        )?;
        me.login = Some(PendingLogin {
            state: start.state,
            context: me.hs.get_handshake_hash().to_vec(),
        });
        Ok((me, msg1))
    }

    /// Starts a handshake for any intent; for [`Intent::Login`] use
    /// [`Initiator::start_login`], which also prepares KE1's state.
    pub fn start(
        rng: &mut (impl RngCore + CryptoRng),
        device: &Keypair,
        relay: &PublicKey,
        binding: &[u8],
        intent: Intent,
    ) -> Result<(Self, Vec<u8>), HandshakeError> {
        let prologue = prologue(binding);
        let mut hs = noise_builder(rng)
            .local_private_key(device.secret.as_bytes())
            .and_then(|b| b.remote_public_key(&relay.0))
            .and_then(|b| b.prologue(&prologue))
            .and_then(|b| b.build_initiator())
            .map_err(|_| HandshakeError::Misuse("bad key material"))?;
        let payload = encode_body(&Hello {
            version: PROTOCOL_VERSION,
            intent,
        })?;
        let msg1 = write_noise(|p, b| hs.write_message(p, b), &payload)?;
        Ok((Self { hs, login: None }, msg1))
    }

    /// Reads message 2. For a login, `code` must be the code given to
    /// [`Initiator::start_login`]; this is where key stretching runs.
    pub fn read_msg2(
        mut self,
        rng: &mut (impl RngCore + CryptoRng),
        msg2: &[u8],
        code: Option<&AccessCode>,
    ) -> Result<InitiatorReply, HandshakeError> {
        let body = read_noise(|m, b| self.hs.read_message(m, b), msg2)?;
        let reply: HelloReply = decode_body(&body)?;
        let handshake_hash = self.hs.get_handshake_hash().to_vec();
        match (reply, self.login.take()) {
            (HelloReply::Challenge { ksf, ke2 }, Some(login)) => {
                let code = code.ok_or(HandshakeError::Misuse("login needs the access code"))?;
                let response = CredentialResponse::<Suite>::deserialize(&ke2)
                    .map_err(|_| HandshakeError::Malformed("KE2 does not decode"))?;
                let argon2 = ksf.argon2();
                let params = ClientLoginFinishParameters::new(
                    Some(&login.context),
                    Identifiers::default(),
                    Some(&argon2),
                );
                let finish = match login.state.finish(rng, code.as_bytes(), response, params) {
                    Ok(finish) => finish,
                    Err(ProtocolError::InvalidLoginError) => {
                        let mut transport = self
                            .hs
                            .into_transport_mode()
                            .map_err(|_| HandshakeError::Misuse("handshake not finished"))?;
                        let abort = write_noise(
                            |p, b| transport.write_message(p, b),
                            &encode_body(&LoginFinish::Abort)?,
                        )?;
                        return Ok(InitiatorReply::WrongCode {
                            abort,
                            awaiting: AwaitingOutcome {
                                transport,
                                handshake_hash,
                                export_key: None,
                            },
                        });
                    }
                    Err(ProtocolError::ReflectedValueError) => {
                        return Err(HandshakeError::PeerMisbehaved(
                            "relay reflected the OPRF value",
                        ))
                    }
                    Err(_) => return Err(HandshakeError::Malformed("KE2 is invalid")),
                };
                let mut transport = self
                    .hs
                    .into_transport_mode()
                    .map_err(|_| HandshakeError::Misuse("handshake not finished"))?;
                let payload = encode_body(&LoginFinish::Ke3(finish.message.serialize().to_vec()))?;
                let msg3 = write_noise(|p, b| transport.write_message(p, b), &payload)?;
                Ok(InitiatorReply::SendKe3 {
                    msg3,
                    awaiting: AwaitingOutcome {
                        transport,
                        handshake_hash,
                        export_key: Some(ExportKey::from_bytes(finish.export_key.to_vec())),
                    },
                })
            }
            (HelloReply::Locked, Some(_)) => Ok(InitiatorReply::Locked),
            (HelloReply::Refused(r), _) => Ok(InitiatorReply::Refused(r)),
            (HelloReply::Redirect { relay }, _) => Ok(InitiatorReply::Redirect { relay }),
            (HelloReply::Welcome, None) => Ok(InitiatorReply::Welcome { handshake_hash }),
            (HelloReply::Enrolled { name, is_host }, None) => {
                Ok(InitiatorReply::Enrolled { name, is_host })
            }
            _ => Err(HandshakeError::PeerMisbehaved(
                "reply does not fit the request",
            )),
        }
    }
}
