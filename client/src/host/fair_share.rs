//! What the agent keeps per session (its route and connection), shared fairly
//! between users: each user may hold at most [`PER_USER`] sessions' state,
//! and when the agent holds [`IN_ALL`] the one to go is the least recently
//! used of whoever holds the most. So no number of sessions by one user
//! (a grant holder re-handshaking in a loop, sessions on several relays)
//! evicts another user's, and a user only ever pushes out their own.

use std::collections::HashMap;
use std::hash::Hash;

use latchkey_protocol::ids::UserName;

/// Sessions one user's state is kept for: above the relay's cap of live
/// sessions per user and host, since a session that moved relays or whose
/// end was not heard yet still holds its place for a while.
pub(crate) const PER_USER: usize = 32;

/// Sessions kept in all.
pub(crate) const IN_ALL: usize = 256;

/// Per-session state `V` by session `K`, each owned by a user, least
/// recently used first to go.
pub(crate) struct FairShare<K, V> {
    entries: HashMap<K, Entry<V>>,
    /// Increases at each use: an entry's `used` orders eviction.
    clock: u64,
    per_user: usize,
    in_all: usize,
}

struct Entry<V> {
    user: UserName,
    used: u64,
    value: V,
}

impl<K: Eq + Hash + Clone, V> FairShare<K, V> {
    pub(crate) fn new() -> Self {
        Self::with_limits(PER_USER, IN_ALL)
    }

    fn with_limits(per_user: usize, in_all: usize) -> Self {
        Self {
            entries: HashMap::new(),
            clock: 0,
            per_user: per_user.max(1),
            in_all: in_all.max(1),
        }
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Keeps `value` for `key` of `user` (replacing what `key` had), then
    /// evicts what the limits say; returns the keys evicted.
    pub(crate) fn insert(&mut self, key: K, user: UserName, value: V) -> Vec<K> {
        let used = self.tick();
        self.entries.insert(
            key.clone(),
            Entry {
                user: user.clone(),
                used,
                value,
            },
        );
        let mut evicted = Vec::new();
        while self.held_by(&user) > self.per_user {
            match self.least_recent(|e| e.user == user, &key) {
                Some(k) => evicted.push(self.evict(k)),
                None => break,
            }
        }
        while self.entries.len() > self.in_all {
            let Some(heaviest) = self.heaviest_user(&key) else {
                break;
            };
            match self.least_recent(|e| e.user == heaviest, &key) {
                Some(k) => evicted.push(self.evict(k)),
                None => break,
            }
        }
        evicted
    }

    /// The state of `key`, marked as just used.
    pub(crate) fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        let used = self.tick();
        let entry = self.entries.get_mut(key)?;
        entry.used = used;
        Some(&mut entry.value)
    }

    /// Forgets `key`.
    pub(crate) fn remove(&mut self, key: &K) -> Option<V> {
        self.entries.remove(key).map(|e| e.value)
    }

    /// The first state `which` picks (not marked as used).
    pub(crate) fn find_mut(&mut self, which: impl Fn(&V) -> bool) -> Option<&mut V> {
        self.entries
            .values_mut()
            .map(|e| &mut e.value)
            .find(|v| which(v))
    }

    /// Every state, in no order.
    pub(crate) fn values(&self) -> impl Iterator<Item = &V> {
        self.entries.values().map(|e| &e.value)
    }

    /// Keeps only the states `keep` says to (it may change them).
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&mut V) -> bool) {
        self.entries.retain(|_, e| keep(&mut e.value));
    }

    /// Forgets everything; returns what was kept.
    pub(crate) fn drain(&mut self) -> Vec<V> {
        self.entries.drain().map(|(_, e)| e.value).collect()
    }

    fn evict(&mut self, key: K) -> K {
        self.entries.remove(&key);
        key
    }

    fn held_by(&self, user: &UserName) -> usize {
        self.entries.values().filter(|e| e.user == *user).count()
    }

    /// The least recently used key among `which`, never `keep` (the entry
    /// just inserted).
    fn least_recent(&self, which: impl Fn(&Entry<V>) -> bool, keep: &K) -> Option<K> {
        self.entries
            .iter()
            .filter(|(k, e)| *k != keep && which(e))
            .min_by_key(|(_, e)| e.used)
            .map(|(k, _)| k.clone())
    }

    /// The user holding the most entries (other than `keep`); of several,
    /// the one whose least recent entry is oldest.
    fn heaviest_user(&self, keep: &K) -> Option<UserName> {
        let mut held: HashMap<&UserName, (usize, u64)> = HashMap::new();
        for (k, e) in &self.entries {
            if k == keep {
                continue;
            }
            let slot = held.entry(&e.user).or_insert((0, u64::MAX));
            slot.0 += 1;
            slot.1 = slot.1.min(e.used);
        }
        held.into_iter()
            .max_by(|a, b| a.1 .0.cmp(&b.1 .0).then(b.1 .1.cmp(&a.1 .1)))
            .map(|(u, _)| u.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> UserName {
        name.parse().expect("name")
    }

    #[test]
    fn a_user_at_their_share_only_pushes_out_their_own_oldest() {
        let mut kept = FairShare::with_limits(3, 100);
        kept.insert(100, user("alice"), ());
        for n in 0..10 {
            kept.insert(n, user("bob"), ());
        }
        assert!(kept.get_mut(&100).is_some(), "alice's was evicted by bob's");
        assert_eq!(kept.held_by(&user("bob")), 3);
        assert!(kept.get_mut(&9).is_some() && kept.get_mut(&7).is_some());
        assert!(kept.get_mut(&0).is_none());
    }

    #[test]
    fn when_full_the_one_who_holds_most_gives_way() {
        let mut kept = FairShare::with_limits(10, 6);
        kept.insert(100, user("alice"), ());
        kept.insert(101, user("alice"), ());
        for n in 0..10 {
            kept.insert(n, user("bob"), ());
        }
        assert_eq!(kept.entries.len(), 6);
        assert!(kept.get_mut(&100).is_some() && kept.get_mut(&101).is_some());
        // Using an entry keeps it: bob's oldest goes, not the one just used.
        kept.get_mut(&6);
        kept.insert(200, user("carol"), ());
        assert!(kept.get_mut(&6).is_some());
        assert!(kept.get_mut(&200).is_some());
    }

    #[test]
    fn replacing_a_sessions_state_keeps_one_entry() {
        let mut kept = FairShare::with_limits(2, 10);
        kept.insert(1, user("bob"), 'a');
        assert!(kept.insert(1, user("bob"), 'b').is_empty());
        assert_eq!(kept.get_mut(&1), Some(&mut 'b'));
        assert_eq!(kept.remove(&1), Some('b'));
    }
}
