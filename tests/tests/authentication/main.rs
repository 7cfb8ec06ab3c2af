//! Enrolment and authentication (SPEC I1, I2, A1-A4, A6, S8): one-time
//! invites, the relay's pin, the login handshake and what it proves, and
//! outsiders, who must look exactly like a wrong code and move nothing.
//! Real relay and client binaries on loopback; where a test replays a
//! message or stops between two, it drives the handshake by hand.

mod enrolment;
mod handshake;
mod outsiders;

use std::time::{Duration, Instant};

use anyhow::Result;
use latchkey_client::{net, wire};
use latchkey_protocol::{
    handshake::{Initiator, InitiatorReply, Keypair},
    ids::{AccessCode, RelayPin, UserName},
};
use latchkey_tests::World;
use rand::rngs::OsRng;

fn identity(home: &std::path::Path) -> Result<(String, RelayPin, Keypair)> {
    latchkey_tests::Device {
        home: home.to_owned(),
    }
    .identity()
}

/// Runs message 1 and 2 of a login by hand; returns the connection, the
/// length of message 2, the time it took, and what the client made of it.
async fn first_two(
    relay: &str,
    pin: &RelayPin,
    key: &Keypair,
    user: &str,
    code: &str,
) -> Result<(net::RelayConn, Vec<u8>, usize, Duration, InitiatorReply)> {
    let rc = net::connect(relay, pin).await?;
    let binding = net::channel_binding(&rc.conn)?;
    let (mut send, mut recv) = rc.conn.open_bi().await?;
    let code = AccessCode::for_login(code.into())?;
    let user: UserName = user.parse()?;
    let (init, msg1) = Initiator::start_login(
        &mut OsRng,
        key,
        &pin.noise_key,
        &binding,
        user,
        "mypc".parse()?,
        &code,
    )?;
    let t = Instant::now();
    wire::write_message(&mut send, &msg1).await?;
    let msg2 = wire::read_message(&mut recv).await?;
    let took = t.elapsed();
    let reply = init.read_msg2(&mut OsRng, &msg2, Some(&code))?;
    Ok((rc, msg1, msg2.len(), took, reply))
}

/// mypc's failure count and whether it is locked, from `admin status`.
fn failures(world: &World) -> Result<(u64, bool)> {
    let s = world.relay.status("mypc")?;
    Ok((
        s["failures"].as_u64().unwrap_or(99),
        s["locked"].as_bool().unwrap_or(false),
    ))
}
