//! The fault-injection suite (issue 6): real `fuse` processes, real `fc-agent` processes
//! (each in its own network namespace), real Postgres. Each scenario injects one fault,
//! is bounded in time, and ends with the same checks (`check::settled`): nothing stuck,
//! capacity equal to what live environments use, no VM (or its directory, namespace, link,
//! process, NAT rule) the control plane does not track, and every transition in the audit
//! log. Needs root (namespaces) and `FUSE_TEST_DATABASE_URL`; skipped with a reason
//! otherwise.

use crate::check::{environments, settled};
use crate::harness::{eventually, spawn_fuse, FuseProc};
use crate::hosts::{Host, AGENT_TOKEN};
use fuse_store::StateStore as _;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Short periods so healing is quick: poll and reconcile every second, orphans older than
/// 2 s destroyed, hosts silent for 3 s unreachable.
pub const FAST: &[(&str, &str)] = &[
    ("FUSE_RECONCILE_PERIOD_SECS", "1"),
    ("FUSE_ORPHAN_GRACE_SECS", "2"),
    ("FUSE_HOST_DOWN_AFTER_SECS", "3"),
    // The default profile's `/usr/local/bin/fused` is not on the `process` backend's
    // guests (host processes): an agent that runs, up after 300 ms.
    ("FUSE_AGENT_COMMAND", "exec sleep 3600"),
    ("FUSE_AGENT_START_WINDOW_MS", "300"),
];

/// How long a scenario may take to heal.
pub const HEAL: Duration = Duration::from_secs(60);

/// Hosts with running agents, or `None` (skip) without root or a test database.
pub async fn hosts(names: &[&str]) -> Option<Vec<Host>> {
    let mut out = Vec::new();
    for n in names {
        let mut h = Host::create(n)?;
        h.start_agent();
        out.push(h);
    }
    for h in &out {
        h.wait_up().await;
    }
    Some(out)
}

/// Registers every host (their capacity comes from their `/healthz`).
pub async fn register(f: &FuseProc, hosts: &[Host]) {
    for h in hosts {
        let (s, b) = f
            .post(
                "/v1/hosts",
                json!({"id": h.id, "url": h.url(), "token": AGENT_TOKEN}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        assert_eq!(b["state"], "active", "{b}");
    }
}

/// Hosts with running agents, a fresh database and a `fuse` on it with the hosts
/// registered; `None` (skip, reason printed) without root or a test database.
async fn cluster(names: &[&str]) -> Option<(Vec<Host>, fuse_testkit::TestDb, FuseProc)> {
    let admin = admin()?;
    let hs = hosts(names).await?;
    let db = fuse_testkit::TestDb::create_at(&admin).await;
    let f = fuse_on(&db).await;
    register(&f, &hs).await;
    Some((hs, db, f))
}

fn admin() -> Option<String> {
    fuse_testkit::db::admin_url()
}

async fn fuse_on(db: &str) -> FuseProc {
    let f = spawn_fuse(db, FAST);
    f.ready().await;
    f
}

/// Starts `n` creates at once (each waits for its outcome); returns their join handles.
fn creates(
    f: &FuseProc,
    prefix: &str,
    n: usize,
    body: Value,
) -> Vec<tokio::task::JoinHandle<(StatusCode, Value)>> {
    (0..n)
        .map(|i| {
            let http = f.http.clone();
            let url = format!("{}/v1/environments", f.base);
            let mut b = body.clone();
            b["task_id"] = json!(format!("{prefix}-{i}"));
            tokio::spawn(async move {
                match http.post(url).json(&b).send().await {
                    Ok(r) => {
                        let s = r.status();
                        (s, r.json().await.unwrap_or(Value::Null))
                    }
                    Err(_) => (StatusCode::BAD_GATEWAY, Value::Null),
                }
            })
        })
        .collect()
}

async fn states(f: &FuseProc) -> Vec<(String, String, String)> {
    environments(f)
        .await
        .into_iter()
        .map(|e| {
            (
                e["id"].as_str().unwrap().to_owned(),
                e["state"].as_str().unwrap().to_owned(),
                e["host_id"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

/// Runs `echo WORD` in the environment and checks its output.
async fn echo_in(f: &FuseProc, id: &str, word: &str) {
    let (s, r) = f
        .post(
            &format!("/v1/environments/{id}?action=exec"),
            json!({"cmd": ["echo", word]}),
        )
        .await;
    assert_eq!(
        (s, r["stdout"].as_str()),
        (StatusCode::OK, Some(format!("{word}\n").as_str())),
        "{r}"
    );
}

/// After a fault, the fleet still serves: a new environment runs, runs a command, and goes.
async fn still_serves(f: &FuseProc, task: &str) {
    let (s, b) = f.post("/v1/environments", json!({"task_id": task})).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    assert_eq!(b["state"], "running", "{b}");
    let id = b["id"].as_str().unwrap();
    echo_in(f, id, "alive").await;
    let (s, _) = f.delete(&format!("/v1/environments/{id}")).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn agent_killed_mid_create_then_restarted() {
    let Some((mut hs, db, f)) = cluster(&["h1"]).await else {
        return;
    };
    let started = Instant::now();
    let jobs = creates(
        &f,
        "akill",
        12,
        json!({"startup_script": "sleep 0.3", "agent": {"command": "exec sleep 600"}}),
    );
    // Kill the agent while creates are in flight on it (its first VMs are there, the
    // startup scripts still sleeping).
    eventually(
        "creates in flight on h1",
        Duration::from_secs(30),
        || async { !hs[0].vms().await.is_empty() },
    )
    .await;
    hs[0].kill9_agent();
    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    for j in jobs {
        let (s, b) = j.await.unwrap();
        let k = format!("{} {}", s.as_u16(), b["state"].as_str().unwrap_or("-"));
        *outcomes.entry(k).or_default() += 1;
    }
    eprintln!("creates with the agent killed mid-way: {outcomes:?}");
    assert!(
        outcomes.keys().any(|k| !k.ends_with("running")),
        "the kill hit no create: {outcomes:?}"
    );
    hs[0].start_agent();
    hs[0].wait_up().await;
    settled(&f, &[&hs[0]], &db, HEAL).await;
    eprintln!("healed in {:?}", started.elapsed());
    still_serves(&f, "akill-after").await;
    settled(&f, &[&hs[0]], &db, HEAL).await;
}

#[tokio::test]
async fn host_cut_off_past_the_liveness_limit_then_healed() {
    let Some((hs, db, f)) = cluster(&["h1", "h2"]).await else {
        return;
    };
    // Three on each host, pinned: concurrent creates only spread roughly (placement reads
    // a briefly cached host list), and the test needs both hosts busy.
    let mut jobs = creates(&f, "cut-a", 3, json!({"spec": {"host_id": "h1"}}));
    jobs.extend(creates(&f, "cut-b", 3, json!({"spec": {"host_id": "h2"}})));
    for j in jobs {
        let (s, b) = j.await.unwrap();
        assert_eq!(s, StatusCode::CREATED, "{b}");
    }
    let on_h1: Vec<String> = states(&f)
        .await
        .into_iter()
        .filter(|(_, _, h)| h == "h1")
        .map(|(id, _, _)| id)
        .collect();
    assert_eq!(on_h1.len(), 3, "pinned to h1: {on_h1:?}");
    let cut_at = Instant::now();
    hs[0].link(false);
    eventually("h1 unreachable", Duration::from_secs(30), || async {
        f.get("/v1/hosts/h1").await.1["state"] == "unreachable"
    })
    .await;
    let detected = cut_at.elapsed();
    // Its environments are reported lost (audit + metric), not running.
    let store = fuse_store::PgStore::new(fuse_store::PgOptions::new(
        &db,
        Some(crate::harness::cipher()),
    ))
    .unwrap();
    store.prepare().await.unwrap();
    for id in &on_h1 {
        let ev = fuse_store::StateStore::audit_list(&store, id)
            .await
            .unwrap();
        assert!(ev.iter().any(|e| e.event_type == "lost"), "{id}: {ev:?}");
    }
    let (_, _) = f.get("/v1/environments").await;
    let metrics = f
        .http
        .get(format!("{}/metrics", f.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let lost = format!("orchestrator_vms{{state=\"lost\"}} {}", on_h1.len());
    assert!(metrics.contains(&lost), "{lost} in {metrics}");
    // New work goes to the host that answers.
    let (s, b) = f
        .post("/v1/environments", json!({"task_id": "cut-during"}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    assert_eq!(b["host_id"], "h2");
    // Meanwhile one of its VMs dies.
    let dead = on_h1[0].clone();
    assert!(hs[0].kill_vm(&dead), "{dead} had no process");
    // Healed once the VM is really dead: the host comes back with its other VMs, which are
    // running again; the dead one is failed.
    let others = on_h1.len() - 1;
    eventually(
        "the killed VM's process gone",
        Duration::from_secs(30),
        || async { hs[0].footprint().procs == others },
    )
    .await;
    hs[0].link(true);
    eventually("h1 active again", Duration::from_secs(30), || async {
        f.get("/v1/hosts/h1").await.1["state"] == "active"
    })
    .await;
    eventually("the dead VM failed", Duration::from_secs(30), || async {
        f.get(&format!("/v1/environments/{dead}")).await.1["state"] == "failed"
    })
    .await;
    for id in &on_h1[1..] {
        assert_eq!(
            f.get(&format!("/v1/environments/{id}")).await.1["state"],
            "running"
        );
        let ev = fuse_store::StateStore::audit_list(&store, id)
            .await
            .unwrap();
        assert!(ev.iter().any(|e| e.event_type == "found"), "{id}: {ev:?}");
    }
    eprintln!("cut detected after {detected:?}");
    settled(&f, &[&hs[0], &hs[1]], &db, HEAL).await;
}

#[tokio::test]
async fn control_plane_killed_mid_twenty_creates_then_restarted() {
    let Some((hs, db, mut a)) = cluster(&["h1", "h2"]).await else {
        return;
    };
    let jobs = creates(
        &a,
        "fkill",
        20,
        json!({"startup_script": "sleep 1", "agent": {"command": "exec sleep 600"}}),
    );
    // Kill once all 20 are recorded and provisioning (their startup scripts sleep).
    eventually("20 creates in flight", Duration::from_secs(30), || async {
        states(&a).await.len() == 20
    })
    .await;
    a.kill9();
    for j in jobs {
        let _ = j.await;
    }
    let b = fuse_on(&db).await;
    let before = states(&b).await;
    let provisioning = before
        .iter()
        .filter(|(_, s, _)| s == "provisioning")
        .count();
    eprintln!(
        "after the restart: {provisioning} of {} still provisioning",
        before.len()
    );
    settled(&b, &[&hs[0], &hs[1]], &db, HEAL).await;
    let after = states(&b).await;
    assert_eq!(after.len(), 20, "every create is accounted for");
    still_serves(&b, "fkill-after").await;
    settled(&b, &[&hs[0], &hs[1]], &db, HEAL).await;
}

/// A private Postgres cluster the test can restart (the shared one serves other tests).
pub struct PrivatePg {
    dir: std::path::PathBuf,
    bin: std::path::PathBuf,
    port: u16,
}

impl PrivatePg {
    pub fn start() -> Option<PrivatePg> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .flatten()
            .map(|e| e.path().join("bin"))
            .find(|b| b.join("initdb").exists())?;
        let port = crate::harness::free_port();
        let dir = std::env::temp_dir().join(format!("fuse-pg-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).ok()?;
        let as_pg = |args: &[&str]| {
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .args(args)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        let d = dir.display().to_string();
        let ok = Command::new("chown")
            .args(["postgres", &d])
            .status()
            .is_ok_and(|s| s.success())
            && as_pg(&[
                bin.join("initdb").to_str()?,
                "-D",
                &d,
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ]);
        let pg = PrivatePg { dir, bin, port };
        if !ok || !pg.ctl(&["start"]) {
            fuse_testkit::prereq::missing(
                "a private Postgres",
                "the fault test runs its own cluster from Debian's postgresql binaries",
            );
            return None;
        }
        Some(pg)
    }

    pub fn ctl(&self, what: &[&str]) -> bool {
        let d = self.dir.display().to_string();
        let opts = format!(
            "-p {} -k {d} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            self.port
        );
        Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args([
                "-D",
                &d,
                "-l",
                &format!("{d}/log"),
                "-o",
                &opts,
                "-w",
                "-m",
                "fast",
            ])
            .args(what)
            .stdout(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let _ = self.ctl(&["stop", "-m", "immediate"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn postgres_restarted_while_creates_and_destroys_run() {
    let Some(_admin) = admin() else { return };
    let Some(hs) = hosts(&["h1"]).await else {
        return;
    };
    let Some(pg) = PrivatePg::start() else {
        return;
    };
    let db = pg.url();
    let f = Arc::new(fuse_on(&db).await);
    register(&f, &hs).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let created = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for w in 0..3 {
        let (f, stop, created) = (f.clone(), stop.clone(), created.clone());
        workers.push(tokio::spawn(async move {
            let mut counts = std::collections::BTreeMap::<String, usize>::new();
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let task = format!("pg-{w}-{i}");
                i += 1;
                let (s, b) = f.post("/v1/environments", json!({"task_id": task})).await;
                if s == StatusCode::CREATED {
                    created.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                *counts.entry(format!("create {}", s.as_u16())).or_default() += 1;
                if let Some(id) = b["id"].as_str() {
                    let (s, _) = f.delete(&format!("/v1/environments/{id}")).await;
                    *counts.entry(format!("delete {}", s.as_u16())).or_default() += 1;
                }
            }
            counts
        }));
    }
    // Traffic runs, Postgres restarts under it, traffic goes on: creates succeed again
    // after the restart.
    let n = || created.load(std::sync::atomic::Ordering::SeqCst);
    eventually(
        "creates before the restart",
        Duration::from_secs(30),
        || async { n() >= 6 },
    )
    .await;
    assert!(pg.ctl(&["restart"]), "restarting Postgres");
    let after_restart = n();
    eventually(
        "creates after the restart",
        Duration::from_secs(60),
        || async { n() >= after_restart + 6 },
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut total = std::collections::BTreeMap::<String, usize>::new();
    for w in workers {
        for (k, v) in w.await.unwrap() {
            *total.entry(k).or_default() += v;
        }
    }
    eprintln!("traffic across the Postgres restart: {total:?}");
    assert!(
        total.get("create 201").copied().unwrap_or(0) > 3,
        "traffic ran: {total:?}"
    );
    f.ready().await;
    // Leftover live environments from interrupted pairs are deleted by the test; the
    // system must settle either way.
    for (id, s, _) in states(&f).await {
        if s == "running" {
            f.delete(&format!("/v1/environments/{id}")).await;
        }
    }
    settled(&f, &[&hs[0]], &db, HEAL).await;
    still_serves(&f, "pg-after").await;
}

#[tokio::test]
async fn agent_restarted_while_vms_run_readopts_them() {
    let Some((mut hs, db, f)) = cluster(&["h1"]).await else {
        return;
    };
    let mut ids = Vec::new();
    for j in creates(
        &f,
        "adopt",
        4,
        json!({"agent": {"command": "exec sleep 600"}}),
    ) {
        let (s, b) = j.await.unwrap();
        assert_eq!(s, StatusCode::CREATED, "{b}");
        ids.push(b["id"].as_str().unwrap().to_owned());
    }
    let before = hs[0].footprint();
    hs[0].kill9_agent();
    hs[0].start_agent();
    hs[0].wait_up().await;
    assert_eq!(hs[0].vms().await.len(), 4, "{}", hs[0].log_text());
    assert_eq!(hs[0].footprint(), before, "nothing recreated, nothing lost");
    for id in &ids {
        echo_in(&f, id, "still here").await;
        assert_eq!(
            f.get(&format!("/v1/environments/{id}")).await.1["state"],
            "running"
        );
    }
    settled(&f, &[&hs[0]], &db, HEAL).await;
}

#[tokio::test]
async fn leftovers_of_a_crashed_agent_are_reclaimed_and_orphans_destroyed() {
    let Some(admin) = admin() else { return };
    let Some(mut hs) = hosts(&["h1"]).await else {
        return;
    };
    // Creates straight to the agent (no control plane knows them): three finish, then a
    // burst is killed mid-way.
    let http = hs[0].http.clone();
    let url = format!("{}/v1/vm", hs[0].url());
    for i in 0..3 {
        let r = http
            .post(&url)
            .bearer_auth(AGENT_TOKEN)
            .json(&json!({"name": format!("fuse-done-{i}"), "cpus": 1, "memory_mb": 128, "storage_gb": 1, "agent_port": 8080}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }
    let jobs: Vec<_> = (0..16)
        .map(|i| {
            let (http, url) = (http.clone(), url.clone());
            tokio::spawn(async move {
                http.post(url)
                    .bearer_auth(AGENT_TOKEN)
                    .json(&json!({"name": format!("fuse-leak-{i}"), "cpus": 1, "memory_mb": 128, "storage_gb": 1, "agent_port": 8080}))
                    .send()
                    .await
                    .map(|r| r.status())
            })
        })
        .collect();
    // Kill the agent mid-burst: once some of the burst's VMs have directories.
    let vms_dir = hs[0].dir.join("vms");
    eventually("the burst under way", Duration::from_secs(30), || async {
        std::fs::read_dir(&vms_dir).map(|d| d.count()).unwrap_or(0) > 3
    })
    .await;
    hs[0].kill9_agent();
    for j in jobs {
        let _ = j.await;
    }
    let crashed = hs[0].footprint();
    eprintln!("left by the crash: {crashed:?}");
    assert!(
        !crashed.dirs.is_empty(),
        "the crash left nothing to reclaim"
    );
    hs[0].start_agent();
    hs[0].wait_up().await;
    // Reclaimed at start: what remains is exactly the VMs the agent adopted.
    let adopted = hs[0].vms().await;
    assert!(adopted.len() >= 3, "{adopted:?}");
    let fp = hs[0].footprint();
    assert_eq!(fp.dirs, adopted, "{}", hs[0].log_text());
    let n = adopted.len();
    assert_eq!((fp.netns, fp.links, fp.procs), (n, n, n), "{fp:?}");
    assert!(fp.nat_vms.iter().all(|v| adopted.contains(v)), "{fp:?}");
    // A control plane that tracks none of them destroys them as orphans.
    let db = fuse_testkit::TestDb::create_at(&admin).await;
    let f = fuse_on(&db).await;
    register(&f, &hs).await;
    settled(&f, &[&hs[0]], &db, HEAL).await;
    assert!(hs[0].vms().await.is_empty());
}

/// Makes an environment pinned to `host` with a large file (so its pause, which archives the
/// disk on the `process` backend, and its transfer take a while) and a small one to check.
async fn heavy_env(f: &FuseProc, task: &str, host: &str) -> String {
    let (s, b) = f
        .post(
            "/v1/environments",
            json!({"task_id": task, "spec": {"host_id": host, "storage_gb": 2}}),
        )
        .await;
    assert_eq!(
        (s, b["state"].as_str()),
        (StatusCode::CREATED, Some("running")),
        "{b}"
    );
    let id = b["id"].as_str().unwrap().to_owned();
    let (s, r) = f
        .post(
            &format!("/v1/environments/{id}?action=exec"),
            json!({"shell": "head -c 400000000 /dev/zero > big && echo kept > small", "timeout_ms": 120000}),
        )
        .await;
    assert_eq!(
        (s, r["exit_code"].as_i64()),
        (StatusCode::OK, Some(0)),
        "{r}"
    );
    id
}

/// The small file is there (resuming the environment first if it is paused).
async fn small_file_kept(f: &FuseProc, id: &str) {
    let (_, e) = f.get(&format!("/v1/environments/{id}")).await;
    if e["state"] == "paused" {
        let (s, b) = f
            .post(&format!("/v1/environments/{id}?action=resume"), json!({}))
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
    }
    let (s, r) = f
        .post(
            &format!("/v1/environments/{id}?action=exec"),
            json!({"shell": "cat small"}),
        )
        .await;
    assert_eq!(
        (s, r["stdout"].as_str()),
        (StatusCode::OK, Some("kept\n")),
        "{r}"
    );
}

/// Sends `path` without waiting for the answer (the control plane is killed meanwhile).
fn post_and_forget(f: &FuseProc, path: &str, body: Value) {
    let (http, url) = (f.http.clone(), format!("{}{path}", f.base));
    tokio::spawn(async move {
        let _ = http.post(url).json(&body).send().await;
    });
}

/// `fuse` killed in the middle of a pause, of a resume and of a migration (issue 13): after
/// a restart each settles — no environment stuck, capacity and snapshot files accounted,
/// nothing staged left on the target, every transition in the audit log — and each keeps
/// its files, wherever it ended up.
#[tokio::test]
async fn control_plane_killed_mid_pause_mid_resume_and_mid_migrate() {
    let Some((hs, db, mut a)) = cluster(&["h1", "h2"]).await else {
        return;
    };
    hs[0].route_to(&hs[1]);
    let p = heavy_env(&a, "kp-pause", "h1").await;
    let r = heavy_env(&a, "kp-resume", "h1").await;
    let m = heavy_env(&a, "kp-migrate", "h1").await;
    let (s, b) = a
        .post(&format!("/v1/environments/{r}?action=pause"), json!({}))
        .await;
    assert_eq!(
        (s, b["state"].as_str()),
        (StatusCode::OK, Some("paused")),
        "{b}"
    );

    // 1. Mid-pause: the host is archiving 400 MB when the control plane dies.
    let t = Instant::now();
    post_and_forget(&a, &format!("/v1/environments/{p}?action=pause"), json!({}));
    tokio::time::sleep(Duration::from_millis(150)).await;
    a.kill9();
    eprintln!("killed mid-pause after {:?}", t.elapsed());
    let mut b2 = fuse_on(&db).await;
    settled(&b2, &[&hs[0], &hs[1]], &db, HEAL).await;

    // 2. Mid-resume: the room is taken and the host is unpacking when it dies.
    post_and_forget(
        &b2,
        &format!("/v1/environments/{r}?action=resume"),
        json!({}),
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    b2.kill9();
    let mut c = fuse_on(&db).await;
    settled(&c, &[&hs[0], &hs[1]], &db, HEAL).await;

    // 3. Mid-migrate: killed once the target is receiving the files.
    post_and_forget(
        &c,
        &format!("/v1/environments/{m}?action=migrate"),
        json!({"target_host_id": "h2"}),
    );
    let incoming = hs[1].dir.join("incoming");
    eventually("the target receiving", Duration::from_secs(60), || {
        let incoming = incoming.clone();
        async move {
            std::fs::read_dir(&incoming)
                .map(|mut rd| rd.next().is_some())
                .unwrap_or(false)
        }
    })
    .await;
    c.kill9();
    let d = fuse_on(&db).await;
    settled(&d, &[&hs[0], &hs[1]], &db, HEAL).await;
    let ended: Vec<(String, String, String)> = states(&d).await;
    eprintln!("after the three kills: {ended:?}");
    for id in [&p, &r, &m] {
        let e = ended.iter().find(|(i, _, _)| i == id).unwrap();
        assert!(
            matches!(e.1.as_str(), "running" | "paused"),
            "{id} ended {} (it must keep running or paused, never lost)",
            e.1
        );
        small_file_kept(&d, id).await;
    }
    settled(&d, &[&hs[0], &hs[1]], &db, HEAL).await;
}
