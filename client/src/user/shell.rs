//! `latchkey connect HOST`: an interactive shell on a PTY on the host. The
//! local terminal is put in raw mode (when it is one) and size changes are
//! sent along; the shell's exit status becomes ours.
//!
//! Like ssh, a `~` at the start of a line begins an escape: `~R` reboots
//! the host (the session waits for it and opens a new shell when it is
//! back), `~.` disconnects, `~~` sends one `~`.
//!
//! When the relay goes away, or the host's agent loses its link, the shell
//! itself usually lives on (the session's connection is kept): a line says
//! so at once, and another when the session is back.

use std::io::IsTerminal;

use latchkey_protocol::{
    control::{Phase, Waiting},
    ids::HostName,
    session::{ChannelKind, ShellIn, ShellOut, MAX_CHUNK},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::mpsc,
};

use super::{
    remote::{ChannelError, Remote},
    status::{is_waiting, quiet_relay_text},
};

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

/// What the keyboard asks for.
#[derive(Debug, PartialEq, Eq)]
enum Input {
    Data(Vec<u8>),
    Resize(u16, u16),
    Reboot,
    Disconnect,
    Eof,
}

/// Finds `~R`, `~.` and `~~` at line starts in what is typed.
#[derive(Debug)]
struct Escapes {
    at_line_start: bool,
    tilde: bool,
}

impl Escapes {
    fn new() -> Self {
        Self {
            at_line_start: true,
            tilde: false,
        }
    }

    fn feed(&mut self, bytes: &[u8]) -> Vec<Input> {
        let mut out = Vec::new();
        let mut data = Vec::new();
        for &b in bytes {
            if self.tilde {
                self.tilde = false;
                match b {
                    b'R' => {
                        out.push(Input::Data(std::mem::take(&mut data)));
                        out.push(Input::Reboot);
                        continue;
                    }
                    b'.' => {
                        out.push(Input::Data(std::mem::take(&mut data)));
                        out.push(Input::Disconnect);
                        continue;
                    }
                    b'~' => {}
                    other => {
                        data.push(b'~');
                        data.push(other);
                        self.at_line_start = matches!(other, b'\r' | b'\n');
                        continue;
                    }
                }
            } else if b == b'~' && self.at_line_start {
                self.tilde = true;
                continue;
            }
            data.push(b);
            self.at_line_start = matches!(b, b'\r' | b'\n');
        }
        out.push(Input::Data(data));
        out.retain(|i| !matches!(i, Input::Data(d) if d.is_empty()));
        out
    }
}

/// Runs an interactive shell; returns its exit status.
pub async fn connect(remote: &Remote) -> Result<i32, ChannelError> {
    let tty = std::io::stdin().is_terminal();
    let size = || {
        if tty {
            crossterm::terminal::size().unwrap_or((80, 24))
        } else {
            (80, 24)
        }
    };
    let term = std::env::var("TERM").unwrap_or_else(|_| "xterm-256color".into());
    let _raw = if tty { RawMode::enable() } else { None };

    let (tx, mut keys) = mpsc::channel::<Input>(16);
    let typing = tx.clone();
    let reader = tokio::spawn(async move {
        let mut stdin = tokio::io::stdin();
        let mut buf = vec![0u8; MAX_CHUNK];
        let mut escapes = Escapes::new();
        loop {
            match stdin.read(&mut buf).await {
                Ok(n) if n > 0 => {
                    for input in escapes.feed(&buf[..n]) {
                        if typing.send(input).await.is_err() {
                            return;
                        }
                    }
                }
                _ => {
                    let _ = typing.send(Input::Eof).await;
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
                if tx.send(Input::Resize(cols, rows)).await.is_err() {
                    return;
                }
            }
        }
    });

    // Windows has no SIGWINCH: the console's size is looked at instead,
    // four times a second.
    #[cfg(not(unix))]
    let resizes = tokio::spawn(async move {
        let mut last = crossterm::terminal::size().ok();
        let mut every = tokio::time::interval(std::time::Duration::from_millis(250));
        loop {
            every.tick().await;
            let now = crossterm::terminal::size().ok();
            if let (true, Some((cols, rows))) = (now != last, now) {
                if tx.send(Input::Resize(cols, rows)).await.is_err() {
                    return;
                }
            }
            last = now;
        }
    });

    let result = shells(remote, &term, size, &mut keys).await;
    reader.abort();
    resizes.abort();
    result
}

/// One shell after another: a new one after each reboot of the host.
async fn shells(
    remote: &Remote,
    term: &str,
    size: impl Fn() -> (u16, u16),
    keys: &mut mpsc::Receiver<Input>,
) -> Result<i32, ChannelError> {
    let mut out = tokio::io::stdout();
    let mut keys_open = true;
    loop {
        let (cols, rows) = size();
        let (mut send, mut recv, _) = remote
            .channel(ChannelKind::Shell {
                term: term.into(),
                cols,
                rows,
            })
            .await?;
        let mut phase = remote.phase.clone();
        let mut away: Option<std::time::Instant> = None;
        let mut phase_open = true;
        let mut quiet = remote.quiet.clone();
        let mut told_quiet = false;
        loop {
            tokio::select! {
                changed = phase.changed(), if phase_open => {
                    phase_open = changed.is_ok();
                    let now = phase.borrow_and_update().clone();
                    if let Some(line) = out_of_reach_line(&remote.host, &now, &mut away, remote.waiting_text()) {
                        eprint!("{line}");
                    }
                    if away.is_some() {
                        // The line above says the rest.
                        told_quiet = false;
                    }
                }
                Ok(()) = quiet.changed() => {
                    let since = *quiet.borrow_and_update();
                    let relay = remote.relay_text();
                    if let Some(text) = quiet_relay_text(&relay, since, &mut told_quiet, away.is_some() || is_waiting(&phase)) {
                        eprint!("\r\n{text}\r\n");
                    }
                }
                key = keys.recv(), if keys_open => match key {
                    Some(Input::Data(bytes)) => {
                        let _ = send.write_frame(&ShellIn::Data(bytes)).await;
                    }
                    Some(Input::Resize(cols, rows)) => {
                        let _ = send.write_frame(&ShellIn::Resize { cols, rows }).await;
                    }
                    Some(Input::Reboot) => {
                        eprint!("\r\n[latchkey: asking {} to reboot]\r\n", remote.host);
                        if let Err(e) = remote.request_reboot().await {
                            eprint!("\r\n[latchkey: reboot refused: {e}]\r\n");
                        }
                    }
                    Some(Input::Disconnect) => {
                        // Like ssh: say so, and leave the prompt on a line of its own.
                        eprint!("\r\n[latchkey: disconnected from {}]\r\n", remote.host);
                        return Ok(255);
                    }
                    Some(Input::Eof) | None => {
                        keys_open = false;
                        let _ = send.finish().await;
                    }
                },
                frame = recv.read_frame::<ShellOut>() => match frame {
                    Ok(Some(ShellOut::Data(b))) => {
                        out.write_all(&b).await.ok();
                        out.flush().await.ok();
                    }
                    Ok(Some(ShellOut::Exit(code))) => return Ok(code),
                    Ok(Some(_)) => {}
                    _ => break,
                },
            }
        }
        // The shell's stream broke: a reboot, or the end of the session.
        let host = remote.host.clone();
        let status_line = std::cell::Cell::new(false);
        let waited = remote
            .wait_if_rebooting(|t| {
                status_line.set(true);
                eprint!(
                    "{}",
                    waiting_line(&host, remote.waiting_text(), t.as_secs())
                );
            })
            .await
            .map_err(|e| {
                // The error goes on a line of its own, not after the status.
                eprint!("{}", if status_line.get() { "\r\n" } else { "\r" });
                // The cause first: the relay or the host went away.
                ChannelError::Refused(format!(
                    "session ended: {e} (the shell's exit status is unknown)"
                ))
            })?;
        eprint!(
            "\r\n[latchkey: {} is back after {} s; new shell]\r\n",
            remote.host,
            waited.as_secs()
        );
    }
}

/// What to say when the session loses its route while the shell lives on
/// (the relay went away, or the host's agent lost its link), and when it is
/// back; `away` holds when it went.
fn out_of_reach_line(
    host: &HostName,
    phase: &Phase,
    away: &mut Option<std::time::Instant>,
    doing: &str,
) -> Option<String> {
    match phase {
        Phase::Rebooting {
            since,
            waiting: Waiting::RelayLost | Waiting::HostAway,
            ..
        } if away.is_none() => {
            *away = Some(*since);
            Some(format!("\r\n[latchkey: host {host} {doing}]\r\n"))
        }
        Phase::Ready => away.take().map(|since| {
            format!(
                "\r\n[latchkey: {host} is back after {} s; the shell went on]\r\n",
                since.elapsed().as_secs()
            )
        }),
        _ => None,
    }
}

/// The status line while the host is away, redrawn in place every second:
/// the terminal is in raw mode, so a line feed would not return to the
/// start of the line; a carriage return does, and the rest of the older,
/// longer line is erased.
fn waiting_line(host: &HostName, doing: &str, secs: u64) -> String {
    format!("\r[latchkey: host {host} {doing} {secs} s]\x1b[K")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_waiting_line_is_redrawn_in_place() {
        let host: HostName = "mypc".parse().unwrap();
        let line = waiting_line(&host, "is rebooting…", 7);
        assert_eq!(line, "\r[latchkey: host mypc is rebooting… 7 s]\x1b[K");
        assert!(!line.contains('\n'));
    }

    #[test]
    fn losing_and_regaining_the_route_is_said_once_each() {
        let host: HostName = "mypc".parse().unwrap();
        let lost = Phase::Rebooting {
            since: std::time::Instant::now(),
            deadline_secs: 60,
            waiting: Waiting::RelayLost,
        };
        let mut away = None;
        let said = out_of_reach_line(&host, &lost, &mut away, "is out of reach").unwrap();
        assert_eq!(said, "\r\n[latchkey: host mypc is out of reach]\r\n");
        assert!(out_of_reach_line(&host, &lost, &mut away, "is out of reach").is_none());
        let back = out_of_reach_line(&host, &Phase::Ready, &mut away, "").unwrap();
        assert!(
            back.contains("mypc is back after 0 s; the shell went on"),
            "{back}"
        );
        assert!(out_of_reach_line(&host, &Phase::Ready, &mut away, "").is_none());
        // A reboot ends the shell: the waiting line says so instead.
        let rebooting = Phase::Rebooting {
            since: std::time::Instant::now(),
            deadline_secs: 60,
            waiting: Waiting::Reboot,
        };
        assert!(out_of_reach_line(&host, &rebooting, &mut away, "").is_none());
    }

    #[test]
    fn escapes_only_at_line_start() {
        let mut e = Escapes::new();
        assert_eq!(e.feed(b"~R"), vec![Input::Reboot]);
        assert_eq!(e.feed(b"a~R"), vec![Input::Data(b"a~R".to_vec())]);
        assert_eq!(e.feed(b"\n~"), vec![Input::Data(b"\n".to_vec())]);
        assert_eq!(e.feed(b"."), vec![Input::Disconnect]);
        let mut e = Escapes::new();
        assert_eq!(e.feed(b"~~x"), vec![Input::Data(b"~x".to_vec())]);
        let mut e = Escapes::new();
        assert_eq!(
            e.feed(b"~x\n~R"),
            vec![Input::Data(b"~x\n".to_vec()), Input::Reboot]
        );
    }
}
