//! Where a figure's processes run, and the network namespaces of
//! `forward-netns`.
//!
//! A [`Layout`] names three places, the client's, the relay's and the
//! host's machine: each place is a command prefix and the address the
//! others reach it at. On loopback (`forward`) all three are 127.0.0.1 in
//! the bench's own namespace, whose 64 KiB MTU lets TCP move 64 KiB
//! segments. `forward-netns` puts each in a network namespace of its own,
//! joined at MTU 1500 (the root namespace is not touched):
//!
//! ```text
//!   lkb-PID-client               lkb-PID-relay                 lkb-PID-host
//!   eth0 10.233.0.1 ── veth-client ┐         ┌ veth-host ── eth0 10.233.0.3
//!   lo                             br0 10.233.0.2              lo
//! ```
//!
//! A bridge in the relay's namespace is the switch between the three, so
//! that every path from client to host crosses two veths, relayed (client
//! → relay, relay → host) or direct (client → bridge → host). Every link
//! has MTU 1500. The veths' segmentation offloads are off (`ethtool -K
//! tso off tx-udp-segmentation off`) and GRO is on, as on a host whose NIC
//! segments nothing: TCP and UDP senders still hand the kernel up to 64 KiB
//! at a time (GSO), but it is cut into packets of at most 1500 bytes
//! before it crosses a veth, and the receiving end coalesces them again
//! (GRO; quinn's sockets ask for UDP GRO). With the veths' defaults, 64
//! KiB TCP segments and UDP trains would cross whole, as on loopback;
//! `LATCHKEY_BENCH_NETNS_OFFLOADS=on` keeps those, to compare. (Shrinking
//! the veths' `gso_max_segs` to 1 instead, which `ip` can do alone, makes
//! TCP send and pace one packet per pass through its stack, which no NIC
//! asks for: TCP between two namespaces ran at 50 MB/s so, against about
//! 800 MB/s with ethtool's settings.) Without `ethtool` the figure is
//! skipped, with the reason printed.
//!
//! The bench runs the figure in the relay's namespace (it re-executes
//! itself there as `latchkey-bench forward-netns-inside TAG on|off`), so
//! the harness's relay and the commands that reach it from the bench
//! (enrolment, setting the code, the admin CLI) run there unchanged.
//! Everything at the client or the host (`latchkey forward`, the host
//! agent, rathole's client, sshd and ssh, the direct quinn ends, the TCP
//! ends: see `ends`) is started through `ip netns exec NS`. The user
//! application (the TCP client) talks to the forward, and the host agent
//! to the target, within their machine, as they would. The namespaces are
//! deleted when the figure ends, and those of an earlier run whose bench
//! is gone are deleted before a run starts.

use std::{
    net::{IpAddr, Ipv4Addr},
    process::Command,
};

use anyhow::{bail, Context, Result};
use latchkey_tests::process::prefixed;

/// A machine of a figure: how to start a command there, and its address.
pub(crate) struct Place {
    /// Put before a command to start it here (`ip netns exec NS`); empty
    /// for the bench's own namespace.
    pub(crate) prefix: Vec<String>,
    /// Where the other places reach this one.
    pub(crate) ip: IpAddr,
}

impl Place {
    /// 127.0.0.1 in the bench's own namespace.
    pub(crate) fn loopback() -> Self {
        Self {
            prefix: Vec::new(),
            ip: Ipv4Addr::LOCALHOST.into(),
        }
    }

    /// `cmd`, to be started here.
    pub(crate) fn through(&self, cmd: &Command) -> Command {
        prefixed(&self.prefix, cmd)
    }

    /// `program`, to be started here.
    pub(crate) fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        self.through(&Command::new(program))
    }
}

/// The three machines of a forward figure. The bench itself runs at the
/// relay's (see the module doc).
pub(crate) struct Layout {
    pub(crate) client: Place,
    pub(crate) relay: Place,
    pub(crate) host: Place,
    /// For the namespaces: whether their veths' offloads were left on.
    netns_offloads: Option<bool>,
}

/// The subnet of the namespaces: .1 client, .2 relay, .3 host.
const SUBNET: [u8; 3] = [10, 233, 0];
/// The MTU of every link between the namespaces.
const MTU: &str = "1500";
/// Set to `on` to leave the veths' segmentation offloads on.
const OFFLOADS_VAR: &str = "LATCHKEY_BENCH_NETNS_OFFLOADS";
/// The mode the bench re-executes itself in, inside the relay's namespace.
pub(crate) const INSIDE: &str = "forward-netns-inside";

const ROLES: [&str; 3] = ["client", "relay", "host"];

fn ns(tag: &str, role: &str) -> String {
    format!("{tag}-{role}")
}

fn address(role: &str) -> IpAddr {
    let last = ROLES.iter().position(|r| *r == role).unwrap_or(0) as u8 + 1;
    Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], last).into()
}

impl Layout {
    /// Everything on 127.0.0.1 of the bench's namespace.
    pub(crate) fn loopback() -> Self {
        Self {
            client: Place::loopback(),
            relay: Place::loopback(),
            host: Place::loopback(),
            netns_offloads: None,
        }
    }

    /// The namespaces tagged `tag` (see the module doc), seen from inside
    /// the relay's.
    pub(crate) fn netns(tag: &str, offloads: bool) -> Self {
        let place = |role: &str| Place {
            prefix: ["ip", "netns", "exec", &ns(tag, role)]
                .map(String::from)
                .to_vec(),
            ip: address(role),
        };
        Self {
            client: place("client"),
            relay: place("relay"),
            host: place("host"),
            netns_offloads: Some(offloads),
        }
    }

    /// What the figure's report says of the network: for the namespaces,
    /// the MTU, the offloads and the mean size of the packets that crossed
    /// the client's and the host's veths (read from the relay's namespace,
    /// where the bench runs).
    pub(crate) fn network(&self) -> serde_json::Value {
        let Some(offloads) = self.netns_offloads else {
            return serde_json::json!({ "loopback": true });
        };
        let stat = |dev: &str, what: &str| {
            std::fs::read_to_string(format!("/sys/class/net/{dev}/statistics/{what}"))
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        let (mut bytes, mut packets) = (0, 0);
        for dev in ["veth-client", "veth-host"] {
            bytes += stat(dev, "rx_bytes") + stat(dev, "tx_bytes");
            packets += stat(dev, "rx_packets") + stat(dev, "tx_packets");
        }
        serde_json::json!({
            "mtu": MTU.parse::<u32>().unwrap_or(0),
            "offloads": offloads,
            "mean_packet_bytes": bytes.checked_div(packets),
        })
    }

    /// A line saying where the figure ran, for the namespaces.
    pub(crate) fn describe(&self, figure: &str) -> Option<String> {
        self.netns_offloads?;
        let n = self.network();
        Some(format!(
            "{figure}: client, relay and host in network namespaces joined by veths at MTU {MTU}, \
             {}; mean packet on the veths {} bytes",
            if n["offloads"] == true {
                "offloads on (64 KiB segments cross whole)"
            } else {
                "segmentation offloads off, GRO on"
            },
            n["mean_packet_bytes"]
        ))
    }
}

/// Runs `ip ARGS`; fails with what it said unless it succeeds.
fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The namespaces of one run, deleted when dropped.
struct Namespaces {
    tag: String,
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        // Deleting a namespace deletes its links, and a veth goes with
        // either end.
        for role in ROLES {
            let _ = ip(&["netns", "delete", &ns(&self.tag, role)]);
        }
    }
}

/// Why namespaces cannot be made here, if they cannot.
fn impossible() -> Option<String> {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1).map(String::from));
    if uid.as_deref() != Some("0") {
        return Some("network namespaces need root (run the bench as root)".into());
    }
    let runs = |program: &str, arg: &str| {
        Command::new(program)
            .arg(arg)
            .output()
            .is_ok_and(|out| out.status.success())
    };
    if !runs("ip", "-V") {
        return Some("`ip` (iproute2) is not installed".into());
    }
    if !offloads() && !runs("ethtool", "--version") {
        return Some(format!(
            "`ethtool` is not installed (apt-get install ethtool), which turns the veths' \
             segmentation offloads off (or set {OFFLOADS_VAR}=on to keep them)"
        ));
    }
    None
}

/// Whether to keep the veths' offloads (see the module doc).
fn offloads() -> bool {
    std::env::var(OFFLOADS_VAR).is_ok_and(|v| v == "on")
}

/// Deletes the namespaces of earlier runs whose bench is gone (and any
/// with this run's tag: a run whose process id this one reuses).
fn delete_stale() -> Result<()> {
    let out = Command::new("ip").args(["netns", "list"]).output()?;
    let me = std::process::id().to_string();
    for name in String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
    {
        let Some(pid) = name
            .strip_prefix("lkb-")
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        let alive = std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|comm| comm.trim() == "latchkey-bench");
        if pid == me || !alive {
            ip(&["netns", "delete", name])?;
        }
    }
    Ok(())
}

impl Namespaces {
    /// Makes the namespaces and links of the module doc.
    fn create(tag: &str, offloads: bool) -> Result<Self> {
        let this = Self { tag: tag.into() };
        let [client, relay, host] = ROLES.map(|r| ns(tag, r));
        for name in [&client, &relay, &host] {
            ip(&["netns", "add", name])?;
        }
        // Both ends of a veth: its segmentation offloads off, GRO on.
        let set = |name: &str, dev: &str| -> Result<()> {
            ip(&["-n", name, "link", "set", dev, "mtu", MTU, "up"])?;
            if offloads {
                return Ok(());
            }
            let out = Command::new("ip")
                .args(["netns", "exec", name, "ethtool", "-K", dev])
                .args(["tso", "off", "tx-udp-segmentation", "off", "gro", "on"])
                .output()?;
            anyhow::ensure!(
                out.status.success(),
                "ethtool -K {dev} in {name} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            Ok(())
        };
        ip(&["-n", &relay, "link", "add", "br0", "type", "bridge"])?;
        for (role, name) in [("client", &client), ("host", &host)] {
            let port = format!("veth-{role}");
            ip(&[
                "-n", &relay, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                "netns", name,
            ])?;
            ip(&["-n", &relay, "link", "set", &port, "master", "br0"])?;
            set(&relay, &port)?;
            set(name, "eth0")?;
            let addr = format!("{}/24", address(role));
            ip(&["-n", name, "addr", "add", &addr, "dev", "eth0"])?;
        }
        ip(&["-n", &relay, "link", "set", "br0", "mtu", MTU])?;
        let addr = format!("{}/24", address("relay"));
        ip(&["-n", &relay, "addr", "add", &addr, "dev", "br0"])?;
        ip(&["-n", &relay, "link", "set", "br0", "up"])?;
        for name in [&client, &relay, &host] {
            ip(&["-n", name, "link", "set", "lo", "up"])?;
        }
        // Bridged packets skip iptables (br_netfilter, where loaded, would
        // hand them to it).
        let _ = Command::new("ip")
            .args(["netns", "exec", &relay, "sh", "-c"])
            .arg("for f in /proc/sys/net/bridge/bridge-nf-call-*; do [ -e \"$f\" ] && echo 0 > \"$f\"; done; true")
            .status();
        Ok(this)
    }
}

/// `forward-netns`: the `forward` figure with client, relay and host in
/// network namespaces (see the module doc); skipped, with the reason
/// printed, where they cannot be made.
pub(crate) fn forward() -> Result<()> {
    if let Some(why) = impossible() {
        println!("forward-netns: skipped: {why}");
        return Ok(());
    }
    delete_stale()?;
    let tag = format!("lkb-{}", std::process::id());
    // The first namespace tells whether namespaces can be made at all
    // (root in a container may not).
    if let Err(e) = ip(&["netns", "add", &ns(&tag, "probe")]) {
        println!("forward-netns: skipped: cannot make a network namespace: {e:#}");
        return Ok(());
    }
    ip(&["netns", "delete", &ns(&tag, "probe")])?;
    let offloads = offloads();
    let net = Namespaces::create(&tag, offloads)?;
    let status = Command::new("ip")
        .args(["netns", "exec", &ns(&net.tag, "relay")])
        .arg(std::env::current_exe()?)
        .args([INSIDE, &net.tag, if offloads { "on" } else { "off" }])
        .status()?;
    anyhow::ensure!(
        status.success(),
        "the figure failed in the relay's namespace ({status})"
    );
    Ok(())
}
