//! Starting a holder: the command that finds no held session runs
//! `latchkey hold-session` in the background, hands it the code over a
//! pipe and reads one line saying whether the session is held. The holder
//! gets no terminal and none of the command's output, so `$(latchkey exec
//! …)` ends when the command does.

use std::{os::unix::process::CommandExt as _, process::Stdio, time::Duration};

use latchkey_protocol::ids::{AccessCode, HostName};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use zeroize::Zeroizing;

use crate::user::remote::kept::ReuseError;
use crate::{code::CODE_ENV, config::Home, user::remote::resume_wait};

/// How long a holder may take to log in and say so: longer than any login
/// (each of its steps has its own deadline).
const START_WAIT: Duration = Duration::from_secs(90);

/// What a starting holder says, as one JSON line on its standard output.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Started {
    /// Logged in; the socket answers.
    Ready,
    /// Another holder for this host is starting or running.
    Busy,
    /// The login failed, as the command would have printed it.
    Failed {
        /// The error, whole.
        error: String,
        /// The code was wrong (the command says whether the host is the
        /// user's at all).
        wrong_code: bool,
    },
}

impl Started {
    /// The line a holder prints.
    pub fn line(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| r#""busy""#.into())
    }
}

/// Starts a holder for `host` that logs in with `code` and keeps the
/// session `persist` after its last command; returns what it said.
pub async fn start(
    home: &Home,
    host: &HostName,
    code: &AccessCode,
    persist: Duration,
) -> Result<Started, ReuseError> {
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.arg("--home")
        .arg(std::path::absolute(&home.path)?)
        .arg("--resume-wait")
        .arg(resume_wait().as_secs().to_string())
        .arg("hold-session")
        .arg(host.as_str())
        .arg("--idle-limit")
        .arg(persist.as_secs().max(1).to_string())
        .env_remove(CODE_ENV)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        // Its own process group: Ctrl-C at the terminal is the command's,
        // not the session's.
        .process_group(0);
    let mut child = tokio::process::Command::from(cmd).spawn()?;
    let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Err(ReuseError::Holder("no pipes to the holder".into()));
    };
    let line = Zeroizing::new(format!("{}\n", code.expose()));
    stdin.write_all(line.as_bytes()).await?;
    drop(stdin);
    let mut said = String::new();
    let read = tokio::time::timeout(START_WAIT, BufReader::new(stdout).read_line(&mut said)).await;
    let started = match read {
        Ok(Ok(n)) if n > 0 => serde_json::from_str::<Started>(said.trim())
            .map_err(|_| ReuseError::Holder(format!("the holder said '{}'", said.trim()))),
        Ok(Ok(_)) => Err(ReuseError::Holder("the holder ended without a word".into())),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => {
            let _ = child.start_kill();
            Err(ReuseError::Holder(
                "the holder did not answer in time".into(),
            ))
        }
    };
    // Reaped when it ends, while this command still runs.
    tokio::spawn(async move {
        let _ = child.wait().await;
    });
    started
}
