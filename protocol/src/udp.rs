//! The UDP socket under every Latchkey QUIC endpoint, relay and device
//! alike. quinn's own socket layer (quinn-udp) sets socket options for
//! batching, ECN and the packet's destination address, and refuses to work
//! at all where one of them is refused: wine refuses the Windows ones, and
//! gVisor some Linux ones. Then the endpoint runs on a plain socket (one
//! datagram per call, no ECN), which is slower but works. Only built with
//! the `quinn` feature.

use std::{
    fmt,
    io::{self, IoSliceMut},
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use quinn::{
    udp::{RecvMeta, Transmit},
    AsyncUdpSocket, Runtime, TokioRuntime, UdpPoller,
};

/// `socket` made ready for quinn: its own layer where the system allows
/// it, else a plain socket. Must run inside a tokio runtime.
pub fn async_socket(socket: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
    async_socket_with(socket, false)
}

/// [`async_socket`], with quinn's layer skipped when `plain` (how the tests
/// reach the fallback on a system that would not need it).
fn async_socket_with(
    socket: std::net::UdpSocket,
    plain: bool,
) -> io::Result<Arc<dyn AsyncUdpSocket>> {
    if !plain {
        let spare = socket.try_clone()?;
        match TokioRuntime.wrap_udp_socket(socket) {
            Ok(wrapped) => return Ok(wrapped),
            Err(refused) => {
                tracing::debug!(
                    error = %refused,
                    "the system refused a UDP socket option; using a plain socket \
                     (no batching, no ECN)"
                );
                return PlainSocket::wrap(spare);
            }
        }
    }
    PlainSocket::wrap(socket)
}

/// A UDP socket with no options beyond the system's defaults.
struct PlainSocket {
    io: Arc<tokio::net::UdpSocket>,
}

impl PlainSocket {
    fn wrap(socket: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        socket.set_nonblocking(true)?;
        Ok(Arc::new(Self {
            io: Arc::new(tokio::net::UdpSocket::from_std(socket)?),
        }))
    }
}

impl fmt::Debug for PlainSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlainSocket").finish_non_exhaustive()
    }
}

/// Says when a [`PlainSocket`] can send again.
struct Writable(Arc<tokio::net::UdpSocket>);

impl fmt::Debug for Writable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Writable")
    }
}

impl UdpPoller for Writable {
    fn poll_writable(self: Pin<&mut Self>, cx: &mut Context) -> Poll<io::Result<()>> {
        self.0.poll_send_ready(cx)
    }
}

impl AsyncUdpSocket for PlainSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(Writable(self.io.clone()))
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        // quinn asks for one segment at a time (`max_transmit_segments`).
        let segment = transmit.segment_size.unwrap_or(transmit.contents.len());
        for datagram in transmit.contents.chunks(segment.max(1)) {
            self.io.try_send_to(datagram, transmit.destination)?;
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let (Some(buf), Some(meta)) = (bufs.first_mut(), meta.first_mut()) else {
            return Poll::Ready(Ok(0));
        };
        let mut read = tokio::io::ReadBuf::new(buf);
        let from = std::task::ready!(self.io.poll_recv_from(cx, &mut read))?;
        let len = read.filled().len();
        *meta = RecvMeta {
            addr: from,
            len,
            stride: len,
            ecn: None,
            dst_ip: None,
        };
        Poll::Ready(Ok(1))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.local_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Datagrams cross between a plain socket and quinn's own, both ways,
    /// each whole and with its source.
    #[tokio::test]
    async fn a_plain_socket_sends_and_receives_whole_datagrams() {
        let bind = || std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let plain = async_socket_with(bind(), true).unwrap();
        let quinns = async_socket(bind()).unwrap();
        for (from, to) in [(&plain, &quinns), (&quinns, &plain)] {
            let destination = to.local_addr().unwrap();
            for size in [1usize, 1200, 1452] {
                let contents = vec![size as u8; size];
                let transmit = Transmit {
                    destination,
                    ecn: None,
                    contents: &contents,
                    segment_size: None,
                    src_ip: None,
                };
                let mut writable = from.clone().create_io_poller();
                std::future::poll_fn(|cx| writable.as_mut().poll_writable(cx))
                    .await
                    .unwrap();
                from.try_send(&transmit).unwrap();
                let mut buf = vec![0u8; 64 * 1024];
                let mut meta = [RecvMeta::default()];
                let n = std::future::poll_fn(|cx| {
                    to.poll_recv(cx, &mut [IoSliceMut::new(&mut buf)], &mut meta)
                })
                .await
                .unwrap();
                assert_eq!(n, 1);
                assert_eq!(meta[0].len, size);
                assert_eq!(meta[0].addr, from.local_addr().unwrap());
                assert_eq!(&buf[..size], &contents[..]);
            }
        }
    }
}
