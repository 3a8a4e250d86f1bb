//! A VM's logs for `GET /v1/vm/{id}/logs`: the guest's agent and startup logs (read over
//! the private link, one chunk per request: `ReadLog`), and its console, read here from the
//! VM's directory (the serial console of `firecracker` and `qemu`, the helper's own output
//! for `process`). Following is polling: a reader asks for the next chunk from where the
//! last one ended, so no request stays open in the guest and a reader that goes away
//! leaves nothing behind.
//!
//! Consoles are bounded here: their writer is the VMM, which opened them with `O_APPEND`,
//! so [`Vms::bound_consoles`] truncates one in place past its limit (its tail kept in
//! `console.log.1`).

use super::{Vm, VmError, Vms};
use fuse_guest::logs::{self, Chunk};
use fuse_guest::proto::Op;
use std::path::PathBuf;
use std::time::Duration;

/// Where a log comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogSource {
    /// The agent's output (in the guest).
    Agent,
    /// The startup script's output (in the guest).
    Startup,
    /// The VM's console (on the host).
    Console,
}

impl std::str::FromStr for LogSource {
    type Err = VmError;
    fn from_str(s: &str) -> Result<Self, VmError> {
        match s {
            "agent" => Ok(LogSource::Agent),
            "startup" => Ok(LogSource::Startup),
            "console" => Ok(LogSource::Console),
            other => Err(VmError::Invalid(format!(
                "source {other:?} is not one of agent, startup, console"
            ))),
        }
    }
}

impl LogSource {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            LogSource::Agent => "agent",
            LogSource::Startup => "startup",
            LogSource::Console => "console",
        }
    }
}

/// Where a reader is: nothing read yet (start at the last `tail` lines, `None`: all), or
/// the file id and offset the last chunk ended at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// The first read.
    Tail(Option<u32>),
    /// A later read.
    At(u64, u64),
}

/// How long one chunk read over the link may take.
const READ_LIMIT: Duration = Duration::from_secs(10);

impl Vms {
    /// The VM's console file on the host.
    pub fn console_path(&self, vm: &Vm) -> PathBuf {
        self.backend.console_log(&vm.dir)
    }

    /// Reads one chunk of a VM's log.
    pub async fn log_chunk(
        &self,
        vm: &Vm,
        source: LogSource,
        pos: Position,
    ) -> Result<Chunk, VmError> {
        if source == LogSource::Console {
            let path = self.console_path(vm);
            return tokio::task::spawn_blocking(move || -> std::io::Result<Chunk> {
                let (id, offset) = match pos {
                    Position::Tail(None) => (None, 0),
                    Position::Tail(Some(n)) => (None, logs::tail_offset(&path, n as usize)?),
                    Position::At(id, off) => (Some(id), off),
                };
                logs::read_chunk(&path, id, offset, logs::MAX_CHUNK)
            })
            .await
            .map_err(|e| VmError::state("reading the console")(std::io::Error::other(e)))?
            .map_err(VmError::state("reading the console"));
        }
        let (tail, id, offset) = match pos {
            Position::Tail(n) => (n, None, None),
            Position::At(id, off) => (None, Some(id), Some(off)),
        };
        let op = Op::ReadLog {
            source: source.as_str().into(),
            tail,
            id,
            offset,
            max_bytes: None,
        };
        let _p = vm.admit()?;
        let r = vm
            .guest(op, READ_LIMIT)
            .await?
            .into_iter()
            .last()
            .unwrap_or_default();
        use base64::Engine as _;
        let data = base64::engine::general_purpose::STANDARD
            .decode(r.log_b64.as_deref().unwrap_or(""))
            .map_err(|e| {
                VmError::Link(crate::link::LinkError::Protocol(format!(
                    "log chunk is not base64: {e}"
                )))
            })?;
        Ok(Chunk {
            data,
            id: r.log_id.unwrap_or(0),
            next: r.log_offset.unwrap_or(0),
        })
    }

    /// Truncates every VM console that has passed `max` bytes (keeping its tail in
    /// `console.log.1`); returns how many were.
    pub fn bound_consoles(&self, max: u64) -> usize {
        let paths: Vec<PathBuf> = self
            .map
            .read()
            .values()
            .map(|vm| self.console_path(vm))
            .collect();
        paths
            .into_iter()
            .filter(|p| match logs::truncate_if_over(p, max) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(path = %p.display(), error = %e, "bounding a console log");
                    false
                }
            })
            .count()
    }
}
