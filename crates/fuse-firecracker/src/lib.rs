//! Firecracker, driven through its own API socket (DESIGN §6): a hyper HTTP/1.1 client over
//! the Unix socket ([`ApiError`]), the API's objects as typed values ([`models`]), the calls
//! of one running Firecracker ([`Control`]), and a [`Firecracker`] process handle that adds
//! spawning, stop and death detection.
//!
//! Invariants: a process handle owns its API socket and log files in its directory; `stop`
//! is idempotent; a VM that died is reported with its exit status and the tail of its log.

mod api;
mod control;
pub mod models;

pub use api::{ApiError, Call, DEFAULT_TIMEOUT};
pub use control::Control;
pub use models::*;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::Child;

/// Failures driving Firecracker.
#[derive(Debug, thiserror::Error)]
pub enum FcError {
    /// The process could not be started or its socket never appeared.
    #[error("starting firecracker: {0}")]
    Spawn(String),
    /// An API call was refused or failed.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The VM died.
    #[error("firecracker exited ({status}); log tail: {log_tail}")]
    Died {
        /// Exit status as text.
        status: String,
        /// Last lines of its log and console.
        log_tail: String,
    },
}

/// How a Firecracker process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    /// Exit code, if it exited (not killed).
    pub code: Option<i32>,
    /// The last lines of its console and log.
    pub log_tail: String,
}

/// One Firecracker process. Its API calls are those of [`Control`] (through `Deref`).
#[derive(Debug)]
pub struct Firecracker {
    child: Child,
    dir: PathBuf,
    ctl: Control,
}

impl std::ops::Deref for Firecracker {
    type Target = Control;
    fn deref(&self) -> &Control {
        &self.ctl
    }
}

/// The API socket in a VM directory.
pub fn api_socket(dir: &Path) -> PathBuf {
    dir.join("firecracker.sock")
}

/// The serial console (Firecracker's stdout).
pub fn console_log(dir: &Path) -> PathBuf {
    dir.join("console.log")
}

/// Firecracker's own log.
pub fn fc_log(dir: &Path) -> PathBuf {
    dir.join("firecracker.log")
}

impl Firecracker {
    /// Starts `bin --api-sock DIR/firecracker.sock --id ID` in `dir` (its working
    /// directory) with its console and log there, and waits until the API answers.
    pub async fn spawn(bin: &Path, dir: &Path, id: &str) -> Result<Firecracker, FcError> {
        std::fs::create_dir_all(dir).map_err(|e| FcError::Spawn(e.to_string()))?;
        let sock = api_socket(dir);
        let _ = std::fs::remove_file(&sock);
        // Firecracker refuses a --log-path that does not exist yet.
        std::fs::write(fc_log(dir), b"").map_err(|e| FcError::Spawn(e.to_string()))?;
        // Appended to (O_APPEND), so the host agent can truncate it in place when it grows.
        let console = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(console_log(dir))
            .map_err(|e| FcError::Spawn(e.to_string()))?;
        let mut child = tokio::process::Command::new(bin)
            .arg("--api-sock")
            .arg(&sock)
            .arg("--id")
            .arg(id)
            .arg("--log-path")
            .arg(fc_log(dir))
            .arg("--level")
            // Info would log request bodies, and the boot arguments carry the VM's token.
            .arg("Warning")
            // Relative paths in its configuration (drives, the vsock socket) resolve in the
            // VM's directory, and so do those a snapshot of it records: a snapshot loads
            // into another VM's directory and finds that VM's files.
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(console))
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(false)
            .spawn()
            .map_err(|e| FcError::Spawn(format!("{}: {e}", bin.display())))?;
        let api = api::Client::new(sock.clone());
        // Probed with a short timeout: a process that accepts but never answers must not
        // hold the spawn for a whole call's timeout.
        let probe = Control::with_client(api.clone().with_timeout(Duration::from_millis(500)));
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(FcError::Died {
                    status: status.to_string(),
                    log_tail: log_tail(dir),
                });
            }
            if sock.exists() && probe.describe_instance().await.is_ok() {
                break;
            }
            if Instant::now() >= deadline {
                let _ = child.start_kill();
                return Err(FcError::Spawn("the API socket never answered".into()));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(Firecracker {
            child,
            dir: dir.to_owned(),
            ctl: Control::with_client(api),
        })
    }

    /// Lets the VM run on without this handle: its exit is reaped in the background (no
    /// zombie), and it is never killed when the handle goes away.
    pub fn detach(self) {
        let mut child = self.child;
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Waits up to `limit` for the process to exit by itself.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<Exit> {
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(Ok(status)) => Some(Exit {
                code: status.code(),
                log_tail: log_tail(&self.dir),
            }),
            _ => None,
        }
    }

    /// Whether it still runs (a VM that died is reported with its status and log tail).
    pub fn check_alive(&mut self) -> Result<(), FcError> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(FcError::Died {
                status: status.to_string(),
                log_tail: log_tail(&self.dir),
            }),
            Err(e) => Err(FcError::Spawn(e.to_string())),
        }
    }

    /// Stops it: SIGTERM, then SIGKILL after a second; removes the API socket. Idempotent.
    pub async fn stop(&mut self) {
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            if tokio::time::timeout(Duration::from_secs(1), self.child.wait())
                .await
                .is_err()
            {
                let _ = self.child.kill().await;
            }
        }
        let _ = std::fs::remove_file(api_socket(&self.dir));
    }
}

/// The last lines of the console and the log.
pub fn log_tail(dir: &Path) -> String {
    let mut out = String::new();
    for f in [console_log(dir), fc_log(dir)] {
        for l in tail_lines(&f, 5) {
            out.push_str(&l);
            out.push('\n');
        }
    }
    out
}

/// The last `n` lines of a log file, tokens redacted. Reads only its last 16 KiB, however
/// large the file has grown (a guest's console can be chatty).
pub fn tail_lines(path: &Path, n: usize) -> Vec<String> {
    use std::io::{Read, Seek, SeekFrom};
    const WINDOW: u64 = 16 << 10;
    let Ok(mut f) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(WINDOW);
    let mut buf = Vec::new();
    if f.seek(SeekFrom::Start(start)).is_err() || f.take(WINDOW).read_to_end(&mut buf).is_err() {
        return Vec::new();
    }
    let text = String::from_utf8_lossy(&buf);
    let mut lines: Vec<&str> = text.lines().collect();
    // A window that starts mid-file starts mid-line: drop that partial line.
    if start > 0 && !lines.is_empty() {
        lines.remove(0);
    }
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| redact_token(l))
        .collect()
}

/// Replaces the value of `fuse.token=` (the per-VM token on the kernel command line).
pub fn redact_token(line: &str) -> String {
    match line.find("fuse.token=") {
        Some(i) => {
            let start = i + "fuse.token=".len();
            let end = line[start..]
                .find(|c: char| c.is_whitespace() || c == '"')
                .map(|e| start + e)
                .unwrap_or(line.len());
            format!("{}[redacted]{}", &line[..start], &line[end..])
        }
        None => line.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_lines_reads_the_end_of_a_large_file_only() {
        let p = std::env::temp_dir().join(format!("fuse-tail-{}", std::process::id()));
        let mut text = String::new();
        for i in 0..100_000 {
            text.push_str(&format!("line {i}\n"));
        }
        text.push_str("boot fuse.token=abcdef0123 ok\n");
        std::fs::write(&p, &text).unwrap();
        let t = tail_lines(&p, 3);
        assert_eq!(
            t,
            ["line 99998", "line 99999", "boot fuse.token=[redacted] ok"]
        );
        std::fs::write(&p, "a\nb\n").unwrap();
        assert_eq!(tail_lines(&p, 5), ["a", "b"]);
        std::fs::remove_file(&p).unwrap();
        assert!(tail_lines(&p, 5).is_empty());
    }

    #[test]
    fn token_is_redacted() {
        assert_eq!(
            super::redact_token("args: quiet fuse.token=abc123 fuse.port=1024"),
            "args: quiet fuse.token=[redacted] fuse.port=1024"
        );
        assert_eq!(super::redact_token("nothing here"), "nothing here");
    }
}
