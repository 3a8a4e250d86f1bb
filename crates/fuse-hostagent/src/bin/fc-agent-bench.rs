//! `fc-agent-bench`: VM create→ready latency and creates per second against a real
//! `fc-agent` (by default one it starts itself with the `process` backend, next to this
//! binary). A create returns only once the VM's guest helper answers, so its latency is
//! create→ready.
//!
//! ```text
//! cargo build --release -p fuse-hostagent -p fuse-guest
//! target/release/fc-agent-bench --vms 200 --clients 8 [--network on]
//! ```

use clap::Parser;
use serde_json::json;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
struct Args {
    /// VMs to create (then destroy).
    #[arg(long, default_value_t = 200)]
    vms: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Networking of the started agent: on or off (on needs root).
    #[arg(long, default_value = "off")]
    network: String,
}

fn pct(v: &[u64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v[((v.len() as f64 - 1.0) * p).round() as usize] as f64 / 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let exe = std::env::current_exe()?;
    let bin_dir = exe
        .parent()
        .ok_or_else(|| anyhow::anyhow!("no directory"))?;
    let dir = std::env::temp_dir().join(format!("fc-agent-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let token = "bench-token-0123456789abcdef";
    let mut agent = Command::new(bin_dir.join("fc-agent"))
        .env("FC_AGENT_LISTEN", format!("127.0.0.1:{port}"))
        .env("FC_AGENT_TOKEN", token)
        .env("FC_AGENT_BACKEND", "process")
        .env("FC_AGENT_DIR", &dir)
        .env("FC_AGENT_GUEST_BIN", bin_dir.join("fuse-guest"))
        .env("FC_AGENT_NETWORK", &args.network)
        .env("FC_AGENT_MAX_VMS", (args.vms + 10).to_string())
        .env("FC_AGENT_CPUS", "100000")
        .env("FC_AGENT_RAM_MB", "100000000")
        .env("FC_AGENT_STORAGE_GB", "100000000")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while http
        .get(format!("{base}/healthz"))
        .bearer_auth(token)
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
                    .bearer_auth(token)
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
    println!(
        "backend          process (fuse-guest per VM), network {}",
        args.network
    );
    println!("vms              {} created of {}", lat.len(), args.vms);
    println!(
        "creates/s        {:.0} ({} clients)",
        lat.len() as f64 / secs,
        args.clients
    );
    println!(
        "create->ready ms p50 {:.2}  p99 {:.2}  max {:.2}",
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        pct(&lat, 1.0)
    );
    let t = Instant::now();
    let mut dels = Vec::new();
    for i in 0..args.vms {
        let (http, base) = (http.clone(), base.clone());
        dels.push(tokio::spawn(async move {
            http.delete(format!("{base}/v1/vm/bench-{i}"))
                .bearer_auth(token)
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false)
        }));
        if dels.len() >= args.clients {
            for d in dels.drain(..) {
                d.await?;
            }
        }
    }
    for d in dels {
        d.await?;
    }
    println!(
        "destroys/s       {:.0}",
        args.vms as f64 / t.elapsed().as_secs_f64()
    );
    let _ = agent.kill();
    let _ = agent.wait();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
