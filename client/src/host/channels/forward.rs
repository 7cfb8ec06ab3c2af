//! Forward channels: a TCP connection from the host to a target its
//! config allows (`forward_allow`), spliced to the channel; and the check,
//! answered from the config alone, that `latchkey forward` makes when it
//! starts.

use std::{net::SocketAddr, time::Duration};

use tokio::time::timeout;

use super::reply::{accept, refuse, ChannelError};
use crate::{
    channel::{self, ChannelRecv, ChannelSend},
    config::HostConfig,
};

/// The address to forward to if `forward_allow` permits `target`, else
/// the refusal the user sees: the target and every target that is allowed
/// (entries that are not `IP:PORT` permit nothing, so they are not listed).
fn allowed_target(cfg: &HostConfig, target: &str) -> Result<SocketAddr, String> {
    let allowed = cfg.allowed_targets();
    match target.parse::<SocketAddr>() {
        Ok(addr) if allowed.contains(&addr) => Ok(addr),
        _ if allowed.is_empty() => Err(format!(
            "forwarding to {target} is not allowed on this host; it allows no targets"
        )),
        _ => {
            let list: Vec<String> = allowed.iter().map(ToString::to_string).collect();
            Err(format!(
                "forwarding to {target} is not allowed on this host; it allows: {}",
                list.join(", ")
            ))
        }
    }
}

/// Answers a forward check from the config alone: nothing is connected, so
/// a check never reaches (or wakes) the target.
pub(super) async fn forward_check(
    cfg: &HostConfig,
    mut send: ChannelSend,
    target: String,
    recorded: bool,
) -> Result<(), ChannelError> {
    match allowed_target(cfg, &target) {
        Ok(_) => {
            accept(&mut send, None, recorded).await?;
            send.finish().await?;
            Ok(())
        }
        Err(why) => refuse(send, why).await,
    }
}

pub(super) async fn forward(
    cfg: &HostConfig,
    mut send: ChannelSend,
    mut recv: ChannelRecv,
    target: String,
    recorded: bool,
) -> Result<(), ChannelError> {
    let addr = match allowed_target(cfg, &target) {
        Ok(addr) => addr,
        Err(why) => return refuse(send, why).await,
    };
    let tcp = match timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect(addr),
    )
    .await
    {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => {
            return refuse(send, format!("cannot connect to {target} on the host: {e}")).await
        }
        Err(_) => {
            return refuse(
                send,
                format!("connecting to {target} on the host timed out"),
            )
            .await
        }
    };
    tcp.set_nodelay(true)?;
    accept(&mut send, None, recorded).await?;
    channel::splice_tcp(tcp, &mut send, &mut recv).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(allow: &[&str]) -> HostConfig {
        let mut cfg = HostConfig::new(
            &["relay:4433".into()],
            String::new(),
            "mypc".parse().expect("host name"),
        );
        cfg.forward_allow = allow.iter().map(|a| a.to_string()).collect();
        cfg
    }

    #[test]
    fn a_target_outside_forward_allow_is_refused_with_the_allowed_list() {
        let host = cfg(&["127.0.0.1:22", "not an address", "[::1]:5900"]);
        assert_eq!(
            allowed_target(&host, "127.0.0.1:22"),
            Ok("127.0.0.1:22".parse().expect("addr"))
        );
        assert_eq!(
            allowed_target(&host, "127.0.0.1:8080"),
            Err("forwarding to 127.0.0.1:8080 is not allowed on this host; \
                 it allows: 127.0.0.1:22, [::1]:5900"
                .into())
        );
        // A target that is not an address is refused the same way.
        assert!(allowed_target(&host, "localhost:22").is_err());
        assert_eq!(
            allowed_target(&cfg(&[]), "127.0.0.1:22"),
            Err(
                "forwarding to 127.0.0.1:22 is not allowed on this host; it allows no targets"
                    .into()
            )
        );
    }
}
