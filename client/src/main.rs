//! `latchkey`: reach your hosts through a Latchkey relay, or run the agent
//! on a host. A thin clap shell over the library.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::{Parser, Subcommand};
use latchkey_client::{
    code,
    config::Home,
    host,
    user::{self, copy::CopySpec, forward::ForwardSpec, remote::Remote},
};
use latchkey_protocol::{
    frame::CodeTarget,
    ids::{HostName, UserName},
    ksf::KsfProfile,
};
use tokio_util::sync::CancellationToken;

/// Reach your computers through a Latchkey relay.
#[derive(Debug, Parser)]
#[command(name = "latchkey", version, about)]
struct Cli {
    /// Directory holding this device's identities (default: the platform
    /// config dir, e.g. ~/.config/latchkey).
    #[arg(long, global = true, env = "LATCHKEY_HOME")]
    home: Option<PathBuf>,
    /// Seconds a session whose relay went away keeps trying to resume, on
    /// another relay of the cluster or on the same one restarted, before it
    /// ends (no code is asked).
    #[arg(
        long,
        global = true,
        env = "LATCHKEY_RESUME_WAIT",
        default_value_t = 60,
        value_name = "SECS"
    )]
    resume_wait: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Enroll this device as a user with an invite token from your admin.
    Enroll {
        /// The token (lk1-...).
        token: String,
    },
    /// List the hosts you may reach, online or not, locked or not.
    Hosts {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// List the host keys this device pinned on first use (compare a
        /// fingerprint with `latchkey host info` on the host), without
        /// asking the relay.
        #[arg(long, conflicts_with = "forget")]
        keys: bool,
        /// Forget HOST's pinned key, to accept a new one at the next
        /// connection (after comparing fingerprints: see `--keys`).
        #[arg(long, value_name = "HOST")]
        forget: Option<HostName>,
    },
    /// Open an interactive shell on HOST (a PTY there, raw mode here).
    /// At the start of a line, `~R` reboots the host and waits for it
    /// (a new shell opens when it is back), `~.` disconnects, `~~` sends `~`.
    Connect {
        /// The host.
        host: HostName,
        #[command(flatten)]
        code: LoginCode,
    },
    /// Run one command on HOST and exit with its status (127 if the host
    /// has no such program). The command runs directly, without a shell:
    /// use `-- sh -c '...'` for shell syntax. Interrupting `latchkey`
    /// (Ctrl-C, SIGTERM) hangs up the command on the host (SIGHUP, then
    /// SIGKILL after 2 s).
    // Written out: clap's error usage would show a `--home` given on the
    // command line as if it were required.
    #[command(override_usage = "latchkey exec [OPTIONS] <HOST> -- <COMMAND>...")]
    Exec {
        /// The host.
        host: HostName,
        #[command(flatten)]
        code: LoginCode,
        /// The command and its arguments (after `--`).
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Forward a local TCP port to TARGET:PORT as seen from HOST, like
    /// `ssh -L` (for RDP, VNC, SSH...). The host's config must allow the
    /// target: it is checked when the forward starts, and a target the host
    /// does not allow ends the command with the targets it allows.
    Forward {
        /// The host.
        host: HostName,
        /// [BIND:]LOCALPORT:TARGET:PORT, e.g. 5900:127.0.0.1:5900 (LOCALPORT 0 picks a free port).
        spec: ForwardSpec,
        #[command(flatten)]
        code: LoginCode,
    },
    /// Copy a file to or from a host: `cp LOCAL HOST:PATH` or `cp HOST:PATH LOCAL`
    /// (relative host paths start in the host user's home directory). A
    /// destination that is a directory (or ends in `/`) receives the file
    /// under its own name, as with cp. Files that report a size of 64 KiB or
    /// less (procfs, sysfs) are copied as a read gives them. A failed or
    /// interrupted copy leaves no partial file on either side.
    #[command(override_usage = "latchkey cp [OPTIONS] <SRC> <DST>")]
    Cp {
        /// Source.
        src: String,
        /// Destination.
        dst: String,
        #[command(flatten)]
        code: LoginCode,
    },
    /// Reboot HOST and wait until it is back (needs shared access enabled
    /// on the host; the relay waits up to its reboot deadline, 10 minutes by default).
    /// If the host's reboot command fails, says why (its exit status and
    /// first line of stderr) at once.
    Reboot {
        /// The host.
        host: HostName,
        #[command(flatten)]
        code: LoginCode,
    },
    /// Commands that run on a host.
    #[command(subcommand)]
    Host(HostCommand),
}

#[derive(Debug, clap::Args)]
struct LoginCode {
    /// Read the access code from one line of standard input (else
    /// LATCHKEY_ACCESS_CODE, else a prompt without echo).
    #[arg(long)]
    code_stdin: bool,
}

#[derive(Debug, Subcommand)]
enum HostCommand {
    /// Enroll this computer as a host with an invite token from your admin.
    Enroll {
        /// The token (lk1-...).
        token: String,
        /// The account shells, commands and copies run as (`session_user`
        /// in host.toml). An agent running as root needs one, so that
        /// sessions cannot read the host's keys: an unprivileged account,
        /// or `root` to allow that anyway.
        #[arg(long, value_name = "ACCOUNT")]
        session_user: Option<String>,
    },
    /// Set or change the owner's access code (asked twice, without echo).
    /// Users granted shared access keep the code they inherited.
    SetCode {
        #[command(flatten)]
        input: CodeInput,
    },
    /// "Forgot your access code": set a new code for one secondary user's
    /// own grant (run by someone with local access to this host).
    ResetCode {
        /// The secondary user whose code to reset.
        #[arg(long)]
        user: UserName,
        #[command(flatten)]
        input: CodeInput,
    },
    /// Run the host agent: stay connected to the relay and serve sessions.
    Run,
    /// Show this host's name, relay and key fingerprint (users compare it
    /// with `latchkey hosts --keys` when their client reports a changed key).
    Info,
    /// The agent's file helper for copies, run as the session's account
    /// (internal).
    #[command(hide = true)]
    FileHelper {
        #[command(subcommand)]
        op: FileOp,
    },
}

/// What the file helper does (see `latchkey_client::host::file_helper`).
#[derive(Debug, Subcommand)]
enum FileOp {
    /// Send a file.
    Read {
        /// The file.
        path: String,
    },
    /// Receive a file.
    Write {
        /// The destination (a file, or a directory to write NAME into).
        path: String,
        /// The source's file name.
        name: String,
        /// The bytes to receive.
        size: u64,
        /// The permission bits to give it.
        mode: u32,
    },
}

#[derive(Debug, clap::Args)]
struct CodeInput {
    /// Read the code from one line of standard input (for scripts).
    #[arg(long)]
    code_stdin: bool,
    /// Stretch the code with the insecure test profile (tests and
    /// benchmarks only; relays refuse it unless configured to allow it).
    #[arg(long, hide = true, env = "LATCHKEY_INSECURE_FAST_KSF", value_parser = clap::builder::BoolishValueParser::new())]
    insecure_fast_ksf: bool,
}

impl CodeInput {
    fn ksf(&self) -> KsfProfile {
        if self.insecure_fast_ksf {
            KsfProfile::InsecureFastForTests
        } else {
            KsfProfile::DEFAULT
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    user::remote::set_resume_wait(std::time::Duration::from_secs(cli.resume_wait));
    let filter = tracing_subscriber::EnvFilter::try_from_env("LATCHKEY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    // Do not wait for a blocked read of the terminal.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs in to `host` (asking for the code once) and waits for the pairing.
async fn open(home: &Home, host: &HostName, code: &LoginCode) -> anyhow::Result<Remote> {
    let access = code::for_login(code.code_stdin, host.as_str())?;
    Ok(Remote::open(home, host, access).await?)
}

/// An exit status as a process exit code.
fn exit_code(status: i32) -> ExitCode {
    ExitCode::from(u8::try_from(status).unwrap_or(255))
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Command::Host(HostCommand::FileHelper { op }) = &cli.command {
        // The agent shows the user this line as it is.
        let done = match op {
            FileOp::Read { path } => host::file_helper::read(path).await,
            FileOp::Write {
                path,
                name,
                size,
                mode,
            } => host::file_helper::write(path, name, *size, *mode).await,
        };
        return Ok(match done {
            Ok(()) => ExitCode::SUCCESS,
            Err(why) => {
                eprintln!("{why}");
                ExitCode::FAILURE
            }
        });
    }
    let home = Home::locate(cli.home);
    match cli.command {
        Command::Enroll { token } => {
            let name = user::enroll(&home, &token).await?;
            println!(
                "enrolled as user '{name}' (identity in {})",
                home.path.display()
            );
        }
        Command::Hosts {
            forget: Some(host), ..
        } => {
            let (cfg, _) = home.user()?;
            if home.forget_host_key(&cfg.pin, &host)? {
                println!("forgot the pinned key of '{host}'; the next connection pins the key it is offered");
            } else {
                println!("no key was pinned for '{host}'");
            }
        }
        Command::Hosts {
            keys: true, json, ..
        } => {
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
        }
        Command::Hosts { json, .. } => {
            let hosts = user::hosts(&home).await?;
            if json {
                let rows: Vec<_> = hosts
                    .iter()
                    .map(|h| {
                        serde_json::json!({
                            "host": h.name.as_str(), "owner": h.owner.as_str(),
                            "online": h.online, "locked": h.locked, "owner_access": h.is_owner,
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!(
                    "{:<24} {:<16} {:<8} {:<8} ACCESS",
                    "HOST", "OWNER", "ONLINE", "LOCKED"
                );
                for h in hosts {
                    let yes = |b| if b { "yes" } else { "no" };
                    let access = if h.is_owner { "owner" } else { "shared" };
                    println!(
                        "{:<24} {:<16} {:<8} {:<8} {access}",
                        h.name,
                        h.owner,
                        yes(h.online),
                        yes(h.locked)
                    );
                }
            }
        }
        Command::Connect { host, code } => {
            let remote = open(&home, &host, &code).await?;
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
            return Ok(exit_code(status?));
        }
        Command::Exec {
            host,
            code,
            command,
        } => {
            let remote = open(&home, &host, &code).await?;
            let status = tokio::select! {
                status = user::exec::exec(&remote, command) => status,
                code = interrupted() => {
                    // Closing tells the host at once: it hangs up the command.
                    remote.close().await;
                    return Ok(ExitCode::from(code));
                }
            };
            remote.close().await;
            return Ok(exit_code(status?));
        }
        Command::Forward { host, spec, code } => {
            let remote = std::sync::Arc::new(open(&home, &host, &code).await?);
            let target = spec.target.clone();
            let ended = tokio::select! {
                r = user::forward::forward(remote.clone(), &spec, |local| {
                    println!("forwarding {local} -> {target} via {host} (Ctrl-C to stop)");
                    let _ = std::io::Write::flush(&mut std::io::stdout());
                }) => r?,
                _ = shutdown_signal() => {
                    remote.close().await;
                    return Ok(ExitCode::SUCCESS);
                }
            };
            anyhow::bail!("session ended: {ended}");
        }
        Command::Reboot { host, code } => {
            let remote = open(&home, &host, &code).await?;
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
        }
        Command::Cp { src, dst, code } => {
            let spec = CopySpec::parse(&src, &dst).map_err(anyhow::Error::msg)?;
            let host: HostName = spec.host().parse()?;
            let remote = open(&home, &host, &code).await?;
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
        }
        Command::Host(HostCommand::Enroll {
            token,
            session_user,
        }) => {
            let name = host::enroll(&home, &token, session_user).await?;
            println!(
                "enrolled as host '{name}' (config in {})",
                home.host_config_path().display()
            );
            println!("next: `latchkey host set-code`, then `latchkey host run`");
        }
        Command::Host(HostCommand::SetCode { input }) => {
            let code = code::new_code(input.code_stdin)?;
            host::set_code(&home, CodeTarget::Owner, code, input.ksf())
                .await
                .context("setting the access code")?;
            println!("access code set; users granted shared access from now on inherit it");
        }
        Command::Host(HostCommand::ResetCode { user, input }) => {
            let code = code::new_code(input.code_stdin)?;
            host::set_code(&home, CodeTarget::Grant(user.clone()), code, input.ksf())
                .await
                .with_context(|| format!("resetting the access code of '{user}'"))?;
            println!(
                "access code of '{user}' on this host reset; other users' codes are unchanged"
            );
        }
        Command::Host(HostCommand::Info) => {
            let (cfg, key) = home.host()?;
            println!("host:        {}", cfg.host);
            println!("relay:       {}", cfg.relays().join(", "));
            println!("fingerprint: {}", key.public.fingerprint());
        }
        Command::Host(HostCommand::FileHelper { .. }) => unreachable!("handled first"),
        Command::Host(HostCommand::Run) => {
            let shutdown = CancellationToken::new();
            let stop = shutdown.clone();
            tokio::spawn(async move {
                shutdown_signal().await;
                stop.cancel();
            });
            host::run(&home, shutdown).await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Waits for Ctrl-C, SIGTERM or SIGHUP (the terminal closed); returns the
/// exit status a shell gives a command they end (128 + the signal's number).
async fn interrupted() -> u8 {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let (Ok(mut term), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) {
            tokio::select! {
                _ = term.recv() => return 143,
                _ = hup.recv() => return 129,
                _ = tokio::signal::ctrl_c() => return 130,
            }
        }
    }
    let _ = tokio::signal::ctrl_c().await;
    130
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
