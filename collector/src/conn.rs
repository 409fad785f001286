//! Bounded connections: each listener (HTTP, gRPC) has a global and a per-source limit, and
//! closes connections that neither send nor receive for its idle timeout. A flood of idle or
//! half-open connections on the HTTP port is refused there and never reaches the gRPC
//! port's budget, so sensors can still connect; every refusal and idle close is counted in
//! `/metrics` and logged (at most once per [`LOG_EVERY`] per listener).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use std::future::Future as _;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use tokio::time::Sleep;

use crate::auth::source_key;
use crate::metrics::{inc, Metrics};

/// How often a listener logs refusals.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// One listener's limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnLimits {
    /// Open connections at most.
    pub max: usize,
    /// Open connections from one source address (an IPv6 source by its /64) at most.
    pub per_source: usize,
    /// A connection with no bytes in or out for this long is closed.
    pub idle: Duration,
}

impl ConnLimits {
    /// The HTTP listener's defaults.
    pub const HTTP: ConnLimits = ConnLimits {
        max: 1024,
        per_source: 64,
        idle: Duration::from_secs(15),
    };
    /// The gRPC listener's defaults (streams stay open; HTTP/2 pings keep them busy).
    pub const GRPC: ConnLimits = ConnLimits {
        max: 8192,
        per_source: 1024,
        idle: Duration::from_secs(90),
    };
}

/// Which listener, for metrics and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    /// The HTTP API port.
    Http,
    /// The gRPC port.
    Grpc,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    by_source: HashMap<IpAddr, usize>,
    refused_since_log: u64,
    last_log: Option<Instant>,
}

/// Counts open connections of one listener.
#[derive(Debug)]
pub struct Tracker {
    limits: ConnLimits,
    which: Listener,
    counts: Mutex<Counts>,
    metrics: Arc<Metrics>,
}

impl Tracker {
    /// A tracker for one listener.
    pub fn new(which: Listener, limits: ConnLimits, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Tracker {
            limits,
            which,
            counts: Mutex::default(),
            metrics,
        })
    }

    fn open_gauge(&self) -> &AtomicU64 {
        match self.which {
            Listener::Http => &self.metrics.conn_open_http,
            Listener::Grpc => &self.metrics.conn_open_grpc,
        }
    }

    /// Admits a connection from `peer`, or says why not.
    fn admit(self: &Arc<Self>, peer: SocketAddr) -> Result<Permit, &'static str> {
        let src = source_key(peer.ip());
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let from_src = c.by_source.get(&src).copied().unwrap_or(0);
        let why = if c.total >= self.limits.max {
            Some("connection limit")
        } else if from_src >= self.limits.per_source {
            Some("per-source connection limit")
        } else {
            None
        };
        if let Some(why) = why {
            inc(match self.which {
                Listener::Http => &self.metrics.conn_refused_http,
                Listener::Grpc => &self.metrics.conn_refused_grpc,
            });
            c.refused_since_log += 1;
            if c.last_log.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
                log::warn!(
                    "{:?} listener: refused {} connection(s) ({why}: {} open, {} from {src}; limits {} and {} per source)",
                    self.which,
                    c.refused_since_log,
                    c.total,
                    from_src,
                    self.limits.max,
                    self.limits.per_source
                );
                c.refused_since_log = 0;
                c.last_log = Some(Instant::now());
            }
            return Err(why);
        }
        c.total += 1;
        *c.by_source.entry(src).or_insert(0) += 1;
        self.open_gauge().fetch_add(1, Ordering::Relaxed);
        Ok(Permit {
            tracker: Arc::clone(self),
            src,
        })
    }

    /// Accepts the next connection within the limits; refused ones are closed at once.
    pub async fn accept(self: &Arc<Self>, listener: &TcpListener) -> (Limited, SocketAddr) {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    let Ok(permit) = self.admit(peer) else {
                        drop(stream);
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    return (Limited::new(stream, permit, self.limits.idle), peer);
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    log::error!("{:?} listener: accept failed: {e}", self.which);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// An admitted connection's place in its tracker; freed on drop.
#[derive(Debug)]
pub struct Permit {
    tracker: Arc<Tracker>,
    src: IpAddr,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut c = self
            .tracker
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.by_source.get_mut(&self.src) {
            *n -= 1;
            if *n == 0 {
                c.by_source.remove(&self.src);
            }
        }
        self.tracker.open_gauge().fetch_sub(1, Ordering::Relaxed);
    }
}

/// A TCP connection that holds its permit and closes itself when idle.
#[derive(Debug)]
pub struct Limited {
    inner: TcpStream,
    permit: Permit,
    idle: Duration,
    last: Instant,
    timer: Pin<Box<Sleep>>,
}

impl Limited {
    fn new(inner: TcpStream, permit: Permit, idle: Duration) -> Self {
        Limited {
            inner,
            permit,
            idle,
            last: Instant::now(),
            timer: Box::pin(tokio::time::sleep(idle)),
        }
    }

    /// The peer's address.
    pub fn peer(&self) -> io::Result<SocketAddr> {
        self.inner.peer_addr()
    }

    /// Polls the idle timer: an error once the connection has been idle too long.
    fn check_idle(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return Ok(());
            }
            let since = self.last.elapsed();
            if since >= self.idle {
                inc(&self.permit.tracker.metrics.conn_idle_closed);
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "connection idle for too long",
                ));
            }
            let at = tokio::time::Instant::now() + (self.idle - since);
            self.timer.as_mut().reset(at);
        }
    }

    fn touched(&mut self) {
        self.last = Instant::now();
    }
}

impl AsyncRead for Limited {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    self.touched();
                }
                Poll::Ready(r)
            }
            Poll::Pending => match self.check_idle(cx) {
                Ok(()) => Poll::Pending,
                Err(e) => Poll::Ready(Err(e)),
            },
        }
    }
}

impl AsyncWrite for Limited {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, data) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.touched();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match self.check_idle(cx) {
                Ok(()) => Poll::Pending,
                Err(e) => Poll::Ready(Err(e)),
            },
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for Limited {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// The peer of an HTTP connection, as axum's connect info.
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, HttpListener>>
    for Peer
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, HttpListener>) -> Self {
        Peer(*stream.remote_addr())
    }
}

/// The HTTP listener for `axum::serve`.
#[derive(Debug)]
pub struct HttpListener {
    /// The socket.
    pub listener: TcpListener,
    /// Its tracker.
    pub tracker: Arc<Tracker>,
}

impl axum::serve::Listener for HttpListener {
    type Io = Limited;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        self.tracker.accept(&self.listener).await
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

type AcceptFuture = Pin<Box<dyn std::future::Future<Output = (Limited, SocketAddr)> + Send>>;

/// The gRPC listener as a stream of admitted connections, for tonic's
/// `serve_with_incoming_shutdown`.
pub struct GrpcIncoming {
    listener: Arc<TcpListener>,
    tracker: Arc<Tracker>,
    pending: Option<AcceptFuture>,
}

impl GrpcIncoming {
    /// Admits connections from `listener` within `tracker`'s limits.
    pub fn new(listener: TcpListener, tracker: Arc<Tracker>) -> Self {
        GrpcIncoming {
            listener: Arc::new(listener),
            tracker,
            pending: None,
        }
    }
}

impl tokio_stream::Stream for GrpcIncoming {
    type Item = io::Result<Limited>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let fut = this.pending.get_or_insert_with(|| {
            let listener = Arc::clone(&this.listener);
            let tracker = Arc::clone(&this.tracker);
            Box::pin(async move { tracker.accept(&listener).await })
        });
        match fut.as_mut().poll(cx) {
            Poll::Ready((conn, _)) => {
                this.pending = None;
                Poll::Ready(Some(Ok(conn)))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}
