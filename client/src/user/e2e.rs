//! The client's end of end-to-end encryption (SPEC X4, see
//! `latchkey_protocol::e2e`): the host's key is pinned on first use, as
//! ssh's `known_hosts` does, and each session runs one handshake with the
//! host through the relay (again whenever the host comes back). There is no
//! plaintext fallback.

use std::sync::atomic::{AtomicU64, Ordering};

use latchkey_protocol::{
    e2e::{Binding, E2eInitiator, SessionKeys, SessionPsk},
    handshake::Keypair,
    ids::{HostName, PublicKey},
    limits::MAX_NOISE_MESSAGE,
    session::{ChannelRequest, HandshakeReply, Relayed},
    text::shown,
};
use rand::rngs::OsRng;
use tokio::time::timeout;

use crate::{
    config::{ConfigError, Home},
    net::{NetError, STEP_TIMEOUT},
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

/// One handshake's keys and the next channel number under them.
pub struct Epoch {
    keys: SessionKeys,
    next: AtomicU64,
}

impl Epoch {
    /// A fresh number and the channel keys that go with it.
    pub fn next_channel(
        &self,
    ) -> (
        u64,
        latchkey_protocol::record::Sealer,
        latchkey_protocol::record::Opener,
    ) {
        let number = self.next.fetch_add(1, Ordering::Relaxed);
        let (sealer, opener) = self.keys.channel(number);
        (number, sealer, opener)
    }
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
    /// The session and the code record (the session changes when it is
    /// resumed on another relay).
    binding: std::sync::Mutex<Binding>,
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
        session: latchkey_protocol::ids::SessionId,
        record: latchkey_protocol::ids::RecordId,
    ) -> Self {
        Self {
            host,
            device,
            host_key,
            psk: SessionPsk::derive(export_key, &record),
            binding: std::sync::Mutex::new(Binding { session, record }),
        }
    }

    /// The session and the code record the handshake binds.
    pub fn binding(&self) -> Binding {
        *self.binding.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The session continues under a new id (resumed on another relay).
    pub fn rebind(&self, session: latchkey_protocol::ids::SessionId) {
        self.binding
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .session = session;
    }

    /// Runs the handshake on a new stream of `conn`.
    pub async fn run(&self, conn: &quinn::Connection) -> Result<Epoch, E2eError> {
        let (init, msg1) = E2eInitiator::start(
            &mut OsRng,
            &self.device,
            &self.host_key,
            &self.psk,
            &self.binding(),
        )
        .map_err(NetError::from)?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(NetError::from)?;
        wire::write_frame(&mut send, &ChannelRequest::Handshake { msg1 }).await?;
        let answer = async {
            let relayed = wire::read_frame::<Relayed>(&mut recv).await?;
            let reply = match relayed {
                Some(Relayed::Spliced) => wire::read_frame::<HandshakeReply>(&mut recv).await?,
                Some(Relayed::Refused(why)) => {
                    return Ok(Err(E2eError::Net(NetError::Local(
                        shown(&why).into_owned(),
                    ))))
                }
                _ => None,
            };
            Ok::<_, wire::WireError>(Ok(reply))
        };
        let reply = timeout(STEP_TIMEOUT, answer)
            .await
            .map_err(|_| NetError::Timeout)???;
        let _ = send.finish();
        match reply {
            Some(HandshakeReply::Msg2(msg2)) if msg2.len() <= MAX_NOISE_MESSAGE => {
                let keys = init.finish(&msg2).map_err(|_| E2eError::Failed {
                    host: self.host.clone(),
                })?;
                Ok(Epoch {
                    keys,
                    next: AtomicU64::new(0),
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
