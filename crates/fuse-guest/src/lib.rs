//! `fuse-guest`: the helper inside every microVM. It owns the guest side of the private
//! link (`proto`): it writes files, runs commands, and supervises the agent. It has no
//! server framework and few dependencies so it links statically into small images.
//!
//! Invariants: every request is authenticated with the per-VM token (constant-time compare);
//! file writes are atomic (temp file + rename); a command that does not exist answers exit
//! code 127 and a timed-out one 124, never a crash of the helper.

pub mod agent;
pub mod envd;
pub mod error;
pub mod files;
pub mod identity;
pub mod inbox;
pub mod logs;
pub mod ops;
pub mod probe;
pub mod proto;
pub mod pty;
pub mod startup;
pub mod vport;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

/// How the helper was started.
#[derive(Debug, Clone)]
pub struct Guest {
    /// The per-VM token; replaced by an `identity` request (a VM restored from another
    /// VM's memory starts with that VM's token, and takes its own).
    pub token: Arc<RwLock<String>>,
    /// Root that guest paths resolve under (`/` in a real VM; the VM's directory for the
    /// `process` backend, which is not isolation).
    pub root: PathBuf,
    /// The agent supervisor.
    pub agent: Arc<agent::Supervisor>,
}

impl Guest {
    /// A helper that accepts `token`, with guest paths under `root`.
    pub fn new(token: String, root: PathBuf, agent: Arc<agent::Supervisor>) -> Guest {
        Guest {
            token: Arc::new(RwLock::new(token)),
            root,
            agent,
        }
    }

    /// Whether `token` is the one the helper accepts now (constant time).
    pub fn token_matches(&self, token: &str) -> bool {
        let cur = self.token.read().unwrap_or_else(|e| e.into_inner());
        ct_eq(token.as_bytes(), cur.as_bytes())
    }

    /// Whether the helper runs as a real guest's (its root is `/`), so an identity may
    /// change the system: not under the `process` backend, where it is a process on the
    /// host and its hostname, clock and network are the host's.
    pub fn owns_the_system(&self) -> bool {
        self.root == std::path::Path::new("/")
    }

    /// Maps an absolute guest path to a host path under `root`; refuses `..`.
    pub fn resolve(&self, guest_path: &str) -> Result<PathBuf, error::GuestError> {
        if !guest_path.starts_with('/') {
            return Err(error::GuestError::NotAbsolute(guest_path.to_owned()));
        }
        if guest_path.split('/').any(|c| c == "..") || guest_path.contains('\0') {
            return Err(error::GuestError::Traversal(guest_path.to_owned()));
        }
        Ok(self.root.join(guest_path.trim_start_matches('/')))
    }

    /// Serves one connection: reads one request line, then hands what follows it to an
    /// [`inbox::Inbox`] and writes the response line(s) to `out`.
    pub fn serve<R: std::io::Read + Send + 'static, W: Write>(&self, input: R, mut out: W) {
        let mut reader = BufReader::new(input);
        let mut line = String::new();
        if reader.read_line(&mut line).is_err() {
            return;
        }
        // Firecracker's vsock muxer protocol, emulated for the `process` backend: the host
        // side first says `CONNECT <port>` and expects `OK <port>`.
        if let Some(port) = line.strip_prefix("CONNECT ") {
            let reply = format!("OK {}", port.trim());
            if writeln!(out, "{reply}").and_then(|_| out.flush()).is_err() {
                return;
            }
            line.clear();
            if reader.read_line(&mut line).is_err() {
                return;
            }
        }
        let req: proto::Request = match serde_json::from_str(line.trim_end()) {
            Ok(r) => r,
            Err(e) => {
                let _ = write_line(&mut out, &proto::Response::err(format!("bad request: {e}")));
                return;
            }
        };
        if !self.token_matches(&req.token) {
            let _ = write_line(&mut out, &proto::Response::err("unauthorized"));
            return;
        }
        let inbox = inbox::Inbox::start(reader);
        ops::handle(self, req.op, &inbox, &mut out);
    }
}

/// Writes one JSON line.
pub fn write_line<W: Write>(w: &mut W, r: &proto::Response) -> std::io::Result<()> {
    let mut s = serde_json::to_string(r).unwrap_or_else(|_| "{}".into());
    s.push('\n');
    w.write_all(s.as_bytes())?;
    w.flush()
}

/// Constant-time comparison (length is not secret: tokens have a fixed length).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
