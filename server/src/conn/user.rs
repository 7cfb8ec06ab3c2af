//! A proven user's connection without a session: requests that need no
//! access code (the host list).

use std::sync::Arc;

use latchkey_protocol::{
    frame::{ClientToRelay, Refusal, RelayToClient},
    ids::UserName,
};
use quinn::{RecvStream, SendStream};

use crate::{
    error::{blocking, ConnError},
    state::Shared,
};
use latchkey_protocol::quic as wire;

/// The answer to [`ClientToRelay::ListHosts`], from a user's connection
/// or from inside a session.
pub(crate) async fn host_list(
    shared: &Arc<Shared>,
    user: &UserName,
) -> Result<RelayToClient, ConnError> {
    let store = shared.store.clone();
    let u = user.clone();
    Ok(RelayToClient::Hosts(
        blocking(move || store.hosts_for_user(&u)).await??,
    ))
}

/// Serves a proven user's control stream until they leave.
pub(crate) async fn serve(
    shared: &Arc<Shared>,
    user: &UserName,
    mut send: SendStream,
    mut recv: RecvStream,
) -> Result<(), ConnError> {
    let shutdown = shared.shutdown.clone();
    loop {
        let frame = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ok(()),
            f = wire::read_frame::<ClientToRelay>(&mut recv) => f?,
        };
        let Some(frame) = frame else { return Ok(()) };
        let reply = match frame {
            ClientToRelay::ListHosts => host_list(shared, user).await?,
            _ => RelayToClient::Refused(Refusal::NotAllowed("unsupported request".into())),
        };
        wire::write_frame(&mut send, &reply).await?;
    }
}
