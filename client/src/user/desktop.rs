//! `latchkey desktop HOST`: the host's own remote desktop (VNC or RDP) in
//! one command, as GoToMyPC users know it. The host says which desktop it
//! declares; the client forwards a local port to it with `latchkey
//! forward`'s code ([`super::forward::forward`]) and opens a viewer on
//! that port: the user's own from `user.toml` (see
//! [`crate::config::Viewers`]), else the system's opener.
//!
//! The question is a channel of the session's end-to-end connection
//! ([`ChannelKind::Desktop`]), not a question to the relay: the relay
//! learns nothing new (not that a desktop is used, nor where it listens),
//! the host alone decides what its desktop is, and an agent older than the
//! question fails it cleanly (see [`ask`]).

use std::{net::SocketAddr, time::Duration};

use latchkey_protocol::{
    session::{ChannelKind, DesktopProtocol, DesktopService},
    HandshakeError,
};
use tokio::time::timeout;
use tracing::debug;

use super::{
    forward::ForwardSpec,
    remote::{ChannelError, Remote},
};
use crate::{
    config::{DesktopUrl, Viewers},
    net::NetError,
};

/// How long the host has to name its desktop once it accepted.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Asks the host which desktop it declares. Its refusal (it declares
/// none) comes in its own words; an agent that cannot decode the question
/// closes the stream, which is told as an agent too old to answer.
pub async fn ask(remote: &Remote) -> Result<DesktopUrl, ChannelError> {
    let (_send, mut recv) = match remote.channel(ChannelKind::Desktop).await {
        Ok((send, recv, _)) => (send, recv),
        Err(e @ ChannelError::Refused(_)) => return Err(e),
        // The session itself is gone: that is the news.
        Err(e) if remote.relay_gone() => return Err(e),
        Err(e) => {
            debug!("desktop question: {e}");
            return Err(ChannelError::Refused(format!(
                "host '{}' did not say which desktop it has: its agent is older than \
                 `latchkey desktop` (update it, or use `latchkey forward`)",
                remote.host
            )));
        }
    };
    let answer = timeout(ANSWER_TIMEOUT, recv.read_frame_padded::<DesktopService>())
        .await
        .map_err(|_| NetError::HostTimeout(remote.host.clone()))?;
    let invalid = || {
        ChannelError::Net(NetError::Handshake(HandshakeError::PeerMisbehaved(
            "the host named its desktop wrongly",
        )))
    };
    let service = answer?.ok_or_else(invalid)?;
    let target: SocketAddr = service.target.parse().map_err(|_| invalid())?;
    Ok(DesktopUrl::new(service.protocol, target))
}

/// The forward that carries the desktop: `127.0.0.1:local_port` (0: a
/// free port) to the desktop's target, as seen from the host. Loopback
/// only: the desktop is the user's, not their network's.
pub fn forward_spec(desktop: &DesktopUrl, local_port: u16) -> ForwardSpec {
    ForwardSpec {
        bind: "127.0.0.1".into(),
        local_port,
        target: desktop.target.to_string(),
    }
}

/// The command that opens the forwarded desktop `local` (its protocol at
/// the local address): the user's viewer for that protocol, else the
/// system's opener on `os` (as `std::env::consts::OS` names it), or
/// `None` when the system has none (Windows has no VNC viewer of its own).
pub fn viewer_command(local: &DesktopUrl, viewers: &Viewers, os: &str) -> Option<Vec<String>> {
    let words: Vec<String> = match viewers.get(local.protocol) {
        Some(own) => own.words().to_vec(),
        None => system_opener(local.protocol, os)?
            .iter()
            .map(|w| w.to_string())
            .collect(),
    };
    Some(words.iter().map(|w| expand(w, local)).collect())
}

/// What opens a desktop URL on each system: `xdg-open` (Linux and other
/// Unix desktops), `open` (macOS: Screen Sharing takes `vnc://`, Microsoft's
/// client the `rdp://full%20address=...` form it documents), and `mstsc`
/// for RDP on Windows.
fn system_opener(protocol: DesktopProtocol, os: &str) -> Option<&'static [&'static str]> {
    match (os, protocol) {
        ("windows", DesktopProtocol::Rdp) => Some(&["mstsc", "/v:{addr}"]),
        ("windows", _) => None,
        ("macos", DesktopProtocol::Rdp) => Some(&["open", "rdp://full%20address=s:{addr}"]),
        ("macos", _) => Some(&["open", "{url}"]),
        _ => Some(&["xdg-open", "{url}"]),
    }
}

/// A viewer's word with `{url}`, `{addr}` and `{port}` filled in.
fn expand(word: &str, local: &DesktopUrl) -> String {
    word.replace("{url}", &local.to_string())
        .replace("{addr}", &local.target.to_string())
        .replace("{port}", &local.target.port().to_string())
}

/// A viewer started for the user. Dropping it stops watching (the viewer
/// itself is the user's and stays).
pub struct Viewer {
    watch: tokio::task::JoinHandle<()>,
}

impl Drop for Viewer {
    fn drop(&mut self) {
        self.watch.abort();
    }
}

/// Starts `argv` (from [`viewer_command`]) and watches it: a viewer that
/// fails (an opener with no handler for the URL exits non-zero) is
/// told on standard error, and the forward goes on for a viewer of the user's.
pub fn open_viewer(argv: &[String], local: &DesktopUrl) -> std::io::Result<Viewer> {
    let Some((program, args)) = argv.split_first() else {
        return Err(std::io::ErrorKind::InvalidInput.into());
    };
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        // Standard output is the address's, for scripts.
        .stdout(std::process::Stdio::null())
        .spawn()?;
    let (program, local) = (program.clone(), *local);
    let watch = tokio::spawn(async move {
        match child.wait().await {
            Ok(status) if status.success() => {}
            // Said as the command's other lines are, on standard error:
            // the user is reading the terminal, not a log.
            Ok(status) => eprintln!(
                "the viewer ({program}) failed ({status}): connect yours to {}, \
                 or name one in user.toml ([viewer] {})",
                local.target,
                local.protocol.scheme()
            ),
            Err(e) => eprintln!("cannot wait for the viewer ({program}): {e}"),
        }
    });
    Ok(Viewer { watch })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(protocol: DesktopProtocol) -> DesktopUrl {
        DesktopUrl::new(protocol, "127.0.0.1:40123".parse().expect("addr"))
    }

    #[test]
    fn the_system_opener_gets_the_desktop_in_its_own_form() {
        let none = Viewers::default();
        let vnc = local(DesktopProtocol::Vnc);
        let rdp = local(DesktopProtocol::Rdp);
        assert_eq!(
            viewer_command(&vnc, &none, "linux"),
            Some(vec!["xdg-open".into(), "vnc://127.0.0.1:40123".into()])
        );
        assert_eq!(
            viewer_command(&rdp, &none, "freebsd"),
            Some(vec!["xdg-open".into(), "rdp://127.0.0.1:40123".into()])
        );
        assert_eq!(
            viewer_command(&vnc, &none, "macos"),
            Some(vec!["open".into(), "vnc://127.0.0.1:40123".into()])
        );
        assert_eq!(
            viewer_command(&rdp, &none, "windows"),
            Some(vec!["mstsc".into(), "/v:127.0.0.1:40123".into()])
        );
        assert_eq!(viewer_command(&vnc, &none, "windows"), None);
    }

    #[test]
    fn the_users_own_viewer_comes_first_with_its_placeholders_filled() {
        let viewers: Viewers = toml::from_str(
            "vnc = [\"vncviewer\", \"127.0.0.1::{port}\", \"--title={url} {addr}\"]",
        )
        .expect("viewers");
        assert_eq!(
            viewer_command(&local(DesktopProtocol::Vnc), &viewers, "windows"),
            Some(vec![
                "vncviewer".into(),
                "127.0.0.1::40123".into(),
                "--title=vnc://127.0.0.1:40123 127.0.0.1:40123".into(),
            ])
        );
        // Only for its own protocol.
        assert_eq!(
            viewer_command(&local(DesktopProtocol::Rdp), &viewers, "linux"),
            Some(vec!["xdg-open".into(), "rdp://127.0.0.1:40123".into()])
        );
    }

    #[test]
    fn the_forward_listens_on_loopback_only() {
        let desktop = DesktopUrl::new(DesktopProtocol::Rdp, "10.0.0.5:3389".parse().expect("addr"));
        let spec = forward_spec(&desktop, 0);
        assert_eq!(
            (spec.bind.as_str(), spec.local_port, spec.target.as_str()),
            ("127.0.0.1", 0, "10.0.0.5:3389")
        );
    }
}
