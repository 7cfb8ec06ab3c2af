//! A proven user's connection without a session: requests that need no
//! access code (the host list).

use std::sync::Arc;

use latchkey_protocol::{
    frame::{ClientToRelay, Refusal, RelayToClient},
    ids::{PublicKey, UserName},
};
use quinn::{RecvStream, SendStream};
use tracing::info;

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

/// Serves a proven user's control stream until they leave, or until
/// their device is not the one their name is enrolled with any more (the
/// user was removed, or enrolled again elsewhere): a connection held open
/// must not list the hosts of whoever has the name next.
pub(crate) async fn serve(
    shared: &Arc<Shared>,
    conn: &quinn::Connection,
    user: &UserName,
    device: PublicKey,
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
        let (store, u) = (shared.store.clone(), user.clone());
        if blocking(move || store.user_key(&u)).await?? != Some(device) {
            info!(%user, "request refused: the device is no longer the user's");
            let refusal = RelayToClient::Refused(Refusal::UnknownDevice);
            wire::write_frame(&mut send, &refusal).await?;
            latchkey_protocol::quic::finish_and_let_close(conn, &mut send).await;
            return Ok(());
        }
        let reply = match frame {
            ClientToRelay::ListHosts => host_list(shared, user).await?,
            _ => RelayToClient::Refused(Refusal::NotAllowed("unsupported request".into())),
        };
        wire::write_frame(&mut send, &reply).await?;
    }
}
