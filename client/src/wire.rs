//! Reading and writing handshake messages and control frames on QUIC
//! streams, with the protocol's limits checked before any allocation.
//! (The relay has the same helpers; the protocol crate does no I/O, and
//! the relay binary should not link the client's terminal and PTY code.)

use latchkey_protocol::{
    codec::{self, LEN_PREFIX},
    limits::{MAX_FRAME_LEN, MAX_NOISE_MESSAGE},
    CodecError,
};
use quinn::{ReadExactError, RecvStream, SendStream};
use serde::{de::DeserializeOwned, Serialize};
use thiserror::Error;

/// Errors moving bytes on a stream.
#[derive(Debug, Error)]
pub enum WireError {
    /// The peer closed the stream where a message was expected.
    #[error("stream closed")]
    Closed,
    /// Reading failed (connection lost, reset).
    #[error("read: {0}")]
    Read(#[from] quinn::ReadError),
    /// Writing failed.
    #[error("write: {0}")]
    Write(#[from] quinn::WriteError),
    /// The bytes broke the framing rules.
    #[error(transparent)]
    Codec(#[from] CodecError),
}

async fn read_prefix(recv: &mut RecvStream) -> Result<Option<[u8; LEN_PREFIX]>, WireError> {
    let mut prefix = [0u8; LEN_PREFIX];
    match recv.read_exact(&mut prefix).await {
        Ok(()) => Ok(Some(prefix)),
        Err(ReadExactError::FinishedEarly(0)) => Ok(None),
        Err(ReadExactError::FinishedEarly(_)) => Err(WireError::Closed),
        Err(ReadExactError::ReadError(e)) => Err(e.into()),
    }
}

async fn read_body(recv: &mut RecvStream, len: usize) -> Result<Vec<u8>, WireError> {
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await.map_err(|e| match e {
        ReadExactError::FinishedEarly(_) => WireError::Closed,
        ReadExactError::ReadError(e) => e.into(),
    })?;
    Ok(body)
}

/// Reads one length-prefixed handshake message (at most 65,535 bytes).
pub async fn read_message(recv: &mut RecvStream) -> Result<Vec<u8>, WireError> {
    let prefix = read_prefix(recv).await?.ok_or(WireError::Closed)?;
    let len = codec::body_len(prefix, MAX_NOISE_MESSAGE)?;
    read_body(recv, len).await
}

/// Writes one length-prefixed handshake message.
pub async fn write_message(send: &mut SendStream, msg: &[u8]) -> Result<(), WireError> {
    let len = u32::try_from(msg.len()).map_err(|_| CodecError::TooLarge {
        len: msg.len(),
        limit: MAX_NOISE_MESSAGE,
    })?;
    let mut out = Vec::with_capacity(LEN_PREFIX + msg.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(msg);
    send.write_all(&out).await?;
    Ok(())
}

/// Reads one control frame; `Ok(None)` on a clean end of stream between frames.
pub async fn read_frame<T: DeserializeOwned + Serialize>(
    recv: &mut RecvStream,
) -> Result<Option<T>, WireError> {
    let Some(prefix) = read_prefix(recv).await? else {
        return Ok(None);
    };
    let len = codec::body_len(prefix, MAX_FRAME_LEN)?;
    let body = read_body(recv, len).await?;
    Ok(Some(codec::decode_body(&body)?))
}

/// Writes one control frame.
pub async fn write_frame<T: Serialize>(send: &mut SendStream, frame: &T) -> Result<(), WireError> {
    send.write_all(&codec::frame_bytes(frame)?).await?;
    Ok(())
}

/// Reads frames on a task of its own and hands them over a bounded
/// channel, so a `select!` elsewhere never drops half a frame (reading a
/// frame is not cancel-safe; receiving from a channel is). The task ends at
/// the first `None` or error, which it passes on.
pub fn frame_reader<T>(
    mut recv: RecvStream,
) -> tokio::sync::mpsc::Receiver<Result<Option<T>, WireError>>
where
    T: DeserializeOwned + Serialize + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let frame = read_frame::<T>(&mut recv).await;
            let last = !matches!(frame, Ok(Some(_)));
            if tx.send(frame).await.is_err() || last {
                break;
            }
        }
    });
    rx
}
