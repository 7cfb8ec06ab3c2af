//! The commands a remote user runs: enrolment, the host list and the keys
//! pinned for hosts, and sessions on a host (shell, exec, forward, reboot,
//! copy).

use std::{process::ExitCode, time::Duration};

use latchkey_client::{
    code,
    config::{DesktopUrl, Home, Viewers},
    net::NetError,
    user::{
        self, copy::CopySpec, desktop::Viewer, forward::ForwardSpec, remote::Remote, UserError,
    },
};
use latchkey_protocol::ids::HostName;

use super::signal::{interrupted, shutdown_signal};

/// `--persist`, when given.
static PERSIST: std::sync::OnceLock<Option<Duration>> = std::sync::OnceLock::new();

/// Sets `--persist` for this process; the first call wins.
pub(crate) fn set_persist(persist: Option<Duration>) {
    let _ = PERSIST.set(persist);
}

#[cfg(unix)]
fn persist_given() -> Option<Duration> {
    PERSIST.get().copied().flatten()
}

/// The session to `host`: the one kept for it (see `--persist`) if one
/// answers, else a new login (asking for the code once), kept for the
/// commands that follow unless `--persist 0`. A host that is not the
/// user's is said to be so: before the prompt when a person types the
/// code, after a refused login when a script gave it.
async fn open(home: &Home, host: &HostName, code_stdin: bool) -> anyhow::Result<Remote> {
    #[cfg(unix)]
    match user::reuse::reach(home, host).await {
        Ok(Some(remote)) => {
            // A script's code line is read all the same: what follows it
            // is the command's input, and the code must not become part
            // of it.
            if code_stdin {
                drop(code::for_login(true, host.as_str())?);
            }
            if let Some(persist) = persist_given() {
                remote.set_persist(persist).await;
            }
            return Ok(remote);
        }
        Ok(None) => {}
        Err(e) => tracing::warn!("{e}"),
    }
    let prompted = !code_stdin && std::env::var(code::CODE_ENV).is_err();
    if prompted {
        user::check_host_is_yours(home, host).await?;
    }
    let access = code::for_login(code_stdin, host.as_str())?;
    let wrong_code = || async {
        if !prompted {
            user::check_host_is_yours(home, host).await?;
        }
        anyhow::Ok(())
    };
    #[cfg(unix)]
    if let Some(remote) = open_held(home, host, &access).await {
        return match remote {
            Ok(remote) => Ok(remote),
            Err((error, is_wrong_code)) => {
                if is_wrong_code {
                    wrong_code().await?;
                }
                Err(anyhow::anyhow!(error))
            }
        };
    }
    match Remote::open(home, host, access).await {
        Ok(remote) => Ok(remote),
        Err(e @ UserError::Net(NetError::WrongCode(_))) => {
            wrong_code().await?;
            Err(e.into())
        }
        Err(e) => Err(e.into()),
    }
}

/// Starts a process that logs in and keeps the session for the commands
/// that follow, and reaches it: `None` when the session is not to be kept
/// or cannot be (the command then logs in itself), else the session or
/// the login's failure (and whether the code was wrong).
#[cfg(unix)]
async fn open_held(
    home: &Home,
    host: &HostName,
    access: &latchkey_protocol::ids::AccessCode,
) -> Option<Result<Remote, (String, bool)>> {
    use user::reuse::Started;
    let persist = persist_given().unwrap_or(user::reuse::PERSIST);
    if persist.is_zero() {
        return None;
    }
    // Where no socket can be (said once already, by `reach`), no holder
    // is started.
    let place = user::reuse::Place::of(home, host).ok()?;
    // A holder that another command is starting is waited for; if it
    // fails (a wrong code), this command starts its own, a few times.
    for _ in 0..3 {
        let started = match user::reuse::start(home, host, access, persist).await {
            Ok(started) => started,
            Err(e) => {
                tracing::warn!("{e}; this command logs in on its own");
                return None;
            }
        };
        match started {
            Started::Failed { error, wrong_code } => return Some(Err((error, wrong_code))),
            Started::Ready => break,
            Started::Busy => {
                let until = tokio::time::Instant::now() + latchkey_client::net::STEP_TIMEOUT * 2;
                loop {
                    if let Ok(Some(remote)) = user::reuse::reach(home, host).await {
                        return Some(Ok(remote));
                    }
                    if !user::reuse::holder_runs(&place) {
                        break;
                    }
                    // Serving (its socket bound) and not answering: stopped
                    // or hung. This command does not wait for it.
                    if place.socket.exists() {
                        tracing::warn!(
                            "the process keeping the session to '{host}' does not answer; \
                             this command logs in on its own"
                        );
                        return None;
                    }
                    if tokio::time::Instant::now() >= until {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    user::reuse::reach(home, host).await.ok().flatten().map(Ok)
}

/// `latchkey disconnect HOST`.
pub(crate) async fn disconnect(home: &Home, host: &HostName) -> anyhow::Result<ExitCode> {
    #[cfg(unix)]
    if user::reuse::disconnect(home, host).await? {
        println!("disconnected from {host}");
        return Ok(ExitCode::SUCCESS);
    }
    #[cfg(not(unix))]
    let _ = home;
    println!("no session to {host} was kept");
    Ok(ExitCode::SUCCESS)
}

/// `latchkey hold-session HOST`: started by a command, in the background.
pub(crate) async fn hold_session(
    home: &Home,
    host: &HostName,
    persist: Duration,
) -> anyhow::Result<ExitCode> {
    #[cfg(unix)]
    {
        user::reuse::hold(home, host, persist, |started| {
            println!("{}", started.line());
            let _ = std::io::Write::flush(&mut std::io::stdout());
        })
        .await?;
        Ok(ExitCode::SUCCESS)
    }
    #[cfg(not(unix))]
    {
        let _ = (home, host, persist);
        anyhow::bail!("sessions are not kept on this platform")
    }
}

/// An exit status as a process exit code.
fn exit_code(status: i32) -> ExitCode {
    ExitCode::from(u8::try_from(status).unwrap_or(255))
}

/// `latchkey enroll TOKEN`.
pub(crate) async fn enroll(home: &Home, token: &str) -> anyhow::Result<ExitCode> {
    let name = user::enroll(home, token).await?;
    println!(
        "enrolled as user '{name}' (identity in {})",
        home.path.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `latchkey hosts --forget HOST`.
pub(crate) fn forget_host_key(home: &Home, host: &HostName) -> anyhow::Result<ExitCode> {
    let (cfg, _) = home.user()?;
    if home.forget_host_key(&cfg.pin, host)? {
        println!(
            "forgot the pinned key of '{host}'; the next connection pins the key it is offered"
        );
    } else {
        println!("no key was pinned for '{host}'");
    }
    Ok(ExitCode::SUCCESS)
}

/// `latchkey hosts --keys [--json]`.
pub(crate) fn pinned_keys(home: &Home, json: bool) -> anyhow::Result<ExitCode> {
    let (cfg, _) = home.user()?;
    let mut pinned = home.known_hosts()?;
    pinned.retain(|(relay, _, _)| *relay == cfg.pin);
    if json {
        let rows: Vec<_> = pinned
            .iter()
            .map(|(_, host, key)| {
                serde_json::json!({ "host": host.as_str(), "fingerprint": key.fingerprint() })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!("{:<24} FINGERPRINT", "HOST");
        for (_, host, key) in pinned {
            println!("{:<24} {}", host, key.fingerprint());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `latchkey hosts [--json]`.
pub(crate) async fn hosts(home: &Home, json: bool) -> anyhow::Result<ExitCode> {
    let hosts = user::hosts(home).await?;
    let names: Vec<HostName> = hosts.iter().map(|h| h.name.clone()).collect();
    if let Err(e) = home.save_listed_hosts(&names) {
        // Only completion reads it: the listing stands.
        eprintln!("warning: cannot save the host names for shell completion: {e}");
    }
    if json {
        let rows: Vec<_> = hosts
            .iter()
            .map(|h| {
                serde_json::json!({
                    "host": h.name.as_str(), "owner": h.owner.as_str(),
                    "online": h.online, "locked": h.locked, "owner_access": h.is_owner,
                    "desktop": h.desktop.map(|d| d.scheme()),
                    "expires_at": h.expires_at.and_then(|at| jiff::Timestamp::from_second(at).ok())
                        .map(|t| t.to_string()),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!(
            "{:<24} {:<16} {:<8} {:<8} {:<8} DESKTOP",
            "HOST", "OWNER", "ONLINE", "LOCKED", "ACCESS"
        );
        for h in hosts {
            let yes = |b| if b { "yes" } else { "no" };
            let access = match (h.is_owner, h.expires_at) {
                (true, _) => "owner".to_string(),
                (false, None) => "shared".to_string(),
                // Until when, in local time: the admin gave it an end.
                (false, Some(at)) => jiff::Timestamp::from_second(at).map_or_else(
                    |_| "shared".into(),
                    |t| {
                        let local = t.to_zoned(jiff::tz::TimeZone::system());
                        format!("shared until {}", local.strftime("%Y-%m-%d %H:%M"))
                    },
                ),
            };
            let desktop = h.desktop.map_or("-", |d| d.scheme());
            println!(
                "{:<24} {:<16} {:<8} {:<8} {access:<8} {desktop}",
                h.name,
                h.owner,
                yes(h.online),
                yes(h.locked)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `latchkey connect HOST`: exits with the shell's status.
pub(crate) async fn connect(
    home: &Home,
    host: &HostName,
    code_stdin: bool,
) -> anyhow::Result<ExitCode> {
    let remote = open(home, host, code_stdin).await?;
    let status = tokio::select! {
        status = user::shell::connect(&remote) => status,
        // A closed terminal (SIGHUP) or SIGTERM: the terminal's
        // mode is restored as the shell's future drops, and
        // closing tells the host at once, which hangs up the shell.
        code = interrupted() => {
            remote.close().await;
            return Ok(ExitCode::from(code));
        }
    };
    remote.close().await;
    Ok(exit_code(status?))
}

/// `latchkey exec HOST -- COMMAND...`: exits with the command's status.
pub(crate) async fn exec(
    home: &Home,
    host: &HostName,
    code_stdin: bool,
    command: Vec<String>,
) -> anyhow::Result<ExitCode> {
    let remote = open(home, host, code_stdin).await?;
    let status = tokio::select! {
        status = user::exec::exec(&remote, command) => status,
        code = interrupted() => {
            // Closing tells the host at once: it hangs up the command.
            remote.close().await;
            return Ok(ExitCode::from(code));
        }
    };
    remote.close().await;
    Ok(exit_code(status?))
}

/// `latchkey forward HOST SPEC`: runs until stopped, or fails when the
/// session ends.
pub(crate) async fn forward(
    home: &Home,
    host: &HostName,
    spec: &ForwardSpec,
    code_stdin: bool,
) -> anyhow::Result<ExitCode> {
    let remote = std::sync::Arc::new(open(home, host, code_stdin).await?);
    let target = spec.target.clone();
    let ended = tokio::select! {
        r = user::forward::forward(remote.clone(), spec, |local| {
            println!("forwarding {local} -> {target} via {host} (Ctrl-C to stop)");
            let _ = std::io::Write::flush(&mut std::io::stdout());
        }) => r?,
        never = user::status::report(&remote) => match never {},
        _ = shutdown_signal() => {
            remote.close().await;
            return Ok(ExitCode::SUCCESS);
        }
    };
    anyhow::bail!("session ended: {ended}");
}

/// `latchkey desktop HOST`: forwards the desktop the host declares to a
/// local port and opens a viewer on it (`viewer`); runs until stopped, or
/// fails when the session ends.
pub(crate) async fn desktop(
    home: &Home,
    host: &HostName,
    viewer: bool,
    port: Option<u16>,
    code_stdin: bool,
) -> anyhow::Result<ExitCode> {
    // Read first, so a user.toml in error fails before the code is asked.
    let viewers = home.user()?.0.viewer;
    let remote = std::sync::Arc::new(open(home, host, code_stdin).await?);
    let desktop = match user::desktop::ask(&remote).await {
        Ok(desktop) => desktop,
        Err(e) => {
            // End the session now, not at the relay's idle timeout.
            remote.close().await;
            return Err(e.into());
        }
    };
    let spec = user::desktop::forward_spec(&desktop, port.unwrap_or(0));
    // Held while forwarding: it watches the viewer for a failure to tell.
    let mut opened = None;
    let ended = tokio::select! {
        r = user::forward::forward(remote.clone(), &spec, |local| {
            let local = DesktopUrl::new(desktop.protocol, local);
            println!("desktop of {host} at {local} (Ctrl-C to stop)");
            let _ = std::io::Write::flush(&mut std::io::stdout());
            if viewer {
                opened = open_viewer(&local, &viewers);
            }
        }) => r,
        never = user::status::report(&remote) => match never {},
        _ = shutdown_signal() => {
            remote.close().await;
            return Ok(ExitCode::SUCCESS);
        }
    };
    drop(opened);
    remote.close().await;
    anyhow::bail!("session ended: {}", ended?);
}

/// Opens the user's viewer (or the system's opener) on the forwarded
/// desktop `local`; where there is none, says how to connect instead.
fn open_viewer(local: &DesktopUrl, viewers: &Viewers) -> Option<Viewer> {
    let scheme = local.protocol.scheme();
    let instead = format!(
        "connect your {} viewer to {}, or name one in user.toml ([viewer] {scheme})",
        scheme.to_uppercase(),
        local.target
    );
    let Some(argv) = user::desktop::viewer_command(local, viewers, std::env::consts::OS) else {
        eprintln!("no viewer to open it here: {instead}");
        return None;
    };
    match user::desktop::open_viewer(&argv, local) {
        Ok(opened) => Some(opened),
        Err(e) => {
            let program = argv.first().map(String::as_str).unwrap_or_default();
            eprintln!("cannot start the viewer {program}: {e}; {instead}");
            None
        }
    }
}

/// `latchkey proxy HOST [TARGET:PORT]`: exits 0 when the target closed
/// cleanly, 255 (as ssh does) when Latchkey failed, having said why.
pub(crate) async fn proxy(
    home: &Home,
    host: &HostName,
    target: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let target = target.unwrap_or(user::proxy::DEFAULT_TARGET);
    let joined = async {
        if target.parse::<std::net::SocketAddr>().is_err() {
            anyhow::bail!(
                "invalid target '{target}': give an IP address and port, e.g. 127.0.0.1:22"
            );
        }
        // Standard input is the data: the code comes from the terminal or
        // the environment, never from it.
        let remote = open(home, host, false).await?;
        let joined = tokio::select! {
            r = user::proxy::proxy(&remote, target) => r.map_err(anyhow::Error::from),
            _ = shutdown_signal() => Ok(()),
            never = user::status::report(&remote) => match never {},
        };
        remote.close().await;
        joined
    };
    match joined.await {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("latchkey proxy: {e:#}");
            Ok(ExitCode::from(super::LATCHKEY_FAILED))
        }
    }
}

/// `latchkey ssh-config [--write]`.
pub(crate) async fn ssh_config(
    home: &Home,
    explicit_home: Option<&std::path::Path>,
    write: bool,
) -> anyhow::Result<ExitCode> {
    let hosts: Vec<HostName> = user::hosts(home)
        .await?
        .into_iter()
        .map(|h| h.name)
        .collect();
    let exe = std::env::current_exe()?;
    let home_dir = explicit_home.map(std::path::absolute).transpose()?;
    let text = user::ssh_config::render(&hosts, &exe, home_dir.as_deref());
    if !write {
        print!("{text}");
        return Ok(ExitCode::SUCCESS);
    }
    let ssh_dir = directories::BaseDirs::new()
        .map(|d| d.home_dir().join(".ssh"))
        .ok_or_else(|| anyhow::anyhow!("cannot tell your home directory"))?;
    let written = user::ssh_config::write(&ssh_dir, &text)?;
    println!(
        "wrote {} host(s) to {}",
        hosts.len(),
        written.file.display()
    );
    if let Some(config) = written.included_in {
        println!("included it from {}", config.display());
    }
    if let Some(first) = hosts.first() {
        println!("try: ssh {first}{}", user::ssh_config::SUFFIX);
    }
    Ok(ExitCode::SUCCESS)
}

/// `latchkey reboot HOST`: returns once the host is back.
pub(crate) async fn reboot(
    home: &Home,
    host: &HostName,
    code_stdin: bool,
) -> anyhow::Result<ExitCode> {
    let remote = open(home, host, code_stdin).await?;
    if let Err(e) = remote.request_reboot().await {
        // End the session now, not at the relay's idle timeout.
        remote.close().await;
        return Err(e.into());
    }
    eprintln!("{host} is rebooting…");
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let waited = remote
        .wait_if_rebooting(|t| {
            if tty {
                eprint!("\rwaiting for {host}: {} s", t.as_secs());
            }
        })
        .await;
    remote.close().await;
    let waited = waited?;
    eprintln!("\r{host} is back after {} s", waited.as_secs());
    Ok(ExitCode::SUCCESS)
}

/// `latchkey cp SRC DST`, one side `HOST:PATH`.
pub(crate) async fn copy(
    home: &Home,
    src: &str,
    dst: &str,
    code_stdin: bool,
) -> anyhow::Result<ExitCode> {
    let spec = CopySpec::parse(src, dst).map_err(anyhow::Error::msg)?;
    let host: HostName = spec.host().parse()?;
    let remote = open(home, &host, code_stdin).await?;
    let copy = async {
        match &spec {
            CopySpec::Upload {
                local,
                remote: path,
                ..
            } => user::copy::upload(&remote, local, path).await,
            CopySpec::Download {
                remote: path,
                local,
                ..
            } => user::copy::download(&remote, path, local).await,
        }
    };
    // Interrupting drops the copy, whose partial file removes
    // itself; closing the session makes the host remove its own.
    let copied = tokio::select! {
        copied = copy => copied,
        code = interrupted() => {
            remote.close().await;
            eprintln!("interrupted: nothing copied");
            return Ok(ExitCode::from(code));
        }
    };
    // End the session now, not at the relay's idle timeout.
    remote.close().await;
    let bytes = copied?;
    eprintln!("copied {bytes} bytes, checksum verified");
    Ok(ExitCode::SUCCESS)
}
