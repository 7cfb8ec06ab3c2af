//! Logins and channels in the test's own process, through the library the
//! `latchkey` binary uses: many attempts at once, a login driven step by
//! step (so a test can act between the relay's steps), and channels opened
//! by hand on a session's end-to-end connection.

use anyhow::{bail, Result};
use latchkey_client::{
    channel::{ChannelRecv, ChannelSend},
    net,
    user::{
        e2e::Handshaker,
        remote::{connect_to_host, HostConnection},
    },
};
use latchkey_protocol::{
    frame::{LoginOutcome, RelayToClient},
    handshake::{Initiator, InitiatorReply, Keypair},
    ids::{AccessCode, HostName, RelayPin},
    route::LegId,
    session::ChannelKind,
};

use crate::{device::Device, world::OWNER_CODE};

impl Device {
    /// Logs in in-process (the library the binary uses), so tests can run
    /// many attempts at once. The future owns what it needs.
    pub fn login(
        &self,
        host: &str,
        code: &str,
    ) -> impl std::future::Future<Output = Result<net::Session, net::NetError>> + Send + 'static
    {
        self.login_from(net::Local::Any, host, code)
    }

    /// [`Device::login`] from a chosen local socket (another loopback
    /// address plays another source).
    pub fn login_from(
        &self,
        local: net::Local,
        host: &str,
        code: &str,
    ) -> impl std::future::Future<Output = Result<net::Session, net::NetError>> + Send + 'static
    {
        let home = latchkey_client::config::Home::locate(Some(self.home.clone()));
        let (host, code) = (host.to_string(), code.to_string());
        async move {
            let failed = |e: String| net::NetError::Local(e);
            let (cfg, key) = home.user().map_err(|e| failed(e.to_string()))?;
            let pin = cfg.pin().map_err(|e| failed(e.to_string()))?;
            let host: HostName = host.parse().map_err(|_| failed("bad host".into()))?;
            let code = AccessCode::for_login(code).map_err(|e| failed(e.to_string()))?;
            net::login_from(&local, &cfg.relays(), &pin, &key, &cfg.user, &host, code).await
        }
    }

    /// A function that logs in again each time it is called (for benchmarks).
    pub fn login_factory(
        &self,
    ) -> impl Fn() -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<net::Session, net::NetError>> + Send>,
    > + Send
           + 'static {
        let home = self.home.clone();
        move || {
            let d = Device { home: home.clone() };
            Box::pin(d.login("mypc", OWNER_CODE))
        }
    }

    /// The relay address, pin and device key this device logs in with.
    pub fn identity(&self) -> Result<(String, RelayPin, Keypair)> {
        let (cfg, key) = latchkey_client::config::Home::locate(Some(self.home.clone())).user()?;
        let pin = cfg.pin()?;
        Ok((cfg.relay, pin, key))
    }

    /// A logged-in session's end-to-end connection to the host, for tests
    /// that open channels by hand ([`open_channel`]): reads the relay's
    /// `SessionReady` and route, connects over it and runs the handshake, as
    /// `latchkey` does (without pinning).
    pub async fn host_connection(
        &self,
        session: &mut net::Session,
        host: &str,
    ) -> Result<HostConnection> {
        let (handshaker, leg) = self.handshaker(session, host).await?;
        Ok(connect_to_host(&handshaker, &session.control.relay, leg).await?)
    }

    /// A session's QUIC connection to the host over its route, with no
    /// handshake on it yet: for tests of a client that stops there.
    pub async fn raw_host_connection(
        &self,
        session: &mut net::Session,
        host: &str,
    ) -> Result<quinn::Connection> {
        let (_, leg) = self.handshaker(session, host).await?;
        let relay = &session.control.relay;
        let at = relay.peers.allocate();
        relay.peers.set(at, relay.conn.remote_address(), leg)?;
        let connecting =
            relay
                .endpoint
                .connect_with(net::peer::client_config()?, at, net::peer::PEER_NAME)?;
        Ok(tokio::time::timeout(std::time::Duration::from_secs(15), connecting).await??)
    }

    /// What [`Device::host_connection`] connects with: the handshake's
    /// inputs from the relay's `SessionReady`, and the client's leg of the
    /// route that follows it.
    pub async fn handshaker(
        &self,
        session: &mut net::Session,
        host: &str,
    ) -> Result<(Handshaker, LegId)> {
        let (_, _, device) = self.identity()?;
        let ready: Option<RelayToClient> =
            latchkey_client::wire::read_frame(&mut session.control.recv).await?;
        let Some(RelayToClient::SessionReady { host_key, record }) = ready else {
            bail!("no session: {ready:?}");
        };
        let routed: Option<RelayToClient> =
            latchkey_client::wire::read_frame(&mut session.control.recv).await?;
        let Some(RelayToClient::Route { leg, .. }) = routed else {
            bail!("no route: {routed:?}");
        };
        let handshaker = Handshaker::new(
            host.parse()?,
            device,
            host_key,
            &session.export_key,
            session.id,
            record,
        );
        Ok((handshaker, leg))
    }

    /// Starts a login by hand: connects and sends message 1, so a test can
    /// act between the steps the relay takes.
    pub async fn send_msg1(&self, host: &str, code: &str) -> Result<RawLogin> {
        let (relay, _, _) = self.identity()?;
        self.send_msg1_at(&relay, host, code).await
    }

    /// [`Device::send_msg1`] to the relay at `relay`.
    pub async fn send_msg1_at(&self, relay: &str, host: &str, code: &str) -> Result<RawLogin> {
        let (_, pin, key) = self.identity()?;
        let rc = net::connect(relay, &pin).await?;
        let binding = net::channel_binding(&rc.conn)?;
        let (mut send, recv) = rc.conn.open_bi().await?;
        let code = AccessCode::for_login(code.into())?;
        let (init, msg1) = Initiator::start_login(
            &mut rand::rngs::OsRng,
            &key,
            &pin.noise_key,
            &binding,
            self.user()?,
            host.parse()?,
            &code,
        )?;
        latchkey_client::wire::write_message(&mut send, &msg1).await?;
        Ok(RawLogin {
            relay: rc,
            send,
            recv,
            init,
            code,
        })
    }
}

/// Opens a channel by hand on a session's connection to the host
/// ([`Device::host_connection`]): sends the request, and returns the channel
/// without waiting for the host's answer.
pub async fn open_channel(
    host: &HostConnection,
    kind: &ChannelKind,
) -> Result<(ChannelSend, ChannelRecv)> {
    let (send, recv) = host.conn().open_bi().await?;
    let mut send = ChannelSend::new(send);
    send.write_frame_padded(kind).await?;
    Ok((send, ChannelRecv::new(recv)))
}

/// A login in progress, driven step by step ([`Device::send_msg1`]).
pub struct RawLogin {
    /// The connection.
    pub relay: net::RelayConn,
    /// The handshake stream, our side.
    pub send: quinn::SendStream,
    /// The handshake stream, the relay's side.
    pub recv: quinn::RecvStream,
    /// Reads message 2.
    pub init: Initiator,
    /// The code it was started with.
    pub code: AccessCode,
}

impl RawLogin {
    /// Reads message 2.
    pub async fn read_msg2(&mut self) -> Result<Vec<u8>> {
        Ok(latchkey_client::wire::read_message(&mut self.recv).await?)
    }

    /// Finishes a login whose code checks out against `msg2`: sends KE3 and
    /// returns the relay's verdict, the connection and its control stream.
    pub async fn finish(self, msg2: &[u8]) -> Result<(LoginOutcome, net::Control)> {
        let Self {
            relay,
            mut send,
            mut recv,
            init,
            code,
        } = self;
        let reply = init.read_msg2(&mut rand::rngs::OsRng, msg2, Some(&code))?;
        let InitiatorReply::SendKe3 { msg3, awaiting } = reply else {
            bail!("the code did not check out");
        };
        latchkey_client::wire::write_message(&mut send, &msg3).await?;
        let msg4 = latchkey_client::wire::read_message(&mut recv).await?;
        let (outcome, _export_key) = awaiting.read_outcome(&msg4)?;
        Ok((outcome, net::Control { relay, send, recv }))
    }
}
