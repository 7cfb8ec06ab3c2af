//! An exec channel: one command, run directly (no shell) as the session's
//! account, its standard streams carried as frames and its exit status
//! reported as a shell would; hung up when its client goes away.

use latchkey_protocol::{
    session::{ExecIn, ExecOut, MAX_CHUNK},
    text::Shown,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::info;

use super::{
    hang_up::hang_up,
    reply::{accept, refuse_recorded, ChannelError},
};
use crate::{
    channel::{ChannelRecv, ChannelSend},
    host::{
        account::SessionAccount,
        recording::{Stream, Tape},
    },
};

/// The exit status as one number: the code, or 128 + signal like a shell.
fn status_code(status: std::process::ExitStatus) -> i32 {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return 128 + signal;
        }
    }
    status.code().unwrap_or(255)
}

/// Stops a task when its owner returns.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A command that could not start, as a shell reports it: its status
/// (127 not found, 126 not executable) and a line for standard error.
fn spawn_failure(program: &str, e: &std::io::Error) -> (i32, String) {
    // The name is the client's: it reaches its terminal (and this log)
    // escaped.
    let program = Shown(program);
    match e.kind() {
        std::io::ErrorKind::NotFound => (127, format!("cannot run '{program}': command not found")),
        std::io::ErrorKind::PermissionDenied => {
            (126, format!("cannot run '{program}': permission denied"))
        }
        _ => (126, format!("cannot run '{program}': {e}")),
    }
}

pub(super) async fn exec(
    account: &SessionAccount,
    mut send: ChannelSend,
    mut recv: ChannelRecv,
    argv: Vec<String>,
    tape: Tape,
    lost: impl std::future::Future<Output = String>,
) -> Result<(), ChannelError> {
    let Some((program, args)) = argv.split_first() else {
        return refuse_recorded(send, &tape, "no command given".into()).await;
    };
    let recorded = tape.is_on();
    let mut cmd = account.command(program);
    cmd.args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            // Like sh and ssh: the command ran and failed with 127 (or 126).
            let (code, why) = spawn_failure(program, &e);
            info!(reason = %why, "exec failed");
            accept(&mut send, None, recorded).await?;
            let said = format!("latchkey: {why}\n").into_bytes();
            tape.record(Stream::Errors, &said);
            tape.end(&format!("exit {code}"));
            send.write_frame(&ExecOut::Stderr(said)).await?;
            send.write_frame(&ExecOut::Exit(code)).await?;
            send.finish().await?;
            return Ok(());
        }
    };
    accept(&mut send, None, recorded).await?;
    let (Some(stdin), Some(mut stdout), Some(mut stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(ChannelError::Pty("child has no pipes".into()));
    };
    // Forwards standard input; ends `true` if the client went away (its
    // stream ended without the end-of-input frame).
    let input = tape.clone();
    let mut pump = tokio::spawn(async move {
        let mut stdin = Some(stdin);
        loop {
            match recv.read_frame::<ExecIn>().await {
                Ok(Some(ExecIn::Stdin(bytes))) => {
                    input.record(Stream::Input, &bytes);
                    if let Some(pipe) = stdin.as_mut() {
                        if pipe.write_all(&bytes).await.is_err() {
                            stdin = None;
                        }
                    }
                }
                Ok(Some(ExecIn::Eof)) => stdin = None,
                Ok(Some(_)) => {}
                // A clean end after the end-of-input frame is normal.
                Ok(None) if stdin.is_none() => return false,
                _ => return true,
            }
        }
    });
    // The client is gone when its input breaks off or nobody reads our
    // output any more (the relay stops the stream when the client leaves).
    let stopped = send.stopped();
    let _stop_pump = AbortOnDrop(pump.abort_handle());
    let gone = async move {
        tokio::pin!(stopped);
        tokio::select! {
            _ = &mut stopped => {}
            r = &mut pump => {
                if !matches!(r, Ok(true)) {
                    let _ = stopped.await;
                }
            }
        }
    };
    tokio::pin!(gone);
    tokio::pin!(lost);
    let (mut out_buf, mut err_buf) = (vec![0u8; MAX_CHUNK], vec![0u8; MAX_CHUNK]);
    let (mut out_open, mut err_open) = (true, true);
    while out_open || err_open {
        let frame = tokio::select! {
            biased;
            _ = &mut gone => {
                hang_up(&mut child).await;
                tape.end("hung up: the client went away");
                return Ok(());
            }
            why = &mut lost => return end_here(&mut send, &mut child, &tape, &why).await,
            n = stdout.read(&mut out_buf), if out_open => match n {
                Ok(n) if n > 0 => ExecOut::Stdout(out_buf[..n].to_vec()),
                _ => { out_open = false; continue; }
            },
            n = stderr.read(&mut err_buf), if err_open => match n {
                Ok(n) if n > 0 => ExecOut::Stderr(err_buf[..n].to_vec()),
                _ => { err_open = false; continue; }
            },
        };
        match &frame {
            ExecOut::Stdout(bytes) => tape.record(Stream::Output, bytes),
            ExecOut::Stderr(bytes) => tape.record(Stream::Errors, bytes),
            _ => {}
        }
        if let Err(e) = send.write_frame(&frame).await {
            hang_up(&mut child).await;
            tape.end("hung up: the client went away");
            return Err(e.into());
        }
    }
    let status = tokio::select! {
        biased;
        _ = &mut gone => {
            hang_up(&mut child).await;
            tape.end("hung up: the client went away");
            return Ok(());
        }
        why = &mut lost => return end_here(&mut send, &mut child, &tape, &why).await,
        status = child.wait() => status?,
    };
    let code = status_code(status);
    tape.end(&format!("exit {code}"));
    send.write_frame(&ExecOut::Exit(code)).await?;
    send.finish().await?;
    Ok(())
}

/// Ends the command on the host's own account (its right was taken away):
/// hung up, with Latchkey's message and ssh's 255 for its own failures.
async fn end_here(
    send: &mut ChannelSend,
    child: &mut tokio::process::Child,
    tape: &Tape,
    why: &str,
) -> Result<(), ChannelError> {
    hang_up(child).await;
    let said = format!("latchkey: {why}\n").into_bytes();
    tape.record(Stream::Errors, &said);
    tape.end("exit 255");
    send.write_frame(&ExecOut::Stderr(said)).await?;
    send.write_frame(&ExecOut::Exit(255)).await?;
    send.finish().await?;
    Ok(())
}
