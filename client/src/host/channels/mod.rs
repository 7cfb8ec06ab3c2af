//! The host's side of session channels: a shell on a PTY, one command,
//! a TCP forward to an allowed target, a file in or out, the desktop the
//! host declares. Each channel is a
//! stream of the session's end-to-end connection ([`super::e2e`]), which
//! the relay forwards without reading: what a channel is for, and
//! everything on it, is read here first, and logged here
//! ([`super::channel_log`]). What is allowed comes from the host's config;
//! everything else is refused with a reason the user sees.
//!
//! This file serves a session's connection and reads each stream's opening,
//! then sends it to its kind's file:
//! `shell.rs`, `exec.rs`, `forward.rs` (forwards and forward checks),
//! `copy.rs` (uploads and downloads) and `desktop.rs` (which desktop). `reply.rs` holds the channel's first
//! answer (accepted or refused) and `hang_up.rs` how a command whose client
//! went away is ended.

mod copy;
mod desktop;
mod exec;
mod forward;
mod hang_up;
mod reply;
mod shell;

use std::{sync::Arc, time::Duration};

use latchkey_protocol::{frame::HostToRelay, session::ChannelKind};
use quinn::{RecvStream, SendStream};
use tokio::{task::JoinSet, time::timeout};
use tracing::{debug, info, warn};

use self::reply::{refuse, ChannelError};
use super::{
    account::SessionAccount,
    channel_log,
    e2e::{SessionUser, Sessions},
    recording::{Line, RecordError, Recorder, Tape},
    rights::UserRights,
};
use crate::{
    channel::{ChannelRecv, ChannelSend},
    config::{Home, HostConfig},
};

/// What every channel task shares: the config, and the sessions.
pub(crate) struct HostSide {
    pub(crate) cfg: Arc<HostConfig>,
    /// Who sessions run as.
    pub(crate) account: SessionAccount,
    pub(crate) home: Home,
    pub(crate) sessions: Sessions,
    /// What each user may do, as the relay said.
    pub(crate) rights: UserRights,
    /// Whose channels are recorded, and where.
    pub(crate) recorder: Recorder,
    /// Set while the reboot command runs: the host is about to go, so a
    /// new channel is refused at once rather than cut when it goes.
    pub(crate) rebooting: std::sync::atomic::AtomicBool,
}

/// How long a client has to say what a new channel is for.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a session's channels have, once its connection is gone, to end
/// what they started (a command is hung up, with its grace) before they are
/// dropped.
const WIND_DOWN: Duration = Duration::from_secs(4);

/// How often a session's channel traffic is looked at, for its grant's
/// idle limit.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// Serves a session's connection, after its handshake: every stream the
/// client opens is one channel. When the connection ends (the session
/// ended, the client left, the host closed it), its channels end what they
/// started. A session with no channel traffic for its grant's idle limit
/// is closed here; the frame returned asks the relay to end it, with why.
pub(crate) async fn serve_session(
    side: Arc<HostSide>,
    who: SessionUser,
    conn: quinn::Connection,
) -> Option<HostToRelay> {
    let mut channels = JoinSet::new();
    let mut idle = IdleClock::new(&conn);
    let mut check = tokio::time::interval(IDLE_CHECK);
    // The relay names a session's user before its connection arrives.
    let rights = side.rights.follow(&who.user);
    let mut ended_here = None;
    loop {
        tokio::select! {
            stream = conn.accept_bi() => match stream {
                Ok((send, recv)) => {
                    channels.spawn(serve(side.clone(), who.clone(), send, recv));
                }
                Err(e) => {
                    debug!(session = %who.session, "session connection ended: {e}");
                    break;
                }
            },
            Some(_) = channels.join_next(), if !channels.is_empty() => {}
            _ = check.tick() => {
                let limit = rights.as_ref().and_then(|r| r.idle_limit());
                if let Some(secs) = limit.filter(|s| idle.quiet_for(&conn) >= Duration::from_secs(u64::from(*s))) {
                    info!(user = %who.user, session = %who.session, idle_secs = secs, "session idle: ending it");
                    conn.close(quinn::VarInt::from_u32(0), b"idle");
                    ended_here = Some(HostToRelay::SessionIdle { session: who.session, idle_secs: secs });
                    break;
                }
            }
        }
    }
    let _ = timeout(WIND_DOWN, async {
        while channels.join_next().await.is_some() {}
    })
    .await;
    ended_here
}

/// When a session's channels last moved a byte either way: QUIC counts
/// the stream frames sent and received, and keep-alives are not among
/// them, so a quiet shell is idle and a command printing now and then is
/// not.
struct IdleClock {
    frames: u64,
    since: tokio::time::Instant,
}

impl IdleClock {
    fn new(conn: &quinn::Connection) -> Self {
        Self {
            frames: Self::stream_frames(conn),
            since: tokio::time::Instant::now(),
        }
    }

    fn stream_frames(conn: &quinn::Connection) -> u64 {
        let stats = conn.stats();
        stats.frame_rx.stream + stats.frame_tx.stream
    }

    /// How long no stream frame went either way.
    fn quiet_for(&mut self, conn: &quinn::Connection) -> Duration {
        let frames = Self::stream_frames(conn);
        if frames != self.frames {
            self.frames = frames;
            self.since = tokio::time::Instant::now();
        }
        self.since.elapsed()
    }
}

/// Serves one channel: reads what it is for, and runs it if allowed.
async fn serve(side: Arc<HostSide>, who: SessionUser, send: SendStream, recv: RecvStream) {
    let send = ChannelSend::new(send);
    let mut recv = ChannelRecv::new(recv);
    let kind = match timeout(REQUEST_TIMEOUT, recv.read_frame_padded::<ChannelKind>()).await {
        Ok(Ok(Some(kind))) => kind,
        _ => return,
    };
    // Keystrokes before bulk, this way too.
    send.set_priority(if kind.is_bulk() { 0 } else { 1 });
    let session = who.session;
    if side.rebooting.load(std::sync::atomic::Ordering::Relaxed) {
        let host = &side.cfg.host;
        let _ = refuse(send, format!("host '{host}' is rebooting")).await;
        return;
    }
    let host = side.cfg.host.as_str();
    // The relay names a session's user and rights before its connection
    // may arrive, so a user it never named here may do nothing.
    let Some(rights) = side.rights.follow(&who.user) else {
        return;
    };
    if let Some((right, why)) = rights.refusal(&kind, host) {
        info!(user = %who.user, %session, kind = kind.name(), "channel refused: not among the user's rights");
        let lacked = format!("the grant does not allow {right}");
        channel_log::refused(
            &side.home,
            session,
            &who.user,
            &who.user_key,
            &kind,
            &lacked,
        );
        let _ = refuse(send, why).await;
        return;
    }
    let cfg = &side.cfg;
    let recording = if side.recorder.records(rights.is_shared()) {
        match Recording::start(&side, &who, &kind) {
            Ok(recording) => recording,
            Err(e) => {
                warn!(user = %who.user, %session, kind = kind.name(), "channel refused: {e}");
                let why = e.to_string();
                channel_log::refused(&side.home, session, &who.user, &who.user_key, &kind, &why);
                let _ = refuse(send, why).await;
                return;
            }
        }
    } else {
        Recording::default()
    };
    let recording_id = recording.id();
    info!(user = %who.user, %session, kind = kind.name(), recording = recording_id.as_deref(), "channel");
    channel_log::record(
        &side.home,
        session,
        &who.user,
        &who.user_key,
        &kind,
        recording_id.as_deref(),
    );
    // A right taken away while the channel runs ends it: the shell and the
    // command say why before they hang up; anything else is cut.
    let lost = rights.lost(kind.clone(), host.to_owned());
    let recorded = recording.is_on();
    let Recording { tape, line } = recording;
    let result = match kind {
        ChannelKind::Shell { term, cols, rows } if cfg.allow_shell => {
            let terminal = shell::Terminal { term, cols, rows };
            shell::shell(&side.account, send, recv, terminal, tape, lost).await
        }
        ChannelKind::Exec { argv } if cfg.allow_exec => {
            exec::exec(&side.account, send, recv, argv, tape, lost).await
        }
        other => {
            let result = tokio::select! {
                result = serve_other(cfg, &side.account, send, recv, other, recorded) => result,
                why = lost => {
                    info!(user = %who.user, %session, reason = %why, "channel ended: its right was taken away");
                    Err(ChannelError::Cut(why))
                }
            };
            if let Some(line) = line {
                line.end(&outcome(&result));
            }
            result
        }
    };
    if let Err(e) = result {
        debug!("channel ended: {e}");
    }
}

/// A channel's recording, when its user's are recorded: a shell's or a
/// command's tape, or a copy's or a forward's line (neither when off).
#[derive(Default)]
struct Recording {
    tape: Tape,
    line: Option<Line>,
}

impl Recording {
    /// Starts recording a channel the host allows: a shell or a command
    /// on a terminal, a copy or a forward as a line (a refused forward
    /// too: its line says why).
    fn start(side: &HostSide, who: &SessionUser, kind: &ChannelKind) -> Result<Self, RecordError> {
        let (cfg, recorder) = (&side.cfg, &side.recorder);
        let (user, session) = (&who.user, who.session);
        let terminal = || recorder.terminal(user, session, kind);
        let line = || recorder.line(user, session, kind).map(Some);
        Ok(match kind {
            ChannelKind::Shell { .. } if cfg.allow_shell => Self {
                tape: terminal()?,
                line: None,
            },
            ChannelKind::Exec { .. } if cfg.allow_exec => Self {
                tape: terminal()?,
                line: None,
            },
            ChannelKind::Upload { .. } | ChannelKind::Download { .. } if cfg.allow_copy => Self {
                tape: Tape::off(),
                line: line()?,
            },
            ChannelKind::Forward { .. } => Self {
                tape: Tape::off(),
                line: line()?,
            },
            _ => Self::default(),
        })
    }

    fn is_on(&self) -> bool {
        self.tape.is_on() || self.line.is_some()
    }

    fn id(&self) -> Option<String> {
        let line = self.line.as_ref().map(|l| l.id().to_owned());
        line.or_else(|| self.tape.id())
    }
}

/// How a copy or a forward ended, for its recording.
fn outcome(result: &Result<(), ChannelError>) -> String {
    match result {
        Ok(()) => "done".into(),
        Err(ChannelError::Refused(why)) => format!("refused: {why}"),
        Err(ChannelError::Cut(why)) => format!("cut: {why}"),
        Err(e) => format!("failed: {e}"),
    }
}

/// Serves the channels that end by being cut: forwards, copies and the
/// desktop question (and refuses what the host does not allow).
async fn serve_other(
    cfg: &HostConfig,
    account: &SessionAccount,
    send: ChannelSend,
    recv: ChannelRecv,
    kind: ChannelKind,
    recorded: bool,
) -> Result<(), ChannelError> {
    match kind {
        ChannelKind::Forward { target } => {
            forward::forward(cfg, send, recv, target, recorded).await
        }
        ChannelKind::ForwardCheck { target } => {
            forward::forward_check(cfg, send, target, recorded).await
        }
        ChannelKind::Upload {
            path,
            name,
            size,
            mode,
        } if cfg.allow_copy => {
            let file = copy::Incoming {
                path: &path,
                name: &name,
                size,
                mode,
            };
            copy::upload(account, send, recv, file, recorded).await
        }
        ChannelKind::Download { path } if cfg.allow_copy => {
            copy::download(account, send, &path, recorded).await
        }
        ChannelKind::Desktop => desktop::desktop(cfg, send, recorded).await,
        other => {
            refuse(
                send,
                format!("{} is not allowed on this host", other.name()),
            )
            .await
        }
    }
}
