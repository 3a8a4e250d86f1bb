//! `fc-agent`, the Fuse host agent: serves the host-agent wire (DESIGN §6) for the control
//! plane, boots VMs through a [`backend::VmmBackend`], keeps each VM's state on disk so VMs
//! survive an agent restart and are adopted again, and reclaims leftovers at start.

pub mod backend;
pub mod config;
pub mod dns;
pub mod files;
pub mod http;
pub mod link;
pub mod net;
pub mod runtime;
pub mod vms;

use fuse_types::Resources;
use std::sync::Arc;

/// An error and its causes as one line (what a client of the wire and the log read).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        // A variant that quotes its source (`#[error(transparent)]`) is not repeated.
        if !text.ends_with(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

/// Capacity: configured values, else detected from the host.
pub fn capacity(cfg: &config::Config) -> Resources {
    let cpus = cfg.cpus.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1)
    });
    let ram_mb = cfg.ram_mb.unwrap_or_else(|| {
        std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
            })
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb / 1024)
            .unwrap_or(1024)
    });
    let storage_gb = cfg.storage_gb.unwrap_or_else(|| {
        nix::sys::statvfs::statvfs(&cfg.dir)
            .map(|s| (s.blocks_available() * s.fragment_size()) >> 30)
            .unwrap_or(10)
    });
    Resources {
        cpus,
        ram_mb,
        storage_gb,
        vm_count: cfg.max_vms,
    }
}

/// Loads state and builds the router.
pub async fn build(cfg: &config::Config) -> anyhow::Result<(axum::Router, vms::StartReport)> {
    // The state directory holds every VM's link token.
    files::create_private_dir(&cfg.dir)?;
    let backend: Arc<dyn backend::VmmBackend> = match cfg.backend.as_str() {
        "process" => Arc::new(backend::process::ProcessBackend::new(cfg.guest_binary())),
        "firecracker" => Arc::new(backend::firecracker::FirecrackerBackend {
            bin: cfg.firecracker_bin.clone(),
            kernel: cfg.kernel.clone().into(),
            initrd: (!cfg.initrd.is_empty()).then(|| cfg.initrd.clone().into()),
            rootfs: cfg.rootfs.clone().into(),
            boot_args: cfg.boot_args.clone(),
        }),
        "qemu" => {
            let kernel: std::path::PathBuf = cfg.kernel.clone().into();
            let initrd: Option<std::path::PathBuf> =
                (!cfg.initrd.is_empty()).then(|| cfg.initrd.clone().into());
            let (accel, why) = backend::qemu::resolve_accel(
                &cfg.qemu_accel,
                &cfg.qemu_bin,
                &kernel,
                initrd.as_deref(),
            )
            .await;
            let tsc_khz = cfg.tsc_khz.or_else(backend::qemu::host_tsc_khz);
            tracing::info!(accel = accel.as_str(), reason = %why, tsc_khz, "qemu backend");
            Arc::new(backend::qemu::QemuBackend {
                bin: cfg.qemu_bin.clone(),
                kernel,
                initrd,
                rootfs: cfg.rootfs.clone().into(),
                boot_args: cfg.boot_args.clone(),
                accel,
                tsc_khz,
                watchdog: std::time::Duration::from_secs(cfg.boot_watchdog_secs),
            })
        }
        other => anyhow::bail!("backend {other} is not available in this build"),
    };
    let net_on = match cfg.network.as_str() {
        "on" => true,
        "off" => false,
        _ => net::available(),
    };
    // The guests' resolver: bound first, since the egress table names its port.
    let resolver = if net_on {
        let upstream = dns::upstream(&cfg.dns_upstream).map_err(anyhow::Error::msg)?;
        let r = dns::Resolver::bind(cfg.dns_listen, upstream)
            .await
            .map_err(|e| {
                anyhow::anyhow!("binding the guests' resolver on {}: {e}", cfg.dns_listen)
            })?;
        Some(r)
    } else {
        None
    };
    let dns_port = resolver.as_ref().map(dns::Resolver::port);
    let options = vms::Options {
        capacity: capacity(cfg),
        boot_timeout: std::time::Duration::from_secs(cfg.boot_timeout_secs),
        pool: net_on.then(|| net::Pool::parse(&cfg.subnet)).transpose()?,
        forward_ports: cfg.forward_range().unwrap_or((20000, 29999)),
        public_host: cfg.public_host.clone(),
        net: net_on
            .then(|| net::Net::with_dns(&net::agent_tag(&cfg.dir), dns_port).map(Arc::new))
            .transpose()?,
    };
    let net = options.net.clone();
    let (vms, report) = vms::Vms::load(cfg.dir.clone(), backend, options).await?;
    if let (Some(r), Some(net)) = (resolver, net) {
        r.spawn(net);
    }
    let state = Arc::new(http::AgentState {
        vms,
        token: cfg.token.clone(),
        metrics: http::Metrics::default(),
    });
    // Consoles are written by the VMMs; bounded from here (until the state is dropped).
    let weak = Arc::downgrade(&state);
    let max = cfg.console_max_bytes;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tick.tick().await;
            let Some(s) = weak.upgrade() else { return };
            let _ = tokio::task::spawn_blocking(move || s.vms.bound_consoles(max)).await;
        }
    });
    // Expired migration registrations and their staging go within a second.
    let weak = Arc::downgrade(&state);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tick.tick().await;
            let Some(s) = weak.upgrade() else { return };
            s.vms.migration_sweep().await;
        }
    });
    Ok((http::router(state), report))
}
