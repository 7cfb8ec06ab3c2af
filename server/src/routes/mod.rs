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
    /// a leg whose connection migrated follows it. Only addresses of
    /// authenticated connections (which quinn validated) come here, so no
    /// datagram can move a route.
    pub fn follow(&self, client: SocketAddr, host: SocketAddr) {
        let mut routes = self.table.lock();
        routes.rebind(self.route.client, client);
        routes.rebind(self.route.host, host);
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
