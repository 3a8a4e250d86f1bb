//! The host side of a VM's private link to `fuse-guest`, over one of two transports:
//!
//! - **vsock** (Firecracker, and the `process` backend's emulation of it): a Unix socket that
//!   speaks Firecracker's vsock-muxer handshake (`CONNECT <port>` → `OK …`); each request
//!   opens its own connection, then one JSON request line and its response line(s).
//! - **serial** (QEMU without vsock): the Unix socket of a virtio-serial port's chardev. The
//!   port is one byte stream, so one connection per VM is kept open and requests are
//!   multiplexed on it as `<channel> <line>` frames (see `fuse_guest::vport`); a channel
//!   ends with an empty payload. When the connection drops (the VM was restored into a new
//!   QEMU process, or QEMU died) its open requests fail and the next request reconnects.
//!
//! Either way a request is the same `proto` line with the per-VM token, and the answers are
//! the same lines, so everything above this module is transport-agnostic.

use fuse_guest::proto::{Op, Request, Response};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::mpsc;

/// The guest port `fuse-guest` listens on (vsock).
pub const GUEST_PORT: u32 = 1024;

/// The name of the virtio-serial port `fuse-guest` serves (`fuse.link=vport:fuse`).
pub const SERIAL_PORT_NAME: &str = "fuse";

/// Private-link failures.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The guest did not accept the connection (not booted yet, or gone).
    #[error("guest helper unreachable: {0}")]
    Unreachable(String),
    /// The guest answered with an error.
    #[error("{0}")]
    Guest(String),
    /// The answer was not understood, or did not come in time.
    #[error("guest helper protocol error: {0}")]
    Protocol(String),
}

/// How a backend's guests are reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A connection per request with the vsock-muxer handshake.
    Vsock,
    /// One multiplexed connection to a virtio-serial chardev.
    Serial,
}

/// One VM's link.
pub struct Link {
    sock: PathBuf,
    transport: Transport,
    mux: tokio::sync::Mutex<Option<Arc<Mux>>>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("sock", &self.sock)
            .field("transport", &self.transport)
            .finish()
    }
}

fn request_line(token: &str, op: Op) -> Result<String, LinkError> {
    let req = Request {
        token: token.to_owned(),
        op,
    };
    let mut body = serde_json::to_string(&req).map_err(|e| LinkError::Protocol(e.to_string()))?;
    body.push('\n');
    Ok(body)
}

/// Where a request's response lines go: collected, or forwarded one by one as they arrive
/// (a streamed exec: the caller's channel gives back-pressure, nothing is held here).
struct Sink<'a> {
    out: Vec<Response>,
    forward: Option<&'a mpsc::Sender<Response>>,
    seen: usize,
}

impl<'a> Sink<'a> {
    fn collect() -> Sink<'a> {
        Sink {
            out: Vec::new(),
            forward: None,
            seen: 0,
        }
    }

    fn forward(tx: &'a mpsc::Sender<Response>) -> Sink<'a> {
        Sink {
            out: Vec::new(),
            forward: Some(tx),
            seen: 0,
        }
    }

    /// Takes one response line; `Ok(true)` when it is the last of its request.
    async fn take(&mut self, line: &str) -> Result<bool, LinkError> {
        let resp: Response = serde_json::from_str(line.trim_end())
            .map_err(|e| LinkError::Protocol(e.to_string()))?;
        if let Some(e) = &resp.error {
            return Err(LinkError::Guest(e.clone()));
        }
        let last =
            resp.exit_code.is_some() || (resp.stdout_b64.is_none() && resp.stderr_b64.is_none());
        self.seen += 1;
        match self.forward {
            Some(tx) => tx
                .send(resp)
                .await
                .map_err(|_| LinkError::Protocol("the caller stopped reading".into()))?,
            None => self.out.push(resp),
        }
        Ok(last)
    }
}

impl Link {
    /// The link of a VM whose socket is `sock`.
    pub fn new(sock: PathBuf, transport: Transport) -> Link {
        Link {
            sock,
            transport,
            mux: tokio::sync::Mutex::new(None),
        }
    }

    /// Its socket.
    pub fn socket(&self) -> &Path {
        &self.sock
    }

    /// Sends one request and collects every response line (streamed exec output first).
    pub async fn call(
        &self,
        token: &str,
        op: Op,
        limit: Duration,
    ) -> Result<Vec<Response>, LinkError> {
        let mut sink = Sink::collect();
        self.run(token, op, limit, &mut sink).await?;
        Ok(sink.out)
    }

    /// Sends one request and forwards each response line to `tx` as it arrives (a
    /// streamed exec); the last one carries the exit code.
    pub async fn call_streaming(
        &self,
        token: &str,
        op: Op,
        limit: Duration,
        tx: &mpsc::Sender<Response>,
    ) -> Result<(), LinkError> {
        self.run(token, op, limit, &mut Sink::forward(tx)).await
    }

    async fn run(
        &self,
        token: &str,
        op: Op,
        limit: Duration,
        sink: &mut Sink<'_>,
    ) -> Result<(), LinkError> {
        let run = async {
            match self.transport {
                Transport::Vsock => call_vsock(&self.sock, token, op, sink).await,
                Transport::Serial => {
                    let mux = self.connected().await?;
                    mux.call(request_line(token, op)?, sink).await
                }
            }
        };
        tokio::time::timeout(limit, run).await.map_err(|_| {
            LinkError::Protocol(format!("no answer within {} ms", limit.as_millis()))
        })??;
        if sink.seen == 0 {
            return Err(LinkError::Protocol("no answer".into()));
        }
        Ok(())
    }

    /// The open multiplexed connection, (re)connecting when there is none.
    async fn connected(&self) -> Result<Arc<Mux>, LinkError> {
        let mut g = self.mux.lock().await;
        if let Some(m) = g.as_ref().filter(|m| !m.dead.load(Ordering::SeqCst)) {
            return Ok(m.clone());
        }
        let m = Mux::connect(&self.sock).await?;
        *g = Some(m.clone());
        Ok(m)
    }

    /// Drops the multiplexed connection (the VM's process was replaced).
    pub async fn reset(&self) {
        if let Some(m) = self.mux.lock().await.take() {
            m.close();
        }
    }

    /// Waits until the guest answers `health`, or `limit` passes, or `alive` says the VM's
    /// process is gone (no point waiting for a guest that exited).
    pub async fn wait_ready(
        &self,
        token: &str,
        limit: Duration,
        alive: impl Fn() -> bool,
    ) -> Result<(), LinkError> {
        let deadline = tokio::time::Instant::now() + limit;
        // Short first waits: a local helper is up within milliseconds; a VM takes longer.
        let mut wait = Duration::from_millis(1);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let attempt = left
                .min(Duration::from_secs(2))
                .max(Duration::from_millis(100));
            match self.call(token, Op::Health, attempt).await {
                Ok(_) => return Ok(()),
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                Err(_) if !alive() => {
                    return Err(LinkError::Unreachable(
                        "the VM process exited before its guest helper answered".into(),
                    ))
                }
                Err(_) => {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_millis(50));
                }
            }
        }
    }
}

async fn call_vsock(
    sock: &Path,
    token: &str,
    op: Op,
    sink: &mut Sink<'_>,
) -> Result<(), LinkError> {
    let stream = UnixStream::connect(sock)
        .await
        .map_err(|e| LinkError::Unreachable(e.to_string()))?;
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    w.write_all(format!("CONNECT {GUEST_PORT}\n").as_bytes())
        .await
        .map_err(|e| LinkError::Unreachable(e.to_string()))?;
    let mut line = String::new();
    r.read_line(&mut line)
        .await
        .map_err(|e| LinkError::Unreachable(e.to_string()))?;
    if !line.starts_with("OK") {
        return Err(LinkError::Unreachable(format!(
            "handshake answered {:?}",
            line.trim()
        )));
    }
    w.write_all(request_line(token, op)?.as_bytes())
        .await
        .map_err(|e| LinkError::Unreachable(e.to_string()))?;
    loop {
        line.clear();
        let n = r
            .read_line(&mut line)
            .await
            .map_err(|e| LinkError::Protocol(e.to_string()))?;
        if n == 0 || sink.take(&line).await? {
            return Ok(());
        }
    }
}

/// Channel numbers, unique for the agent's lifetime (a guest may still answer a channel of
/// an earlier connection; such answers are ignored).
static NEXT_CHANNEL: AtomicU64 = AtomicU64::new(1);

/// One multiplexed connection to a virtio-serial chardev.
struct Mux {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    chans: Arc<parking_lot::Mutex<HashMap<u64, mpsc::UnboundedSender<String>>>>,
    dead: Arc<AtomicBool>,
    reader: tokio::task::JoinHandle<()>,
}

/// Removes a channel however its call ends (answered, failed, timed out).
struct ChannelGuard<'a>(&'a Mux, u64);

impl Drop for ChannelGuard<'_> {
    fn drop(&mut self) {
        self.0.chans.lock().remove(&self.1);
    }
}

impl Mux {
    async fn connect(sock: &Path) -> Result<Arc<Mux>, LinkError> {
        let stream = UnixStream::connect(sock)
            .await
            .map_err(|e| LinkError::Unreachable(e.to_string()))?;
        let (r, w) = stream.into_split();
        let chans: Arc<parking_lot::Mutex<HashMap<u64, mpsc::UnboundedSender<String>>>> =
            Arc::default();
        let dead = Arc::new(AtomicBool::new(false));
        let (c2, d2) = (chans.clone(), dead.clone());
        let reader = tokio::spawn(async move {
            let mut r = BufReader::new(r);
            let mut line = String::new();
            loop {
                line.clear();
                match r.read_line(&mut line).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let Some((ch, payload)) = fuse_guest::vport::parse_frame(line.trim_end()) else {
                    continue;
                };
                let mut chans = c2.lock();
                if payload.is_empty() {
                    // The end of the channel: its receiver sees the sender dropped.
                    chans.remove(&ch);
                } else if let Some(tx) = chans.get(&ch) {
                    let _ = tx.send(payload.to_owned());
                }
            }
            d2.store(true, Ordering::SeqCst);
            // Every open request ends now.
            c2.lock().clear();
        });
        Ok(Arc::new(Mux {
            writer: tokio::sync::Mutex::new(w),
            chans,
            dead,
            reader,
        }))
    }

    fn close(&self) {
        self.dead.store(true, Ordering::SeqCst);
        self.reader.abort();
        self.chans.lock().clear();
    }

    async fn call(&self, request: String, sink: &mut Sink<'_>) -> Result<(), LinkError> {
        let ch = NEXT_CHANNEL.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::unbounded_channel();
        self.chans.lock().insert(ch, tx);
        let _guard = ChannelGuard(self, ch);
        // The reader marks the connection dead before it drops every channel: a channel
        // added after that would wait for nothing.
        if self.dead.load(Ordering::SeqCst) {
            return Err(LinkError::Unreachable(
                "the link closed (VM stopped or replaced)".into(),
            ));
        }
        {
            let mut w = self.writer.lock().await;
            let frame = format!("{ch} {request}");
            if let Err(e) = w.write_all(frame.as_bytes()).await {
                self.dead.store(true, Ordering::SeqCst);
                return Err(LinkError::Unreachable(e.to_string()));
            }
        }
        while let Some(line) = rx.recv().await {
            if sink.take(&line).await? {
                return Ok(());
            }
        }
        Err(LinkError::Unreachable(
            if self.dead.load(Ordering::SeqCst) {
                "the link closed (VM stopped or replaced)".into()
            } else {
                "the guest ended the request without an answer".into()
            },
        ))
    }
}

impl Drop for Mux {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A chardev stand-in: a Unix socket served by the real guest-side multiplexer
    /// (`fuse_guest::vport`), one connection at a time like QEMU's chardev.
    #[tokio::test]
    async fn serial_link_multiplexes_concurrent_requests_and_reconnects() {
        let dir = std::env::temp_dir().join(format!("fuse-link-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("guest.sock");
        let _ = std::fs::remove_file(&sock);
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let token = "t".repeat(32);
        let guest = Arc::new(fuse_guest::Guest {
            token: token.clone(),
            root: dir.join("root"),
            agent: Arc::default(),
        });
        std::fs::create_dir_all(dir.join("root")).unwrap();
        std::thread::spawn(move || {
            // Like a chardev: one connection at a time, served until it closes.
            for conn in listener.incoming().flatten() {
                fuse_guest::vport::serve_stream(guest.clone(), conn.try_clone().unwrap(), conn);
            }
        });
        let link = Link::new(sock.clone(), Transport::Serial);
        let slow = Op::Exec {
            cmd: vec!["sleep".into(), "1".into()],
            shell: None,
            env: Default::default(),
            cwd: None,
            timeout_ms: Some(5000),
            stream: false,
        };
        let t0 = std::time::Instant::now();
        let (a, b) = tokio::join!(link.call(&token, slow, Duration::from_secs(10)), async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let r = link.call(&token, Op::Health, Duration::from_secs(5)).await;
            (r, t0.elapsed())
        });
        assert_eq!(a.unwrap().last().unwrap().exit_code, Some(0));
        let (h, at) = b;
        h.unwrap();
        assert!(
            at < Duration::from_millis(900),
            "health was not blocked by the running command ({at:?})"
        );
        let bad = link.call("wrong", Op::Health, Duration::from_secs(5)).await;
        assert!(
            matches!(bad, Err(LinkError::Guest(ref m)) if m == "unauthorized"),
            "{bad:?}"
        );
        // A dropped connection is replaced on the next call.
        link.reset().await;
        link.call(&token, Op::Health, Duration::from_secs(5))
            .await
            .unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }
}
