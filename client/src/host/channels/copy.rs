//! Copy channels: a file to or from the host, read and written by the file
//! helper ([`crate::host::file_helper`]) as the session's account, and
//! checked end to end with SHA-256. A failed upload leaves no partial file.

use std::time::Duration;

use latchkey_protocol::session::ChannelReply;
use sha2::{Digest, Sha256};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    time::timeout,
};
use tracing::info;

use super::reply::{accept, refuse, ChannelError};
use crate::{
    channel::{ChannelRecv, ChannelSend},
    host::account::SessionAccount,
};

/// Buffer size for bulk copies (forward, file transfer).
const COPY_BUF: usize = 64 * 1024;

/// How long a helper whose channel went has to remove its partial file
/// (its input is closed) before it is killed.
const CLEANUP_GRACE: Duration = Duration::from_secs(2);

/// The helper's process. Dropped before it ended (the channel went: its
/// client left, or a right was taken away), it is given
/// [`CLEANUP_GRACE`] to see its input closed and remove its partial file,
/// then killed.
struct HelperProcess(Option<tokio::process::Child>);

impl std::ops::Deref for HelperProcess {
    type Target = tokio::process::Child;

    fn deref(&self) -> &Self::Target {
        self.0
            .as_ref()
            .expect("a helper holds its process until dropped")
    }
}

impl std::ops::DerefMut for HelperProcess {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.0
            .as_mut()
            .expect("a helper holds its process until dropped")
    }
}

impl Drop for HelperProcess {
    fn drop(&mut self) {
        let Some(mut child) = self.0.take() else {
            return;
        };
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if timeout(CLEANUP_GRACE, child.wait()).await.is_err() {
                        let _ = child.kill().await;
                    }
                });
            }
            Err(_) => {
                let _ = child.start_kill();
            }
        }
    }
}

/// The file helper's standard streams, and its first error line.
struct Helper {
    child: HelperProcess,
    stdin: Option<tokio::process::ChildStdin>,
    stdout: tokio::process::ChildStdout,
    stderr: tokio::process::ChildStderr,
}

impl Helper {
    /// Starts the helper with `args` (after `--` wherever a user's path
    /// comes, so a path like `--help` is a path).
    fn spawn(account: &SessionAccount, args: &[&str]) -> Result<Self, String> {
        let mut cmd = account
            .file_helper()
            .map_err(|e| format!("cannot find the file helper: {e}"))?;
        cmd.args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            // Waited for on every path that can (an upload's helper removes
            // its partial file when its input ends); see `HelperProcess`
            // for a channel that goes without waiting.
            .kill_on_drop(false);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start the file helper: {e}"))?;
        match (child.stdin.take(), child.stdout.take(), child.stderr.take()) {
            (stdin, Some(stdout), Some(stderr)) => Ok(Self {
                child: HelperProcess(Some(child)),
                stdin,
                stdout,
                stderr,
            }),
            _ => Err("the file helper has no pipes".into()),
        }
    }

    /// Why the helper failed: its error line (it exits at once after it).
    async fn failure(mut self) -> String {
        drop(self.stdin.take());
        let mut why = String::new();
        let _ = timeout(
            Duration::from_secs(5),
            (&mut self.stderr).take(4096).read_to_string(&mut why),
        )
        .await;
        let _ = timeout(Duration::from_secs(5), self.child.wait()).await;
        match why.trim() {
            "" => "the copy failed on the host".into(),
            line => line.to_string(),
        }
    }
}

/// A file the user sends: where to, its name, size and permission bits.
pub(super) struct Incoming<'a> {
    pub(super) path: &'a str,
    pub(super) name: &'a str,
    pub(super) size: u64,
    pub(super) mode: u32,
}

pub(super) async fn upload(
    account: &SessionAccount,
    mut send: ChannelSend,
    mut recv: ChannelRecv,
    file: Incoming<'_>,
    recorded: bool,
) -> Result<(), ChannelError> {
    let Incoming {
        path,
        name,
        size,
        mode,
    } = file;
    let (size_text, mode_text) = (size.to_string(), mode.to_string());
    let args = ["write", "--", path, name, &size_text, &mode_text];
    let mut helper = match Helper::spawn(account, &args) {
        Ok(helper) => helper,
        Err(why) => return refuse(send, why).await,
    };
    // The helper checks the destination as the session's account first.
    let mut ready = [0u8; 6];
    let said = timeout(
        Duration::from_secs(10),
        helper.stdout.read_exact(&mut ready),
    )
    .await;
    if !matches!(said, Ok(Ok(_))) || &ready != b"ready\n" {
        return refuse(send, helper.failure().await).await;
    }
    accept(&mut send, None, recorded).await?;
    let mut hasher = Sha256::new();
    let mut left = size;
    let Some(mut stdin) = helper.stdin.take() else {
        return Err(ChannelError::Pty("the file helper has no input".into()));
    };
    let received = async {
        while left > 0 {
            let want = usize::try_from(left).unwrap_or(usize::MAX);
            let Some(data) = recv.recv_at_most(want).await? else {
                return Err(ChannelError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            };
            hasher.update(&data);
            stdin.write_all(&data).await?;
            left -= data.len() as u64;
        }
        let mut sent = [0u8; 32];
        recv.read_exact(&mut sent).await?;
        Ok::<_, ChannelError>(sent)
    };
    // A client that went away is seen at once (its end stops our reply
    // stream), not after the data still in flight has been written.
    let stopped = send.stopped();
    let received = tokio::select! {
        r = received => r,
        _ = stopped => Err(ChannelError::Io(std::io::Error::other("the client went away"))),
    };
    // Confirmed only with the checksum right; otherwise the helper's input
    // ends without it and the helper removes the partial file.
    let verdict = match received {
        Ok(sent) if sent[..] == hasher.finalize()[..] => {
            let confirmed = async {
                stdin.write_all(b"C").await?;
                drop(stdin);
                let mut done = [0u8; 5];
                helper.stdout.read_exact(&mut done).await?;
                Ok::<_, std::io::Error>(&done == b"done\n")
            };
            match timeout(Duration::from_secs(60), confirmed).await {
                Ok(Ok(true)) => {
                    let _ = helper.child.wait().await;
                    ChannelReply::Accepted {
                        size: Some(size),
                        recorded,
                    }
                }
                _ => ChannelReply::Refused(helper.failure().await),
            }
        }
        Ok(_) => {
            drop(stdin);
            let _ = helper.failure().await;
            ChannelReply::Refused(
                "checksum mismatch: the file was damaged in transit; nothing stored".into(),
            )
        }
        Err(e) => {
            drop(stdin);
            let _ = helper.failure().await;
            info!("upload failed: {e}; partial file removed");
            ChannelReply::Refused(format!("transfer failed: {e}"))
        }
    };
    send.write_frame(&verdict).await?;
    send.finish().await?;
    match verdict {
        ChannelReply::Refused(why) => Err(ChannelError::Refused(why)),
        _ => Ok(()),
    }
}

pub(super) async fn download(
    account: &SessionAccount,
    mut send: ChannelSend,
    path: &str,
    recorded: bool,
) -> Result<(), ChannelError> {
    let mut helper = match Helper::spawn(account, &["read", "--", path]) {
        Ok(helper) => helper,
        Err(why) => return refuse(send, why).await,
    };
    let mut size = [0u8; 8];
    let said = timeout(Duration::from_secs(30), helper.stdout.read_exact(&mut size)).await;
    if !matches!(said, Ok(Ok(_))) {
        return refuse(send, helper.failure().await).await;
    }
    let size = u64::from_be_bytes(size);
    accept(&mut send, Some(size), recorded).await?;
    let mut hasher = Sha256::new();
    let mut reader = (&mut helper.stdout).take(size);
    let mut buf = vec![0u8; COPY_BUF];
    let mut sent = 0u64;
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        send.write_all(&buf[..n]).await?;
        sent += n as u64;
    }
    if sent != size {
        // The file shrank under the helper: the client sees a cut copy.
        send.reset(quinn::VarInt::from_u32(0));
        return Err(ChannelError::Pty(helper.failure().await));
    }
    send.write_all(&hasher.finalize()).await?;
    send.finish().await?;
    let _ = helper.child.wait().await;
    Ok(())
}
