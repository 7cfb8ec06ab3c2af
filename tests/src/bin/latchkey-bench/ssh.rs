//! The baseline users would otherwise pick: an OpenSSH `ssh -L` forward to
//! a private `sshd` (its own keys and config in a temporary directory,
//! public-key login only), `sshd` at the host's place and `ssh` at the
//! client's. Skipped, with the reason printed, where `sshd` is not
//! installed.

use anyhow::{Context, Result};
use latchkey_tests::{
    sshd::{free_port, sshd_path, SshdFiles},
    Proc,
};

use crate::{ends::TcpEnds, netns::Layout};

/// A running `sshd` and `ssh -N -L` pair; both are killed when dropped.
pub(crate) struct SshForward {
    _sshd: Proc,
    _ssh: Proc,
    /// Where the forward listens.
    pub(crate) local: String,
    _files: SshdFiles,
}

/// Starts `sshd` at the host's place and `ssh -L 127.0.0.1:PORT:target`
/// at the client's (`ends` waits there for them to listen), or says why
/// not.
pub(crate) fn start(
    target: &str,
    at: &Layout,
    ends: &mut TcpEnds,
) -> Result<Result<SshForward, String>> {
    let Some(sshd) = sshd_path() else {
        return Ok(Err(
            "sshd is not installed (apt-get install openssh-server)".into(),
        ));
    };
    let port = free_port()?;
    let files = SshdFiles::new(at.host.ip, port)?;
    let p = |name: &str| files.path(name);
    let log = std::fs::File::create(p("sshd.log"))?;
    let sshd = Proc::spawn_logged(
        at.host
            .command(sshd)
            .args(["-D", "-e", "-f"])
            .arg(files.config()),
        log,
    )?;
    let logs = || {
        std::fs::read_to_string(p("ssh.log")).unwrap_or_default()
            + &std::fs::read_to_string(p("sshd.log")).unwrap_or_default()
    };
    ends.wait(at.host.ip, port).with_context(logs)?;
    let local_port = free_port()?;
    let user = std::env::var("USER").unwrap_or_else(|_| "root".into());
    let log = std::fs::File::create(p("ssh.log"))?;
    let ssh = Proc::spawn_logged(
        at.client
            .command("ssh")
            .args(["-N", "-i"])
            .arg(files.user_key())
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "BatchMode=yes",
                "-o",
                "ExitOnForwardFailure=yes",
                "-p",
                &port.to_string(),
                "-L",
                &format!("127.0.0.1:{local_port}:{target}"),
                &format!("{user}@{}", at.host.ip),
            ]),
        log,
    )?;
    let localhost = std::net::Ipv4Addr::LOCALHOST.into();
    ends.wait(localhost, local_port).with_context(logs)?;
    let local = format!("127.0.0.1:{local_port}");
    Ok(Ok(SshForward {
        _sshd: sshd,
        _ssh: ssh,
        local,
        _files: files,
    }))
}
