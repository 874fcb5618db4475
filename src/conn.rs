//! Connection limits of a listener: how many connections may be open at once, and how long a
//! request head may take to arrive (slowloris).
//!
//! Owns: [`Guarded`], a Pingora [`ServerApp`] around another one. Past `max_connections` open
//! connections, a new one is closed at once (counted, never queued: a queue would hold the
//! sockets the cap protects). Every accepted connection is read through [`HeadDeadline`]: from
//! the first byte of a request head to its blank line, at most `header_timeout` may pass,
//! whatever the pace of single reads (Pingora's own timeouts are per read, so a client sending
//! one byte every few seconds could hold a connection forever). A connection that speaks
//! HTTP/2 or is upgraded (`101`) leaves the head deadline: its frames are no request heads.
//!
//! Does not own: TLS handshakes (Pingora's) or per-request limits (`[limits]`, `proxy`).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// The limits of one listener.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections open at once; more are closed as they arrive.
    pub max_connections: usize,
    /// From a request head's first byte to its end.
    pub header_timeout: Duration,
}

/// What the limits did, for metrics.
#[derive(Debug, Default)]
pub struct Counters {
    /// Connections open now.
    pub open: AtomicUsize,
    /// Connections closed on arrival, over `max_connections`.
    pub refused: AtomicU64,
    /// Connections closed because a request head took longer than `header_timeout`.
    pub head_timeouts: AtomicU64,
}

/// `inner`, behind the listener's limits.
pub struct Guarded<A> {
    inner: Arc<A>,
    limits: Limits,
    counters: Arc<Counters>,
}

impl<A> Guarded<A> {
    /// `inner` behind `limits`, counting in `counters`.
    pub fn new(inner: A, limits: Limits, counters: Arc<Counters>) -> Self {
        Guarded {
            inner: Arc::new(inner),
            limits,
            counters,
        }
    }

    /// The wrapped application (to set its options).
    pub fn inner_mut(&mut self) -> Option<&mut A> {
        Arc::get_mut(&mut self.inner)
    }
}

/// A connection counted open while it lives.
struct Open(Arc<Counters>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Open {
    fn take(counters: &Arc<Counters>, max: usize) -> Option<Open> {
        let mut now = counters.open.load(Ordering::Acquire);
        loop {
            if now >= max {
                counters.refused.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            match counters.open.compare_exchange_weak(
                now,
                now + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(Open(counters.clone())),
                Err(seen) => now = seen,
            }
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Guarded<A> {
    async fn process_new(
        self: &Arc<Self>,
        session: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let _open = Open::take(&self.counters, self.limits.max_connections)?;
        let mut stream: Stream = Box::new(HeadDeadline::new(
            session,
            self.limits.header_timeout,
            self.counters.clone(),
        ));
        // Reused (keep-alive) connections stay here, wrapped once and counted once.
        loop {
            stream = self.inner.process_new(stream, shutdown).await?;
            if *shutdown.borrow() {
                return None;
            }
        }
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}

/// Where a connection is, as its bytes tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Between requests (or before the first): no deadline.
    Idle,
    /// A request head is arriving: the deadline runs.
    Head,
    /// The head is in; the body and the answer follow: no deadline.
    Body,
    /// HTTP/2 or an upgraded connection: no request heads to time.
    Free,
}

/// A stream whose request heads must arrive within a deadline.
#[derive(Debug)]
pub struct HeadDeadline {
    inner: Stream,
    phase: Phase,
    timeout: Duration,
    deadline: Pin<Box<Sleep>>,
    /// The last bytes of the head so far (its end may straddle two reads).
    tail: [u8; 3],
    /// Bytes of the connection read so far (an HTTP/2 preface is looked for at the start).
    seen: usize,
    counters: Arc<Counters>,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

impl HeadDeadline {
    fn new(inner: Stream, timeout: Duration, counters: Arc<Counters>) -> Self {
        HeadDeadline {
            inner,
            phase: Phase::Idle,
            timeout,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            tail: [0; 3],
            seen: 0,
            counters,
        }
    }

    /// Reads `new` bytes of the connection.
    fn saw(&mut self, new: &[u8]) {
        if new.is_empty() || self.phase == Phase::Free {
            return;
        }
        if self.seen < H2_PREFACE.len() {
            let n = new.len().min(H2_PREFACE.len() - self.seen);
            if new[..n] == H2_PREFACE[self.seen..self.seen + n] && self.seen + n == H2_PREFACE.len()
            {
                self.phase = Phase::Free;
                return;
            }
        }
        self.seen = self.seen.saturating_add(new.len());
        if self.phase == Phase::Idle {
            self.phase = Phase::Head;
            self.tail = [0; 3];
            self.deadline
                .as_mut()
                .reset(crate::clock::instant() + self.timeout);
        }
        if self.phase == Phase::Head && head_ends(&self.tail, new) {
            self.phase = Phase::Body;
        }
        let mut joined = [0u8; 3];
        let keep = new.len().min(3);
        joined[..3 - keep].copy_from_slice(&self.tail[keep..]);
        joined[3 - keep..].copy_from_slice(&new[new.len() - keep..]);
        self.tail = joined;
    }

    /// Writes `out` to the connection: an answer ends the request (the next bytes start a new
    /// head); an interim `1xx` does not (the body follows it), and a `101` frees the connection.
    fn wrote(&mut self, out: &[u8]) {
        if self.phase == Phase::Free || out.is_empty() {
            return;
        }
        if out.starts_with(b"HTTP/1.1 101") || out.starts_with(b"HTTP/1.0 101") {
            self.phase = Phase::Free;
        } else if !(out.starts_with(b"HTTP/1.1 1") || out.starts_with(b"HTTP/1.0 1")) {
            self.phase = Phase::Idle;
        }
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.phase == Phase::Head && self.deadline.as_mut().poll(cx).is_ready()
    }
}

/// Whether a head ends (`\r\n\r\n`) in `new`, read after `tail`.
fn head_ends(tail: &[u8; 3], new: &[u8]) -> bool {
    let mut window = [0u8; 4];
    let joined = tail.iter().chain(new.iter());
    let mut n = 0usize;
    for b in joined {
        window = [window[1], window[2], window[3], *b];
        n += 1;
        if n >= 4 && &window == b"\r\n\r\n" {
            return true;
        }
    }
    false
}

impl AsyncRead for HeadDeadline {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let new = buf.filled()[before..].to_vec();
                this.saw(&new);
                Poll::Ready(Ok(()))
            }
            Poll::Pending if this.expired(cx) => {
                this.counters.head_timeouts.fetch_add(1, Ordering::Relaxed);
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "request head not complete within header_timeout",
                )))
            }
            other => other,
        }
    }
}

impl AsyncWrite for HeadDeadline {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            this.wrote(&buf[..*n]);
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let (Poll::Ready(Ok(n)), Some(first)) = (&r, bufs.iter().find(|b| !b.is_empty())) {
            if *n > 0 {
                this.wrote(&first[..first.len().min(*n)]);
            }
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for HeadDeadline {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await;
    }
}

impl UniqueID for HeadDeadline {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for HeadDeadline {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for HeadDeadline {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for HeadDeadline {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest);
    }
}

impl GetSocketDigest for HeadDeadline {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, socket_digest: SocketDigest) {
        self.inner.set_socket_digest(socket_digest);
    }
}

#[async_trait]
impl Peek for HeadDeadline {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_ends_at_its_blank_line_even_across_reads() {
        assert!(head_ends(&[0; 3], b"GET / HTTP/1.1\r\nhost: x\r\n\r\n"));
        assert!(!head_ends(&[0; 3], b"GET / HTTP/1.1\r\nhost: x\r\n"));
        assert!(head_ends(b"x\r\n", b"\r\n"));
        assert!(head_ends(b"\r\n\r", b"\n"));
        assert!(!head_ends(b"\r\nx", b"\r\n"));
    }
}
