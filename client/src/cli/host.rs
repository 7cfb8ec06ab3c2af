//! The commands that run on a host (`latchkey host ...`): enrolment,
//! setting access codes, the agent, what users compare a host's key with,
//! and the file helper the agent runs for copies.

use std::process::ExitCode;

use anyhow::Context;
use latchkey_client::{
    code,
    config::Home,
    host::{
        self,
        recording::{self, Library, Timing},
    },
};
use latchkey_protocol::{frame::CodeTarget, ids::UserName, ksf::KsfProfile, text::Shown};
use tokio_util::sync::CancellationToken;

use super::signal::shutdown_signal;

/// `latchkey host enroll TOKEN [--session-user ACCOUNT]`.
pub(crate) async fn enroll(
    home: &Home,
    token: &str,
    session_user: Option<String>,
) -> anyhow::Result<ExitCode> {
    let name = host::enroll(home, token, session_user).await?;
    println!(
        "enrolled as host '{name}' (config in {})",
        home.host_config_path().display()
    );
    println!("next: `latchkey host set-code`, then `latchkey host run`");
    Ok(ExitCode::SUCCESS)
}

/// `latchkey host set-code`: the owner's code.
pub(crate) async fn set_code(
    home: &Home,
    code_stdin: bool,
    ksf: KsfProfile,
) -> anyhow::Result<ExitCode> {
    let code = code::new_code(code_stdin)?;
    host::set_code(home, CodeTarget::Owner, code, ksf)
        .await
        .context("setting the access code")?;
    println!("access code set; users granted shared access from now on inherit it");
    Ok(ExitCode::SUCCESS)
}

/// `latchkey host reset-code --user USER`: one secondary user's own code.
pub(crate) async fn reset_code(
    home: &Home,
    user: &UserName,
    code_stdin: bool,
    ksf: KsfProfile,
) -> anyhow::Result<ExitCode> {
    let code = code::new_code(code_stdin)?;
    host::set_code(home, CodeTarget::Grant(user.clone()), code, ksf)
        .await
        .with_context(|| format!("resetting the access code of '{user}'"))?;
    println!("access code of '{user}' on this host reset; other users' codes are unchanged");
    Ok(ExitCode::SUCCESS)
}

/// `latchkey host info [--json]`.
pub(crate) fn info(home: &Home, json: bool) -> anyhow::Result<ExitCode> {
    let (cfg, key) = home.host()?;
    let fingerprint = key.public.fingerprint();
    if json {
        let info = serde_json::json!({
            "host": cfg.host.as_str(),
            "relays": cfg.relays(),
            "fingerprint": fingerprint,
        });
        println!("{}", serde_json::to_string_pretty(&info)?);
    } else {
        println!("host:        {}", cfg.host);
        println!("relay:       {}", cfg.relays().join(", "));
        println!("fingerprint: {fingerprint}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `latchkey host recordings [--json]`.
pub(crate) fn recordings(home: &Home, json: bool) -> anyhow::Result<ExitCode> {
    let library = Library::at(home);
    let all = recording::list(&library)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(ExitCode::SUCCESS);
    }
    if all.is_empty() {
        println!("no recordings in {}", library.dir().display());
        return Ok(ExitCode::SUCCESS);
    }
    let tz = jiff::tz::TimeZone::system();
    println!(
        "{:<20}  {:<16}  {:<12}  {:<9}  {:>8}  {:>9}  WHAT",
        "ID", "STARTED", "USER", "KIND", "LENGTH", "SIZE"
    );
    for r in &all {
        let started = match r.started {
            0 => "-".to_owned(),
            secs => jiff::Timestamp::from_second(i64::try_from(secs).unwrap_or(0))
                .map(|t| {
                    t.to_zoned(tz.clone())
                        .strftime("%Y-%m-%d %H:%M")
                        .to_string()
                })
                .unwrap_or_default(),
        };
        let length = r.secs.map_or_else(|| "-".into(), |s| format!("{s:.1}s"));
        let what = match (&r.outcome, r.kind.as_str()) {
            (_, "damaged") => r.detail.clone(),
            (Some(outcome), _) => format!("{} ({outcome})", r.detail),
            (None, _) => format!("{} (still running)", r.detail),
        };
        // Every word a user chose reaches this terminal escaped (Shown pads
        // nothing itself, so it is padded as text).
        println!(
            "{:<20}  {:<16}  {:<12}  {:<9}  {:>8}  {:>9}  {}",
            r.id,
            started,
            Shown(&r.user).to_string(),
            Shown(&r.kind).to_string(),
            length,
            size(r.bytes),
            Shown(&what)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A size as people read it.
fn size(bytes: u64) -> String {
    match bytes {
        b if b < 1024 => format!("{b} B"),
        b if b < 1 << 20 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{:.1} MiB", b as f64 / f64::from(1 << 20)),
    }
}

/// `latchkey host replay ID [--speed N] [--max-wait SECS] [--input]`: at once when
/// standard output is no terminal (a file, a pipe).
pub(crate) fn replay(
    home: &Home,
    id: &str,
    speed: f64,
    max_wait: f64,
    input: bool,
) -> anyhow::Result<ExitCode> {
    use std::io::IsTerminal;
    let timing = std::io::stdout().is_terminal().then(|| Timing {
        speed,
        max_wait: std::time::Duration::from_secs_f64(max_wait),
    });
    let (mut out, mut notes) = (std::io::stdout().lock(), std::io::stderr().lock());
    recording::replay(&Library::at(home), id, timing, input, &mut out, &mut notes)?;
    Ok(ExitCode::SUCCESS)
}

/// `latchkey host run`: the agent, until Ctrl-C or SIGTERM.
pub(crate) async fn run(home: &Home) -> anyhow::Result<ExitCode> {
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        stop.cancel();
    });
    host::run(home, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}

/// `latchkey host service install`: the agent of `home` as the Windows
/// service, started now and at every boot.
pub(crate) fn service_install(home: &Home) -> anyhow::Result<ExitCode> {
    host::windows_service::install(home)?;
    println!(
        "service {} installed and started for {} (as {}); `sc.exe query {}` shows it",
        host::windows_service::SERVICE_NAME,
        home.path.display(),
        host::windows_service::SERVICE_ACCOUNT,
        host::windows_service::SERVICE_NAME
    );
    Ok(ExitCode::SUCCESS)
}

/// `latchkey host service uninstall`.
pub(crate) fn service_uninstall() -> anyhow::Result<ExitCode> {
    host::windows_service::uninstall()?;
    println!("service {} removed", host::windows_service::SERVICE_NAME);
    Ok(ExitCode::SUCCESS)
}

/// How the file helper ends: a failure's line goes to standard error, and
/// the agent shows the user this line as it is.
pub(crate) fn file_helper_exit(done: Result<(), String>) -> ExitCode {
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            eprintln!("{why}");
            ExitCode::FAILURE
        }
    }
}
