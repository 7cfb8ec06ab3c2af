//! The relay's live routes: which two device connections may send each
//! other end-to-end datagrams through this relay
//! ([`latchkey_protocol::route`]), and the socket layer that forwards them
//! ([`socket`]) before quinn sees them.
//!
//! A route exists exactly as long as its [`OpenRoute`] value: dropping it
//! (a session that ends, however it ends) removes both legs at once, so no
//! path can leave a route behind.

pub mod socket;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::Instant,
};

use latchkey_protocol::route::{Budget, Route, RouteCounts, Routes};
use rand::rngs::OsRng;

use crate::metrics::ForwardCounters;

/// What one device may send through the relay on one route: enough for a
/// copy at a gigabit link's speed, and a burst of a window's worth. Beyond
/// it datagrams are dropped and the end-to-end connection's congestion
/// control slows down, as on any congested path.
pub const LEG_BUDGET: Budget = Budget {
    rate: 1 << 30,
    burst: 16 << 20,
};

/// The routes of one relay, shared by its sessions (which open and close
/// them) and its socket layer (which forwards by them).
#[derive(Debug)]
pub struct RouteTable {
    routes: Mutex<Routes>,
    counters: ForwardCounters,
}

impl RouteTable {
    /// An empty table whose legs each get `budget`; forwarding is counted
    /// in `counters`.
    pub fn new(budget: Budget, counters: ForwardCounters) -> Arc<Self> {
        Arc::new(Self {
            routes: Mutex::new(Routes::new(budget)),
            counters,
        })
    }

    /// The routes, for one decision or one batch of them. A poisoned lock
    /// is taken over: the table holds no invariant a panic could break
    /// halfway (each operation is one map update).
    fn lock(&self) -> MutexGuard<'_, Routes> {
        self.routes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Opens a route between the relay connections at `client` and `host`.
    pub fn open(self: &Arc<Self>, client: SocketAddr, host: SocketAddr) -> OpenRoute {
        let route = self.lock().open(&mut OsRng, Instant::now(), client, host);
        OpenRoute {
            table: self.clone(),
            route,
            bound: (client, host),
            closed: false,
        }
    }

    /// How many routes are live.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no route is live.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// The counters forwarding adds to.
    pub fn counters(&self) -> &ForwardCounters {
        &self.counters
    }
}

/// A live route: removed from its table when dropped.
#[derive(Debug)]
pub struct OpenRoute {
    table: Arc<RouteTable>,
    route: Route,
    /// The addresses the client's and the host's legs are bound to.
    bound: (SocketAddr, SocketAddr),
    closed: bool,
}

impl OpenRoute {
    /// The two leg ids, for the relay to hand each device its own.
    pub fn legs(&self) -> Route {
        self.route
    }

    /// What the route has carried so far.
    pub fn counts(&self) -> RouteCounts {
        self.table.lock().counts(self.route).unwrap_or_default()
    }

    /// The two devices' relay connections are at `client` and `host` now:
    /// a leg whose connection migrated follows it (the table's lock is
    /// taken only then). Only addresses of authenticated connections (which
    /// quinn validated) come here, so no datagram can move a route.
    pub fn follow(&mut self, client: SocketAddr, host: SocketAddr) {
        if self.bound == (client, host) {
            return;
        }
        let mut routes = self.table.lock();
        routes.rebind(self.route.client, client);
        routes.rebind(self.route.host, host);
        self.bound = (client, host);
    }

    /// Removes the route, saying what it carried.
    pub fn close(mut self) -> RouteCounts {
        self.closed = true;
        self.table.lock().close(self.route).unwrap_or_default()
    }
}

impl Drop for OpenRoute {
    fn drop(&mut self) {
        if !self.closed {
            self.table.lock().close(self.route);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use latchkey_protocol::route::{header, Budget};

    fn counters() -> ForwardCounters {
        crate::metrics::Metrics::new().unwrap().forwarding()
    }

    /// A datagram from `from` under `leg`: where the table forwards it.
    fn forwarded(
        table: &RouteTable,
        leg: latchkey_protocol::route::LegId,
        from: SocketAddr,
    ) -> Option<SocketAddr> {
        let mut datagram = header(leg).to_vec();
        datagram.extend_from_slice(b"payload");
        table
            .lock()
            .forward(Instant::now(), from, &mut datagram)
            .ok()
    }

    #[test]
    fn a_route_follows_a_migrated_connection_and_leaves_the_table_when_dropped() {
        let table = RouteTable::new(Budget::UNLIMITED, counters());
        let (client, host, moved): (SocketAddr, SocketAddr, SocketAddr) = (
            "127.0.0.1:1000".parse().unwrap(),
            "127.0.0.1:2000".parse().unwrap(),
            "127.0.0.1:3000".parse().unwrap(),
        );
        let mut route = table.open(client, host);
        let legs = route.legs();
        assert_eq!(forwarded(&table, legs.client, client), Some(host));
        // The client's connection migrated: its old address no longer
        // sends under its leg, the new one does, and the host's datagrams
        // go to the new one.
        route.follow(moved, host);
        assert_eq!(forwarded(&table, legs.client, client), None);
        assert_eq!(forwarded(&table, legs.client, moved), Some(host));
        assert_eq!(forwarded(&table, legs.host, host), Some(moved));
        assert_eq!(table.len(), 1);
        drop(route);
        assert!(table.is_empty());
        assert_eq!(forwarded(&table, legs.host, host), None);
    }
}
