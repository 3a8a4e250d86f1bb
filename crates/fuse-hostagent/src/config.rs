//! `fc-agent` configuration (DESIGN §6): every setting an environment variable with a
//! matching flag, validated at once.

use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Flags and environment.
#[derive(Debug, Clone, Parser)]
#[command(name = "fc-agent", version, about = "Fuse host agent")]
pub struct Config {
    /// Listen address.
    #[arg(long, env = "FC_AGENT_LISTEN", default_value = "0.0.0.0:8090")]
    pub listen: SocketAddr,
    /// Bearer token required on every route (required).
    #[arg(
        long,
        env = "FC_AGENT_TOKEN",
        default_value = "",
        hide_env_values = true
    )]
    pub token: String,
    /// VMM backend: `firecracker`, `qemu` or `process`.
    #[arg(long, env = "FC_AGENT_BACKEND", default_value = "firecracker")]
    pub backend: String,
    /// State and per-VM files.
    #[arg(long, env = "FC_AGENT_DIR", default_value = "/var/lib/fc-agent")]
    pub dir: PathBuf,
    /// The Firecracker binary.
    #[arg(long, env = "FC_AGENT_FIRECRACKER_BIN", default_value = "firecracker")]
    pub firecracker_bin: PathBuf,
    /// Guest kernel.
    #[arg(long, env = "FC_AGENT_KERNEL", default_value = "")]
    pub kernel: String,
    /// Guest initrd.
    #[arg(long, env = "FC_AGENT_INITRD", default_value = "")]
    pub initrd: String,
    /// Base root filesystem image.
    #[arg(long, env = "FC_AGENT_ROOTFS", default_value = "")]
    pub rootfs: String,
    /// Pool for the per-VM /30 networks.
    #[arg(long, env = "FC_AGENT_SUBNET", default_value = "10.200.0.0/16")]
    pub subnet: String,
    /// Address put in VM URLs.
    #[arg(long, env = "FC_AGENT_PUBLIC_HOST", default_value = "127.0.0.1")]
    pub public_host: String,
    /// CPUs offered (default: detected).
    #[arg(long, env = "FC_AGENT_CPUS")]
    pub cpus: Option<u32>,
    /// RAM offered in MiB (default: detected).
    #[arg(long, env = "FC_AGENT_RAM_MB")]
    pub ram_mb: Option<u64>,
    /// Storage offered in GiB (default: detected from FC_AGENT_DIR).
    #[arg(long, env = "FC_AGENT_STORAGE_GB")]
    pub storage_gb: Option<u64>,
    /// Most VMs at once.
    #[arg(long, env = "FC_AGENT_MAX_VMS", default_value_t = 64)]
    pub max_vms: u32,
    /// Per-VM networking: `auto` (on when running as root), `on`, `off`.
    #[arg(long, env = "FC_AGENT_NETWORK", default_value = "auto")]
    pub network: String,
    /// Host ports handed out for forwards to agent ports, `FROM-TO`.
    #[arg(long, env = "FC_AGENT_FORWARD_PORTS", default_value = "20000-29999")]
    pub forward_ports: String,
    /// How long a new VM's guest helper may take to answer.
    #[arg(long, env = "FC_AGENT_BOOT_TIMEOUT_SECS", default_value_t = 60)]
    pub boot_timeout_secs: u64,
    /// Extra kernel command line for the `firecracker` backend.
    #[arg(
        long,
        env = "FC_AGENT_BOOT_ARGS",
        default_value = "console=ttyS0 reboot=k panic=1 pci=off"
    )]
    pub boot_args: String,
    /// The QEMU binary of the `qemu` backend.
    #[arg(long, env = "FC_AGENT_QEMU_BIN", default_value = "qemu-system-x86_64")]
    pub qemu_bin: PathBuf,
    /// Acceleration of the `qemu` backend: `auto` (KVM only when a test guest boots under
    /// it), `kvm` or `tcg`.
    #[arg(long, env = "FC_AGENT_QEMU_ACCEL", default_value = "auto")]
    pub qemu_accel: String,
    /// The host's TSC rate in kHz given to QEMU guests (`tsc_early_khz`); default detected.
    #[arg(long, env = "FC_AGENT_TSC_KHZ")]
    pub tsc_khz: Option<u64>,
    /// Boot watchdog of the `qemu` backend: a guest silent for this long is booted again,
    /// once.
    #[arg(long, env = "FC_AGENT_BOOT_WATCHDOG_SECS", default_value_t = 15)]
    pub boot_watchdog_secs: u64,
    /// Where the guests' resolver listens (UDP and TCP): their DNS is redirected to its
    /// port; port 0 picks a free one at start.
    #[arg(long, env = "FC_AGENT_DNS_LISTEN", default_value = "0.0.0.0:0")]
    pub dns_listen: SocketAddr,
    /// The resolver the guests' allowed queries are forwarded to (`ip` or `ip:port`;
    /// default the first nameserver of /etc/resolv.conf).
    #[arg(long, env = "FC_AGENT_DNS_UPSTREAM", default_value = "")]
    pub dns_upstream: String,
    /// A VM's console log is truncated past this many bytes (its last half kept in
    /// `console.log.1`), checked every 5 s.
    #[arg(long, env = "FC_AGENT_CONSOLE_MAX_BYTES", default_value_t = 1 << 20)]
    pub console_max_bytes: u64,
    /// The `fuse-guest` binary run by the `process` backend (default: next to fc-agent).
    #[arg(long, env = "FC_AGENT_GUEST_BIN")]
    pub guest_bin: Option<PathBuf>,
}

/// Every problem found in the configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
pub struct ConfigError(pub Vec<String>);

impl Config {
    /// Checks everything, listing every problem.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut errs = Vec::new();
        if self.token.len() < 16 {
            errs.push("FC_AGENT_TOKEN is required (at least 16 characters); fc-agent refuses to start without it".to_owned());
        }
        if self.console_max_bytes < 4096 {
            errs.push("FC_AGENT_CONSOLE_MAX_BYTES must be at least 4096".into());
        }
        if !["firecracker", "qemu", "process"].contains(&self.backend.as_str()) {
            errs.push(format!(
                "FC_AGENT_BACKEND: {:?}; expected firecracker, qemu or process",
                self.backend
            ));
        } else if self.backend == "firecracker" || self.backend == "qemu" {
            if self.kernel.is_empty() || self.rootfs.is_empty() {
                errs.push(format!(
                    "the {} backend needs FC_AGENT_KERNEL and FC_AGENT_ROOTFS",
                    self.backend
                ));
            }
            if self.backend == "qemu" && !["auto", "kvm", "tcg"].contains(&self.qemu_accel.as_str())
            {
                errs.push(format!(
                    "FC_AGENT_QEMU_ACCEL: {:?}; expected auto, kvm or tcg",
                    self.qemu_accel
                ));
            }
            if self.backend == "qemu" && self.boot_watchdog_secs == 0 {
                errs.push("FC_AGENT_BOOT_WATCHDOG_SECS must be positive".into());
            }
            if self.backend == "qemu" {
                // QEMU's option syntax separates with commas: a path must not contain one.
                for (name, p) in [
                    ("FC_AGENT_DIR", self.dir.display().to_string()),
                    ("FC_AGENT_KERNEL", self.kernel.clone()),
                    ("FC_AGENT_INITRD", self.initrd.clone()),
                    ("FC_AGENT_ROOTFS", self.rootfs.clone()),
                ] {
                    if p.contains(',') {
                        errs.push(format!(
                            "{name}: {p:?} must not contain a comma (qemu backend)"
                        ));
                    }
                }
            }
            for (name, p) in [
                ("FC_AGENT_KERNEL", &self.kernel),
                ("FC_AGENT_ROOTFS", &self.rootfs),
                ("FC_AGENT_INITRD", &self.initrd),
            ] {
                if !p.is_empty() && !std::path::Path::new(p).is_file() {
                    errs.push(format!("{name}: {p} is not a file"));
                }
            }
        }
        if !["auto", "on", "off"].contains(&self.network.as_str()) {
            errs.push(format!(
                "FC_AGENT_NETWORK: {:?}; expected auto, on or off",
                self.network
            ));
        }
        if let Err(e) = crate::net::Pool::parse(&self.subnet) {
            errs.push(e.to_string());
        }
        if self.forward_range().is_none() {
            errs.push(format!(
                "FC_AGENT_FORWARD_PORTS: {:?} is not FROM-TO",
                self.forward_ports
            ));
        }
        if let Err(e) = crate::dns::upstream(&self.dns_upstream) {
            errs.push(e);
        }
        if self.max_vms == 0 {
            errs.push("FC_AGENT_MAX_VMS must be positive".into());
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(ConfigError(errs))
        }
    }

    /// The forward port range.
    pub fn forward_range(&self) -> Option<(u16, u16)> {
        let (a, b) = self.forward_ports.split_once('-')?;
        let (a, b) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
        (a <= b && a > 0).then_some((a, b))
    }

    /// The `fuse-guest` binary to run.
    pub fn guest_binary(&self) -> PathBuf {
        self.guest_bin.clone().unwrap_or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|p| p.parent().map(|d| d.join("fuse-guest")))
                .unwrap_or_else(|| PathBuf::from("fuse-guest"))
        })
    }
}
