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

use fuse_guest::proto::{code, Input, Op, Request, Response};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

/// The guest port `fuse-guest` listens on (vsock).
pub const GUEST_PORT: u32 = 1024;

/// The name of the virtio-serial port `fuse-guest` serves (`fuse.link=vport:fuse`).
pub const SERIAL_PORT_NAME: &str = "fuse";

/// The flow-control window asked of the guest for streamed answers (data lines in flight;
/// 64 KiB of base64 each at most, so a few MiB per request).
pub const WINDOW: u32 = 32;

/// Private-link failures.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The guest did not accept the connection (not booted yet, or gone).
    #[error("guest helper unreachable: {0}")]
    Unreachable(String),
    /// The guest answered with an error.
    #[error("{0}")]
    Guest(String),
    /// The guest says the path does not exist.
    #[error("{0}")]
    NotFound(String),
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

/// One open request: the guest's answer lines come out of [`Conn::recv`], input lines go
/// in with [`Conn::send`]. Data lines are acknowledged as they are taken (the guest keeps
/// at most the request's window ahead). Dropping it hangs up: the guest kills what the
/// request still runs.
pub struct Conn {
    tx: ConnSender,
    rx: ConnRx,
    window: Option<u32>,
    taken: u64,
    acked: u64,
    done: bool,
}

enum ConnTx {
    Vsock(OwnedWriteHalf),
    Serial { mux: Arc<Mux>, ch: u64 },
}

impl Drop for ConnTx {
    fn drop(&mut self) {
        if let ConnTx::Serial { mux, ch } = self {
            mux.end(*ch);
        }
    }
}

/// The sending side of a [`Conn`], for a task that feeds input while another reads.
#[derive(Clone)]
pub struct ConnSender(Arc<tokio::sync::Mutex<ConnTx>>);

impl ConnSender {
    /// Sends one input line.
    pub async fn send(&self, input: &Input) -> Result<(), LinkError> {
        let mut line =
            serde_json::to_string(input).map_err(|e| LinkError::Protocol(e.to_string()))?;
        line.push('\n');
        match &mut *self.0.lock().await {
            ConnTx::Vsock(w) => w
                .write_all(line.as_bytes())
                .await
                .map_err(|e| LinkError::Unreachable(e.to_string())),
            ConnTx::Serial { mux, ch } => mux.write(format!("{ch} {line}")).await,
        }
    }
}

enum ConnRx {
    Vsock(BufReader<OwnedReadHalf>),
    Serial(mpsc::UnboundedReceiver<String>),
}

impl Conn {
    /// Sends one input line.
    pub async fn send(&mut self, input: &Input) -> Result<(), LinkError> {
        self.tx.send(input).await
    }

    /// A sender for another task.
    pub fn sender(&self) -> ConnSender {
        self.tx.clone()
    }

    /// The next answer line; `None` after the last one. A guest error is an `Err`.
    pub async fn recv(&mut self) -> Result<Option<Response>, LinkError> {
        if self.done {
            return Ok(None);
        }
        let line = match &mut self.rx {
            ConnRx::Vsock(r) => {
                let mut line = String::new();
                let n = r
                    .read_line(&mut line)
                    .await
                    .map_err(|e| LinkError::Protocol(e.to_string()))?;
                (n > 0).then_some(line)
            }
            ConnRx::Serial(rx) => rx.recv().await,
        };
        let Some(line) = line else {
            self.done = true;
            return Err(LinkError::Unreachable(
                "the guest ended the request without an answer (VM stopped or replaced)".into(),
            ));
        };
        let resp: Response = serde_json::from_str(line.trim_end())
            .map_err(|e| LinkError::Protocol(e.to_string()))?;
        if resp.is_last() {
            self.done = true;
        }
        if let Some(e) = &resp.error {
            return Err(match resp.code.as_deref() {
                Some(code::NOT_FOUND) => LinkError::NotFound(e.clone()),
                _ => LinkError::Guest(e.clone()),
            });
        }
        if resp.is_data() {
            self.taken += 1;
            if let Some(w) = self.window {
                if self.taken - self.acked >= u64::from(w / 2).max(1) {
                    self.acked = self.taken;
                    let ack = Input {
                        ack: Some(self.taken),
                        ..Input::default()
                    };
                    // A guest that finished meanwhile needs no ack.
                    let _ = self.send(&ack).await;
                }
            }
        }
        Ok(Some(resp))
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

    /// Opens a request; `window` is the one the op asked the guest for (if any), so its
    /// data lines are acknowledged.
    pub async fn open(&self, token: &str, op: Op, window: Option<u32>) -> Result<Conn, LinkError> {
        let line = request_line(token, op)?;
        let (tx, rx) = match self.transport {
            Transport::Vsock => {
                let (r, w) = connect_vsock(&self.sock).await?;
                let mut w = w;
                w.write_all(line.as_bytes())
                    .await
                    .map_err(|e| LinkError::Unreachable(e.to_string()))?;
                (ConnTx::Vsock(w), ConnRx::Vsock(r))
            }
            Transport::Serial => {
                let mux = self.connected().await?;
                let (ch, rx) = mux.open(line).await?;
                (ConnTx::Serial { mux, ch }, ConnRx::Serial(rx))
            }
        };
        Ok(Conn {
            tx: ConnSender(Arc::new(tokio::sync::Mutex::new(tx))),
            rx,
            window,
            taken: 0,
            acked: 0,
            done: false,
        })
    }

    /// Sends one request and collects every response line (streamed exec output first).
    pub async fn call(
        &self,
        token: &str,
        op: Op,
        limit: Duration,
    ) -> Result<Vec<Response>, LinkError> {
        let mut out = Vec::new();
        self.run(token, op, limit, |r| {
            out.push(r);
            std::future::ready(Ok(()))
        })
        .await?;
        Ok(out)
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
        self.run(token, op, limit, |r| async move {
            tx.send(r)
                .await
                .map_err(|_| LinkError::Protocol("the caller stopped reading".into()))
        })
        .await
    }

    async fn run<F, Fut>(
        &self,
        token: &str,
        op: Op,
        limit: Duration,
        mut sink: F,
    ) -> Result<(), LinkError>
    where
        F: FnMut(Response) -> Fut,
        Fut: std::future::Future<Output = Result<(), LinkError>>,
    {
        let window = match &op {
            Op::Exec { window, .. } | Op::ReadFile { window, .. } | Op::Pty { window, .. } => {
                *window
            }
            _ => None,
        };
        let run = async {
            let mut conn = self.open(token, op, window).await?;
            while let Some(r) = conn.recv().await? {
                sink(r).await?;
            }
            Ok::<_, LinkError>(())
        };
        tokio::time::timeout(limit, run).await.map_err(|_| {
            LinkError::Protocol(format!("no answer within {} ms", limit.as_millis()))
        })?
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

/// Connects with the vsock-muxer handshake.
async fn connect_vsock(
    sock: &Path,
) -> Result<(BufReader<OwnedReadHalf>, OwnedWriteHalf), LinkError> {
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
    Ok((r, w))
}

/// Channel numbers, unique for the agent's lifetime (a guest may still answer a channel of
/// an earlier connection; such answers are ignored), and larger than those of any earlier
/// agent on this host: they start at the wall clock in microseconds. A guest restored from
/// memory (a resume, a template) still holds the newest channel number of the host it was
/// saved under, and ignores lower ones as late frames until it sees the port close; a
/// restarted agent counting from 1 again would wait for that.
static NEXT_CHANNEL: std::sync::OnceLock<AtomicU64> = std::sync::OnceLock::new();

/// The next channel number.
fn next_channel() -> u64 {
    NEXT_CHANNEL
        .get_or_init(|| {
            let micros = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_micros() as u64)
                .unwrap_or(1);
            AtomicU64::new(micros.max(1))
        })
        .fetch_add(1, Ordering::Relaxed)
}

/// Frames queued for the port before a sender waits.
const WRITE_QUEUE: usize = 64;

type Channels = Arc<parking_lot::Mutex<HashMap<u64, mpsc::UnboundedSender<String>>>>;

/// One multiplexed connection to a virtio-serial chardev: a reader task that routes answer
/// frames to their channels, a writer task that owns the socket's writing half.
struct Mux {
    writer: mpsc::Sender<String>,
    chans: Channels,
    dead: Arc<AtomicBool>,
    reader: tokio::task::JoinHandle<()>,
}

impl Mux {
    async fn connect(sock: &Path) -> Result<Arc<Mux>, LinkError> {
        let stream = UnixStream::connect(sock)
            .await
            .map_err(|e| LinkError::Unreachable(e.to_string()))?;
        let (r, mut w) = stream.into_split();
        let chans: Channels = Arc::default();
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
        let (writer, mut frames) = mpsc::channel::<String>(WRITE_QUEUE);
        let d3 = dead.clone();
        tokio::spawn(async move {
            while let Some(f) = frames.recv().await {
                if w.write_all(f.as_bytes()).await.is_err() {
                    d3.store(true, Ordering::SeqCst);
                    return;
                }
            }
        });
        Ok(Arc::new(Mux {
            writer,
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

    fn closed_error() -> LinkError {
        LinkError::Unreachable("the link closed (VM stopped or replaced)".into())
    }

    async fn write(&self, frame: String) -> Result<(), LinkError> {
        if self.dead.load(Ordering::SeqCst) {
            return Err(Self::closed_error());
        }
        self.writer
            .send(frame)
            .await
            .map_err(|_| Self::closed_error())
    }

    /// Opens a channel with its request line.
    async fn open(
        &self,
        request: String,
    ) -> Result<(u64, mpsc::UnboundedReceiver<String>), LinkError> {
        let ch = next_channel();
        let (tx, rx) = mpsc::unbounded_channel();
        self.chans.lock().insert(ch, tx);
        // The reader marks the connection dead before it drops every channel: a channel
        // added after that would wait for nothing.
        if let Err(e) = self.write(format!("{ch} {request}")).await {
            self.chans.lock().remove(&ch);
            return Err(e);
        }
        Ok((ch, rx))
    }

    /// Ends a channel from the host's side (its request is over, or abandoned: a hang-up).
    fn end(&self, ch: u64) {
        self.chans.lock().remove(&ch);
        let frame = format!("{ch} \n");
        if let Err(mpsc::error::TrySendError::Full(f)) = self.writer.try_send(frame) {
            let w = self.writer.clone();
            tokio::spawn(async move {
                let _ = w.send(f).await;
            });
        }
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

    #[test]
    fn channel_numbers_grow_past_any_earlier_agent() {
        let a = next_channel();
        let b = next_channel();
        assert!(b > a, "they only grow");
        // Seeded from the clock (microseconds), not 1: a restarted agent numbers above
        // what a guest restored from memory last saw.
        assert!(a > 1_700_000_000_000_000, "{a}");
    }

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
        let guest = Arc::new(fuse_guest::Guest::new(
            token.clone(),
            dir.join("root"),
            Arc::default(),
        ));
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
            stdin_b64: None,
            window: None,
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
