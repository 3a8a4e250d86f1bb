//! The soak run (issue 6), a separate command (`scripts/soak.sh`; ignored in the normal
//! suite): 2 `fuse` replicas on a private Postgres, 3 `fc-agent` hosts in network
//! namespaces, mixed create / exec / drain / destroy traffic for `FUSE_SOAK_SECS` (default
//! 600) with one random fault every `FUSE_SOAK_FAULT_SECS` (default 60): a replica killed
//! (`kill -9`) and restarted, an agent killed and restarted, a host cut off for 6 s, Postgres
//! restarted, or a VM's process killed. At the end it prints the operations by outcome,
//! the errors by kind, the faults, and runs the same consistency check as the fault suite.

use crate::check::settled;
use crate::faults::{hosts, register, PrivatePg, FAST};
use crate::harness::{spawn_fuse, FuseProc};
use crate::hosts::Host;
use parking_lot::Mutex;
use rand::Rng;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn secs(var: &str, default: u64) -> Duration {
    Duration::from_secs(
        std::env::var(var)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default),
    )
}

type Counts = Arc<Mutex<BTreeMap<String, u64>>>;

fn count(c: &Counts, key: String) {
    *c.lock().entry(key).or_default() += 1;
}

/// Outcome key of one call: `op ok` or `op <status> <error code>`.
fn outcome(op: &str, status: reqwest::StatusCode, body: &Value, want: &[u16]) -> (bool, String) {
    if want.contains(&status.as_u16()) {
        return (true, format!("{op} ok"));
    }
    let code = body["error"]["code"]
        .as_str()
        .unwrap_or(if status.as_u16() == 502 {
            "no answer"
        } else {
            "-"
        });
    (false, format!("{op} {} {code}", status.as_u16()))
}

async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    body: Option<Value>,
) -> (reqwest::StatusCode, Value) {
    let mut r = http.request(method, url);
    if let Some(b) = body {
        r = r.json(&b);
    }
    match r.send().await {
        Ok(resp) => {
            let s = resp.status();
            (s, resp.json().await.unwrap_or(Value::Null))
        }
        Err(_) => (reqwest::StatusCode::BAD_GATEWAY, Value::Null),
    }
}

#[tokio::test]
#[ignore = "soak run: scripts/soak.sh"]
async fn soak() {
    let run_for = secs("FUSE_SOAK_SECS", 600);
    let fault_every = secs("FUSE_SOAK_FAULT_SECS", 60);
    let Some(mut hs) = hosts(&["h1", "h2", "h3"]).await else {
        return;
    };
    let Some(pg) = PrivatePg::start() else {
        return;
    };
    let db = pg.url();
    let replicas: Arc<Mutex<Vec<Option<FuseProc>>>> = Arc::new(Mutex::new(Vec::new()));
    for _ in 0..2 {
        let f = spawn_fuse(&db, FAST);
        f.ready().await;
        replicas.lock().push(Some(f));
    }
    let base0 = replicas.lock()[0].as_ref().unwrap().base.clone();
    {
        let f = FuseProc::client_for(&base0);
        register(&f, &hs).await;
    }
    let bases: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(
        replicas
            .lock()
            .iter()
            .map(|r| r.as_ref().unwrap().base.clone())
            .collect(),
    ));
    let ops: Counts = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(90))
        .build()
        .unwrap();
    let started = Instant::now();
    let mut workers = Vec::new();
    for w in 0..6 {
        let (ops, stop, bases, http) = (ops.clone(), stop.clone(), bases.clone(), http.clone());
        workers.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let base = {
                    let b = bases.lock();
                    b[rand::thread_rng().gen_range(0..b.len())].clone()
                };
                let task = format!("soak-{w}-{i}");
                let (s, b) = call(
                    &http,
                    reqwest::Method::POST,
                    format!("{base}/v1/environments"),
                    Some(
                        json!({"task_id": task, "files": {"/data/n.txt": "aGVsbG8="},
                                "agent": {"command": "exec sleep 3600", "drain_command": "true"}}),
                    ),
                )
                .await;
                let (mut ok, mut k) = outcome("create", s, &b, &[201]);
                if ok && b["state"] != "running" {
                    // Created, but it ended failed: that is an error of its own kind.
                    ok = false;
                    k = format!(
                        "create 201 {}: {}",
                        b["state"].as_str().unwrap_or("?"),
                        b["error"]
                            .as_str()
                            .unwrap_or("")
                            .split(':')
                            .next()
                            .unwrap_or("")
                    );
                }
                count(&ops, k);
                let id = format!("fuse-{task}");
                if ok {
                    for _ in 0..3 {
                        let (s, b) = call(
                            &http,
                            reqwest::Method::POST,
                            format!("{base}/v1/environments/{id}?action=exec"),
                            Some(json!({"cmd": ["cat", "data/n.txt"]})),
                        )
                        .await;
                        let (ok, k) = outcome("exec", s, &b, &[200]);
                        if !ok && std::env::var("FUSE_SOAK_VERBOSE").is_ok() {
                            eprintln!("{k}: {b}");
                        }
                        count(&ops, k);
                    }
                    if i.is_multiple_of(3) {
                        let (s, b) = call(
                            &http,
                            reqwest::Method::POST,
                            format!("{base}/v1/environments/{id}?action=drain"),
                            None,
                        )
                        .await;
                        count(&ops, outcome("drain", s, &b, &[200]).1);
                    }
                }
                // Always try to destroy (also what a failed create left), on any replica.
                for attempt in 0..5 {
                    let base = {
                        let b = bases.lock();
                        b[rand::thread_rng().gen_range(0..b.len())].clone()
                    };
                    let (s, b) = call(
                        &http,
                        reqwest::Method::DELETE,
                        format!("{base}/v1/environments/{id}"),
                        None,
                    )
                    .await;
                    let (ok, k) = outcome("destroy", s, &b, &[204, 404]);
                    count(&ops, k);
                    if ok {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(500 * (attempt + 1))).await;
                }
            }
        }));
    }
    let mut faults: Vec<String> = Vec::new();
    let mut next_fault = Instant::now() + fault_every;
    while started.elapsed() < run_for {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if Instant::now() < next_fault {
            continue;
        }
        next_fault += fault_every;
        let kind = rand::thread_rng().gen_range(0..5);
        let at = started.elapsed().as_secs();
        match kind {
            0 => {
                let r = rand::thread_rng().gen_range(0..2usize);
                let old = replicas.lock()[r].take();
                if let Some(mut f) = old {
                    f.kill9();
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
                let f = spawn_fuse(&db, FAST);
                f.ready().await;
                bases.lock()[r] = f.base.clone();
                replicas.lock()[r] = Some(f);
                faults.push(format!("{at:>4} s: kill -9 of replica {r}, restarted"));
            }
            1 => {
                let h = rand::thread_rng().gen_range(0..hs.len());
                hs[h].kill9_agent();
                tokio::time::sleep(Duration::from_secs(2)).await;
                hs[h].start_agent();
                hs[h].wait_up().await;
                faults.push(format!(
                    "{at:>4} s: kill -9 of agent {}, restarted",
                    hs[h].id
                ));
            }
            2 => {
                let h = rand::thread_rng().gen_range(0..hs.len());
                hs[h].link(false);
                tokio::time::sleep(Duration::from_secs(6)).await;
                hs[h].link(true);
                faults.push(format!("{at:>4} s: host {} cut off for 6 s", hs[h].id));
            }
            3 => {
                let ok = pg.ctl(&["restart"]);
                faults.push(format!("{at:>4} s: Postgres restarted (ok: {ok})"));
            }
            _ => {
                let h = rand::thread_rng().gen_range(0..hs.len());
                let vms = hs[h].vms().await;
                if vms.is_empty() {
                    faults.push(format!("{at:>4} s: no VM to kill on {}", hs[h].id));
                } else {
                    let v = &vms[rand::thread_rng().gen_range(0..vms.len())];
                    hs[h].kill_vm(v);
                    faults.push(format!("{at:>4} s: VM {v} killed on {}", hs[h].id));
                }
            }
        }
        eprintln!("{}", faults.last().unwrap());
    }
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }
    let elapsed = started.elapsed();
    // Whatever is still live is destroyed by the operator's hand, then everything must settle.
    let check = FuseProc::client_for(&bases.lock()[0]);
    for e in crate::check::environments(&check).await {
        if matches!(e["state"].as_str(), Some("running" | "draining" | "failed")) {
            check
                .delete(&format!("/v1/environments/{}", e["id"].as_str().unwrap()))
                .await;
        }
    }
    let all = ops.lock().clone();
    let total: u64 = all.values().sum();
    println!(
        "\n== soak: {} s, 2 replicas, 3 hosts, {} faults",
        elapsed.as_secs(),
        faults.len()
    );
    for f in &faults {
        println!("  fault {f}");
    }
    println!("== operations ({total}):");
    for (k, v) in all.iter().filter(|(k, _)| k.ends_with(" ok")) {
        println!("  {k:<40} {v}");
    }
    println!("== errors by kind:");
    for (k, v) in all.iter().filter(|(k, _)| !k.ends_with(" ok")) {
        println!("  {k:<40} {v}");
    }
    let refs: Vec<&Host> = hs.iter().collect();
    settled(&check, &refs, &db, Duration::from_secs(120)).await;
    println!("== final consistency check: OK (nothing stuck, capacity = live use, no untracked VM or leftover, audit explains every transition)");
}
