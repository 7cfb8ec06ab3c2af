//! A session on a host, as the user's commands use it: log in, wait until
//! the relay has paired us with the host, run the end-to-end handshake with
//! the host ([`super::e2e`]), then open channels sealed with its keys.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use latchkey_protocol::{
    control::{ClientSession, Event},
    frame::{ClientToRelay, Refusal, RelayToClient},
    handshake::Keypair,
    ids::{AccessCode, HostName, RelayPin, ResumeTicket, SessionId, UserName},
    session::{ChannelKind, ChannelReply, ChannelRequest, Relayed},
    HandshakeError,
};
use tokio::{sync::watch, time::timeout};

use super::{
    e2e::{check_pin, pin_new, E2eError, Epoch, Handshaker, Pin},
    UserError,
};
use crate::{
    config::Home,
    host::NO_CHANNEL_KEYS,
    net::{self, NetError, STEP_TIMEOUT},
    wire::{self, OpenedRecv, SealedSend},
};

/// Where the session's end-to-end keys stand.
#[derive(Clone)]
enum Keys {
    /// A handshake is under way (at start, or the host just came back).
    Pending,
    /// Channels open with these.
    Ready(Arc<Epoch>),
    /// The last handshake failed: channels fail with this.
    Failed(String),
}

pub use latchkey_protocol::control::{Phase, Waiting};

/// A paired session.
pub struct Remote {
    /// The host.
    pub host: HostName,
    /// The QUIC connection to the relay: another one once the session was
    /// resumed on another relay.
    link: watch::Receiver<net::RelayConn>,
    /// The session's phase, updated from the control stream.
    pub phase: tokio::sync::watch::Receiver<Phase>,
    /// The relay's refusals of control requests (e.g. a reboot).
    refusals: tokio::sync::Mutex<tokio::sync::mpsc::Receiver<String>>,
    control: tokio::sync::mpsc::Sender<ClientToRelay>,
    handshaker: Arc<Handshaker>,
    keys: Arc<watch::Sender<Keys>>,
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

impl From<E2eError> for ChannelError {
    fn from(e: E2eError) -> Self {
        match e {
            E2eError::Net(n) => Self::Net(n),
            other => Self::Refused(other.to_string()),
        }
    }
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
            .map_err(|_| NetError::Timeout)?
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
            Ok(Event::Hosts(_) | Event::Ticket(..)) | Err(_) => {
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
        let handshaker = Arc::new(Handshaker::new(
            host.clone(),
            device,
            host_key,
            &session.export_key,
            session.id,
            record,
        ));
        drop(session.export_key);
        let keys = Arc::new(watch::Sender::new(Keys::Pending));
        let rekey = tokio::spawn(settle_keys(
            handshaker.clone(),
            relay.conn.clone(),
            keys.clone(),
        ));
        let (phase_tx, phase) = tokio::sync::watch::channel(machine.phase().clone());
        let (refusal_tx, refusals) = tokio::sync::mpsc::channel(4);
        let (control, requests) = tokio::sync::mpsc::channel::<ClientToRelay>(4);
        let (link_tx, link) = watch::channel(relay.clone());
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
                handshaker: handshaker.clone(),
                keys: keys.clone(),
                link_tx,
                resume,
                rekey,
            }
            .run(send, recv),
        );
        // The first handshake decides whether the session is usable at all
        // (a changed or impostor key, a host without the code's key).
        let mut settled = keys.subscribe();
        let first = timeout(
            STEP_TIMEOUT * 2,
            settled.wait_for(|k| !matches!(k, Keys::Pending)),
        )
        .await
        .map_err(|_| NetError::Timeout)?
        .map(|k| k.clone());
        match first {
            Ok(Keys::Failed(why)) => {
                relay
                    .conn
                    .close(quinn::VarInt::from_u32(0), b"end-to-end handshake failed");
                return Err(NetError::Local(why).into());
            }
            Ok(Keys::Ready(_)) if pin == Pin::New => pin_new(home, &cfg.pin, host, &host_key)?,
            _ => {}
        }
        Ok(Self {
            host: host.clone(),
            link,
            phase,
            refusals: tokio::sync::Mutex::new(refusals),
            control,
            handshaker,
            keys,
        })
    }

    /// Opens a channel; returns its streams and the size the host announced.
    /// `bulk` marks a copy, which the relay queues behind interactive
    /// channels.
    pub async fn channel(
        &self,
        kind: ChannelKind,
    ) -> Result<(SealedSend, OpenedRecv, Option<u64>), ChannelError> {
        match self.try_channel(kind).await {
            Ok(opened) => Ok(opened),
            Err(Attempt::Failed(e)) => Err(e),
            // The host has no keys for this session (it lost them: a
            // restart we have not heard of yet). New keys for the next
            // channel; this one is not sent again, since the request may
            // have run (a command, an upload) before the stream was reset.
            Err(Attempt::NoKeys) => {
                self.rekey();
                Err(ChannelError::Refused(format!(
                    "host '{}' had lost this session's end-to-end keys; new ones are being \
                     agreed: try again",
                    self.host
                )))
            }
        }
    }

    /// The current connection to the relay.
    pub fn conn(&self) -> quinn::Connection {
        self.link.borrow().conn.clone()
    }

    /// Starts a new handshake, unless one is under way.
    fn rekey(&self) {
        if matches!(*self.keys.borrow(), Keys::Pending) {
            return;
        }
        self.keys.send_replace(Keys::Pending);
        tokio::spawn(settle_keys(
            self.handshaker.clone(),
            self.conn(),
            self.keys.clone(),
        ));
    }

    /// The keys of the current handshake, once it is done.
    async fn epoch(&self) -> Result<Arc<Epoch>, ChannelError> {
        let mut keys = self.keys.subscribe();
        let ready = timeout(STEP_TIMEOUT, keys.wait_for(|k| !matches!(k, Keys::Pending)))
            .await
            .map_err(|_| NetError::Timeout)?
            .map(|k| k.clone());
        match ready {
            Ok(Keys::Ready(epoch)) => Ok(epoch),
            Ok(Keys::Failed(why)) => Err(ChannelError::Refused(why)),
            _ => Err(ChannelError::Refused("the session is over".into())),
        }
    }

    async fn try_channel(
        &self,
        kind: ChannelKind,
    ) -> Result<(SealedSend, OpenedRecv, Option<u64>), Attempt> {
        let epoch = self.epoch().await?;
        let (number, sealer, opener) = epoch.next_channel();
        let bulk = matches!(
            kind,
            ChannelKind::Upload { .. } | ChannelKind::Download { .. }
        );
        let (mut send, mut recv) = self.conn().open_bi().await.map_err(ChannelError::from)?;
        wire::write_frame(&mut send, &ChannelRequest::Channel { number, bulk })
            .await
            .map_err(ChannelError::from)?;
        let mut send = SealedSend::new(send, sealer);
        // Sent at once, before the relay's answer: no extra round trip.
        send.write_frame_padded(&kind)
            .await
            .map_err(ChannelError::from)?;
        let answer = async {
            match wire::read_frame::<Relayed>(&mut recv).await {
                Ok(Some(Relayed::Spliced)) => {}
                Ok(Some(Relayed::Refused(why))) => return Err(ChannelError::Refused(why).into()),
                Ok(_) => return Err(closed_early().into()),
                Err(e) => return Err(Attempt::from_wire(e)),
            }
            let mut recv = OpenedRecv::new(recv, opener);
            match recv.read_frame::<ChannelReply>().await {
                Ok(Some(ChannelReply::Accepted { size })) => Ok((recv, size)),
                Ok(Some(ChannelReply::Refused(why))) => Err(ChannelError::Refused(why).into()),
                Ok(_) => Err(closed_early().into()),
                Err(e) => Err(Attempt::from_wire(e)),
            }
        };
        let (recv, size) = timeout(STEP_TIMEOUT, answer)
            .await
            .map_err(|_| ChannelError::from(NetError::Timeout))??;
        Ok((send, recv, size))
    }

    /// Ends the session and waits (briefly) until the relay has been told,
    /// so the host sees the session end now rather than at a timeout.
    pub async fn close(&self) {
        let link = self.link.borrow().clone();
        link.close(b"done").await;
    }

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

    /// Why the session ended, if it has.
    pub fn end_reason(&self) -> Option<String> {
        match &*self.phase.borrow() {
            Phase::Ended(reason) => Some(reason.clone()),
            _ => None,
        }
    }

    /// Why a channel broke without the relay saying the session ended:
    /// the relay went away, or (the connection still up) the host did.
    fn lost_reason(&self) -> String {
        if let Some(reason) = self.end_reason() {
            return reason;
        }
        match self.conn().close_reason() {
            Some(e) => format!("the connection to the relay was lost ({e})"),
            None => format!(
                "the channel to '{}' broke while the relay still answers: the host's agent stopped or lost its link",
                self.host
            ),
        }
    }

    /// Asks the relay to reboot the host (SPEC R1). Returns once the host
    /// is going down, or with the relay's refusal.
    pub async fn request_reboot(&self) -> Result<(), ChannelError> {
        let mut refusals = self.refusals.lock().await;
        while refusals.try_recv().is_ok() {}
        self.control
            .send(ClientToRelay::Reboot)
            .await
            .map_err(|_| ChannelError::Refused("the session is over".into()))?;
        let mut phase = self.phase.clone();
        tokio::select! {
            refusal = refusals.recv() => Err(ChannelError::Refused(refusal.unwrap_or_else(|| "the session is over".into()))),
            r = phase.wait_for(|p| !matches!(p, Phase::Ready)) => match r.map(|p| p.clone()) {
                Ok(Phase::Ended(why)) => Err(ChannelError::Refused(why)),
                Ok(_) => Ok(()),
                Err(_) => Err(ChannelError::Refused("the session is over".into())),
            },
            _ = tokio::time::sleep(STEP_TIMEOUT) => Err(ChannelError::Net(NetError::Timeout)),
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
            Ok(Ok(Phase::Ended(why))) => return Err(ChannelError::Refused(why)),
            _ => return Err(ChannelError::Refused(self.lost_reason())),
        };
        loop {
            tokio::select! {
                r = phase.wait_for(|p| !matches!(p, Phase::Rebooting { .. })) => {
                    return match r.map(|p| (*p).clone()) {
                        Ok(Phase::Ready) => Ok(started.elapsed()),
                        Ok(Phase::Ended(why)) => Err(ChannelError::Refused(why)),
                        _ => Err(ChannelError::Refused("connection to the relay lost".into())),
                    };
                }
                _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => on_wait(started.elapsed()),
            }
        }
    }
}

/// How long a session whose relay went away tries to resume before it
/// ends, unless [`set_resume_wait`] said otherwise (a relay's heartbeat
/// lapses after 20 s; its hosts are back on another relay within about
/// 12 s).
const RESUME_WAIT: Duration = Duration::from_secs(60);

static RESUME_WAIT_SET: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();

/// Sets how long sessions try to resume (`latchkey --resume-wait`); the
/// first call wins.
pub fn set_resume_wait(wait: Duration) {
    let _ = RESUME_WAIT_SET.set(wait);
}

fn resume_wait() -> Duration {
    RESUME_WAIT_SET.get().copied().unwrap_or(RESUME_WAIT)
}

/// What resuming a session needs.
struct Resume {
    relays: Vec<String>,
    pin: RelayPin,
    device: Keypair,
    user: UserName,
    host: HostName,
}

impl Resume {
    /// Resumes with `ticket`, following a redirect at once and asking again
    /// every second while no relay holds the host or none answers, for up
    /// to [`RESUME_WAIT`]; returns why not.
    async fn run(&self, ticket: &ResumeTicket) -> Result<(net::Control, SessionId), String> {
        let until = tokio::time::Instant::now() + resume_wait();
        let mut target = self.relays.clone();
        // One redirect per round: relays whose records disagree for a
        // moment cannot send the client round in circles.
        let mut followed = false;
        loop {
            let result = net::resume(
                &target,
                &self.pin,
                &self.device,
                &self.user,
                &self.host,
                ticket,
            )
            .await;
            let e = match result {
                Ok(resumed) => return Ok(resumed),
                Err(NetError::Redirected(to))
                    if !followed && tokio::time::Instant::now() < until =>
                {
                    net::check_redirect(&to).map_err(|e| e.to_string())?;
                    target = vec![to];
                    followed = true;
                    continue;
                }
                Err(NetError::Refused(Refusal::HostOffline)) => {
                    NetError::HostOffline(self.host.clone())
                }
                // Spent, refused, or not our relay: asking again cannot help.
                Err(
                    e @ (NetError::Refused(Refusal::NotAllowed(_) | Refusal::UnknownDevice)
                    | NetError::PinMismatch(_)),
                ) => return Err(e.to_string()),
                Err(e) => e,
            };
            if tokio::time::Instant::now() >= until {
                return Err(e.to_string());
            }
            tracing::debug!("resuming the session: {e}; asking again");
            tokio::time::sleep(Duration::from_secs(1)).await;
            target = self.relays.clone();
            followed = false;
        }
    }
}

/// How following the control stream ended.
enum Followed {
    /// The session is over (the relay said so, or broke the rules).
    Over,
    /// The connection to the relay broke.
    Lost,
    /// This client closed the connection (the command is done).
    Closed,
}

/// The task that owns a session's control stream.
struct Follow {
    machine: ClientSession,
    phase_tx: watch::Sender<Phase>,
    refusal_tx: tokio::sync::mpsc::Sender<String>,
    requests: tokio::sync::mpsc::Receiver<ClientToRelay>,
    handshaker: Arc<Handshaker>,
    keys: Arc<watch::Sender<Keys>>,
    link_tx: watch::Sender<net::RelayConn>,
    resume: Resume,
    rekey: tokio::task::JoinHandle<()>,
}

type Frames = latchkey_protocol::quic::FrameReader<RelayToClient>;

impl Follow {
    /// Follows the session, resuming it on another relay (with the latest
    /// ticket) whenever the connection to its relay breaks, until it ends.
    async fn run(mut self, send: quinn::SendStream, recv: quinn::RecvStream) {
        let (mut send, mut frames) = (send, wire::frame_reader::<RelayToClient>(recv));
        let mut ticket: Option<(ResumeTicket, tokio::time::Instant)> = None;
        loop {
            match self.follow(&mut send, &mut frames, &mut ticket).await {
                Followed::Over => {
                    self.publish();
                    return;
                }
                Followed::Closed => {
                    self.machine.connection_lost();
                    self.publish();
                    return;
                }
                Followed::Lost => {}
            }
            let now = tokio::time::Instant::now();
            let t = match ticket.take() {
                Some((t, until))
                    if now < until
                        && self
                            .machine
                            .relay_lost(Instant::now(), resume_wait().as_secs()) =>
                {
                    t
                }
                _ => {
                    self.machine.connection_lost();
                    self.publish();
                    return;
                }
            };
            self.rekey.abort();
            self.keys.send_replace(Keys::Pending);
            self.publish();
            match self.resumed(&t).await {
                Ok((s, f)) => (send, frames) = (s, f),
                Err(why) => {
                    self.machine.end(format!(
                        "the connection to the relay was lost and the session could not be \
                         resumed: {why}"
                    ));
                    self.publish();
                    return;
                }
            }
        }
    }

    fn publish(&self) {
        let _ = self.phase_tx.send(self.machine.phase().clone());
    }

    fn rekey(&mut self) {
        self.rekey.abort();
        self.keys.send_replace(Keys::Pending);
        let conn = self.link_tx.borrow().conn.clone();
        self.rekey = tokio::spawn(settle_keys(
            self.handshaker.clone(),
            conn,
            self.keys.clone(),
        ));
    }

    async fn follow(
        &mut self,
        send: &mut quinn::SendStream,
        frames: &mut Frames,
        ticket: &mut Option<(ResumeTicket, tokio::time::Instant)>,
    ) -> Followed {
        loop {
            tokio::select! {
                Some(request) = self.requests.recv() => {
                    if wire::write_frame(send, &request).await.is_err() {
                        // The frames' side says whether it was closed here.
                        continue;
                    }
                }
                frame = frames.recv() => match frame {
                    Some(Ok(Some(frame))) => match self.machine.on_frame(frame, Instant::now()) {
                        Ok(Event::Phase) => {
                            let back = matches!(self.machine.phase(), Phase::Ready)
                                && !matches!(*self.phase_tx.borrow(), Phase::Ready);
                            if back {
                                self.rekey();
                            }
                            self.publish();
                        }
                        Ok(Event::Refused(r)) => {
                            let _ = self.refusal_tx.try_send(net::refusal_text(&r));
                        }
                        Ok(Event::Ticket(t, valid_secs)) => {
                            let valid = Duration::from_secs(valid_secs);
                            *ticket = Some((t, tokio::time::Instant::now() + valid));
                        }
                        Ok(Event::Hosts(_)) => {}
                        Err(e) => {
                            tracing::warn!("{e}");
                            return Followed::Over;
                        }
                    },
                    // Closed here (the command is done, or the session
                    // refused), or lost.
                    _ => {
                        let closed_here = matches!(
                            self.link_tx.borrow().conn.close_reason(),
                            Some(quinn::ConnectionError::LocallyClosed)
                        );
                        return if closed_here {
                            Followed::Closed
                        } else {
                            Followed::Lost
                        };
                    }
                },
            }
            if matches!(self.machine.phase(), Phase::Ended(_)) {
                return Followed::Over;
            }
        }
    }

    /// Resumes the session with `ticket`: a new connection, the host
    /// introduced again with the key and record the session started with,
    /// the session's new id bound, new end-to-end keys.
    async fn resumed(
        &mut self,
        ticket: &ResumeTicket,
    ) -> Result<(quinn::SendStream, Frames), String> {
        let (control, session) = self.resume.run(ticket).await?;
        let net::Control { relay, send, recv } = control;
        let mut frames = wire::frame_reader::<RelayToClient>(recv);
        let first = timeout(STEP_TIMEOUT, frames.recv())
            .await
            .map_err(|_| "the relay did not introduce the host".to_string())?;
        let expected = (self.handshaker.host_key, self.handshaker.binding().record);
        match first {
            Some(Ok(Some(ready @ RelayToClient::SessionReady { host_key, record })))
                if (host_key, record) == expected =>
            {
                self.machine.resuming();
                self.machine
                    .on_frame(ready, Instant::now())
                    .map_err(|e| e.to_string())?;
            }
            Some(Ok(Some(RelayToClient::Refused(Refusal::HostOffline)))) => {
                return Err(format!("host '{}' went offline", self.resume.host))
            }
            Some(Ok(Some(RelayToClient::Refused(r)))) => return Err(net::refusal_text(&r)),
            _ => {
                relay
                    .conn
                    .close(quinn::VarInt::from_u32(0), b"not the session's host");
                return Err(
                    "the relay introduced another host key or code record; refusing to continue"
                        .into(),
                );
            }
        }
        self.handshaker.rebind(session);
        self.link_tx.send_replace(relay);
        self.rekey();
        self.publish();
        tracing::debug!(host = %self.resume.host, "session resumed on a relay of the cluster");
        Ok((send, frames))
    }
}

/// One try at opening a channel.
enum Attempt {
    /// The host reset the stream: it has no keys for this session.
    NoKeys,
    /// Anything else.
    Failed(ChannelError),
}

impl From<ChannelError> for Attempt {
    fn from(e: ChannelError) -> Self {
        Self::Failed(e)
    }
}

impl Attempt {
    fn from_wire(e: wire::WireError) -> Self {
        match e {
            wire::WireError::Read(quinn::ReadError::Reset(code))
                if code == quinn::VarInt::from_u32(NO_CHANNEL_KEYS) =>
            {
                Self::NoKeys
            }
            e => Self::Failed(e.into()),
        }
    }
}

fn closed_early() -> ChannelError {
    ChannelError::Net(NetError::Handshake(HandshakeError::PeerMisbehaved(
        "channel closed before the host answered",
    )))
}

/// Runs the handshake until it settles, and publishes the keys or why
/// there are none. A failure of the path (the host's link just replaced,
/// the host away a moment) is tried again for up to [`STEP_TIMEOUT`]; a
/// failure of the handshake itself is final.
async fn settle_keys(
    handshaker: Arc<Handshaker>,
    conn: quinn::Connection,
    keys: Arc<watch::Sender<Keys>>,
) {
    let until = tokio::time::Instant::now() + STEP_TIMEOUT;
    let settled = loop {
        match handshaker.run(&conn).await {
            Ok(epoch) => break Keys::Ready(Arc::new(epoch)),
            Err(E2eError::Net(e))
                if tokio::time::Instant::now() < until && conn.close_reason().is_none() =>
            {
                tracing::debug!("end-to-end handshake: {e}; trying again");
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            }
            Err(e) => break Keys::Failed(e.to_string()),
        }
    };
    keys.send_replace(settled);
}
