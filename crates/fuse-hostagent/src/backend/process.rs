//! The `process` backend: the VM is `fuse-guest` running as a local process whose guest
//! root is the VM's `root/` directory, reached over the same private link (a Unix socket
//! with the vsock handshake) a real VM has. No hypervisor and no isolation; documented as
//! such. It exists for tests of everything above the hypervisor and for scale runs.
//!
//! Its disk is the guest root directory: a snapshot archives it (`root.tar`, the image its
//! digest is of), a restore and a fork unpack it. It has no memory to keep: a pause stops
//! the helper and archives the root into the VM's directory (`root.tar`, kind `disk`, one
//! file a move can send); a resume unpacks it if the root is not there (a moved VM) and
//! starts the helper again.

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

/// A process VM's "disk" in a snapshot: its guest root as one tar archive (a single image
/// file, so it has a digest like any other backend's disk).
pub const ROOT_ARCHIVE: &str = "root.tar";

/// Runs a host tool on a VM's files off the async workers.
async fn tool(what: &'static str, cmd: std::process::Command) -> Result<(), BackendError> {
    let mut cmd = cmd;
    tokio::task::spawn_blocking(move || -> Result<(), BackendError> {
        let out = cmd
            .output()
            .map_err(BackendError::io(format!("running {what}")))?;
        if !out.status.success() {
            return Err(BackendError::Tool {
                tool: what,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(())
    })
    .await
    .map_err(|e| BackendError::Io {
        what: format!("running {what}"),
        source: std::io::Error::other(e),
    })?
}

/// Archives the guest root `root` into `dest/root.tar` (names sorted, owners and modes
/// kept); returns its size.
async fn archive_root(root: &Path, dest: &Path) -> Result<u64, BackendError> {
    std::fs::create_dir_all(dest).map_err(BackendError::io("creating the snapshot directory"))?;
    let file = dest.join(ROOT_ARCHIVE);
    let mut cmd = std::process::Command::new("tar");
    cmd.arg("--create")
        .arg("--sort=name")
        .arg("--numeric-owner")
        .arg("--file")
        .arg(&file)
        .arg("--directory")
        .arg(root)
        .arg(".");
    tool("tar", cmd).await?;
    Ok(std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0))
}

/// Fills the (new, empty) guest root `root` from the snapshot in `snap`: its archive, or
/// the plain copy of the root an older agent's snapshot is.
async fn unpack_root(snap: &Path, root: &Path) -> Result<(), BackendError> {
    let archive = snap.join(ROOT_ARCHIVE);
    if !archive.is_file() {
        let _ = tokio::fs::remove_dir(root).await;
        let mut cmd = std::process::Command::new("cp");
        cmd.arg("-a").arg("--reflink=auto").arg(snap).arg(root);
        return tool("cp", cmd).await;
    }
    std::fs::create_dir_all(root).map_err(BackendError::io("creating the guest root"))?;
    let mut cmd = std::process::Command::new("tar");
    cmd.arg("--extract")
        .arg("--same-permissions")
        .arg("--numeric-owner")
        .arg("--file")
        .arg(&archive)
        .arg("--directory")
        .arg(root);
    tool("tar", cmd).await
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

    fn snapshot_disk(&self, snap: &Path) -> PathBuf {
        snap.join(ROOT_ARCHIVE)
    }

    fn console_log(&self, dir: &Path) -> PathBuf {
        // No serial console: the helper's own output is the nearest thing.
        dir.join("guest.log")
    }

    async fn boot(&self, spec: &BootSpec) -> Result<Booted, BackendError> {
        let root = spec.dir.join("root");
        match &spec.base {
            // A fork: its root starts as the snapshot's.
            Some(snap) if !root.exists() => unpack_root(snap, &root).await?,
            _ => tokio::fs::create_dir_all(&root)
                .await
                .map_err(BackendError::io("creating the guest root"))?,
        }
        let token_file = spec.dir.join("guest.token");
        crate::files::write_private(&token_file, spec.token.as_bytes())
            .map_err(BackendError::io("writing the guest token"))?;
        // Appended to (O_APPEND), so fc-agent can truncate it in place when it grows.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(spec.dir.join("guest.log"))
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
        archive_root(&dir.join("root"), dest).await
    }

    async fn pause(&self, dir: &Path, pid: i32) -> Result<super::Paused, BackendError> {
        // Stopped first: the archive is the root as the helper left it.
        self.stop(dir, pid).await;
        let size = archive_root(&dir.join("root"), dir).await?;
        Ok(super::Paused {
            kind: super::PAUSED_DISK,
            size_bytes: size,
        })
    }

    async fn resume(&self, spec: &BootSpec) -> Result<Booted, BackendError> {
        let root = spec.dir.join("root");
        if !root.exists() {
            if !spec.dir.join(ROOT_ARCHIVE).is_file() {
                return Err(BackendError::Unsupported(format!(
                    "the paused VM has neither its root nor {ROOT_ARCHIVE}"
                )));
            }
            if let Err(e) = unpack_root(&spec.dir, &root).await {
                let _ = tokio::fs::remove_dir_all(&root).await;
                return Err(e);
            }
        }
        self.boot(&BootSpec {
            base: None,
            ..spec.clone()
        })
        .await
    }

    fn paused_files(&self, _dir: &Path) -> Vec<String> {
        vec![ROOT_ARCHIVE.into()]
    }

    fn paused_cleanup(&self, dir: &Path) {
        let _ = std::fs::remove_file(dir.join(ROOT_ARCHIVE));
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
        if let Err(e) = unpack_root(src, &root).await {
            let _ = tokio::fs::remove_dir_all(&root).await;
            let _ = tokio::fs::rename(&old, &root).await;
            return Err(e);
        }
        let _ = tokio::fs::remove_dir_all(&old).await;
        Ok(None)
    }
}

use std::os::unix::process::CommandExt as _;
