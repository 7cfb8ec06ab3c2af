//! `latchkey exec HOST -- CMD ARGS...`: runs one command on the host,
//! streams its output, forwards standard input, returns its exit status.

use latchkey_protocol::session::{ChannelKind, ExecIn, ExecOut, MAX_CHUNK};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::remote::{ChannelError, Remote};

/// Runs `argv` on the host; returns its exit status.
pub async fn exec(remote: &Remote, argv: Vec<String>) -> Result<i32, ChannelError> {
    let (mut send, mut recv, _) = remote.channel(ChannelKind::Exec { argv }).await?;
    let stdin_pump = tokio::spawn(async move {
        let mut stdin = tokio::io::stdin();
        let mut buf = vec![0u8; MAX_CHUNK];
        loop {
            match stdin.read(&mut buf).await {
                Ok(n) if n > 0 => {
                    if send
                        .write_frame(&ExecIn::Stdin(buf[..n].to_vec()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                _ => break,
            }
        }
        let _ = send.write_frame(&ExecIn::Eof).await;
        let _ = send.finish().await;
    });
    let mut out = tokio::io::stdout();
    let mut err = tokio::io::stderr();
    let result = loop {
        match recv.read_frame::<ExecOut>().await {
            Ok(Some(ExecOut::Stdout(b))) => {
                out.write_all(&b).await.ok();
                out.flush().await.ok();
            }
            Ok(Some(ExecOut::Stderr(b))) => {
                err.write_all(&b).await.ok();
                err.flush().await.ok();
            }
            Ok(Some(ExecOut::Exit(code))) => break Ok(code),
            Ok(Some(_)) => {}
            _ => {
                let why = remote
                    .ended_why()
                    .await
                    .unwrap_or_else(|| "connection lost".into());
                break Err(ChannelError::Refused(format!(
                    "the command's exit status was lost: {why}"
                )));
            }
        }
    };
    stdin_pump.abort();
    result
}
