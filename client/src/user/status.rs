//! What the user is told of a session's path while a command runs: the
//! relay went quiet and answers again, the host is away or rebooting, and
//! when it is back. The shell says it between its own lines; `forward`,
//! `desktop` and `proxy`, which have no screen of their own, run
//! [`report`] beside their work, one line per change on standard error.

use std::{convert::Infallible, time::Instant};

use latchkey_protocol::control::Phase;

use super::remote::Remote;

/// What to say when the relay went quiet (`since`, before the connection
/// gives it up) or speaks again; nothing while the session is out of reach
/// (`away`: the wait's own line says so, and the silence ends there only
/// because a new connection began). `told` remembers what was said.
pub(crate) fn quiet_relay_text(
    relay: &str,
    since: Option<Instant>,
    told: &mut bool,
    away: bool,
) -> Option<String> {
    match since {
        Some(since) if !away && !*told => {
            *told = true;
            Some(format!(
                "[latchkey: relay lost: {relay} silent for {} s; resuming the session if it \
                 stays so…]",
                since.elapsed().as_secs()
            ))
        }
        None if *told => {
            *told = false;
            (!away).then(|| format!("[latchkey: relay {relay} answers again]"))
        }
        _ => None,
    }
}

/// What to say when the session starts waiting (`waiting_text`: for what)
/// and when it is back, for a command that goes on through the wait;
/// `away` holds when the wait began.
fn wait_text(
    remote: &Remote,
    phase: &Phase,
    away: &mut Option<Instant>,
    waiting_text: &str,
) -> Option<String> {
    match phase {
        Phase::Rebooting { since, .. } if away.is_none() => {
            *away = Some(*since);
            Some(format!("[latchkey: host {} {waiting_text}]", remote.host))
        }
        Phase::Ready => away.take().map(|since| {
            format!(
                "[latchkey: {} is back after {} s]",
                remote.host,
                since.elapsed().as_secs()
            )
        }),
        _ => None,
    }
}

/// Whether the session waits now (the phase as last published, which the
/// relay's silence is cleared after), whether or not its line was said.
pub(crate) fn is_waiting(phase: &tokio::sync::watch::Receiver<Phase>) -> bool {
    matches!(*phase.borrow(), Phase::Rebooting { .. } | Phase::Ended(_))
}

/// Tells standard error of every change in the session's path, as lines
/// ended by "\r\n" (they stay lines under a terminal in raw mode, such as
/// ssh's around `latchkey proxy`). Never returns: run it beside the
/// command's own work, which decides when the command ends.
pub async fn report(remote: &Remote) -> Infallible {
    let mut phase = remote.phase.clone();
    let mut quiet = remote.quiet.clone();
    let mut away: Option<Instant> = None;
    let mut told_quiet = false;
    let (mut phase_open, mut quiet_open) = (true, true);
    while phase_open || quiet_open {
        let text = tokio::select! {
            changed = phase.changed(), if phase_open => {
                phase_open = changed.is_ok();
                let now = phase.borrow_and_update().clone();
                let text = wait_text(remote, &now, &mut away, remote.waiting_text());
                if away.is_some() {
                    // The wait's line says the rest.
                    told_quiet = false;
                }
                text
            }
            changed = quiet.changed(), if quiet_open => {
                quiet_open = changed.is_ok();
                let since = *quiet.borrow_and_update();
                let relay = remote.relay_text();
                quiet_relay_text(&relay, since, &mut told_quiet, away.is_some() || is_waiting(&phase))
            }
        };
        if let Some(text) = text {
            eprint!("{text}\r\n");
        }
    }
    std::future::pending().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quiet_relay_is_told_once_and_its_return_too() {
        let relay = "192.0.2.7:4433";
        let mut told = false;
        let since = Instant::now();
        let said = quiet_relay_text(relay, Some(since), &mut told, false).expect("told");
        assert!(
            said.starts_with("[latchkey: relay lost: 192.0.2.7:4433 silent for 0 s"),
            "{said}"
        );
        assert!(quiet_relay_text(relay, Some(since), &mut told, false).is_none());
        let back = quiet_relay_text(relay, None, &mut told, false).expect("told back");
        assert_eq!(back, "[latchkey: relay 192.0.2.7:4433 answers again]");
        assert!(quiet_relay_text(relay, None, &mut told, false).is_none());
        // While the session is out of reach, its own line says it all.
        assert!(quiet_relay_text(relay, Some(since), &mut told, true).is_none());
    }
}
