//! Connection hygiene for both ports (issue 11): at most `max_connections` open connections
//! per port (beyond it the listener stops accepting until one closes), a deadline for a new
//! connection's first bytes (the HTTP/2 preface on the gRPC port, a request head on the metrics
//! port), an idle-read timeout on the metrics port, and a growing pause after accept errors
//! (EMFILE: out of file descriptors) instead of a busy loop.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// Bytes of the HTTP/2 client preface (`PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`).
pub const HTTP2_PREFACE_BYTES: usize = 24;

/// What one port enforces on its connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Most connections open at once.
    pub max_connections: usize,
    /// A new connection must send `first_bytes` bytes within this time, or it is closed.
    pub handshake_timeout: Duration,
    /// How many bytes count as "started talking".
    pub first_bytes: usize,
    /// Close a connection that sends nothing for this long (None: never, e.g. HTTP/2 with its
    /// own keepalive).
    pub idle_timeout: Option<Duration>,
}

/// A connection under [`ConnLimits`]; holds its place in the connection cap until dropped.
pub struct Guarded {
    io: TcpStream,
    peer: SocketAddr,
    /// Bytes still expected before the handshake deadline is lifted.
    need: usize,
    deadline: Pin<Box<Sleep>>,
    idle: Option<Duration>,
    _slot: OwnedSemaphorePermit,
}

impl Guarded {
    /// The peer's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    fn timed_out(&self) -> io::Error {
        let what = if self.need > 0 {
            "no handshake within the handshake timeout"
        } else {
            "idle past the idle timeout"
        };
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("connection from {}: {what}", self.peer),
        )
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let n = buf.filled().len() - before;
                this.need = this.need.saturating_sub(n);
                if let (0, Some(idle)) = (this.need, this.idle) {
                    this.deadline.as_mut().reset(Instant::now() + idle);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let watching = this.need > 0 || this.idle.is_some();
                if watching && this.deadline.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(this.timed_out()));
                }
                Poll::Pending
            }
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for Guarded {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// Accepts connections on `listener` under `limits` until the receiver is dropped; each one
/// comes out of the returned channel. `port` names the port in log lines.
pub fn accept(
    listener: TcpListener,
    limits: ConnLimits,
    port: &'static str,
) -> mpsc::Receiver<Guarded> {
    let (tx, rx) = mpsc::channel(16);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    tokio::spawn(async move {
        let mut pause = Duration::from_millis(5);
        let mut last_warned: Option<std::time::Instant> = None;
        loop {
            // At the cap: wait for a connection to close before accepting more.
            let slot = match slots.clone().try_acquire_owned() {
                Ok(s) => s,
                Err(_) => {
                    // At most one line per 10 s while the cap is hit.
                    if last_warned.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                        tracing::warn!(
                            port,
                            max_connections = limits.max_connections,
                            "connection cap reached; not accepting until one closes"
                        );
                        last_warned = Some(std::time::Instant::now());
                    }
                    tokio::select! {
                        s = slots.clone().acquire_owned() => match s { Ok(s) => s, Err(_) => return },
                        _ = tx.closed() => return,
                    }
                }
            };
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = tx.closed() => return,
            };
            match accepted {
                Ok((io, peer)) => {
                    pause = Duration::from_millis(5);
                    let _ = io.set_nodelay(true);
                    let conn = Guarded {
                        io,
                        peer,
                        need: limits.first_bytes,
                        deadline: Box::pin(tokio::time::sleep(limits.handshake_timeout)),
                        idle: limits.idle_timeout,
                        _slot: slot,
                    };
                    if tx.send(conn).await.is_err() {
                        return;
                    }
                }
                Err(e) if is_connection_error(&e) => {}
                Err(e) => {
                    // EMFILE / ENFILE / ENOBUFS...: pause (5 ms doubling to 1 s) instead of spinning.
                    tracing::warn!(port, error = %e, pause_ms = pause.as_millis() as u64, "accept failed; pausing");
                    drop(slot);
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = tx.closed() => return,
                    }
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
            }
        }
    });
    rx
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// The gRPC port's incoming connections, as tonic's `serve_with_incoming` takes them.
pub fn incoming(
    listener: TcpListener,
    limits: ConnLimits,
) -> impl tokio_stream::Stream<Item = io::Result<Guarded>> {
    use tokio_stream::StreamExt;
    tokio_stream::wrappers::ReceiverStream::new(accept(listener, limits, "grpc")).map(Ok)
}

/// The metrics port's listener for `axum::serve`.
pub struct MetricsListener {
    rx: mpsc::Receiver<Guarded>,
    addr: SocketAddr,
}

impl MetricsListener {
    /// Accepts on `listener` under `limits`.
    pub fn new(listener: TcpListener, limits: ConnLimits) -> io::Result<Self> {
        let addr = listener.local_addr()?;
        Ok(Self {
            rx: accept(listener, limits, "metrics"),
            addr,
        })
    }
}

impl axum::serve::Listener for MetricsListener {
    type Io = Guarded;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Guarded, SocketAddr) {
        match self.rx.recv().await {
            Some(c) => {
                let peer = c.peer();
                (c, peer)
            }
            // The accept task stopped: nothing will come any more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.addr)
    }
}
