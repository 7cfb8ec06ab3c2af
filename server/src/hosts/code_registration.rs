//! Access-code registration on a host's control stream (SPEC I3, S5): the
//! relay's half of OPAQUE registration, then the immutable record stored
//! for the owner or one grant.

use std::sync::Arc;

use latchkey_protocol::{
    frame::{CodeTarget, HostToRelay, Refusal, RelayToHost},
    handshake::{registration_response, validate_upload, CodeRecord},
    ids::{HostName, PublicKey, RecordId},
    ksf::KsfProfile,
};
use rand::{rngs::OsRng, RngCore};
use tracing::info;

use crate::{
    clock::now_unix,
    error::{blocking, ConnError},
    state::Shared,
    store::StoreError,
};

/// A registration between its two steps: the target, the profile and the
/// new record's id.
pub(crate) type Pending = Option<(CodeTarget, KsfProfile, RecordId)>;

/// Handles one code registration on a host's control stream from the
/// device `device`; returns the reply to send (after which the connection
/// ends if it is [`is_final`]). `pending` carries the record between the
/// two steps.
pub(crate) async fn register_code(
    shared: &Arc<Shared>,
    host: &HostName,
    device: &PublicKey,
    frame: HostToRelay,
    pending: &mut Pending,
) -> Result<RelayToHost, ConnError> {
    match frame {
        HostToRelay::RegisterCode {
            target,
            ksf,
            request,
        } => {
            if ksf.is_insecure() && !shared.config.allow_insecure_ksf {
                return Ok(RelayToHost::Refused(Refusal::NotAllowed(format!(
                    "this relay does not accept the key-stretching profile {}",
                    ksf.as_str()
                ))));
            }
            let mut id = [0u8; 16];
            OsRng.fill_bytes(&mut id);
            let id = RecordId(id);
            let s = shared.clone();
            let response =
                blocking(move || registration_response(&s.identity, &request, id)).await??;
            *pending = Some((target, ksf, id));
            Ok(RelayToHost::CodeChallenge {
                response,
                record: id,
            })
        }
        HostToRelay::UploadCode { upload } => {
            let Some((target, ksf, id)) = pending.take() else {
                return Ok(RelayToHost::Refused(Refusal::NotAllowed(
                    "no code registration in progress".into(),
                )));
            };
            let record = CodeRecord {
                id,
                ksf,
                record: validate_upload(&upload)?,
            };
            let store = shared.store.clone();
            let (h, d, t) = (host.clone(), *device, target.clone());
            let now = now_unix();
            match blocking(move || store.set_code(&h, &d, &t, &record, now)).await? {
                Ok(()) => {
                    info!(%host, ?target, "access code set");
                    Ok(RelayToHost::CodeSet { target })
                }
                Err(StoreError::Refused(why)) => Ok(RelayToHost::Refused(Refusal::NotAllowed(why))),
                // Removed, or enrolled again elsewhere, since it connected.
                Err(StoreError::NotEnrolled(_)) => {
                    info!(%host, "access code refused: the device is no longer the host's");
                    Ok(RelayToHost::Refused(Refusal::UnknownDevice))
                }
                Err(e) => Err(e.into()),
            }
        }
        _ => Ok(RelayToHost::Refused(Refusal::NotAllowed(
            "unexpected frame".into(),
        ))),
    }
}

/// Whether a reply ends the connection: the device is not the host's any
/// more, and nothing it sends later can be.
pub(crate) fn is_final(reply: &RelayToHost) -> bool {
    matches!(reply, RelayToHost::Refused(Refusal::UnknownDevice))
}
