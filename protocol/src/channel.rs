//! A channel's two halves: one bidirectional stream of a session's
//! end-to-end QUIC connection ([`crate::session`]). QUIC already seals and
//! orders the bytes between client and host, so a channel is the stream
//! itself, with length-prefixed frames ([`crate::codec`]) where a channel
//! speaks in frames and raw bytes where it moves data. A clean end is the
//! stream's finish and a cut is its reset, which QUIC tells apart and which
//! nobody between the two ends can forge.
//!
//! A channel may also reach its stream through the process that holds a
//! reused session (`latchkey`'s session reuse): then its halves run over a
//! local byte stream (a Unix socket) carrying [`Piece`]s, and that process
//! copies them to and from the QUIC stream. The channel's users see no
//! difference: a finish is a [`Piece::Finish`], and a cut is the local
//! stream ending without one, which is what a process that dies leaves.

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

/// Most packets' worth of data one read gathers from quinn: about
/// [`READ_CHUNK`] of full-size packets.
const GATHER: usize = 48;

/// The stream data a full-size packet carries, about: what one of the
/// chunks quinn hands out holds.
const PACKET_DATA: usize = 1200;

/// Largest data a [`Piece`] carries: with its tag, a frame of
/// [`MAX_FRAME_LEN`], so a QUIC read of up to 64 KiB goes in one or two.
const PIECE_DATA: usize = MAX_FRAME_LEN - 1;

/// What a channel's local byte stream carries, each as one
/// length-prefixed frame whose body is a tag byte and, for data, the
/// bytes as they are (no encoding to pass them through):
///
/// ```text
/// piece = len: u32 ‖ 0 ‖ data        (data: 1 B to 64 KiB - 1)
///       | len: u32 ‖ 1               (finish)
/// ```
#[derive(Debug, PartialEq, Eq)]
pub enum Piece {
    /// The channel's next bytes.
    Data(Bytes),
    /// The clean end of this direction.
    Finish,
}

const PIECE_DATA_TAG: u8 = 0;
const PIECE_FINISH_TAG: u8 = 1;

impl Piece {
    /// The frame of a data piece.
    fn data_frame(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(LEN_PREFIX + 1 + data.len());
        // At most PIECE_DATA + 1: fits.
        out.extend_from_slice(&((1 + data.len()) as u32).to_be_bytes());
        out.push(PIECE_DATA_TAG);
        out.extend_from_slice(data);
        out
    }

    /// The frame of a finish.
    fn finish_frame() -> [u8; LEN_PREFIX + 1] {
        let mut out = [0u8; LEN_PREFIX + 1];
        out[..LEN_PREFIX].copy_from_slice(&1u32.to_be_bytes());
        out[LEN_PREFIX] = PIECE_FINISH_TAG;
        out
    }

    /// Reads a frame's body.
    fn decode(mut body: Bytes) -> Result<Self, CodecError> {
        match body.first().copied() {
            Some(PIECE_DATA_TAG) => Ok(Self::Data(body.split_off(1))),
            Some(PIECE_FINISH_TAG) if body.len() == 1 => Ok(Self::Finish),
            _ => Err(CodecError::Malformed("not a channel piece".into())),
        }
    }
}

/// A local byte stream's writing half; dropping it must end the stream
/// (tokio's Unix socket halves shut down their direction when dropped).
pub type LocalWrite = Box<dyn tokio::io::AsyncWrite + Send + Unpin>;
/// A local byte stream's reading half.
pub type LocalRead = Box<dyn tokio::io::AsyncRead + Send + Unpin>;

/// Where a channel sends.
enum Sender {
    Quic(SendStream),
    /// `None` once finished or cut: the stream was dropped, which ends it.
    Local(Option<LocalWrite>),
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Quic(s) => s.fmt(f),
            Self::Local(_) => f.write_str("Local"),
        }
    }
}

/// The sending half of a channel.
#[derive(Debug)]
pub struct ChannelSend {
    inner: Sender,
}

impl ChannelSend {
    /// The channel that sends on `inner`.
    pub fn new(inner: SendStream) -> Self {
        Self {
            inner: Sender::Quic(inner),
        }
    }

    /// The channel that sends on a local byte stream, as [`Piece`]s.
    pub fn local(inner: LocalWrite) -> Self {
        Self {
            inner: Sender::Local(Some(inner)),
        }
    }

    /// Sends `data` as it is.
    pub async fn write_all(&mut self, data: &[u8]) -> Result<(), WireError> {
        match &mut self.inner {
            Sender::Quic(s) => s.write_all(data).await?,
            Sender::Local(w) => {
                use tokio::io::AsyncWriteExt;
                let w = w.as_mut().ok_or(WireError::Closed)?;
                for chunk in data.chunks(PIECE_DATA) {
                    let piece = Piece::data_frame(chunk);
                    w.write_all(&piece).await.map_err(|_| WireError::Closed)?;
                }
                w.flush().await.map_err(|_| WireError::Closed)?;
            }
        }
        Ok(())
    }

    /// Sends one frame.
    pub async fn write_frame<T: Serialize>(&mut self, frame: &T) -> Result<(), WireError> {
        self.write_all(&codec::frame_bytes(frame)?).await
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
        self.write_all(&out).await
    }

    /// Ends the channel cleanly: the peer reads its end after everything
    /// sent.
    pub async fn finish(&mut self) -> Result<(), WireError> {
        match &mut self.inner {
            Sender::Quic(s) => s
                .finish()
                .map_err(|_| WireError::Write(quinn::WriteError::ClosedStream)),
            Sender::Local(w) => {
                use tokio::io::AsyncWriteExt;
                let mut w = w.take().ok_or(WireError::Closed)?;
                w.write_all(&Piece::finish_frame())
                    .await
                    .map_err(|_| WireError::Closed)?;
                w.shutdown().await.map_err(|_| WireError::Closed)
            }
        }
    }

    /// Abandons the channel: the peer sees a cut, not an end.
    pub fn reset(&mut self, code: VarInt) {
        match &mut self.inner {
            Sender::Quic(s) => {
                let _ = s.reset(code);
            }
            // Ended without a finish: the far side reads a cut.
            Sender::Local(w) => drop(w.take()),
        }
    }

    /// Resolves when the peer stops reading (it went away). A local
    /// stream does not say so: its writes fail instead.
    pub fn stopped(
        &self,
    ) -> impl std::future::Future<Output = Result<Option<VarInt>, quinn::StoppedError>>
           + Send
           + Sync
           + 'static {
        let stopped = match &self.inner {
            Sender::Quic(s) => Some(s.stopped()),
            Sender::Local(_) => None,
        };
        async move {
            match stopped {
                Some(stopped) => stopped.await,
                None => std::future::pending().await,
            }
        }
    }

    /// The stream's send priority (higher goes first): interactive channels
    /// ahead of copies. The process holding a reused session sets it for a
    /// local channel.
    pub fn set_priority(&self, priority: i32) {
        if let Sender::Quic(s) = &self.inner {
            let _ = s.set_priority(priority);
        }
    }
}

/// Where a channel reads from.
enum Receiver {
    Quic(RecvStream),
    /// The local stream, and what arrived of the next [`Piece`].
    Local(LocalRead, BytesMut),
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Quic(r) => r.fmt(f),
            Self::Local(..) => f.write_str("Local"),
        }
    }
}

impl Receiver {
    /// The next data, `Ok(None)` at the clean end. Cancel-safe. From
    /// QUIC it is all that has arrived, in whole packets, as many as `max`
    /// bytes need (so it may be a little more), and not one packet's
    /// worth: whoever writes it on (a TCP connection, a file) makes one
    /// system call for many packets. A local piece comes whole.
    async fn chunk(&mut self, max: usize) -> Result<Option<Bytes>, WireError> {
        match self {
            Self::Quic(r) => {
                let mut chunks: [Bytes; GATHER] = std::array::from_fn(|_| Bytes::new());
                // Waits for the first packet's data, then takes what else
                // is there; as many packets as `max` needs, at least one.
                let slots = (max / PACKET_DATA).clamp(1, GATHER);
                match r.read_chunks(&mut chunks[..slots]).await {
                    Ok(Some(1)) => Ok(Some(std::mem::take(&mut chunks[0]))),
                    Ok(Some(n)) if n > 0 => {
                        let chunks = &chunks[..n];
                        let mut all = BytesMut::with_capacity(chunks.iter().map(Bytes::len).sum());
                        chunks.iter().for_each(|c| all.extend_from_slice(c));
                        Ok(Some(all.freeze()))
                    }
                    Ok(_) => Ok(None),
                    Err(quinn::ReadError::Reset(_)) => Err(WireError::Truncated),
                    Err(e) => Err(e.into()),
                }
            }
            Self::Local(r, raw) => loop {
                if let Some(prefix) = raw.first_chunk::<LEN_PREFIX>() {
                    let len = codec::body_len(*prefix, MAX_FRAME_LEN)?;
                    if raw.len() >= LEN_PREFIX + len {
                        raw.advance(LEN_PREFIX);
                        let body = raw.split_to(len).freeze();
                        return match Piece::decode(body)? {
                            Piece::Data(data) if !data.is_empty() => Ok(Some(data)),
                            Piece::Data(_) => continue,
                            Piece::Finish => Ok(None),
                        };
                    }
                }
                use tokio::io::AsyncReadExt;
                match r.read_buf(raw).await {
                    // Ended without a finish: the holder of the other end
                    // cut the channel, or died.
                    Ok(0) | Err(_) => return Err(WireError::Truncated),
                    Ok(_) => {}
                }
            },
        }
    }
}

/// The receiving half of a channel. Reads are cancel-safe: what arrived
/// stays buffered for the next one.
#[derive(Debug)]
pub struct ChannelRecv {
    inner: Receiver,
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
            inner: Receiver::Quic(inner),
            buf: BytesMut::new(),
            ended: false,
        }
    }

    /// The channel that reads [`Piece`]s from a local byte stream.
    pub fn local(inner: LocalRead) -> Self {
        Self {
            inner: Receiver::Local(inner, BytesMut::new()),
            buf: BytesMut::new(),
            ended: false,
        }
    }

    /// Reads one more chunk into the buffer; `false` at the clean end.
    async fn fill(&mut self, at_most: usize) -> Result<bool, WireError> {
        if self.ended {
            return Ok(false);
        }
        match self.inner.chunk(at_most.max(1)).await? {
            Some(chunk) => {
                self.buf.extend_from_slice(&chunk);
                Ok(true)
            }
            None => {
                self.ended = true;
                Ok(false)
            }
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
        match self.inner.chunk(max.min(READ_CHUNK)).await? {
            // A local piece may be longer than asked: the rest stays.
            Some(mut chunk) if chunk.len() > max => {
                self.buf.extend_from_slice(&chunk.split_off(max));
                Ok(Some(chunk))
            }
            Some(chunk) => Ok(Some(chunk)),
            None => {
                self.ended = true;
                Ok(None)
            }
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

    /// Resolves once the far end of a local channel has closed its stream
    /// (what it sends after its finish is dropped): a process that holds a
    /// channel open after finishing its side is still using it. Never for
    /// a QUIC stream, whose peer says more with a reset or a stop.
    pub async fn far_end_closed(&mut self) {
        match &mut self.inner {
            Receiver::Quic(_) => std::future::pending().await,
            Receiver::Local(r, raw) => {
                use tokio::io::AsyncReadExt;
                loop {
                    raw.clear();
                    match r.read_buf(raw).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            }
        }
    }

    /// Tells the sender to stop (we will not read any more). A local
    /// stream's sender learns it when the whole local stream closes.
    pub fn stop(&mut self, code: VarInt) {
        if let Receiver::Quic(r) = &mut self.inner {
            let _ = r.stop(code);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The two halves of one local channel direction.
    fn local_pair() -> (ChannelSend, ChannelRecv) {
        let (a, b) = tokio::io::duplex(8 * 1024);
        let (_, write) = tokio::io::split(a);
        let (read, _) = tokio::io::split(b);
        (
            ChannelSend::local(Box::new(write)),
            ChannelRecv::local(Box::new(read)),
        )
    }

    #[tokio::test]
    async fn a_local_channel_carries_frames_data_and_its_clean_end() {
        let (mut send, mut recv) = local_pair();
        let big = vec![7u8; 100_000];
        let sent = big.clone();
        let writer = tokio::spawn(async move {
            send.write_frame_padded(&"request".to_string()).await?;
            send.write_all(&sent).await?;
            send.write_frame(&42u32).await?;
            send.finish().await
        });
        let request: Option<String> = recv.read_frame_padded().await.expect("request");
        assert_eq!(request.as_deref(), Some("request"));
        let mut data = vec![0u8; big.len()];
        recv.read_exact(&mut data).await.expect("data");
        assert_eq!(data, big);
        assert_eq!(recv.read_frame::<u32>().await.expect("frame"), Some(42));
        assert_eq!(recv.recv().await.expect("end"), None);
        writer.await.expect("joined").expect("written");
    }

    #[tokio::test]
    async fn a_local_channel_dropped_without_finish_reads_as_a_cut() {
        let (mut send, mut recv) = local_pair();
        send.write_all(b"partial").await.expect("written");
        send.reset(VarInt::from_u32(0));
        assert_eq!(
            recv.recv().await.expect("data").as_deref(),
            Some(&b"partial"[..])
        );
        assert!(matches!(recv.recv().await, Err(WireError::Truncated)));
        assert!(send.write_all(b"more").await.is_err());
    }

    #[tokio::test]
    async fn a_local_piece_longer_than_asked_is_handed_out_in_parts() {
        let (mut send, mut recv) = local_pair();
        let writer = tokio::spawn(async move {
            send.write_all(b"0123456789").await?;
            send.finish().await
        });
        let first = recv.recv_at_most(4).await.expect("first").expect("data");
        assert_eq!(&first[..], b"0123");
        let rest = recv.recv_at_most(100).await.expect("rest").expect("data");
        assert_eq!(&rest[..], b"456789");
        assert_eq!(recv.recv().await.expect("end"), None);
        writer.await.expect("joined").expect("written");
    }

    #[tokio::test]
    async fn an_oversized_local_piece_is_refused_before_it_is_buffered() {
        use tokio::io::AsyncWriteExt;
        let (mut a, b) = tokio::io::duplex(1024);
        let (read, _) = tokio::io::split(b);
        let mut recv = ChannelRecv::local(Box::new(read));
        a.write_all(&u32::MAX.to_be_bytes()).await.expect("written");
        assert!(matches!(recv.recv().await, Err(WireError::Codec(_))));
    }

    #[tokio::test]
    async fn a_local_piece_of_no_known_kind_is_refused() {
        use tokio::io::AsyncWriteExt;
        for body in [&[7u8][..], &[], &[1, 0]] {
            let (mut a, b) = tokio::io::duplex(1024);
            let (read, _) = tokio::io::split(b);
            let mut recv = ChannelRecv::local(Box::new(read));
            let len = u32::try_from(body.len()).expect("short");
            a.write_all(&len.to_be_bytes()).await.expect("written");
            a.write_all(body).await.expect("written");
            assert!(
                matches!(recv.recv().await, Err(WireError::Codec(_))),
                "{body:?}"
            );
        }
    }
}
