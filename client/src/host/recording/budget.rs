//! How much room recordings take: what the finished ones take on disk,
//! plus the room each recording being written holds (its reservation),
//! never more than `record_keep_mib` together. A recording holds its whole
//! share from its start, so nothing another channel writes can take it:
//! a user who fills the space blinds no recording, not even their own.
//! When no share is left for a new one, the least recently written
//! finished recordings make room; when the running ones hold it all, the
//! new channel is refused (the owner asked for a record). One user holds
//! at most a quarter of the room, so nobody's running channels can keep
//! everyone else's from being recorded.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
};

/// What one file takes on disk at least: a file system block. A flood of
/// tiny recordings is counted at what it costs, not at its bytes.
pub(crate) const BLOCK: u64 = 4096;

/// What a file of `bytes` takes on disk, as the budget counts it.
pub(crate) fn on_disk(bytes: u64) -> u64 {
    bytes.div_ceil(BLOCK).max(1) * BLOCK
}

/// The room recordings may take, and who holds it.
#[derive(Debug)]
pub(crate) struct Budget {
    /// All recordings together.
    all: u64,
    /// One terminal recording's share.
    each: u64,
    space: Mutex<Space>,
}

#[derive(Debug, Default)]
struct Space {
    /// What finished recordings take on disk.
    kept: u64,
    /// The shares recordings being written hold.
    held: u64,
    /// The same, by user.
    held_by: HashMap<String, u64>,
}

/// Why no share was given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NoShare {
    /// The room is taken (by finished recordings, which pruning can
    /// remove, and running ones).
    Taken,
    /// The user holds their quarter already.
    UsersQuarter,
}

/// A recording's share of the budget, given back when it is dropped:
/// what it wrote then counts as kept.
#[derive(Debug)]
pub(crate) struct Share {
    budget: Arc<Budget>,
    user: String,
    bytes: u64,
    /// What the recording left on disk, once it said.
    left: Option<u64>,
}

impl Share {
    /// How much this share may write.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Says what the recording left on disk, counted when the share is
    /// given back.
    pub(crate) fn leaves(&mut self, bytes: u64) {
        self.left = Some(on_disk(bytes));
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        let mut space = self.budget.space();
        space.held = space.held.saturating_sub(self.bytes);
        if let Some(held) = space.held_by.get_mut(&self.user) {
            *held = held.saturating_sub(self.bytes);
            if *held == 0 {
                space.held_by.remove(&self.user);
            }
        }
        // Unsaid, the whole share is counted: more than it wrote, never
        // less.
        space.kept += self.left.unwrap_or(self.bytes);
    }
}

impl Budget {
    /// `all` bytes for every recording, `each` for one terminal's.
    pub(crate) fn new(all: u64, each: u64) -> Self {
        Self {
            all,
            each,
            space: Mutex::default(),
        }
    }

    fn space(&self) -> MutexGuard<'_, Space> {
        self.space
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// One terminal recording's share.
    pub(crate) fn each(&self) -> u64 {
        self.each
    }

    /// All recordings' room.
    pub(crate) fn all(&self) -> u64 {
        self.all
    }

    /// A share of `bytes` for `user`, if that much is free and the user
    /// holds less than a quarter of the room with it.
    pub(crate) fn share(self: &Arc<Self>, user: &str, bytes: u64) -> Result<Share, NoShare> {
        let mut space = self.space();
        let users = space.held_by.get(user).copied().unwrap_or(0);
        if users + bytes > (self.all / 4).max(self.each) {
            return Err(NoShare::UsersQuarter);
        }
        if space.kept + space.held + bytes > self.all {
            return Err(NoShare::Taken);
        }
        space.held += bytes;
        *space.held_by.entry(user.to_owned()).or_default() += bytes;
        Ok(Share {
            budget: self.clone(),
            user: user.to_owned(),
            bytes,
            left: None,
        })
    }

    /// How much finished recordings may keep so that `bytes` more fit, a
    /// tenth of the budget left free beyond that (so that a full budget
    /// is not pruned again at each new recording).
    pub(crate) fn keep_at_most(&self, bytes: u64) -> u64 {
        let held = self.space().held;
        (self.all / 10 * 9).saturating_sub(held + bytes)
    }

    /// What finished recordings take, as the directory says after pruning.
    pub(crate) fn recount(&self, kept: u64) {
        self.space().kept = kept;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_is_held_until_dropped_then_counts_what_it_left() {
        let budget = Arc::new(Budget::new(10 * BLOCK, 4 * BLOCK));
        let mut first = budget.share("a", 4 * BLOCK).expect("room");
        let _second = budget.share("b", 4 * BLOCK).expect("room");
        // Exactly full is full, and one block more is refused.
        let _third = budget.share("c", 2 * BLOCK).expect("room");
        assert_eq!(budget.share("d", 1).err(), Some(NoShare::Taken));
        first.leaves(100);
        drop(first);
        // The first left one block: three are free again.
        assert!(budget.share("d", 3 * BLOCK).is_ok());
        assert!(budget.share("d", 4 * BLOCK).is_err());
    }

    #[test]
    fn one_user_holds_at_most_a_quarter() {
        let budget = Arc::new(Budget::new(64 * BLOCK, 4 * BLOCK));
        let held: Vec<Share> = (0..4)
            .map(|_| budget.share("bob", 4 * BLOCK).expect("room"))
            .collect();
        assert_eq!(
            budget.share("bob", 4 * BLOCK).err(),
            Some(NoShare::UsersQuarter)
        );
        // Others are not held back by bob.
        assert!(budget.share("carol", 4 * BLOCK).is_ok());
        drop(held);
        assert!(budget.share("bob", 4 * BLOCK).is_ok());
    }
}
