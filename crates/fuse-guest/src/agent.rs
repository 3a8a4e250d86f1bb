//! The agent supervisor: fetches the agent binary once, launches the agent's command
//! (`sh -c`) in its own process group with its output appended to a log, restarts it with
//! back-off when it crashes (a non-zero exit or a signal), and stops it with SIGTERM then
//! SIGKILL. An agent that exits 0 stopped on purpose (the profile's drain command sends it
//! SIGTERM, and it exits 0) and stays stopped, like systemd's `Restart=on-failure`.

use crate::error::GuestError;
use crate::ops::kill_group;
use crate::Guest;
use nix::sys::signal::Signal;
use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The agent's log file (guest path).
pub const LOG_PATH: &str = "/var/log/fuse-agent.log";

#[derive(Default)]
struct State {
    /// Incremented per start; a supervisor thread exits when its epoch is stale.
    epoch: u64,
    pid: Option<i32>,
    wanted: bool,
    restarts: u32,
    last_exit: Option<i32>,
    /// Launches so far (of any epoch): what `start` waits on, since an agent that exits at
    /// once is gone again (no pid) by the time the waiter looks.
    launches: u64,
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

    /// Fetches the binary if needed, then (re)starts the agent.
    pub fn start(
        self: &Arc<Self>,
        g: &Guest,
        download_url: &str,
        command: &str,
        binary_path: &str,
        env: BTreeMap<String, String>,
    ) -> Result<(), GuestError> {
        if command.trim().is_empty() {
            return Err(GuestError::EmptyCommand);
        }
        if !download_url.is_empty() && !binary_path.is_empty() {
            fetch_once(g, download_url, binary_path)?;
        }
        // Replace a running agent (rotate-token restarts it with new credentials).
        self.stop(Duration::from_secs(10));
        let (epoch, launched) = {
            let mut s = self.lock();
            s.epoch += 1;
            s.wanted = true;
            (s.epoch, s.launches)
        };
        let log = g.resolve(LOG_PATH)?;
        if let Some(d) = log.parent() {
            std::fs::create_dir_all(d).map_err(GuestError::io("creating", d))?;
        }
        let me = self.clone();
        let (cmd, root) = (command.to_owned(), g.root.clone());
        std::thread::spawn(move || me.supervise(epoch, cmd, env, root, log));
        // Wait until the first launch happened (the agent may already have exited again:
        // a crash is the supervisor's to restart, not a reason to wait for the restart).
        let s = self.lock();
        let _unused = self
            .changed
            .wait_timeout_while(s, Duration::from_secs(5), |s| {
                s.epoch == epoch && s.launches == launched && s.wanted
            })
            .map_err(|_| GuestError::Poisoned)?;
        Ok(())
    }

    fn supervise(
        self: Arc<Self>,
        epoch: u64,
        cmd: String,
        env: BTreeMap<String, String>,
        root: PathBuf,
        log: PathBuf,
    ) {
        let mut backoff = Duration::from_millis(500);
        loop {
            let out = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log);
            let (o, e) = match out.and_then(|f| Ok((f.try_clone()?, f))) {
                Ok((a, b)) => (Stdio::from(a), Stdio::from(b)),
                Err(_) => (Stdio::null(), Stdio::null()),
            };
            let started = Instant::now();
            let child = Command::new("sh")
                .arg("-c")
                .arg(&cmd)
                .envs(&env)
                .current_dir(&root)
                .stdin(Stdio::null())
                .stdout(o)
                .stderr(e)
                .process_group(0)
                .spawn();
            let mut child = match child {
                Ok(c) => c,
                Err(_) => return,
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
            let code = status.ok().and_then(|s| s.code());
            let mut s = self.lock();
            if s.epoch != epoch {
                return;
            }
            s.pid = None;
            s.last_exit = code;
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

/// Downloads the agent binary unless it is already there (idempotent). Uses the image's
/// `wget` or `curl`; the helper itself has no HTTP client.
fn fetch_once(g: &Guest, url: &str, binary_path: &str) -> Result<(), GuestError> {
    let target = g.resolve(binary_path)?;
    if std::fs::metadata(&target)
        .map(|m| m.len() > 0)
        .unwrap_or(false)
    {
        return Ok(());
    }
    if let Some(d) = target.parent() {
        std::fs::create_dir_all(d).map_err(GuestError::io("creating", d))?;
    }
    let tmp = target.with_extension("fuse-download");
    let script = "command -v wget >/dev/null 2>&1 && exec wget -q -O \"$2\" \"$1\"; \
                  command -v curl >/dev/null 2>&1 && exec curl -fsSL -o \"$2\" \"$1\"; \
                  echo 'no wget or curl in the image' >&2; exit 127";
    let out = Command::new("sh")
        .args(["-c", script, "fetch", url])
        .arg(&tmp)
        .output()
        .map_err(|e| GuestError::Fetch {
            url: url.to_owned(),
            detail: e.to_string(),
        })?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&tmp);
        return Err(GuestError::Fetch {
            url: url.to_owned(),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
        .and_then(|_| std::fs::rename(&tmp, &target))
        .map_err(GuestError::io(
            "installing",
            std::path::Path::new(binary_path),
        ))
}
