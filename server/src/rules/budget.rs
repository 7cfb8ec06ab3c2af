//! Each user's share of a host link's streams (SPEC X3). A host accepts a
//! bounded number of streams from the relay; one user's sessions together
//! may hold at most [`MAX_CHANNELS_PER_USER`] of them, so one user's copies
//! cannot take every place another user's shell needs. A place is a value
//! that gives itself back when dropped, so no exit path can leak one.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use latchkey_protocol::ids::{HostName, UserName};

/// Channels one user may have open on one host at once (the host takes
/// 256 streams in all; see the protocol's limit for why this many).
pub const MAX_CHANNELS_PER_USER: usize = latchkey_protocol::limits::MAX_CHANNELS_PER_USER;

type Key = (HostName, UserName);

/// The places taken, by host and user (only users holding one are kept).
#[derive(Default)]
pub struct ChannelBudgets {
    taken: Arc<Mutex<HashMap<Key, usize>>>,
}

/// One place in a user's share; given back when dropped.
#[must_use = "the place is given back when dropped"]
pub struct Place {
    taken: Arc<Mutex<HashMap<Key, usize>>>,
    key: Key,
}

impl ChannelBudgets {
    /// One channel's place in `user`'s share of `host`, if there is room.
    pub fn take(&self, host: &HostName, user: &UserName) -> Option<Place> {
        let key = (host.clone(), user.clone());
        let mut taken = self.taken.lock().unwrap_or_else(|p| p.into_inner());
        let held = taken.entry(key.clone()).or_default();
        if *held >= MAX_CHANNELS_PER_USER {
            return None;
        }
        *held += 1;
        Some(Place {
            taken: self.taken.clone(),
            key,
        })
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut taken = self.taken.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(held) = taken.get_mut(&self.key) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                taken.remove(&self.key);
            }
        }
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
        assert!(budgets.taken.lock().unwrap().is_empty());
    }
}
