//! `fuse-bench`: drives a real `fuse` HTTP server with concurrent clients doing
//! create+destroy pairs, and prints pairs per second and create/destroy latency
//! percentiles. By default it starts the server in-process on loopback with the in-memory
//! store and the stub provider; `--url` points it at a running server instead.
//!
//! ```text
//! cargo run --release -p fuse-server --bin fuse-bench -- --seconds 10 --clients 8
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

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut _server = None;
    let base = if args.url.is_empty() {
        let mut flags = fuse_server::config::Flags::parse_from(["fuse"]);
        flags.listen = "127.0.0.1:0".into();
        let cfg = fuse_server::config::Config::from_flags(flags, |_| None)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let running = fuse_server::server::start(cfg).await?;
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

    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for w in 0..args.clients {
        let (http, base, token) = (http.clone(), base.clone(), args.token.clone());
        let (measuring, stop, errors) = (measuring.clone(), stop.clone(), errors.clone());
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
        if args.url.is_empty() {
            "in-process fuse (memory store, stub provider)"
        } else {
            &base
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
    Ok(())
}
