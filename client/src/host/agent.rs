//! The host agent (`latchkey host run`): dials out to the relay (hosts sit
//! behind NAT), stays connected with QUIC keep-alives, and reconnects with
//! exponential backoff and jitter whenever the connection ends.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use latchkey_protocol::frame::{HostToRelay, Intent, Refusal, RelayToHost};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::HostError;
use crate::{
    config::Home,
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
        let ended = serve(control, &shutdown).await;
        if shutdown.is_cancelled() {
            return Ok(());
        }
        warn!("disconnected from the relay: {ended}; reconnecting");
    }
}

/// Serves one connection; returns why it ended.
async fn serve(mut control: Control, shutdown: &CancellationToken) -> String {
    loop {
        let frame = tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                control.relay.conn.close(quinn::VarInt::from_u32(0), b"agent stopping");
                return "agent stopping".into();
            }
            f = wire::read_frame::<RelayToHost>(&mut control.recv) => f,
        };
        match frame {
            Ok(Some(RelayToHost::Ping)) => {
                if let Err(e) = wire::write_frame(&mut control.send, &HostToRelay::Pong).await {
                    return e.to_string();
                }
            }
            Ok(Some(RelayToHost::Notice(text))) => {
                info!(notice = %text, "notice from the relay");
            }
            Ok(Some(other)) => warn!(?other, "unexpected frame from the relay"),
            Ok(None) => return "relay closed the control stream".into(),
            Err(e) => return e.to_string(),
        }
    }
}
