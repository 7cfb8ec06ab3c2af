//! A session on a host, as the user's commands use it: log in, wait until
//! the relay has paired us with the host, run the end-to-end handshake with
//! the host ([`super::e2e`]), then open channels sealed with its keys.
//!
//! This file holds [`Remote`], the session the commands use; `keys.rs` runs
//! the end-to-end handshake and publishes its keys, `resume.rs` follows the
//! session's control stream and resumes the session on another relay when
//! its relay goes away, and `error.rs` says why a channel did not open.

mod error;
mod keys;
mod resume;

use std::{sync::Arc, time::Instant};

use latchkey_protocol::{
    control::{ClientSession, Event},
    frame::{ClientToRelay, Refusal, RelayToClient},
    ids::{AccessCode, HostName},
    session::{ChannelKind, ChannelReply, ChannelRequest, Relayed},
    text::shown,
    HandshakeError,
};
use tokio::{sync::watch, time::timeout};

use self::{
    error::{closed_early, Attempt},
    keys::{settle_keys, Keys},
    resume::{Follow, Resume},
};
use super::{
    e2e::{check_pin, pin_new, Epoch, Handshaker, Pin},
    UserError,
};
use crate::{
    config::Home,
    net::{self, NetError, STEP_TIMEOUT},
    wire::{self, OpenedRecv, SealedSend},
};

pub use self::{error::ChannelError, resume::set_resume_wait};
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
    /// A copy is marked as bulk ([`ChannelKind::is_bulk`]), which the relay
    /// queues behind interactive channels.
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
        let bulk = kind.is_bulk();
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
                Ok(Some(Relayed::Refused(why))) => {
                    return Err(ChannelError::said_by_peer(&why).into())
                }
                Ok(_) => return Err(closed_early().into()),
                Err(e) => return Err(Attempt::from_wire(e)),
            }
            let mut recv = OpenedRecv::new(recv, opener);
            match recv.read_frame::<ChannelReply>().await {
                Ok(Some(ChannelReply::Accepted { size })) => Ok((recv, size)),
                Ok(Some(ChannelReply::Refused(why))) => {
                    Err(ChannelError::said_by_peer(&why).into())
                }
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
            refusal = refusals.recv() => Err(match refusal {
                Some(why) => ChannelError::said_by_peer(&why),
                None => ChannelError::Refused("the session is over".into()),
            }),
            r = phase.wait_for(|p| !matches!(p, Phase::Ready)) => match r.map(|p| p.clone()) {
                Ok(Phase::Ended(why)) => Err(ChannelError::said_by_peer(&why)),
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
