//! `latchkey-relay`: the relay's command line. A thin shell over the
//! library: parse flags, set up logging, run one command; and the shell
//! completion and man pages made from those flags.

mod service_manager;

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use clap_complete::env::{Bash, CompleteEnv, EnvCompleter, Fish, Zsh};
use latchkey_server::{
    admin::{self, AdminCommand},
    config::{Config, LogFormat},
    datadir::DataDir,
    default_data_dir,
    store::Location,
    Relay,
};

/// The Latchkey relay: hosts dial out to it, users reach their hosts through it.
#[derive(Debug, Parser)]
#[command(name = "latchkey-relay", version, about)]
struct Cli {
    /// TOML config file (every key is optional; see docs/relay.md).
    #[arg(long, global = true, env = "LATCHKEY_RELAY_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (keys, certificate, database). `serve` creates it on
    /// its first start; `info` and `admin` need one that exists. Overrides
    /// the config.
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Where the state lives: `sqlite` (in the data directory) or a
    /// PostgreSQL connection string (postgres://user:password@host/db).
    /// Overrides the config and LATCHKEY_RELAY_STORE.
    #[arg(long, global = true, hide_env_values = true)]
    store: Option<String>,
    /// Log format. Overrides the config.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the relay (until SIGTERM or Ctrl-C), with its admin console on
    /// admin_listen (127.0.0.1:8080 unless the config says otherwise or off).
    Serve {
        /// UDP address to listen on (default 0.0.0.0:4433). Overrides the config.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
    },
    /// Print the relay's address and the pin that clients and hosts check
    /// (of a relay that has started in the data directory).
    Info,
    /// Manage users, hosts, grants and locks (works while the relay runs; the
    /// data directory must exist: `serve` makes it).
    Admin {
        /// Print JSON instead of tables.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Print the shell completion script for SHELL.
    ///
    /// Bash: `latchkey-relay completions bash >
    /// /usr/share/bash-completion/completions/latchkey-relay`. The script
    /// asks `latchkey-relay` itself what to offer at each Tab.
    Completions {
        /// The shell.
        shell: Shell,
    },
    /// Write a man page for `latchkey-relay` and each of its commands into
    /// DIR (made if missing).
    ///
    /// For packagers: `latchkey-relay man --dir /usr/share/man/man1`.
    Man {
        /// The directory to write the pages to.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
    },
}

/// The shells `completions` writes a script for.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Shell {
    /// GNU Bash.
    Bash,
    /// Z shell.
    Zsh,
    /// fish.
    Fish,
}

/// The variable that makes the binary answer a completion request (named
/// for the product: clap's default, `COMPLETE`, may be set for other
/// reasons).
const COMPLETE_VAR: &str = "LATCHKEY_RELAY_COMPLETE";

/// The program the completion scripts complete and call, from the PATH.
const BIN: &str = "latchkey-relay";

/// The command line as clap reads it: the admin commands in their groups.
fn command() -> clap::Command {
    Cli::command().mut_subcommand("admin", admin::cli::arrange)
}

fn main() -> ExitCode {
    // A shell asking what to complete is answered, and the process ends.
    CompleteEnv::with_factory(command)
        .var(COMPLETE_VAR)
        .bin(BIN)
        .completer(BIN)
        .complete();
    let cli = Cli::from_arg_matches(&command().get_matches()).unwrap_or_else(|e| e.exit());
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    // Neither needs a config nor a data directory.
    match &cli.command {
        Command::Completions { shell } => return print_completions(*shell),
        Command::Man { dir } => return write_man_pages(dir),
        _ => {}
    }
    let mut config = Config::load(cli.config.as_deref(), std::env::vars())?;
    if let Some(dir) = cli.data_dir {
        config.data_dir = Some(dir);
    }
    if let Some(store) = cli.store {
        config.store = Some(store);
    }
    let location = Location::parse(config.store.as_deref())?;
    if let Some(format) = cli.log_format {
        config.log_format = format;
    }
    let data_dir = config.data_dir.clone().unwrap_or_else(default_data_dir);
    config.data_dir = Some(data_dir.clone());
    match cli.command {
        Command::Serve { listen } => {
            if let Some(listen) = listen {
                config.listen = listen;
            }
            init_logging(config.log_format);
            serve(config)
        }
        Command::Info => {
            let data = DataDir::open_existing(&data_dir, !location.is_shared())?;
            let store = location.open(&data.db_path())?;
            let addr = store
                .meta("listen_addr")?
                .unwrap_or_else(|| format!("{} (not started yet)", config.listen));
            let pin = data.pin();
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "address:     {}",
                config.public_addr.as_deref().unwrap_or(&addr)
            )?;
            writeln!(out, "fingerprint: {}", pin.fingerprint())?;
            writeln!(out, "pin:         {}", pin.to_text())?;
            writeln!(out, "data dir:    {}", data_dir.display())?;
            Ok(())
        }
        Command::Admin { json, command } => {
            let data = DataDir::open_existing(&data_dir, !location.is_shared())?;
            let store = match location {
                Location::Embedded => location
                    .open(&data.db_path())
                    .with_context(|| format!("opening the store in {}", data_dir.display()))?,
                // Its errors say "store: PostgreSQL: ..." already.
                Location::Postgres(_) => location.open(&data.db_path())?,
            };
            let mut out = std::io::stdout().lock();
            match admin::run(&command, &data, &*store, &config, json, &mut out) {
                // Read by `| head` that stopped reading: quiet, as Unix tools are.
                Err(e) if e.is_broken_pipe() => Ok(()),
                r => Ok(r?),
            }
        }
        Command::Completions { .. } | Command::Man { .. } => unreachable!("handled first"),
    }
}

/// `completions SHELL`.
fn print_completions(shell: Shell) -> anyhow::Result<()> {
    let shell: &dyn EnvCompleter = match shell {
        Shell::Bash => &Bash,
        Shell::Zsh => &Zsh,
        Shell::Fish => &Fish,
    };
    let mut out = std::io::stdout().lock();
    shell.write_registration(COMPLETE_VAR, BIN, BIN, BIN, &mut out)?;
    out.flush()?;
    Ok(())
}

/// `man --dir DIR`: a page for the binary and one per visible command
/// (`latchkey-relay-admin-grant.1`).
fn write_man_pages(dir: &Path) -> anyhow::Result<()> {
    fn write(cmd: &clap::Command, dir: &Path, source: &str, n: &mut usize) -> std::io::Result<()> {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            write(sub, dir, source, n)?;
        }
        clap_mangen::Man::new(cmd.clone())
            .source(source)
            .manual("Latchkey")
            .generate_to(dir)?;
        *n += 1;
        Ok(())
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut cmd = command().disable_help_subcommand(true);
    cmd.build();
    let source = format!("{BIN} {}", env!("CARGO_PKG_VERSION"));
    let mut written = 0;
    write(&cmd, dir, &source, &mut written)
        .with_context(|| format!("writing man pages to {}", dir.display()))?;
    println!("wrote {written} man pages to {}", dir.display());
    Ok(())
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LATCHKEY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
        // The PostgreSQL client logs every statement's parameters (keys,
        // code records, digests) at debug: never, whatever is asked.
        .add_directive(
            "tokio_postgres=info"
                .parse()
                .expect("a valid log directive"),
        );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn serve(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let relay = Relay::spawn(config).await?;
        println!("latchkey-relay listening on {}", relay.addr);
        if let Some(url) = &relay.console_url {
            println!("admin console on {url}");
        }
        let _ = std::io::stdout().flush();
        service_manager::ready(&format!("listening on {}", relay.addr));
        service_manager::spawn_watchdog();
        let asked = tokio::select! {
            _ = shutdown_signal() => true,
            _ = relay.stopping() => false,
        };
        if asked {
            tracing::info!("shutdown requested");
        }
        service_manager::stopping();
        relay.shutdown();
        relay.join().await;
        if asked {
            Ok(())
        } else {
            anyhow::bail!("the relay stopped on its own (see the log above)")
        }
    })
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
