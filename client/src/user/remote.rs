//! A session on a host, as the user's commands use it: log in, wait until
//! the relay has paired us with the host, then open channels.

use latchkey_protocol::{
    frame::{Refusal, RelayToClient},
    ids::{AccessCode, HostName},
    session::{ChannelKind, ChannelReply, ChannelRequest},
    HandshakeError,
};
use quinn::{RecvStream, SendStream};
use tokio::time::timeout;

use super::UserError;
use crate::{
    config::Home,
    net::{self, NetError, STEP_TIMEOUT},
    wire,
};

/// A paired session.
pub struct Remote {
    /// The host.
    pub host: HostName,
    /// The QUIC connection to the relay.
    pub conn: quinn::Connection,
    _endpoint: quinn::Endpoint,
    /// Why the session ended, once the relay says so.
    pub ended: tokio::sync::watch::Receiver<Option<String>>,
}

/// Errors opening a channel.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The host refused.
    #[error("{0}")]
    Refused(String),
    /// The relay or connection failed.
    #[error(transparent)]
    Net(#[from] NetError),
}

impl From<quinn::ConnectionError> for ChannelError {
    fn from(e: quinn::ConnectionError) -> Self {
        Self::Net(e.into())
    }
}

impl From<wire::WireError> for ChannelError {
    fn from(e: wire::WireError) -> Self {
        Self::Net(e.into())
    }
}

impl Remote {
    /// Logs in to `host` and waits for the pairing.
    pub async fn open(home: &Home, host: &HostName, code: AccessCode) -> Result<Self, UserError> {
        let session = super::open_session(home, host, code).await?;
        let net::Control {
            relay,
            send,
            mut recv,
        } = session.control;
        let first = timeout(STEP_TIMEOUT, wire::read_frame::<RelayToClient>(&mut recv))
            .await
            .map_err(|_| NetError::Timeout)?
            .map_err(NetError::from)?;
        match first {
            Some(RelayToClient::SessionReady) => {}
            Some(RelayToClient::Refused(Refusal::HostOffline)) => {
                return Err(NetError::HostOffline(host.clone()).into())
            }
            Some(RelayToClient::Refused(r)) => return Err(NetError::Refused(r).into()),
            _ => {
                return Err(
                    NetError::Handshake(HandshakeError::PeerMisbehaved("no session reply")).into(),
                )
            }
        }
        let (tx, rx) = tokio::sync::watch::channel(None);
        // Watch the control stream for the end of the session.
        tokio::spawn(async move {
            let _send = send; // closing it would end the session
            let mut frames = wire::frame_reader::<RelayToClient>(recv);
            while let Some(frame) = frames.recv().await {
                match frame {
                    Ok(Some(RelayToClient::SessionEnded(reason))) => {
                        let _ = tx.send(Some(reason));
                        return;
                    }
                    Ok(Some(_)) => {}
                    _ => break,
                }
            }
            let _ = tx.send(Some("connection to the relay lost".into()));
        });
        Ok(Self {
            host: host.clone(),
            conn: relay.conn,
            _endpoint: relay.endpoint,
            ended: rx,
        })
    }

    /// Opens a channel; returns its streams and the size the host announced.
    pub async fn channel(
        &self,
        kind: ChannelKind,
    ) -> Result<(SendStream, RecvStream, Option<u64>), ChannelError> {
        let (mut send, mut recv) = self.conn.open_bi().await?;
        wire::write_frame(&mut send, &ChannelRequest { kind }).await?;
        let reply = timeout(STEP_TIMEOUT, wire::read_frame::<ChannelReply>(&mut recv))
            .await
            .map_err(|_| NetError::Timeout)??;
        match reply {
            Some(ChannelReply::Accepted { size }) => Ok((send, recv, size)),
            Some(ChannelReply::Refused(why)) => Err(ChannelError::Refused(why)),
            _ => Err(ChannelError::Net(NetError::Handshake(
                HandshakeError::PeerMisbehaved("channel closed before the host answered"),
            ))),
        }
    }

    /// Ends the session and waits (briefly) until the relay has been told,
    /// so the host sees the session end now rather than at a timeout.
    pub async fn close(&self) {
        self.conn.close(quinn::VarInt::from_u32(0), b"done");
        let _ = timeout(
            std::time::Duration::from_secs(1),
            self._endpoint.wait_idle(),
        )
        .await;
    }

    /// Why the session ended, if it has.
    pub fn end_reason(&self) -> Option<String> {
        self.ended.borrow().clone()
    }
}
