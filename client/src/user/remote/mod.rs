//! A session on a host, as the user's commands use it: log in, wait until
//! the relay has paired us with the host and given us a route, connect to
//! the host over it and run the end-to-end handshake ([`super::e2e`]), then
//! open channels as streams of that connection.
//!
//! This file holds [`Remote`], the session the commands use; `host_link.rs`
//! makes the end-to-end connection and publishes it, `resume.rs` follows
//! the session's control stream and resumes the session on another relay
//! when its relay goes away, `kept/` reaches a session another process
//! keeps (`user::reuse`), and `error.rs` says why a channel did not open.

mod error;
mod host_link;
#[cfg(unix)]
pub(crate) mod kept;
mod resume;

use std::{sync::Arc, time::Instant};

use latchkey_protocol::{
    channel::{ChannelRecv, ChannelSend},
    control::{ClientSession, Event},
    frame::{ClientToRelay, Refusal, RelayToClient},
    ids::{AccessCode, HostName},
    session::{ChannelKind, ChannelReply},
    text::shown,
    HandshakeError,
};
use tokio::{sync::watch, time::timeout};

use self::{
    error::closed_early,
    host_link::{settle, Link},
    resume::{Follow, Heard, Resume},
};
use super::{
    e2e::{check_pin, pin_new, Handshaker, Pin},
    UserError,
};
use crate::{
    config::Home,
    net::{self, NetError, STEP_TIMEOUT},
    wire,
};

pub use self::{
    error::ChannelError,
    host_link::{connect as connect_to_host, HostConnection},
    resume::{resume_wait, set_resume_wait},
};
pub use latchkey_protocol::control::{Phase, Waiting};

/// Whether this process told its user that the host records the session.
static TOLD_RECORDED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The host's answer to a channel it opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Opened {
    /// A download's size.
    pub size: Option<u64>,
    /// The host records the channel.
    pub recorded: bool,
}

/// A paired session: this process's own, or one that another process
/// holds for reuse.
pub struct Remote {
    /// The host.
    pub host: HostName,
    /// Since when the relay has been silent, once that is long enough to
    /// tell the user (before the connection gives the relay up); `None`
    /// while it is heard.
    pub quiet: watch::Receiver<Option<std::time::Instant>>,
    /// The session's phase, updated from the control stream.
    pub phase: tokio::sync::watch::Receiver<Phase>,
    way: Way,
}

/// How this process reaches the session.
enum Way {
    /// It holds the session itself.
    Own(Own),
    /// Another process holds it ([`kept`]).
    #[cfg(unix)]
    Shared(kept::Shared),
}

/// A session this process holds.
struct Own {
    /// The QUIC connection to the relay: another one once the session was
    /// resumed on another relay.
    link: watch::Receiver<net::RelayConn>,
    /// The relay's refusals of control requests (e.g. a reboot).
    refusals: tokio::sync::Mutex<tokio::sync::mpsc::Receiver<String>>,
    control: tokio::sync::mpsc::Sender<ClientToRelay>,
    /// The end-to-end connection to the host, once it is made.
    host_link: Arc<watch::Sender<Link>>,
}

impl Remote {
    /// Logs in to `host` and waits for the pairing.
    pub async fn open(home: &Home, host: &HostName, code: AccessCode) -> Result<Self, UserError> {
        let (cfg, device) = home.user()?;
        let session = super::open_session(home, host, code).await?;
        let net::Control {
            relay,
            send,
            mut recv,
        } = session.control;
        let mut machine = ClientSession::new();
        let first = timeout(STEP_TIMEOUT, wire::read_frame::<RelayToClient>(&mut recv))
            .await
            .map_err(|_| NetError::RelayTimeout(net::relay_text(relay.conn.remote_address())))?
            .map_err(NetError::from)?
            .ok_or(NetError::Handshake(HandshakeError::PeerMisbehaved(
                "no session reply",
            )))?;
        let intro = match &first {
            RelayToClient::SessionReady { host_key, record } => Some((*host_key, *record)),
            _ => None,
        };
        match machine.on_frame(first, Instant::now()) {
            Ok(Event::Phase) => {}
            Ok(Event::Refused(Refusal::HostOffline)) => {
                return Err(NetError::HostOffline(host.clone()).into())
            }
            Ok(Event::Refused(r)) => return Err(NetError::Refused(r).into()),
            Ok(Event::Hosts(_) | Event::Ticket(..) | Event::Route { .. }) | Err(_) => {
                return Err(
                    NetError::Handshake(HandshakeError::PeerMisbehaved("no session reply")).into(),
                )
            }
        }
        let Some((host_key, record)) = intro else {
            return Err(
                NetError::Handshake(HandshakeError::PeerMisbehaved("no session reply")).into(),
            );
        };
        let pin = check_pin(home, &cfg.pin, host, &host_key)?;
        // The route to the host follows at once.
        let routed = timeout(STEP_TIMEOUT, wire::read_frame::<RelayToClient>(&mut recv))
            .await
            .map_err(|_| NetError::RelayTimeout(net::relay_text(relay.conn.remote_address())))?
            .map_err(NetError::from)?;
        let leg = match routed.map(|f| machine.on_frame(f, Instant::now())) {
            Some(Ok(Event::Route { leg, .. })) => leg,
            Some(Ok(Event::Phase)) if !matches!(machine.phase(), Phase::Ready) => {
                let why = match machine.phase() {
                    Phase::Ended(why) => shown(why).into_owned(),
                    _ => "the session did not start".into(),
                };
                return Err(NetError::Local(why).into());
            }
            _ => {
                return Err(NetError::Handshake(HandshakeError::PeerMisbehaved(
                    "no route to the host",
                ))
                .into())
            }
        };
        let handshaker = Arc::new(Handshaker::new(
            host.clone(),
            device,
            host_key,
            &session.export_key,
            session.id,
            record,
        ));
        drop(session.export_key);
        let host_link = Arc::new(watch::Sender::new(Link::Pending));
        let connecting = tokio::spawn(settle(
            handshaker.clone(),
            relay.clone(),
            leg,
            host_link.clone(),
        ));
        let (phase_tx, phase) = tokio::sync::watch::channel(machine.phase().clone());
        let (refusal_tx, refusals) = tokio::sync::mpsc::channel(4);
        let (control, requests) = tokio::sync::mpsc::channel::<ClientToRelay>(4);
        let (link_tx, link) = watch::channel(relay.clone());
        let (quiet_tx, quiet) = watch::channel(None);
        let resume = Resume {
            relays: cfg.relays(),
            pin: cfg.pin()?,
            device: handshaker.device.clone(),
            user: cfg.user.clone(),
            host: host.clone(),
        };
        // One task owns the control stream: it writes our requests and
        // follows what the relay says about the session; when the host
        // comes back, or the session was resumed on another relay, it runs
        // the handshake again (the code is not needed).
        tokio::spawn(
            Follow {
                machine,
                phase_tx,
                refusal_tx,
                requests,
                handshaker,
                host_link: host_link.clone(),
                link_tx,
                resume,
                connecting,
                held: None,
                heard: Heard::default(),
                quiet_tx,
            }
            .run(send, recv),
        );
        // The first connection decides whether the session is usable at all
        // (a changed or impostor key, a host without the code's key). A host
        // that went away meanwhile (its agent restarting) is waited for.
        let mut settled = host_link.subscribe();
        let deadline = tokio::time::Instant::now() + STEP_TIMEOUT * 2;
        let first = loop {
            let link = tokio::time::timeout_at(
                deadline,
                settled.wait_for(|k| !matches!(k, Link::Pending)),
            )
            .await
            .map_err(|_| NetError::HostTimeout(host.clone()))?
            .map(|k| k.clone());
            let away = matches!(*phase.borrow(), Phase::Rebooting { .. });
            match link {
                Ok(Link::Failed(_)) if away => {
                    tokio::time::timeout_at(deadline, settled.changed())
                        .await
                        .map_err(|_| NetError::HostTimeout(host.clone()))?
                        .map_err(|_| NetError::Local("the session is over".into()))?;
                }
                other => break other,
            }
        };
        match first {
            Ok(Link::Failed(why)) => {
                relay
                    .conn
                    .close(quinn::VarInt::from_u32(0), b"end-to-end handshake failed");
                return Err(NetError::Local(why).into());
            }
            Ok(Link::Ready(_)) if pin == Pin::New => pin_new(home, &cfg.pin, host, &host_key)?,
            _ => {}
        }
        Ok(Self {
            host: host.clone(),
            quiet,
            phase,
            way: Way::Own(Own {
                link,
                refusals: tokio::sync::Mutex::new(refusals),
                control,
                host_link,
            }),
        })
    }

    /// A session another process holds, followed through `shared`.
    #[cfg(unix)]
    pub(crate) fn shared(
        host: HostName,
        shared: kept::Shared,
        phase: watch::Receiver<Phase>,
        quiet: watch::Receiver<Option<std::time::Instant>>,
    ) -> Self {
        Self {
            host,
            quiet,
            phase,
            way: Way::Shared(shared),
        }
    }

    /// Sets how long the process holding this session keeps it after its
    /// last command; a session of this process's own ends with it anyway.
    pub async fn set_persist(&self, persist: std::time::Duration) {
        #[cfg(unix)]
        if let Way::Shared(shared) = &self.way {
            if let Err(e) = shared.set_persist(persist).await {
                tracing::warn!("{e}");
            }
        }
        #[cfg(not(unix))]
        let _ = persist;
    }

    /// Whether another process holds this session.
    pub fn is_shared(&self) -> bool {
        !matches!(self.way, Way::Own(_))
    }

    /// Opens a channel; returns its two halves and the size the host
    /// announced. A copy goes behind interactive channels
    /// ([`ChannelKind::is_bulk`]). The first channel the host records
    /// tells the user so, on standard error.
    pub async fn channel(
        &self,
        kind: ChannelKind,
    ) -> Result<(ChannelSend, ChannelRecv, Option<u64>), ChannelError> {
        let (send, recv, opened) = self.open_channel(kind).await?;
        if opened.recorded && !TOLD_RECORDED.swap(true, std::sync::atomic::Ordering::Relaxed) {
            eprintln!(
                "latchkey: the host '{}' records this session (what its shells and commands show, a command's input, and each copy and forward)",
                self.host
            );
        }
        Ok((send, recv, opened.size))
    }

    /// Opens a channel; returns its two halves and the host's answer, for a
    /// process that passes the answer on (a kept session's holder).
    pub(crate) async fn open_channel(
        &self,
        kind: ChannelKind,
    ) -> Result<(ChannelSend, ChannelRecv, Opened), ChannelError> {
        match &self.way {
            Way::Own(own) => own.channel(&self.host, kind).await,
            #[cfg(unix)]
            Way::Shared(shared) => shared.channel(kind).await,
        }
    }

    /// The connection to the relay, when this process holds the session
    /// (tests speak to the relay on it directly).
    pub fn relay_conn(&self) -> Option<quinn::Connection> {
        match &self.way {
            Way::Own(own) => Some(own.conn()),
            #[cfg(unix)]
            Way::Shared(_) => None,
        }
    }

    /// The relay the session goes through, as the user knows it.
    pub fn relay_text(&self) -> String {
        match &self.way {
            Way::Own(own) => net::relay_text(own.conn().remote_address()),
            #[cfg(unix)]
            Way::Shared(shared) => shared.relay_text(),
        }
    }

    /// Whether the session's relay connection is gone for good (closed,
    /// not resumed), or the process holding the session stopped.
    pub fn relay_gone(&self) -> bool {
        self.gone_reason().is_some()
    }

    fn gone_reason(&self) -> Option<String> {
        match &self.way {
            Way::Own(own) => own
                .conn()
                .close_reason()
                .map(|e| format!("the connection to the relay was lost ({e})")),
            #[cfg(unix)]
            Way::Shared(shared) => shared.gone_reason(),
        }
    }

    /// Ends the session and waits (briefly) until the relay has been told,
    /// so the host sees the session end now rather than at a timeout. A
    /// session another process holds stays: this process only leaves it.
    pub async fn close(&self) {
        match &self.way {
            Way::Own(own) => own.close().await,
            #[cfg(unix)]
            Way::Shared(_) => {}
        }
    }

    /// Asks the relay to reboot the host (SPEC R1). Returns once the host
    /// is going down, or with the relay's refusal.
    pub async fn request_reboot(&self) -> Result<(), ChannelError> {
        match &self.way {
            Way::Own(own) => own.request_reboot(&self.host, self.phase.clone()).await,
            #[cfg(unix)]
            Way::Shared(shared) => {
                shared.request_reboot().await?;
                going_down(&self.host, self.phase.clone()).await
            }
        }
    }
}

/// Waits (up to [`STEP_TIMEOUT`]) until a reboot asked for shows in the
/// session's phase: the host going down, or the session's end.
async fn going_down(
    host: &HostName,
    mut phase: watch::Receiver<Phase>,
) -> Result<(), ChannelError> {
    let left_ready = async {
        phase
            .wait_for(|p| !matches!(p, Phase::Ready))
            .await
            .map(|p| p.clone())
    };
    match timeout(STEP_TIMEOUT, left_ready).await {
        Ok(Ok(Phase::Ended(why))) => Err(ChannelError::said_by_peer(&why)),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(_)) => Err(ChannelError::Refused("the session is over".into())),
        Err(_) => Err(ChannelError::Net(NetError::HostTimeout(host.clone()))),
    }
}

impl Own {
    async fn channel(
        &self,
        host: &HostName,
        kind: ChannelKind,
    ) -> Result<(ChannelSend, ChannelRecv, Opened), ChannelError> {
        let conn = self.host_conn(host).await?;
        let (send, recv) = conn.conn().open_bi().await?;
        let (mut send, mut recv) = (ChannelSend::new(send), ChannelRecv::new(recv));
        // Keystrokes before bulk: quinn sends higher priorities first.
        send.set_priority(if kind.is_bulk() { 0 } else { 1 });
        send.write_frame_padded(&kind).await?;
        let answer = async {
            match recv.read_frame_padded::<ChannelReply>().await? {
                Some(ChannelReply::Accepted { size, recorded }) => Ok(Opened { size, recorded }),
                Some(ChannelReply::Refused(why)) => Err(ChannelError::said_by_peer(&why)),
                Some(_) | None => Err(closed_early()),
            }
        };
        let opened = timeout(STEP_TIMEOUT, answer)
            .await
            .map_err(|_| ChannelError::from(NetError::HostTimeout(host.clone())))??;
        Ok((send, recv, opened))
    }

    /// The current connection to the relay.
    fn conn(&self) -> quinn::Connection {
        self.link.borrow().conn.clone()
    }

    /// The end-to-end connection to the host, once it is made.
    async fn host_conn(&self, host: &HostName) -> Result<Arc<HostConnection>, ChannelError> {
        let mut link = self.host_link.subscribe();
        let ready = timeout(STEP_TIMEOUT, link.wait_for(|k| !matches!(k, Link::Pending)))
            .await
            .map_err(|_| NetError::HostTimeout(host.clone()))?
            .map(|k| k.clone());
        match ready {
            Ok(Link::Ready(host)) => Ok(host),
            Ok(Link::Failed(why)) => Err(ChannelError::Refused(why)),
            _ => Err(ChannelError::Refused("the session is over".into())),
        }
    }

    async fn close(&self) {
        self.host_link
            .send_replace(Link::Failed("the session is over".into()));
        let link = self.link.borrow().clone();
        link.close(b"done").await;
    }

    async fn request_reboot(
        &self,
        host: &HostName,
        phase: watch::Receiver<Phase>,
    ) -> Result<(), ChannelError> {
        let mut refusals = self.refusals.lock().await;
        while refusals.try_recv().is_ok() {}
        self.control
            .send(ClientToRelay::Reboot)
            .await
            .map_err(|_| ChannelError::Refused("the session is over".into()))?;
        tokio::select! {
            refusal = refusals.recv() => Err(match refusal {
                Some(why) => ChannelError::said_by_peer(&why),
                None => ChannelError::Refused("the session is over".into()),
            }),
            gone = going_down(host, phase) => gone,
        }
    }
}

impl Remote {
    /// What the session waits for, for status lines: the host rebooting,
    /// the host gone offline (an agent restart, a blip), or a relay to
    /// resume on.
    pub fn waiting_text(&self) -> &'static str {
        match &*self.phase.borrow() {
            Phase::Rebooting {
                waiting: Waiting::HostAway,
                ..
            } => "went offline; waiting…",
            Phase::Rebooting {
                waiting: Waiting::RelayLost,
                ..
            } => "is out of reach: its relay went away; resuming…",
            _ => "is rebooting…",
        }
    }

    /// Why the session ended, once the news reaches this process: a
    /// channel breaks a moment before it (on a kept session, the holder
    /// says why on another connection). `None` if 3 s bring none.
    pub async fn ended_why(&self) -> Option<String> {
        let mut phase = self.phase.clone();
        let ended = phase.wait_for(|p| matches!(p, Phase::Ended(_)));
        let _ = timeout(std::time::Duration::from_secs(3), ended).await;
        self.end_reason()
    }

    /// Why the session ended, if it has.
    pub fn end_reason(&self) -> Option<String> {
        match &*self.phase.borrow() {
            Phase::Ended(reason) => Some(shown(reason).into_owned()),
            _ => None,
        }
    }

    /// Why a channel broke without the relay saying the session ended:
    /// the relay went away, or (the connection still up) the host did.
    fn lost_reason(&self) -> String {
        if let Some(reason) = self.end_reason() {
            return reason;
        }
        match self.gone_reason() {
            Some(why) => why,
            None => format!(
                "the channel to '{}' broke while the relay still answers: the host's agent stopped or lost its link",
                self.host
            ),
        }
    }

    /// After a channel broke: if the host is rebooting (or starts to within
    /// a moment), waits until it is back and returns how long it took;
    /// otherwise returns why the session is over. `on_wait` is called about
    /// every second with the time waited so far.
    pub async fn wait_if_rebooting(
        &self,
        mut on_wait: impl FnMut(std::time::Duration),
    ) -> Result<std::time::Duration, ChannelError> {
        let mut phase = self.phase.clone();
        let rebooting = tokio::time::timeout(
            std::time::Duration::from_secs(3),
            phase.wait_for(|p| !matches!(p, Phase::Ready)),
        )
        .await
        .map(|r| r.map(|p| (*p).clone()));
        let started = match rebooting {
            Ok(Ok(Phase::Rebooting { since, .. })) => since,
            Ok(Ok(Phase::Ended(why))) => return Err(ChannelError::said_by_peer(&why)),
            _ => return Err(ChannelError::Refused(self.lost_reason())),
        };
        loop {
            tokio::select! {
                r = phase.wait_for(|p| !matches!(p, Phase::Rebooting { .. })) => {
                    return match r.map(|p| (*p).clone()) {
                        Ok(Phase::Ready) => Ok(started.elapsed()),
                        Ok(Phase::Ended(why)) => Err(ChannelError::said_by_peer(&why)),
                        _ => Err(ChannelError::Refused("connection to the relay lost".into())),
                    };
                }
                _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => on_wait(started.elapsed()),
            }
        }
    }
}
