//! The holder: the process that logs in once and keeps the session for the
//! commands that follow, until the session ends, `disconnect` stops it, or
//! no command has used it for its `persist`.

use std::{
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    sync::Arc,
    time::Duration,
};

use latchkey_protocol::{
    channel::{ChannelRecv, ChannelSend},
    control::Phase,
    ids::HostName,
};
use tokio::{
    net::{UnixListener, UnixStream},
    sync::{watch, Notify},
    time::timeout,
};

use super::start::Started;
use crate::user::remote::kept::{
    wire::{self, PhaseSaid, Reply, Request, Status},
    Place, ReuseError,
};
use crate::{
    code,
    config::Home,
    net::NetError,
    user::{remote::Remote, UserError},
};

/// How long a new holder waits for the lock: an ending holder lets go
/// within it.
const LOCK_WAIT: Duration = Duration::from_secs(1);

/// How long the ending holder gives its followers to hear why.
const FAREWELL: Duration = Duration::from_secs(1);

/// How long a connecting command has to say what it wants.
const REQUEST_WAIT: Duration = Duration::from_secs(5);

/// Holds `host`'s session: takes the lock (or says another holder has
/// it), logs in with the code on standard input, binds the socket, tells
/// `report` how that went, and serves until the session is over.
pub async fn hold(
    home: &Home,
    host: &HostName,
    persist: Duration,
    report: impl FnOnce(&Started),
) -> Result<(), ReuseError> {
    let place = Place::of(home, host)?;
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&place.lock)?;
    // A holder that is ending lets go at once; one that is starting or
    // serving keeps it.
    let until = tokio::time::Instant::now() + LOCK_WAIT;
    while !fs4::fs_std::FileExt::try_lock_exclusive(&lock)? {
        if tokio::time::Instant::now() >= until {
            report(&Started::Busy);
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let access = match code::for_login(true, host.as_str()) {
        Ok(access) => access,
        Err(e) => {
            let error = e.to_string();
            report(&Started::Failed {
                error,
                wrong_code: false,
            });
            return Ok(());
        }
    };
    let remote = match Remote::open(home, host, access).await {
        Ok(remote) => remote,
        Err(e) => {
            let wrong_code = matches!(e, UserError::Net(NetError::WrongCode(_)));
            let error = chain_text(&e);
            report(&Started::Failed { error, wrong_code });
            return Ok(());
        }
    };
    // Ours while the lock is held: a socket left by a holder that died is
    // removed, and no live one can be behind it.
    match std::fs::remove_file(&place.socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    let listener = UnixListener::bind(&place.socket)?;
    std::fs::set_permissions(&place.socket, std::fs::Permissions::from_mode(0o600))?;
    report(&Started::Ready);
    let remote = Arc::new(remote);
    let held = Held {
        remote: remote.clone(),
        persist: watch::Sender::new(persist),
        users: watch::Sender::new(0),
        stop: Notify::new(),
        ending: watch::Sender::new(None),
        follows: tokio_util::task::TaskTracker::new(),
    };
    let held = Arc::new(held);
    let why = serve(&held, &listener).await;
    tracing::info!(%host, "the held session ends: {why}");
    // The commands still on it hear why before their channels are cut.
    let said = match &*held.remote.phase.borrow() {
        Phase::Ended(reason) => reason.clone(),
        _ => format!("the session kept for '{host}' ended: {why}"),
    };
    held.ending.send_replace(Some(said));
    held.follows.close();
    let _ = timeout(FAREWELL, held.follows.wait()).await;
    // Gone before the lock is released, and both before the session's
    // goodbye to the relay: the next command starts a holder of its own.
    let _ = std::fs::remove_file(&place.socket);
    drop(lock);
    remote.close().await;
    Ok(())
}

/// Closes every descriptor above standard error the holder inherited: it
/// outlives the command that started it, and must not keep that command's
/// pipes open (a `$(…)`, a test harness's descriptor 3, make's jobserver),
/// or whoever waits for them waits for the holder. Called first thing,
/// before this process opens any of its own.
pub fn close_inherited_fds() {
    let listed = std::fs::read_dir("/proc/self/fd").or_else(|_| std::fs::read_dir("/dev/fd"));
    let Ok(listed) = listed else { return };
    let fds: Vec<i32> = listed
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    // The listing's own descriptor is among them, closed already.
    for fd in fds {
        let _ = nix::unistd::close(fd);
    }
}

/// Whether a holder for the session in `place` runs (or is starting): it
/// holds the lock for its whole life.
pub fn holder_runs(place: &Place) -> bool {
    let Ok(lock) = std::fs::OpenOptions::new().write(true).open(&place.lock) else {
        return false;
    };
    !fs4::fs_std::FileExt::try_lock_exclusive(&lock).unwrap_or(false)
}

/// The error's whole chain, as the command would have printed it.
fn chain_text(e: &UserError) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        source = s.source();
    }
    text
}

/// What the serving tasks share.
struct Held {
    remote: Arc<Remote>,
    /// How long the session stays with no command connected.
    persist: watch::Sender<Duration>,
    /// Commands connected now.
    users: watch::Sender<usize>,
    /// `disconnect` asked to end.
    stop: Notify,
    /// Why the session ends, once it does: the last word to followers.
    ending: watch::Sender<Option<String>>,
    /// The followers' tasks, waited for (briefly) at the end.
    follows: tokio_util::task::TaskTracker,
}

/// A connected command, counted while it lives.
struct User(Arc<Held>);

impl User {
    fn new(held: Arc<Held>) -> Self {
        held.users.send_modify(|n| *n += 1);
        Self(held)
    }
}

impl Drop for User {
    fn drop(&mut self) {
        self.0.users.send_modify(|n| *n -= 1);
    }
}

/// Serves commands until the session ends; returns why it did. Each
/// command's connection is its own task: a command that stops reading
/// holds up only itself.
async fn serve(held: &Arc<Held>, listener: &UnixListener) -> &'static str {
    let me = nix::unistd::getuid().as_raw();
    let mut phase = held.remote.phase.clone();
    let ended = phase.wait_for(|p| matches!(p, Phase::Ended(_)));
    tokio::pin!(ended);
    loop {
        tokio::select! {
            _ = &mut ended => return "the session is over",
            _ = idle(held) => return "no command used it for its persist time",
            _ = held.stop.notified() => return "disconnected",
            accepted = listener.accept() => {
                let Ok((conn, _)) = accepted else { continue };
                match conn.peer_cred() {
                    Ok(cred) if cred.uid() == me => {}
                    Ok(cred) => {
                        tracing::warn!(uid = cred.uid(), "refused a connection from another user");
                        continue;
                    }
                    Err(_) => continue,
                }
                let user = User::new(held.clone());
                tokio::spawn(async move {
                    if let Err(e) = answer(&user.0, conn).await {
                        tracing::debug!("a command's connection: {e}");
                    }
                    drop(user);
                });
            }
        }
    }
}

/// Resolves once no command has been connected for the persist time.
async fn idle(held: &Held) {
    let mut users = held.users.subscribe();
    let mut persist = held.persist.subscribe();
    loop {
        let _ = users.wait_for(|n| *n == 0).await;
        let wait = *persist.borrow_and_update();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {
                if *users.borrow() == 0 {
                    return;
                }
            }
            _ = users.changed() => {}
            _ = persist.changed() => {}
        }
    }
}

/// Answers one command's connection.
async fn answer(held: &Held, mut conn: UnixStream) -> Result<(), ReuseError> {
    let request = timeout(REQUEST_WAIT, wire::read::<Request>(&mut conn))
        .await
        .map_err(|_| ReuseError::Holder("no request".into()))??;
    let remote = &held.remote;
    match request {
        None => Ok(()),
        Some(Request::Follow) => {
            let follow = follow(remote, held.ending.subscribe(), conn);
            held.follows.track_future(follow).await
        }
        Some(Request::Channel(kind)) => match remote.open_channel(kind).await {
            Ok((send, recv, opened)) => {
                wire::send(&mut conn, &Reply::Accepted(opened)).await?;
                carry(conn, send, recv).await;
                Ok(())
            }
            Err(e) => wire::send(&mut conn, &Reply::Refused(e.to_string())).await,
        },
        Some(Request::Reboot) => {
            let reply = match remote.request_reboot().await {
                Ok(()) => Reply::Done,
                Err(e) => Reply::Refused(e.to_string()),
            };
            wire::send(&mut conn, &reply).await
        }
        Some(Request::Persist(persist)) => {
            held.persist.send_replace(persist);
            wire::send(&mut conn, &Reply::Done).await
        }
        Some(Request::Stop) => {
            wire::send(&mut conn, &Reply::Done).await?;
            held.stop.notify_one();
            Ok(())
        }
    }
}

/// Tells a command where the session stands, now and at each change,
/// until it goes away or the session ends (with the reason, last).
async fn follow(
    remote: &Remote,
    mut ending: watch::Receiver<Option<String>>,
    conn: UnixStream,
) -> Result<(), ReuseError> {
    let (mut from, mut to) = conn.into_split();
    let mut phase = remote.phase.clone();
    let mut quiet = remote.quiet.clone();
    let (mut phase_open, mut quiet_open) = (true, true);
    let mut gone = [0u8; 1];
    loop {
        let last = ending.borrow_and_update().clone();
        let now = match &last {
            Some(why) => PhaseSaid::Ended(why.clone()),
            None => PhaseSaid::of(&phase.borrow_and_update()),
        };
        let over = matches!(now, PhaseSaid::Ended(_));
        let status = Status {
            phase: now,
            quiet: quiet.borrow_and_update().map(|since| since.elapsed()),
            relay: remote.relay_text(),
        };
        wire::send(&mut to, &Reply::Status(status)).await?;
        // An end is the last word; a session whose phase can no longer
        // change has said its last too.
        if over || !phase_open {
            return Ok(());
        }
        tokio::select! {
            changed = phase.changed() => phase_open = changed.is_ok(),
            changed = quiet.changed(), if quiet_open => quiet_open = changed.is_ok(),
            _ = ending.changed() => {}
            // A command says nothing more: any read is its end.
            _ = tokio::io::AsyncReadExt::read(&mut from, &mut gone) => return Ok(()),
        }
    }
}

/// How one direction of a carried channel ended.
#[derive(PartialEq, Eq)]
enum Pumped {
    /// Its sender finished it, and the finish was passed on.
    Finished,
    /// Its sender cut it, and the cut was passed on.
    Cut,
    /// The receiving side no longer takes it.
    Unread,
}

/// Copies one direction of a channel until it ends, passing the end on.
async fn pump(from: &mut ChannelRecv, to: &mut ChannelSend) -> Pumped {
    loop {
        match from.recv().await {
            Ok(Some(data)) => {
                if to.write_all(&data).await.is_err() {
                    return Pumped::Unread;
                }
            }
            Ok(None) => {
                let _ = to.finish().await;
                return Pumped::Finished;
            }
            Err(_) => {
                to.reset(quinn::VarInt::from_u32(0));
                return Pumped::Cut;
            }
        }
    }
}

/// Carries a channel between a command's connection and the host, both
/// ways, until the command closes its connection: a command keeps it
/// open while it uses the channel, even after finishing its side, so its
/// close (or its death) is the channel's end, and what the host still
/// sends then is cut off.
async fn carry(conn: UnixStream, mut to_host: ChannelSend, mut from_host: ChannelRecv) {
    let Ok((conn, watch)) = with_second_handle(conn) else {
        to_host.reset(quinn::VarInt::from_u32(0));
        from_host.stop(quinn::VarInt::from_u32(0));
        return;
    };
    let (read, write) = conn.into_split();
    let mut from_cmd = ChannelRecv::local(Box::new(read));
    let mut to_cmd = ChannelSend::local(Box::new(write));
    let mut finished = false;
    {
        let up = async {
            match pump(&mut from_cmd, &mut to_host).await {
                Pumped::Cut => return,
                Pumped::Finished => finished = true,
                Pumped::Unread => {}
            }
            from_cmd.far_end_closed().await;
        };
        let down = async {
            if pump(&mut from_host, &mut to_cmd).await == Pumped::Unread {
                from_host.stop(quinn::VarInt::from_u32(0));
            }
            std::future::pending::<()>().await;
        };
        tokio::select! {
            () = up => {}
            () = down => {}
            () = command_gone(watch) => {}
        }
    }
    // What the command did not finish is cut, never ended as if complete:
    // a QUIC stream dropped unfinished would end cleanly, and the host
    // would close a forward's target as if all had been sent. What is
    // still coming from the host is refused; the host hangs up what ran on
    // the channel.
    if !finished {
        to_host.reset(quinn::VarInt::from_u32(0));
    }
    from_host.stop(quinn::VarInt::from_u32(0));
}

/// How often a carried channel checks that its command is still there.
const GONE_CHECK: Duration = Duration::from_secs(1);

/// `conn` and a second handle on the same socket.
fn with_second_handle(conn: UnixStream) -> std::io::Result<(UnixStream, UnixStream)> {
    let conn = conn.into_std()?;
    let second = conn.try_clone()?;
    Ok((UnixStream::from_std(conn)?, UnixStream::from_std(second)?))
}

/// Resolves once the command's end of the socket is closed (it finished
/// with the channel, died, or cut it), however stuck the pumps are: one
/// blocked writing to a host that reads nothing (a remote program that
/// never reads its input) would never read that close, and the channel,
/// its remote program and the session's flow control would stay taken.
/// Checked on a second handle, whose readiness says "closed" without
/// taking what the pump has yet to read.
async fn command_gone(watch: UnixStream) {
    let mut tick = tokio::time::interval(GONE_CHECK);
    loop {
        tick.tick().await;
        let ready = timeout(Duration::ZERO, watch.ready(tokio::io::Interest::READABLE)).await;
        match ready {
            Ok(Ok(ready)) if ready.is_read_closed() => return,
            Ok(Err(_)) => return,
            _ => {}
        }
    }
}
