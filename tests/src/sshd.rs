//! A private OpenSSH server for the tests that reach a host's SSH through
//! Latchkey: Debian's `sshd` with its own host key, config and one user
//! key in a temporary directory, public-key login only, on a free loopback
//! port. Outside CI a test that cannot start one is skipped with the
//! reason printed; in CI (`CI` set) that is a failure.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

use crate::{process::current_account, Proc};

/// A running `sshd`, killed when dropped.
pub struct TestSshd {
    _proc: Proc,
    /// Its loopback port.
    pub port: u16,
    /// The account a client logs in as (the one the tests run as).
    pub user: String,
    dir: TempDir,
}

impl TestSshd {
    /// Starts one, or says why not.
    pub fn start() -> Result<Self> {
        let sshd = ["/usr/sbin/sshd", "/usr/local/sbin/sshd"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .context("sshd is not installed (apt-get install openssh-server)")?;
        let dir = tempfile::tempdir()?;
        let p = |name: &str| dir.path().join(name);
        keygen(&p("host_key"))?;
        keygen(&p("user_key"))?;
        std::fs::copy(p("user_key.pub"), p("authorized_keys"))?;
        // sshd wants its privilege-separation directory even on a high port.
        let _ = std::fs::create_dir_all("/run/sshd");
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        std::fs::write(
            p("sshd_config"),
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\n\
                 PidFile {}\nStrictModes no\nPermitRootLogin yes\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nUsePAM no\nSubsystem sftp internal-sftp\n",
                p("host_key").display(),
                p("authorized_keys").display(),
                p("sshd.pid").display(),
            ),
        )?;
        let log = std::fs::File::create(p("sshd.log"))?;
        let proc = Proc::spawn_logged(
            Command::new(sshd)
                .args(["-D", "-e", "-f"])
                .arg(p("sshd_config")),
            log,
        )?;
        crate::wait_until("sshd to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
        .with_context(|| std::fs::read_to_string(p("sshd.log")).unwrap_or_default())?;
        Ok(Self {
            _proc: proc,
            port,
            user: current_account()?,
            dir,
        })
    }

    /// The key a client logs in with.
    pub fn user_key(&self) -> PathBuf {
        self.dir.path().join("user_key")
    }

    /// The options an OpenSSH client (ssh, scp, sftp) needs for this
    /// server, beside its ProxyCommand: the key, no questions, no
    /// known_hosts of the account's own.
    pub fn client_options(&self) -> Vec<String> {
        let mut options = vec!["-i".to_string(), self.user_key().display().to_string()];
        for option in [
            "BatchMode=yes",
            "StrictHostKeyChecking=no",
            "UserKnownHostsFile=/dev/null",
            "LogLevel=ERROR",
        ] {
            options.push("-o".into());
            options.push(option.into());
        }
        options
    }
}

fn keygen(path: &Path) -> Result<()> {
    let ok = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .status()
        .context("ssh-keygen (apt-get install openssh-client)")?
        .success();
    if !ok {
        bail!("ssh-keygen failed");
    }
    Ok(())
}

/// Starts a server, or says why not: `None` outside CI, a panic in CI.
pub fn start_or_skip(test: &str) -> Option<TestSshd> {
    match TestSshd::start() {
        Ok(sshd) => Some(sshd),
        Err(why) if std::env::var_os("CI").is_some() => {
            panic!("{test}: OpenSSH is needed in CI and could not start: {why:#}")
        }
        Err(why) => {
            eprintln!("skipping {test}: cannot start sshd here: {why:#}");
            None
        }
    }
}
