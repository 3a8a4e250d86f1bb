//! The `VmmBackend` seam: what boots and stops a VM. `firecracker` (production), `qemu`
//! (QEMU microvm: hosts without Firecracker, and real guests on machines without hardware
//! virtualisation) and `process` (`fuse-guest` as a local process in the VM's directory; no
//! hypervisor, no isolation: for tests and scale runs). DESIGN §6.

pub mod firecracker;
pub mod process;
pub mod qemu;

use async_trait::async_trait;
use std::path::{Path, PathBuf};

/// Backend failures. Each variant names what failed; the cause is its source.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The VMM could not be started, or would not boot or restore the VM.
    #[error("boot failed: {0}")]
    Boot(String),
    /// A file or directory of the VM could not be read or written.
    #[error("{what}")]
    Io {
        /// What was being done (`writing the guest token`).
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A host tool run on the VM's files failed (`cp`).
    #[error("{tool} failed: {stderr}")]
    Tool {
        /// The tool.
        tool: &'static str,
        /// What it printed.
        stderr: String,
    },
    /// Firecracker refused a call or died.
    #[error("firecracker")]
    Firecracker(#[from] fuse_firecracker::FcError),
    /// QEMU's monitor refused a command, closed, or answered nonsense.
    #[error("QEMU monitor: {0}")]
    Qmp(String),
    /// A step of the backend did not finish in time.
    #[error("{0} timed out")]
    TimedOut(&'static str),
    /// The request cannot be served by this backend or this snapshot.
    #[error("{0}")]
    Unsupported(String),
}

impl BackendError {
    /// An I/O failure while doing `what`.
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BackendError {
        let what = what.into();
        move |source| BackendError::Io { what, source }
    }
}

/// What a backend's VMs are like, so callers decide by capability, not by backend name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// The VM is a process in the host's kernel: its network is a namespace of its own
    /// (veth), not a tap handed to a VMM.
    pub netns: bool,
    /// The guest has a page cache of its own that a disk snapshot must flush first.
    pub guest_page_cache: bool,
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
    /// A fork: the snapshot directory whose disk the root disk starts as a copy of (instead
    /// of the base image).
    pub base: Option<PathBuf>,
}

/// A booted VM's process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Booted {
    /// The process to watch (VMM, or `fuse-guest` itself).
    pub pid: i32,
}

/// `paused.kind` of a VM whose memory and device state are kept (a resume continues
/// every process).
pub const PAUSED_LIVE: &str = "live";
/// `paused.kind` of a VM whose disk alone is kept (the `process` backend: a resume boots
/// the guest again).
pub const PAUSED_DISK: &str = "disk";
/// `paused.kind` of a warm VM: held in its VMM with its vCPUs stopped.
pub const PAUSED_WARM: &str = "warm";

/// What a pause left in the VM's directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Paused {
    /// [`PAUSED_LIVE`] or [`PAUSED_DISK`].
    pub kind: &'static str,
    /// Bytes its artifacts (memory, state, disk) use.
    pub size_bytes: u64,
}

/// The private-link socket's name in a VM directory.
pub const GUEST_SOCKET: &str = "guest.sock";

/// The private-link socket of a VM directory.
pub fn guest_socket(dir: &Path) -> PathBuf {
    dir.join(GUEST_SOCKET)
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
    /// Copies the VM's state into `dest` (a new directory); returns the bytes used.
    async fn snapshot(&self, dir: &Path, pid: i32, dest: &Path) -> Result<u64, BackendError>;
    /// Replaces the VM's state with the snapshot in `src`. A backend that restores by
    /// starting a new VMM process returns it.
    async fn restore(
        &self,
        dir: &Path,
        pid: i32,
        src: &Path,
    ) -> Result<Option<Booted>, BackendError>;
    /// How its guests are reached.
    fn transport(&self) -> crate::link::Transport {
        crate::link::Transport::Vsock
    }
    /// What its VMs are like (see [`Capabilities`]).
    fn capabilities(&self) -> Capabilities;
    /// The boot watchdog: how long one boot may take before it is retried once (`None`:
    /// one attempt of the whole boot timeout).
    fn boot_watchdog(&self) -> Option<std::time::Duration> {
        None
    }
    /// The disk image inside a snapshot directory this backend wrote (what its digest is
    /// of, and what a fork's root disk starts from).
    fn snapshot_disk(&self, snap: &Path) -> PathBuf {
        snap.join("rootfs.ext4")
    }
    /// What a snapshot requested as `mode` actually holds: the disk alone, unless the
    /// backend captures memory too (it overrides this). A `full` request answered `disk`
    /// tells the control plane, which reports `kind: disk`.
    fn snapshot_mode(&self, _requested: &str) -> String {
        "disk".into()
    }
    /// The VM's console as a file on the host (what `logs?source=console` serves), written
    /// with `O_APPEND` so it can be truncated in place.
    fn console_log(&self, dir: &Path) -> PathBuf {
        dir.join("console.log")
    }
    /// The acceleration in use (`kvm`, `tcg`), for `/healthz`.
    fn acceleration(&self) -> Option<String> {
        None
    }
    /// Writes the VM's state into its own directory (memory and devices where the backend
    /// captures them, and its disk) and stops its VMM. On failure the VM runs on.
    async fn pause(&self, dir: &Path, pid: i32) -> Result<Paused, BackendError>;
    /// Starts a paused VM again from what [`VmmBackend::pause`] left in `spec.dir`, whose
    /// network and directory may differ from those at the pause (a VM moved to another
    /// host): the VMM is configured for `spec`, not from what it ran with before. On
    /// failure nothing of the pause's files is changed.
    async fn resume(&self, spec: &BootSpec) -> Result<Booted, BackendError>;
    /// The files a paused VM's directory holds for its resume (names inside it): what a
    /// move sends to another host.
    fn paused_files(&self, dir: &Path) -> Vec<String>;
    /// After a resume: removes the files only the resume needed (its memory).
    fn paused_cleanup(&self, dir: &Path);
    /// Whether it restores a snapshot's memory into a new VM ([`VmmBackend::restore_into`]).
    fn restores_memory(&self) -> bool {
        false
    }
    /// Starts the new VM `spec` (its directory made, its network set up) from the memory
    /// of the full snapshot in `snap` and a copy of its disk, running.
    async fn restore_into(&self, _spec: &BootSpec, _snap: &Path) -> Result<Booted, BackendError> {
        Err(BackendError::Unsupported(format!(
            "the {} backend does not restore memory into a new VM (it keeps no memory)",
            self.name()
        )))
    }
    /// Stops (`run: false`) or starts the VM's vCPUs inside its running VMM (a warm VM).
    async fn vcpus(&self, _dir: &Path, _run: bool) -> Result<(), BackendError> {
        Err(BackendError::Unsupported(format!(
            "the {} backend cannot hold a VM with its vCPUs stopped",
            self.name()
        )))
    }
}

/// Bytes allocated to the file at `p` (0 when it is absent).
pub fn allocated_bytes(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).map(|m| m.blocks() * 512).unwrap_or(0)
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

/// Whether `pid` exists and is not a zombie. Without the command-line check of
/// [`process_alive`]: for a process we started moments ago, whose command line reads empty
/// while it is in the middle of its `exec`.
pub fn pid_running(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit(')')
        .next()
        .and_then(|r| r.split_whitespace().next());
    !matches!(state, None | Some("Z") | Some("X"))
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
