//! What each user may do on this host: the rights of their grant, as the
//! relay last told them (with each session's announcement, and whenever an
//! admin changes them), narrowed for shared users by the owner's own
//! `shared_rights` in host.toml. The host is the only place that sees what
//! a channel is for, so it is where rights are enforced: a channel outside
//! them is refused, and a running one ends when its right is taken away.

use std::{
    collections::HashMap,
    sync::{Mutex, MutexGuard},
};

use latchkey_protocol::{
    ids::UserName,
    rights::{GrantRights, Right, Rights},
    session::ChannelKind,
};
use tokio::sync::watch;

/// The rights of every user who had a session here.
pub(crate) struct UserRights {
    /// What the owner allows every shared user at most.
    shared_at_most: Rights,
    users: Mutex<HashMap<UserName, watch::Sender<GrantRights>>>,
}

impl UserRights {
    pub(crate) fn new(shared_at_most: Rights) -> Self {
        Self {
            shared_at_most,
            users: Mutex::new(HashMap::new()),
        }
    }

    fn users(&self) -> MutexGuard<'_, HashMap<UserName, watch::Sender<GrantRights>>> {
        self.users.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The relay's word on `user`'s rights: kept unless what the host holds
    /// was set later (two messages that crossed on the way).
    pub(crate) fn tell(&self, user: &UserName, rights: GrantRights) {
        let mut users = self.users();
        match users.get(user) {
            Some(current) => {
                current.send_if_modified(|held| {
                    let newer = rights.stamp >= held.stamp && *held != rights;
                    if newer {
                        *held = rights;
                    }
                    newer
                });
            }
            None => {
                users.insert(user.clone(), watch::Sender::new(rights));
            }
        }
    }

    /// Follows `user`'s rights; `None` if the relay never named them here.
    pub(crate) fn follow(&self, user: &UserName) -> Option<Following> {
        self.users().get(user).map(|tx| Following {
            rx: tx.subscribe(),
            shared_at_most: self.shared_at_most.clone(),
        })
    }

    /// What `user` may do now (nothing if the relay never said).
    #[cfg(test)]
    fn now(&self, user: &UserName) -> Rights {
        self.follow(user)
            .map_or_else(|| Rights::only([]), |f| f.effective())
    }
}

/// One user's rights, as they change.
pub(crate) struct Following {
    rx: watch::Receiver<GrantRights>,
    shared_at_most: Rights,
}

impl Following {
    /// What the user may do now: the grant's rights, and for a shared user
    /// no more than the owner's config allows.
    pub(crate) fn effective(&self) -> Rights {
        let granted = self.rx.borrow();
        if granted.shared {
            granted.rights.narrowed_by(&self.shared_at_most)
        } else {
            Rights::all()
        }
    }

    /// Whether the user is one the host is shared with (not its owner).
    pub(crate) fn is_shared(&self) -> bool {
        self.rx.borrow().shared
    }

    /// The grant's idle limit in seconds, if it has one.
    pub(crate) fn idle_limit(&self) -> Option<u32> {
        self.rx.borrow().idle_secs
    }

    /// `None` if a channel of `kind` is allowed, else what the user is told:
    /// their grant lacks the right, or the owner's config does.
    pub(crate) fn refusal(&self, kind: &ChannelKind, host: &str) -> Option<(Right, String)> {
        let effective = self.effective();
        let right = effective.lacks_for(kind)?;
        if let (ChannelKind::Forward { target } | ChannelKind::ForwardCheck { target }, true) =
            (kind, effective.allows(Right::Forward))
        {
            // Forwards, but not to there: name the target and the ones allowed.
            let allowed: Vec<String> = effective
                .forward_targets()
                .unwrap_or_default()
                .iter()
                .map(ToString::to_string)
                .collect();
            let why = format!(
                "your shared access to {host} does not allow forwarding to {}; it allows: {}",
                latchkey_protocol::text::Shown(target),
                if allowed.is_empty() {
                    "none".to_string()
                } else {
                    allowed.join(", ")
                }
            );
            return Some((right, why));
        }
        let by_grant = self.rx.borrow().rights.lacks_for(kind).is_some();
        Some(if by_grant {
            (right, right.refusal(host))
        } else {
            (right, right.refusal_by_owner(host))
        })
    }

    /// `None` if the user has `right` (one that no channel carries, such
    /// as reboot), else what they are told.
    pub(crate) fn refusal_of(&self, right: Right, host: &str) -> Option<String> {
        if self.effective().allows(right) {
            return None;
        }
        Some(if self.rx.borrow().rights.allows(right) {
            right.refusal_by_owner(host)
        } else {
            right.refusal(host)
        })
    }

    /// Resolves, with what the user is told, once a channel of `kind` is no
    /// longer allowed; never while it is.
    pub(crate) async fn lost(mut self, kind: ChannelKind, host: String) -> String {
        loop {
            if let Some((_, why)) = self.refusal(&kind, &host) {
                return why;
            }
            if self.rx.changed().await.is_err() {
                // The table never drops a user's sender while the agent
                // runs: nothing will change any more.
                std::future::pending::<()>().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> UserName {
        name.parse().expect("user name")
    }

    fn shared(rights: &str, stamp: u64) -> GrantRights {
        GrantRights {
            rights: rights.parse().expect("rights"),
            shared: true,
            stamp,
            idle_secs: None,
        }
    }

    #[test]
    fn an_older_word_does_not_undo_a_newer_one() {
        let table = UserRights::new(Rights::all());
        let bob = user("bob");
        table.tell(&bob, shared("exec", 7));
        table.tell(&bob, shared("all", 5));
        assert_eq!(table.now(&bob).to_string(), "exec");
        table.tell(&bob, shared("exec,copy-from", 8));
        assert_eq!(table.now(&bob).to_string(), "exec,copy-from");
        assert_eq!(table.now(&user("carol")).bits(), 0);
    }

    #[test]
    fn the_owners_config_narrows_shared_users_only() {
        let table = UserRights::new("exec,copy-from".parse().expect("rights"));
        let (alice, bob) = (user("alice"), user("bob"));
        table.tell(&alice, GrantRights::owner());
        table.tell(&bob, shared("all", 1));
        assert!(table.now(&alice).is_all());
        assert_eq!(table.now(&bob).to_string(), "exec,copy-from");
        let shell = ChannelKind::Shell {
            term: "xterm".into(),
            cols: 80,
            rows: 24,
        };
        let (right, why) = table
            .follow(&bob)
            .expect("bob")
            .refusal(&shell, "mypc")
            .expect("refused");
        assert_eq!(right, Right::Shell);
        assert_eq!(
            why,
            "the owner of mypc allows no shared user opening a shell on it"
        );
    }

    #[tokio::test]
    async fn a_right_taken_away_is_seen_by_what_runs_under_it() {
        let table = UserRights::new(Rights::all());
        let bob = user("bob");
        table.tell(&bob, shared("shell,exec", 1));
        let shell = ChannelKind::Shell {
            term: "xterm".into(),
            cols: 80,
            rows: 24,
        };
        let lost = table.follow(&bob).expect("bob").lost(shell, "mypc".into());
        tokio::pin!(lost);
        assert!(futures_util_poll_once(&mut lost).await.is_none());
        table.tell(&bob, shared("exec", 2));
        assert_eq!(lost.await, Right::Shell.refusal("mypc"));
    }

    /// Polls a future once.
    async fn futures_util_poll_once<F: std::future::Future + Unpin>(
        f: &mut F,
    ) -> Option<F::Output> {
        tokio::select! {
            biased;
            out = f => Some(out),
            () = std::future::ready(()) => None,
        }
    }
}
