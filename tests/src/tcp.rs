//! TCP on the test's side of a forward: a target that greets whoever
//! connects, and a client that reads what comes back through a forward.

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
