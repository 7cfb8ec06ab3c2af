//! A real VNC desktop on the test's side, for `latchkey desktop`: Debian's
//! `Xvfb` on a display it picks itself and `x11vnc` serving it on a free
//! loopback port without a password, both killed when dropped; and the
//! least of an RFB client that proves a desktop answers through a forward
//! (the handshake, then one framebuffer update). Outside CI a test that
//! cannot start one is skipped with the reason printed; in CI (`CI` set)
//! that is a failure.

use std::{net::SocketAddr, process::Command};

use anyhow::{bail, ensure, Context, Result};
use tempfile::TempDir;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::{sshd::free_port, Proc, WAIT};

/// Xvfb and x11vnc serving its screen on `addr`, stopped when dropped.
pub struct TestDesktop {
    // Fields drop in order: x11vnc before the display it serves.
    _x11vnc: Proc,
    _xvfb: Xvfb,
    /// Where x11vnc listens (loopback).
    pub addr: SocketAddr,
    /// The screen's width, as ServerInit must give it.
    pub width: u16,
    /// The screen's height.
    pub height: u16,
    _logs: TempDir,
}

/// A running Xvfb, stopped with SIGTERM when dropped, so that it removes
/// its socket and lock file in /tmp (a SIGKILL leaves them behind).
struct Xvfb(Proc);

impl Drop for Xvfb {
    fn drop(&mut self) {
        let _ = self.0.terminate();
    }
}

impl TestDesktop {
    /// Starts a `width`×`height` desktop, or says why not (with the
    /// servers' logs).
    pub fn start(width: u16, height: u16) -> Result<Self> {
        let logs = tempfile::tempdir()?;
        let log = |name: &str| std::fs::File::create(logs.path().join(name));
        let read = |name: &str| std::fs::read_to_string(logs.path().join(name)).unwrap_or_default();
        // `-displayfd 1`: Xvfb picks a free display and prints its number
        // once it accepts clients.
        let xvfb = Xvfb(
            Proc::spawn_logged(
                Command::new("Xvfb")
                    .args(["-displayfd", "1", "-nolisten", "tcp", "-screen", "0"])
                    .arg(format!("{width}x{height}x24")),
                log("xvfb.log")?,
            )
            .context("Xvfb is not installed (apt-get install xvfb)")?,
        );
        let display = xvfb
            .0
            .stdout
            .recv_timeout(WAIT)
            .with_context(|| format!("Xvfb did not start: {}", read("xvfb.log")))?;
        let port = free_port()?;
        let x11vnc = Proc::spawn_logged(
            Command::new("x11vnc")
                .arg("-display")
                .arg(format!(":{}", display.trim()))
                .args(["-rfbport", &port.to_string()])
                .args(["-localhost", "-no6", "-nopw", "-forever", "-shared"]),
            log("x11vnc.log")?,
        )
        .context("x11vnc is not installed (apt-get install x11vnc)")?;
        // x11vnc prints `PORT=N` once it listens.
        x11vnc
            .expect_line("PORT=")
            .with_context(|| format!("x11vnc did not start: {}", read("x11vnc.log")))?;
        Ok(Self {
            _x11vnc: x11vnc,
            _xvfb: xvfb,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            width,
            height,
            _logs: logs,
        })
    }
}

/// Starts a desktop for `test`, or says why not: `None` outside CI (the
/// reason printed), a panic in CI, where Xvfb and x11vnc are installed.
pub fn start_or_skip(test: &str, width: u16, height: u16) -> Option<TestDesktop> {
    latchkey_server::testing::needed_in_ci(
        test,
        "a VNC desktop (Xvfb and x11vnc)",
        TestDesktop::start(width, height),
    )
}

/// What a VNC server said of its screen in ServerInit.
#[derive(Debug, PartialEq, Eq)]
pub struct ServerInit {
    /// Framebuffer width.
    pub width: u16,
    /// Framebuffer height.
    pub height: u16,
}

/// RFB security type "None".
const SECURITY_NONE: u8 = 1;

/// Speaks RFB (RFC 6143) to `addr` as a viewer would: version, security
/// type None, a shared ClientInit; then asks for the whole screen and reads
/// the header of the FramebufferUpdate that answers. Returns ServerInit's
/// screen size. Every read has a deadline.
pub async fn view_one_frame(addr: &str) -> Result<ServerInit> {
    tokio::time::timeout(WAIT, async {
        let mut tcp = TcpStream::connect(addr).await?;
        let mut version = [0u8; 12];
        tcp.read_exact(&mut version).await?;
        ensure!(
            version.starts_with(b"RFB 003.") && version[11] == b'\n',
            "not an RFB server: {version:?}"
        );
        tcp.write_all(&version).await?;
        let minor = &version[8..11];
        if minor == b"003" {
            // 3.3: the server chooses, as a u32.
            let chosen = tcp.read_u32().await?;
            ensure!(
                chosen == u32::from(SECURITY_NONE),
                "security type {chosen}, not None"
            );
        } else {
            let count = tcp.read_u8().await?;
            ensure!(count > 0, "the server refused: {}", reason(&mut tcp).await?);
            let mut types = vec![0u8; usize::from(count)];
            tcp.read_exact(&mut types).await?;
            ensure!(types.contains(&SECURITY_NONE), "no None among {types:?}");
            tcp.write_u8(SECURITY_NONE).await?;
            // 3.8 says how it went even for None; 3.7 does not.
            if minor != b"007" && tcp.read_u32().await? != 0 {
                bail!("security failed: {}", reason(&mut tcp).await?);
            }
        }
        tcp.write_u8(1).await?; // ClientInit: shared
        let (width, height) = (tcp.read_u16().await?, tcp.read_u16().await?);
        let mut pixel_format = [0u8; 16];
        tcp.read_exact(&mut pixel_format).await?;
        let name_len = tcp.read_u32().await?;
        ensure!(name_len <= 4096, "a desktop name of {name_len} bytes");
        let mut name = vec![0u8; name_len as usize];
        tcp.read_exact(&mut name).await?;
        // FramebufferUpdateRequest for the whole screen, not incremental.
        let mut request = vec![3u8, 0, 0, 0, 0, 0];
        request.extend_from_slice(&width.to_be_bytes());
        request.extend_from_slice(&height.to_be_bytes());
        tcp.write_all(&request).await?;
        let mut header = [0u8; 4];
        tcp.read_exact(&mut header).await?;
        ensure!(
            header[0] == 0,
            "message type {}, not FramebufferUpdate",
            header[0]
        );
        let rectangles = u16::from_be_bytes([header[2], header[3]]);
        ensure!(rectangles > 0, "a FramebufferUpdate with no rectangle");
        Ok(ServerInit { width, height })
    })
    .await
    .context("the VNC server did not answer in time")?
}

/// A refusal's reason string (u32 length, then text).
async fn reason(tcp: &mut TcpStream) -> Result<String> {
    let len = tcp.read_u32().await?.min(4096);
    let mut text = vec![0u8; len as usize];
    tcp.read_exact(&mut text).await?;
    Ok(String::from_utf8_lossy(&text).into_owned())
}
