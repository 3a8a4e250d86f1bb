//! The `qemu` backend: one QEMU `-M microvm` process per VM (Debian's `qemu-system-x86`
//! from bookworm-backports), for hosts without Firecracker and for real Linux guests on
//! machines whose `/dev/kvm` cannot run them (then QEMU emulates the CPU: TCG).
//!
//! Per VM: a copy-on-write root disk (as for Firecracker), the kernel (bzImage) and initrd,
//! the VM's tap, a virtio-serial port whose chardev socket is the private link (no vsock
//! here; the link is multiplexed, see `link`), the serial console in `console.log`, and a QMP
//! socket for pause, memory snapshots and resume. The exact command line is kept in
//! `qemu.json` so a restore starts the same machine with `-incoming`.
//!
//! Invariants: the process runs in its own process group and survives an `fc-agent`
//! restart; its command line names the VM directory (adoption tells it from a recycled
//! pid); a snapshot always resumes the VM, whether it succeeded or not.

use super::firecracker::clone_rootfs;
use super::{guest_socket, BackendError, BootSpec, Booted, VmmBackend};
use async_trait::async_trait;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// How the guest CPU runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualisation through `/dev/kvm`.
    Kvm,
    /// QEMU's software emulation.
    Tcg,
}

impl Accel {
    /// `kvm` or `tcg`.
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// Boots QEMU microvm VMs.
#[derive(Debug, Clone)]
pub struct QemuBackend {
    /// `qemu-system-x86_64`.
    pub bin: PathBuf,
    /// Guest kernel (bzImage).
    pub kernel: PathBuf,
    /// Initrd that loads the virtio drivers and mounts `/dev/vda`.
    pub initrd: Option<PathBuf>,
    /// Base root filesystem image.
    pub rootfs: PathBuf,
    /// Kernel command line (quiet, TSC rate, token, link and `ip=` are appended).
    pub boot_args: String,
    /// Acceleration, resolved at start.
    pub accel: Accel,
    /// The host's TSC rate in kHz, given to the guest so it does not calibrate.
    pub tsc_khz: Option<u64>,
    /// Boot watchdog (one retry).
    pub watchdog: Duration,
}

/// The kernel command line of one VM.
pub fn kernel_cmdline(base: &str, tsc_khz: Option<u64>, spec: &BootSpec) -> String {
    let mut args = base.trim().to_owned();
    if !args
        .split_whitespace()
        .any(|w| w == "quiet" || w.starts_with("loglevel="))
    {
        // The serial console is slow under emulation; boot messages cost boot time.
        args.push_str(" quiet");
    }
    if let Some(k) = tsc_khz {
        // Without it ~5 % of emulated boots hang while calibrating the TSC.
        args.push_str(&format!(" tsc_early_khz={k}"));
    }
    args.push_str(&format!(
        " fuse.token={} fuse.link=vport:{}",
        spec.token,
        crate::link::SERIAL_PORT_NAME
    ));
    if let Some(n) = &spec.net {
        // Read by the image's init (the kernel's own IP autoconfiguration is not built in).
        args.push_str(&format!(
            " ip={}::{}:255.255.255.252::eth0:off",
            n.guest_ip, n.host_ip
        ));
    }
    args
}

/// The QEMU command line of one VM (without the binary).
pub fn qemu_args(b: &QemuBackend, spec: &BootSpec, disk: &Path) -> Vec<String> {
    let dir = &spec.dir;
    let p = |f: &str| dir.join(f).display().to_string();
    let mut a: Vec<String> = vec![
        "-name".into(),
        spec.vm_id.clone(),
        "-M".into(),
        "microvm,isa-serial=on,rtc=on".into(),
        "-accel".into(),
        b.accel.as_str().into(),
        "-cpu".into(),
        match b.accel {
            Accel::Kvm => "host",
            Accel::Tcg => "max",
        }
        .into(),
        "-m".into(),
        spec.memory_mb.to_string(),
        "-smp".into(),
        spec.cpus.to_string(),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-display".into(),
        "none".into(),
        "-monitor".into(),
        "none".into(),
        "-no-reboot".into(),
        "-kernel".into(),
        b.kernel.display().to_string(),
    ];
    if let Some(i) = &b.initrd {
        a.extend(["-initrd".into(), i.display().to_string()]);
    }
    a.extend([
        "-append".into(),
        kernel_cmdline(&b.boot_args, b.tsc_khz, spec),
        "-drive".into(),
        format!("id=d0,file={},format=raw,if=none", disk.display()),
        "-device".into(),
        "virtio-blk-device,drive=d0".into(),
        "-device".into(),
        "virtio-serial-device".into(),
        "-chardev".into(),
        format!(
            "socket,id=c0,path={},server=on,wait=off",
            guest_socket(dir).display()
        ),
        "-device".into(),
        format!(
            "virtserialport,chardev=c0,name={}",
            crate::link::SERIAL_PORT_NAME
        ),
        // Appended to (O_APPEND), so fc-agent can truncate it in place when it grows.
        "-chardev".into(),
        format!("file,id=con0,path={},append=on", p("console.log")),
        "-serial".into(),
        "chardev:con0".into(),
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", p("qmp.sock")),
    ]);
    if let Some(n) = &spec.net {
        a.extend([
            "-netdev".into(),
            format!("tap,id=n0,ifname={},script=no,downscript=no", n.dev),
            "-device".into(),
            "virtio-net-device,netdev=n0".into(),
        ]);
    }
    a
}

/// The host's TSC rate in kHz: the kernel's refined calibration (or its first detection)
/// from the kernel log, else `cpu MHz` of `/proc/cpuinfo` when the TSC is constant.
pub fn host_tsc_khz() -> Option<u64> {
    let log = std::process::Command::new("dmesg")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    tsc_khz_from(&log, &cpuinfo)
}

/// [`host_tsc_khz`] on given kernel-log and cpuinfo texts.
pub fn tsc_khz_from(kernel_log: &str, cpuinfo: &str) -> Option<u64> {
    let mhz_to_khz = |s: &str| -> Option<u64> {
        let v: f64 = s.trim().parse().ok()?;
        (v > 0.0).then(|| (v * 1000.0).round() as u64)
    };
    for key in [
        "tsc: Refined TSC clocksource calibration: ",
        "tsc: Detected ",
    ] {
        if let Some(v) = kernel_log.lines().find_map(|l| {
            let rest = &l[l.find(key)? + key.len()..];
            mhz_to_khz(rest.split_whitespace().next()?)
        }) {
            return Some(v);
        }
    }
    if !cpuinfo.contains("constant_tsc") {
        return None;
    }
    cpuinfo
        .lines()
        .find(|l| l.starts_with("cpu MHz"))
        .and_then(|l| mhz_to_khz(l.split(':').nth(1)?))
}

/// Why KVM cannot run this host's guests.
#[derive(Debug, thiserror::Error)]
pub enum KvmProbeError {
    /// No usable `/dev/kvm`.
    #[error("/dev/kvm cannot be opened")]
    NoDevice(#[source] std::io::Error),
    /// QEMU did not start.
    #[error("starting {bin}")]
    Spawn {
        /// The QEMU binary.
        bin: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// QEMU started without a console to watch.
    #[error("QEMU gave no console")]
    NoConsole,
    /// The test guest died before userspace (a software-only KVM).
    #[error("a test guest died under KVM before userspace: {0}")]
    Died(String),
    /// The test guest did not reach userspace in time.
    #[error("a test guest did not reach userspace under KVM within {0} s")]
    TimedOut(u64),
}

/// Whether `/dev/kvm` really runs this guest kernel: boots it with `fuse.probe=1` (the
/// image's initramfs prints `FUSE-PROBE-OK` and powers off) and watches the console.
/// A software-only KVM (such as PVM in a nested cloud VM) exists but dies early in boot.
pub async fn probe_kvm(
    bin: &Path,
    kernel: &Path,
    initrd: Option<&Path>,
    limit: Duration,
) -> Result<(), KvmProbeError> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(KvmProbeError::NoDevice)?;
    let mut cmd = tokio::process::Command::new(bin);
    cmd.args([
        "-M",
        "microvm,isa-serial=on",
        "-accel",
        "kvm",
        "-cpu",
        "host",
        "-m",
        "128",
        "-smp",
        "1",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-monitor",
        "none",
        "-no-reboot",
        "-serial",
        "stdio",
        "-append",
        "console=ttyS0 panic=-1 quiet fuse.probe=1",
        "-kernel",
    ])
    .arg(kernel);
    if let Some(i) = initrd {
        cmd.arg("-initrd").arg(i);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|source| KvmProbeError::Spawn {
        bin: bin.display().to_string(),
        source,
    })?;
    let (Some(out), Some(err)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(KvmProbeError::NoConsole);
    };
    let watch = async {
        let mut lines = BufReader::new(out).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            if l.contains("FUSE-PROBE-OK") {
                return true;
            }
        }
        false
    };
    let result = tokio::time::timeout(limit, watch).await;
    let _ = child.kill().await;
    let mut why = String::new();
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        tokio::io::AsyncReadExt::read_to_string(
            &mut tokio::io::AsyncReadExt::take(err, 4096),
            &mut why,
        ),
    )
    .await;
    let why = why.lines().last().unwrap_or("").trim().to_owned();
    match result {
        Ok(true) => Ok(()),
        Ok(false) => Err(KvmProbeError::Died(why)),
        Err(_) => Err(KvmProbeError::TimedOut(limit.as_secs())),
    }
}

/// Chooses the acceleration: `kvm` or `tcg` as configured, or `auto` (KVM only when a test
/// guest actually boots under it). Returns it with the reason, for the log.
pub async fn resolve_accel(
    mode: &str,
    bin: &Path,
    kernel: &Path,
    initrd: Option<&Path>,
) -> (Accel, String) {
    match mode {
        "kvm" => (Accel::Kvm, "configured".into()),
        "tcg" => (Accel::Tcg, "configured".into()),
        _ => match probe_kvm(bin, kernel, initrd, Duration::from_secs(10)).await {
            Ok(()) => (Accel::Kvm, "a test guest booted under KVM".into()),
            Err(e) => (Accel::Tcg, e.to_string()),
        },
    }
}

fn io(what: &str) -> impl FnOnce(std::io::Error) -> BackendError {
    BackendError::io(what.to_owned())
}

/// A QMP session on the VM's monitor socket.
struct Qmp {
    r: BufReader<tokio::net::unix::OwnedReadHalf>,
    w: tokio::net::unix::OwnedWriteHalf,
}

impl Qmp {
    async fn connect(dir: &Path) -> Result<Qmp, BackendError> {
        let sock = dir.join("qmp.sock");
        let mut last = None;
        // The socket appears shortly after the process starts.
        for _ in 0..100 {
            match tokio::net::UnixStream::connect(&sock).await {
                Ok(s) => {
                    let (r, w) = s.into_split();
                    let mut q = Qmp {
                        r: BufReader::new(r),
                        w,
                    };
                    q.read().await?; // the greeting
                    q.execute("qmp_capabilities", Value::Null).await?;
                    return Ok(q);
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(BackendError::Io {
            what: format!("connecting to QMP at {}", sock.display()),
            source: last.unwrap_or_else(|| std::io::Error::other("no attempt")),
        })
    }

    async fn read(&mut self) -> Result<Value, BackendError> {
        let mut line = String::new();
        let n = self
            .r
            .read_line(&mut line)
            .await
            .map_err(io("reading QMP"))?;
        if n == 0 {
            return Err(BackendError::Qmp(
                "the monitor closed (QEMU exited?)".into(),
            ));
        }
        serde_json::from_str(&line)
            .map_err(|e| BackendError::Qmp(format!("an answer that is not JSON: {e}")))
    }

    /// Runs one command; returns its `return` value.
    async fn execute(&mut self, cmd: &str, args: Value) -> Result<Value, BackendError> {
        let mut msg = json!({ "execute": cmd });
        if !args.is_null() {
            msg["arguments"] = args;
        }
        let mut line = msg.to_string();
        line.push('\n');
        self.w
            .write_all(line.as_bytes())
            .await
            .map_err(io("writing QMP"))?;
        loop {
            let v = self.read().await?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                return Err(BackendError::Qmp(format!(
                    "{cmd}: {}",
                    e["desc"].as_str().unwrap_or("error")
                )));
            }
            // An asynchronous event: skip it.
        }
    }
}

/// Starts QEMU with `args` in `dir` (own process group, output in `qemu.log`); the exit is
/// reaped while fc-agent runs.
fn spawn(bin: &Path, dir: &Path, args: &[String]) -> Result<Booted, BackendError> {
    let _ = std::fs::remove_file(guest_socket(dir));
    let _ = std::fs::remove_file(dir.join("qmp.sock"));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("qemu.log"))
        .map_err(io("opening qemu.log"))?;
    let log2 = log.try_clone().map_err(io("opening qemu.log"))?;
    let child = std::process::Command::new(bin)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log2))
        .process_group(0)
        .spawn()
        .map_err(|e| BackendError::Boot(format!("starting {}: {e}", bin.display())))?;
    let pid = child.id() as i32;
    std::thread::spawn(move || {
        let mut child = child;
        let _ = child.wait();
    });
    Ok(Booted { pid })
}

/// The memory and device state in a snapshot's or a paused VM's directory.
const MEMORY: &str = "memory";

/// Keeps the command line in `qemu.json` (a snapshot restore starts the same machine).
fn save_args(dir: &Path, args: &[String]) -> Result<(), BackendError> {
    // A list of strings always serialises.
    let saved = serde_json::to_vec(args).unwrap_or_default();
    // The kernel command line in it carries the VM's link token.
    crate::files::write_private(&dir.join("qemu.json"), &saved).map_err(io("writing qemu.json"))
}

/// Saves the (stopped) VM's memory and device state into the file `mem`.
async fn save_memory(q: &mut Qmp, mem: &Path) -> Result<(), BackendError> {
    q.execute(
        "migrate",
        json!({ "uri": format!("file:{}", mem.display()) }),
    )
    .await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    loop {
        let st = q.execute("query-migrate", Value::Null).await?;
        match st["status"].as_str().unwrap_or("") {
            "completed" => return Ok(()),
            "failed" | "cancelled" => {
                return Err(BackendError::Qmp(format!(
                    "saving the memory failed: {}",
                    st["error-desc"].as_str().unwrap_or("unknown error")
                )))
            }
            _ if tokio::time::Instant::now() > deadline => {
                return Err(BackendError::TimedOut("saving the memory"))
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

impl QemuBackend {
    /// Starts QEMU with `args` loading the memory file `mem` (`-incoming`), waits until it
    /// is loaded, and runs the VM; on failure the new process is stopped.
    async fn incoming(
        &self,
        dir: &Path,
        mut args: Vec<String>,
        mem: &Path,
    ) -> Result<Booted, BackendError> {
        args.extend([
            "-S".into(),
            "-incoming".into(),
            format!("file:{}", mem.display()),
        ]);
        let booted = spawn(&self.bin, dir, &args)?;
        let resumed = async {
            let mut q = Qmp::connect(dir).await?;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
            loop {
                let st = q.execute("query-status", Value::Null).await?;
                match st["status"].as_str().unwrap_or("") {
                    "inmigrate" if tokio::time::Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(20)).await
                    }
                    "inmigrate" => return Err(BackendError::TimedOut("loading the memory")),
                    "running" => return Ok(()),
                    _ => break,
                }
            }
            q.execute("cont", Value::Null).await.map(|_| ())
        }
        .await;
        if let Err(e) = resumed {
            self.stop(dir, booted.pid).await;
            return Err(BackendError::Boot(format!(
                "loading the saved memory: {e}; qemu log: {}",
                fuse_firecracker::tail_lines(&dir.join("qemu.log"), 3).join(" | ")
            )));
        }
        Ok(booted)
    }
}

fn exists(pid: i32) -> bool {
    super::pid_running(pid)
}

/// Copies `src` to `dest` (reflink or sparse), replacing it.
async fn copy_disk(src: &Path, dest: &Path) -> Result<(), BackendError> {
    let _ = tokio::fs::remove_file(dest).await;
    clone_rootfs(src, dest, 0).await
}

fn allocated(p: &Path) -> u64 {
    super::allocated_bytes(p)
}

#[async_trait]
impl VmmBackend for QemuBackend {
    fn name(&self) -> &'static str {
        "qemu"
    }

    fn capabilities(&self) -> super::Capabilities {
        super::Capabilities {
            netns: false,
            guest_page_cache: true,
        }
    }

    fn transport(&self) -> crate::link::Transport {
        crate::link::Transport::Serial
    }

    fn boot_watchdog(&self) -> Option<Duration> {
        Some(self.watchdog)
    }

    fn snapshot_mode(&self, _requested: &str) -> String {
        // Always memory and disk: restoring a disk alone would need a reboot, which loses
        // the running agent; the memory snapshot brings the whole VM back as it was.
        "full".into()
    }

    fn acceleration(&self) -> Option<String> {
        Some(self.accel.as_str().into())
    }

    async fn boot(&self, spec: &BootSpec) -> Result<Booted, BackendError> {
        let disk = spec.dir.join("rootfs.ext4");
        if !disk.exists() {
            let base = match &spec.base {
                Some(snap) => self.snapshot_disk(snap),
                None => self.rootfs.clone(),
            };
            clone_rootfs(&base, &disk, spec.storage_gb).await?;
        }
        let args = qemu_args(self, spec, &disk);
        save_args(&spec.dir, &args)?;
        // A retry after the watchdog starts from a fresh console.
        let _ = std::fs::remove_file(spec.dir.join("console.log"));
        spawn(&self.bin, &spec.dir, &args)
    }

    async fn stop(&self, dir: &Path, pid: i32) {
        // Only ever signal our own VMM: after a reboot the pid may be someone else's.
        if pid > 0 && super::process_alive(pid, &format!("{}/", dir.display())) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            for _ in 0..150 {
                if !exists(pid) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if exists(pid) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                // The tap is free only once the process is gone.
                for _ in 0..100 {
                    if !exists(pid) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        let _ = std::fs::remove_file(dir.join("qmp.sock"));
        let _ = std::fs::remove_file(guest_socket(dir));
    }

    async fn snapshot(&self, dir: &Path, _pid: i32, dest: &Path) -> Result<u64, BackendError> {
        std::fs::create_dir_all(dest).map_err(io("creating the snapshot directory"))?;
        let mem = dest.join(MEMORY);
        let mut q = Qmp::connect(dir).await?;
        q.execute("stop", Value::Null).await?;
        let taken = async {
            save_memory(&mut q, &mem).await?;
            // The disk while the VM is paused: consistent with the memory.
            copy_disk(&dir.join("rootfs.ext4"), &dest.join("rootfs.ext4")).await
        }
        .await;
        // Always resume, whether the snapshot worked or not.
        let resumed = q.execute("cont", Value::Null).await;
        taken?;
        resumed?;
        Ok(allocated(&mem) + allocated(&dest.join("rootfs.ext4")))
    }

    async fn restore(
        &self,
        dir: &Path,
        pid: i32,
        src: &Path,
    ) -> Result<Option<Booted>, BackendError> {
        let mem = src.join(MEMORY);
        if !mem.is_file() || !src.join("rootfs.ext4").is_file() {
            return Err(BackendError::Unsupported(
                "the snapshot has no memory or disk image".into(),
            ));
        }
        let saved = std::fs::read(dir.join("qemu.json")).map_err(io("reading qemu.json"))?;
        let args: Vec<String> = serde_json::from_slice(&saved).map_err(|e| BackendError::Io {
            what: "reading qemu.json".into(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })?;
        self.stop(dir, pid).await;
        copy_disk(&src.join("rootfs.ext4"), &dir.join("rootfs.ext4")).await?;
        let booted = self.incoming(dir, args, &mem).await?;
        Ok(Some(booted))
    }

    async fn pause(&self, dir: &Path, pid: i32) -> Result<super::Paused, BackendError> {
        let mem = dir.join(MEMORY);
        let tmp = dir.join("memory.partial");
        let _ = std::fs::remove_file(&tmp);
        let mut q = Qmp::connect(dir).await?;
        q.execute("stop", Value::Null).await?;
        if let Err(e) = save_memory(&mut q, &tmp).await {
            // The VM runs on, as it was.
            let _ = std::fs::remove_file(&tmp);
            let _ = q.execute("cont", Value::Null).await;
            return Err(e);
        }
        std::fs::rename(&tmp, &mem).map_err(io("keeping the saved memory"))?;
        drop(q);
        // Stopped for good: the memory and the disk are what a resume starts from.
        self.stop(dir, pid).await;
        Ok(super::Paused {
            kind: super::PAUSED_LIVE,
            size_bytes: allocated(&mem) + allocated(&dir.join("rootfs.ext4")),
        })
    }

    async fn resume(&self, spec: &BootSpec) -> Result<Booted, BackendError> {
        let mem = spec.dir.join(MEMORY);
        let disk = spec.dir.join("rootfs.ext4");
        if !mem.is_file() || !disk.is_file() {
            return Err(BackendError::Unsupported(
                "the paused VM's directory has no memory or disk image".into(),
            ));
        }
        // The machine for this directory and this network (a moved VM has new ones); the
        // same machine type, size and devices as at the pause, which is what QEMU checks.
        let args = qemu_args(self, spec, &disk);
        save_args(&spec.dir, &args)?;
        self.incoming(&spec.dir, args, &mem).await
    }

    fn paused_files(&self, _dir: &Path) -> Vec<String> {
        vec![MEMORY.into(), "rootfs.ext4".into()]
    }

    fn paused_cleanup(&self, dir: &Path) {
        let _ = std::fs::remove_file(dir.join(MEMORY));
    }

    fn restores_memory(&self) -> bool {
        true
    }

    async fn restore_into(&self, spec: &BootSpec, snap: &Path) -> Result<Booted, BackendError> {
        let mem = snap.join(MEMORY);
        if !mem.is_file() || !snap.join("rootfs.ext4").is_file() {
            return Err(BackendError::Unsupported(
                "the snapshot has no memory or disk image".into(),
            ));
        }
        let disk = spec.dir.join("rootfs.ext4");
        copy_disk(&snap.join("rootfs.ext4"), &disk).await?;
        let args = qemu_args(self, spec, &disk);
        save_args(&spec.dir, &args)?;
        // The snapshot's memory file is only read: every VM made from it loads the same.
        self.incoming(&spec.dir, args, &mem).await
    }

    async fn vcpus(&self, dir: &Path, run: bool) -> Result<(), BackendError> {
        let mut q = Qmp::connect(dir).await?;
        q.execute(if run { "cont" } else { "stop" }, Value::Null)
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> BootSpec {
        BootSpec {
            vm_id: "fuse-a".into(),
            dir: PathBuf::from("/var/lib/fc-agent/vms/fuse-a"),
            cpus: 2,
            memory_mb: 256,
            storage_gb: 1,
            token: "tok".into(),
            net: Some(crate::net::NetInfo {
                index: 0,
                dev: "fvtap0".into(),
                netns: None,
                netns_id: None,
                host_ip: "10.200.0.1".parse().unwrap(),
                guest_ip: "10.200.0.2".parse().unwrap(),
                forward: None,
                exposed: vec![],
                egress: None,
            }),
            base: None,
        }
    }

    #[test]
    fn cmdline_carries_tsc_token_link_and_network() {
        let c = kernel_cmdline("console=ttyS0 panic=1", Some(2_596_126), &spec());
        assert_eq!(
            c,
            "console=ttyS0 panic=1 quiet tsc_early_khz=2596126 fuse.token=tok \
             fuse.link=vport:fuse ip=10.200.0.2::10.200.0.1:255.255.255.252::eth0:off"
        );
        let q = kernel_cmdline("console=ttyS0 loglevel=7", None, &spec());
        assert!(!q.contains("quiet") && !q.contains("tsc_early_khz"), "{q}");
    }

    #[test]
    fn tsc_rate_from_the_kernel_log_then_cpuinfo() {
        let log = "[    0.000075] tsc: Detected 2596.126 MHz processor\n\
                   [    1.2] tsc: Refined TSC clocksource calibration: 2595.999 MHz\n";
        assert_eq!(tsc_khz_from(log, ""), Some(2_595_999), "refined wins");
        let first = "[    0.000075] tsc: Detected 2596.126 MHz processor\n";
        assert_eq!(tsc_khz_from(first, ""), Some(2_596_126));
        let info = "flags\t\t: fpu tsc constant_tsc\ncpu MHz\t\t: 2100.000\n";
        assert_eq!(tsc_khz_from("", info), Some(2_100_000));
        let unstable = "flags\t\t: fpu tsc\ncpu MHz\t\t: 2100.000\n";
        assert_eq!(tsc_khz_from("", unstable), None, "no constant TSC: no rate");
    }

    #[test]
    fn command_line_names_the_vm_directory_and_devices() {
        let b = QemuBackend {
            bin: "qemu-system-x86_64".into(),
            kernel: "/k/vmlinuz".into(),
            initrd: Some("/k/initramfs".into()),
            rootfs: "/k/rootfs.ext4".into(),
            boot_args: "console=ttyS0".into(),
            accel: Accel::Tcg,
            tsc_khz: None,
            watchdog: Duration::from_secs(15),
        };
        let s = spec();
        let a = qemu_args(&b, &s, &s.dir.join("rootfs.ext4")).join(" ");
        for want in [
            "-accel tcg -cpu max",
            "-m 256 -smp 2",
            "-initrd /k/initramfs",
            "file=/var/lib/fc-agent/vms/fuse-a/rootfs.ext4,format=raw",
            "path=/var/lib/fc-agent/vms/fuse-a/guest.sock,server=on,wait=off",
            "virtserialport,chardev=c0,name=fuse",
            "tap,id=n0,ifname=fvtap0,script=no,downscript=no",
            "unix:/var/lib/fc-agent/vms/fuse-a/qmp.sock",
            "-no-reboot",
        ] {
            assert!(a.contains(want), "{want} missing from {a}");
        }
    }
}
