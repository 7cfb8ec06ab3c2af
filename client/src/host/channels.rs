//! The host's side of session channels: a shell on a PTY, one command,
//! a TCP forward to an allowed target, a file in or out. Every channel is
//! end-to-end encrypted ([`super::e2e`]): the relay only says which session
//! and channel number a stream is, so what it is for, and everything on it,
//! is read here first, and logged here ([`super::channel_log`]). What is
//! allowed comes from the host's config; everything else is refused with a
//! reason the user sees.

use std::{
    io::{Read, Write},
    net::SocketAddr,
    sync::Arc,
    time::Duration,
};

use latchkey_protocol::session::{
    ChannelKind, ChannelOpen, ChannelReply, ExecIn, ExecOut, HandshakeReply, HostStream, ShellIn,
    ShellOut, MAX_CHUNK,
};
use portable_pty::PtySize;
use quinn::{RecvStream, SendStream};
use sha2::{Digest, Sha256};
use thiserror::Error;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::mpsc,
    time::timeout,
};
use tracing::{debug, info};

use super::{account::SessionAccount, channel_log, e2e::Sessions};
use crate::{
    config::{Home, HostConfig},
    wire::{self, OpenedRecv, SealedSend, WireError},
};

/// What every channel task shares: the config, and the sessions' keys.
pub(crate) struct HostSide {
    pub(crate) cfg: Arc<HostConfig>,
    /// Who sessions run as.
    pub(crate) account: SessionAccount,
    pub(crate) home: Home,
    pub(crate) sessions: Sessions,
}

/// The stream error code for a channel this host has no keys for (it
/// restarted since the handshake, or the number was used): the client
/// re-handshakes and tries again.
pub const NO_CHANNEL_KEYS: u32 = 3;

/// Buffer size for bulk copies (forward, file transfer).
const COPY_BUF: usize = 64 * 1024;

/// Why a channel ended early (logged on the host).
#[derive(Debug, Error)]
enum ChannelError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("pty: {0}")]
    Pty(String),
}

async fn refuse(mut send: SealedSend, why: String) -> Result<(), ChannelError> {
    info!(reason = %why, "channel refused");
    send.write_frame_padded(&ChannelReply::Refused(why)).await?;
    send.finish().await?;
    Ok(())
}

async fn accept(send: &mut SealedSend, size: Option<u64>) -> Result<(), ChannelError> {
    send.write_frame_padded(&ChannelReply::Accepted { size })
        .await?;
    Ok(())
}

/// Serves one stream opened by the relay: a session's end-to-end
/// handshake, or one of its channels.
pub(crate) async fn serve(side: Arc<HostSide>, mut send: SendStream, mut recv: RecvStream) {
    let open = match timeout(
        Duration::from_secs(10),
        wire::read_frame::<ChannelOpen>(&mut recv),
    )
    .await
    {
        Ok(Ok(Some(open))) => open,
        _ => return,
    };
    let ChannelOpen {
        session,
        user,
        stream,
    } = open;
    let number = match stream {
        HostStream::Handshake {
            user_key,
            record,
            msg1,
        } => {
            let reply = match side.sessions.handshake(
                session,
                user.clone(),
                user_key,
                record,
                &msg1,
            ) {
                Ok(msg2) => {
                    info!(%user, %session, key = %user_key.fingerprint(), "end-to-end handshake");
                    HandshakeReply::Msg2(msg2)
                }
                Err(why) => {
                    info!(%user, %session, "end-to-end handshake refused: {why}");
                    HandshakeReply::Refused(why)
                }
            };
            let _ = wire::write_frame(&mut send, &reply).await;
            let _ = send.finish();
            return;
        }
        HostStream::Channel { number } => number,
        _ => return,
    };
    let keys = match side.sessions.channel(session, number) {
        Ok(keys) => keys,
        Err(why) => {
            info!(%user, %session, "channel refused: {why}");
            let _ = send.reset(quinn::VarInt::from_u32(NO_CHANNEL_KEYS));
            return;
        }
    };
    let send = SealedSend::new(send, keys.sealer);
    let mut recv = OpenedRecv::new(recv, keys.opener);
    let kind = match timeout(Duration::from_secs(10), recv.read_frame::<ChannelKind>()).await {
        Ok(Ok(Some(kind))) => kind,
        _ => return,
    };
    info!(user = %keys.user, %session, kind = kind_name(&kind), "channel");
    channel_log::record(&side.home, session, &keys.user, &keys.user_key, &kind);
    let cfg = &side.cfg;
    let result = match kind {
        ChannelKind::Shell { term, cols, rows } if cfg.allow_shell => {
            shell(&side.account, send, recv, term, cols, rows).await
        }
        ChannelKind::Exec { argv } if cfg.allow_exec => exec(&side.account, send, recv, argv).await,
        ChannelKind::Forward { target } => forward(cfg, send, recv, target).await,
        ChannelKind::ForwardCheck { target } => forward_check(cfg, send, target).await,
        ChannelKind::Upload {
            path,
            name,
            size,
            mode,
        } if cfg.allow_copy => upload(&side.account, send, recv, &path, &name, size, mode).await,
        ChannelKind::Download { path } if cfg.allow_copy => {
            download(&side.account, send, &path).await
        }
        other => {
            refuse(
                send,
                format!("{} is not allowed on this host", kind_name(&other)),
            )
            .await
        }
    };
    if let Err(e) = result {
        debug!("channel ended: {e}");
    }
}

pub(crate) fn kind_name(kind: &ChannelKind) -> &'static str {
    match kind {
        ChannelKind::Shell { .. } => "shell",
        ChannelKind::Exec { .. } => "exec",
        ChannelKind::Forward { .. } => "forward",
        ChannelKind::ForwardCheck { .. } => "forward check",
        ChannelKind::Upload { .. } | ChannelKind::Download { .. } => "file copy",
        _ => "this request",
    }
}

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

/// How long a command whose client went away has between SIGHUP and
/// SIGKILL (sshd sends SIGHUP only; a command that ignores it would run on
/// with nobody to see it).
const HANGUP_GRACE: Duration = Duration::from_secs(2);

/// Ends what a channel started, its client being gone: SIGHUP to the
/// command's process group, then SIGKILL after [`HANGUP_GRACE`].
async fn hang_up(child: &mut tokio::process::Child) {
    info!(pid = ?child.id(), "the client went away: hanging up the command");
    #[cfg(unix)]
    let group = child
        .id()
        .and_then(|pid| i32::try_from(pid).ok())
        .map(nix::unistd::Pid::from_raw);
    #[cfg(unix)]
    if let Some(group) = group {
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGHUP);
    }
    if timeout(HANGUP_GRACE, child.wait()).await.is_ok() {
        return;
    }
    #[cfg(unix)]
    if let Some(group) = group {
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
    }
    let _ = child.start_kill();
    let _ = child.wait().await;
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
    match e.kind() {
        std::io::ErrorKind::NotFound => (127, format!("cannot run '{program}': command not found")),
        std::io::ErrorKind::PermissionDenied => {
            (126, format!("cannot run '{program}': permission denied"))
        }
        _ => (126, format!("cannot run '{program}': {e}")),
    }
}

async fn exec(
    account: &SessionAccount,
    mut send: SealedSend,
    mut recv: OpenedRecv,
    argv: Vec<String>,
) -> Result<(), ChannelError> {
    let Some((program, args)) = argv.split_first() else {
        return refuse(send, "no command given".into()).await;
    };
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
            accept(&mut send, None).await?;
            send.write_frame(&ExecOut::Stderr(format!("latchkey: {why}\n").into_bytes()))
                .await?;
            send.write_frame(&ExecOut::Exit(code)).await?;
            send.finish().await?;
            return Ok(());
        }
    };
    accept(&mut send, None).await?;
    let (Some(stdin), Some(mut stdout), Some(mut stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(ChannelError::Pty("child has no pipes".into()));
    };
    // Forwards standard input; ends `true` if the client went away (its
    // stream ended without the end-of-input frame).
    let mut pump = tokio::spawn(async move {
        let mut stdin = Some(stdin);
        loop {
            match recv.read_frame::<ExecIn>().await {
                Ok(Some(ExecIn::Stdin(bytes))) => {
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
    let (mut out_buf, mut err_buf) = (vec![0u8; MAX_CHUNK], vec![0u8; MAX_CHUNK]);
    let (mut out_open, mut err_open) = (true, true);
    while out_open || err_open {
        let frame = tokio::select! {
            biased;
            _ = &mut gone => {
                hang_up(&mut child).await;
                return Ok(());
            }
            n = stdout.read(&mut out_buf), if out_open => match n {
                Ok(n) if n > 0 => ExecOut::Stdout(out_buf[..n].to_vec()),
                _ => { out_open = false; continue; }
            },
            n = stderr.read(&mut err_buf), if err_open => match n {
                Ok(n) if n > 0 => ExecOut::Stderr(err_buf[..n].to_vec()),
                _ => { err_open = false; continue; }
            },
        };
        if let Err(e) = send.write_frame(&frame).await {
            hang_up(&mut child).await;
            return Err(e.into());
        }
    }
    let status = tokio::select! {
        biased;
        _ = &mut gone => {
            hang_up(&mut child).await;
            return Ok(());
        }
        status = child.wait() => status?,
    };
    send.write_frame(&ExecOut::Exit(status_code(status)))
        .await?;
    send.finish().await?;
    Ok(())
}

fn pty_err(e: impl std::fmt::Display) -> ChannelError {
    ChannelError::Pty(e.to_string())
}

async fn shell(
    account: &SessionAccount,
    mut send: SealedSend,
    mut input: OpenedRecv,
    term: String,
    cols: u16,
    rows: u16,
) -> Result<(), ChannelError> {
    let size = |cols, rows| PtySize {
        rows,
        cols,
        pixel_width: 0,
        pixel_height: 0,
    };
    let pair = match portable_pty::native_pty_system().openpty(size(cols, rows)) {
        Ok(pair) => pair,
        Err(e) => return refuse(send, format!("cannot open a terminal on the host: {e}")).await,
    };
    let term = if term.is_empty() {
        "xterm-256color".into()
    } else {
        term
    };
    let mut child = match pair.slave.spawn_command(account.shell(term)) {
        Ok(child) => child,
        Err(e) => return refuse(send, format!("cannot start a shell on the host: {e}")).await,
    };
    drop(pair.slave);
    let mut killer = child.clone_killer();
    let mut reader = pair.master.try_clone_reader().map_err(pty_err)?;
    let mut writer = pair.master.take_writer().map_err(pty_err)?;
    accept(&mut send, None).await?;

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
    let mut gone = false;
    loop {
        tokio::select! {
            biased;
            _ = &mut stopped => {
                gone = true;
                break;
            }
            data = out_rx.recv() => match data {
                Some(bytes) => {
                    if send.write_frame(&ShellOut::Data(bytes)).await.is_err() {
                        gone = true;
                        break;
                    }
                }
                None => break,
            },
            frame = input.read_frame::<ShellIn>(), if input_open => match frame {
                Ok(Some(ShellIn::Data(bytes))) => {
                    if in_tx.send(bytes).await.is_err() {
                        input_open = false;
                    }
                }
                Ok(Some(ShellIn::Resize { cols, rows })) => {
                    pair.master.resize(size(cols, rows)).map_err(pty_err)?;
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
    if gone {
        // SIGHUP (as when a terminal hangs up), then SIGKILL after the grace.
        info!("the client went away: hanging up the shell");
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
        return Ok(());
    }
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .map_err(pty_err)??;
    let code = i32::try_from(status.exit_code()).unwrap_or(255);
    send.write_frame(&ShellOut::Exit(code)).await?;
    send.finish().await?;
    Ok(())
}

/// The address to forward to if `forward_allow` permits `target`, else
/// the refusal the user sees: the target and every target that is allowed
/// (entries that are not `IP:PORT` permit nothing, so they are not listed).
fn allowed_target(cfg: &HostConfig, target: &str) -> Result<SocketAddr, String> {
    let allowed: Vec<SocketAddr> = cfg
        .forward_allow
        .iter()
        .filter_map(|a| a.parse::<SocketAddr>().ok())
        .collect();
    match target.parse::<SocketAddr>() {
        Ok(addr) if allowed.contains(&addr) => Ok(addr),
        _ if allowed.is_empty() => Err(format!(
            "forwarding to {target} is not allowed on this host; it allows no targets"
        )),
        _ => {
            let list: Vec<String> = allowed.iter().map(ToString::to_string).collect();
            Err(format!(
                "forwarding to {target} is not allowed on this host; it allows: {}",
                list.join(", ")
            ))
        }
    }
}

/// Answers a forward check from the config alone: nothing is connected, so
/// a check never reaches (or wakes) the target.
async fn forward_check(
    cfg: &HostConfig,
    mut send: SealedSend,
    target: String,
) -> Result<(), ChannelError> {
    match allowed_target(cfg, &target) {
        Ok(_) => {
            accept(&mut send, None).await?;
            send.finish().await?;
            Ok(())
        }
        Err(why) => refuse(send, why).await,
    }
}

async fn forward(
    cfg: &HostConfig,
    mut send: SealedSend,
    mut recv: OpenedRecv,
    target: String,
) -> Result<(), ChannelError> {
    let addr = match allowed_target(cfg, &target) {
        Ok(addr) => addr,
        Err(why) => return refuse(send, why).await,
    };
    let tcp = match timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect(addr),
    )
    .await
    {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => {
            return refuse(send, format!("cannot connect to {target} on the host: {e}")).await
        }
        Err(_) => {
            return refuse(
                send,
                format!("connecting to {target} on the host timed out"),
            )
            .await
        }
    };
    tcp.set_nodelay(true)?;
    accept(&mut send, None).await?;
    wire::splice_tcp(tcp, &mut send, &mut recv).await;
    Ok(())
}

/// The file helper's standard streams, and its first error line.
struct Helper {
    child: tokio::process::Child,
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
            // its partial file when its input ends); killed if the channel
            // goes without waiting.
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start the file helper: {e}"))?;
        match (child.stdin.take(), child.stdout.take(), child.stderr.take()) {
            (stdin, Some(stdout), Some(stderr)) => Ok(Self {
                child,
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

async fn upload(
    account: &SessionAccount,
    mut send: SealedSend,
    mut recv: OpenedRecv,
    path: &str,
    name: &str,
    size: u64,
    mode: u32,
) -> Result<(), ChannelError> {
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
    accept(&mut send, None).await?;
    let mut hasher = Sha256::new();
    let mut left = size;
    let Some(mut stdin) = helper.stdin.take() else {
        return Err(ChannelError::Pty("the file helper has no input".into()));
    };
    let received = async {
        while left > 0 {
            let Some(data) = recv.recv().await? else {
                return Err(ChannelError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            };
            let data = &data[..data.len().min(usize::try_from(left).unwrap_or(usize::MAX))];
            hasher.update(data);
            stdin.write_all(data).await?;
            left -= data.len() as u64;
        }
        let mut sent = [0u8; 32];
        recv.read_exact(&mut sent).await?;
        Ok::<_, ChannelError>(sent)
    };
    // A client that went away is seen at once (the relay stops our reply
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
                    ChannelReply::Accepted { size: Some(size) }
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
    Ok(())
}

async fn download(
    account: &SessionAccount,
    mut send: SealedSend,
    path: &str,
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
    accept(&mut send, Some(size)).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(allow: &[&str]) -> HostConfig {
        let mut cfg = HostConfig::new(
            &["relay:4433".into()],
            String::new(),
            "mypc".parse().expect("host name"),
        );
        cfg.forward_allow = allow.iter().map(|a| a.to_string()).collect();
        cfg
    }

    #[test]
    fn a_target_outside_forward_allow_is_refused_with_the_allowed_list() {
        let host = cfg(&["127.0.0.1:22", "not an address", "[::1]:5900"]);
        assert_eq!(
            allowed_target(&host, "127.0.0.1:22"),
            Ok("127.0.0.1:22".parse().expect("addr"))
        );
        assert_eq!(
            allowed_target(&host, "127.0.0.1:8080"),
            Err("forwarding to 127.0.0.1:8080 is not allowed on this host; \
                 it allows: 127.0.0.1:22, [::1]:5900"
                .into())
        );
        // A target that is not an address is refused the same way.
        assert!(allowed_target(&host, "localhost:22").is_err());
        assert_eq!(
            allowed_target(&cfg(&[]), "127.0.0.1:22"),
            Err(
                "forwarding to 127.0.0.1:22 is not allowed on this host; it allows no targets"
                    .into()
            )
        );
    }
}
