//! TCP on the test's side of a forward: a target that greets whoever
//! connects, one that echoes lines for as long as a connection stays, and
//! clients that read what comes back through a forward.

use std::net::SocketAddr;

use anyhow::Result;

use crate::process::wait_until;

/// A TCP service on the test's side of a forward: it greets every
/// connection with "hello from the host side" and closes it.
pub async fn hello_target() -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let target = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ =
                    tokio::io::AsyncWriteExt::write_all(&mut tcp, b"hello from the host side\n")
                        .await;
            });
        }
    });
    Ok(target)
}

/// Connects to `local` (a forward's listening address) and reads all it says.
pub async fn fetch(local: String) -> Result<String> {
    let mut tcp = tokio::net::TcpStream::connect(&local).await?;
    let mut got = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut tcp, &mut got).await?;
    Ok(got)
}

/// Waits until a connection through the forward at `local` reaches
/// [`hello_target`] again.
pub fn wait_until_forwarding(local: &str) -> Result<()> {
    wait_until("the forward to work again", || {
        let local = local.to_string();
        std::thread::spawn(move || {
            tokio::runtime::Runtime::new()
                .ok()
                .and_then(|rt| rt.block_on(fetch(local)).ok())
                .is_some_and(|got| got.contains("hello"))
        })
        .join()
        .unwrap_or(false)
    })
}

/// A TCP service on the test's side of a forward that echoes every line
/// back, for as long as each connection stays open.
pub async fn echo_target() -> Result<SocketAddr> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let target = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (read, mut write) = tcp.into_split();
                let mut lines = BufReader::new(read).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if write
                        .write_all(format!("{line}\n").as_bytes())
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    Ok(target)
}

/// One TCP connection through a forward to [`echo_target`], kept open.
pub struct Echoes {
    write: tokio::net::tcp::OwnedWriteHalf,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::net::tcp::OwnedReadHalf>>,
}

impl Echoes {
    /// Connects to `local`, a forward's listening address.
    pub async fn connect(local: &str) -> Result<Self> {
        use tokio::io::AsyncBufReadExt;
        let (read, write) = tokio::net::TcpStream::connect(local).await?.into_split();
        Ok(Self {
            write,
            lines: tokio::io::BufReader::new(read).lines(),
        })
    }

    /// Sends `text` as a line and waits, `within` at most, for it to come
    /// back.
    pub async fn echo(&mut self, text: &str, within: std::time::Duration) -> Result<()> {
        use tokio::io::AsyncWriteExt;
        self.write.write_all(format!("{text}\n").as_bytes()).await?;
        let line = tokio::time::timeout(within, self.lines.next_line())
            .await
            .map_err(|_| anyhow::anyhow!("no echo of {text:?} in {within:?}"))??;
        anyhow::ensure!(line.as_deref() == Some(text), "echoed {line:?}");
        Ok(())
    }
}
