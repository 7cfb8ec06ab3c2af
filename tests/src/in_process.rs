//! Logins and channels in the test's own process, through the library the
//! `latchkey` binary uses: many attempts at once, a login driven step by
//! step (so a test can act between the relay's steps), and channels opened
//! by hand on a session.

use anyhow::{bail, Result};
use latchkey_client::{
    net,
    user::e2e::{Epoch, Handshaker},
    wire::SealedSend,
};
use latchkey_protocol::{
    frame::{LoginOutcome, RelayToClient},
    handshake::{Initiator, InitiatorReply, Keypair},
    ids::{AccessCode, HostName, RelayPin},
    record::Opener,
    session::{ChannelKind, ChannelRequest},
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

    /// A logged-in session's end-to-end keys, for tests that open channels
    /// by hand ([`open_channel`]): reads the relay's `SessionReady` and runs
    /// the handshake with the host, as `latchkey` does (without pinning).
    pub async fn session_keys(&self, session: &mut net::Session, host: &str) -> Result<Epoch> {
        let handshaker = self.handshaker(session, host).await?;
        Ok(handshaker.run(&session.control.relay.conn).await?)
    }

    /// What [`Device::session_keys`] runs the handshake with (it can run it
    /// again, as after the host came back).
    pub async fn handshaker(&self, session: &mut net::Session, host: &str) -> Result<Handshaker> {
        let (_, _, device) = self.identity()?;
        let ready: Option<RelayToClient> =
            latchkey_client::wire::read_frame(&mut session.control.recv).await?;
        let Some(RelayToClient::SessionReady { host_key, record }) = ready else {
            bail!("no session: {ready:?}");
        };
        Ok(Handshaker::new(
            host.parse()?,
            device,
            host_key,
            &session.export_key,
            session.id,
            record,
        ))
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

/// Opens a channel by hand on a session whose keys are `epoch` ([`Device::session_keys`]):
/// sends the request and the sealed kind, and returns the streams without
/// waiting for the host's answer.
pub async fn open_channel(
    conn: &quinn::Connection,
    epoch: &Epoch,
    kind: &ChannelKind,
) -> Result<(SealedSend, quinn::RecvStream, Opener)> {
    let (number, sealer, opener) = epoch.next_channel();
    let (mut send, recv) = conn.open_bi().await?;
    let request = ChannelRequest::Channel {
        number,
        bulk: false,
    };
    latchkey_client::wire::write_frame(&mut send, &request).await?;
    let mut send = SealedSend::new(send, sealer);
    send.write_frame_padded(kind).await?;
    Ok((send, recv, opener))
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
