//! The shared framing adapter over a real quinn connection on loopback
//! (SPEC B1): a frame read that is cancelled half-way loses nothing, and a
//! length prefix over the limit is an error before anything is allocated.

use std::time::Duration;

use anyhow::Result;
use latchkey_client::wire::{self, frame_reader, WireError};
use latchkey_protocol::frame::ClientToRelay;

/// Both ends of one stream on a real loopback connection (the endpoints
/// and connections are kept alive with it).
struct Pair {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    _keep: (
        quinn::Endpoint,
        quinn::Endpoint,
        quinn::Connection,
        quinn::Connection,
    ),
}

async fn pair() -> Result<Pair> {
    let (server_config, cert) = latchkey_tests::self_signed_server()?;
    let server = quinn::Endpoint::server(server_config, "127.0.0.1:0".parse()?)?;
    let mut client = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    client.set_default_client_config(latchkey_tests::client_trusting(&cert)?);
    let connecting = client.connect(server.local_addr()?, "localhost")?;
    let accepting = async {
        let incoming = server.accept().await;
        anyhow::Ok(
            incoming
                .ok_or_else(|| anyhow::anyhow!("no connection"))?
                .await?,
        )
    };
    let (conn, server_conn) = tokio::join!(connecting, accepting);
    let (conn, server_conn) = (conn?, server_conn?);
    // A stream reaches the other side with its first byte: a marker.
    let mut send = conn.open_bi().await?.0;
    send.write_all(&[MARKER]).await?;
    let (_, mut recv) = server_conn.accept_bi().await?;
    let mut marker = [0u8; 1];
    recv.read_exact(&mut marker).await?;
    anyhow::ensure!(marker[0] == MARKER);
    Ok(Pair {
        send,
        recv,
        _keep: (client, server, conn, server_conn),
    })
}

const MARKER: u8 = 0x42;

#[tokio::test]
async fn a_cancelled_read_keeps_the_half_frame_it_had() -> Result<()> {
    let Pair {
        mut send,
        recv,
        _keep,
    } = pair().await?;
    let bytes = latchkey_protocol::codec::frame_bytes(&ClientToRelay::ListHosts)?;
    let mut frames = frame_reader::<ClientToRelay>(recv);
    // Half a frame arrives; the read is cancelled while waiting for the rest.
    send.write_all(&bytes[..3]).await?;
    assert!(
        tokio::time::timeout(Duration::from_millis(200), frames.recv())
            .await
            .is_err()
    );
    send.write_all(&bytes[3..]).await?;
    wire::write_frame(&mut send, &ClientToRelay::Reboot).await?;
    send.finish()?;
    assert!(matches!(
        frames.recv().await,
        Some(Ok(Some(ClientToRelay::ListHosts)))
    ));
    assert!(matches!(
        frames.recv().await,
        Some(Ok(Some(ClientToRelay::Reboot)))
    ));
    assert!(matches!(frames.recv().await, Some(Ok(None))));
    assert!(frames.recv().await.is_none());
    Ok(())
}

#[tokio::test]
async fn an_oversized_prefix_is_an_error_and_the_reader_stops() -> Result<()> {
    let Pair {
        mut send,
        recv,
        _keep,
    } = pair().await?;
    let mut frames = frame_reader::<ClientToRelay>(recv);
    send.write_all(&u32::MAX.to_be_bytes()).await?;
    assert!(matches!(
        frames.recv().await,
        Some(Err(WireError::Codec(_)))
    ));
    assert!(frames.recv().await.is_none());
    Ok(())
}
