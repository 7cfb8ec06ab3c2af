//! Logins that wait their turn (SPEC S11): attempts still being decided
//! use the host's whole budget before the lock, so a new attempt cannot be
//! evaluated yet (SPEC S7). Rather than answer "busy" at once, the relay
//! lets it wait, first come first served, until an attempt on that host
//! settles or a few seconds pass. Two people connecting at once, or a
//! script fanning out, then simply wait a moment; the budget stays exact,
//! since a waiting login reserves nothing. Each user has a line of their
//! own on each host, so one user's queue never holds up another's.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, Weak},
};

use latchkey_protocol::ids::{HostName, UserName};
use tokio::{
    sync::{Notify, OwnedMutexGuard},
    time::{timeout_at, Instant},
};

/// One user's line on one host.
#[derive(Default)]
struct Room {
    /// Held by the login whose turn it is (tokio's mutex is FIFO).
    line: Arc<tokio::sync::Mutex<()>>,
    /// Woken when an attempt on the host settles.
    settled: Notify,
}

/// The lines with logins waiting, by host and user.
#[derive(Default)]
pub(crate) struct WaitingRooms {
    rooms: Mutex<HashMap<(HostName, UserName), Weak<Room>>>,
}

/// The head of a host's line: others wait until it is dropped.
pub(crate) struct Turn {
    _line: OwnedMutexGuard<()>,
    _room: Arc<Room>,
}

impl WaitingRooms {
    fn room(&self, host: &HostName, user: &UserName) -> Arc<Room> {
        let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        let key = (host.clone(), user.clone());
        if let Some(room) = rooms.get(&key).and_then(Weak::upgrade) {
            return room;
        }
        // Rooms live as long as someone waits in them.
        rooms.retain(|_, r| r.strong_count() > 0);
        let room = Arc::new(Room::default());
        rooms.insert(key, Arc::downgrade(&room));
        room
    }

    /// An attempt on `host` settled: the head of each of its lines looks again.
    pub(crate) fn settled(&self, host: &HostName) {
        let rooms: Vec<Arc<Room>> = {
            let rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
            rooms
                .iter()
                .filter(|((h, _), _)| h == host)
                .filter_map(|(_, r)| r.upgrade())
                .collect()
        };
        for room in rooms {
            room.settled.notify_waiters();
        }
    }

    /// Attempts on unknown hosts settled (a sweep): every line looks again.
    pub(crate) fn settled_anywhere(&self) {
        let rooms: Vec<Arc<Room>> = {
            let rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
            rooms.values().filter_map(Weak::upgrade).collect()
        };
        for room in rooms {
            room.settled.notify_waiters();
        }
    }

    /// Waits in `user`'s line on `host` until `fits` says an attempt would
    /// be evaluated, or until `deadline`. Returns the turn (hold it while
    /// reserving, so the next in line does not race) if it fits.
    pub(crate) async fn wait_turn<F, Fut>(
        &self,
        host: &HostName,
        user: &UserName,
        deadline: Instant,
        mut fits: F,
    ) -> Option<Turn>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let room = self.room(host, user);
        let line = timeout_at(deadline, room.line.clone().lock_owned())
            .await
            .ok()?;
        loop {
            // Registered before looking, so a settlement in between is seen.
            let settled = room.settled.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            if fits().await {
                break;
            }
            timeout_at(deadline, settled).await.ok()?;
        }
        Some(Turn {
            _line: line,
            _room: room,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::atomic::{AtomicU32, Ordering},
        time::Duration,
    };

    use super::*;

    #[tokio::test]
    async fn the_head_of_the_line_gets_in_when_an_attempt_settles_and_late_ones_give_up() {
        let rooms = Arc::new(WaitingRooms::default());
        let host: HostName = "mypc".parse().unwrap();
        let user: UserName = "bob".parse().unwrap();
        let free = Arc::new(AtomicU32::new(0));
        let waiter = {
            let (rooms, host, user, free) =
                (rooms.clone(), host.clone(), user.clone(), free.clone());
            tokio::spawn(async move {
                let deadline = Instant::now() + Duration::from_secs(5);
                let fits = || {
                    let free = free.clone();
                    async move { free.load(Ordering::SeqCst) > 0 }
                };
                rooms
                    .wait_turn(&host, &user, deadline, fits)
                    .await
                    .is_some()
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        free.store(1, Ordering::SeqCst);
        rooms.settled(&host);
        assert!(waiter.await.unwrap());
        // Nothing settles: the deadline answers.
        free.store(0, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_millis(100);
        let fits = || async { false };
        assert!(rooms
            .wait_turn(&host, &user, deadline, fits)
            .await
            .is_none());
        // The rooms are gone once nobody waits.
        rooms.settled_anywhere();
        assert!(rooms.room(&host, &user).line.try_lock().is_ok());
    }
}
