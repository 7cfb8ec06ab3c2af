//! The thin async adapter between this crate's sans-IO codec and quinn
//! streams, shared by the relay and the client: handshake messages and
//! control frames read with the protocol's limits checked before any
//! allocation. Only built with the `quinn` feature; everything else in this
//! crate stays free of I/O.

use crate::{
    codec::{self, LEN_PREFIX},
    error::CodecError,
    limits::{MAX_FRAME_LEN, MAX_NOISE_MESSAGE},
    record::{
        Opener, RecordBuffer, RecordError, Sealer, MAX_RECORD_LEN, MAX_RECORD_PAYLOAD,
        RECORD_PREFIX, TAG_LEN,
    },
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
    /// A channel record was forged, out of place or out of limits.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// The stream ended without the channel's end record: the relay or the
    /// network cut it short, so what arrived may be incomplete.
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

/// Copies one QUIC stream into another chunk by chunk (no intermediate
/// buffer: each received chunk is handed to the sender as it is), with
/// flow-control back-pressure end to end. A finish is passed on, and so is
/// a reset with its code; a stopped peer stops the other side. `seen` is shown each
/// chunk as it passes (the relay counts bytes with it). Returns the bytes
/// moved.
pub async fn splice(
    from: &mut RecvStream,
    to: &mut SendStream,
    mut seen: impl FnMut(&[u8]),
) -> u64 {
    let mut moved = 0u64;
    loop {
        match from.read_chunk(usize::MAX, true).await {
            Ok(Some(chunk)) => {
                moved += chunk.bytes.len() as u64;
                seen(&chunk.bytes);
                if to.write_chunk(chunk.bytes).await.is_err() {
                    let _ = from.stop(quinn::VarInt::from_u32(0));
                    return moved;
                }
            }
            Ok(None) => {
                let _ = to.finish();
                return moved;
            }
            Err(quinn::ReadError::Reset(code)) => {
                let _ = to.reset(code);
                return moved;
            }
            Err(_) => {
                let _ = to.reset(quinn::VarInt::from_u32(0));
                return moved;
            }
        }
    }
}

/// What one stream may make its receiver buffer.
pub const STREAM_RECEIVE_WINDOW: u32 = 2 * 1024 * 1024;

/// What one connection may make its receiver buffer, across its streams.
pub const RECEIVE_WINDOW: u32 = 16 * 1024 * 1024;

/// The connection-level receive window of a host's link, on both ends (the
/// relay's and the agent's). A stream whose reader stops (a client that
/// never reads a command's output, a command that never reads its input)
/// keeps up to a stream's window unread, and unread data counts against the
/// whole connection: with the link's window only [`RECEIVE_WINDOW`], eight
/// such streams of one user stopped the host's link for every user. So the
/// link's window holds all of one user's streams stalled
/// ([`MAX_CHANNELS_PER_USER`](crate::limits::MAX_CHANNELS_PER_USER)) and a
/// whole [`RECEIVE_WINDOW`] more for everyone else. It is credit, not
/// memory: a link buffers that much only while streams are stalled.
pub const HOST_LINK_RECEIVE_WINDOW: u32 =
    crate::limits::MAX_CHANNELS_PER_USER as u32 * STREAM_RECEIVE_WINDOW + RECEIVE_WINDOW;

/// The transport settings of every Latchkey connection, relay and peers
/// alike (and the benchmark's direct baseline, so it compares like with
/// like). Clients open one control stream and one stream per channel, so
/// 256 concurrent bidirectional streams is generous; unidirectional streams
/// are not used. The windows bound what one connection can make the other
/// side buffer, and let one forward run fast.
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
/// bytes (as far as the OS allows). Returns the socket and the receive
/// buffer size the OS granted, so callers can warn when it is small.
pub fn udp_socket(
    addr: std::net::SocketAddr,
    buffer: usize,
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
    let _ = socket.set_recv_buffer_size(buffer);
    let _ = socket.set_send_buffer_size(buffer);
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

/// The sending half of an end-to-end channel: everything written is sealed
/// into records ([`crate::record`]) before quinn sees it.
pub struct SealedSend {
    inner: SendStream,
    sealer: Sealer,
}

impl SealedSend {
    /// Seals what is sent on `inner` with `sealer`.
    pub fn new(inner: SendStream, sealer: Sealer) -> Self {
        Self { inner, sealer }
    }

    /// Sends `data` (in as many records as it needs).
    pub async fn write_all(&mut self, data: &[u8]) -> Result<(), WireError> {
        let records = data.len() / MAX_RECORD_PAYLOAD + 1;
        let mut out = Vec::with_capacity(data.len() + records * (RECORD_PREFIX + 1 + TAG_LEN));
        for chunk in data.chunks(MAX_RECORD_PAYLOAD) {
            self.sealer.seal(chunk, &mut out)?;
        }
        if data.is_empty() {
            self.sealer.seal(&[], &mut out)?;
        }
        self.inner.write_chunk(out.into()).await?;
        Ok(())
    }

    /// Sends one frame as one record.
    pub async fn write_frame<T: Serialize>(&mut self, frame: &T) -> Result<(), WireError> {
        self.write_all(&codec::encode_body(frame)?).await
    }

    /// Sends one frame as one padded record ([`crate::record::PAD_TO`]):
    /// for a channel's request and its answer, whose lengths would say
    /// what they are.
    pub async fn write_frame_padded<T: Serialize>(&mut self, frame: &T) -> Result<(), WireError> {
        let mut out = Vec::new();
        self.sealer
            .seal_padded(&codec::encode_body(frame)?, &mut out)?;
        self.inner.write_chunk(out.into()).await?;
        Ok(())
    }

    /// Sends the end record and finishes the stream: the peer can tell
    /// this clean end from a cut.
    pub async fn finish(&mut self) -> Result<(), WireError> {
        let mut out = Vec::new();
        self.sealer.seal_end(&mut out)?;
        self.inner.write_chunk(out.into()).await?;
        self.inner
            .finish()
            .map_err(|_| WireError::Write(quinn::WriteError::ClosedStream))
    }

    /// Abandons the stream (the peer sees a reset, not an end).
    pub fn reset(&mut self, code: quinn::VarInt) {
        let _ = self.inner.reset(code);
    }

    /// Resolves when the peer stops reading (it went away).
    pub fn stopped(
        &self,
    ) -> impl std::future::Future<Output = Result<Option<quinn::VarInt>, quinn::StoppedError>>
           + Send
           + Sync
           + 'static {
        self.inner.stopped()
    }

    /// quinn's send priority for the stream (higher goes first).
    pub fn set_priority(&self, priority: i32) {
        let _ = self.inner.set_priority(priority);
    }
}

/// The receiving half of an end-to-end channel: records are opened as they
/// arrive; reads are cancel-safe (what arrived stays buffered).
pub struct OpenedRecv {
    inner: RecvStream,
    opener: Opener,
    records: RecordBuffer,
    /// Data of an opened record not yet handed out by [`OpenedRecv::read`].
    left: bytes::Bytes,
    ended: bool,
}

impl OpenedRecv {
    /// Opens what arrives on `inner` with `opener`.
    pub fn new(inner: RecvStream, opener: Opener) -> Self {
        Self {
            inner,
            opener,
            records: RecordBuffer::default(),
            left: bytes::Bytes::new(),
            ended: false,
        }
    }

    /// The next record's data; `Ok(None)` at the sender's end record. A
    /// stream that ends without one is [`WireError::Truncated`]. The data
    /// is the received buffer itself, decrypted in place.
    pub async fn recv(&mut self) -> Result<Option<bytes::Bytes>, WireError> {
        if !self.left.is_empty() {
            return Ok(Some(std::mem::take(&mut self.left)));
        }
        loop {
            if self.ended {
                return Ok(None);
            }
            if let Some(mut record) = self.records.take()? {
                return match self.opener.open_in_place(&mut record)? {
                    Some(data) => Ok(Some(record.freeze().slice(data))),
                    None => {
                        self.ended = true;
                        Ok(None)
                    }
                };
            }
            // Whatever has arrived, up to a record's worth: the buffer never
            // holds more than one partial record and one read.
            match self
                .inner
                .read_chunk(RECORD_PREFIX + MAX_RECORD_LEN, true)
                .await?
            {
                Some(chunk) => self.records.extend(&chunk.bytes),
                None => return Err(WireError::Truncated),
            }
        }
    }

    /// Reads up to `buf.len()` bytes; `Ok(0)` at the clean end.
    pub async fn read(&mut self, buf: &mut [u8]) -> Result<usize, WireError> {
        loop {
            if self.left.is_empty() {
                match self.recv().await? {
                    Some(data) => self.left = data,
                    None => return Ok(0),
                }
            }
            if self.left.is_empty() {
                // An empty data record: nothing to hand out yet.
                continue;
            }
            let n = buf.len().min(self.left.len());
            buf[..n].copy_from_slice(&self.left[..n]);
            bytes::Buf::advance(&mut self.left, n);
            return Ok(n);
        }
    }

    /// Fills `buf`; an end before it is full is [`WireError::Closed`].
    pub async fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), WireError> {
        let mut at = 0;
        while at < buf.len() {
            match self.read(&mut buf[at..]).await? {
                0 => return Err(WireError::Closed),
                n => at += n,
            }
        }
        Ok(())
    }

    /// Reads one frame (one record); `Ok(None)` at the clean end.
    pub async fn read_frame<T: DeserializeOwned + Serialize>(
        &mut self,
    ) -> Result<Option<T>, WireError> {
        match self.recv().await? {
            Some(body) => Ok(Some(codec::decode_body(&body)?)),
            None => Ok(None),
        }
    }

    /// Tells the sender to stop (we will not read any more).
    pub fn stop(&mut self, code: quinn::VarInt) {
        let _ = self.inner.stop(code);
    }
}

/// Copies `from` into a channel until `from` ends, then sends the end
/// record; a read error resets the channel, so the far side sees a cut,
/// not a clean end. Returns the bytes copied.
pub async fn copy_into_channel<R: tokio::io::AsyncRead + Unpin>(
    from: &mut R,
    to: &mut SealedSend,
) -> Result<u64, WireError> {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; MAX_RECORD_PAYLOAD];
    let mut moved = 0u64;
    loop {
        match from.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                to.write_all(&buf[..n]).await?;
                moved += n as u64;
            }
            Err(_) => {
                to.reset(quinn::VarInt::from_u32(0));
                return Err(WireError::Truncated);
            }
        }
    }
    to.finish().await?;
    Ok(moved)
}

/// Copies a channel's data into `to` until its end record, then shuts
/// `to` down. A cut channel is an error and leaves `to` as it is: the
/// caller aborts it (a TCP reset), so what the far side reads never looks
/// complete when it is not. Returns the bytes copied.
pub async fn copy_out_of_channel<W: tokio::io::AsyncWrite + Unpin>(
    from: &mut OpenedRecv,
    to: &mut W,
) -> Result<u64, WireError> {
    use tokio::io::AsyncWriteExt;
    let mut moved = 0u64;
    loop {
        match from.recv().await {
            Ok(Some(data)) => {
                if to.write_all(&data).await.is_err() {
                    from.stop(quinn::VarInt::from_u32(0));
                    return Err(WireError::Closed);
                }
                moved += data.len() as u64;
            }
            Ok(None) => {
                let _ = to.shutdown().await;
                return Ok(moved);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Splices a TCP connection and a channel both ways until both ends are
/// done. A channel cut short resets the TCP connection instead of closing
/// it (see [`copy_out_of_channel`]).
pub async fn splice_tcp(tcp: tokio::net::TcpStream, send: &mut SealedSend, recv: &mut OpenedRecv) {
    let (mut tcp_read, mut tcp_write) = tcp.into_split();
    let cut = {
        let into = copy_into_channel(&mut tcp_read, send);
        let out = copy_out_of_channel(recv, &mut tcp_write);
        tokio::pin!(into, out);
        let mut into_done = false;
        loop {
            tokio::select! {
                copied = &mut out => {
                    // A cut ends both ways at once; a clean end lets the
                    // other way finish (a half-closed connection).
                    if copied.is_err() {
                        break true;
                    }
                    if !into_done {
                        let _ = (&mut into).await;
                    }
                    break false;
                }
                _ = &mut into, if !into_done => into_done = true,
            }
        }
    };
    if cut {
        if let Ok(tcp) = tcp_read.reunite(tcp_write) {
            let _ = tcp.set_zero_linger();
        }
    }
}
