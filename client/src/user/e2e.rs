//! The client's end of end-to-end encryption (SPEC X4, see
//! `latchkey_protocol::e2e`): the host's key is pinned on first use, as
//! ssh's `known_hosts` does, and each end-to-end connection to the host
//! starts with one handshake that authenticates both ends and binds the
//! connection (again whenever the host comes back). There is no plaintext
//! fallback.

use latchkey_protocol::{
    channel::{ChannelRecv, ChannelSend},
    e2e::{Binding, E2eInitiator, SessionPsk},
    handshake::Keypair,
    ids::{HostName, PublicKey, RecordId, SessionId},
    limits::MAX_NOISE_MESSAGE,
    session::{HandshakeReply, HandshakeRequest},
    text::shown,
};
use rand::rngs::OsRng;
use tokio::time::timeout;

use crate::{
    config::{ConfigError, Home},
    net::{peer, NetError, STEP_TIMEOUT},
    wire,
};

/// Why a session's end-to-end encryption could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum E2eError {
    /// The relay introduced another key than the one pinned for the host.
    #[error(
        "the key of host '{host}' has changed: pinned {pinned}, now {offered}.\n\
         Someone may be impersonating the host (the relay could be trying to read your \
         sessions), or the host was enrolled again.\n\
         Compare with `latchkey host info` on the host: if it shows {offered}, accept the new \
         key with `latchkey hosts --forget {host}` and connect again."
    )]
    HostKeyChanged {
        /// The host.
        host: HostName,
        /// The pinned key's fingerprint.
        pinned: String,
        /// The introduced key's fingerprint.
        offered: String,
    },
    /// The host answered, but could not run the handshake.
    #[error("host '{host}' refused the end-to-end handshake: {why}")]
    Refused {
        /// The host.
        host: HostName,
        /// The host's reason.
        why: String,
    },
    /// The answer did not prove the host's key and the code's export key.
    #[error(
        "the end-to-end handshake with '{host}' failed: the other end does not hold the \
         host's key and your access code's key. The relay (or someone between) may be trying \
         to read your session; nothing was sent to the host."
    )]
    Failed {
        /// The host.
        host: HostName,
    },
    /// The pin file.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The relay or the connection.
    #[error(transparent)]
    Net(#[from] NetError),
}

impl From<wire::WireError> for E2eError {
    fn from(e: wire::WireError) -> Self {
        Self::Net(e.into())
    }
}

/// Whether a host's key was pinned before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pin {
    /// The key is the one pinned.
    Known,
    /// Nothing is pinned for the host: pin the key once a handshake with
    /// it succeeded ([`pin_new`]), so a key that fails it is never pinned.
    New,
}

/// Checks `key` against the key pinned for `host` on this relay.
pub fn check_pin(
    home: &Home,
    relay_pin: &str,
    host: &HostName,
    key: &PublicKey,
) -> Result<Pin, E2eError> {
    let pinned = home
        .known_hosts()?
        .into_iter()
        .find(|(relay, h, _)| relay == relay_pin && h == host)
        .map(|(_, _, k)| k);
    match pinned {
        Some(pinned) if pinned == *key => Ok(Pin::Known),
        Some(pinned) => Err(E2eError::HostKeyChanged {
            host: host.clone(),
            pinned: pinned.fingerprint(),
            offered: key.fingerprint(),
        }),
        None => Ok(Pin::New),
    }
}

/// Pins a host's key on first use, after the handshake proved it (and
/// says so on standard error, as ssh does).
pub fn pin_new(
    home: &Home,
    relay_pin: &str,
    host: &HostName,
    key: &PublicKey,
) -> Result<(), E2eError> {
    home.pin_host_key(relay_pin, host, key)?;
    // One short line (it must fit beside a progress bar in 80 columns).
    eprintln!(
        "latchkey: new host '{host}', key pinned: {}",
        key.fingerprint()
    );
    Ok(())
}

/// What a session needs to run its handshake again without the code.
pub struct Handshaker {
    /// The host.
    pub host: HostName,
    /// This device's key.
    pub device: Keypair,
    /// The host's pinned key.
    pub host_key: PublicKey,
    /// From the login's export key (kept for the session's life, wiped
    /// when dropped).
    pub psk: SessionPsk,
    /// The session (it changes when the session is resumed on another
    /// relay).
    session: std::sync::Mutex<SessionId>,
    /// The code record the login used.
    pub record: RecordId,
}

impl Handshaker {
    /// What a session's handshakes need, from the login's export key and
    /// the relay's introduction (`SessionReady`); the export key is not
    /// kept, only the psk made from it.
    pub fn new(
        host: HostName,
        device: Keypair,
        host_key: PublicKey,
        export_key: &latchkey_protocol::e2e::ExportKey,
        session: SessionId,
        record: RecordId,
    ) -> Self {
        Self {
            host,
            device,
            host_key,
            psk: SessionPsk::derive(export_key, &record),
            session: std::sync::Mutex::new(session),
            record,
        }
    }

    /// The session's id now.
    fn session(&self) -> SessionId {
        *self.session.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The session continues under a new id (resumed on another relay).
    pub fn rebind(&self, session: SessionId) {
        *self.session.lock().unwrap_or_else(|p| p.into_inner()) = session;
    }

    /// Runs the handshake on the first stream of `conn`, the new
    /// end-to-end connection to the host, bound to it.
    pub async fn run(&self, conn: &quinn::Connection) -> Result<(), E2eError> {
        let binding = Binding {
            session: self.session(),
            record: self.record,
            connection: peer::binding(conn)?,
        };
        let (init, msg1) = E2eInitiator::start(
            &mut OsRng,
            &self.device,
            &self.host_key,
            &self.psk,
            &binding,
        )
        .map_err(NetError::from)?;
        let (send, recv) = conn.open_bi().await.map_err(NetError::from)?;
        let (mut send, mut recv) = (ChannelSend::new(send), ChannelRecv::new(recv));
        send.write_frame(&HandshakeRequest { msg1 }).await?;
        let reply = timeout(STEP_TIMEOUT, recv.read_frame::<HandshakeReply>())
            .await
            .map_err(|_| NetError::HostTimeout(self.host.clone()))??;
        let _ = send.finish().await;
        match reply {
            Some(HandshakeReply::Msg2(msg2)) if msg2.len() <= MAX_NOISE_MESSAGE => {
                init.finish(&msg2).map_err(|_| E2eError::Failed {
                    host: self.host.clone(),
                })
            }
            Some(HandshakeReply::Refused(why)) => Err(E2eError::Refused {
                host: self.host.clone(),
                why: shown(&why).into_owned(),
            }),
            _ => Err(E2eError::Failed {
                host: self.host.clone(),
            }),
        }
    }
}
