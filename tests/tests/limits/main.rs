//! Limits and bad input (SPEC A3, A5, B1, X5, X6, X7): hostile bytes at the
//! handshake and in channel requests, what a peer that has proven nothing
//! can make the relay hold, rate limits and deadlines, one user's share of
//! a host's streams and sessions, and the framing adapter's bounds.

mod bad_input;
mod grant_holder;
mod streams;
mod unauthenticated;
mod wire;

use anyhow::Result;
use latchkey_protocol::{handshake::Keypair, ids::RelayPin};

fn identity(home: &std::path::Path) -> Result<(String, RelayPin, Keypair)> {
    latchkey_tests::Device {
        home: home.to_owned(),
    }
    .identity()
}
