//! `latchkey connect HOST`: an interactive shell on a PTY on the host. The
//! local terminal is put in raw mode (when it is one) and size changes are
//! sent along; the shell's exit status becomes ours.

use std::io::IsTerminal;

use latchkey_protocol::session::{ChannelKind, ShellIn, ShellOut, MAX_CHUNK};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::mpsc,
};

use super::remote::{ChannelError, Remote};
use crate::wire;

/// Restores the terminal however the session ends.
struct RawMode;

impl RawMode {
    fn enable() -> Option<Self> {
        crossterm::terminal::enable_raw_mode().ok().map(|_| Self)
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = crossterm::terminal::disable_raw_mode();
    }
}

/// Runs an interactive shell; returns its exit status.
pub async fn connect(remote: &Remote) -> Result<i32, ChannelError> {
    let tty = std::io::stdin().is_terminal();
    let (cols, rows) = if tty {
        crossterm::terminal::size().unwrap_or((80, 24))
    } else {
        (80, 24)
    };
    let term = std::env::var("TERM").unwrap_or_else(|_| "xterm-256color".into());
    let (mut send, recv, _) = remote
        .channel(ChannelKind::Shell { term, cols, rows })
        .await?;
    let _raw = if tty { RawMode::enable() } else { None };

    // Keystrokes and resizes share the one stream: a single writer task.
    let (tx, mut rx) = mpsc::channel::<Option<ShellIn>>(16);
    let writer = tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            match msg {
                Some(frame) => {
                    if wire::write_frame(&mut send, &frame).await.is_err() {
                        return;
                    }
                }
                None => {
                    let _ = send.finish();
                    return;
                }
            }
        }
    });
    let keys = tx.clone();
    let input = tokio::spawn(async move {
        let mut stdin = tokio::io::stdin();
        let mut buf = vec![0u8; MAX_CHUNK];
        loop {
            match stdin.read(&mut buf).await {
                Ok(n) if n > 0 => {
                    if keys
                        .send(Some(ShellIn::Data(buf[..n].to_vec())))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                _ => {
                    let _ = keys.send(None).await;
                    return;
                }
            }
        }
    });
    #[cfg(unix)]
    let resizes = tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut winch) = signal(SignalKind::window_change()) else {
            return;
        };
        while winch.recv().await.is_some() {
            if let Ok((cols, rows)) = crossterm::terminal::size() {
                if tx.send(Some(ShellIn::Resize { cols, rows })).await.is_err() {
                    return;
                }
            }
        }
    });

    let mut out = tokio::io::stdout();
    let mut frames = wire::frame_reader::<ShellOut>(recv);
    let result = loop {
        match frames.recv().await {
            Some(Ok(Some(ShellOut::Data(b)))) => {
                out.write_all(&b).await.ok();
                out.flush().await.ok();
            }
            Some(Ok(Some(ShellOut::Exit(code)))) => break Ok(code),
            Some(Ok(Some(_))) => {}
            _ => {
                let why = remote
                    .end_reason()
                    .unwrap_or_else(|| "connection lost".into());
                break Err(ChannelError::Refused(format!(
                    "the shell ended without an exit status: {why}"
                )));
            }
        }
    };
    input.abort();
    writer.abort();
    #[cfg(unix)]
    resizes.abort();
    result
}
