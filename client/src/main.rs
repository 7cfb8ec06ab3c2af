//! `latchkey`: reach your hosts through a Latchkey relay, or run the agent
//! on a host. A thin clap shell over the library: this file defines the
//! command line and sends each command to its handling in `cli/`.

mod cli;

use std::{path::PathBuf, process::ExitCode};

use clap::{CommandFactory, Parser, Subcommand};
use clap_complete::{ArgValueCandidates, ArgValueCompleter};
use latchkey_client::{
    config::Home,
    host,
    user::{self, forward::ForwardSpec},
};
use latchkey_protocol::{
    ids::{HostName, UserName},
    ksf::KsfProfile,
};

/// Reach your computers through a Latchkey relay.
#[derive(Debug, Parser)]
#[command(
    name = "latchkey",
    version,
    about,
    after_help = "Exit status, as ssh's: `connect` and `exec` exit with the remote \
                  command's status; `connect`, `exec`, `cp`, `forward`, `desktop`, `proxy` \
                  and `reboot` exit 255 when Latchkey itself fails (relay unreachable, wrong \
                  code, host locked or offline, access revoked), each failure with its own \
                  message; other commands exit 1 when they fail."
)]
struct Cli {
    /// Directory holding this device's identities (default: the platform
    /// config dir, e.g. ~/.config/latchkey).
    #[arg(long, global = true, env = "LATCHKEY_HOME")]
    home: Option<PathBuf>,
    /// Seconds a session whose relay went away keeps trying to resume, on
    /// another relay of the cluster or on the same one restarted, before it
    /// ends (no code is asked). Given before the command (`latchkey
    /// --resume-wait 10 connect HOST`): host commands have no use for it.
    #[arg(
        long,
        env = "LATCHKEY_RESUME_WAIT",
        default_value_t = 60,
        value_name = "SECS"
    )]
    resume_wait: u64,
    /// How long the session a command opens to a host stays after its last
    /// command, as ssh's ControlPersist (seconds, or e.g. 30s, 10m, 2h;
    /// default 10m). Commands to that host meanwhile (`exec`, `cp`,
    /// `proxy`, `forward`, `desktop`, `connect`, `reboot`) reuse it, ask no
    /// code and count no attempt; `latchkey disconnect HOST` ends it. 0
    /// keeps none, and ends one kept before once this command is done.
    #[arg(long, global = true, env = "LATCHKEY_PERSIST", value_name = "TIME", value_parser = user::reuse::parse_persist)]
    persist: Option<std::time::Duration>,
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
    /// List the hosts you may reach, online or not, locked or not, and the
    /// desktop each offers (`latchkey desktop`).
    ///
    /// The names listed are saved (`listed_hosts` in the home) for shell
    /// completion of HOST arguments.
    Hosts {
        /// Print JSON (fields: host, owner, online, locked, owner_access,
        /// desktop; with --keys: host, fingerprint).
        #[arg(long)]
        json: bool,
        /// List the host keys this device pinned on first use (compare a
        /// fingerprint with `latchkey host info` on the host), without
        /// asking the relay.
        #[arg(long, conflicts_with = "forget")]
        keys: bool,
        /// Forget HOST's pinned key, to accept a new one at the next
        /// connection (after comparing fingerprints: see `--keys`).
        #[arg(long, value_name = "HOST", add = ArgValueCandidates::new(cli::complete::hosts))]
        forget: Option<HostName>,
    },
    /// Open an interactive shell on HOST (a PTY there, raw mode here).
    /// At the start of a line, `~R` reboots the host and waits for it
    /// (a new shell opens when it is back), `~.` disconnects, `~~` sends `~`.
    Connect {
        /// The host.
        #[arg(add = ArgValueCandidates::new(cli::complete::hosts))]
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
        #[arg(add = ArgValueCandidates::new(cli::complete::hosts))]
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
        #[arg(add = ArgValueCandidates::new(cli::complete::hosts))]
        host: HostName,
        /// [BIND:]LOCALPORT:TARGET:PORT, e.g. 5900:127.0.0.1:5900 (LOCALPORT 0 picks a free port).
        spec: ForwardSpec,
        #[command(flatten)]
        code: LoginCode,
    },
    /// Open HOST's remote desktop (VNC or RDP) in a viewer here, until
    /// Ctrl-C.
    ///
    /// The host says which desktop it declares (`desktop` in its
    /// host.toml); a local port on 127.0.0.1 is forwarded to it, as by
    /// `latchkey forward`, its address printed (`desktop of HOST at
    /// vnc://127.0.0.1:PORT`) and a viewer opened on it: yours, named in
    /// user.toml (`[viewer]` with `vnc = ["vncviewer", "127.0.0.1::{port}"]`
    /// or `rdp = [...]`; `{addr}`, `{port}` and `{url}` are filled in), else
    /// xdg-open (Linux), open (macOS) or mstsc (RDP on Windows). Where there
    /// is none, only the address is printed.
    Desktop {
        /// The host.
        #[arg(add = ArgValueCandidates::new(cli::complete::hosts))]
        host: HostName,
        /// Only print the address; open no viewer.
        #[arg(long)]
        no_viewer: bool,
        /// The local port on 127.0.0.1 to listen on (default, or 0: a free
        /// one).
        #[arg(long, value_name = "N")]
        port: Option<u16>,
        #[command(flatten)]
        code: LoginCode,
    },
    /// Join standard input and output to TARGET:PORT as seen from HOST
    /// (default: the host's own SSH server, 127.0.0.1:22), like `ssh -W`:
    /// ssh's ProxyCommand (`latchkey ssh-config` writes the blocks). The
    /// code is asked on the terminal (or taken from LATCHKEY_ACCESS_CODE),
    /// unless a session to HOST is kept (see --persist).
    /// Exits 255 when Latchkey fails, as ssh does.
    Proxy {
        /// The host.
        #[arg(add = ArgValueCandidates::new(cli::complete::hosts))]
        host: HostName,
        /// The target as seen from the host: an IP address and a port.
        target: Option<String>,
    },
    /// Print an OpenSSH config block for each host you may reach (`Host
    /// NAME.latchkey`, through `latchkey proxy`), so that `ssh
    /// mypc.latchkey`, scp, sftp, rsync and git work; `--write` installs
    /// them in ~/.ssh/config.d/latchkey and includes that file from
    /// ~/.ssh/config (once).
    SshConfig {
        /// Install the blocks instead of printing them.
        #[arg(long)]
        write: bool,
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
        #[arg(add = ArgValueCompleter::new(cli::complete::host_or_path))]
        src: String,
        /// Destination.
        #[arg(add = ArgValueCompleter::new(cli::complete::host_or_path))]
        dst: String,
        #[command(flatten)]
        code: LoginCode,
    },
    /// End the session kept for HOST (see --persist), and the commands
    /// still using it.
    Disconnect {
        /// The host.
        #[arg(add = ArgValueCandidates::new(cli::complete::hosts))]
        host: HostName,
    },
    /// Hold HOST's session for the commands that follow (started by them,
    /// in the background; the code comes on standard input).
    #[command(hide = true)]
    HoldSession {
        /// The host.
        host: HostName,
        /// How long the session stays after its last command.
        #[arg(long = "idle-limit", value_parser = user::reuse::parse_persist)]
        idle_limit: std::time::Duration,
    },
    /// Reboot HOST and wait until it is back (needs shared access enabled
    /// on the host; the relay waits up to its reboot deadline, 10 minutes by default).
    /// If the host's reboot command fails, says why (its exit status and
    /// first line of stderr) at once.
    Reboot {
        /// The host.
        #[arg(add = ArgValueCandidates::new(cli::complete::hosts))]
        host: HostName,
        #[command(flatten)]
        code: LoginCode,
    },
    /// Commands that run on a host.
    #[command(subcommand)]
    Host(HostCommand),
    /// Print the shell completion script for SHELL.
    ///
    /// Bash: `latchkey completions bash >
    /// /usr/share/bash-completion/completions/latchkey` (or `source
    /// <(latchkey completions bash)` in ~/.bashrc). The script asks
    /// `latchkey` itself what to offer at each Tab, so a HOST argument
    /// completes to the hosts `latchkey hosts` last listed.
    Completions {
        /// The shell.
        shell: cli::complete::Shell,
    },
    /// Write a man page for `latchkey` and each of its commands into DIR.
    ///
    /// For packagers: `latchkey man --dir /usr/share/man/man1`.
    Man {
        /// The directory to write the pages to (made if missing).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
    },
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
    /// Set or change the owner's access code (8 to 256 bytes, typed twice
    /// without echo).
    ///
    /// A code too short or a repeat that differs is asked again, 3 tries in
    /// all. Users granted shared access keep the code they inherited.
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
    /// The agent as a Windows service (Linux and macOS have systemd and
    /// launchd files instead: docs/host.md).
    Service {
        #[command(subcommand)]
        action: ServiceAction,
    },
    /// Show this host's name, relay and key fingerprint (users compare it
    /// with `latchkey hosts --keys` when their client reports a changed key).
    Info {
        /// Print JSON (fields: host, relays, fingerprint).
        #[arg(long)]
        json: bool,
    },
    /// List the sessions this host recorded (`record` in host.toml),
    /// oldest first: id, start, user, what, length, how it ended.
    Recordings {
        /// Print JSON (an array of: id, started, user, kind, detail, secs,
        /// outcome, bytes).
        #[arg(long)]
        json: bool,
    },
    /// Play a recording in this terminal, with its own timing: a shell as
    /// its user saw it, a command with its output and exit status, a copy
    /// or a forward as its line.
    ///
    /// The output goes to standard output as it was sent (when standard
    /// output is no terminal, at once); who, what and how it ended go to
    /// standard error. Files are asciicast v2: `asciinema play` plays them
    /// too.
    Replay {
        /// The recording's id, as `latchkey host recordings` lists it.
        id: String,
        /// Play this many times faster.
        #[arg(long, default_value_t = 1.0, value_parser = parse_positive)]
        speed: f64,
        /// The longest pause shown, in seconds, however long the user was
        /// idle.
        #[arg(long, default_value_t = 2.0, value_name = "SECS", value_parser = parse_positive)]
        max_wait: f64,
        /// Show what the user sent too, escaped, on standard error: a
        /// command's standard input (always recorded), a shell's keystrokes
        /// (recorded with `record_keystrokes = true`).
        #[arg(long)]
        input: bool,
    },
    /// The agent's file helper for copies, run as the session's account
    /// (internal).
    #[command(hide = true)]
    FileHelper {
        #[command(subcommand)]
        op: FileOp,
    },
}

/// What `latchkey host service` does.
#[derive(Debug, Subcommand)]
enum ServiceAction {
    /// Register the agent of this home (enrolled, its code set) as the
    /// service LatchkeyHost and start it: at boot, restarted when it
    /// fails, as the unprivileged virtual account NT SERVICE\LatchkeyHost,
    /// with the home's ACL left to that account, SYSTEM and
    /// Administrators. Run as an administrator, with
    /// `--home C:\ProgramData\Latchkey`.
    Install,
    /// Stop the service and remove it (the home stays).
    Uninstall,
    /// What the service manager starts (internal).
    #[command(hide = true)]
    Run,
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

/// A positive number of times or seconds, finite.
fn parse_positive(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(n) if n.is_finite() && n > 0.0 && n <= 1e6 => Ok(n),
        _ => Err(format!("'{text}' is not a positive number")),
    }
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

/// The agent as the Windows service: its log goes to `agent.log` in its
/// home (a service has no standard error), and the service manager runs it
/// on a thread of its own until it says stop.
fn run_service(home: Home) -> ExitCode {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(home.path.join("agent.log"));
    if let Ok(log) = log {
        let filter = tracing_subscriber::EnvFilter::try_from_env("LATCHKEY_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::sync::Mutex::new(log))
            .with_ansi(false)
            .init();
    }
    match host::windows_service::run(home) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The agent serves many sessions and runs on every core. A user's
/// command serves one session, and runs on one thread: its packets then
/// pass between quinn's tasks and the channels' without waking another
/// thread (through a forward on two cores, about a tenth more throughput
/// for a tenth less CPU per GiB; docs/benchmarks.md).
fn runtime_for(command: &Command) -> std::io::Result<tokio::runtime::Runtime> {
    match command {
        Command::Host(_) => tokio::runtime::Runtime::new(),
        _ => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
    }
}

fn main() -> ExitCode {
    // A shell asking what to complete is answered, and the process ends.
    cli::complete::answer(Cli::command);
    let args = Cli::parse();
    #[cfg(unix)]
    if matches!(args.command, Command::HoldSession { .. }) {
        user::reuse::close_inherited_fds();
    }
    user::remote::set_resume_wait(std::time::Duration::from_secs(args.resume_wait));
    cli::user::set_persist(args.persist);
    if let Command::Host(HostCommand::Service {
        action: ServiceAction::Run,
    }) = &args.command
    {
        return run_service(Home::locate(args.home));
    }
    let filter = tracing_subscriber::EnvFilter::try_from_env("LATCHKEY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match runtime_for(&args.command) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let failure = if args.command.reaches_host() {
        ExitCode::from(cli::LATCHKEY_FAILED)
    } else {
        ExitCode::FAILURE
    };
    let result = runtime.block_on(run(args));
    // Do not wait for a blocked read of the terminal.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            failure
        }
    }
}

impl Command {
    /// Whether the command reaches a host, and so exits 255 when Latchkey
    /// fails (its other statuses are the remote command's).
    fn reaches_host(&self) -> bool {
        matches!(
            self,
            Self::Connect { .. }
                | Self::Exec { .. }
                | Self::Forward { .. }
                | Self::Desktop { .. }
                | Self::Proxy { .. }
                | Self::Cp { .. }
                | Self::Reboot { .. }
        )
    }
}

/// Runs one command (its handling is in `cli/`).
async fn run(args: Cli) -> anyhow::Result<ExitCode> {
    if let Command::Host(HostCommand::FileHelper { op }) = &args.command {
        let done = match op {
            FileOp::Read { path } => host::file_helper::read(path).await,
            FileOp::Write {
                path,
                name,
                size,
                mode,
            } => host::file_helper::write(path, name, *size, *mode).await,
        };
        return Ok(cli::host::file_helper_exit(done));
    }
    match &args.command {
        Command::Completions { shell } => return cli::complete::print_script(*shell),
        Command::Man { dir } => return cli::man::write_pages(Cli::command(), dir),
        _ => {}
    }
    // Given on the command line or in LATCHKEY_HOME: `ssh-config` passes
    // it on to the ProxyCommands it writes.
    let explicit_home = args.home.clone();
    let home = Home::locate(args.home);
    match args.command {
        Command::Enroll { token } => cli::user::enroll(&home, &token).await,
        Command::Hosts {
            forget: Some(host), ..
        } => cli::user::forget_host_key(&home, &host),
        Command::Hosts {
            keys: true, json, ..
        } => cli::user::pinned_keys(&home, json),
        Command::Hosts { json, .. } => cli::user::hosts(&home, json).await,
        Command::Connect { host, code } => cli::user::connect(&home, &host, code.code_stdin).await,
        Command::Exec {
            host,
            code,
            command,
        } => cli::user::exec(&home, &host, code.code_stdin, command).await,
        Command::Forward { host, spec, code } => {
            cli::user::forward(&home, &host, &spec, code.code_stdin).await
        }
        Command::Desktop {
            host,
            no_viewer,
            port,
            code,
        } => cli::user::desktop(&home, &host, !no_viewer, port, code.code_stdin).await,
        Command::Reboot { host, code } => cli::user::reboot(&home, &host, code.code_stdin).await,
        Command::Disconnect { host } => cli::user::disconnect(&home, &host).await,
        Command::HoldSession { host, idle_limit } => {
            cli::user::hold_session(&home, &host, idle_limit).await
        }
        Command::Proxy { host, target } => cli::user::proxy(&home, &host, target.as_deref()).await,
        Command::SshConfig { write } => {
            cli::user::ssh_config(&home, explicit_home.as_deref(), write).await
        }
        Command::Cp { src, dst, code } => cli::user::copy(&home, &src, &dst, code.code_stdin).await,
        Command::Host(HostCommand::Enroll {
            token,
            session_user,
        }) => cli::host::enroll(&home, &token, session_user).await,
        Command::Host(HostCommand::SetCode { input }) => {
            cli::host::set_code(&home, input.code_stdin, input.ksf()).await
        }
        Command::Host(HostCommand::ResetCode { user, input }) => {
            cli::host::reset_code(&home, &user, input.code_stdin, input.ksf()).await
        }
        Command::Host(HostCommand::Info { json }) => cli::host::info(&home, json),
        Command::Host(HostCommand::Recordings { json }) => cli::host::recordings(&home, json),
        Command::Host(HostCommand::Replay {
            id,
            speed,
            max_wait,
            input,
        }) => cli::host::replay(&home, &id, speed, max_wait, input),
        Command::Host(HostCommand::FileHelper { .. })
        | Command::Completions { .. }
        | Command::Man { .. } => unreachable!("handled first"),
        Command::Host(HostCommand::Run) => cli::host::run(&home).await,
        Command::Host(HostCommand::Service { action }) => match action {
            ServiceAction::Install => cli::host::service_install(&home),
            ServiceAction::Uninstall => cli::host::service_uninstall(),
            // Handled before the runtime starts (see `main`).
            ServiceAction::Run => unreachable!("the service runs from main"),
        },
    }
}
