//! The HTTP server under the router: our own accept loop on hyper (HTTP/1.1, plain or TLS)
//! with the limits that keep slow or idle clients from holding memory and sockets:
//!
//! - **connection cap** ([`Limits::max_connections`]): one permit per open connection; a
//!   connection over the cap is closed at once and counted
//!   (`http_connections_refused_total`);
//! - **header timeout**: a new connection must finish its TLS handshake and first request
//!   head within [`Limits::header_timeout`] of being accepted, and a kept-alive one must
//!   finish a head within that time of its first byte;
//! - **idle timeout**: a kept-alive connection with no request in progress is closed after
//!   [`Limits::idle_timeout`] without a byte. A request is in progress from its head until
//!   its response body is finished, so an SSE stream or a long exec call is never cut;
//! - **body timeout**: a request body must be complete within [`Limits::body_timeout`] of
//!   its head (the handler then answers 408 and the connection closes); a streamed body (a
//!   file upload, `http::streams_body`) must instead never pause that long;
//! - hyper's read buffer is capped at [`MAX_BUF`], which bounds a request head and what one
//!   connection buffers.
//!
//! Each connection is one task that polls the hyper connection and its own deadline, so
//! the check "is a request in progress?" and closing the connection never race. Shutdown:
//! stop accepting, let each connection finish its requests (hyper's graceful shutdown),
//! close what is left after [`DRAIN_LIMIT`].

use crate::metrics::Metrics;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::Router;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use std::convert::Infallible;
use std::future::Future as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// hyper's read buffer limit per connection: a request head larger than this is refused
/// (431), and a body is read in pieces of at most this size. hyper's default (~400 KiB)
/// would let every half-sent head grow that large.
pub const MAX_BUF: usize = 64 * 1024;

/// How long shutdown waits for requests in progress before closing their connections.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(30);

/// The connection limits (from the configuration).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Time to finish a request head (and the TLS handshake).
    pub header_timeout: Duration,
    /// Time a kept-alive connection may wait for its next request.
    pub idle_timeout: Duration,
    /// Time to send a request body, from its head.
    pub body_timeout: Duration,
    /// Connections open at once.
    pub max_connections: usize,
}

impl Limits {
    /// The limits of a configuration.
    pub fn of(c: &crate::config::Config) -> Limits {
        Limits {
            header_timeout: c.header_timeout,
            idle_timeout: c.idle_timeout,
            body_timeout: c.body_timeout,
            max_connections: c.max_connections,
        }
    }
}

/// Loading the TLS certificate and key failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("reading {}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file is not the PEM expected.
    #[error("parsing {} as PEM", .path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// Why.
        source: rustls::pki_types::pem::Error,
    },
    /// The certificate file holds no certificate.
    #[error("{} holds no certificate", .0.display())]
    NoCertificate(PathBuf),
    /// rustls refused the pair.
    #[error("the certificate and key do not make a TLS configuration")]
    Config(#[source] rustls::Error),
}

/// A TLS acceptor for the PEM certificate chain and key, speaking HTTP/1.1 only (ALPN).
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    tls_acceptor_for(Some((cert, key)), None)
}

/// A certificate chain and its key, read from PEM files.
pub fn certified_key(
    cert: &Path,
    key: &Path,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<Arc<rustls::sign::CertifiedKey>, TlsError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| TlsError::Read {
            path: p.to_owned(),
            source,
        })
    };
    let pem = |p: &Path| {
        let p = p.to_owned();
        move |source| TlsError::Pem { path: p, source }
    };
    let certs = CertificateDer::pem_slice_iter(&read(cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem(cert))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(cert.to_owned()));
    }
    let key_der = PrivateKeyDer::from_pem_slice(&read(key)?).map_err(pem(key))?;
    let signing = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(TlsError::Config)?;
    Ok(Arc::new(rustls::sign::CertifiedKey::new(certs, signing)))
}

/// A TLS acceptor (HTTP/1.1 only, ALPN) for the API's certificate and, for names under the
/// ports proxy's domain, its wildcard certificate (chosen by SNI; the wildcard one answers
/// everything when the API has none).
pub fn tls_acceptor_for(
    api: Option<(&Path, &Path)>,
    proxy: Option<(&str, &Path, &Path)>,
) -> Result<TlsAcceptor, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let api = api
        .map(|(c, k)| certified_key(c, k, &provider))
        .transpose()?;
    let proxy = proxy
        .map(|(d, c, k)| Ok::<_, TlsError>((format!(".{d}"), certified_key(c, k, &provider)?)))
        .transpose()?;
    let resolver = Arc::new(SniResolver { api, proxy });
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}

/// Picks the certificate by the name the client asked for.
#[derive(Debug)]
struct SniResolver {
    api: Option<Arc<rustls::sign::CertifiedKey>>,
    /// `.{domain}` and its wildcard certificate.
    proxy: Option<(String, Arc<rustls::sign::CertifiedKey>)>,
}

impl rustls::server::ResolvesServerCert for SniResolver {
    fn resolve(
        &self,
        hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let under_domain = |suffix: &str| {
            hello
                .server_name()
                .is_some_and(|n| n.to_ascii_lowercase().ends_with(suffix))
        };
        match &self.proxy {
            Some((suffix, key)) if under_domain(suffix) || self.api.is_none() => Some(key.clone()),
            _ => self.api.clone(),
        }
    }
}

/// Binds `addr` with an accept backlog as deep as `max_connections` (the kernel caps it at
/// `net.core.somaxconn`). Tokio's own `bind` asks for 1,024: a burst of more new
/// connections than that while the accept loop is busy overflows the queue, and the
/// kernel then makes the overflowing clients wait for its SYN-ACK retries (1 s, 2 s, 4 s …)
/// although their `connect` already returned.
pub fn bind(addr: SocketAddr, max_connections: usize) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As `TcpListener::bind` does: a restarted `fuse` rebinds while old sockets linger.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(u32::try_from(max_connections).unwrap_or(u32::MAX).max(1024))
}

/// Raises the soft open-files limit towards what `max_connections` needs (the hard limit
/// caps it); warns when it stays short, as connections past it fail at accept.
pub fn ensure_fd_limit(max_connections: usize) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    // Headroom for the database pool, host clients, logs and the listener.
    let want = max_connections as u64 + 256;
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    if soft >= want {
        return;
    }
    let new = want.min(hard);
    if new > soft && setrlimit(Resource::RLIMIT_NOFILE, new, hard).is_ok() && new >= want {
        return;
    }
    tracing::warn!(
        open_files = new.max(soft),
        needed = want,
        "the open-files limit is below ORCH_MAX_CONNECTIONS + 256; connections past it are refused by the kernel"
    );
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then drains.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<TlsAcceptor>,
    limits: Limits,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let tracker = TaskTracker::new();
    let hard_stop = CancellationToken::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors and the like: back off rather than spin; the listener
                // itself stays good.
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics.http_connections_refused.inc();
            tracing::debug!(peer = %peer, "connection over ORCH_MAX_CONNECTIONS closed");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let conn = Conn {
            peer,
            router: router.clone(),
            limits,
            metrics: metrics.clone(),
            shutdown: shutdown.clone(),
            hard_stop: hard_stop.clone(),
        };
        let tls = tls.clone();
        tracker.spawn(async move {
            conn.run(stream, tls).await;
            drop(permit);
        });
    }
    drop(listener);
    tracker.close();
    if tokio::time::timeout(DRAIN_LIMIT, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = tracker.len(),
            "requests still in progress after {} s; closing their connections",
            DRAIN_LIMIT.as_secs()
        );
        hard_stop.cancel();
        tracker.wait().await;
    }
}

/// One accepted connection and what it needs.
struct Conn {
    peer: SocketAddr,
    router: Router,
    limits: Limits,
    metrics: Metrics,
    shutdown: CancellationToken,
    hard_stop: CancellationToken,
}

impl Conn {
    async fn run(self, stream: TcpStream, tls: Option<TlsAcceptor>) {
        let m = &self.metrics;
        m.http_connections_open.inc();
        struct Open(prometheus::IntGauge);
        impl Drop for Open {
            fn drop(&mut self) {
                self.0.dec();
            }
        }
        let _open = Open(m.http_connections_open.clone());
        let clock = Arc::new(Clock::new(Instant::now()));
        let first_head = Instant::now() + self.limits.header_timeout;
        match tls {
            None => self.http(Tracked::new(stream, clock.clone()), clock).await,
            Some(acceptor) => {
                let hs = tokio::select! {
                    r = tokio::time::timeout_at(first_head, acceptor.accept(stream)) => r,
                    _ = self.hard_stop.cancelled() => return,
                };
                match hs {
                    Ok(Ok(s)) => self.http(Tracked::new(s, clock.clone()), clock).await,
                    Ok(Err(e)) => {
                        tracing::debug!(peer = %self.peer, error = %e, "TLS handshake failed")
                    }
                    Err(_) => {
                        m.http_connection_timeouts
                            .with_label_values(&["header"])
                            .inc();
                        tracing::debug!(peer = %self.peer, "TLS handshake too slow; closed");
                    }
                }
            }
        }
    }

    /// Serves HTTP/1.1 on `io` until the client leaves, a limit closes it, or shutdown.
    async fn http<S>(&self, io: Tracked<S>, clock: Arc<Clock>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let svc = {
            let (router, clock, peer) = (self.router.clone(), clock.clone(), self.peer);
            let (limits, timeouts) = (self.limits, self.metrics.http_connection_timeouts.clone());
            hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                let guard = clock.request_started();
                let deadline = Instant::now() + limits.body_timeout;
                let timeouts = timeouts.clone();
                let sliding = crate::http::streams_body(req.method(), req.uri().path())
                    .then_some(limits.body_timeout);
                let mut req = req.map(|b| {
                    let mut body = DeadlineBody::new(b, deadline, timeouts);
                    body.sliding = sliding;
                    Body::new(body)
                });
                req.extensions_mut().insert(ConnectInfo(peer));
                let router = router.clone();
                async move {
                    let resp = match tower::ServiceExt::oneshot(router, req).await {
                        Ok(r) => r,
                        Err(never) => match never {},
                    };
                    Ok::<_, Infallible>(resp.map(|b| Guarded {
                        inner: b,
                        _guard: guard,
                    }))
                }
            })
        };
        let conn = hyper::server::conn::http1::Builder::new()
            // Our clock times heads: hyper's header timer also runs while a kept-alive
            // connection waits, which would make it the idle timeout too.
            .header_read_timeout(None)
            .max_buf_size(MAX_BUF)
            .serve_connection(TokioIo::new(io), svc)
            // A terminal (`/attach`) and the ports proxy's WebSocket (and other) upgrades
            // take the connection over once answered `101`.
            .with_upgrades();
        tokio::pin!(conn);
        let mut draining = false;
        loop {
            let deadline = clock.deadline(&self.limits, Instant::now());
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(peer = %self.peer, error = %e, "connection ended with an error");
                    }
                    return;
                }
                _ = clock.changed.notified() => {}
                _ = tokio::time::sleep_until(deadline) => {
                    if let Some(kind) = clock.expired(&self.limits, Instant::now()) {
                        self.metrics.http_connection_timeouts.with_label_values(&[kind]).inc();
                        tracing::debug!(peer = %self.peer, kind, "connection closed by a time limit");
                        return;
                    }
                }
                _ = self.shutdown.cancelled(), if !draining => {
                    // Idle connections close now; requests in progress finish first.
                    conn.as_mut().graceful_shutdown();
                    draining = true;
                }
                _ = self.hard_stop.cancelled() => return,
            }
        }
    }
}

/// What a connection's limits look at. Reads stamp activity; a request is in progress from
/// the service call until its response body is dropped. `changed` wakes the connection
/// task when a deadline moves earlier (a kept-alive connection starts a head).
#[derive(Debug)]
struct Clock {
    state: Mutex<ClockState>,
    changed: tokio::sync::Notify,
}

#[derive(Debug, Clone, Copy)]
struct ClockState {
    in_flight: u32,
    /// When the connection last became idle (accepted, or a response finished).
    idle_since: Instant,
    /// When the current request head began: accept for a new connection, the first byte
    /// read while idle for a kept-alive one.
    head_started: Option<Instant>,
}

impl Clock {
    fn new(accepted: Instant) -> Self {
        Clock {
            state: Mutex::new(ClockState {
                in_flight: 0,
                idle_since: accepted,
                head_started: Some(accepted),
            }),
            changed: tokio::sync::Notify::new(),
        }
    }

    fn bytes_read(&self, now: Instant) {
        let mut s = self.state.lock();
        if s.in_flight == 0 && s.head_started.is_none() {
            s.head_started = Some(now);
            drop(s);
            // The header deadline is sooner than the idle one being waited for.
            self.changed.notify_one();
        }
    }

    fn request_started(self: &Arc<Self>) -> RequestGuard {
        let mut s = self.state.lock();
        s.in_flight += 1;
        s.head_started = None;
        RequestGuard(self.clone())
    }

    fn request_done(&self, now: Instant) {
        let mut s = self.state.lock();
        s.in_flight = s.in_flight.saturating_sub(1);
        if s.in_flight == 0 {
            s.idle_since = now;
            s.head_started = None;
        }
    }

    /// When to look again (nothing can expire before).
    fn deadline(&self, l: &Limits, now: Instant) -> Instant {
        self.state.lock().deadline(l, now)
    }

    /// Which limit, if any, has run out.
    fn expired(&self, l: &Limits, now: Instant) -> Option<&'static str> {
        self.state.lock().expired(l, now)
    }
}

impl ClockState {
    fn deadline(&self, l: &Limits, now: Instant) -> Instant {
        match (self.in_flight, self.head_started) {
            // A request in progress is never cut here; look again later.
            (1.., _) => now + l.idle_timeout,
            (0, Some(t)) => t + l.header_timeout,
            (0, None) => self.idle_since + l.idle_timeout,
        }
    }

    fn expired(&self, l: &Limits, now: Instant) -> Option<&'static str> {
        match (self.in_flight, self.head_started) {
            (1.., _) => None,
            (0, Some(t)) => (now >= t + l.header_timeout).then_some("header"),
            (0, None) => (now >= self.idle_since + l.idle_timeout).then_some("idle"),
        }
    }
}

/// Ends a request's time in progress when dropped (with its response body, or with the
/// request if it never produced one).
struct RequestGuard(Arc<Clock>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.request_done(Instant::now());
    }
}

/// A response body that holds its request in progress until hyper is done with it.
struct Guarded<B> {
    inner: B,
    _guard: RequestGuard,
}

impl<B: HttpBody + Unpin> HttpBody for Guarded<B> {
    type Data = B::Data;
    type Error = B::Error;

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

/// The request body took longer than `ORCH_BODY_TIMEOUT_SECS`.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within ORCH_BODY_TIMEOUT_SECS")]
pub struct BodyTimeout;

/// Whether `e`, or an error in its chain, is a request body that ran out of time (the
/// extractor turns it into 408).
pub fn is_body_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(e) = cur {
        if e.is::<BodyTimeout>() || matches!(e.downcast_ref(), Some(BodyError::Timeout(_))) {
            return true;
        }
        cur = e.source();
    }
    false
}

/// Reading a request body failed.
#[derive(Debug, thiserror::Error)]
enum BodyError {
    #[error(transparent)]
    Timeout(#[from] BodyTimeout),
    #[error("reading the request body")]
    Read(#[source] hyper::Error),
}

/// A request body that fails with [`BodyTimeout`] once its deadline has passed.
struct DeadlineBody {
    inner: Incoming,
    deadline: Instant,
    /// Armed on the first wait, so bodies that are already complete cost no timer.
    sleep: Option<Pin<Box<Sleep>>>,
    timeouts: prometheus::IntCounterVec,
    /// For a streamed body: the deadline moves this far past every frame that arrives.
    sliding: Option<Duration>,
}

impl DeadlineBody {
    fn new(inner: Incoming, deadline: Instant, timeouts: prometheus::IntCounterVec) -> Self {
        DeadlineBody {
            inner,
            deadline,
            sleep: None,
            timeouts,
            sliding: None,
        }
    }
}

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(r) => {
                if let (Some(gap), Some(Ok(_))) = (this.sliding, &r) {
                    this.deadline = Instant::now() + gap;
                    this.sleep = None;
                }
                Poll::Ready(r.map(|f| f.map_err(BodyError::Read)))
            }
            Poll::Pending => {
                let deadline = this.deadline;
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        this.timeouts.with_label_values(&["body"]).inc();
                        Poll::Ready(Some(Err(BodyTimeout.into())))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A stream whose reads tell the connection's [`Clock`] that the client sent something.
struct Tracked<S> {
    inner: S,
    clock: Arc<Clock>,
}

impl<S> Tracked<S> {
    fn new(inner: S, clock: Arc<Clock>) -> Self {
        Tracked { inner, clock }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.clock.bytes_read(Instant::now());
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Limits = Limits {
        header_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
        body_timeout: Duration::from_secs(60),
        max_connections: 1,
    };

    #[test]
    fn which_limit_applies_when() {
        let t0 = Instant::now();
        let s = |secs: u64| t0 + Duration::from_secs(secs);
        let c = Arc::new(Clock::new(t0));
        // A new connection has the header timeout from accept.
        assert_eq!(c.deadline(&L, t0), s(10));
        assert_eq!(c.expired(&L, s(9)), None);
        assert_eq!(c.expired(&L, s(10)), Some("header"));
        // A request in progress is never cut, however long.
        let g = c.request_started();
        assert_eq!(c.expired(&L, s(10_000)), None);
        c.bytes_read(s(20));
        assert_eq!(c.expired(&L, s(10_000)), None);
        // Done at 100: idle from then on; bytes of a next head start its header clock.
        drop(g);
        let now = Instant::now();
        assert_eq!(c.expired(&L, now + Duration::from_secs(59)), None);
        assert_eq!(c.expired(&L, now + Duration::from_secs(61)), Some("idle"));
        c.bytes_read(now + Duration::from_secs(30));
        assert_eq!(
            c.deadline(&L, now),
            now + Duration::from_secs(40),
            "header clock from the first byte"
        );
        assert_eq!(c.expired(&L, now + Duration::from_secs(41)), Some("header"));
        // Two requests (pipelined): in progress until both are done.
        let (a, b) = (c.request_started(), c.request_started());
        drop(a);
        assert_eq!(c.expired(&L, now + Duration::from_secs(1_000)), None);
        drop(b);
        assert!(c
            .expired(&L, Instant::now() + Duration::from_secs(61))
            .is_some());
    }
}
