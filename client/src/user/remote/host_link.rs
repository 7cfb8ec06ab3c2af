//! The session's end-to-end connection to the host: made over the route
//! the relay gave this client, authenticated by the handshake
//! ([`crate::user::e2e`]), and where it stands for the channels that wait
//! for it.

use std::{net::SocketAddr, sync::Arc};

use latchkey_protocol::route::LegId;
use tokio::{sync::watch, time::timeout};

use crate::{
    net::{peer, socket::Peers, NetError, RelayConn, STEP_TIMEOUT},
    user::e2e::{E2eError, Handshaker},
};

/// Where the session's end-to-end connection stands.
#[derive(Clone)]
pub(super) enum Link {
    /// Being made (at start, or the host just came back), or waiting for
    /// the relay's route.
    Pending,
    /// Channels open on this one.
    Ready(Arc<HostConnection>),
    /// The last attempt failed: channels fail with this.
    Failed(String),
}

/// A virtual address routed to the host through one relay under one leg,
/// forgotten when dropped.
struct Path {
    peers: Peers,
    at: SocketAddr,
}

impl Path {
    fn through(relay: &RelayConn, leg: LegId) -> Result<Self, NetError> {
        let at = relay.peers.allocate();
        relay
            .peers
            .set(at, relay.conn.remote_address(), leg)
            .map_err(|e| NetError::Local(e.to_string()))?;
        Ok(Self {
            peers: relay.peers.clone(),
            at,
        })
    }
}

impl Path {
    /// Routes the same virtual address through `relay` under `leg`: the
    /// connection on it continues over the new route. Only on the socket
    /// the connection lives on (`relay` was dialled from it).
    fn rebind(&self, relay: &RelayConn, leg: LegId) -> Result<(), NetError> {
        if !self.peers.same_socket(&relay.peers) {
            return Err(NetError::Local(
                "the relay connection is on another socket".into(),
            ));
        }
        self.peers
            .set(self.at, relay.conn.remote_address(), leg)
            .map_err(|e| NetError::Local(e.to_string()))
    }
}

impl Drop for Path {
    fn drop(&mut self) {
        self.peers.remove(self.at);
    }
}

/// An authenticated end-to-end connection to the host. Dropping it closes
/// the connection and forgets its route, so a connection replaced (the
/// host came back, the session moved relays) leaves nothing behind.
pub struct HostConnection {
    conn: quinn::Connection,
    path: Path,
}

impl HostConnection {
    /// The connection: each bidirectional stream opened on it is a channel.
    pub fn conn(&self) -> &quinn::Connection {
        &self.conn
    }

    /// Moves the connection onto a new route through `relay` (the host kept
    /// its end): no new handshake, channels go on. Fails if the connection
    /// is gone or `relay` is on another socket.
    pub(super) fn move_to(&self, relay: &RelayConn, leg: LegId) -> Result<(), NetError> {
        if let Some(why) = self.conn.close_reason() {
            return Err(NetError::Local(why.to_string()));
        }
        self.path.rebind(relay, leg)
    }
}

impl Drop for HostConnection {
    fn drop(&mut self) {
        self.conn.close(quinn::VarInt::from_u32(0), b"replaced");
    }
}

/// Connects to the host through `relay` under `leg`, runs the handshake,
/// and publishes the connection, or why there is none.
pub(super) async fn settle(
    handshaker: Arc<Handshaker>,
    relay: RelayConn,
    leg: LegId,
    link: Arc<watch::Sender<Link>>,
) {
    let settled = match connect(&handshaker, &relay, leg).await {
        Ok(conn) => Link::Ready(Arc::new(conn)),
        Err(e) => Link::Failed(e.to_string()),
    };
    link.send_replace(settled);
}

/// Connects to the host through `relay` under the client's own `leg` of
/// the session's route, and runs the handshake on the new connection.
pub async fn connect(
    handshaker: &Handshaker,
    relay: &RelayConn,
    leg: LegId,
) -> Result<HostConnection, E2eError> {
    let path = Path::through(relay, leg)?;
    let host = &handshaker.host;
    let connecting = relay
        .endpoint
        .connect_with(peer::client_config()?, path.at, peer::PEER_NAME)
        .map_err(|e| NetError::Local(e.to_string()))?;
    let conn = match timeout(STEP_TIMEOUT, connecting).await {
        Ok(Ok(conn)) => HostConnection { conn, path },
        Ok(Err(e)) => {
            return Err(NetError::Local(format!("no connection to host '{host}': {e}")).into())
        }
        Err(_) => {
            return Err(NetError::Local(format!(
                "host '{host}' did not answer through the relay in {} s",
                STEP_TIMEOUT.as_secs()
            ))
            .into())
        }
    };
    handshaker.run(&conn.conn).await?;
    Ok(conn)
}
