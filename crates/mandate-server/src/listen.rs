//! The broker's listeners: an accept loop on hyper's HTTP/1 server with
//! bounds an attacker cannot hold open.
//!
//! - **Connections**: at most [`Limits::max_connections`] open, at most
//!   [`Limits::max_connections_per_client`] from one client address (an
//!   IPv6 client is its /64). A connection beyond either is answered at once
//!   with `503` and closed, without reading anything, and the refusal is
//!   audited through the throttle (one event per address per second, with a
//!   count).
//! - **Request heads**: a request's line and headers must arrive within
//!   [`Limits::header_read_timeout`] of its first byte (of the accept, for a
//!   new connection), however slowly they trickle.
//! - **Idle keep-alive**: a connection with no request in flight is closed
//!   after [`Limits::idle_timeout`] without a byte from the client.
//! - **Stalled writes**: a response the client does not read for
//!   [`Limits::idle_timeout`] closes the connection.
//!
//! `axum::serve` has none of these bounds, hence this module; every
//! listener (the broker's TCP port, and `mandate exec`'s agent socket) is
//! served by [`serve`].

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, Response};
use axum::serve::Listener;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use mandate_core::limits::{ConnectionSlots, SlotRefusal};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// How long and how many.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A request's head must arrive within this of its first byte.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight closes after this without a byte.
    pub idle_timeout: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
    /// Most connections open at once from one client address (IPv6: its /64).
    pub max_connections_per_client: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 4096,
            max_connections_per_client: 256,
        }
    }
}

/// Where a connection is in its life, for the timeouts.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Waiting for a request head; `started` once its first byte came.
    Waiting { deadline: Instant, started: bool },
    /// This many requests in flight (their heads have arrived).
    Busy(usize),
}

/// A connection's phase, shared by its IO and its requests, and the waker
/// of a read left pending while busy (woken when the phase changes, so that
/// the read's deadline is armed).
#[derive(Debug)]
struct Watch {
    limits: Limits,
    phase: Mutex<(Phase, Option<std::task::Waker>)>,
}

impl Watch {
    fn new(limits: Limits) -> Self {
        Watch {
            limits,
            phase: Mutex::new((
                Phase::Waiting {
                    deadline: Instant::now() + limits.header_read_timeout,
                    started: false,
                },
                None,
            )),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Phase) -> T) -> T {
        f(&mut self.phase.lock().unwrap_or_else(|p| p.into_inner()).0)
    }

    /// Remembers who to wake when a busy connection goes back to waiting.
    fn wake_when_waiting(&self, waker: &std::task::Waker) {
        let mut g = self.phase.lock().unwrap_or_else(|p| p.into_inner());
        match g.0 {
            Phase::Busy(_) => g.1 = Some(waker.clone()),
            Phase::Waiting { .. } => waker.wake_by_ref(),
        }
    }

    /// When reading must have finished the head, if a head is awaited.
    fn read_deadline(&self) -> Option<Instant> {
        self.with(|p| match *p {
            Phase::Waiting { deadline, .. } => Some(deadline),
            Phase::Busy(_) => None,
        })
    }

    /// Bytes came: the first of a head starts its clock.
    fn bytes_read(&self) {
        let header = self.limits.header_read_timeout;
        self.with(|p| {
            if let Phase::Waiting {
                deadline,
                started: false,
            } = *p
            {
                *p = Phase::Waiting {
                    deadline: deadline.min(Instant::now() + header),
                    started: true,
                };
            }
        });
    }

    fn request_started(&self) {
        self.with(|p| {
            *p = match *p {
                Phase::Busy(n) => Phase::Busy(n + 1),
                Phase::Waiting { .. } => Phase::Busy(1),
            }
        });
    }

    fn request_done(&self) {
        let idle = self.limits.idle_timeout;
        let waker = {
            let mut g = self.phase.lock().unwrap_or_else(|p| p.into_inner());
            g.0 = match g.0 {
                Phase::Busy(n) if n > 1 => Phase::Busy(n - 1),
                _ => Phase::Waiting {
                    deadline: Instant::now() + idle,
                    started: false,
                },
            };
            match g.0 {
                Phase::Waiting { .. } => g.1.take(),
                Phase::Busy(_) => None,
            }
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// Marks its request done when dropped (the response body was sent or abandoned).
struct RequestDone(Arc<Watch>);

impl Drop for RequestDone {
    fn drop(&mut self) {
        self.0.request_done();
    }
}

/// A response body that ends its request's busy phase when dropped.
struct Tracked {
    inner: Body,
    _done: RequestDone,
}

impl hyper::body::Body for Tracked {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The router, as one connection sees it: its client address is the
/// request's `ConnectInfo`, and each request moves the connection's phase.
#[derive(Clone)]
struct PerConnection<A> {
    app: TowerToHyperService<Router>,
    addr: A,
    watch: Arc<Watch>,
}

type Answer = Pin<Box<dyn Future<Output = Result<Response<Tracked>, Infallible>> + Send>>;

impl<A: Clone + Send + Sync + 'static> hyper::service::Service<Request<Incoming>>
    for PerConnection<A>
{
    type Response = Response<Tracked>;
    type Error = Infallible;
    type Future = Answer;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        req.extensions_mut().insert(ConnectInfo(self.addr.clone()));
        self.watch.request_started();
        let done = RequestDone(Arc::clone(&self.watch));
        let answer = self.app.call(req);
        Box::pin(async move {
            let resp = answer.await?;
            Ok(resp.map(|inner| Tracked { inner, _done: done }))
        })
    }
}

/// A connection's socket, failing reads and writes past their deadlines.
struct Watched<T> {
    io: T,
    watch: Arc<Watch>,
    read_timer: Pin<Box<Sleep>>,
    write_timer: Option<Pin<Box<Sleep>>>,
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, what.to_owned())
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let deadline = self.watch.read_deadline();
        if deadline.is_some_and(|d| d <= Instant::now()) {
            return Poll::Ready(Err(timed_out("the request head did not arrive in time")));
        }
        let before = buf.filled().len();
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.watch.bytes_read();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                // Re-read: the first bytes of a head may have moved it.
                let Some(d) = self.watch.read_deadline() else {
                    // Busy: no deadline until the response is done.
                    self.watch.wake_when_waiting(cx.waker());
                    return Poll::Pending;
                };
                if self.read_timer.deadline() != d {
                    self.read_timer.as_mut().reset(d);
                }
                match self.read_timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(timed_out(
                        "the connection was idle or its request head too slow",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
            other => other,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.io).poll_write(cx, data) {
            Poll::Pending => self.stalled(cx).map(|r| r.map(|()| 0)),
            done => {
                self.write_timer = None;
                done
            }
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.io).poll_flush(cx) {
            Poll::Pending => self.stalled(cx),
            done => {
                self.write_timer = None;
                done
            }
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.io).poll_write_vectored(cx, bufs) {
            Poll::Pending => self.stalled(cx).map(|r| r.map(|()| 0)),
            done => {
                self.write_timer = None;
                done
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl<T> Watched<T> {
    /// A write that cannot progress: pending until the idle timeout, then an error.
    fn stalled(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let idle = self.watch.limits.idle_timeout;
        let timer = self
            .write_timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(timed_out("the client stopped reading"))),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The key connections are counted under: the client's address, an IPv6
/// one by its /64 (one host usually holds the whole /64).
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

/// What a listener's addresses say about the client.
pub trait ClientAddr: Clone + Send + Sync + 'static {
    /// The client's network address, when there is one (not on a Unix socket).
    fn ip(&self) -> Option<IpAddr>;
}

impl ClientAddr for std::net::SocketAddr {
    fn ip(&self) -> Option<IpAddr> {
        Some(std::net::SocketAddr::ip(self))
    }
}

impl ClientAddr for tokio::net::unix::SocketAddr {
    fn ip(&self) -> Option<IpAddr> {
        None
    }
}

/// Called with each connection refused over a limit.
pub type OnRefused = Arc<dyn Fn(Option<IpAddr>, SlotRefusal) + Send + Sync>;

/// Open connections, shared by the accept loop and the connections.
type Slots = Arc<Mutex<ConnectionSlots<Option<IpAddr>>>>;

/// Gives a connection's slot back when the connection ends.
struct Slot {
    slots: Slots,
    key: Option<IpAddr>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .release(&self.key);
    }
}

/// Answers a connection over a limit with 503 and closes it, without
/// waiting for it.
fn refuse<T: AsyncRead + AsyncWrite + Unpin>(io: T, why: SlotRefusal) {
    let body = serde_json::json!({
        "error": "temporarily_unavailable",
        "error_description": why.to_string(),
    })
    .to_string();
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let msg = format!("{head}{body}");
    // One non-blocking attempt: a client that cannot take 300 bytes now
    // gets a closed connection instead.
    let mut io = io;
    let mut cx = Context::from_waker(std::task::Waker::noop());
    // What the client already sent is read and dropped, so that closing
    // sends FIN (not RST, which could discard our answer on its side).
    let mut scratch = [0u8; 4096];
    let _ = Pin::new(&mut io).poll_read(&mut cx, &mut ReadBuf::new(&mut scratch));
    let _ = Pin::new(&mut io).poll_write(&mut cx, msg.as_bytes());
    let _ = Pin::new(&mut io).poll_shutdown(&mut cx);
}

/// How long shutdown waits for open connections to finish.
const DRAIN: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` within `limits` until `shutdown` resolves,
/// then lets open connections finish (at most 10 s).
pub async fn serve<L>(
    mut listener: L,
    app: Router,
    limits: Limits,
    on_refused: Option<OnRefused>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) where
    L: Listener,
    L::Addr: ClientAddr,
{
    let slots: Slots = Arc::new(Mutex::new(ConnectionSlots::new(
        limits.max_connections,
        limits.max_connections_per_client,
    )));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (io, addr) = tokio::select! {
            c = listener.accept() => c,
            () = &mut shutdown => break,
        };
        let key = addr.ip().map(client_key);
        let admitted = slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .acquire(&key);
        if let Err(why) = admitted {
            refuse(io, why);
            if let Some(f) = &on_refused {
                f(key, why);
            }
            continue;
        }
        let slot = Slot {
            slots: Arc::clone(&slots),
            key,
        };
        tokio::spawn(connection(
            io,
            addr,
            app.clone(),
            limits,
            slot,
            stop_rx.clone(),
        ));
    }
    drop(stop_rx);
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(DRAIN, stop_tx.closed()).await;
}

/// Serves one connection until it ends, times out, or the server stops.
async fn connection<T, A>(
    io: T,
    addr: A,
    app: Router,
    limits: Limits,
    _slot: Slot,
    mut stop: tokio::sync::watch::Receiver<()>,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    A: ClientAddr,
{
    let watch = Arc::new(Watch::new(limits));
    let io = Watched {
        io,
        watch: Arc::clone(&watch),
        read_timer: Box::pin(tokio::time::sleep(limits.header_read_timeout)),
        write_timer: None,
    };
    let service = PerConnection {
        app: TowerToHyperService::new(app),
        addr,
        watch,
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    // Our own deadlines (above) replace hyper's header timer, which would
    // also close idle keep-alive connections after the header timeout.
    builder.header_read_timeout(None).max_buf_size(64 * 1024);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = stop.changed() => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}
