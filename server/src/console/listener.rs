//! How the console takes connections: plain or TLS (axum-server), with a
//! cap on connections held at once and a deadline for a request's headers,
//! so slow or idle clients cannot take the relay's file descriptors; and a
//! stop that waits for requests in flight at most a moment.

use std::{
    collections::HashMap,
    future::Future,
    io,
    net::IpAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use axum::Router;
use axum_server::accept::{Accept, DefaultAcceptor};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    sync::{OwnedSemaphorePermit, Semaphore},
};
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// Console connections held at once; more are closed as they come.
const MAX_CONNECTIONS: usize = 256;
/// Console connections one source (an IPv4 address, an IPv6 /64) may hold.
const MAX_PER_SOURCE: usize = 16;
/// Time for a request's headers, and for a new connection's first request.
const HEADER_DEADLINE: Duration = Duration::from_secs(10);
/// How long a stop waits for requests in flight.
pub(super) const STOP_GRACE: Duration = Duration::from_secs(2);

/// An acceptor that holds one of a fixed number of places per connection,
/// and at most [`MAX_PER_SOURCE`] of them per source.
#[derive(Clone)]
struct Capped<A> {
    inner: A,
    places: Arc<Semaphore>,
    sources: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// A source's share of the places, given back when its connection closes.
struct SourcePlace {
    source: IpAddr,
    sources: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl SourcePlace {
    fn take(sources: &Arc<Mutex<HashMap<IpAddr, usize>>>, source: IpAddr) -> Option<Self> {
        let mut map = sources.lock().unwrap_or_else(|p| p.into_inner());
        let held = map.entry(source).or_insert(0);
        if *held >= MAX_PER_SOURCE {
            return None;
        }
        *held += 1;
        Some(Self {
            source,
            sources: sources.clone(),
        })
    }
}

impl Drop for SourcePlace {
    fn drop(&mut self) {
        let mut map = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(held) = map.get_mut(&self.source) {
            *held -= 1;
            if *held == 0 {
                map.remove(&self.source);
            }
        }
    }
}

/// An IPv6 source's /64, an IPv4 source as it is.
fn source_of(addr: IpAddr) -> IpAddr {
    match addr.to_canonical() {
        IpAddr::V6(v6) => {
            let mut octets = v6.octets();
            octets[8..].fill(0);
            IpAddr::from(octets)
        }
        v4 => v4,
    }
}

/// A connection with its places, given back when it closes.
struct Held<S> {
    stream: S,
    _place: OwnedSemaphorePermit,
    _source: Option<SourcePlace>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Held<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Held<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

type Accepted<S, V> = Pin<Box<dyn Future<Output = io::Result<(Held<S>, V)>> + Send>>;

impl<V, A> Accept<TcpStream, V> for Capped<A>
where
    A: Accept<TcpStream, V>,
    A::Future: Send + 'static,
    A::Stream: Send + 'static,
    A::Service: Send + 'static,
{
    type Stream = Held<A::Stream>;
    type Service = A::Service;
    type Future = Accepted<A::Stream, A::Service>;

    fn accept(&self, stream: TcpStream, service: V) -> Self::Future {
        let place = self.places.clone().try_acquire_owned();
        // A connection whose peer is unknown is held only by the total cap.
        let source: Result<Option<SourcePlace>, ()> = match stream.peer_addr() {
            Ok(peer) => SourcePlace::take(&self.sources, source_of(peer.ip()))
                .map(Some)
                .ok_or(()),
            Err(_) => Ok(None),
        };
        // Dropped unstarted (closing the connection) when there is no place.
        let accepted = self.inner.accept(stream, service);
        Box::pin(async move {
            let place =
                place.map_err(|_| io::Error::other("too many admin console connections"))?;
            let source = source.map_err(|_| {
                io::Error::other("too many admin console connections from one source")
            })?;
            let (stream, service) = accepted.await?;
            Ok((
                Held {
                    stream,
                    _place: place,
                    _source: source,
                },
                service,
            ))
        })
    }
}

/// Serves `app` on `listener` (over TLS with `tls`) until `shutdown`.
pub(super) fn serve(
    listener: std::net::TcpListener,
    tls: Option<rustls::ServerConfig>,
    app: Router,
    shutdown: CancellationToken,
) -> io::Result<tokio::task::JoinHandle<()>> {
    let places = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let handle = axum_server::Handle::new();
    let stopper = handle.clone();
    tokio::spawn(async move {
        shutdown.cancelled().await;
        stopper.graceful_shutdown(Some(STOP_GRACE));
    });
    let service = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
    let mut server = axum_server::from_tcp(listener)?
        .handle(handle)
        .first_request_timeout(HEADER_DEADLINE);
    server
        .http_builder()
        .http1()
        .header_read_timeout(HEADER_DEADLINE);
    let log = |served: io::Result<()>| {
        if let Err(e) = served {
            warn!("admin console stopped: {e}");
        }
    };
    Ok(match tls {
        Some(tls) => {
            let rustls = axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(tls));
            let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(rustls)
                .handshake_timeout(HEADER_DEADLINE);
            let server = server.acceptor(Capped {
                inner: acceptor,
                places,
                sources: Arc::default(),
            });
            tokio::spawn(async move { log(server.serve(service).await) })
        }
        None => {
            let server = server.acceptor(Capped {
                inner: DefaultAcceptor,
                places,
                sources: Arc::default(),
            });
            tokio::spawn(async move { log(server.serve(service).await) })
        }
    })
}
