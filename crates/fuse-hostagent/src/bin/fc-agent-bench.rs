//! `fc-agent-bench`: VM create→ready latency, creates and destroys per second against real
//! `fc-agent`s with the `process` backend (next to this binary), with networking off and
//! then on (two agents, one after the other), printed side by side. A create returns only
//! once the VM's guest helper answers, so its latency is create→ready.
//!
//! ```text
//! cargo build --release -p fuse-hostagent -p fuse-guest
//! target/release/fc-agent-bench --vms 400 --clients 8 [--network both|off|on]
//! ```
//!
//! Networking on needs root; without it (or with `--network off`) only the first column is
//! measured. The agents keep their state in `--dir` (default `/dev/shm`, a tmpfs, when it
//! exists): every VM makes and removes a directory of files, and on a disk filesystem that
//! churn (ext4's inode allocator, after thousands of creates and deletes) costs more than
//! the agent's own work; `--dir /tmp` measures with it.

use clap::Parser;
use serde_json::json;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
struct Args {
    /// VMs to create (then destroy) per agent.
    #[arg(long, default_value_t = 200)]
    vms: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Which agents to measure: `both` (networking off, then on), `off` or `on`.
    #[arg(long, default_value = "both")]
    network: String,
    /// Where the agents keep their state (default: `/dev/shm` when it exists, else the
    /// temporary directory).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

impl Args {
    fn state_root(&self) -> std::path::PathBuf {
        self.dir.clone().unwrap_or_else(|| {
            let shm = std::path::PathBuf::from("/dev/shm");
            if shm.is_dir() {
                shm
            } else {
                std::env::temp_dir()
            }
        })
    }
}

/// What one agent measured.
struct Figures {
    created: usize,
    creates_per_s: f64,
    /// create→ready p50, p99, max in ms.
    ready_ms: (f64, f64, f64),
    destroys_per_s: f64,
    destroyed: usize,
}

fn pct(v: &[u64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v[((v.len() as f64 - 1.0) * p).round() as usize] as f64 / 1000.0
}

const TOKEN: &str = "bench-token-0123456789abcdef";

/// Starts an agent with `network`, creates and destroys `args.vms` VMs through it, stops it.
async fn measure(bin_dir: &Path, network: &str, args: &Args) -> anyhow::Result<Figures> {
    let dir = args
        .state_root()
        .join(format!("fc-agent-bench-{}-{network}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut agent = Command::new(bin_dir.join("fc-agent"))
        .env("FC_AGENT_LISTEN", format!("127.0.0.1:{port}"))
        .env("FC_AGENT_TOKEN", TOKEN)
        .env("FC_AGENT_BACKEND", "process")
        .env("FC_AGENT_DIR", &dir)
        .env("FC_AGENT_GUEST_BIN", bin_dir.join("fuse-guest"))
        .env("FC_AGENT_NETWORK", network)
        .env("FC_AGENT_MAX_VMS", (args.vms + 10).to_string())
        .env("FC_AGENT_CPUS", "100000")
        .env("FC_AGENT_RAM_MB", "100000000")
        .env("FC_AGENT_STORAGE_GB", "100000000")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let r = drive(port, args).await;
    let _ = agent.kill();
    let _ = agent.wait();
    if network == "on" {
        // The agent leaves its nftables table for VMs that outlive it; this one is done.
        let tag = fuse_hostagent::net::agent_tag(&dir);
        fuse_hostagent::net::Net::new(&tag)?.table_delete().await?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    r
}

async fn drive(port: u16, args: &Args) -> anyhow::Result<Figures> {
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while http
        .get(format!("{base}/healthz"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .is_err()
    {
        anyhow::ensure!(Instant::now() < deadline, "fc-agent did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.clients {
        let (http, base, next, n) = (http.clone(), base.clone(), next.clone(), args.vms);
        workers.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return lat;
                }
                let t = Instant::now();
                let r = http
                    .post(format!("{base}/v1/vm"))
                    .bearer_auth(TOKEN)
                    .json(&json!({"name": format!("bench-{i}"), "cpus": 1, "memory_mb": 128, "storage_gb": 1}))
                    .send()
                    .await;
                if matches!(r, Ok(ref r) if r.status().is_success()) {
                    lat.push(t.elapsed().as_micros() as u64);
                }
            }
        }));
    }
    let mut lat = Vec::new();
    for w in workers {
        lat.extend(w.await?);
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    let t = Instant::now();
    let mut dels = Vec::new();
    let mut destroyed = 0;
    for i in 0..args.vms {
        let (http, base) = (http.clone(), base.clone());
        dels.push(tokio::spawn(async move {
            http.delete(format!("{base}/v1/vm/bench-{i}"))
                .bearer_auth(TOKEN)
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false)
        }));
        if dels.len() >= args.clients {
            for d in dels.drain(..) {
                destroyed += usize::from(d.await?);
            }
        }
    }
    for d in dels {
        destroyed += usize::from(d.await?);
    }
    Ok(Figures {
        created: lat.len(),
        creates_per_s: lat.len() as f64 / secs,
        ready_ms: (pct(&lat, 0.5), pct(&lat, 0.99), pct(&lat, 1.0)),
        destroys_per_s: args.vms as f64 / t.elapsed().as_secs_f64(),
        destroyed,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let exe = std::env::current_exe()?;
    let bin_dir = exe
        .parent()
        .ok_or_else(|| anyhow::anyhow!("no directory"))?;
    let root = nix::unistd::geteuid().is_root();
    let modes: Vec<&str> = match args.network.as_str() {
        "both" if root => vec!["off", "on"],
        "both" => {
            eprintln!("not root: measuring networking off only");
            vec!["off"]
        }
        "off" => vec!["off"],
        "on" => vec!["on"],
        other => anyhow::bail!("--network {other}: expected both, off or on"),
    };
    let mut figs = Vec::new();
    for m in &modes {
        figs.push(measure(bin_dir, m, &args).await?);
    }
    let row = |name: &str, f: &dyn Fn(&Figures) -> String| {
        let cells: Vec<String> = figs.iter().map(|x| format!("{:>22}", f(x))).collect();
        println!("{name:<24}{}", cells.join(""));
    };
    println!(
        "process backend (fuse-guest per VM), {} VMs, {} clients, state in {}",
        args.vms,
        args.clients,
        args.state_root().display()
    );
    let heads: Vec<String> = modes
        .iter()
        .map(|m| format!("{:>22}", format!("network {m}")))
        .collect();
    println!("{:<24}{}", "", heads.join(""));
    row("vms created", &|f| format!("{} of {}", f.created, args.vms));
    row("creates/s", &|f| format!("{:.0}", f.creates_per_s));
    row("create->ready p50 ms", &|f| format!("{:.2}", f.ready_ms.0));
    row("create->ready p99 ms", &|f| format!("{:.2}", f.ready_ms.1));
    row("create->ready max ms", &|f| format!("{:.2}", f.ready_ms.2));
    row("destroys/s", &|f| format!("{:.0}", f.destroys_per_s));
    row("vms destroyed", &|f| {
        format!("{} of {}", f.destroyed, args.vms)
    });
    Ok(())
}
