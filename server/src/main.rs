//! `latchkey-relay`: the relay's command line. A thin shell over the
//! library: parse flags, set up logging, run one command.

use std::{io::Write, path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::{Parser, Subcommand};
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
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
    }
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
        let asked = tokio::select! {
            _ = shutdown_signal() => true,
            _ = relay.stopping() => false,
        };
        if asked {
            tracing::info!("shutdown requested");
        }
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
