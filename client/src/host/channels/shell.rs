//! A shell channel: the session account's login shell on a PTY, its output
//! and the user's keystrokes and resizes carried as frames; hung up when
//! its client goes away.

use std::{
    io::{Read, Write},
    time::Duration,
};

use latchkey_protocol::session::{ShellIn, ShellOut, MAX_CHUNK};
use portable_pty::PtySize;
use tokio::sync::mpsc;
use tracing::info;

use super::{
    hang_up::HANGUP_GRACE,
    reply::{accept, refuse_recorded, ChannelError},
};
use crate::{
    channel::{ChannelRecv, ChannelSend},
    host::{
        account::SessionAccount,
        recording::{Stream, Tape},
    },
};

fn pty_err(e: impl std::fmt::Display) -> ChannelError {
    ChannelError::Pty(e.to_string())
}

/// The terminal a shell asks for: `TERM`, and its size.
pub(super) struct Terminal {
    pub(super) term: String,
    pub(super) cols: u16,
    pub(super) rows: u16,
}

pub(super) async fn shell(
    account: &SessionAccount,
    mut send: ChannelSend,
    mut input: ChannelRecv,
    Terminal { term, cols, rows }: Terminal,
    tape: Tape,
    lost: impl std::future::Future<Output = String>,
) -> Result<(), ChannelError> {
    let size = |cols, rows| PtySize {
        rows,
        cols,
        pixel_width: 0,
        pixel_height: 0,
    };
    let pair = match portable_pty::native_pty_system().openpty(size(cols, rows)) {
        Ok(pair) => pair,
        Err(e) => {
            return refuse_recorded(
                send,
                &tape,
                format!("cannot open a terminal on the host: {e}"),
            )
            .await
        }
    };
    let term = if term.is_empty() {
        "xterm-256color".into()
    } else {
        term
    };
    let mut child = match pair.slave.spawn_command(account.shell(term)) {
        Ok(child) => child,
        Err(e) => {
            return refuse_recorded(
                send,
                &tape,
                format!("cannot start a shell on the host: {e}"),
            )
            .await
        }
    };
    drop(pair.slave);
    let mut killer = child.clone_killer();
    let mut reader = pair.master.try_clone_reader().map_err(pty_err)?;
    let mut writer = pair.master.take_writer().map_err(pty_err)?;
    accept(&mut send, None, tape.is_on()).await?;

    // The PTY is blocking I/O: one thread reads it, one writes it.
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(8);
    std::thread::spawn(move || {
        let mut buf = vec![0u8; MAX_CHUNK];
        loop {
            match reader.read(&mut buf) {
                Ok(n) if n > 0 => {
                    if out_tx.blocking_send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
                _ => break,
            }
        }
    });
    let (in_tx, mut in_rx) = mpsc::channel::<Vec<u8>>(8);
    std::thread::spawn(move || {
        while let Some(bytes) = in_rx.blocking_recv() {
            if writer
                .write_all(&bytes)
                .and_then(|_| writer.flush())
                .is_err()
            {
                break;
            }
        }
    });

    let mut input_open = true;
    // The client is gone when nobody reads the shell's output any more
    // (the relay stops the stream when the client leaves) or its input
    // breaks off; a clean end of input alone is `echo ... | connect`.
    let stopped = send.stopped();
    tokio::pin!(stopped);
    tokio::pin!(lost);
    let mut gone = false;
    // Why the host ends the shell itself (its right was taken away).
    let mut ended_here = None;
    loop {
        tokio::select! {
            biased;
            _ = &mut stopped => {
                gone = true;
                break;
            }
            why = &mut lost => {
                ended_here = Some(why);
                break;
            }
            data = out_rx.recv() => match data {
                Some(bytes) => {
                    tape.record(Stream::Output, &bytes);
                    if send.write_frame(&ShellOut::Data(bytes)).await.is_err() {
                        gone = true;
                        break;
                    }
                }
                None => break,
            },
            frame = input.read_frame::<ShellIn>(), if input_open => match frame {
                Ok(Some(ShellIn::Data(bytes))) => {
                    tape.record(Stream::Input, &bytes);
                    if in_tx.send(bytes).await.is_err() {
                        input_open = false;
                    }
                }
                Ok(Some(ShellIn::Resize { cols, rows })) => {
                    pair.master.resize(size(cols, rows)).map_err(pty_err)?;
                    tape.resize(cols, rows);
                }
                Ok(Some(_)) => {}
                // The user sent all they will send; the shell runs on.
                Ok(None) => input_open = false,
                Err(_) => {
                    gone = true;
                    break;
                }
            },
        }
    }
    if gone || ended_here.is_some() {
        // SIGHUP (as when a terminal hangs up), then SIGKILL after the grace.
        info!("hanging up the shell");
        let _ = killer.kill();
        drop(pair.master);
        let deadline = tokio::time::Instant::now() + HANGUP_GRACE;
        while matches!(child.try_wait(), Ok(None)) {
            if tokio::time::Instant::now() >= deadline {
                let _ = child.kill();
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = tokio::task::spawn_blocking(move || child.wait()).await;
        let Some(why) = ended_here else {
            tape.end("hung up: the client went away");
            return Ok(());
        };
        // Latchkey's own end of the shell: its message, and ssh's 255.
        let said = format!("\r\nlatchkey: {why}\r\n").into_bytes();
        tape.record(Stream::Output, &said);
        tape.end("exit 255");
        send.write_frame(&ShellOut::Data(said)).await?;
        send.write_frame(&ShellOut::Exit(255)).await?;
        send.finish().await?;
        return Ok(());
    }
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .map_err(pty_err)??;
    let code = i32::try_from(status.exit_code()).unwrap_or(255);
    tape.end(&format!("exit {code}"));
    send.write_frame(&ShellOut::Exit(code)).await?;
    send.finish().await?;
    Ok(())
}
