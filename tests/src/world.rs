//! The ready-made world most tests start from: a relay, an owner (alice)
//! with a host (mypc) whose code is set, a secondary user (bob) granted
//! shared access, and an enrolled outsider (carol); and the steps many
//! tests take in it (start the agent, a forward, a lockout).

use std::net::SocketAddr;

use anyhow::{anyhow, bail, Result};
use latchkey_client::net;
use tempfile::TempDir;

use crate::{
    device::Device,
    process::{prefixed, wait_until, Proc},
    relay::{count, Relay, Runner},
};

/// The code the owner sets in [`World`].
pub const OWNER_CODE: &str = "owner code 1";

/// A relay with an owner (alice), a secondary user (bob, granted), an
/// outsider (carol, enrolled, no grant) and a host (mypc) with a code set.
pub struct World {
    /// Temporary directory holding everything.
    pub dir: TempDir,
    /// The relay.
    pub relay: Relay,
    /// The owner's device.
    pub alice: Device,
    /// The secondary user's device.
    pub bob: Device,
    /// An enrolled user without a grant.
    pub carol: Device,
    /// The host.
    pub mypc: Device,
}

impl World {
    /// Starts the host agent (its log goes to `mypc-agent.log` in the
    /// world's directory) and waits until the relay sees it online.
    pub fn start_agent(&self) -> Result<Proc> {
        self.start_agent_through(&[])
    }

    /// [`World::start_agent`] with the command started through `prefix`
    /// (see [`prefixed`]: `ip netns exec NS` runs it in a network
    /// namespace).
    pub fn start_agent_through(&self, prefix: &[String]) -> Result<Proc> {
        let log = std::fs::File::create(self.dir.path().join("mypc-agent.log"))?;
        let agent = Proc::spawn_logged(
            &mut prefixed(prefix, self.mypc.cmd().args(["host", "run"])),
            log,
        )?;
        self.wait_online(true)?;
        Ok(agent)
    }

    /// Starts `latchkey forward mypc 0:TARGET` as alice; returns the process
    /// and the local address it listens on.
    pub fn start_forward(&self, target: &str) -> Result<(Proc, String)> {
        self.start_forward_through(&[], target)
    }

    /// [`World::start_forward`] with the command started through `prefix`
    /// (see [`prefixed`]).
    pub fn start_forward_through(&self, prefix: &[String], target: &str) -> Result<(Proc, String)> {
        Self::start_forward_as(&self.alice, prefix, target)
    }

    /// [`World::start_forward_through`] as the user of `device`.
    pub fn start_forward_as(
        device: &Device,
        prefix: &[String],
        target: &str,
    ) -> Result<(Proc, String)> {
        let forward = Proc::spawn(&mut prefixed(
            prefix,
            device.cmd().env("LATCHKEY_ACCESS_CODE", OWNER_CODE).args([
                "forward",
                "mypc",
                &format!("0:{target}"),
            ]),
        ))?;
        let local = forward_address(&forward)?;
        Ok((forward, local))
    }

    /// Raises mypc's lockout threshold to the highest allowed (1,000), for
    /// tests that make many attempts without meaning to lock the host.
    pub fn without_lockout(&self) -> Result<()> {
        let highest = latchkey_server::rules::lockout::THRESHOLDS
            .end()
            .to_string();
        self.relay
            .admin(&["policy", "mypc", "--lockout-threshold", &highest])
            .map(drop)
    }

    /// Enrols one more user, `name`, and grants them mypc (they inherit
    /// the owner's code, as bob does).
    pub fn granted_user(&self, name: &str) -> Result<Device> {
        let device = Device {
            home: self.dir.path().join(name),
        };
        device.run(&["enroll", &self.relay.invite_user(name)?])?;
        self.relay.admin(&["grant", "mypc", name])?;
        Ok(device)
    }

    /// Bob runs `sleep SECS` on mypc; returns once the relay has started
    /// his session.
    pub fn bob_sleeping_on_mypc(&self, secs: u32) -> Result<Proc> {
        let started = |w: &Self| -> Result<usize> {
            Ok(count(&w.relay.audit_events("mypc")?, "session-start"))
        };
        let before = started(self)?;
        let command = self.bob.spawn_with_code(
            OWNER_CODE,
            &["exec", "mypc", "--", "sleep", &secs.to_string()],
        )?;
        wait_until("bob's session", || started(self).is_ok_and(|n| n > before))?;
        Ok(command)
    }

    /// Bob fails three times on mypc, and then every one of `users` is
    /// refused as locked out, even with the right code (SPEC S6).
    pub async fn bob_locks_mypc_for(&self, users: &[&Device]) -> Result<()> {
        for _ in 0..3 {
            match self.bob.login("mypc", "forgotten").await {
                Err(net::NetError::WrongCode(_)) => {}
                Err(e) => bail!("a wrong code was answered with {e}"),
                Ok(_) => bail!("a wrong code let bob in"),
            }
        }
        for user in users {
            match user.login("mypc", OWNER_CODE).await {
                Err(net::NetError::Locked(_)) => {}
                Err(e) => bail!("a locked host refused a user with {e}"),
                Ok(_) => bail!("a locked host let a user in"),
            }
        }
        Ok(())
    }

    /// Waits until the relay reports the host online (or offline).
    pub fn wait_online(&self, online: bool) -> Result<()> {
        wait_until("host presence", || {
            self.relay
                .status("mypc")
                .map(|s| s["online"] == online)
                .unwrap_or(false)
        })
    }

    /// Builds the world through the real binaries.
    pub fn new() -> Result<Self> {
        Self::with_env(Vec::new())
    }

    /// Builds the world with extra relay settings.
    pub fn with_env(env: Vec<(String, String)>) -> Result<Self> {
        Self::listening_on("127.0.0.1:0".parse()?, env)
    }

    /// Builds the world with its relay listening on `listen`.
    pub fn listening_on(listen: SocketAddr, env: Vec<(String, String)>) -> Result<Self> {
        Self::granted(Runner::default(), listen, env)
    }

    /// Builds the world around a relay that `runner` runs (the Windows
    /// build under wine, say); the devices are this platform's.
    pub fn with_relay_run_by(runner: Runner) -> Result<Self> {
        Self::granted(runner, "127.0.0.1:0".parse()?, Vec::new())
    }

    fn granted(runner: Runner, listen: SocketAddr, env: Vec<(String, String)>) -> Result<Self> {
        let w = Self::ungranted(runner, listen, env)?;
        w.relay.admin(&["grant", "mypc", "bob"])?;
        Ok(w)
    }

    /// Builds the world with extra relay settings, but bob has no grant on
    /// mypc yet (a test grants it, from the admin console say).
    pub fn without_grant(env: Vec<(String, String)>) -> Result<Self> {
        Self::ungranted(Runner::default(), "127.0.0.1:0".parse()?, env)
    }

    fn ungranted(runner: Runner, listen: SocketAddr, env: Vec<(String, String)>) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let relay = Relay::start_by(runner, dir.path(), listen, env)?;
        let device = |name: &str| Device {
            home: dir.path().join(name),
        };
        let (alice, bob, carol, mypc) = (
            device("alice"),
            device("bob"),
            device("carol"),
            device("mypc"),
        );
        for (d, name) in [(&alice, "alice"), (&bob, "bob"), (&carol, "carol")] {
            d.run(&["enroll", &relay.invite_user(name)?])?;
        }
        mypc.enroll_host(&relay.invite_host("mypc", "alice")?)?;
        mypc.set_code(OWNER_CODE, None)?;
        Ok(Self {
            dir,
            relay,
            alice,
            bob,
            carol,
            mypc,
        })
    }
}

/// Where a started `latchkey forward` listens, from its "forwarding ADDR
/// -> ..." line.
pub fn forward_address(forward: &Proc) -> Result<String> {
    let line = forward.expect_line("forwarding")?;
    Ok(line
        .strip_prefix("forwarding ")
        .and_then(|l| l.split(' ').next())
        .ok_or_else(|| anyhow!("unexpected forward output {line:?}"))?
        .to_string())
}
