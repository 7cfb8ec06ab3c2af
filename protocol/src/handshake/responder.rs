//! The relay side of the handshake. It reads message 1, and for a login
//! asks a [`LoginAuthority`] (the relay's store) two things in a fixed
//! order: who this is (device key and code record), then, only for a proven
//! grant holder of an unlocked host, to reserve one attempt. Only after the
//! reservation is a real KE2 produced (SPEC A3). Everyone else gets OPAQUE's
//! fake KE2 and looks exactly like a wrong code (SPEC A4).

use opaque_ke::{
    CredentialFinalization, CredentialRequest, ServerLogin, ServerLoginParameters,
    ServerRegistration,
};
use rand::{CryptoRng, RngCore};
use snow::{HandshakeState, TransportState};
use subtle::ConstantTimeEq;

use super::{noise_builder, prologue, read_noise, write_noise, CodeRecord, RelayIdentity, Suite};
use crate::{
    codec::{decode_body, encode_body},
    error::HandshakeError,
    frame::{Hello, HelloReply, Intent, LoginFinish, LoginOutcome, Refusal, PROTOCOL_VERSION},
    ids::{HostName, PublicKey, UserName},
};

/// The relay's answers during a login. Implemented by the store.
pub trait LoginAuthority {
    /// A reserved attempt (the store's handle to turn it into a success).
    type Attempt;

    /// The device key registered for `user`, if the user exists.
    fn device_key(&mut self, user: &UserName) -> Option<PublicKey>;

    /// The code record `user` logs in to `host` with, if the user holds a
    /// grant on the host (the owner holds one implicitly).
    fn code_record(&mut self, user: &UserName, host: &HostName) -> Option<CodeRecord>;

    /// Reserves one attempt against `host`, counted as a failure until a
    /// valid KE3 arrives. Must be durable before it returns: KE2 leaves
    /// right after.
    fn reserve_attempt(
        &mut self,
        user: &UserName,
        host: &HostName,
        record: &CodeRecord,
    ) -> Reservation<Self::Attempt>;
}

/// The store's answer to a reservation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reservation<A> {
    /// One attempt is reserved (and counted as a failure until it succeeds).
    Reserved(A),
    /// The host is locked: nothing is evaluated.
    Locked,
    /// Attempts still in flight use up what is left before the lock: this
    /// one is not evaluated (try again when they are decided).
    Busy,
}

/// Entry point for the relay.
pub struct Responder;

/// Message 1, decrypted: the device key is proven.
pub enum Msg1 {
    /// A login that needs an OPAQUE answer.
    Login(Box<LoginRequest>),
    /// Any other intent; the caller checks it and replies.
    Device(Box<DeviceRequest>),
}

impl Responder {
    /// Reads message 1. An error means the bytes were not a message 1 for
    /// this relay and this connection; nothing was learned or spent.
    pub fn read_msg1(
        identity: &RelayIdentity,
        binding: &[u8],
        msg1: &[u8],
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Msg1, HandshakeError> {
        let prologue = prologue(binding);
        let mut hs = noise_builder(rng)
            .local_private_key(identity.keypair.secret.as_bytes())
            .and_then(|b| b.prologue(&prologue))
            .and_then(|b| b.build_responder())
            .map_err(|_| HandshakeError::Misuse("bad relay key"))?;
        let body = read_noise(|m, b| hs.read_message(m, b), msg1)?;
        let mut device = [0u8; 32];
        device.copy_from_slice(
            hs.get_remote_static()
                .ok_or(HandshakeError::Malformed("no static key in message 1"))?,
        );
        let device_key = PublicKey(device);
        // The version comes first so another version's payload can be
        // refused cleanly even if the rest does not decode.
        let version = peek_version(&body)?;
        if version != PROTOCOL_VERSION {
            return Ok(Msg1::Device(Box::new(DeviceRequest {
                hs,
                device_key,
                intent: None,
                version,
            })));
        }
        let hello: Hello = decode_body(&body)?;
        let context = hs.get_handshake_hash().to_vec();
        match hello.intent {
            Intent::Login { user, host, ke1 } => {
                let ke1 = CredentialRequest::<Suite>::deserialize(&ke1)
                    .map_err(|_| HandshakeError::Malformed("KE1 does not decode"))?;
                Ok(Msg1::Login(Box::new(LoginRequest {
                    hs,
                    device_key,
                    user,
                    host,
                    ke1,
                    context,
                })))
            }
            intent => Ok(Msg1::Device(Box::new(DeviceRequest {
                hs,
                device_key,
                intent: Some(intent),
                version,
            }))),
        }
    }
}

fn peek_version(body: &[u8]) -> Result<u16, HandshakeError> {
    let config = bincode::config::standard();
    let (version, _): (u16, usize) = bincode::serde::decode_from_slice(body, config)
        .map_err(|_| HandshakeError::Malformed("no version in message 1"))?;
    Ok(version)
}

/// A non-login message 1 waiting for the caller's reply.
pub struct DeviceRequest {
    hs: HandshakeState,
    device_key: PublicKey,
    intent: Option<Intent>,
    version: u16,
}

impl DeviceRequest {
    /// The proven device key.
    pub fn device_key(&self) -> PublicKey {
        self.device_key
    }

    /// What the device asks for; `None` if it speaks another version (then
    /// reply with [`Refusal::UnsupportedVersion`]).
    pub fn intent(&self) -> Option<&Intent> {
        self.intent.as_ref()
    }

    /// The version the device speaks.
    pub fn version(&self) -> u16 {
        self.version
    }

    /// Writes message 2; returns it and the handshake hash.
    pub fn reply(mut self, reply: &HelloReply) -> Result<(Vec<u8>, Vec<u8>), HandshakeError> {
        let reply = if self.intent.is_none() {
            &HelloReply::Refused(Refusal::UnsupportedVersion {
                supported: PROTOCOL_VERSION,
            })
        } else {
            reply
        };
        let msg2 = write_noise(|p, b| self.hs.write_message(p, b), &encode_body(reply)?)?;
        Ok((msg2, self.hs.get_handshake_hash().to_vec()))
    }
}

/// A login's message 1, waiting for [`LoginRequest::respond`].
pub struct LoginRequest {
    hs: HandshakeState,
    device_key: PublicKey,
    user: UserName,
    host: HostName,
    ke1: CredentialRequest<Suite>,
    context: Vec<u8>,
}

/// How the relay answered message 1 of a login (for its log and counter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptDecision {
    /// A real KE2 was issued after one attempt was reserved.
    Evaluated,
    /// A fake KE2 was issued: unknown user, wrong device key or no grant.
    Outsider,
    /// The host is locked: no KE2, no attempt.
    Locked,
    /// Attempts in flight use up the rest of the budget: no KE2, no attempt.
    Busy,
    /// The host is on another relay: sent there, no KE2, no attempt.
    Redirected,
}

impl LoginRequest {
    /// The claimed user (proven to hold the device key, not yet to be the user).
    pub fn user(&self) -> &UserName {
        &self.user
    }

    /// The host asked for.
    pub fn host(&self) -> &HostName {
        &self.host
    }

    /// The proven device key.
    pub fn device_key(&self) -> PublicKey {
        self.device_key
    }

    /// Answers message 1: returns message 2, what was decided, and (unless
    /// locked) the state that reads KE3. [`LoginRequest::claim`] then
    /// [`LoginRequest::answer`], for callers that reserve in one go.
    pub fn respond<A: LoginAuthority>(
        self,
        identity: &RelayIdentity,
        authority: &mut A,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<LoginReply<A::Attempt>, HandshakeError> {
        let claim = self.claim(authority).map(|record| {
            let reservation = authority.reserve_attempt(&self.user, &self.host, &record);
            (record, reservation)
        });
        self.answer(identity, claim, rng)
    }

    /// Who is asking, in a fixed order: the user's device key (compared in
    /// constant time with the proven one), then, only if it matches, the
    /// code record of the user's grant on the host. `Some` for a proven
    /// grant holder, whose attempt the caller then reserves (SPEC A3);
    /// `None` for an outsider (SPEC A4).
    pub fn claim<A: LoginAuthority>(&self, authority: &mut A) -> Option<CodeRecord> {
        let key_matches = authority
            .device_key(&self.user)
            .is_some_and(|k| bool::from(k.0.ct_eq(&self.device_key.0)));
        if key_matches {
            authority.code_record(&self.user, &self.host)
        } else {
            None
        }
    }

    /// Writes message 2 that sends a proven grant holder (after
    /// [`LoginRequest::claim`]) to the relay of the cluster at `relay`,
    /// which holds the host's agent; nothing was reserved.
    pub fn redirect<A>(mut self, relay: String) -> Result<LoginReply<A>, HandshakeError> {
        let reply = HelloReply::Redirect { relay };
        let msg2 = write_noise(|p, b| self.hs.write_message(p, b), &encode_body(&reply)?)?;
        Ok(LoginReply {
            msg2,
            decision: AttemptDecision::Redirected,
            awaiting: None,
        })
    }

    /// Writes message 2 for a grant holder's record and its reservation
    /// (from [`LoginRequest::claim`]), or OPAQUE's fake KE2 for an outsider
    /// (`None`). Only a reserved attempt gets a real KE2.
    pub fn answer<A>(
        mut self,
        identity: &RelayIdentity,
        claim: Option<(CodeRecord, Reservation<A>)>,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<LoginReply<A>, HandshakeError> {
        let (ksf, password_file, credential_id, attempt) = match claim {
            Some((record, reservation)) => {
                let file = ServerRegistration::<Suite>::deserialize(&record.record)
                    .map_err(|_| HandshakeError::Misuse("stored code record does not decode"))?;
                let attempt = match reservation {
                    Reservation::Reserved(attempt) => attempt,
                    refused => {
                        let (reply, decision) = match refused {
                            Reservation::Busy => {
                                (HelloReply::Refused(Refusal::Busy), AttemptDecision::Busy)
                            }
                            _ => (HelloReply::Locked, AttemptDecision::Locked),
                        };
                        let msg2 =
                            write_noise(|p, b| self.hs.write_message(p, b), &encode_body(&reply)?)?;
                        return Ok(LoginReply {
                            msg2,
                            decision,
                            awaiting: None,
                        });
                    }
                };
                (
                    record.ksf,
                    Some(file),
                    record.id.credential_id(),
                    Some(attempt),
                )
            }
            None => {
                // The same identifier for the same claim, so repeated probes
                // of one (user, host) see a consistent OPRF key, like a real
                // record would give.
                let mut id = b"latchkey-outsider:".to_vec();
                id.extend_from_slice(self.user.as_str().as_bytes());
                id.push(b'/');
                id.extend_from_slice(self.host.as_str().as_bytes());
                (identity.outsider_ksf, None, id, None)
            }
        };
        let start = ServerLogin::start(
            rng,
            &identity.opaque,
            password_file,
            self.ke1,
            &credential_id,
            ServerLoginParameters {
                context: Some(&self.context),
                ..Default::default()
            },
        )
        .map_err(|_| HandshakeError::Malformed("KE1 is invalid"))?;
        let reply = HelloReply::Challenge {
            ksf,
            ke2: start.message.serialize().to_vec(),
        };
        let msg2 = write_noise(|p, b| self.hs.write_message(p, b), &encode_body(&reply)?)?;
        let handshake_hash = self.hs.get_handshake_hash().to_vec();
        let transport = self
            .hs
            .into_transport_mode()
            .map_err(|_| HandshakeError::Misuse("handshake not finished"))?;
        let decision = if attempt.is_some() {
            AttemptDecision::Evaluated
        } else {
            AttemptDecision::Outsider
        };
        Ok(LoginReply {
            msg2,
            decision,
            awaiting: Some(AwaitingKe3 {
                transport,
                login: start.state,
                context: self.context,
                attempt,
                handshake_hash,
            }),
        })
    }
}

/// The relay's answer to a login's message 1.
pub struct LoginReply<A> {
    /// Message 2, to send.
    pub msg2: Vec<u8>,
    /// What was decided (for the log).
    pub decision: AttemptDecision,
    /// Reads KE3; `None` when the host is locked.
    pub awaiting: Option<AwaitingKe3<A>>,
}

/// After KE2: waits for KE3. It owns the reserved attempt; the caller's
/// attempt type must settle itself as a failure when dropped (connection
/// lost, deadline passed, task cancelled), as SPEC A3 and S7a require:
/// nothing here tells the store.
pub struct AwaitingKe3<A> {
    transport: TransportState,
    login: ServerLogin<Suite>,
    context: Vec<u8>,
    attempt: Option<A>,
    handshake_hash: Vec<u8>,
}

/// The result of reading KE3.
pub struct Ke3Result<A> {
    /// Whether the client proved the code.
    pub verified: bool,
    /// The reserved attempt (`None` for outsiders, who reserved nothing).
    pub attempt: Option<A>,
    transport: TransportState,
}

impl<A> AwaitingKe3<A> {
    /// The reserved attempt, if any.
    pub fn attempt(&self) -> Option<&A> {
        self.attempt.as_ref()
    }

    /// The reserved attempt, if any, to update while the login goes on.
    pub fn attempt_mut(&mut self) -> Option<&mut A> {
        self.attempt.as_mut()
    }

    /// The Noise handshake hash; equal on both sides of a genuine handshake.
    pub fn handshake_hash(&self) -> &[u8] {
        &self.handshake_hash
    }

    /// Reads message 3. Anything but a valid KE3 for a real record is
    /// `verified: false`; a message that does not even decrypt is an error
    /// (the attempt, if any, is dropped with `self` and stays a failure).
    pub fn read_msg3(mut self, msg3: &[u8]) -> Result<Ke3Result<A>, (HandshakeError, Option<A>)> {
        let body = match read_noise(|m, b| self.transport.read_message(m, b), msg3) {
            Ok(body) => body,
            Err(e) => return Err((e, self.attempt)),
        };
        let finish = match decode_body::<LoginFinish>(&body) {
            Ok(LoginFinish::Ke3(ke3)) => ke3,
            Ok(_) => Vec::new(),
            Err(e) => return Err((e.into(), self.attempt)),
        };
        let verified = self.attempt.is_some()
            && !finish.is_empty()
            && CredentialFinalization::<Suite>::deserialize(&finish)
                .ok()
                .and_then(|ke3| {
                    self.login
                        .finish(
                            ke3,
                            ServerLoginParameters {
                                context: Some(&self.context),
                                ..Default::default()
                            },
                        )
                        .ok()
                })
                .is_some();
        Ok(Ke3Result {
            verified,
            attempt: self.attempt,
            transport: self.transport,
        })
    }
}

impl<A> Ke3Result<A> {
    /// Writes message 4 with the relay's verdict (after the store recorded it).
    pub fn reply(&mut self, outcome: &LoginOutcome) -> Result<Vec<u8>, HandshakeError> {
        write_noise(
            |p, b| self.transport.write_message(p, b),
            &encode_body(outcome)?,
        )
    }
}
