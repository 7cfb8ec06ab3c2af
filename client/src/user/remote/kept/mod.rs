//! A command's side of a session another process keeps for it (see
//! `user::reuse`, which keeps it): [`reach`] finds the holder and follows
//! its status into the [`Remote`] the command uses; [`Shared`] opens
//! channels through it. `wire.rs` is what command and holder say over the
//! holder's socket, `place.rs` where that socket lives.

mod place;
pub(crate) mod wire;

use std::{path::PathBuf, time::Instant};

use latchkey_protocol::{
    channel::{ChannelRecv, ChannelSend},
    control::Phase,
    ids::HostName,
    session::ChannelKind,
};
use tokio::{net::UnixStream, sync::watch, time::timeout};

pub use self::place::Place;
use self::wire::{Reply, Request};
use crate::{
    config::Home,
    net::STEP_TIMEOUT,
    user::remote::{ChannelError, Opened, Remote},
};

/// Errors of session reuse. None of them stops a command: it logs in on
/// its own instead.
#[derive(Debug, thiserror::Error)]
pub enum ReuseError {
    /// The directory for the socket is not private to this user, or not
    /// usable for a socket.
    #[error("{path}: {why}; sessions are not kept until it is fixed")]
    UnsafeDir {
        /// The directory.
        path: std::path::PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// The socket, the lock or the holder process.
    #[error("session reuse: {0}")]
    Io(#[from] std::io::Error),
    /// A message that does not decode.
    #[error("session reuse: {0}")]
    Codec(#[from] latchkey_protocol::CodecError),
    /// The holder went away or said something out of turn.
    #[error("session reuse: {0}")]
    Holder(String),
}

/// How long a holder has to answer a command's first question: it is
/// local, so only a holder that hangs takes longer.
const ANSWER_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// A session another process holds.
pub(crate) struct Shared {
    socket: PathBuf,
    host: HostName,
    relay: watch::Receiver<String>,
    /// Set once the holder stopped answering.
    gone: watch::Receiver<Option<String>>,
    follower: tokio::task::JoinHandle<()>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

/// The session a holder keeps for `host`, if one answers: `None` when
/// none runs (or it is ending), and the command logs in itself.
pub async fn reach(home: &Home, host: &HostName) -> Result<Option<Remote>, ReuseError> {
    let place = Place::of(home, host)?;
    let Ok(mut conn) = UnixStream::connect(&place.socket).await else {
        return Ok(None);
    };
    wire::send(&mut conn, &Request::Follow).await?;
    let first = match timeout(ANSWER_WAIT, wire::read::<Reply>(&mut conn)).await {
        Ok(Ok(Some(Reply::Status(status)))) => status,
        _ => return Ok(None),
    };
    let phase = first.phase.phase(Instant::now());
    if matches!(phase, Phase::Ended(_)) {
        return Ok(None);
    }
    let (phase_tx, phase_rx) = watch::channel(phase);
    let (quiet_tx, quiet_rx) = watch::channel(first.quiet.map(|q| Instant::now() - q));
    let (relay_tx, relay) = watch::channel(first.relay);
    let (gone_tx, gone) = watch::channel(None);
    let stopped = format!("the process holding the session to '{host}' stopped");
    let follower = tokio::spawn(async move {
        let mut stopped = stopped;
        while let Ok(Some(Reply::Status(status))) = wire::read::<Reply>(&mut conn).await {
            let now = Instant::now();
            // The holder's last word is why it stops.
            if let wire::PhaseSaid::Ended(why) = &status.phase {
                stopped.clone_from(why);
            }
            phase_tx.send_replace(status.phase.phase(now));
            quiet_tx.send_replace(status.quiet.map(|q| now - q));
            relay_tx.send_replace(status.relay);
        }
        gone_tx.send_replace(Some(stopped.clone()));
        phase_tx.send_if_modified(|p| {
            let over = !matches!(p, Phase::Ended(_));
            if over {
                *p = Phase::Ended(stopped);
            }
            over
        });
    });
    let shared = Shared {
        socket: place.socket,
        host: host.clone(),
        relay,
        gone,
        follower,
    };
    Ok(Some(Remote::shared(
        host.clone(),
        shared,
        phase_rx,
        quiet_rx,
    )))
}

/// Ends `host`'s held session, if one runs; says whether one did.
pub async fn disconnect(home: &Home, host: &HostName) -> Result<bool, ReuseError> {
    let place = Place::of(home, host)?;
    let Ok(mut conn) = UnixStream::connect(&place.socket).await else {
        return Ok(false);
    };
    ask(&mut conn, &Request::Stop).await?;
    Ok(true)
}

/// Sends `request` and reads the one reply.
async fn ask(conn: &mut UnixStream, request: &Request) -> Result<Reply, ReuseError> {
    wire::send(conn, request).await?;
    match timeout(ANSWER_WAIT, wire::read::<Reply>(conn)).await {
        Ok(Ok(Some(reply))) => Ok(reply),
        Ok(Err(e)) => Err(e),
        Ok(Ok(None)) | Err(_) => Err(ReuseError::Holder("the holder did not answer".into())),
    }
}

impl Shared {
    async fn connect(&self) -> Result<UnixStream, ChannelError> {
        UnixStream::connect(&self.socket)
            .await
            .map_err(|_| ChannelError::Refused(self.stopped()))
    }

    fn stopped(&self) -> String {
        self.gone_reason().unwrap_or_else(|| {
            format!("the process holding the session to '{}' stopped", self.host)
        })
    }

    /// Opens a channel through the holder.
    pub(crate) async fn channel(
        &self,
        kind: ChannelKind,
    ) -> Result<(ChannelSend, ChannelRecv, Opened), ChannelError> {
        let mut conn = self.connect().await?;
        wire::send(&mut conn, &Request::Channel(kind))
            .await
            .map_err(|_| ChannelError::Refused(self.stopped()))?;
        // The holder waits for the host as the command would have.
        let reply = timeout(STEP_TIMEOUT * 2, wire::read::<Reply>(&mut conn)).await;
        match reply {
            Ok(Ok(Some(Reply::Accepted(opened)))) => {
                let (read, write) = conn.into_split();
                Ok((
                    ChannelSend::local(Box::new(KeepOpen(Some(write)))),
                    ChannelRecv::local(Box::new(read)),
                    opened,
                ))
            }
            Ok(Ok(Some(Reply::Refused(why)))) => Err(ChannelError::Refused(why)),
            _ => Err(ChannelError::Refused(self.stopped())),
        }
    }

    /// Asks the holder to reboot the host.
    pub(crate) async fn request_reboot(&self) -> Result<(), ChannelError> {
        let mut conn = self.connect().await?;
        wire::send(&mut conn, &Request::Reboot)
            .await
            .map_err(|_| ChannelError::Refused(self.stopped()))?;
        match timeout(STEP_TIMEOUT * 2, wire::read::<Reply>(&mut conn)).await {
            Ok(Ok(Some(Reply::Done))) => Ok(()),
            Ok(Ok(Some(Reply::Refused(why)))) => Err(ChannelError::Refused(why)),
            _ => Err(ChannelError::Refused(self.stopped())),
        }
    }

    /// Sets how long the holder keeps the session after its last command.
    pub(crate) async fn set_persist(&self, persist: std::time::Duration) -> Result<(), ReuseError> {
        let mut conn = UnixStream::connect(&self.socket).await?;
        match ask(&mut conn, &Request::Persist(persist)).await? {
            Reply::Done => Ok(()),
            _ => Err(ReuseError::Holder(
                "the holder did not take the persist time".into(),
            )),
        }
    }

    /// The relay the holder's session goes through.
    pub(crate) fn relay_text(&self) -> String {
        self.relay.borrow().clone()
    }

    /// Why the holder is gone, once it is.
    pub(crate) fn gone_reason(&self) -> Option<String> {
        self.gone.borrow().clone()
    }
}

/// A command's writing half of a channel's connection. Its finish (a
/// shutdown) leaves the connection open until the reading half is gone
/// too, so the holder tells "done sending" from "gone"; dropped without a
/// finish it shuts the direction down, which the holder reads as a cut.
struct KeepOpen(Option<tokio::net::unix::OwnedWriteHalf>);

impl tokio::io::AsyncWrite for KeepOpen {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.0.as_mut() {
            Some(w) => std::pin::Pin::new(w).poll_write(cx, buf),
            None => std::task::Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into())),
        }
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.0.as_mut() {
            Some(w) => std::pin::Pin::new(w).poll_flush(cx),
            None => std::task::Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if let Some(w) = self.0.take() {
            w.forget();
        }
        std::task::Poll::Ready(Ok(()))
    }
}
