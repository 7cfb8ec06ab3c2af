//! In-session reboot and reconnect (SPEC R1-R6, B3, E4). The tests play the
//! service manager: when the agent exits after running its (test) reboot
//! command, the test starts it again.

mod reboot;
mod reconnect;

use anyhow::Result;
use latchkey_tests::World;

/// A world whose host "reboots" by running `true` (the agent then exits).
fn world(env: Vec<(String, String)>) -> Result<World> {
    let w = World::with_env(env)?;
    w.mypc.set_reboot_command(&["true"])?;
    Ok(w)
}
