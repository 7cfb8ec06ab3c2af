//! The host agent (`latchkey host run`): dials out to the relay (hosts sit
//! behind NAT), stays connected with QUIC keep-alives, and reconnects with
//! exponential backoff and jitter whenever the connection ends.

use std::{sync::Arc, time::Duration};

use backon::{ExponentialBuilder, Retryable};
use latchkey_protocol::{
    frame::{HostToRelay, Intent, Refusal, RelayToHost},
    handshake::Keypair,
    ids::{HostName, RelayPin},
    rights::Right,
    session::DesktopProtocol,
    text::Shown,
};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{
    account::SessionAccount,
    channels::{self, HostSide},
    e2e::{SessionUser, Sessions},
    recording::{Library, Recorder, PRUNE_EVERY},
    rights::UserRights,
    service_manager,
};
use crate::{
    config::{Home, HostConfig, RecordPolicy},
    error::CommandError as HostError,
    net::{self, Control, NetError},
    wire,
};

/// Whether reconnecting could help (a refused key or a wrong pin will not
/// fix itself).
fn worth_retrying(e: &NetError) -> bool {
    !matches!(
        e,
        NetError::PinMismatch(_)
            | NetError::Refused(Refusal::UnknownDevice)
            | NetError::Refused(Refusal::UnsupportedVersion { .. })
    )
}

/// The relays of a host's cluster in the order its agent dials them: from a
/// place its name's hash picks (so a cluster's hosts spread over its relays)
/// round the ring, moving on whenever a relay cannot be reached or a
/// connection ends.
#[derive(Debug)]
pub struct RelayRing {
    relays: Vec<String>,
    at: std::sync::atomic::AtomicUsize,
}

impl RelayRing {
    /// The ring of `relays` (never empty in a saved config) for `host`.
    pub fn new(relays: Vec<String>, host: &HostName) -> Self {
        use sha2::{Digest, Sha256};
        let hash = Sha256::digest(host.as_str().as_bytes());
        let start = u64::from_be_bytes(hash[..8].try_into().unwrap_or_default());
        let n = relays.len().max(1) as u64;
        Self {
            at: ((start % n) as usize).into(),
            relays,
        }
    }

    /// The relay to dial now.
    pub fn current(&self) -> &str {
        let at = self.at.load(std::sync::atomic::Ordering::Relaxed);
        self.relays
            .get(at % self.relays.len().max(1))
            .map_or("", String::as_str)
    }

    /// Moves on to the next relay.
    pub fn advance(&self) {
        self.at.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Connects to a relay of `ring` as `host`, retrying with jittered
/// exponential backoff (200 ms up to 30 s) for as long as retrying could
/// help, on the next relay of the ring each time: after a relay restart
/// thousands of agents dial at once, and the jitter spreads them out.
/// Public so the benchmark's fleets of hosts reconnect exactly as real
/// agents do.
pub async fn dial(
    local: &net::Local,
    ring: &RelayRing,
    pin: &RelayPin,
    key: &Keypair,
    host: &HostName,
    desktop: Option<DesktopProtocol>,
) -> Result<Control, NetError> {
    let intent = Intent::Host {
        host: host.clone(),
        desktop,
    };
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(30))
        .with_jitter()
        .without_max_times();
    let connect = || async {
        let relay = [ring.current().to_owned()];
        let result = net::welcome_from(local, &relay, pin, key, intent.clone()).await;
        if result.is_err() {
            ring.advance();
        }
        result
    };
    connect
        .retry(backoff)
        .when(worth_retrying)
        .notify(|e, delay| warn!("relay unreachable: {e}; retrying in {delay:.1?}"))
        .await
}

/// Runs the agent until `shutdown` fires or the relay refuses this host.
pub async fn run(home: &Home, shutdown: CancellationToken) -> Result<(), HostError> {
    let (cfg, key) = home.host()?;
    let pin = cfg.pin()?;
    let cfg = Arc::new(cfg);
    let account = SessionAccount::resolve(&cfg).map_err(NetError::Local)?;
    #[cfg(unix)]
    super::account::seal_inherited_fds();
    account.check_file_helper().await.map_err(NetError::Local)?;
    info!("sessions run as {account}");
    let side = Arc::new(HostSide {
        cfg: cfg.clone(),
        account,
        home: home.clone(),
        sessions: Sessions::new(home.clone(), key.clone()),
        rights: UserRights::new(cfg.shared_at_most()),
        recorder: Recorder::new(home, &cfg),
        rebooting: false.into(),
    });
    log_recording(&side);
    // Recordings a previous agent left unended are ended first, before
    // any is written; then those past their days go, now and every few
    // minutes after, until the agent stops.
    let settling = side.clone();
    let _ = tokio::task::spawn_blocking(move || settling.recorder.settle()).await;
    let (pruning, stop) = (side.clone(), shutdown.clone());
    tokio::spawn(stop.run_until_cancelled_owned(async move {
        let mut every = tokio::time::interval(PRUNE_EVERY);
        loop {
            every.tick().await;
            let side = pruning.clone();
            let _ = tokio::task::spawn_blocking(move || side.recorder.prune()).await;
        }
    }));
    let ring = RelayRing::new(cfg.relays(), &cfg.host);
    // One socket for the agent's life: its links to relays and its
    // sessions' end-to-end connections, which arrive through those links.
    // Dual stack where the system has IPv6, else IPv4 alone.
    let server = net::peer::server_config()?;
    let device = net::DeviceEndpoint::bind(
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        Some(server.clone()),
    )
    .or_else(|_| {
        net::DeviceEndpoint::bind((std::net::Ipv4Addr::UNSPECIFIED, 0).into(), Some(server))
    })?;
    let local = net::Local::Shared(device.clone());
    service_manager::ready(&format!("connecting to {}", ring.current()));
    service_manager::spawn_watchdog();
    let ran = links(home, &key, &pin, &ring, &local, &device, &side, &shutdown).await;
    service_manager::stopping();
    ran
}

/// Says in the agent's log whose sessions it records, and where; and
/// that sessions running as the agent's own account could change them.
fn log_recording(side: &HostSide) {
    let dir = Library::at(&side.home).dir().display().to_string();
    match side.cfg.record {
        RecordPolicy::Off => info!("sessions are not recorded (record = \"off\")"),
        RecordPolicy::Shared => info!(%dir, "shared users' sessions are recorded"),
        RecordPolicy::All => info!(%dir, "every session is recorded"),
    }
    if side.cfg.record != RecordPolicy::Off && side.account.is_agents_own() {
        warn!(
            "sessions run as the agent's own account, so they can change its recordings and \
             channels.log: run the agent as a service with session_user for a record they cannot"
        );
    }
}

/// The agent's links to its relays, one after another, until it stops or
/// reboots.
#[allow(clippy::too_many_arguments)]
async fn links(
    home: &Home,
    key: &Keypair,
    pin: &RelayPin,
    ring: &RelayRing,
    local: &net::Local,
    device: &net::DeviceEndpoint,
    side: &Arc<HostSide>,
    shutdown: &CancellationToken,
) -> Result<(), HostError> {
    let cfg = &side.cfg;
    // The sessions' tasks outlive a link: a session whose connection is
    // kept goes on when the next link announces it again.
    let mut sessions = JoinSet::new();
    loop {
        let control = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ok(()),
            c = dial(local, ring, pin, key, &cfg.host, cfg.desktop.map(|d| d.protocol)) => c?,
        };
        info!(host = %cfg.host, relay = %ring.current(), "online");
        service_manager::status(&format!("online through {}", ring.current()));
        let ended = serve(home, control, device, side, &mut sessions, shutdown).await;
        if shutdown.is_cancelled() {
            return Ok(());
        }
        match ended {
            Ended::Rebooting => return Ok(()),
            Ended::Lost(why) => {
                // The link's routes went with it: connections wait, unrouted,
                // for their sessions to be announced on the next link.
                side.sessions.detach_all();
                // The relay may be gone: the next of the cluster is tried
                // first (with one relay, the same one again).
                ring.advance();
                warn!("disconnected from the relay: {}; reconnecting", Shown(&why));
                service_manager::status(&format!("reconnecting: {}", Shown(&why)));
            }
            Ended::Refused(why) => {
                side.sessions.end_all();
                warn!("the relay refused this agent: {why}; trying again in {REFUSED_WAIT:?}");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(REFUSED_WAIT) => {}
                }
            }
        }
    }
}

/// Why a connection ended.
enum Ended {
    /// The reboot command ran: the agent exits (the service manager starts
    /// it again when the machine is back).
    Rebooting,
    /// The connection was lost.
    Lost(String),
    /// The relay refused this agent (another agent is connected with this
    /// host's key).
    Refused(String),
}

/// How long an agent the relay refused waits before it asks again.
const REFUSED_WAIT: Duration = Duration::from_secs(30);

impl From<String> for Ended {
    fn from(s: String) -> Self {
        Self::Lost(s)
    }
}

impl From<&str> for Ended {
    fn from(s: &str) -> Self {
        Self::Lost(s.into())
    }
}

/// The longest failure reason sent to the relay (a line of stderr can be
/// long; the user needs its start).
const MAX_REASON: usize = 512;

/// Runs the reboot command, after the ticket is safely on disk and the
/// relay knows we got it (SPEC R2).
async fn reboot(
    home: &Home,
    cfg: &HostConfig,
    ticket: &latchkey_protocol::ids::ResumeTicket,
    send: &mut quinn::SendStream,
) -> Result<(), String> {
    home.save_ticket(&ticket.0)
        .map_err(|e| format!("cannot keep the resume ticket: {e}"))?;
    wire::write_frame(send, &HostToRelay::RebootAck)
        .await
        .map_err(|e| e.to_string())?;
    let Some((program, args)) = cfg.reboot_command.split_first() else {
        return Err("reboot_command is empty".into());
    };
    info!(command = ?cfg.reboot_command, "rebooting");
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(program)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| "the reboot command did not finish in 60 s".to_string())?
    .map_err(|e| format!("cannot run the reboot command '{program}': {e}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let first = stderr.lines().map(str::trim).find(|l| !l.is_empty());
        return Err(match first {
            Some(line) => format!("the reboot command failed ({}): {line}", output.status),
            None => format!("the reboot command failed ({})", output.status),
        });
    }
    Ok(())
}

/// Serves one link to a relay (its control frames) and the end-to-end
/// connections of the sessions it announces, whose tasks go into
/// `sessions`; returns why it ended.
async fn serve(
    home: &Home,
    control: Control,
    device: &net::DeviceEndpoint,
    side: &Arc<HostSide>,
    sessions: &mut JoinSet<Option<HostToRelay>>,
    shutdown: &CancellationToken,
) -> Ended {
    let cfg = &side.cfg;
    let Control {
        relay,
        mut send,
        recv,
    } = control;
    let mut frames = wire::frame_reader::<RelayToHost>(recv);
    if let Some(ticket) = home.ticket() {
        // Back from a reboot: resume the sessions that waited for us.
        let resume = HostToRelay::Resume(latchkey_protocol::ids::ResumeTicket(ticket));
        if let Err(e) = wire::write_frame(&mut send, &resume).await {
            return e.to_string().into();
        }
    }
    let relay_addr = relay.conn.remote_address();
    // Sessions kept from the last link that this one does not announce by
    // then end.
    let unresumed = tokio::time::sleep(super::e2e::CONTINUE_WAIT);
    tokio::pin!(unresumed);
    let mut unresumed_done = false;
    loop {
        tokio::select! {
            biased;
            () = &mut unresumed, if !unresumed_done => {
                unresumed_done = true;
                side.sessions.end_detached();
            }
            _ = shutdown.cancelled() => {
                // The sessions' connections close (their channels cut; first,
                // so that no stream of a task stopped below ends as if
                // complete), and the link is closed out loud, so the relay
                // parks our sessions now (SPEC R5) rather than at its idle
                // timeout; the wait lets both reach the other ends.
                side.sessions.close_all(b"agent stopping");
                sessions.abort_all();
                // The closes go through the relay on the link's route: the
                // link closes once they are out (each closed connection
                // leaves the count when it is done), or after a second.
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    while relay.endpoint.open_connections() > 1 {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                })
                .await;
                relay.conn.close(quinn::VarInt::from_u32(0), b"agent stopping");
                let _ = tokio::time::timeout(Duration::from_secs(1), relay.endpoint.wait_idle()).await;
                return "agent stopping".into();
            }
            incoming = device.endpoint.accept() => match incoming {
                Some(incoming) => {
                    if let Some((who, incoming)) = side.sessions.admit(incoming) {
                        let side = side.clone();
                        sessions.spawn(async move {
                            let conn = side.sessions.handshake(&who, incoming).await?;
                            let ended_here = channels::serve_session(side.clone(), who, conn.clone()).await;
                            side.sessions.finished(&conn);
                            ended_here
                        });
                    }
                }
                None => return "the agent's endpoint closed".into(),
            },
            _ = relay.conn.closed() => {
                return relay
                    .conn
                    .close_reason()
                    .map_or_else(|| "connection closed".into(), |e| e.to_string())
                    .into();
            }
            frame = frames.recv() => match frame {
                Some(Ok(Some(RelayToHost::Ping))) => {
                    if let Err(e) = wire::write_frame(&mut send, &HostToRelay::Pong).await {
                        return e.to_string().into();
                    }
                }
                Some(Ok(Some(RelayToHost::Reboot { session, ticket }))) => {
                    info!(%session, "reboot requested in a session");
                    let host = cfg.host.as_str();
                    let refused = match side.sessions.user_of(session).and_then(|u| side.rights.follow(&u)) {
                        Some(rights) => rights.refusal_of(Right::Reboot, host),
                        None => Some(Right::Reboot.refusal(host)),
                    };
                    if let Some(reason) = refused {
                        info!(%session, "reboot refused: not among the user's rights");
                        let failed = HostToRelay::RebootFailed { session, reason };
                        if let Err(e) = wire::write_frame(&mut send, &failed).await {
                            return e.to_string().into();
                        }
                        continue;
                    }
                    side.rebooting.store(true, std::sync::atomic::Ordering::Relaxed);
                    match reboot(home, cfg, &ticket, &mut send).await {
                        Ok(()) => {
                            relay.conn.close(quinn::VarInt::from_u32(0), b"rebooting");
                            let _ = tokio::time::timeout(Duration::from_secs(1), relay.endpoint.wait_idle()).await;
                            return Ended::Rebooting;
                        }
                        Err(e) => {
                            home.clear_ticket();
                            side.rebooting.store(false, std::sync::atomic::Ordering::Relaxed);
                            warn!("reboot failed: {e}");
                            // The user waits for the answer: tell them why.
                            let reason: String = e.chars().take(MAX_REASON).collect();
                            let failed = HostToRelay::RebootFailed { session, reason };
                            if let Err(e) = wire::write_frame(&mut send, &failed).await {
                                return e.to_string().into();
                            }
                        }
                    }
                }
                Some(Ok(Some(RelayToHost::Resumed))) => {
                    home.clear_ticket();
                    info!("back from the reboot: sessions resumed");
                }
                Some(Ok(Some(RelayToHost::Refused(r)))) if home.ticket().is_some() => {
                    home.clear_ticket();
                    warn!("resume refused: {}", crate::net::refusal_text(&r));
                }
                Some(Ok(Some(RelayToHost::SessionEnded { session }))) => {
                    side.sessions.end(session);
                }
                Some(Ok(Some(RelayToHost::Session { session, continues, user, user_key, record, leg, rights }))) => {
                    side.rights.tell(&user, rights);
                    let who = SessionUser { session, user, user_key, record };
                    let kept = side.sessions.announce(&device.peers, relay_addr, who, leg, continues);
                    if let Err(e) = wire::write_frame(&mut send, &HostToRelay::Routed { session, kept }).await {
                        return e.to_string().into();
                    }
                }
                Some(Ok(Some(RelayToHost::Rights { user, rights }))) => {
                    info!(%user, rights = %rights.rights, "the user's rights changed");
                    side.rights.tell(&user, rights);
                }
                Some(Ok(Some(RelayToHost::Refused(r)))) => {
                    return Ended::Refused(crate::net::refusal_text(&r));
                }
                Some(Ok(Some(RelayToHost::Notice(text)))) => {
                    info!(notice = %Shown(&text), "notice from the relay");
                }
                Some(Ok(Some(other))) => warn!(?other, "unexpected frame from the relay"),
                Some(Ok(None)) | None => return "relay closed the control stream".into(),
                Some(Err(e)) => return e.to_string().into(),
            },
            Some(done) = sessions.join_next(), if !sessions.is_empty() => {
                // A session this host ended (idle): the relay ends it too, and
                // says why. On a later link it is gone from the relay anyway.
                if let Ok(Some(frame)) = done {
                    if let Err(e) = wire::write_frame(&mut send, &frame).await {
                        return e.to_string().into();
                    }
                }
            }
        }
    }
}
