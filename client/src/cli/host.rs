//! The commands that run on a host (`latchkey host ...`): enrolment,
//! setting access codes, the agent, what users compare a host's key with,
//! and the file helper the agent runs for copies.

use std::process::ExitCode;

use anyhow::Context;
use latchkey_client::{code, config::Home, host};
use latchkey_protocol::{frame::CodeTarget, ids::UserName, ksf::KsfProfile};
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
