//! A private OpenSSH server for the tests that reach a host's SSH through
//! Latchkey (and the benchmark's `ssh -L` baseline): Debian's `sshd` with
//! its own host key, config and one user key in a temporary directory,
//! public-key login only. Outside CI a test that cannot start one is skipped with the
//! reason printed; in CI (`CI` set) that is a failure.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

use crate::{process::current_account, Proc};

/// Where Debian (or a local build) puts `sshd`.
pub fn sshd_path() -> Option<PathBuf> {
    ["/usr/sbin/sshd", "/usr/local/sbin/sshd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// A free TCP port on loopback (free when asked).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A private server's files in a temporary directory: its host key, one
/// user key allowed to log in, and its config (public-key login only, the
/// account the tests run as, root included; TCP forwarding and sftp on).
pub struct SshdFiles {
    dir: TempDir,
}

impl SshdFiles {
    /// Makes the keys and a config that listens on `listen`:`port`.
    pub fn new(listen: IpAddr, port: u16) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let files = Self { dir };
        keygen(&files.path("host_key"))?;
        keygen(&files.path("user_key"))?;
        std::fs::copy(files.path("user_key.pub"), files.path("authorized_keys"))?;
        // sshd wants its privilege-separation directory even on a high port.
        let _ = std::fs::create_dir_all("/run/sshd");
        std::fs::write(
            files.config(),
            format!(
                "Port {port}\nListenAddress {listen}\nHostKey {}\nAuthorizedKeysFile {}\n\
                 PidFile {}\nStrictModes no\nPermitRootLogin yes\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nUsePAM no\nAllowTcpForwarding yes\n\
                 Subsystem sftp internal-sftp\n",
                files.path("host_key").display(),
                files.path("authorized_keys").display(),
                files.path("sshd.pid").display(),
            ),
        )?;
        Ok(files)
    }

    /// A file of the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The server's config.
    pub fn config(&self) -> PathBuf {
        self.path("sshd_config")
    }

    /// The key a client logs in with.
    pub fn user_key(&self) -> PathBuf {
        self.path("user_key")
    }
}

/// A running `sshd` on a loopback port, killed when dropped.
pub struct TestSshd {
    _proc: Proc,
    /// Its loopback port.
    pub port: u16,
    /// The account a client logs in as (the one the tests run as).
    pub user: String,
    files: SshdFiles,
}

impl TestSshd {
    /// Starts one, or says why not.
    pub fn start() -> Result<Self> {
        let sshd = sshd_path().context("sshd is not installed (apt-get install openssh-server)")?;
        let port = free_port()?;
        let files = SshdFiles::new(Ipv4Addr::LOCALHOST.into(), port)?;
        let log = std::fs::File::create(files.path("sshd.log"))?;
        let proc = Proc::spawn_logged(
            Command::new(sshd)
                .args(["-D", "-e", "-f"])
                .arg(files.config()),
            log,
        )?;
        crate::wait_until("sshd to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
        .with_context(|| std::fs::read_to_string(files.path("sshd.log")).unwrap_or_default())?;
        Ok(Self {
            _proc: proc,
            port,
            user: current_account()?,
            files,
        })
    }

    /// The key a client logs in with.
    pub fn user_key(&self) -> PathBuf {
        self.files.user_key()
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
    latchkey_server::testing::needed_in_ci(test, "OpenSSH (sshd)", TestSshd::start())
}
