//! `latchkey forward HOST [BIND:]LOCALPORT:TARGET:PORT`: like `ssh -L`. Each
//! local TCP connection gets its own channel (its own QUIC stream), so many
//! connections share one session without blocking each other.

use std::{net::SocketAddr, str::FromStr, sync::Arc};

use latchkey_protocol::session::ChannelKind;
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use super::remote::{ChannelError, Remote};
use crate::channel;

/// A parsed forward specification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForwardSpec {
    /// Local address to listen on (default `127.0.0.1`).
    pub bind: String,
    /// Local port (0 picks one).
    pub local_port: u16,
    /// Target `IP:PORT`, as seen from the host.
    pub target: String,
}

impl FromStr for ForwardSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "invalid forward '{s}': use [BIND:]LOCALPORT:TARGET:PORT, e.g. 5900:127.0.0.1:5900"
            )
        };
        // Split from the right: PORT, TARGET (maybe [v6]), LOCALPORT, BIND.
        let (rest, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let (rest, target_host) = if let Some(stripped) = rest.strip_suffix(']') {
            let open = stripped.rfind('[').ok_or_else(bad)?;
            (
                rest[..open].strip_suffix(':').ok_or_else(bad)?,
                &rest[open..],
            )
        } else {
            rest.rsplit_once(':').ok_or_else(bad)?
        };
        let (bind, local) = match rest.rsplit_once(':') {
            Some((bind, local)) => (bind.trim_matches(['[', ']']).to_string(), local),
            None => ("127.0.0.1".to_string(), rest),
        };
        let local_port = local.parse().map_err(|_| bad())?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        let target = format!("{target_host}:{port}");
        target.parse::<SocketAddr>().map_err(|_| {
            format!("invalid forward target '{target}': give an IP address and port")
        })?;
        Ok(Self {
            bind,
            local_port,
            target,
        })
    }
}

/// Asks the host whether it would forward to `target`, so that a target
/// its `forward_allow` leaves out fails now, with the targets it allows,
/// rather than as a reset of every connection later.
pub async fn check(remote: &Remote, target: &str) -> Result<(), ChannelError> {
    let kind = ChannelKind::ForwardCheck {
        target: target.to_string(),
    };
    match remote.channel(kind).await {
        Ok((mut send, _recv, _)) => {
            let _ = send.finish().await;
            Ok(())
        }
        Err(ChannelError::Refused(why)) => Err(ChannelError::Refused(format!(
            "host '{}': {why}",
            remote.host
        ))),
        // The session itself is gone: nothing could be forwarded.
        Err(e) if remote.relay_gone() => Err(e),
        // The session lives but the check got no answer: a relay or agent
        // from before the check (the relay resets a kind it cannot parse, an
        // agent closes the stream). Each connection is still checked by the
        // host, so forward as before.
        Err(e) => {
            debug!("forward check: {e}");
            warn!("the host did not answer the target check (an agent or relay older than it?); forwarding anyway");
            Ok(())
        }
    }
}

/// Checks the target with the host, then listens and forwards until the
/// session ends; returns the reason.
pub async fn forward(
    remote: Arc<Remote>,
    spec: &ForwardSpec,
    on_listening: impl FnOnce(SocketAddr),
) -> Result<String, ChannelError> {
    check(&remote, &spec.target).await?;
    let listener = TcpListener::bind((spec.bind.as_str(), spec.local_port))
        .await
        .map_err(|e| {
            ChannelError::Refused(format!(
                "cannot listen on {}:{}: {e}",
                spec.bind, spec.local_port
            ))
        })?;
    let local = listener
        .local_addr()
        .map_err(|e| ChannelError::Refused(e.to_string()))?;
    on_listening(local);
    let mut phase = remote.phase.clone();
    loop {
        tokio::select! {
            // During a reboot the listener stays open; connections made
            // meanwhile are refused by the relay, later ones work again.
            _ = phase.wait_for(|p| matches!(p, super::remote::Phase::Ended(_))) => {
                return Ok(remote.end_reason().unwrap_or_default());
            }
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => { warn!("accept failed: {e}"); continue; }
                };
                let remote = remote.clone();
                let target = spec.target.clone();
                tokio::spawn(async move {
                    if let Err(e) = one(&remote, tcp, target).await {
                        warn!(%peer, "forwarded connection refused: {e}");
                    }
                });
            }
        }
    }
}

async fn one(remote: &Remote, tcp: TcpStream, target: String) -> Result<(), ChannelError> {
    tcp.set_nodelay(true).ok();
    let opened = remote.channel(ChannelKind::Forward { target }).await;
    let (mut send, mut recv, _) = opened.inspect_err(|_| {
        // A reset, not a clean close: the application must not take a
        // refused or cut connection for an empty answer.
        let _ = tcp.set_zero_linger();
    })?;
    channel::splice_tcp(tcp, &mut send, &mut recv).await;
    debug!("forwarded connection closed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_like_ssh_dash_l() {
        let s: ForwardSpec = "5900:127.0.0.1:5900".parse().unwrap();
        assert_eq!(
            (s.bind.as_str(), s.local_port, s.target.as_str()),
            ("127.0.0.1", 5900, "127.0.0.1:5900")
        );
        let s: ForwardSpec = "0.0.0.0:8080:10.0.0.5:80".parse().unwrap();
        assert_eq!(
            (s.bind.as_str(), s.local_port, s.target.as_str()),
            ("0.0.0.0", 8080, "10.0.0.5:80")
        );
        let s: ForwardSpec = "2222:[::1]:22".parse().unwrap();
        assert_eq!(s.target, "[::1]:22");
        for bad in ["", "22", "a:b:c", "2222:localhost:22", "99999:127.0.0.1:22"] {
            assert!(bad.parse::<ForwardSpec>().is_err(), "{bad}");
        }
    }
}
