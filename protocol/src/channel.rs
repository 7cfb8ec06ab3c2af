//! A channel's two halves: one bidirectional stream of a session's
//! end-to-end QUIC connection ([`crate::session`]). QUIC already seals and
//! orders the bytes between client and host, so a channel is the stream
//! itself, with length-prefixed frames ([`crate::codec`]) where a channel
//! speaks in frames and raw bytes where it moves data. A clean end is the
//! stream's finish and a cut is its reset, which QUIC tells apart and which
//! nobody between the two ends can forge.

use bytes::{Buf, Bytes, BytesMut};
use quinn::{RecvStream, SendStream, VarInt};
use serde::{de::DeserializeOwned, Serialize};

use crate::{
    codec::{self, LEN_PREFIX},
    error::CodecError,
    limits::MAX_FRAME_LEN,
    quic::WireError,
};

/// Padded frames round their length up to a multiple of this, so the one
/// thing left to see from outside, a datagram's size, does not tell a
/// channel's request (a command line, a path) by its length.
pub const PAD_TO: usize = 256;

/// Largest chunk a read takes from quinn at once.
const READ_CHUNK: usize = 64 * 1024;

/// The sending half of a channel.
#[derive(Debug)]
pub struct ChannelSend {
    inner: SendStream,
}

impl ChannelSend {
    /// The channel that sends on `inner`.
    pub fn new(inner: SendStream) -> Self {
        Self { inner }
    }

    /// Sends `data` as it is.
    pub async fn write_all(&mut self, data: &[u8]) -> Result<(), WireError> {
        self.inner.write_all(data).await?;
        Ok(())
    }

    /// Sends one frame.
    pub async fn write_frame<T: Serialize>(&mut self, frame: &T) -> Result<(), WireError> {
        self.inner.write_all(&codec::frame_bytes(frame)?).await?;
        Ok(())
    }

    /// Sends one frame padded to a multiple of [`PAD_TO`] bytes: for a
    /// channel's request and its answer, whose lengths would say what they
    /// are. Read with [`ChannelRecv::read_frame_padded`].
    ///
    /// ```text
    /// padded = len: u32 ‖ body_len: u32 ‖ body ‖ zeros     (4 + len ≡ 0 mod PAD_TO)
    /// ```
    pub async fn write_frame_padded<T: Serialize>(&mut self, frame: &T) -> Result<(), WireError> {
        let body = codec::encode_body(frame)?;
        let unpadded = 2 * LEN_PREFIX + body.len();
        let total = unpadded.div_ceil(PAD_TO) * PAD_TO;
        let too_large = || CodecError::TooLarge {
            len: total,
            limit: MAX_FRAME_LEN,
        };
        if total - LEN_PREFIX > MAX_FRAME_LEN {
            return Err(too_large().into());
        }
        let len = u32::try_from(total - LEN_PREFIX).map_err(|_| too_large())?;
        let body_len = u32::try_from(body.len()).map_err(|_| too_large())?;
        let mut out = Vec::with_capacity(total);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&body_len.to_be_bytes());
        out.extend_from_slice(&body);
        out.resize(total, 0);
        self.inner.write_all(&out).await?;
        Ok(())
    }

    /// Ends the channel cleanly: the peer reads its end after everything
    /// sent. (Async only so that callers can treat it like the writes.)
    pub async fn finish(&mut self) -> Result<(), WireError> {
        self.inner
            .finish()
            .map_err(|_| WireError::Write(quinn::WriteError::ClosedStream))
    }

    /// Abandons the channel: the peer sees a cut, not an end.
    pub fn reset(&mut self, code: VarInt) {
        let _ = self.inner.reset(code);
    }

    /// Resolves when the peer stops reading (it went away).
    pub fn stopped(
        &self,
    ) -> impl std::future::Future<Output = Result<Option<VarInt>, quinn::StoppedError>>
           + Send
           + Sync
           + 'static {
        self.inner.stopped()
    }

    /// The stream's send priority (higher goes first): interactive channels
    /// ahead of copies.
    pub fn set_priority(&self, priority: i32) {
        let _ = self.inner.set_priority(priority);
    }
}

/// The receiving half of a channel. Reads are cancel-safe: what arrived
/// stays buffered for the next one.
#[derive(Debug)]
pub struct ChannelRecv {
    inner: RecvStream,
    /// Arrived and not yet handed out; never more than one frame and one
    /// chunk.
    buf: BytesMut,
    /// The sender finished the stream.
    ended: bool,
}

impl ChannelRecv {
    /// The channel that reads from `inner`.
    pub fn new(inner: RecvStream) -> Self {
        Self {
            inner,
            buf: BytesMut::new(),
            ended: false,
        }
    }

    /// Reads one more chunk into the buffer; `false` at the clean end.
    async fn fill(&mut self, at_most: usize) -> Result<bool, WireError> {
        if self.ended {
            return Ok(false);
        }
        match self.inner.read_chunk(at_most.max(1), true).await {
            Ok(Some(chunk)) => {
                self.buf.extend_from_slice(&chunk.bytes);
                Ok(true)
            }
            Ok(None) => {
                self.ended = true;
                Ok(false)
            }
            Err(quinn::ReadError::Reset(_)) => Err(WireError::Truncated),
            Err(e) => Err(e.into()),
        }
    }

    /// The next data that arrived; `Ok(None)` at the clean end. A stream
    /// reset before its end is [`WireError::Truncated`].
    pub async fn recv(&mut self) -> Result<Option<Bytes>, WireError> {
        self.recv_at_most(READ_CHUNK).await
    }

    /// [`ChannelRecv::recv`], at most `max` bytes (at least one): what
    /// follows stays for the next read, so data of known length can be
    /// followed by something else (a copy's checksum).
    pub async fn recv_at_most(&mut self, max: usize) -> Result<Option<Bytes>, WireError> {
        let max = max.max(1);
        if !self.buf.is_empty() {
            let n = max.min(self.buf.len());
            return Ok(Some(self.buf.split_to(n).freeze()));
        }
        if self.ended {
            return Ok(None);
        }
        match self.inner.read_chunk(max.min(READ_CHUNK), true).await {
            Ok(Some(chunk)) => Ok(Some(chunk.bytes)),
            Ok(None) => {
                self.ended = true;
                Ok(None)
            }
            Err(quinn::ReadError::Reset(_)) => Err(WireError::Truncated),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads up to `buf.len()` bytes; `Ok(0)` at the clean end.
    pub async fn read(&mut self, buf: &mut [u8]) -> Result<usize, WireError> {
        if self.buf.is_empty() && !self.fill(buf.len().min(READ_CHUNK)).await? {
            return Ok(0);
        }
        let n = buf.len().min(self.buf.len());
        buf[..n].copy_from_slice(&self.buf[..n]);
        self.buf.advance(n);
        Ok(n)
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

    /// The body of the next length-prefixed frame (checked against
    /// [`MAX_FRAME_LEN`] before anything is buffered for it); `Ok(None)` at
    /// a clean end between frames.
    async fn next_body(&mut self) -> Result<Option<Bytes>, WireError> {
        loop {
            if let Some(prefix) = self.buf.first_chunk::<LEN_PREFIX>() {
                let len = codec::body_len(*prefix, MAX_FRAME_LEN)?;
                if self.buf.len() >= LEN_PREFIX + len {
                    self.buf.advance(LEN_PREFIX);
                    return Ok(Some(self.buf.split_to(len).freeze()));
                }
            }
            let missing = match self.buf.first_chunk::<LEN_PREFIX>() {
                Some(prefix) => LEN_PREFIX + u32::from_be_bytes(*prefix) as usize,
                None => LEN_PREFIX,
            } - self.buf.len();
            if !self.fill(missing).await? {
                return match self.buf.is_empty() {
                    true => Ok(None),
                    false => Err(WireError::Closed),
                };
            }
        }
    }

    /// Reads one frame; `Ok(None)` at a clean end between frames.
    pub async fn read_frame<T: DeserializeOwned + Serialize>(
        &mut self,
    ) -> Result<Option<T>, WireError> {
        match self.next_body().await? {
            Some(body) => Ok(Some(codec::decode_body(&body)?)),
            None => Ok(None),
        }
    }

    /// Reads one frame sent by [`ChannelSend::write_frame_padded`].
    pub async fn read_frame_padded<T: DeserializeOwned + Serialize>(
        &mut self,
    ) -> Result<Option<T>, WireError> {
        let Some(mut padded) = self.next_body().await? else {
            return Ok(None);
        };
        let short = || CodecError::Malformed("padded frame shorter than its body".into());
        let Some(prefix) = padded.first_chunk::<LEN_PREFIX>() else {
            return Err(short().into());
        };
        let len = u32::from_be_bytes(*prefix) as usize;
        padded.advance(LEN_PREFIX);
        if len > padded.len() {
            return Err(short().into());
        }
        Ok(Some(codec::decode_body(&padded[..len])?))
    }

    /// Tells the sender to stop (we will not read any more).
    pub fn stop(&mut self, code: VarInt) {
        let _ = self.inner.stop(code);
    }
}

/// Copies `from` into a channel until `from` ends, then finishes it; a
/// read error resets the channel, so the far side sees a cut, not a clean
/// end. Returns the bytes copied.
pub async fn copy_into_channel<R: tokio::io::AsyncRead + Unpin>(
    from: &mut R,
    to: &mut ChannelSend,
) -> Result<u64, WireError> {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; READ_CHUNK];
    let mut moved = 0u64;
    loop {
        match from.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                to.write_all(&buf[..n]).await?;
                moved += n as u64;
            }
            Err(_) => {
                to.reset(VarInt::from_u32(0));
                return Err(WireError::Truncated);
            }
        }
    }
    to.finish().await?;
    Ok(moved)
}

/// Copies a channel's data into `to` until its clean end, then shuts `to`
/// down. A cut channel is an error and leaves `to` as it is: the caller
/// aborts it (a TCP reset), so what the far side reads never looks
/// complete when it is not. Returns the bytes copied.
pub async fn copy_out_of_channel<W: tokio::io::AsyncWrite + Unpin>(
    from: &mut ChannelRecv,
    to: &mut W,
) -> Result<u64, WireError> {
    use tokio::io::AsyncWriteExt;
    let mut moved = 0u64;
    loop {
        match from.recv().await? {
            Some(data) => {
                // Flushed each time: a writer that buffers (standard
                // output) must not hold back what the peer waits for.
                if to.write_all(&data).await.is_err() || to.flush().await.is_err() {
                    from.stop(VarInt::from_u32(0));
                    return Err(WireError::Closed);
                }
                moved += data.len() as u64;
            }
            None => {
                let _ = to.shutdown().await;
                return Ok(moved);
            }
        }
    }
}

/// Splices a TCP connection and a channel both ways until both ends are
/// done. A channel cut short resets the TCP connection instead of closing
/// it (see [`copy_out_of_channel`]).
pub async fn splice_tcp(
    tcp: tokio::net::TcpStream,
    send: &mut ChannelSend,
    recv: &mut ChannelRecv,
) {
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
