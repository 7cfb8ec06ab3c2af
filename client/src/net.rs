//! Reaching the relay: QUIC with TLS 1.3 pinned to the relay's certificate
//! hash, then the Noise IK handshake (with OPAQUE for logins) on the first
//! stream, bound to this connection by the TLS exporter.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use latchkey_protocol::{
    e2e::ExportKey,
    frame::{Intent, LoginOutcome, Refusal, RelayToClient},
    handshake::{Initiator, InitiatorReply, Keypair},
    ids::{AccessCode, HostName, RelayPin, ResumeTicket, SessionId, UserName},
    HandshakeError,
};
use quinn::{RecvStream, SendStream};
use rand::rngs::OsRng;
use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{CertificateDer, ServerName, UnixTime},
    DigitallySignedStruct, SignatureScheme,
};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use thiserror::Error;
use tokio::time::timeout;

use crate::wire::{self, WireError};
use latchkey_protocol::close;

/// ALPN of Latchkey 1 (the relay's must match).
const ALPN: &[u8] = b"latchkey/1";
/// The name in the relay's certificate.
const SERVER_NAME: &str = "latchkey-relay";
/// TLS exporter label for the Noise prologue (the relay uses the same).
const EXPORTER_LABEL: &[u8] = b"EXPORTER-latchkey/1 channel binding";
/// How long to wait for the relay at each step.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the QUIC handshake may take. The relay lets a connection wait
/// at most 5 s for a handshake place and then 3 s for message 1 (counted
/// from when its packets reach the relay, so the client's 8 s also covers
/// the path's delay and a Retry's round trip). In every 5,000-host storm a
/// few agents got no answer to their handshake at all and, with
/// [`STEP_TIMEOUT`], waited 15 s before trying again (the tail, issue 16;
/// the cause is not known: no datagram was dropped, and it happened with
/// the relay's message-1 deadline raised to 10 s too).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(8);

/// Errors reaching or authenticating to the relay. The messages say what
/// happened and what to do (SPEC B4), without secrets.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum NetError {
    /// The relay address does not resolve.
    #[error("cannot resolve relay address '{0}'")]
    Resolve(String),
    /// No QUIC connection.
    #[error("cannot reach the relay at {addr}: {why}")]
    Unreachable {
        /// The relay.
        addr: String,
        /// Why.
        why: String,
    },
    /// The relay's certificate is not the pinned one.
    #[error("the relay at {0} is not the relay this device enrolled with (its certificate does not match the pin); refusing to continue")]
    PinMismatch(String),
    /// The relay took too long.
    #[error("the relay did not answer in time")]
    Timeout,
    /// The relay closed the connection because this device's handshake
    /// took longer than it allows.
    #[error("the relay gave up waiting for this device's handshake (a slow or lossy network?); try again")]
    RelayGaveUp,
    /// The connection broke.
    #[error("connection to the relay lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// Bytes on a stream broke the rules.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The handshake failed (for a pinned relay this means it is not the
    /// relay we enrolled with, or the connection was tampered with).
    #[error("handshake with the relay failed: {0}")]
    Handshake(#[from] HandshakeError),
    /// The relay refused.
    #[error("{}", refusal_text(.0))]
    Refused(Refusal),
    /// Wrong access code (or, indistinguishably, no access).
    #[error("wrong access code for host '{0}' (or you have no access to it); codes are never retried automatically")]
    WrongCode(HostName),
    /// The host is locked.
    #[error("host '{0}' is locked: ask your admin to unlock it")]
    Locked(HostName),
    /// The host's agent is not connected.
    #[error("host '{0}' is offline: its agent is not connected to the relay (is `latchkey host run` running there?)")]
    HostOffline(HostName),
    /// A local problem (socket, TLS setup).
    #[error("{0}")]
    Local(String),
    /// The host's agent is on another relay of the cluster, at this
    /// address ([`login`] follows it once).
    #[error("the host is on the relay at {0}")]
    Redirected(String),
    /// The relay of the cluster that holds the host could not be reached.
    #[error("host '{host}' is on the relay at {relay}, which could not be reached ({why}); if that relay just stopped, its host moves to another within seconds: try again")]
    HostsRelayUnreachable {
        /// The host.
        host: HostName,
        /// Where its agent is, as the relays record it.
        relay: String,
        /// Why it could not be reached.
        why: String,
    },
    /// Sent on from the relay the login was sent to: the host's agent is
    /// moving between relays.
    #[error("host '{0}' is moving between relays (its agent reconnected elsewhere): try again in a moment")]
    HostMoving(HostName),
}

/// Words for a refusal.
pub fn refusal_text(r: &Refusal) -> String {
    match r {
        Refusal::UnsupportedVersion { supported } => {
            format!("the relay speaks protocol version {supported}; update latchkey")
        }
        Refusal::UnknownDevice => {
            "the relay does not know this device: enroll it again with a new invite".into()
        }
        Refusal::InvalidToken => {
            "the invite token is unknown, already used or expired: ask your admin for a new one"
                .into()
        }
        Refusal::RateLimited => {
            "too many attempts from this address: wait a minute and try again".into()
        }
        Refusal::Busy => "the relay is busy (or other access-code attempts on this host are still being decided): try again in a moment".into(),
        Refusal::NotAllowed(why) => why.clone(),
        _ => "the relay refused the request".into(),
    }
}

/// Checks that the relay's certificate is the pinned one, and that the
/// relay proves it holds the certificate's key.
#[derive(Debug)]
struct PinnedCert {
    sha256: [u8; 32],
    provider: Arc<CryptoProvider>,
    mismatch: Arc<AtomicBool>,
}

impl ServerCertVerifier for PinnedCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if bool::from(got.ct_eq(&self.sha256)) {
            Ok(ServerCertVerified::assertion())
        } else {
            self.mismatch.store(true, Ordering::Relaxed);
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // TLS 1.2 is not offered.
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// How soon a connection gives its relay up when nothing arrives from it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Liveness {
    /// One-off requests (a host list, an enrolment) ride out 30 s of
    /// silence (a network change).
    #[default]
    Patient,
    /// Long-lived links, a host agent's and a session's, give up after
    /// 10 s, so a host or a session whose relay died moves to another relay
    /// of its cluster within seconds (keep-alives every 2 s keep a live one
    /// open; a session resumes without the code).
    Watchful,
}

/// Transport settings of client and host connections: keep-alives well
/// inside the idle timeout.
fn transport_config(liveness: Liveness) -> quinn::TransportConfig {
    let (idle, keep_alive) = match liveness {
        Liveness::Patient => (Duration::from_secs(30), Duration::from_secs(5)),
        Liveness::Watchful => (Duration::from_secs(10), Duration::from_secs(2)),
    };
    let mut t = wire::transport_config(idle, keep_alive);
    // quinn resends an unanswered first packet after about 3 × this
    // estimate, doubling each time: with 100 ms (not RFC 9002's 333 ms) a
    // lossy path gets five tries within [`CONNECT_TIMEOUT`] instead of
    // three. On paths slower than about 300 ms round trip it costs one
    // needless 1,200-byte resend per connection.
    t.initial_rtt(Duration::from_millis(100));
    t
}

/// A QUIC connection to the relay (and the endpoint that drives it).
#[derive(Clone, Debug)]
pub struct RelayConn {
    /// The connection.
    pub conn: quinn::Connection,
    /// Kept alive as long as the connection is used.
    pub endpoint: quinn::Endpoint,
}

impl RelayConn {
    /// Closes the connection and waits (at most 1 s) until the close is
    /// sent, so the relay lets go of it now rather than at its idle timeout.
    pub async fn close(&self, reason: &[u8]) {
        self.conn.close(quinn::VarInt::from_u32(0), reason);
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }
}

/// Opens a QUIC connection to `relay`, checking the pinned certificate.
pub async fn connect(relay: &str, pin: &RelayPin) -> Result<RelayConn, NetError> {
    connect_from(&Local::Any, relay, pin).await
}

/// A client endpoint on a socket with the larger UDP buffers of
/// [`wire::udp_socket`], for many connections on one endpoint (the
/// benchmark's fleets). A single peer keeps the kernel's default buffers:
/// measured, 4 MiB ones let a bulk transfer queue milliseconds of packets
/// in front of an interactive session's (p50 round trip under load
/// 0.6 ms with the default, 3.2 ms with 4 MiB).
pub fn udp_endpoint(bind: SocketAddr) -> std::io::Result<quinn::Endpoint> {
    let (socket, _) = wire::udp_socket(bind, wire::UDP_BUFFER_BYTES)?;
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        socket,
        Arc::new(quinn::TokioRuntime),
    )
}

/// Where a connection's packets leave from.
#[derive(Clone, Debug, Default)]
pub enum Local {
    /// A new UDP socket on any address (what every command does).
    #[default]
    Any,
    /// A new UDP socket on this address (tests use other loopback
    /// addresses to play other sources).
    Bind(SocketAddr),
    /// A shared endpoint: many connections on one socket (benchmarks run
    /// thousands of lightweight agents in one process).
    Shared(quinn::Endpoint),
}

/// [`connect`] from a chosen local socket.
pub async fn connect_from(
    local: &Local,
    relay: &str,
    pin: &RelayPin,
) -> Result<RelayConn, NetError> {
    connect_with(local, relay, pin, Liveness::Patient).await
}

/// [`connect_from`] with the given [`Liveness`].
pub async fn connect_with(
    local: &Local,
    relay: &str,
    pin: &RelayPin,
    liveness: Liveness,
) -> Result<RelayConn, NetError> {
    let addr: SocketAddr = tokio::net::lookup_host(relay)
        .await
        .map_err(|_| NetError::Resolve(relay.into()))?
        .next()
        .ok_or_else(|| NetError::Resolve(relay.into()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mismatch = Arc::new(AtomicBool::new(false));
    let verifier = PinnedCert {
        sha256: pin.cert_sha256,
        provider: provider.clone(),
        mismatch: mismatch.clone(),
    };
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| NetError::Local(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| NetError::Local(e.to_string()))?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    client.transport_config(Arc::new(transport_config(liveness)));
    let endpoint = match local {
        Local::Shared(endpoint) => endpoint.clone(),
        Local::Any | Local::Bind(_) => {
            let bind = match local {
                Local::Bind(addr) => *addr,
                _ if addr.is_ipv4() => ([0, 0, 0, 0], 0).into(),
                _ => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
            };
            quinn::Endpoint::client(bind)
                .map_err(|e| NetError::Local(format!("UDP socket: {e}")))?
        }
    };
    let connecting = endpoint
        .connect_with(client, addr, SERVER_NAME)
        .map_err(|e| NetError::Local(e.to_string()))?;
    let conn = match timeout(CONNECT_TIMEOUT, connecting).await {
        Err(_) => return Err(NetError::Timeout),
        Ok(Err(_)) if mismatch.load(Ordering::Relaxed) => {
            return Err(NetError::PinMismatch(relay.into()))
        }
        Ok(Err(e)) if relay_gave_up(&e) => return Err(NetError::RelayGaveUp),
        Ok(Err(e)) => {
            return Err(NetError::Unreachable {
                addr: relay.into(),
                why: e.to_string(),
            })
        }
        Ok(Ok(conn)) => conn,
    };
    Ok(RelayConn { conn, endpoint })
}

/// How long a connection attempt to one relay of a cluster runs alone
/// before the next relay is tried beside it (as Happy Eyeballs does for
/// addresses): a dead relay costs this, not a whole connect timeout.
const NEXT_RELAY_AFTER: Duration = Duration::from_millis(750);

/// The longest relay address a redirect may name (a DNS name and a port).
const MAX_RELAY_ADDR: usize = 260;

/// Checks the address a relay redirected us to before dialling it (the
/// pin decides whether it is trusted; this only keeps nonsense out).
pub fn check_redirect(to: &str) -> Result<(), NetError> {
    if to.is_empty() || to.len() > MAX_RELAY_ADDR || to.chars().any(char::is_control) {
        return Err(NetError::Handshake(HandshakeError::PeerMisbehaved(
            "redirected to an invalid relay address",
        )));
    }
    Ok(())
}

/// Opens a QUIC connection to the first of `relays` (the relays of one
/// cluster, which share a pin) that answers, trying them in order, each
/// [`NEXT_RELAY_AFTER`] after the one before while those still try. Returns
/// the connection and the relay's address. A pin mismatch stops the search:
/// it is never a reason to try another relay.
pub async fn connect_any(
    local: &Local,
    relays: &[String],
    pin: &RelayPin,
    liveness: Liveness,
) -> Result<(RelayConn, String), NetError> {
    let Some(first) = relays.first() else {
        return Err(NetError::Local("no relay address is configured".into()));
    };
    if relays.len() == 1 {
        return Ok((
            connect_with(local, first, pin, liveness).await?,
            first.clone(),
        ));
    }
    let mut tries: tokio::task::JoinSet<(usize, Result<RelayConn, NetError>)> =
        tokio::task::JoinSet::new();
    let mut next = relays.iter().enumerate();
    let mut first_error = None;
    let mut stagger = Box::pin(tokio::time::sleep(Duration::ZERO));
    loop {
        tokio::select! {
            biased;
            Some(done) = tries.join_next(), if !tries.is_empty() => {
                let Ok((i, result)) = done else { continue };
                match result {
                    Ok(conn) => return Ok((conn, relays[i].clone())),
                    Err(e @ NetError::PinMismatch(_)) => return Err(e),
                    Err(e) => {
                        first_error.get_or_insert((i, e));
                        // Its turn is over: the next one starts now.
                        stagger.as_mut().reset(tokio::time::Instant::now());
                    }
                }
            }
            () = &mut stagger, if next.len() > 0 => {
                if let Some((i, relay)) = next.next() {
                    let (local, relay, pin) = (local.clone(), relay.clone(), *pin);
                    tries.spawn(async move {
                        (i, connect_with(&local, &relay, &pin, liveness).await)
                    });
                }
                stagger.as_mut().reset(tokio::time::Instant::now() + NEXT_RELAY_AFTER);
            }
            else => break,
        }
    }
    Err(first_error
        .map(|(_, e)| e)
        .unwrap_or_else(|| NetError::Local("no relay could be tried".into())))
}

/// The Noise prologue binding for this connection.
pub fn channel_binding(conn: &quinn::Connection) -> Result<[u8; 32], NetError> {
    let mut out = [0u8; 32];
    conn.export_keying_material(&mut out, EXPORTER_LABEL, b"")
        .map_err(|_| NetError::Local("cannot export TLS keying material".into()))?;
    Ok(out)
}

/// An authenticated connection: the control stream follows the handshake.
pub struct Control {
    /// The QUIC connection.
    pub relay: RelayConn,
    /// Control stream, relay-bound.
    pub send: SendStream,
    /// Control stream, from the relay.
    pub recv: RecvStream,
}

/// Whether the relay closed a connection because its handshake took too
/// long: with its timeout code, or, before the QUIC handshake is done,
/// with the bare APPLICATION_ERROR that QUIC sends instead of an
/// application's code at that stage (RFC 9000 §10.2.3), which the relay
/// sends only when it stops waiting.
fn relay_gave_up(e: &quinn::ConnectionError) -> bool {
    match e {
        quinn::ConnectionError::ApplicationClosed(c) => c.error_code == close::TIMEOUT,
        quinn::ConnectionError::ConnectionClosed(c) => {
            c.error_code == quinn::TransportErrorCode::APPLICATION_ERROR
        }
        _ => false,
    }
}

async fn step<T>(
    f: impl std::future::Future<Output = Result<T, WireError>>,
) -> Result<T, NetError> {
    timeout(STEP_TIMEOUT, f)
        .await
        .map_err(|_| NetError::Timeout)?
        .map_err(|e| match e {
            WireError::Read(quinn::ReadError::ConnectionLost(c))
            | WireError::Write(quinn::WriteError::ConnectionLost(c))
                if relay_gave_up(&c) =>
            {
                NetError::RelayGaveUp
            }
            e => NetError::from(e),
        })
}

/// Runs a non-login handshake with the first of `relays` that answers;
/// returns the control stream and the reply.
pub async fn hello(
    relays: &[String],
    pin: &RelayPin,
    device: &Keypair,
    intent: Intent,
) -> Result<(Control, InitiatorReply), NetError> {
    hello_from(&Local::Any, relays, pin, device, intent).await
}

/// [`hello`] from a chosen local socket.
pub async fn hello_from(
    local: &Local,
    relays: &[String],
    pin: &RelayPin,
    device: &Keypair,
    intent: Intent,
) -> Result<(Control, InitiatorReply), NetError> {
    // Only long-lived links need to notice a dead relay fast.
    let liveness = match intent {
        Intent::Host { .. } | Intent::Resume { .. } => Liveness::Watchful,
        _ => Liveness::Patient,
    };
    let (rc, _) = connect_any(local, relays, pin, liveness).await?;
    let binding = channel_binding(&rc.conn)?;
    let (mut send, mut recv) = rc.conn.open_bi().await?;
    let (init, msg1) = Initiator::start(&mut OsRng, device, &pin.noise_key, &binding, intent)?;
    step(wire::write_message(&mut send, &msg1)).await?;
    let msg2 = step(wire::read_message(&mut recv)).await?;
    let reply = init.read_msg2(&mut OsRng, &msg2, None)?;
    Ok((
        Control {
            relay: rc,
            send,
            recv,
        },
        reply,
    ))
}

/// Opens a device connection that must be welcomed (host agent, host
/// admin, user requests).
pub async fn welcome(
    relays: &[String],
    pin: &RelayPin,
    device: &Keypair,
    intent: Intent,
) -> Result<Control, NetError> {
    welcome_from(&Local::Any, relays, pin, device, intent).await
}

/// [`welcome`] from a chosen local socket.
pub async fn welcome_from(
    local: &Local,
    relays: &[String],
    pin: &RelayPin,
    device: &Keypair,
    intent: Intent,
) -> Result<Control, NetError> {
    let (control, reply) = hello_from(local, relays, pin, device, intent).await?;
    match reply {
        InitiatorReply::Welcome { .. } => Ok(control),
        InitiatorReply::Refused(r) => Err(NetError::Refused(r)),
        _ => Err(NetError::Handshake(HandshakeError::PeerMisbehaved(
            "unexpected reply",
        ))),
    }
}

/// Resumes a session whose relay went away, with its latest `ticket`, on
/// the first of `relays` that answers; returns the control stream and the
/// session's new id. [`NetError::Redirected`] names the relay that holds
/// the host; [`Refusal::HostOffline`] means no relay does yet (the ticket
/// is not spent: ask again).
pub async fn resume(
    relays: &[String],
    pin: &RelayPin,
    device: &Keypair,
    user: &UserName,
    host: &HostName,
    ticket: &ResumeTicket,
) -> Result<(Control, SessionId), NetError> {
    let intent = Intent::Resume {
        user: user.clone(),
        host: host.clone(),
        ticket: ticket.clone(),
    };
    let (mut control, reply) = hello_from(&Local::Any, relays, pin, device, intent).await?;
    match reply {
        InitiatorReply::Welcome { .. } => {}
        InitiatorReply::Redirect { relay } => {
            control
                .relay
                .conn
                .close(quinn::VarInt::from_u32(0), b"redirected");
            return Err(NetError::Redirected(relay));
        }
        InitiatorReply::Refused(r) => return Err(NetError::Refused(r)),
        _ => {
            return Err(NetError::Handshake(HandshakeError::PeerMisbehaved(
                "unexpected reply to a resume",
            )))
        }
    }
    match step(wire::read_frame::<RelayToClient>(&mut control.recv)).await? {
        Some(RelayToClient::Resumed { session }) => Ok((control, session)),
        _ => Err(NetError::Handshake(HandshakeError::PeerMisbehaved(
            "a resumed session did not say its id",
        ))),
    }
}

/// An open session with a host.
pub struct Session {
    /// The session id the relay gave.
    pub id: SessionId,
    /// The connection and control stream.
    pub control: Control,
    /// OPAQUE's export key from the login: the session's end-to-end psk
    /// comes from it (`latchkey_protocol::e2e`).
    pub export_key: ExportKey,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Session({})", self.id)
    }
}

/// Logs in to `host` with the access code (SPEC A1-A3), on the first of
/// `relays` that answers. Key stretching runs on a blocking thread. The
/// code is tried once; a wrong code is an error, never retried.
pub async fn login(
    relays: &[String],
    pin: &RelayPin,
    device: &Keypair,
    user: &UserName,
    host: &HostName,
    code: AccessCode,
) -> Result<Session, NetError> {
    login_from(&Local::Any, relays, pin, device, user, host, code).await
}

/// [`login`] from a chosen local socket. A relay that holds no agent for
/// the host sends the login to the relay of its cluster that does, before
/// anything is tried; that redirect is followed once.
pub async fn login_from(
    local: &Local,
    relays: &[String],
    pin: &RelayPin,
    device: &Keypair,
    user: &UserName,
    host: &HostName,
    code: AccessCode,
) -> Result<Session, NetError> {
    match login_on(local, relays, pin, device, user, host, code.clone()).await {
        Err(NetError::Redirected(to)) => {
            check_redirect(&to)?;
            match login_on(
                local,
                std::slice::from_ref(&to),
                pin,
                device,
                user,
                host,
                code,
            )
            .await
            {
                Err(NetError::Redirected(_)) => Err(NetError::HostMoving(host.clone())),
                Err(
                    e @ (NetError::Timeout
                    | NetError::Unreachable { .. }
                    | NetError::RelayGaveUp
                    | NetError::Resolve(_)),
                ) => Err(NetError::HostsRelayUnreachable {
                    host: host.clone(),
                    relay: to,
                    why: e.to_string(),
                }),
                other => other,
            }
        }
        other => other,
    }
}

/// A login on the first of `relays` that answers. A "busy" answer (other
/// attempts on the host still being decided) spends nothing, so it is tried
/// again a few times, with jittered backoff, for up to about ten seconds.
async fn login_on(
    local: &Local,
    relays: &[String],
    pin: &RelayPin,
    device: &Keypair,
    user: &UserName,
    host: &HostName,
    code: AccessCode,
) -> Result<Session, NetError> {
    use backon::{ExponentialBuilder, Retryable};
    let backoff = ExponentialBuilder::default()
        .with_min_delay(std::time::Duration::from_millis(100))
        .with_max_delay(std::time::Duration::from_secs(2))
        .with_jitter()
        .with_max_times(8);
    let attempt = || login_once(local, relays, pin, device, user, host, code.clone());
    attempt
        .retry(backoff)
        .when(|e| matches!(e, NetError::Refused(Refusal::Busy)))
        .await
}

/// One login, without retrying.
async fn login_once(
    local: &Local,
    relays: &[String],
    pin: &RelayPin,
    device: &Keypair,
    user: &UserName,
    host: &HostName,
    code: AccessCode,
) -> Result<Session, NetError> {
    let (rc, _) = connect_any(local, relays, pin, Liveness::Watchful).await?;
    let binding = channel_binding(&rc.conn)?;
    let (mut send, mut recv) = rc.conn.open_bi().await?;
    let (init, msg1) = Initiator::start_login(
        &mut OsRng,
        device,
        &pin.noise_key,
        &binding,
        user.clone(),
        host.clone(),
        &code,
    )?;
    step(wire::write_message(&mut send, &msg1)).await?;
    let msg2 = step(wire::read_message(&mut recv)).await?;
    let reply = tokio::task::spawn_blocking(move || init.read_msg2(&mut OsRng, &msg2, Some(&code)))
        .await
        .map_err(|_| NetError::Local("key stretching failed".into()))??;
    match reply {
        InitiatorReply::SendKe3 { msg3, awaiting } => {
            step(wire::write_message(&mut send, &msg3)).await?;
            let msg4 = step(wire::read_message(&mut recv)).await?;
            match awaiting.read_outcome(&msg4)? {
                (LoginOutcome::Accepted { session }, Some(export_key)) => Ok(Session {
                    id: session,
                    control: Control {
                        relay: rc,
                        send,
                        recv,
                    },
                    export_key,
                }),
                (LoginOutcome::Accepted { .. }, None) => Err(NetError::Handshake(
                    HandshakeError::PeerMisbehaved("accepted a login that did not check out"),
                )),
                (outcome, _) => match outcome {
                    LoginOutcome::Locked => Err(NetError::Locked(host.clone())),
                    LoginOutcome::Refused(r) => Err(NetError::Refused(r)),
                    _ => Err(NetError::WrongCode(host.clone())),
                },
            }
        }
        InitiatorReply::WrongCode { abort, awaiting } => {
            // Tell the relay at once and wait until it has the failure on
            // record, so what the user does next sees the counter as it is.
            let _ = step(wire::write_message(&mut send, &abort)).await;
            if let Ok(msg4) = step(wire::read_message(&mut recv)).await {
                let _ = awaiting.read_outcome(&msg4);
            }
            rc.conn.close(quinn::VarInt::from_u32(0), b"wrong code");
            Err(NetError::WrongCode(host.clone()))
        }
        InitiatorReply::Locked => Err(NetError::Locked(host.clone())),
        InitiatorReply::Refused(r) => Err(NetError::Refused(r)),
        InitiatorReply::Redirect { relay } => {
            rc.conn.close(quinn::VarInt::from_u32(0), b"redirected");
            Err(NetError::Redirected(relay))
        }
        _ => Err(NetError::Handshake(HandshakeError::PeerMisbehaved(
            "unexpected reply",
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app_close(code: quinn::VarInt) -> quinn::ConnectionError {
        quinn::ConnectionError::ApplicationClosed(quinn::ApplicationClose {
            error_code: code,
            reason: b"handshake timeout"[..].into(),
        })
    }

    #[test]
    fn the_relays_handshake_timeout_reads_as_the_relay_giving_up() {
        assert!(relay_gave_up(&app_close(close::TIMEOUT)));
        // Before the QUIC handshake is done the code arrives as a bare
        // APPLICATION_ERROR.
        assert!(relay_gave_up(&quinn::ConnectionError::ConnectionClosed(
            quinn::ConnectionClose {
                error_code: quinn::TransportErrorCode::APPLICATION_ERROR,
                frame_type: None,
                reason: Default::default(),
            }
        )));
        for other in [close::SHUTDOWN, close::PROTOCOL, close::RATE_LIMITED] {
            assert!(!relay_gave_up(&app_close(other)));
        }
        assert!(!relay_gave_up(&quinn::ConnectionError::TimedOut));
        assert!(!relay_gave_up(&quinn::ConnectionError::ConnectionClosed(
            quinn::ConnectionClose {
                error_code: quinn::TransportErrorCode::PROTOCOL_VIOLATION,
                frame_type: None,
                reason: Default::default(),
            }
        )));
        let err = NetError::RelayGaveUp.to_string();
        assert!(
            err.contains("gave up") && err.contains("try again"),
            "{err}"
        );
    }
}
