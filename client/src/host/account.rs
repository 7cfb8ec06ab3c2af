//! Which OS account sessions run as. An agent running as a service account
//! (root) holds `host.key` and the export keys; a session that could read
//! them could impersonate the host. So when the agent runs as root, shells,
//! commands and copies run as the unprivileged `session_user` of
//! `host.toml`, set through std's `CommandExt` (uid, gid; std drops root's
//! supplementary groups) or, for a PTY shell, through util-linux's
//! `setpriv` (`su -l` elsewhere). Copies run in a helper process of this binary as that account
//! ([`super::file_helper`]), so the account's permissions apply to every
//! file a user reaches.

use std::path::PathBuf;

use portable_pty::CommandBuilder;

use crate::config::HostConfig;

/// The account a session's processes run as.
#[derive(Clone, Debug)]
pub(crate) enum SessionAccount {
    /// The agent's own account (an unprivileged agent, or `session_user =
    /// "root"` chosen explicitly).
    Agent,
    /// Another account, entered from root.
    #[cfg(unix)]
    User(RunAs),
}

/// An unprivileged account from the password database.
#[cfg(unix)]
#[derive(Clone, Debug)]
pub(crate) struct RunAs {
    name: String,
    uid: u32,
    gid: u32,
    home: PathBuf,
    shell: PathBuf,
}

/// The `session_user` value that lets a root agent run sessions as root.
#[cfg(unix)]
const ROOT: &str = "root";

impl SessionAccount {
    /// Decides from the config and who the agent runs as; refuses a root
    /// agent without `session_user`, since its sessions could read the
    /// host's keys.
    pub(crate) fn resolve(cfg: &HostConfig) -> Result<Self, String> {
        Self::for_setting(cfg.session_user.as_deref())
    }

    /// Whether sessions run as the agent's own account, so they can change
    /// what the agent writes (its recordings, its channel log).
    pub(crate) fn is_agents_own(&self) -> bool {
        matches!(self, Self::Agent)
    }

    /// [`SessionAccount::resolve`] for a `session_user` value.
    pub(crate) fn for_setting(session_user: Option<&str>) -> Result<Self, String> {
        #[cfg(unix)]
        {
            let root = nix::unistd::geteuid().is_root();
            match (root, session_user) {
                (true, None) => Err(format!(
                    "the agent runs as root: choose the unprivileged account sessions run as, \
                     `session_user` in {} (or `--session-user` when enrolling); sessions as root \
                     could read the host's keys, so `root` must be chosen explicitly",
                    crate::config::HOST_FILE
                )),
                (_, None) | (true, Some(ROOT)) => Ok(Self::Agent),
                (false, Some(name)) => {
                    let me = nix::unistd::User::from_uid(nix::unistd::geteuid())
                        .ok()
                        .flatten()
                        .map(|u| u.name);
                    if me.as_deref() == Some(name) {
                        Ok(Self::Agent)
                    } else {
                        Err(format!(
                            "session_user = \"{name}\" needs the agent to run as root (it runs as {})",
                            me.unwrap_or_else(|| "another user".into())
                        ))
                    }
                }
                (true, Some(name)) => {
                    // Off Linux there is no setsid(1) to give a session's
                    // processes a session of their own, and an agent with a
                    // terminal would share it with them (TIOCSTI).
                    if !cfg!(target_os = "linux") && std::fs::File::open("/dev/tty").is_ok() {
                        return Err("a root agent with session_user must run without a \
                             terminal here: start it as a service (docs/host.md)"
                            .into());
                    }
                    let user = nix::unistd::User::from_name(name)
                        .map_err(|e| format!("cannot look up session_user \"{name}\": {e}"))?
                        .ok_or_else(|| format!("session_user \"{name}\" does not exist"))?;
                    if user.uid.is_root() {
                        return Err(format!(
                            "session_user \"{name}\" has uid 0: write \"root\" if that is meant"
                        ));
                    }
                    Ok(Self::User(RunAs {
                        name: user.name,
                        uid: user.uid.as_raw(),
                        gid: user.gid.as_raw(),
                        home: user.dir,
                        shell: user.shell,
                    }))
                }
            }
        }
        #[cfg(not(unix))]
        {
            match session_user {
                None => Ok(Self::Agent),
                Some(_) => Err(
                    "session_user is supported on Unix only; on Windows run the \
                     agent as the account sessions should use"
                        .into(),
                ),
            }
        }
    }

    /// The directory sessions start in, and relative paths resolve from.
    pub(crate) fn home(&self) -> Option<PathBuf> {
        match self {
            Self::Agent => std::env::var_os("HOME")
                .or_else(|| std::env::var_os("USERPROFILE"))
                .map(PathBuf::from),
            #[cfg(unix)]
            Self::User(u) => Some(u.home.clone()),
        }
    }

    /// Where a session's processes start: the home, or `/` when it does not
    /// exist (as `nobody`'s `/nonexistent`).
    fn start_dir(&self) -> Option<PathBuf> {
        match self.home() {
            Some(home) if home.is_dir() => Some(home),
            Some(_) => Some(PathBuf::from("/")),
            None => None,
        }
    }

    /// A command run as this account, in its home, with its environment
    /// (a fresh one for another account, as `su -` gives), as the leader of
    /// a process group of its own, so a hang-up reaches what it starts.
    /// Another account's command also gets a session of its own (util-linux
    /// `setsid`, which does not fork for a process that leads no group, so
    /// the pid and the group stay the child's): it must not share the
    /// agent's terminal, where it could type into a root shell (TIOCSTI).
    pub(crate) fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> tokio::process::Command {
        let mut cmd = match self {
            #[cfg(target_os = "linux")]
            Self::User(_) => {
                let mut cmd = tokio::process::Command::new("setsid");
                cmd.arg("--").arg(program);
                cmd
            }
            _ => {
                // Only Unix starts it in a process group of its own.
                #[cfg_attr(not(unix), allow(unused_mut))]
                let mut cmd = tokio::process::Command::new(program);
                #[cfg(unix)]
                cmd.process_group(0);
                cmd
            }
        };
        if let Some(dir) = self.start_dir() {
            cmd.current_dir(dir);
        }
        #[cfg(unix)]
        match self {
            Self::User(u) => {
                cmd.uid(u.uid).gid(u.gid).env_clear().envs(u.env());
            }
            Self::Agent => {
                cmd.env_clear().envs(RunAs::agent().env());
            }
        }
        cmd
    }

    /// Checks that another account can run this binary's file helper (a
    /// binary in a directory only root may enter would fail every copy).
    /// The agent's own account runs it already.
    pub(crate) async fn check_file_helper(&self) -> Result<(), String> {
        if matches!(self, Self::Agent) {
            return Ok(());
        }
        let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
        let ran = self
            .command(&exe)
            .arg("--version")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .await;
        match ran {
            Ok(status) if status.success() => Ok(()),
            Ok(status) => Err(format!(
                "the session account cannot run {} ({status}): install latchkey where it can \
                 (for example /usr/local/bin)",
                exe.display()
            )),
            Err(e) => Err(format!(
                "the session account cannot run {}: {e}: install latchkey where it can \
                 (for example /usr/local/bin)",
                exe.display()
            )),
        }
    }
}

/// Marks every descriptor the agent inherited (beyond standard input,
/// output and error) close-on-exec, so no session's process gets a file
/// the agent's launcher left open. (Rust opens its own close-on-exec.)
#[cfg(unix)]
pub(crate) fn seal_inherited_fds() {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    let dir = if cfg!(target_os = "linux") {
        "/proc/self/fd"
    } else {
        "/dev/fd"
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let fds: Vec<i32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    for fd in fds {
        let _ = fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
    }
}

impl SessionAccount {
    /// A login shell on a PTY as this account, with `term`.
    pub(crate) fn shell(&self, term: String) -> CommandBuilder {
        let mut cmd = match self {
            Self::Agent => CommandBuilder::new_default_prog(),
            #[cfg(all(unix, not(target_os = "linux")))]
            Self::User(u) => {
                // portable-pty cannot change the uid; without util-linux,
                // su (run by root, no password) gives the login shell.
                let mut cmd = CommandBuilder::new("su");
                cmd.args(["-l", u.name.as_str()]);
                cmd
            }
            #[cfg(target_os = "linux")]
            Self::User(u) => {
                // portable-pty cannot change the uid: setpriv does, with the
                // account's groups and a fresh environment.
                let mut cmd = CommandBuilder::new("setpriv");
                cmd.args([
                    format!("--reuid={}", u.uid),
                    format!("--regid={}", u.gid),
                    "--init-groups".into(),
                    "--reset-env".into(),
                    "--".into(),
                ]);
                cmd.arg(&u.shell);
                cmd.arg("-l");
                cmd
            }
        };
        // The agent's own account gets a fresh environment too: nothing of
        // the agent's (LATCHKEY_HOME, the service manager's variables)
        // reaches a session.
        #[cfg(unix)]
        if let Self::Agent = self {
            cmd.env_clear();
            for (key, value) in RunAs::agent().env() {
                cmd.env(key, value);
            }
        }
        cmd.env("TERM", term);
        if let Some(dir) = self.start_dir() {
            cmd.cwd(dir);
        }
        cmd
    }

    /// This binary's file helper, as this account.
    pub(crate) fn file_helper(&self) -> std::io::Result<tokio::process::Command> {
        let exe = std::env::current_exe()?;
        let mut cmd = self.command(exe);
        cmd.args(["host", "file-helper"]);
        Ok(cmd)
    }
}

/// The account by name and uid, as the agent's log says who sessions run
/// as.
impl std::fmt::Display for SessionAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            #[cfg(unix)]
            Self::Agent => {
                let me = RunAs::agent();
                write!(f, "{} (uid {}), the agent's own account", me.name, me.uid)
            }
            #[cfg(not(unix))]
            Self::Agent => {
                let me = std::env::var("USERNAME").unwrap_or_else(|_| "?".into());
                write!(f, "{me}, the agent's own account")
            }
            #[cfg(unix)]
            Self::User(u) => write!(f, "{} (uid {})", u.name, u.uid),
        }
    }
}

#[cfg(unix)]
impl RunAs {
    /// The account the agent itself runs as, from the password database
    /// (its own environment only where the database has no entry); looked
    /// up once, as it cannot change while the agent runs.
    fn agent() -> &'static Self {
        static AGENT: std::sync::OnceLock<RunAs> = std::sync::OnceLock::new();
        AGENT.get_or_init(Self::look_up_agent)
    }

    fn look_up_agent() -> Self {
        let uid = nix::unistd::geteuid();
        match nix::unistd::User::from_uid(uid).ok().flatten() {
            Some(u) => Self {
                name: u.name,
                uid: u.uid.as_raw(),
                gid: u.gid.as_raw(),
                home: u.dir,
                shell: u.shell,
            },
            None => {
                let var = |k: &str| std::env::var_os(k).unwrap_or_default();
                Self {
                    name: var("USER").to_string_lossy().into_owned(),
                    uid: uid.as_raw(),
                    gid: nix::unistd::getegid().as_raw(),
                    home: var("HOME").into(),
                    shell: PathBuf::from(match var("SHELL") {
                        s if s.is_empty() => "/bin/sh".into(),
                        s => s,
                    }),
                }
            }
        }
    }

    /// A session's whole environment, as `su -` gives (and `TERM` for a
    /// shell): docs/host.md lists it.
    fn env(&self) -> Vec<(&'static str, std::ffi::OsString)> {
        vec![
            ("HOME", self.home.clone().into_os_string()),
            ("USER", self.name.clone().into()),
            ("LOGNAME", self.name.clone().into()),
            ("SHELL", self.shell.clone().into_os_string()),
            ("PATH", "/usr/local/bin:/usr/bin:/bin".into()),
        ]
    }
}

#[cfg(all(test, unix))]
mod tests {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    use std::os::fd::AsRawFd;

    #[test]
    fn descriptors_the_agent_inherited_are_closed_on_exec() {
        let file = tempfile::tempfile().expect("file");
        let fd = file.as_raw_fd();
        // As a launcher would leave it: inheritable.
        fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty())).expect("clear");
        super::seal_inherited_fds();
        let flags = fcntl(fd, FcntlArg::F_GETFD).expect("get");
        assert!(FdFlag::from_bits_truncate(flags).contains(FdFlag::FD_CLOEXEC));
    }
}
