//! A peer to beat: a rathole tunnel (server + client, its Noise transport,
//! which encrypts the client ↔ server leg) in front of the same target.
//! rathole's server stands where the relay does and its client where the
//! host agent does; users connect to the server's service port, so at the
//! client's place there is no rathole process, only the user's TCP.
//! rathole is not a Debian package: `cargo install rathole` puts it on
//! PATH, or `LATCHKEY_BENCH_RATHOLE` names the binary. Skipped, with the
//! reason printed, when it is not there.

use std::{net::SocketAddr, path::PathBuf, process::Command};

use anyhow::{bail, Context, Result};
use latchkey_tests::Proc;
use tempfile::TempDir;

use crate::netns::Layout;

/// A running rathole server and client; both are killed when dropped.
pub(crate) struct RatholeForward {
    /// The server (the relay's counterpart).
    pub(crate) server: Proc,
    /// The client (the host agent's counterpart).
    pub(crate) client: Proc,
    /// Where the tunnelled service listens.
    pub(crate) local: String,
    _dir: TempDir,
}

fn binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("LATCHKEY_BENCH_RATHOLE") {
        return Some(p.into());
    }
    let path = std::env::var_os("PATH")?;
    let home_bin = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin"));
    std::env::split_paths(&path)
        .chain(home_bin)
        .map(|d| d.join("rathole"))
        .find(|p| p.is_file())
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// rathole's own key generator: "Private Key:\n<b64>\n\nPublic Key:\n<b64>".
fn keypair(rathole: &PathBuf) -> Result<(String, String)> {
    let out = Command::new(rathole).arg("--genkey").output()?;
    let text = String::from_utf8(out.stdout)?;
    let mut keys = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.ends_with(':'));
    match (keys.next(), keys.next()) {
        (Some(private), Some(public)) => Ok((private.into(), public.into())),
        _ => bail!("unexpected `rathole --genkey` output: {text}"),
    }
}

/// Starts a rathole server at the relay's place and a client at the
/// host's, tunnelling to `target`, or says why not.
pub(crate) fn start(target: &str, at: &Layout) -> Result<Result<RatholeForward, String>> {
    let Some(rathole) = binary() else {
        return Ok(Err(
            "rathole is not installed (cargo install rathole, or set LATCHKEY_BENCH_RATHOLE)"
                .into(),
        ));
    };
    let dir = tempfile::tempdir()?;
    let p = |name: &str| dir.path().join(name);
    let (private, public) = keypair(&rathole)?;
    let (control, service) = (free_port()?, free_port()?);
    let relay = at.relay.ip;
    let (control, service) = (
        SocketAddr::new(relay, control),
        SocketAddr::new(relay, service),
    );
    std::fs::write(
        p("server.toml"),
        format!(
            "[server]\nbind_addr = \"{control}\"\n\
             [server.transport]\ntype = \"noise\"\n\
             [server.transport.noise]\nlocal_private_key = \"{private}\"\n\
             [server.services.bench]\ntoken = \"bench\"\nbind_addr = \"{service}\"\nnodelay = true\n"
        ),
    )?;
    std::fs::write(
        p("client.toml"),
        format!(
            "[client]\nremote_addr = \"{control}\"\n\
             [client.transport]\ntype = \"noise\"\n\
             [client.transport.noise]\nremote_public_key = \"{public}\"\n\
             [client.services.bench]\ntoken = \"bench\"\nlocal_addr = \"{target}\"\nnodelay = true\n"
        ),
    )?;
    let server = Proc::spawn_logged(
        at.relay.command(&rathole).arg("-s").arg(p("server.toml")),
        std::fs::File::create(p("server.log"))?,
    )?;
    let client = Proc::spawn_logged(
        at.host
            .command(&rathole)
            .arg("-c")
            .arg(p("client.toml"))
            .env("RUST_LOG", "info"),
        std::fs::File::create(p("client.log"))?,
    )?;
    // rathole logs to standard output.
    client
        .expect_line("Control channel established")
        .with_context(|| std::fs::read_to_string(p("server.log")).unwrap_or_default())?;
    Ok(Ok(RatholeForward {
        server,
        client,
        local: service.to_string(),
        _dir: dir,
    }))
}
