//! The host agent (`latchkey host run`): dials out to the relay (hosts sit
//! behind NAT), stays connected with QUIC keep-alives, and reconnects with
//! exponential backoff and jitter whenever the connection ends.

use std::{sync::Arc, time::Duration};

use backon::{ExponentialBuilder, Retryable};
use latchkey_protocol::frame::{HostToRelay, Intent, Refusal, RelayToHost};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{channels, HostError};
use crate::{
    config::{Home, HostConfig},
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

/// Runs the agent until `shutdown` fires or the relay refuses this host.
pub async fn run(home: &Home, shutdown: CancellationToken) -> Result<(), HostError> {
    let (cfg, key) = home.host()?;
    let pin = cfg.pin()?;
    let cfg = Arc::new(cfg);
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(30))
        .with_jitter()
        .without_max_times();
    loop {
        let connect = || {
            net::welcome(
                &cfg.relay,
                &pin,
                &key,
                Intent::Host {
                    host: cfg.host.clone(),
                },
            )
        };
        let control = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ok(()),
            c = connect
                .retry(backoff)
                .when(worth_retrying)
                .notify(|e, delay| warn!("relay unreachable: {e}; retrying in {delay:.1?}")) => c?,
        };
        info!(host = %cfg.host, relay = %cfg.relay, "online");
        let ended = serve(control, cfg.clone(), &shutdown).await;
        if shutdown.is_cancelled() {
            return Ok(());
        }
        warn!("disconnected from the relay: {ended}; reconnecting");
    }
}

/// Serves one connection (control frames and channel streams); returns
/// why it ended. Channels die with the connection (their processes are
/// killed on drop).
async fn serve(control: Control, cfg: Arc<HostConfig>, shutdown: &CancellationToken) -> String {
    let Control {
        relay,
        mut send,
        recv,
    } = control;
    let mut frames = wire::frame_reader::<RelayToHost>(recv);
    let mut channels = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                relay.conn.close(quinn::VarInt::from_u32(0), b"agent stopping");
                return "agent stopping".into();
            }
            stream = relay.conn.accept_bi() => match stream {
                Ok((s, r)) => {
                    channels.spawn(channels::serve(cfg.clone(), s, r));
                }
                Err(e) => return e.to_string(),
            },
            frame = frames.recv() => match frame {
                Some(Ok(Some(RelayToHost::Ping))) => {
                    if let Err(e) = wire::write_frame(&mut send, &HostToRelay::Pong).await {
                        return e.to_string();
                    }
                }
                Some(Ok(Some(RelayToHost::Notice(text)))) => {
                    info!(notice = %text, "notice from the relay");
                }
                Some(Ok(Some(other))) => warn!(?other, "unexpected frame from the relay"),
                Some(Ok(None)) | None => return "relay closed the control stream".into(),
                Some(Err(e)) => return e.to_string(),
            },
            Some(_) = channels.join_next(), if !channels.is_empty() => {}
        }
    }
}
