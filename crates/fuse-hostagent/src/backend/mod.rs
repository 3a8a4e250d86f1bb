//! The `VmmBackend` seam: what boots and stops a VM. `process` runs `fuse-guest` as a local
//! process in the VM's directory (no hypervisor, no isolation: for tests and scale runs).
//! `firecracker` and `qemu` come next (DESIGN §6).

pub mod firecracker;
pub mod process;

use async_trait::async_trait;
use std::path::{Path, PathBuf};

/// Backend failures.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// Starting the VM failed.
    #[error("boot failed: {0}")]
    Boot(String),
    /// Filesystem trouble in the VM's directory.
    #[error("{0}")]
    Io(String),
}

/// What a backend needs to boot one VM.
#[derive(Debug, Clone)]
pub struct BootSpec {
    /// VM id.
    pub vm_id: String,
    /// Its directory (state, sockets, root, logs).
    pub dir: PathBuf,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mb: u64,
    /// Root disk in GiB.
    pub storage_gb: u64,
    /// The per-VM token `fuse-guest` is started with.
    pub token: String,
    /// The VM's network, when the host does networking.
    pub net: Option<crate::net::NetInfo>,
}

/// A booted VM's process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Booted {
    /// The process to watch (VMM, or `fuse-guest` itself).
    pub pid: i32,
}

/// The private-link socket of a VM directory.
pub fn guest_socket(dir: &Path) -> PathBuf {
    dir.join("guest.sock")
}

/// Boots and stops VMs.
#[async_trait]
pub trait VmmBackend: Send + Sync + 'static {
    /// `process`, `firecracker`, `qemu`.
    fn name(&self) -> &'static str;
    /// Boots a VM whose directory exists; returns once the process runs.
    async fn boot(&self, spec: &BootSpec) -> Result<Booted, BackendError>;
    /// Stops it (idempotent).
    async fn stop(&self, dir: &Path, pid: i32);
    /// Copies the VM's disk state into `dest` (a new directory).
    async fn snapshot(&self, dir: &Path, dest: &Path) -> Result<u64, BackendError>;
    /// Replaces the VM's disk state with `src`.
    async fn restore(&self, dir: &Path, src: &Path) -> Result<(), BackendError>;
}

/// Whether `pid` runs and is the process we started (its command line mentions `marker`),
/// so a recycled pid is not mistaken for our VM.
pub fn process_alive(pid: i32, marker: &str) -> bool {
    if pid <= 0 {
        return false;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Field 3 is the state; a zombie is dead.
    let state = stat
        .rsplit(')')
        .next()
        .and_then(|r| r.split_whitespace().next());
    if matches!(state, None | Some("Z") | Some("X")) {
        return false;
    }
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains(marker))
        .unwrap_or(false)
}

/// Kills every process whose command line mentions `marker` (a VM directory): reclaims the
/// VMM or helper of a VM whose state was never written (the agent died mid-create).
/// Returns how many were killed.
pub fn kill_by_marker(marker: &str) -> usize {
    let me = std::process::id();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut n = 0;
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid as u32 == me {
            continue;
        }
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmd).contains(marker)
            && nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            )
            .is_ok()
        {
            n += 1;
        }
    }
    n
}
