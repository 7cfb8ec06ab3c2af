//! OPAQUE registration: how a host sets or changes an access code. The host
//! runs the client side (with the code and key stretching), the relay runs
//! the server side and keeps only the resulting record, which does not let
//! anyone log in or test guesses offline without the relay's OPRF key
//! (SPEC I3).

use opaque_ke::{
    ClientRegistration, ClientRegistrationFinishParameters, Identifiers, RegistrationRequest,
    RegistrationResponse, RegistrationUpload, ServerRegistration,
};
use rand::{CryptoRng, RngCore};

use super::{RelayIdentity, Suite};
use crate::{
    e2e::ExportKey,
    error::HandshakeError,
    ids::{AccessCode, RecordId},
    ksf::KsfProfile,
};

/// One immutable access-code record as the relay stores it (SPEC S1: a new
/// code is a new record; grants point at one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodeRecord {
    /// The record's id (also its OPAQUE credential identifier).
    pub id: RecordId,
    /// Key stretching the code was registered with.
    pub ksf: KsfProfile,
    /// The serialized OPAQUE registration record.
    pub record: Vec<u8>,
}

/// The host's half of a registration in flight.
pub struct CodeRegistration {
    state: ClientRegistration<Suite>,
    ksf: KsfProfile,
}

impl CodeRegistration {
    /// Starts a registration; returns the request for the relay.
    pub fn start(
        rng: &mut (impl RngCore + CryptoRng),
        code: &AccessCode,
        ksf: KsfProfile,
    ) -> Result<(Self, Vec<u8>), HandshakeError> {
        let start = ClientRegistration::<Suite>::start(rng, code.as_bytes())
            .map_err(|_| HandshakeError::Misuse("cannot start OPAQUE registration"))?;
        Ok((
            Self {
                state: start.state,
                ksf,
            },
            start.message.serialize().to_vec(),
        ))
    }

    /// Finishes with the relay's response; returns the upload (the record)
    /// and OPAQUE's export key, which the host keeps for the end-to-end
    /// handshakes of sessions that log in with this record ([`crate::e2e`]).
    /// Key stretching runs here.
    pub fn finish(
        self,
        rng: &mut (impl RngCore + CryptoRng),
        code: &AccessCode,
        response: &[u8],
    ) -> Result<(Vec<u8>, ExportKey), HandshakeError> {
        let response = RegistrationResponse::<Suite>::deserialize(response)
            .map_err(|_| HandshakeError::Malformed("registration response does not decode"))?;
        let argon2 = self.ksf.argon2();
        let finish = self
            .state
            .finish(
                rng,
                code.as_bytes(),
                response,
                ClientRegistrationFinishParameters::new(Identifiers::default(), Some(&argon2)),
            )
            .map_err(|_| HandshakeError::PeerMisbehaved("registration response is invalid"))?;
        Ok((
            finish.message.serialize().to_vec(),
            ExportKey::from_bytes(finish.export_key.to_vec()),
        ))
    }
}

/// The relay's answer to a registration request for record `id`.
pub fn registration_response(
    identity: &RelayIdentity,
    request: &[u8],
    id: RecordId,
) -> Result<Vec<u8>, HandshakeError> {
    let request = RegistrationRequest::<Suite>::deserialize(request)
        .map_err(|_| HandshakeError::Malformed("registration request does not decode"))?;
    let start = ServerRegistration::<Suite>::start(&identity.opaque, request, &id.credential_id())
        .map_err(|_| HandshakeError::Malformed("registration request is invalid"))?;
    Ok(start.message.serialize().to_vec())
}

/// Checks an upload and returns the record bytes to store.
pub fn validate_upload(upload: &[u8]) -> Result<Vec<u8>, HandshakeError> {
    let upload = RegistrationUpload::<Suite>::deserialize(upload)
        .map_err(|_| HandshakeError::Malformed("registration upload does not decode"))?;
    Ok(ServerRegistration::finish(upload).serialize().to_vec())
}
