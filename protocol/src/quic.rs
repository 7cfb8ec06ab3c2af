//! The thin async adapter between this crate's sans-IO codec and quinn
//! streams, shared by the relay and the client: handshake messages and
//! control frames read with the protocol's limits checked before any
//! allocation. Only built with the `quinn` feature; everything else in this
//! crate stays free of I/O.

use crate::{
    codec::{self, LEN_PREFIX},
    error::CodecError,
    limits::{MAX_FRAME_LEN, MAX_NOISE_MESSAGE},
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
    /// The peer reset the channel's stream instead of finishing it (its
    /// end went away, or gave up), so what arrived may be incomplete.
    #[error("the channel was cut short")]
    Truncated,
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

/// Finishes a control stream whose last frame ends the connection (a
/// reply, a refusal), and lets the peer read it and close, for at most
/// 2 s: the connection closes when its handler returns, and a peer whose
/// connection is closed can no longer read what it had received, so it
/// would be left a bare "closed".
pub async fn finish_and_let_close(conn: &quinn::Connection, send: &mut SendStream) {
    let _ = send.finish();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), conn.closed()).await;
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

/// Reads control frames from a stream, cancel-safely: bytes that arrived
/// before a cancelled [`FrameReader::recv`] stay buffered for the next
/// call, so a `select!` never drops half a frame. (It replaced a reader
/// task and channel per stream: an idle connection costs about 2 KiB less.)
pub struct FrameReader<T> {
    recv: RecvStream,
    buf: Vec<u8>,
    done: bool,
    _frames: std::marker::PhantomData<fn() -> T>,
}

/// Starts reading frames of type `T` from `recv`.
pub fn frame_reader<T: DeserializeOwned + Serialize>(recv: RecvStream) -> FrameReader<T> {
    FrameReader {
        recv,
        buf: Vec::new(),
        done: false,
        _frames: std::marker::PhantomData,
    }
}

impl<T: DeserializeOwned + Serialize> FrameReader<T> {
    /// The next frame: `Some(Ok(Some(frame)))`; `Some(Ok(None))` once, at a
    /// clean end of stream between frames; `Some(Err(_))` once, when the
    /// stream fails or breaks the framing rules; then `None` for ever
    /// (like a closed channel's receiver).
    pub async fn recv(&mut self) -> Option<Result<Option<T>, WireError>> {
        if self.done {
            return None;
        }
        let next = self.next().await;
        self.done = !matches!(next, Ok(Some(_)));
        Some(next)
    }

    async fn next(&mut self) -> Result<Option<T>, WireError> {
        loop {
            if let Some(frame) = self.buffered()? {
                return Ok(Some(frame));
            }
            // `read_chunk` is cancel-safe; what it returns is kept at once.
            let want = self.missing();
            match self.recv.read_chunk(want, true).await? {
                Some(chunk) => self.buf.extend_from_slice(&chunk.bytes),
                None if self.buf.is_empty() => return Ok(None),
                None => return Err(WireError::Closed),
            }
        }
    }

    /// A whole frame from the buffer, if one is there.
    fn buffered(&mut self) -> Result<Option<T>, WireError> {
        let Some(prefix) = self.buf.first_chunk::<LEN_PREFIX>() else {
            return Ok(None);
        };
        let len = codec::body_len(*prefix, MAX_FRAME_LEN)?;
        if self.buf.len() < LEN_PREFIX + len {
            return Ok(None);
        }
        let frame = codec::decode_body(&self.buf[LEN_PREFIX..LEN_PREFIX + len])?;
        self.buf.drain(..LEN_PREFIX + len);
        if self.buf.is_empty() && self.buf.capacity() > 4096 {
            // Do not keep a large frame's buffer on an idle stream.
            self.buf = Vec::new();
        }
        Ok(Some(frame))
    }

    /// How many bytes the frame being read still needs (its prefix first),
    /// so no read takes bytes beyond the limit.
    fn missing(&self) -> usize {
        match self.buf.first_chunk::<LEN_PREFIX>() {
            None => LEN_PREFIX - self.buf.len(),
            Some(prefix) => {
                let len = u32::from_be_bytes(*prefix) as usize;
                (LEN_PREFIX + len).saturating_sub(self.buf.len()).max(1)
            }
        }
    }
}

/// What one stream may make its receiver buffer.
pub const STREAM_RECEIVE_WINDOW: u32 = 2 * 1024 * 1024;

/// What one connection may make its receiver buffer, across its streams.
pub const RECEIVE_WINDOW: u32 = 16 * 1024 * 1024;

/// The transport settings of every Latchkey connection, relay and peers
/// alike (and the benchmark's direct baseline, so it compares like with
/// like); a session's end-to-end connection narrows them
/// (`client/src/net/peer.rs`). 256 concurrent bidirectional streams is
/// generous (a relay connection carries one control stream);
/// unidirectional streams are not used. The windows bound what one
/// connection can make the other side buffer, and let one forward run fast.
pub fn transport_config(
    idle_timeout: std::time::Duration,
    keep_alive: std::time::Duration,
) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(256));
    t.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    t.stream_receive_window(quinn::VarInt::from_u32(STREAM_RECEIVE_WINDOW));
    t.receive_window(quinn::VarInt::from_u32(RECEIVE_WINDOW));
    t.send_window(u64::from(RECEIVE_WINDOW));
    t.max_idle_timeout(quinn::IdleTimeout::try_from(idle_timeout).ok());
    t.keep_alive_interval(Some(keep_alive));
    t
}

/// UDP socket buffer size the relay and peers ask for. The kernel's default
/// (about 208 KiB on Linux) drops packets when hundreds of handshakes
/// arrive at once, as in a reconnect storm: every drop costs a QUIC
/// retransmission timeout (up to seconds). Linux caps the request at
/// `net.core.rmem_max` / `wmem_max`; see [`udp_socket`].
pub const UDP_BUFFER_BYTES: usize = 4 << 20;

/// A UDP socket bound to `addr` with receive and send buffers of `buffer`
/// bytes (as far as the OS allows; `None` keeps the system's). Returns the
/// socket and the receive buffer size the OS granted, so callers can warn
/// when it is small.
pub fn udp_socket(
    addr: std::net::SocketAddr,
    buffer: Option<usize>,
) -> std::io::Result<(std::net::UdpSocket, usize)> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // `[::]` means every address, IPv4 too (dual stack, whatever the
        // OS's default: Linux's is dual, Windows' and the BSDs' are not);
        // a specific IPv6 address is IPv6 only. Best effort: a system
        // without dual stack (OpenBSD) serves IPv6 alone.
        let _ = socket.set_only_v6(!addr.ip().is_unspecified());
    }
    // Best effort: a smaller buffer still works, only less well.
    if let Some(buffer) = buffer {
        let _ = socket.set_recv_buffer_size(buffer);
        let _ = socket.set_send_buffer_size(buffer);
    }
    socket.bind(&addr.into())?;
    let reported = socket.recv_buffer_size()?;
    // Linux reports twice what it granted (the rest is its bookkeeping).
    let granted = if cfg!(target_os = "linux") {
        reported / 2
    } else {
        reported
    };
    Ok((socket.into(), granted))
}
