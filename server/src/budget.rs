//! Each user's share of a host link's streams (issue 16, SPEC X3). A host
//! accepts a bounded number of streams from the relay; one user's sessions
//! together may hold at most [`MAX_CHANNELS_PER_USER`] of them, so another
//! user's copy or shell always finds room.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, Weak},
};

use latchkey_protocol::ids::{HostName, UserName};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Channels one user may have open on one host at once (the host takes
/// 256 streams in all).
pub(crate) const MAX_CHANNELS_PER_USER: usize = 96;

/// The budgets of the users with channels open, by host and user.
#[derive(Default)]
pub(crate) struct ChannelBudgets {
    budgets: Mutex<HashMap<(HostName, UserName), Weak<Semaphore>>>,
}

impl ChannelBudgets {
    /// One channel's place in `user`'s share of `host`, if there is room;
    /// the place is given back when the permit drops.
    pub(crate) fn take(&self, host: &HostName, user: &UserName) -> Option<OwnedSemaphorePermit> {
        let budget = {
            let mut budgets = self.budgets.lock().unwrap_or_else(|p| p.into_inner());
            let key = (host.clone(), user.clone());
            match budgets.get(&key).and_then(Weak::upgrade) {
                Some(b) => b,
                None => {
                    budgets.retain(|_, b| b.strong_count() > 0);
                    let b = Arc::new(Semaphore::new(MAX_CHANNELS_PER_USER));
                    budgets.insert(key, Arc::downgrade(&b));
                    b
                }
            }
        };
        budget.try_acquire_owned().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_user_cannot_take_another_users_share() {
        let budgets = ChannelBudgets::default();
        let host: HostName = "mypc".parse().unwrap();
        let (bob, alice): (UserName, UserName) = ("bob".parse().unwrap(), "alice".parse().unwrap());
        let held: Vec<_> = (0..MAX_CHANNELS_PER_USER)
            .map(|_| budgets.take(&host, &bob).unwrap())
            .collect();
        assert!(budgets.take(&host, &bob).is_none());
        assert!(budgets.take(&host, &alice).is_some());
        drop(held);
        assert!(budgets.take(&host, &bob).is_some());
    }
}
