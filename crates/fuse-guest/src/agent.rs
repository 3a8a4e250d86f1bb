//! The agent supervisor: fetches the agent binary (every start, when a download URL is
//! given: it replaces a binary baked into the image, verified against its SHA-256 when one
//! is given), launches the agent's command (`sh -c`) in its own process group with its
//! output piped into a log that rotates at a size, restarts it with back-off when it
//! crashes (a non-zero exit or a signal), and stops it with SIGTERM then SIGKILL. An agent
//! that exits 0 stopped on purpose (the profile's drain command sends it SIGTERM, and it
//! exits 0) and stays stopped, like systemd's `Restart=on-failure`.
//!
//! A start answers only once the agent is up or has failed: up when its listen port
//! accepts a connection, or when it is still running at the end of its start window;
//! failed when its command is missing or not executable (exit 127 or 126), when it exits
//! [`MAX_EARLY_EXITS`] times or exits 0 within the window, or when it is not running at the
//! window's end. A failure stops it and says why, with the tail of its log.

use crate::error::GuestError;
use crate::logs::RotatingLog;
use crate::ops::kill_group;
use crate::Guest;
use nix::sys::signal::Signal;
use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The agent's log file (guest path).
pub const LOG_PATH: &str = "/var/log/fuse-agent.log";

/// The start window when none is given.
pub const DEFAULT_START_WINDOW: Duration = Duration::from_secs(3);

/// Exits within the start window that fail a start.
pub const MAX_EARLY_EXITS: u32 = 3;

/// Download attempts before a start fails.
const FETCH_ATTEMPTS: u32 = 3;

/// Bytes of the agent's log a failed start quotes.
const TAIL_BYTES: usize = 600;

/// What one start asks for.
#[derive(Debug, Clone, Default)]
pub struct StartSpec {
    /// Where to fetch the binary from (empty: it is in the image).
    pub download_url: String,
    /// Its expected SHA-256 (hex; empty: not checked).
    pub sha256: String,
    /// The binary's guest path.
    pub binary_path: String,
    /// The launch command (`sh -c`).
    pub command: String,
    /// The agent's listen address (`0.0.0.0:8443`); empty or unparsable: no port to probe.
    pub listen: String,
    /// The start window (`None`: [`DEFAULT_START_WINDOW`]).
    pub window: Option<Duration>,
    /// The agent's environment.
    pub env: BTreeMap<String, String>,
}

#[derive(Default)]
struct State {
    /// Incremented per start; a supervisor thread exits when its epoch is stale.
    epoch: u64,
    pid: Option<i32>,
    wanted: bool,
    restarts: u32,
    last_exit: Option<i32>,
    /// Launches so far (of any epoch).
    launches: u64,
    /// Exits of the current epoch's agent, and the code of the last one (`128 + signal`
    /// for a signal).
    exits: u32,
    last_code: Option<i32>,
    /// The current epoch's supervisor could not launch the command at all.
    spawn_error: Option<String>,
    /// Output pipes still being copied into the log.
    pumping: u32,
}

/// Supervises at most one agent.
#[derive(Default)]
pub struct Supervisor {
    state: Mutex<State>,
    changed: Condvar,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("running", &self.running())
            .finish()
    }
}

impl Supervisor {
    /// Whether the agent process runs now.
    pub fn running(&self) -> bool {
        self.lock().pid.is_some()
    }

    /// Restarts after crashes so far.
    pub fn restarts(&self) -> u32 {
        self.lock().restarts
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Fetches the binary when a download URL is given, (re)starts the agent, and answers
    /// once it is up or has failed (see the module's doc).
    pub fn start(self: &Arc<Self>, g: &Guest, spec: StartSpec) -> Result<(), GuestError> {
        if spec.command.trim().is_empty() {
            return Err(GuestError::EmptyCommand);
        }
        if !spec.download_url.is_empty() {
            fetch(g, &spec.download_url, &spec.binary_path, &spec.sha256)?;
        }
        // Replace a running agent (rotate-token restarts it with new credentials).
        self.stop(Duration::from_secs(10));
        let log_path = g.resolve(LOG_PATH)?;
        let log = RotatingLog::open(&log_path, crate::logs::DEFAULT_MAX_BYTES)
            .map_err(GuestError::io("opening", &log_path))?;
        let log = Arc::new(Mutex::new(log));
        let epoch = {
            let mut s = self.lock();
            s.epoch += 1;
            s.wanted = true;
            s.exits = 0;
            s.last_code = None;
            s.spawn_error = None;
            s.epoch
        };
        let me = self.clone();
        let (cmd, env, root) = (spec.command.clone(), spec.env.clone(), g.root.clone());
        std::thread::spawn(move || me.supervise(epoch, cmd, env, root, log));
        let window = spec.window.unwrap_or(DEFAULT_START_WINDOW);
        let probe = probe_addr(&spec.listen);
        match self.wait_up(epoch, window, probe) {
            Ok(()) => Ok(()),
            Err(why) => {
                self.stop(Duration::from_secs(2));
                // What the agent printed before it died is in the log before it is quoted.
                let s = self.lock();
                let _unused = self
                    .changed
                    .wait_timeout_while(s, Duration::from_secs(1), |s| s.pumping > 0);
                let tail = crate::logs::tail_text(&log_path, TAIL_BYTES);
                Err(GuestError::AgentFailed {
                    reason: why,
                    log_tail: if tail.is_empty() {
                        "(empty)".into()
                    } else {
                        tail
                    },
                })
            }
        }
    }

    /// Waits until the agent of `epoch` is up, or says why it is not.
    fn wait_up(
        &self,
        epoch: u64,
        window: Duration,
        probe: Option<std::net::SocketAddr>,
    ) -> Result<(), String> {
        let deadline = Instant::now() + window;
        let ms = window.as_millis();
        loop {
            let running = {
                let s = self.lock();
                if s.epoch != epoch {
                    // Replaced by a newer start: that one answers for the agent.
                    return Ok(());
                }
                if let Some(e) = &s.spawn_error {
                    return Err(format!("the agent's command could not be started: {e}"));
                }
                match s.last_code {
                    Some(127) => {
                        return Err("the agent's command was not found (exit code 127)".into())
                    }
                    Some(126) => {
                        return Err("the agent's command is not executable (exit code 126)".into())
                    }
                    Some(0) if !s.wanted => {
                        return Err(format!(
                            "the agent exited with code 0 within its {ms} ms start window; \
                             an agent must keep running"
                        ))
                    }
                    _ => {}
                }
                if s.exits >= MAX_EARLY_EXITS {
                    return Err(format!(
                        "the agent exited {} times within its {ms} ms start window (last exit \
                         code {})",
                        s.exits,
                        s.last_code.unwrap_or(-1)
                    ));
                }
                s.pid.is_some()
            };
            if running {
                if let Some(a) = probe {
                    if std::net::TcpStream::connect_timeout(&a, Duration::from_millis(200)).is_ok()
                    {
                        return Ok(());
                    }
                }
            }
            if Instant::now() >= deadline {
                if running {
                    return Ok(());
                }
                let s = self.lock();
                return Err(format!(
                    "the agent was not running at the end of its {ms} ms start window (it \
                     exited {} times, last exit code {})",
                    s.exits,
                    s.last_code.unwrap_or(-1)
                ));
            }
            let s = self.lock();
            let left = deadline.saturating_duration_since(Instant::now());
            let _unused = self
                .changed
                .wait_timeout(s, left.min(Duration::from_millis(10)))
                .map_err(|_| "the agent supervisor failed".to_owned())?;
        }
    }

    fn supervise(
        self: Arc<Self>,
        epoch: u64,
        cmd: String,
        env: BTreeMap<String, String>,
        root: PathBuf,
        log: Arc<Mutex<RotatingLog>>,
    ) {
        let mut backoff = Duration::from_millis(500);
        loop {
            let started = Instant::now();
            let child = self.launch(&cmd, &env, &root, &log);
            let mut child = match child {
                Ok(c) => c,
                Err(e) => {
                    let mut s = self.lock();
                    if s.epoch == epoch {
                        s.spawn_error = Some(e.to_string());
                        s.wanted = false;
                        self.changed.notify_all();
                    }
                    return;
                }
            };
            {
                let mut s = self.lock();
                if s.epoch != epoch || !s.wanted {
                    kill_group(child.id() as i32, Signal::SIGKILL);
                    let _ = child.wait();
                    return;
                }
                s.pid = Some(child.id() as i32);
                s.launches += 1;
                self.changed.notify_all();
            }
            let status = child.wait();
            let code = status.ok().map(|s| {
                use std::os::unix::process::ExitStatusExt;
                s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0))
            });
            let mut s = self.lock();
            if s.epoch != epoch {
                return;
            }
            s.pid = None;
            s.last_exit = code;
            s.exits += 1;
            s.last_code = code;
            self.changed.notify_all();
            if !s.wanted {
                return;
            }
            if code == Some(0) {
                // A clean exit is a deliberate stop (drained): not restarted.
                s.wanted = false;
                return;
            }
            // Crashed: restart with back-off (reset after a good run).
            s.restarts += 1;
            if started.elapsed() > Duration::from_secs(60) {
                backoff = Duration::from_millis(500);
            }
            let wait = backoff;
            backoff = (backoff * 2).min(Duration::from_secs(30));
            let (s2, _) = self
                .changed
                .wait_timeout_while(s, wait, |s| s.epoch == epoch && s.wanted)
                .unwrap_or_else(|p| p.into_inner());
            if s2.epoch != epoch || !s2.wanted {
                return;
            }
        }
    }

    /// Launches the command with stdout and stderr on one pipe whose reader appends to `log`.
    fn launch(
        self: &Arc<Self>,
        cmd: &str,
        env: &BTreeMap<String, String>,
        root: &Path,
        log: &Arc<Mutex<RotatingLog>>,
    ) -> std::io::Result<std::process::Child> {
        let (r, w) = nix::unistd::pipe().map_err(std::io::Error::from)?;
        let w2 = w.try_clone()?;
        let child = {
            // The command (and its copies of the pipe's writing end) is dropped right after
            // the spawn, so the reader sees the end when the agent's side closes.
            let mut c = Command::new("sh");
            c.arg("-c")
                .arg(cmd)
                .envs(env)
                .current_dir(root)
                .stdin(Stdio::null())
                .stdout(Stdio::from(w))
                .stderr(Stdio::from(w2))
                .process_group(0);
            c.spawn()?
        };
        let log = log.clone();
        self.lock().pumping += 1;
        let me = self.clone();
        std::thread::spawn(move || {
            let mut r = std::fs::File::from(r);
            let mut buf = [0u8; 8192];
            loop {
                match r.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => log
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .append(&buf[..n]),
                }
            }
            me.lock().pumping -= 1;
            me.changed.notify_all();
        });
        Ok(child)
    }

    /// Stops the agent (SIGTERM to its group, SIGKILL after `grace`); returns its exit code.
    pub fn stop(&self, grace: Duration) -> Option<i32> {
        let pid = {
            let mut s = self.lock();
            s.wanted = false;
            s.last_exit = None;
            self.changed.notify_all();
            s.pid
        };
        let pid = pid?;
        kill_group(pid, Signal::SIGTERM);
        let s = self.lock();
        let (s, res) = self
            .changed
            .wait_timeout_while(s, grace, |s| s.pid == Some(pid))
            .unwrap_or_else(|p| p.into_inner());
        if res.timed_out() {
            drop(s);
            kill_group(pid, Signal::SIGKILL);
            let s = self.lock();
            let (s, _) = self
                .changed
                .wait_timeout_while(s, Duration::from_secs(5), |s| s.pid == Some(pid))
                .unwrap_or_else(|p| p.into_inner());
            return s.last_exit;
        }
        s.last_exit
    }
}

/// The address that tells the agent is up: its listen address, with an unspecified host
/// (`0.0.0.0`, `::`) probed on loopback.
fn probe_addr(listen: &str) -> Option<std::net::SocketAddr> {
    let mut a: std::net::SocketAddr = listen.parse().ok()?;
    if a.port() == 0 {
        return None;
    }
    if a.ip().is_unspecified() {
        a.set_ip(match a {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    Some(a)
}

/// Downloads the agent binary to `binary_path`, replacing what is there (atomically: a
/// temp file renamed over it), after checking its SHA-256 when `sha256` is given. Uses the
/// image's `wget` or `curl`; the helper itself has no HTTP client.
fn fetch(g: &Guest, url: &str, binary_path: &str, sha256: &str) -> Result<(), GuestError> {
    let fail = |detail: String| GuestError::Fetch {
        url: url.to_owned(),
        detail,
    };
    if binary_path.is_empty() {
        return Err(fail("no binary_path to install it at".into()));
    }
    let target = g.resolve(binary_path)?;
    if let Some(d) = target.parent() {
        std::fs::create_dir_all(d).map_err(GuestError::io("creating", d))?;
    }
    let tmp = target.with_extension("fuse-download");
    // No `wget -T`: busybox 1.35's wget (Debian 12) crashes with it. The host bounds the
    // whole start instead.
    let script = "command -v wget >/dev/null 2>&1 && exec wget -q -O \"$2\" \"$1\"; \
                  command -v curl >/dev/null 2>&1 && exec curl -fsSL --connect-timeout 30 -o \"$2\" \"$1\"; \
                  echo 'no wget or curl in the image' >&2; exit 127";
    // Up to three attempts, a second apart: a network blip (or a downloader that crashed)
    // should not fail a create; a server that keeps refusing still does, with its words.
    let mut attempt = 0;
    let out = loop {
        attempt += 1;
        let out = Command::new("sh")
            .args(["-c", script, "fetch", url])
            .arg(&tmp)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| fail(e.to_string()))?;
        if out.status.success() || attempt >= FETCH_ATTEMPTS {
            break out;
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    if !out.status.success() {
        let _ = std::fs::remove_file(&tmp);
        let said = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        return Err(fail(if said.is_empty() {
            format!("the downloader exited with {}", out.status)
        } else {
            said
        }));
    }
    if !sha256.is_empty() {
        let got = sha256_file(&tmp).map_err(|e| fail(format!("reading the download: {e}")))?;
        if !got.eq_ignore_ascii_case(sha256) {
            let _ = std::fs::remove_file(&tmp);
            return Err(GuestError::Checksum {
                url: url.to_owned(),
                want: sha256.to_ascii_lowercase(),
                got,
            });
        }
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
        .and_then(|_| std::fs::rename(&tmp, &target))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            GuestError::io("installing", Path::new(binary_path))(e)
        })
}

/// The hex SHA-256 of a file, read in pieces.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    use sha2::Digest;
    let mut f = std::fs::File::open(path)?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_address_of_a_listen_address() {
        assert_eq!(
            probe_addr("0.0.0.0:8443"),
            Some("127.0.0.1:8443".parse().unwrap())
        );
        assert_eq!(probe_addr("[::]:80"), Some("[::1]:80".parse().unwrap()));
        assert_eq!(
            probe_addr("10.0.0.2:9000"),
            Some("10.0.0.2:9000".parse().unwrap())
        );
        assert_eq!(probe_addr(""), None);
        assert_eq!(probe_addr("0.0.0.0:0"), None);
        assert_eq!(probe_addr("unix:/x"), None);
    }
}
