//! `fuse-bench`: drives a real `fuse` HTTP server with concurrent clients doing
//! create+destroy pairs, and prints pairs per second and create/destroy latency
//! percentiles. By default it starts the server in-process on loopback with the in-memory
//! store and the stub provider; `--url` points it at a running server instead.
//! `--fc-agent` registers one real `fc-agent` (the `process` backend, started by the bench
//! from next to its own binary) as the only host, and prints how many control-plane → host
//! calls each create and each destroy cost, counted from the agent's own `/metrics`.
//!
//! `--runtime` (with `--fc-agent`) measures the runtime surface instead on one environment:
//! file throughput up and down through `fuse` (MB/s) and the round trip of a small exec
//! (p50/p99); `--backend qemu --guest-dir DIR` runs that environment as a real guest (the
//! image of `tools/build-guest-image.sh`).
//!
//! `--fast-start` (with `--fc-agent`, meant for `--backend qemu`) creates, side by side in
//! one run: cold boots, creates from a template (a live snapshot of a running environment
//! restored into each new VM) and creates drawn from the template's warm pool, one at a
//! time, and prints create → running p50/p95 of each and their ratios to the cold boot.
//!
//! ```text
//! cargo run --release -p fuse-server --bin fuse-bench -- --seconds 10 --clients 8
//! cargo build --release -p fuse-hostagent -p fuse-guest
//! cargo run --release -p fuse-server --bin fuse-bench -- --fc-agent --seconds 5
//! cargo run --release -p fuse-server --bin fuse-bench -- --fc-agent --runtime
//! cargo run --release -p fuse-server --bin fuse-bench -- --fc-agent --runtime \
//!     --backend qemu --guest-dir .fuse-test/guest
//! cargo run --release -p fuse-server --bin fuse-bench -- --fc-agent --fast-start \
//!     --backend qemu --guest-dir .fuse-test/guest --creates 8
//! ```

use anyhow::Context as _;
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
#[command(about = "Create+destroy throughput and latency of the fuse REST API")]
struct Args {
    /// Target server; empty starts one in-process (memory store, stub provider).
    #[arg(long, default_value = "")]
    url: String,
    /// Bearer token for --url.
    #[arg(long, default_value = "")]
    token: String,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Measured seconds (after a 1 s warm-up).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// In-process server on this Postgres (secrets sealed with a generated key).
    #[arg(long, default_value = "")]
    database_url: String,
    /// Instead of create+destroy pairs: create this many environments, keep them, and print
    /// the process's resident memory before and after.
    #[arg(long, default_value_t = 0)]
    fill: u64,
    /// Register one real fc-agent (process backend, next to this binary) as the only host
    /// and count the host calls per create from its `/metrics`.
    #[arg(long)]
    fc_agent: bool,
    /// With --fc-agent: measure file throughput and exec round trips on one environment.
    #[arg(long)]
    runtime: bool,
    /// The fc-agent backend for --runtime: `process` or `qemu`.
    #[arg(long, default_value = "process")]
    backend: String,
    /// The guest image directory for `--backend qemu` (vmlinuz, initramfs.cpio.gz, rootfs.ext4).
    #[arg(long, default_value = "")]
    guest_dir: String,
    /// Megabytes per file transfer (--runtime).
    #[arg(long, default_value_t = 50)]
    mb: usize,
    /// Exec round trips measured (--runtime).
    #[arg(long, default_value_t = 200)]
    execs: usize,
    /// With --fc-agent: cold boots vs template restores vs warm-pool draws.
    #[arg(long)]
    fast_start: bool,
    /// Creates measured per kind (--fast-start).
    #[arg(long, default_value_t = 6)]
    creates: usize,
    /// Warm VMs kept by the pool (--fast-start).
    #[arg(long, default_value_t = 2)]
    pool: u32,
}

/// A real `fc-agent` started by the bench (killed on drop).
struct Agent {
    child: std::process::Child,
    base: String,
    dir: std::path::PathBuf,
}

const AGENT_TOKEN: &str = "bench-agent-token-0123456789abcdef";

impl Agent {
    fn start(max_vms: usize, backend: &str, guest_dir: &str) -> anyhow::Result<Agent> {
        let exe = std::env::current_exe()?;
        let bin_dir = exe.parent().context("the bench binary has no directory")?;
        let agent = bin_dir.join("fc-agent");
        anyhow::ensure!(
            agent.exists() && bin_dir.join("fuse-guest").exists(),
            "--fc-agent needs fc-agent and fuse-guest next to this binary: \
             cargo build --release -p fuse-hostagent -p fuse-guest"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let dir = std::env::temp_dir().join(format!("fuse-bench-agent-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut cmd = std::process::Command::new(agent);
        if backend == "qemu" {
            anyhow::ensure!(!guest_dir.is_empty(), "--backend qemu needs --guest-dir");
            let g = std::fs::canonicalize(guest_dir)
                .with_context(|| format!("--guest-dir {guest_dir}"))?;
            cmd.env("FC_AGENT_KERNEL", g.join("vmlinuz"))
                .env("FC_AGENT_INITRD", g.join("initramfs.cpio.gz"))
                .env("FC_AGENT_ROOTFS", g.join("rootfs.ext4"))
                .env("FC_AGENT_QEMU_ACCEL", "auto");
        }
        let child = cmd
            .env("FC_AGENT_LISTEN", format!("127.0.0.1:{port}"))
            .env("FC_AGENT_TOKEN", AGENT_TOKEN)
            .env("FC_AGENT_BACKEND", backend)
            .env("FC_AGENT_DIR", &dir)
            .env("FC_AGENT_GUEST_BIN", bin_dir.join("fuse-guest"))
            .env("FC_AGENT_NETWORK", "off")
            .env("FC_AGENT_MAX_VMS", max_vms.to_string())
            .env("FC_AGENT_CPUS", "100000")
            .env("FC_AGENT_RAM_MB", "100000000")
            .env("FC_AGENT_STORAGE_GB", "100000000")
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(match std::env::var_os("FUSE_BENCH_AGENT_LOG") {
                Some(p) => std::fs::File::create(p)?.into(),
                None => std::process::Stdio::null(),
            })
            .spawn()
            .context("starting fc-agent")?;
        Ok(Agent {
            child,
            base: format!("http://127.0.0.1:{port}"),
            dir,
        })
    }

    /// Requests the agent counted, by route and method (all status codes).
    async fn requests(&self) -> anyhow::Result<Vec<(String, String, u64)>> {
        let text = reqwest::Client::new()
            .get(format!("{}/metrics", self.base))
            .bearer_auth(AGENT_TOKEN)
            .send()
            .await?
            .text()
            .await?;
        let mut out: Vec<(String, String, u64)> = Vec::new();
        for l in text
            .lines()
            .filter(|l| l.starts_with("fc_agent_http_requests_total{"))
        {
            let label = |k: &str| {
                l.split(&format!("{k}=\""))
                    .nth(1)
                    .and_then(|r| r.split('"').next())
                    .unwrap_or("")
                    .to_owned()
            };
            let n: u64 = l
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let (route, method) = (label("route"), label("method"));
            match out.iter_mut().find(|(r, m, _)| *r == route && *m == method) {
                Some(e) => e.2 += n,
                None => out.push((route, method, n)),
            }
        }
        Ok(out)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // VMMs outlive their agent by design: those of this agent's directory go with it.
        let marker = format!("{}/", self.dir.display());
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmd).contains(&marker) {
                if let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        })
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

async fn fill(
    http: &Http,
    base: &str,
    token: &str,
    n: u64,
    clients: usize,
    stub_bytes: impl Fn() -> u64,
) -> anyhow::Result<()> {
    let before = rss_mb();
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..clients {
        let (http, base, token) = (http.clone(), base.to_owned(), token.to_owned());
        let (next, errors) = (next.clone(), errors.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return;
                }
                let body = format!("{{\"task_id\":\"fill-{i}\",\"secrets\":{{\"K\":\"v{i}\"}}}}");
                let r = call(
                    &http,
                    Method::POST,
                    &format!("{base}/v1/environments"),
                    &token,
                    Some(body),
                )
                .await;
                if !matches!(r, Ok(StatusCode::CREATED)) {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for w in workers {
        w.await?;
    }
    let secs = start.elapsed().as_secs_f64();
    // Let allocator and background loops settle, then read memory.
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!(
        "environments     {n} created in {secs:.1} s ({:.0}/s), errors {}",
        n as f64 / secs,
        errors.load(Ordering::Relaxed)
    );
    println!(
        "rss (whole bench process: server + client)  before {before:.0} MB  after {:.0} MB",
        rss_mb()
    );
    println!(
        "  of which the in-process stub host holds {:.0} MB of guest files (on real hosts this is not in fuse)",
        stub_bytes() as f64 / (1 << 20) as f64
    );
    Ok(())
}

type Http = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

async fn call(
    http: &Http,
    method: Method,
    url: &str,
    token: &str,
    body: Option<String>,
) -> anyhow::Result<StatusCode> {
    let mut req = Request::builder().method(method).uri(url);
    if !token.is_empty() {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    let req = req
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.unwrap_or_default())))?;
    let resp = http.request(req).await?;
    let status = resp.status();
    resp.into_body().collect().await?;
    Ok(status)
}

/// File throughput and exec round trips on one environment of the bench's host.
async fn runtime(base: &str, args: &Args) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(900))
        .build()?;
    let auth = |r: reqwest::RequestBuilder| {
        if args.token.is_empty() {
            r
        } else {
            r.bearer_auth(&args.token)
        }
    };
    let t = Instant::now();
    let r = auth(http.post(format!("{base}/v1/environments")))
        .json(&serde_json::json!({"task_id": "bench-runtime",
                                  "spec": {"cpus": 1, "ram_mb": 256, "storage_gb": 1}}))
        .send()
        .await?;
    anyhow::ensure!(
        r.status() == StatusCode::CREATED,
        "create: {}",
        r.text().await?
    );
    let env: serde_json::Value = r.json().await?;
    anyhow::ensure!(env["state"] == "running", "create: {env}");
    let id = env["id"].as_str().unwrap_or_default().to_owned();
    println!(
        "backend {}: environment {id} running after {:.2} s",
        args.backend,
        t.elapsed().as_secs_f64()
    );
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let data: Bytes = (0..args.mb << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect::<Vec<u8>>()
        .into();
    let files = format!("{base}/v1/environments/{id}/files?path=/data/bench.bin");
    let (mut up, mut down) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let t = Instant::now();
        let r = auth(http.put(&files)).body(data.clone()).send().await?;
        anyhow::ensure!(r.status() == StatusCode::OK, "upload: {}", r.text().await?);
        up.push(args.mb as f64 / t.elapsed().as_secs_f64());
        let t = Instant::now();
        let r = auth(http.get(&files)).send().await?;
        anyhow::ensure!(r.status() == StatusCode::OK, "download: {}", r.status());
        let n = r.bytes().await?.len();
        anyhow::ensure!(n == data.len(), "download: {n} bytes of {}", data.len());
        down.push(args.mb as f64 / t.elapsed().as_secs_f64());
    }
    let show = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        format!("median {:.1} MB/s (min {:.1}, max {:.1})", v[1], v[0], v[2])
    };
    println!(
        "files {} MiB x3  up {}  down {}",
        args.mb,
        show(&mut up),
        show(&mut down)
    );
    let exec = format!("{base}/v1/environments/{id}?action=exec");
    let mut rtt = Vec::new();
    for _ in 0..args.execs {
        let t = Instant::now();
        let r = auth(http.post(&exec))
            .json(&serde_json::json!({"cmd": ["true"]}))
            .send()
            .await?;
        anyhow::ensure!(r.status() == StatusCode::OK, "exec: {}", r.status());
        r.bytes().await?;
        rtt.push(t.elapsed().as_micros() as u64);
    }
    rtt.sort_unstable();
    println!(
        "exec `true` x{}  p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        args.execs,
        pct(&rtt, 0.50),
        pct(&rtt, 0.99),
        pct(&rtt, 1.0)
    );
    let r = auth(http.delete(format!("{base}/v1/environments/{id}")))
        .send()
        .await?;
    anyhow::ensure!(
        r.status() == StatusCode::NO_CONTENT,
        "destroy: {}",
        r.status()
    );
    Ok(())
}

/// Cold boots, template restores and warm-pool draws, one create at a time, each destroyed
/// before the next (so every create finds the host as idle as the one before).
async fn fast_start(base: &str, args: &Args) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(900))
        .build()?;
    let auth = |r: reqwest::RequestBuilder| {
        if args.token.is_empty() {
            r
        } else {
            r.bearer_auth(&args.token)
        }
    };
    let spec = serde_json::json!({"cpus": 1, "ram_mb": 256, "storage_gb": 1});
    // One create → running, in milliseconds; the environment is destroyed afterwards
    // unless `keep`.
    let create = |task: String, extra: serde_json::Value, keep: bool| {
        let http = http.clone();
        let spec = spec.clone();
        async move {
            let mut body = serde_json::json!({"task_id": task});
            if extra.get("template").is_none() {
                body["spec"] = spec;
            }
            if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
                for (k, v) in e {
                    b.insert(k.clone(), v.clone());
                }
            }
            let t = Instant::now();
            let r = auth(http.post(format!("{base}/v1/environments")))
                .json(&body)
                .send()
                .await?;
            let status = r.status();
            let env: serde_json::Value = r.json().await?;
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            anyhow::ensure!(
                status == StatusCode::CREATED && env["state"] == "running",
                "create {task}: {status} {env}"
            );
            let id = env["id"].as_str().unwrap_or_default().to_owned();
            if !keep {
                let r = auth(http.delete(format!("{base}/v1/environments/{id}")))
                    .send()
                    .await?;
                anyhow::ensure!(r.status() == StatusCode::NO_CONTENT, "destroy {id}");
            }
            anyhow::Ok((id, ms))
        }
    };
    // The host's per-step setup timings, summed from the server's metrics: (step, sum, count).
    let steps = || async {
        let text = auth(http.get(format!("{base}/metrics")))
            .send()
            .await?
            .text()
            .await?;
        let mut out: Vec<(String, f64, f64)> = Vec::new();
        for l in text.lines() {
            let (kind, rest) = if let Some(r) =
                l.strip_prefix("orchestrator_provision_step_duration_seconds_sum{")
            {
                (0, r)
            } else if let Some(r) =
                l.strip_prefix("orchestrator_provision_step_duration_seconds_count{")
            {
                (1, r)
            } else {
                continue;
            };
            let step = rest.split('"').nth(1).unwrap_or("").to_owned();
            let v: f64 = rest
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0);
            match out.iter_mut().find(|(s, _, _)| *s == step) {
                Some(e) if kind == 0 => e.1 = v,
                Some(e) => e.2 = v,
                None if kind == 0 => out.push((step, v, 0.0)),
                None => out.push((step, 0.0, v)),
            }
        }
        anyhow::Ok(out)
    };
    let show_steps = |before: &[(String, f64, f64)], after: &[(String, f64, f64)]| {
        after
            .iter()
            .filter_map(|(s, sum, n)| {
                let (s0, n0) = before
                    .iter()
                    .find(|(b, _, _)| b == s)
                    .map(|(_, a, b)| (*a, *b))
                    .unwrap_or((0.0, 0.0));
                (n - n0 > 0.0).then(|| format!("{s} {:.0}", (sum - s0) / (n - n0) * 1000.0))
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let n = args.creates.max(2);
    let s0 = steps().await?;
    let mut cold = Vec::new();
    for i in 0..n {
        cold.push(
            create(format!("bench-cold-{i}"), serde_json::json!({}), false)
                .await?
                .1,
        );
    }
    let s1 = steps().await?;
    // The template: a live snapshot of a running environment.
    let (src, _) = create("bench-tsrc".into(), serde_json::json!({}), true).await?;
    let t = Instant::now();
    let r = auth(http.post(format!("{base}/v1/templates")))
        .json(&serde_json::json!({"name": "bench", "from_environment": src}))
        .send()
        .await?;
    anyhow::ensure!(
        r.status() == StatusCode::CREATED,
        "template: {}",
        r.text().await?
    );
    let snap_ms = t.elapsed().as_secs_f64() * 1000.0;
    // The template outlives its source (an idle guest under TCG still costs CPU).
    let r = auth(http.delete(format!("{base}/v1/environments/{src}")))
        .send()
        .await?;
    anyhow::ensure!(r.status() == StatusCode::NO_CONTENT, "destroy {src}");
    let mut tpl = Vec::new();
    for i in 0..n {
        tpl.push(
            create(
                format!("bench-tpl-{i}"),
                serde_json::json!({"template": "bench"}),
                false,
            )
            .await?
            .1,
        );
    }
    let s2 = steps().await?;
    // The warm pool: filled, then drawn one create at a time (each waits for a ready VM).
    let r = auth(http.patch(format!("{base}/v1/templates/bench")))
        .json(&serde_json::json!({"pool": {"per_host": args.pool}}))
        .send()
        .await?;
    anyhow::ensure!(r.status() == StatusCode::OK, "pool: {}", r.text().await?);
    let ready = || async {
        let t: serde_json::Value = auth(http.get(format!("{base}/v1/templates/bench")))
            .send()
            .await?
            .json()
            .await?;
        anyhow::Ok(t["pool"]["ready"].as_u64().unwrap_or(0))
    };
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut warm = Vec::new();
    for i in 0..n {
        while ready().await? < u64::from(args.pool) {
            anyhow::ensure!(Instant::now() < deadline, "the pool never filled");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        warm.push(
            create(
                format!("bench-warm-{i}"),
                serde_json::json!({"template": "bench"}),
                false,
            )
            .await?
            .1,
        );
    }
    let s3 = steps().await?;
    let r = auth(http.patch(format!("{base}/v1/templates/bench")))
        .json(&serde_json::json!({"pool": {"per_host": 0}}))
        .send()
        .await?;
    anyhow::ensure!(r.status() == StatusCode::OK, "pool off: {}", r.status());
    let stats = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        let at = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
        (at(0.5), at(0.95))
    };
    let (c50, c95) = stats(&mut cold);
    let (t50, t95) = stats(&mut tpl);
    let (w50, w95) = stats(&mut warm);
    println!(
        "backend {}: {n} creates of each kind, one at a time (create → running, ms)",
        args.backend
    );
    println!("  cold boot      p50 {c50:8.1}  p95 {c95:8.1}");
    println!(
        "  from template  p50 {t50:8.1}  p95 {t95:8.1}  ({:.1}x faster at p50, {:.1}x at p95; target ≥ 6x)",
        c50 / t50,
        c95 / t95
    );
    println!(
        "  warm pool      p50 {w50:8.1}  p95 {w95:8.1}  ({:.1}x faster at p50, {:.1}x at p95; target ≥ 15x)",
        c50 / w50,
        c95 / w95
    );
    println!("  (the template's live snapshot took {snap_ms:.0} ms)");
    println!("  host steps, mean ms: cold [{}]", show_steps(&s0, &s1));
    println!("                       template [{}]", show_steps(&s1, &s2));
    println!(
        "                       warm pool [{}] (warm VMs restored meanwhile count here too)",
        show_steps(&s2, &s3)
    );
    Ok(())
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

/// The encryption key of the in-process server on `--database-url` (bench data only).
const BENCH_KEY: &str = "be0c4be0c4be0c4be0c4be0c4be0c4be0c4be0c4be0c4be0c4be0c4be0c4be0c";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // The in-process server's log, when asked for (`RUST_LOG=info`), on standard error.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .init();
    }
    let mut _server = None;
    let base = if args.url.is_empty() {
        let mut flags = fuse_server::config::Flags::parse_from(["fuse"]);
        flags.listen = "127.0.0.1:0".into();
        if !args.database_url.is_empty() {
            flags.database_url = args.database_url.clone();
            // A fixed key, so a second run on the same database passes the key check (a
            // database sealed with another key is refused, as for `fuse`).
            flags.token_encryption_key = BENCH_KEY.into();
        }
        let cfg = fuse_server::config::Config::from_flags(flags, |_| None)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let running = fuse_server::server::start(cfg).await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while running.app.store.ping().await.is_err() {
            anyhow::ensure!(Instant::now() < deadline, "the store never became ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let base = format!("http://{}", running.addr);
        _server = Some(running);
        base
    } else {
        args.url.trim_end_matches('/').to_owned()
    };
    let http: Http = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(args.clients)
        .build_http();
    call(&http, Method::GET, &format!("{base}/health"), "", None)
        .await
        .context("server does not answer /health")?;
    let agent = if args.fc_agent {
        let a = Agent::start(args.clients * 4 + 16, &args.backend, &args.guest_dir)?;
        let deadline = Instant::now() + Duration::from_secs(15);
        let body = format!(
            "{{\"id\":\"bench-host\",\"url\":\"{}\",\"token\":\"{AGENT_TOKEN}\"}}",
            a.base
        );
        loop {
            let r = reqwest::Client::new()
                .get(format!("{}/healthz", a.base))
                .bearer_auth(AGENT_TOKEN)
                .send()
                .await;
            if r.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "fc-agent did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let s = call(
            &http,
            Method::POST,
            &format!("{base}/v1/hosts"),
            &args.token,
            Some(body),
        )
        .await?;
        anyhow::ensure!(
            s == StatusCode::CREATED,
            "registering the fc-agent host: {s}"
        );
        Some(a)
    } else {
        None
    };
    if args.runtime {
        anyhow::ensure!(agent.is_some(), "--runtime needs --fc-agent");
        return runtime(&base, &args).await;
    }
    if args.fast_start {
        anyhow::ensure!(agent.is_some(), "--fast-start needs --fc-agent");
        return fast_start(&base, &args).await;
    }
    if args.fill > 0 {
        let stub = _server
            .as_ref()
            .and_then(|r| r.app.providers.stub("default"));
        let bytes = move || stub.as_ref().map(|s| s.bytes_held()).unwrap_or(0);
        fill(&http, &base, &args.token, args.fill, args.clients, bytes).await?;
        if let Some(r) = &_server {
            // What one reconcile pass costs over that many environments (one stub host).
            let mut took = Vec::new();
            for _ in 0..5 {
                let t0 = Instant::now();
                if let Err(e) = r.tasks.run_now("reconcile").await {
                    anyhow::bail!("reconcile pass failed: {e}");
                }
                took.push(t0.elapsed().as_secs_f64() * 1000.0);
            }
            took.sort_by(f64::total_cmp);
            println!(
                "reconcile pass over {} environments: median {:.0} ms (min {:.0}, max {:.0}, 5 passes)",
                args.fill, took[2], took[0], took[4]
            );
        }
        return Ok(());
    }

    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let created = Arc::new(AtomicU64::new(0));
    let destroyed = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for w in 0..args.clients {
        let (http, base, token) = (http.clone(), base.clone(), args.token.clone());
        let (measuring, stop, errors) = (measuring.clone(), stop.clone(), errors.clone());
        let (created, destroyed) = (created.clone(), destroyed.clone());
        workers.push(tokio::spawn(async move {
            let mut creates = Vec::new();
            let mut destroys = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let task = format!("bench-{w}-{i}");
                let t0 = Instant::now();
                let c = call(
                    &http,
                    Method::POST,
                    &format!("{base}/v1/environments"),
                    &token,
                    Some(format!("{{\"task_id\":\"{task}\"}}")),
                )
                .await;
                let t1 = Instant::now();
                let d = call(
                    &http,
                    Method::DELETE,
                    &format!("{base}/v1/environments/fuse-{task}"),
                    &token,
                    None,
                )
                .await;
                let t2 = Instant::now();
                if matches!(c, Ok(StatusCode::CREATED)) {
                    created.fetch_add(1, Ordering::Relaxed);
                }
                if matches!(d, Ok(StatusCode::NO_CONTENT)) {
                    destroyed.fetch_add(1, Ordering::Relaxed);
                }
                let ok =
                    matches!(c, Ok(StatusCode::CREATED)) && matches!(d, Ok(StatusCode::NO_CONTENT));
                if !ok {
                    errors.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                if measuring.load(Ordering::Relaxed) {
                    creates.push((t1 - t0).as_micros() as u64);
                    destroys.push((t2 - t1).as_micros() as u64);
                }
            }
            (creates, destroys)
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    measuring.store(true, Ordering::Relaxed);
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut creates = Vec::new();
    let mut destroys = Vec::new();
    for w in workers {
        let (c, d) = w.await?;
        creates.extend(c);
        destroys.extend(d);
    }
    creates.sort_unstable();
    destroys.sort_unstable();
    let pairs = creates.len();
    println!(
        "target           {}",
        match (args.url.is_empty(), &agent) {
            (true, Some(_)) =>
                "in-process fuse (memory store), one real fc-agent (process backend)",
            (true, None) => "in-process fuse (memory store, stub provider)",
            (false, _) => &base,
        }
    );
    println!("clients          {}", args.clients);
    println!("measured         {:.1} s", elapsed.as_secs_f64());
    println!("pairs            {pairs}");
    println!(
        "pairs/s          {:.0}",
        pairs as f64 / elapsed.as_secs_f64()
    );
    println!(
        "create ms        p50 {:.3}  p99 {:.3}  max {:.3}",
        pct(&creates, 0.50),
        pct(&creates, 0.99),
        pct(&creates, 1.0)
    );
    println!(
        "destroy ms       p50 {:.3}  p99 {:.3}  max {:.3}",
        pct(&destroys, 0.50),
        pct(&destroys, 0.99),
        pct(&destroys, 1.0)
    );
    println!("errors           {}", errors.load(Ordering::Relaxed));
    if let Some(a) = &agent {
        let reqs = a.requests().await?;
        let count = |f: &dyn Fn(&str, &str) -> bool| -> u64 {
            reqs.iter()
                .filter(|(r, m, _)| f(r, m))
                .map(|(_, _, n)| n)
                .sum()
        };
        let (c, d) = (
            created.load(Ordering::Relaxed),
            destroyed.load(Ordering::Relaxed),
        );
        // Health polls and metrics reads are the host monitor's and ours, not a create's.
        let create_calls = count(&|r, m| {
            r != "/healthz" && r != "/metrics" && !(m == "DELETE" && r == "/v1/vm/{id}")
        });
        let destroy_calls = count(&|r, m| m == "DELETE" && r == "/v1/vm/{id}");
        println!(
            "host calls       per create {:.2} ({create_calls} for {c} creates)  per destroy {:.2} ({destroy_calls} for {d})",
            create_calls as f64 / c.max(1) as f64,
            destroy_calls as f64 / d.max(1) as f64
        );
        for (r, m, n) in reqs.iter().filter(|(r, _, _)| r != "/metrics") {
            println!("  {m:6} {r:28} {n}");
        }
    }
    Ok(())
}
