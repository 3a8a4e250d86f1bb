//! The `process` backend: the VM is `fuse-guest` running as a local process whose guest
//! root is the VM's `root/` directory, reached over the same private link (a Unix socket
//! with the vsock handshake) a real VM has. No hypervisor and no isolation; documented as
//! such. It exists for tests of everything above the hypervisor and for scale runs.

use super::{guest_socket, BackendError, BootSpec, Booted, VmmBackend};
use async_trait::async_trait;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// Runs `fuse-guest` processes.
#[derive(Debug, Clone)]
pub struct ProcessBackend {
    guest_bin: PathBuf,
}

impl ProcessBackend {
    /// Uses this `fuse-guest` binary.
    pub fn new(guest_bin: PathBuf) -> Self {
        ProcessBackend { guest_bin }
    }
}

async fn copy_tree(src: &Path, dest: &Path) -> Result<u64, BackendError> {
    let (s, d) = (src.to_owned(), dest.to_owned());
    tokio::task::spawn_blocking(move || -> Result<u64, BackendError> {
        let out = std::process::Command::new("cp")
            .arg("-a")
            .arg("--reflink=auto")
            .arg(&s)
            .arg(&d)
            .output()
            .map_err(BackendError::io("running cp"))?;
        if !out.status.success() {
            return Err(BackendError::Tool {
                tool: "cp",
                stderr: format!(
                    "copying {}: {}",
                    s.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            });
        }
        Ok(dir_size(&d))
    })
    .await
    .map_err(|e| BackendError::Io {
        what: "copying a VM's files".into(),
        source: std::io::Error::other(e),
    })?
}

fn dir_size(p: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(p) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

#[async_trait]
impl VmmBackend for ProcessBackend {
    fn name(&self) -> &'static str {
        "process"
    }

    fn capabilities(&self) -> super::Capabilities {
        super::Capabilities {
            netns: true,
            guest_page_cache: false,
        }
    }

    async fn boot(&self, spec: &BootSpec) -> Result<Booted, BackendError> {
        let root = spec.dir.join("root");
        tokio::fs::create_dir_all(&root)
            .await
            .map_err(BackendError::io("creating the guest root"))?;
        let token_file = spec.dir.join("guest.token");
        crate::files::write_private(&token_file, spec.token.as_bytes())
            .map_err(BackendError::io("writing the guest token"))?;
        let log = std::fs::File::create(spec.dir.join("guest.log"))
            .map_err(BackendError::io("creating the guest log"))?;
        let log2 = log
            .try_clone()
            .map_err(BackendError::io("opening the guest log"))?;
        let sock = guest_socket(&spec.dir);
        let _ = tokio::fs::remove_file(&sock).await;
        // Its own process group and no kill-on-drop: the VM outlives an fc-agent restart.
        // In its own network namespace when the host does networking: the helper joins it
        // itself (`--netns`) before it starts any thread, so no `ip netns exec` runs.
        let mut cmd = std::process::Command::new(&self.guest_bin);
        if let Some(ns) = spec.net.as_ref().and_then(|n| n.netns.as_deref()) {
            cmd.arg("--netns").arg(crate::net::ns::path(ns));
        }
        let child = cmd
            .arg("--listen")
            .arg(format!("unix:{}", sock.display()))
            .arg("--token-file")
            .arg(&token_file)
            .arg("--root")
            .arg(&root)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .process_group(0)
            .spawn()
            .map_err(|e| {
                BackendError::Boot(format!("starting {}: {e}", self.guest_bin.display()))
            })?;
        let pid = child.id() as i32;
        // Reap it when it exits so it does not linger as a zombie while we run.
        std::thread::spawn(move || {
            let mut child = child;
            let _ = child.wait();
        });
        Ok(Booted { pid })
    }

    async fn stop(&self, dir: &Path, pid: i32) {
        // Only ever signal our own helper: after a reboot the pid may be someone else's.
        if pid <= 0 || !super::process_alive(pid, &format!("{}/", dir.display())) {
            return;
        }
        let _ = nix::sys::signal::killpg(Pid::from_raw(pid), Signal::SIGTERM);
        for _ in 0..100 {
            if kill(Pid::from_raw(pid), None).is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = nix::sys::signal::killpg(Pid::from_raw(pid), Signal::SIGKILL);
    }

    async fn snapshot(&self, dir: &Path, _pid: i32, dest: &Path) -> Result<u64, BackendError> {
        copy_tree(&dir.join("root"), dest).await
    }

    async fn restore(
        &self,
        dir: &Path,
        _pid: i32,
        src: &Path,
    ) -> Result<Option<Booted>, BackendError> {
        let root = dir.join("root");
        let old = dir.join("root.old");
        let _ = tokio::fs::remove_dir_all(&old).await;
        tokio::fs::rename(&root, &old)
            .await
            .map_err(BackendError::io("moving the current root aside"))?;
        if let Err(e) = copy_tree(src, &root).await {
            let _ = tokio::fs::rename(&old, &root).await;
            return Err(e);
        }
        let _ = tokio::fs::remove_dir_all(&old).await;
        Ok(None)
    }
}

use std::os::unix::process::CommandExt as _;
