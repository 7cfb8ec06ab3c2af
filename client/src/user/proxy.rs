//! `latchkey proxy HOST [TARGET:PORT]`: standard input and output joined to
//! a TCP target as seen from the host, like `ssh -W`, so that ssh (and scp,
//! sftp, rsync, git) reach the host through Latchkey as a `ProxyCommand`
//! (see `latchkey ssh-config`). The target defaults to the host's own SSH
//! server; the host's config must allow it, as for a forward.

use latchkey_protocol::session::ChannelKind;

use super::remote::{ChannelError, Remote};
use crate::channel;

/// The target when none is given: the host's own SSH server.
pub const DEFAULT_TARGET: &str = "127.0.0.1:22";

/// Joins standard input and output to `target` through one channel until
/// the target closes: standard input's end is passed on (a half close), and
/// a channel cut short is an error, so the caller (ssh) never takes a cut
/// for a clean end.
pub async fn proxy(remote: &Remote, target: &str) -> Result<(), ChannelError> {
    let (mut send, mut recv, _) = remote
        .channel(ChannelKind::Forward {
            target: target.to_string(),
        })
        .await
        .map_err(|e| match e {
            ChannelError::Refused(why) => {
                ChannelError::Refused(format!("host '{}': {why}", remote.host))
            }
            e => e,
        })?;
    let mut stdin = tokio::io::stdin();
    let mut stdout = tokio::io::stdout();
    let into = channel::copy_into_channel(&mut stdin, &mut send);
    let out = channel::copy_out_of_channel(&mut recv, &mut stdout);
    tokio::pin!(into, out);
    let mut into_done = false;
    loop {
        tokio::select! {
            copied = &mut out => {
                return copied.map(drop).map_err(|_| {
                    ChannelError::Refused(format!(
                        "the connection to {target} via '{}' was cut",
                        remote.host
                    ))
                });
            }
            _ = &mut into, if !into_done => into_done = true,
        }
    }
}
