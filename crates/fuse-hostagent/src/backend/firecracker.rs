//! The `firecracker` backend: one Firecracker process per VM, configured through its API
//! socket (machine config, boot source with the per-VM token on the kernel command line,
//! a copy-on-write root disk grown to the VM's size, vsock whose host side is the VM's
//! private-link socket), then started. The process runs in its own process group and
//! survives an `fc-agent` restart; its command line names the VM directory, so adoption can
//! tell it from a recycled pid.
//!
//! Firecracker runs in the VM's directory and is given the drive and the vsock socket as
//! paths relative to it, so the snapshot state it writes names them relatively too: a
//! snapshot (or a paused VM's state) loads in another directory — a new VM made from a
//! template, a paused VM moved to another host — and uses that directory's disk and
//! socket; its tap is given at load (`network_overrides`).

use super::{guest_socket, BackendError, BootSpec, Booted, VmmBackend};
use async_trait::async_trait;
use fuse_firecracker::Firecracker;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Guest CID of every VM (each VM has its own vsock device and host socket).
const GUEST_CID: u32 = 3;

/// Boots Firecracker VMs.
#[derive(Debug, Clone)]
pub struct FirecrackerBackend {
    /// The firecracker binary.
    pub bin: PathBuf,
    /// Guest kernel (ELF vmlinux).
    pub kernel: PathBuf,
    /// Optional initrd.
    pub initrd: Option<PathBuf>,
    /// Base root filesystem image.
    pub rootfs: PathBuf,
    /// Kernel command line (the token and vsock port are appended).
    pub boot_args: String,
}

/// Copies `base` to `dest` copy-on-write where the filesystem supports it (reflink), sparse
/// otherwise, then grows it to `gb` GiB (never shrinks); an ext2/3/4 image's filesystem is
/// grown with it (`resize2fs`), so the guest sees the VM's `storage_gb`.
pub async fn clone_rootfs(base: &Path, dest: &Path, gb: u64) -> Result<(), BackendError> {
    let out = tokio::process::Command::new("cp")
        .arg("--reflink=auto")
        .arg("--sparse=always")
        .arg(base)
        .arg(dest)
        .output()
        .await
        .map_err(BackendError::io("running cp"))?;
    if !out.status.success() {
        return Err(BackendError::Tool {
            tool: "cp",
            stderr: format!(
                "copying the base image: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(dest)
        .map_err(BackendError::io("opening the root disk"))?;
    let want = gb << 30;
    let have = f.metadata().map(|m| m.len()).unwrap_or(0);
    if want > have {
        f.set_len(want)
            .map_err(BackendError::io("growing the root disk"))?;
        drop(f);
        if is_ext_image(dest) {
            // Best effort: without it the guest still boots, with the image's own size.
            match tokio::process::Command::new("resize2fs")
                .arg("-f")
                .arg(dest)
                .output()
                .await
            {
                Ok(o) if o.status.success() => {}
                Ok(o) => tracing::warn!(
                    disk = %dest.display(),
                    error = %String::from_utf8_lossy(&o.stderr).trim(),
                    "resize2fs failed; the guest keeps the image's filesystem size"
                ),
                Err(e) => tracing::warn!(
                    error = %e,
                    "resize2fs not available; the guest keeps the image's filesystem size"
                ),
            }
        }
    }
    Ok(())
}

/// Whether `p` starts with an ext2/3/4 superblock (magic 0xEF53 at byte 1080).
fn is_ext_image(p: &Path) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let mut magic = [0u8; 2];
    std::fs::File::open(p)
        .and_then(|mut f| {
            f.seek(SeekFrom::Start(1080))?;
            f.read_exact(&mut magic)
        })
        .is_ok()
        && magic == [0x53, 0xEF]
}

#[async_trait]
impl VmmBackend for FirecrackerBackend {
    fn name(&self) -> &'static str {
        "firecracker"
    }

    fn capabilities(&self) -> super::Capabilities {
        super::Capabilities {
            netns: false,
            guest_page_cache: true,
        }
    }

    fn acceleration(&self) -> Option<String> {
        // Firecracker has no emulation: it always runs guests with KVM.
        Some("kvm".into())
    }

    async fn boot(&self, spec: &BootSpec) -> Result<Booted, BackendError> {
        let disk = spec.dir.join("rootfs.ext4");
        let base = match &spec.base {
            Some(snap) => self.snapshot_disk(snap),
            None => self.rootfs.clone(),
        };
        clone_rootfs(&base, &disk, spec.storage_gb).await?;
        let fail = BackendError::Firecracker;
        let mut vm = Firecracker::spawn(&self.bin, &spec.dir, &spec.vm_id)
            .await
            .map_err(fail)?;
        let mut args = format!(
            "{} fuse.token={} fuse.port={}",
            self.boot_args,
            spec.token,
            crate::link::GUEST_PORT
        );
        if let Some(n) = &spec.net {
            // Kernel-level IP configuration of eth0 (no DHCP inside the guest).
            args.push_str(&format!(
                " ip={}::{}:255.255.255.252::eth0:off",
                n.guest_ip, n.host_ip
            ));
        }
        let configured = async {
            vm.machine_config(spec.cpus, spec.memory_mb).await?;
            vm.boot_source(&self.kernel, self.initrd.as_deref(), &args)
                .await?;
            // Relative to its working directory, the VM's (see the module doc).
            vm.drive("rootfs", Path::new(DISK), true, false).await?;
            vm.vsock(GUEST_CID, Path::new(super::GUEST_SOCKET)).await?;
            if let Some(n) = &spec.net {
                vm.network_interface("eth0", &n.dev, None).await?;
            }
            vm.start().await
        }
        .await;
        if let Err(e) = configured {
            vm.stop().await;
            return Err(fail(e));
        }
        let pid = vm.pid().map(|p| p as i32).unwrap_or(-1);
        // The VM outlives this call (and fc-agent); its exit is still reaped while we run.
        vm.detach();
        Ok(Booted { pid })
    }

    async fn stop(&self, dir: &Path, pid: i32) {
        // Only ever signal our own VMM: after a reboot the pid may be someone else's.
        if pid > 0 && super::process_alive(pid, &format!("{}/", dir.display())) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            for _ in 0..50 {
                if kill(Pid::from_raw(pid), None).is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let _ = std::fs::remove_file(fuse_firecracker::api_socket(dir));
        let _ = std::fs::remove_file(guest_socket(dir));
    }

    fn snapshot_mode(&self, _requested: &str) -> String {
        // Always VM state, memory and disk, taken while the VM is paused: a disk alone would
        // need a reboot to restore, which loses the running agent.
        "full".into()
    }

    async fn snapshot(&self, dir: &Path, _pid: i32, dest: &Path) -> Result<u64, BackendError> {
        std::fs::create_dir_all(dest)
            .map_err(BackendError::io("creating the snapshot directory"))?;
        let ctl = fuse_firecracker::Control::attach(dir);
        let fail = BackendError::Firecracker;
        ctl.pause().await.map_err(fail)?;
        // Paused: memory and disk are one consistent point in time. Always resume.
        let taken = async {
            ctl.snapshot_create(&dest.join(STATE_FILE), &dest.join(MEM_FILE))
                .await
                .map_err(fail)?;
            clone_rootfs(&dir.join("rootfs.ext4"), &dest.join("rootfs.ext4"), 0).await
        }
        .await;
        let resumed = ctl.resume().await.map_err(fail);
        taken?;
        resumed?;
        let size = [STATE_FILE, MEM_FILE, "rootfs.ext4"]
            .iter()
            .filter_map(|f| std::fs::metadata(dest.join(f)).ok())
            .map(|m| {
                use std::os::unix::fs::MetadataExt;
                m.blocks() * 512
            })
            .sum();
        Ok(size)
    }

    async fn restore(
        &self,
        dir: &Path,
        pid: i32,
        src: &Path,
    ) -> Result<Option<Booted>, BackendError> {
        if !src.join(STATE_FILE).exists() {
            return Err(BackendError::Unsupported(
                "this snapshot holds the disk only (taken by an older fc-agent); a Firecracker \
                 VM is restored from a full snapshot"
                    .into(),
            ));
        }
        // Firecracker loads a snapshot only into a fresh process: stop the running one and
        // wait until it is gone (it holds the tap and the vsock socket).
        self.stop(dir, pid).await;
        let marker = format!("{}/", dir.display());
        for _ in 0..250 {
            if !super::process_alive(pid, &marker) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if super::process_alive(pid, &marker) {
            return Err(BackendError::Boot(
                "the running VMM did not stop for the restore".into(),
            ));
        }
        // The disk at the snapshot's point in time, under the path the VM state names.
        clone_rootfs(&src.join("rootfs.ext4"), &dir.join("rootfs.ext4"), 0).await?;
        let _ = std::fs::remove_file(guest_socket(dir));
        let id = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let fail = BackendError::Firecracker;
        let mut vm = Firecracker::spawn(&self.bin, dir, &id)
            .await
            .map_err(fail)?;
        if let Err(e) = vm
            .snapshot_load(&src.join(STATE_FILE), &src.join(MEM_FILE), true)
            .await
        {
            vm.stop().await;
            return Err(fail(e));
        }
        let pid = vm.pid().map(|p| p as i32).unwrap_or(-1);
        vm.detach();
        Ok(Some(Booted { pid }))
    }

    async fn pause(&self, dir: &Path, pid: i32) -> Result<super::Paused, BackendError> {
        let ctl = fuse_firecracker::Control::attach(dir);
        let fail = BackendError::Firecracker;
        ctl.pause().await.map_err(fail)?;
        if let Err(e) = ctl
            .snapshot_create(&dir.join(STATE_FILE), &dir.join(MEM_FILE))
            .await
        {
            // The VM runs on, as it was.
            let _ = std::fs::remove_file(dir.join(STATE_FILE));
            let _ = std::fs::remove_file(dir.join(MEM_FILE));
            let _ = ctl.resume().await;
            return Err(fail(e));
        }
        self.stop_and_wait(dir, pid).await?;
        let size = [STATE_FILE, MEM_FILE, DISK]
            .iter()
            .map(|f| super::allocated_bytes(&dir.join(f)))
            .sum();
        Ok(super::Paused {
            kind: super::PAUSED_LIVE,
            size_bytes: size,
        })
    }

    async fn resume(&self, spec: &BootSpec) -> Result<Booted, BackendError> {
        let (state, mem) = (spec.dir.join(STATE_FILE), spec.dir.join(MEM_FILE));
        if !state.is_file() || !mem.is_file() || !spec.dir.join(DISK).is_file() {
            return Err(BackendError::Unsupported(
                "the paused VM's directory has no VM state, memory or disk image".into(),
            ));
        }
        self.load(spec, &state, &mem).await
    }

    fn paused_files(&self, _dir: &Path) -> Vec<String> {
        vec![STATE_FILE.into(), MEM_FILE.into(), DISK.into()]
    }

    fn paused_cleanup(&self, dir: &Path) {
        let _ = std::fs::remove_file(dir.join(STATE_FILE));
        let _ = std::fs::remove_file(dir.join(MEM_FILE));
    }

    fn restores_memory(&self) -> bool {
        true
    }

    async fn restore_into(&self, spec: &BootSpec, snap: &Path) -> Result<Booted, BackendError> {
        if !snap.join(STATE_FILE).is_file() || !snap.join(MEM_FILE).is_file() {
            return Err(BackendError::Unsupported(
                "the snapshot has no VM state or memory".into(),
            ));
        }
        // The disk the state names (relatively): this VM's copy of the snapshot's.
        clone_rootfs(&snap.join(DISK), &spec.dir.join(DISK), 0).await?;
        // The memory file is mapped privately: every VM made from it loads the same.
        self.load(spec, &snap.join(STATE_FILE), &snap.join(MEM_FILE))
            .await
    }

    async fn vcpus(&self, dir: &Path, run: bool) -> Result<(), BackendError> {
        let ctl = fuse_firecracker::Control::attach(dir);
        let done = if run {
            ctl.resume().await
        } else {
            ctl.pause().await
        };
        done.map_err(BackendError::Firecracker)
    }
}

/// A full snapshot's files in its directory (beside `rootfs.ext4`), and a paused VM's in
/// its own.
const STATE_FILE: &str = "vm.state";
const MEM_FILE: &str = "vm.mem";
/// The root disk in a VM's directory.
const DISK: &str = "rootfs.ext4";

impl FirecrackerBackend {
    /// A new Firecracker in `spec.dir` loaded from `state` and `mem`, on `spec`'s tap, running.
    async fn load(
        &self,
        spec: &BootSpec,
        state: &Path,
        mem: &Path,
    ) -> Result<Booted, BackendError> {
        let _ = std::fs::remove_file(guest_socket(&spec.dir));
        let fail = BackendError::Firecracker;
        let mut vm = Firecracker::spawn(&self.bin, &spec.dir, &spec.vm_id)
            .await
            .map_err(fail)?;
        let taps: Vec<(&str, &str)> = spec.net.iter().map(|n| ("eth0", n.dev.as_str())).collect();
        if let Err(e) = vm.snapshot_load_on(state, mem, true, &taps).await {
            vm.stop().await;
            return Err(fail(e));
        }
        let pid = vm.pid().map(|p| p as i32).unwrap_or(-1);
        vm.detach();
        Ok(Booted { pid })
    }

    /// Stops the VMM at `pid` and waits until it is gone (it holds the tap and the socket).
    async fn stop_and_wait(&self, dir: &Path, pid: i32) -> Result<(), BackendError> {
        self.stop(dir, pid).await;
        let marker = format!("{}/", dir.display());
        for _ in 0..250 {
            if !super::process_alive(pid, &marker) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(BackendError::Boot("the running VMM did not stop".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn root_disk_is_a_sparse_copy_grown_to_size() {
        let dir = std::env::temp_dir().join(format!("fuse-clone-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let base = dir.join("base.ext4");
        std::fs::write(&base, b"superblock").unwrap();
        let vm = dir.join("vm.ext4");
        clone_rootfs(&base, &vm, 2).await.unwrap();
        let meta = std::fs::metadata(&vm).unwrap();
        assert_eq!(meta.len(), 2 << 30, "grown to storage_gb");
        use std::os::unix::fs::MetadataExt;
        assert!(
            meta.blocks() * 512 < 1 << 20,
            "sparse: {} bytes allocated",
            meta.blocks() * 512
        );
        let mut head = [0u8; 10];
        use std::io::Read;
        std::fs::File::open(&vm)
            .unwrap()
            .read_exact(&mut head)
            .unwrap();
        assert_eq!(&head, b"superblock");
        assert_eq!(
            std::fs::read(&base).unwrap(),
            b"superblock",
            "base untouched"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
