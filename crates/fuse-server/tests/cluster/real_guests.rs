//! Real Linux guests through the whole chain: a `fuse` process on Postgres and a real
//! `fc-agent` with the `qemu` backend (acceleration chosen automatically: KVM only where a
//! test guest boots under it, else TCG), in a network namespace made by the test and reached
//! over a veth link. The guest image (Debian kernel, busybox root, `fuse-guest`, `fused`) is
//! built by `tools/build-guest-image.sh` into `.fuse-test/guest/` (cached) and QEMU is
//! installed by `tools/install-qemu.sh` when missing.
//!
//! The main test walks one environment through everything (files, secrets, startup script,
//! `fused` over TLS through the host-port forward, rotate-token, snapshot/restore/delete and
//! retention GC, an `fc-agent` restart that re-adopts the running VM, drain, destroy without
//! leftovers) and prints the boot and create timings; two more show that a guest that never
//! boots, or boots silently, ends `failed` with a clear error and leaves nothing.
//!
//! Skipped with a printed reason when not root, when QEMU cannot be installed, or when
//! `FUSE_TEST_DATABASE_URL` is unset.

use crate::harness::*;
use base64::Engine as _;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "real-guests-agent-token-0123456789";

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn run_ok(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// QEMU and the guest image, once per test process; `None` (with the reason printed) when
/// this machine cannot run them.
fn guest_assets() -> Option<PathBuf> {
    static ASSETS: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    let r = ASSETS.get_or_init(|| {
        if !nix::unistd::geteuid().is_root() {
            return Err("not root (QEMU guests need taps and network namespaces)".into());
        }
        run_ok(&mut Command::new(workspace().join("tools/install-qemu.sh")))
            .map_err(|e| format!("QEMU cannot be installed here: {e}"))?;
        let out = std::env::var("FUSE_TEST_GUEST_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| workspace().join(".fuse-test/guest"));
        // Not a skip: with QEMU installable, a failing image build is a failure.
        run_ok(
            Command::new(workspace().join("tools/build-guest-image.sh"))
                .arg("--out")
                .arg(&out),
        )
        .unwrap_or_else(|e| panic!("building the guest image: {e}"));
        Ok(out)
    });
    match r {
        Ok(p) => Some(p.clone()),
        Err(e) => {
            fuse_testkit::prereq::missing("a real guest image", e);
            None
        }
    }
}

/// One real-guest test at a time: an emulated guest takes a whole core while it boots, and
/// the other cluster tests share the machine's cores.
async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

fn ns_output(ns: &str, args: &[&str]) -> String {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// An `fc-agent` (qemu backend) in its own network namespace, reached over a veth link.
struct Host {
    ns: String,
    /// The namespace and its link (removed with the host).
    _lab: fuse_testkit::netns::Lab,
    addr: String,
    dir: PathBuf,
    log: PathBuf,
    agent: Option<Child>,
    /// The agent's command line, to start it again.
    cmd: Vec<(String, String)>,
    bin: PathBuf,
}

impl Host {
    fn start(i: u8, assets: &Path, rootfs: &Path) -> Host {
        Host::start_with(i, assets, rootfs, &[])
    }

    fn start_with(i: u8, assets: &Path, rootfs: &Path, extra: &[(&str, &str)]) -> Host {
        let pid = std::process::id() % 100_000;
        let ns = format!("fuse-rg-{pid}-{i}");
        let veth = format!("frg{pid}{i}");
        // Per test process, so two runs on one machine (two checkouts) do not collide.
        let net = format!("10.252.{}.", 10 + (pid % 60) * 4 + u32::from(i));
        let lab = fuse_testkit::netns::Lab::create(&ns, &veth, &net)
            .unwrap_or_else(|| panic!("creating namespace {ns}"));
        let dir = std::env::temp_dir().join(format!("{ns}-dir"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.with_extension("log");
        let addr = format!("{net}2:8090");
        let me = std::env::current_exe().unwrap();
        let bin = me.parent().unwrap().parent().unwrap().join("fc-agent");
        if !bin.exists() {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let st = Command::new(cargo)
                .args(["build", "-p", "fuse-hostagent", "--bin", "fc-agent"])
                .status()
                .unwrap();
            assert!(st.success(), "building fc-agent");
        }
        let p = |p: &Path| p.display().to_string();
        let mut env: Vec<(String, String)> = [
            ("FC_AGENT_LISTEN", addr.clone()),
            ("FC_AGENT_TOKEN", TOKEN.into()),
            ("FC_AGENT_BACKEND", "qemu".into()),
            ("FC_AGENT_QEMU_ACCEL", "auto".into()),
            ("FC_AGENT_DIR", p(&dir)),
            ("FC_AGENT_KERNEL", p(&assets.join("vmlinuz"))),
            ("FC_AGENT_INITRD", p(&assets.join("initramfs.cpio.gz"))),
            ("FC_AGENT_ROOTFS", p(rootfs)),
            ("FC_AGENT_PUBLIC_HOST", format!("{net}2")),
            ("FC_AGENT_CPUS", "4".into()),
            ("FC_AGENT_RAM_MB", "2048".into()),
            ("FC_AGENT_STORAGE_GB", "20".into()),
            ("FC_AGENT_MAX_VMS", "4".into()),
            ("RUST_LOG", "info".into()),
            ("NO_COLOR", "1".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let mut host = Host {
            ns,
            _lab: lab,
            addr,
            dir,
            log,
            agent: None,
            cmd: env,
            bin,
        };
        host.spawn_agent();
        host
    }

    /// Starts (or restarts) the agent; its output is appended to the log.
    fn spawn_agent(&mut self) {
        if let Some(mut c) = self.agent.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .arg(&self.bin)
            .envs(self.cmd.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .unwrap();
        self.agent = Some(child);
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Lets this host's agent and `other`'s reach each other (a migration between them).
    fn route_to(&self, other: &Host) {
        assert!(
            self._lab.route_to(&other._lab),
            "routing {} <-> {}",
            self.ns,
            other.ns
        );
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// What the VM left behind on this host: QEMU processes naming its directory, taps,
    /// NAT and forward state in the agent's nftables table, files.
    fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        let marker = format!("{}/", self.dir.display());
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd);
            if cmd.contains("qemu-system") && cmd.contains(&marker) {
                left.push(format!("process {}", e.file_name().to_string_lossy()));
            }
        }
        for l in ns_output(&self.ns, &["ip", "-o", "link"]).lines() {
            if l.contains(": fv") {
                left.push(format!("device {l}"));
            }
        }
        let tag = fuse_hostagent::net::agent_tag(&self.dir);
        for vm in crate::hosts::nat_vm_ids(&self.ns, &tag) {
            left.push(format!("NAT of {vm}"));
        }
        if let Ok(rd) = std::fs::read_dir(self.dir.join("vms")) {
            for e in rd.flatten() {
                left.push(format!("file {}", e.path().display()));
            }
        }
        left
    }

    /// Registers it with the control plane once its `/healthz` answers; returns the health.
    async fn register(&self, fuse: &FuseProc, id: &str) -> Value {
        let http = reqwest::Client::new();
        let health = http
            .get(format!("{}/healthz", self.url()))
            .bearer_auth(TOKEN);
        let deadline = Instant::now() + Duration::from_secs(60);
        let health: Value = loop {
            if let Ok(r) = health.try_clone().unwrap().send().await {
                if r.status() == StatusCode::OK {
                    break r.json().await.unwrap();
                }
            }
            assert!(
                Instant::now() < deadline,
                "fc-agent never answered; log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let (s, b) = fuse
            .post(
                "/v1/hosts",
                json!({"id": id, "url": self.url(), "token": TOKEN, "region": "lab"}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        health
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(c) = self.agent.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // QEMU processes outlive fc-agent by design: kill those of this test's directory.
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
        // The agent's log stays for a failed test to be read.
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

async fn exec(fuse: &FuseProc, id: &str, shell: &str) -> Value {
    let (s, b) = fuse
        .post(
            &format!("/v1/environments/{id}?action=exec"),
            json!({"shell": shell}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "exec {shell}: {b}");
    b
}

/// A client for `fused`'s TLS endpoint that trusts exactly the VM's own certificate.
fn agent_client(vm_id: &str, cert_pem: &str, addr: std::net::SocketAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert_pem.as_bytes()).unwrap())
        .tls_built_in_root_certs(false)
        .resolve(vm_id, addr)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// A `fuse` process whose client waits long enough for a create that boots a guest twice
/// (the watchdog's retry) on a loaded machine.
fn spawn_patient_fuse(db: &str, extra: &[(&str, &str)]) -> FuseProc {
    let mut f = spawn_fuse(db, extra);
    f.http = reqwest::Client::builder()
        .timeout(Duration::from_secs(150))
        .build()
        .unwrap();
    f
}

/// One QEMU host (`fc-agent` index `i`) registered as `host_id` with a fresh `fuse` on a
/// fresh database, for one test at a time; `None` (the reason reported) when this machine
/// cannot run real guests. Dropped in field order: `fuse`, the host, the database, the
/// turn.
struct GuestLab {
    fuse: FuseProc,
    host: Host,
    /// The host's `/healthz` at registration.
    health: Value,
    assets: PathBuf,
    _db: fuse_testkit::TestDb,
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

impl GuestLab {
    async fn start(i: u8, host_id: &str, extra: &[(&str, &str)]) -> Option<GuestLab> {
        let assets = guest_assets()?;
        let turn = one_at_a_time().await;
        let admin = fuse_testkit::db::admin_url()?;
        let db = fuse_testkit::TestDb::create_at(&admin).await;
        let host = Host::start(i, &assets, &assets.join("rootfs.ext4"));
        let fuse = spawn_patient_fuse(&db, extra);
        fuse.ready().await;
        let health = host.register(&fuse, host_id).await;
        Some(GuestLab {
            fuse,
            host,
            health,
            assets,
            _db: db,
            _turn: turn,
        })
    }
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

#[tokio::test]
async fn real_guest_end_to_end_through_fuse_and_fc_agent_qemu() {
    let Some(lab) = GuestLab::start(1, "qemu-1", &[("FUSE_GC_PERIOD_SECS", "1")]).await else {
        return;
    };
    // Dropped in reverse: fuse first, then the host, then the database and the turn.
    let GuestLab {
        mut host,
        health,
        assets,
        fuse,
        ..
    } = lab;
    assert_eq!(health["backend"], "qemu", "{health}");
    let accel = health["acceleration"].as_str().unwrap_or("").to_owned();
    assert!(accel == "kvm" || accel == "tcg", "{health}");

    // Create with files, secrets, a manifest, a startup script and the fused agent.
    let manifest = json!({"name": "e2e", "tools": ["uname"]}).to_string();
    let t0 = Instant::now();
    let (s, env) = fuse
        .post(
            "/v1/environments",
            json!({
                "task_id": "rg-main",
                "spec": {"cpus": 1, "ram_mb": 256, "storage_gb": 1},
                "manifest_inline": b64(&manifest),
                "files": {"/data/hello.txt": b64("hello from the control plane\n")},
                "secrets": {"API_KEY": "sekret-value-42"},
                "startup_script": "echo started > /data/startup.txt"
            }),
        )
        .await;
    let first_create = t0.elapsed();
    assert_eq!(
        s,
        StatusCode::CREATED,
        "{env}\nagent log:\n{}",
        host.log_text()
    );
    assert_eq!(env["state"], "running", "{env}");
    let id = env["id"].as_str().unwrap().to_owned();

    // The guest's own kernel answers, not the host's.
    let release = std::fs::read_to_string(assets.join("kernel-release")).unwrap();
    let r = exec(&fuse, &id, "uname -r").await;
    assert_eq!(r["stdout"].as_str().unwrap().trim(), release.trim(), "{r}");
    let host_release =
        String::from_utf8(Command::new("uname").arg("-r").output().unwrap().stdout).unwrap();
    assert_ne!(
        release.trim(),
        host_release.trim(),
        "the guest kernel must differ from the host's"
    );
    // The root filesystem has the environment's storage_gb (1 GiB), not the image's size.
    let df = exec(&fuse, &id, "df -m / | tail -1").await;
    let size_mb: u64 = df["stdout"]
        .as_str()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(
        (900..=1024).contains(&size_mb),
        "root filesystem size: {df}"
    );
    // Uploaded files and the startup script's output are in the guest.
    assert_eq!(
        exec(&fuse, &id, "cat /data/hello.txt").await["stdout"],
        "hello from the control plane\n"
    );
    assert_eq!(
        exec(&fuse, &id, "cat /data/startup.txt").await["stdout"],
        "started\n"
    );
    assert_eq!(
        exec(&fuse, &id, "cat /fuse/manifest.json").await["stdout"],
        manifest
    );
    assert!(exec(&fuse, &id, "cat /fuse/secrets.json").await["stdout"]
        .as_str()
        .unwrap()
        .contains("sekret-value-42"));

    // fused answers through the host-port forward, over TLS with the VM's certificate.
    let url = env["url"].as_str().unwrap().to_owned();
    assert!(url.starts_with("https://"), "fused serves TLS: {url}");
    let addr: std::net::SocketAddr = url.trim_start_matches("https://").parse().unwrap();
    let cert = exec(&fuse, &id, "cat /fuse/tls.crt").await["stdout"]
        .as_str()
        .unwrap()
        .to_owned();
    let agent = agent_client(&id, &cert, addr);
    let base = format!("https://{id}:{}", addr.port());
    let mut health_ok = false;
    for _ in 0..100 {
        if let Ok(r) = agent.get(format!("{base}/health")).send().await {
            assert_eq!(r.status(), StatusCode::OK);
            assert_eq!(r.json::<Value>().await.unwrap()["status"], "ok");
            health_ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(health_ok, "fused /health never answered at {base}");
    let token = exec(&fuse, &id, "cat /fuse/token").await["stdout"]
        .as_str()
        .unwrap()
        .to_owned();
    let info = |t: String| {
        let (agent, base) = (agent.clone(), base.clone());
        async move {
            let r = agent
                .get(format!("{base}/v1/info"))
                .bearer_auth(t)
                .send()
                .await
                .unwrap();
            let s = r.status();
            (s, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (s, _) = info("wrong-token-wrong-token-wrong-token".into()).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, body) = info(token.clone()).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["vm_id"], id.as_str());
    assert_eq!(body["manifest"]["name"], "e2e");
    assert_eq!(body["secret_names"], json!(["API_KEY"]));
    assert_eq!(body["tls"], true);
    assert!(
        !body.to_string().contains("sekret-value-42"),
        "no secret values served"
    );

    // Rotate the token: the old one stops working, the new one works.
    let (s, b) = fuse
        .post(
            &format!("/v1/environments/{id}?action=rotate-token"),
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{b}");
    let new_token = exec(&fuse, &id, "cat /fuse/token").await["stdout"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(new_token, token);
    let new_cert = exec(&fuse, &id, "cat /fuse/tls.crt").await["stdout"]
        .as_str()
        .unwrap()
        .to_owned();
    let agent2 = agent_client(&id, &new_cert, addr);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ok = agent2.get(format!("{base}/health")).send().await.is_ok();
        if ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "fused did not come back after rotation"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (t, want) in [
        (token, StatusCode::UNAUTHORIZED),
        (new_token.clone(), StatusCode::OK),
    ] {
        let r = agent2
            .get(format!("{base}/v1/info"))
            .bearer_auth(t)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), want);
    }

    // Snapshot, delete a file, restore: the file is back (memory and disk).
    let (s, snap) = fuse
        .post(
            &format!("/v1/environments/{id}/snapshots"),
            json!({"comment": "before the delete"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{snap}");
    assert_eq!(snap["state"], "ready", "{snap}");
    assert_eq!(
        snap["mode"], "full",
        "QEMU snapshots hold memory and disk: {snap}"
    );
    let sid = snap["id"].as_str().unwrap().to_owned();
    let r = exec(&fuse, &id, "rm /data/hello.txt && ls /data").await;
    assert_eq!(r["stdout"], "startup.txt\n", "{r}");
    let (s, b) = fuse
        .post(&format!("/v1/snapshots/{sid}?action=restore"), json!({}))
        .await;
    assert_eq!(
        s,
        StatusCode::NO_CONTENT,
        "{b}\nagent log:\n{}",
        host.log_text()
    );
    assert_eq!(
        exec(&fuse, &id, "cat /data/hello.txt").await["stdout"],
        "hello from the control plane\n"
    );
    // The agent came back with the memory: it still answers with the current token.
    let r = agent2
        .get(format!("{base}/v1/info"))
        .bearer_auth(&new_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // List, delete; a second snapshot with a short retention is collected by the GC.
    let (_, list) = fuse.get(&format!("/v1/snapshots?vm_id={id}")).await;
    assert_eq!(list["snapshots"].as_array().unwrap().len(), 1, "{list}");
    // Snapshots live in the host's snapshot store, beyond their VM's life.
    let vm_snaps = host.dir.join("snapshots").join(&id);
    let count = |d: &std::path::Path| std::fs::read_dir(d).map(|r| r.count()).unwrap_or(0);
    assert_eq!(count(&vm_snaps), 1);
    let (s, _) = fuse.delete(&format!("/v1/snapshots/{sid}")).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(count(&vm_snaps), 0, "deleted on the host");
    let (s, snap2) = fuse
        .post(
            &format!("/v1/environments/{id}/snapshots"),
            json!({"retention_seconds": 1}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{snap2}");
    let sid2 = snap2["id"].as_str().unwrap().to_owned();
    eventually(
        "retention GC deletes the expired snapshot",
        Duration::from_secs(30),
        || async { fuse.get(&format!("/v1/snapshots/{sid2}")).await.0 == StatusCode::NOT_FOUND },
    )
    .await;
    assert_eq!(count(&vm_snaps), 0, "collected on the host");

    // fc-agent restarts (SIGKILL): the VM keeps running, is adopted, and its link reconnects.
    host.spawn_agent();
    eventually(
        "the restarted agent adopted the VM",
        Duration::from_secs(60),
        || async { host.log_text().contains("adopted=1") },
    )
    .await;
    assert_eq!(
        exec(&fuse, &id, "cat /data/hello.txt").await["stdout"],
        "hello from the control plane\n"
    );

    // Drain stops fused: SIGTERM from the profile's drain command, exit 0, not restarted.
    let (s, d) = fuse
        .post(&format!("/v1/environments/{id}?action=drain"), json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{d}");
    assert_eq!(d["state"], "draining", "{d}");
    assert_eq!(d["error"], "", "{d}");
    eventually("fused exits", Duration::from_secs(10), || async {
        exec(&fuse, &id, "pidof fused").await["exit_code"] == 1
    })
    .await;
    let log = exec(&fuse, &id, "cat /var/log/fuse-agent.log").await;
    assert!(
        log["stdout"]
            .as_str()
            .unwrap()
            .contains("SIGTERM received; exiting 0"),
        "{log}"
    );
    // An absence over time cannot be waited for: watch a window longer than the
    // supervisor's restart back-off (a crashed agent is restarted within it).
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        exec(&fuse, &id, "pidof fused").await["exit_code"],
        1,
        "a drained agent is not restarted"
    );
    assert!(agent2.get(format!("{base}/health")).send().await.is_err());

    // Fork (from draining): a new VM whose disk is the source's, with its own identity.
    let (s, fork) = fuse
        .post(
            &format!("/v1/environments/{id}?action=fork"),
            json!({"comment": "fork in a real guest"}),
        )
        .await;
    assert_eq!(
        s,
        StatusCode::CREATED,
        "{fork}\nagent log:\n{}",
        host.log_text()
    );
    let fork_id = fork["id"].as_str().unwrap().to_owned();
    assert_eq!(fork["state"], "running", "{fork}");
    assert_eq!(
        exec(&fuse, &fork_id, "cat /data/hello.txt").await["stdout"],
        "hello from the control plane\n",
        "the fork starts from the source's disk"
    );
    let ip = |e: &str| {
        let fuse = &fuse;
        let e = e.to_owned();
        async move { exec(fuse, &e, "ip -4 -o addr show scope global").await["stdout"].clone() }
    };
    assert_ne!(ip(&fork_id).await, ip(&id).await, "its own address");
    assert_eq!(
        exec(&fuse, &fork_id, "echo only-in-fork > /data/f.txt").await["exit_code"],
        0
    );
    assert_eq!(
        exec(&fuse, &id, "test -e /data/f.txt").await["exit_code"],
        1,
        "the disks are separate afterwards"
    );
    let (s, _) = fuse.delete(&format!("/v1/environments/{fork_id}")).await;
    assert_eq!(s, StatusCode::NO_CONTENT);

    // Timings: a few more creates through the whole chain (create → running), and the
    // agent's boot → guest-helper-ready figure of each boot.
    let mut creates = vec![first_create.as_millis() as u64];
    for n in 0..2 {
        let t = Instant::now();
        let (s, e) = fuse
            .post(
                "/v1/environments",
                json!({"task_id": format!("rg-time-{n}"), "spec": {"cpus": 1, "ram_mb": 256, "storage_gb": 1},
                       "healthcheck": {"exec": ["test", "-d", "/proc/1"], "interval_seconds": 1, "timeout_seconds": 1},
                       "expose": [{"port": 8443, "as": "agent-tls"}]}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{e}");
        creates.push(t.elapsed().as_millis() as u64);
        // The host ran the probe in the guest and held the create until it passed.
        assert_eq!(e["health"]["state"], "passing", "{e}");
        // The raw forward on the host (`url` is the ports proxy's).
        let url = e["endpoints"][0]["forward_url"].as_str().unwrap_or("");
        assert!(
            url.starts_with("tcp://") && e["endpoints"][0]["port"] == 8443,
            "{e}"
        );
        let (s, _) = fuse
            .delete(&format!("/v1/environments/fuse-rg-time-{n}"))
            .await;
        assert_eq!(s, StatusCode::NO_CONTENT);
    }
    let ready: Vec<u64> = host
        .log_text()
        .lines()
        .filter_map(|l| l.split("ready_ms=").nth(1))
        .filter_map(|r| r.split_whitespace().next()?.parse().ok())
        .collect();
    eprintln!(
        "FIGURES qemu/{accel}: boot→fuse-guest ready {ready:?} ms (median {}), create→running {creates:?} ms (median {})",
        median(ready.clone()),
        median(creates.clone())
    );

    // Destroy leaves nothing behind: no process, tap, NAT rule or file.
    let (s, _) = fuse.delete(&format!("/v1/environments/{id}")).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (_, e) = fuse.get(&format!("/v1/environments/{id}")).await;
    assert_eq!(e["state"], "destroyed", "{e}");
    assert_eq!(host.leftovers(), Vec::<String>::new());
    let (_, h) = fuse.get("/v1/hosts/qemu-1").await;
    assert_eq!(h["allocated"]["vm_count"], 0, "{h}");
}

#[tokio::test]
async fn a_guest_that_never_boots_fails_clearly_and_leaves_nothing() {
    let Some(assets) = guest_assets() else { return };
    let _serial = one_at_a_time().await;
    let Some(admin) = fuse_testkit::db::admin_url() else {
        return;
    };
    let db = fuse_testkit::TestDb::create_at(&admin).await;
    // A root disk that is not a filesystem at all.
    let broken = std::env::temp_dir().join(format!("fuse-broken-{}.ext4", std::process::id()));
    std::fs::write(&broken, vec![0u8; 4 << 20]).unwrap();
    let host = Host::start(2, &assets, &broken);
    let fuse = spawn_patient_fuse(&db, &[]);
    fuse.ready().await;
    host.register(&fuse, "broken-1").await;
    let (s, env) = fuse
        .post(
            "/v1/environments",
            json!({"task_id": "rg-broken", "spec": {"cpus": 1, "ram_mb": 256, "storage_gb": 1}}),
        )
        .await;
    // The create waits for the end of provisioning and answers with the environment.
    assert_eq!(s, StatusCode::CREATED, "{env}");
    assert_eq!(env["state"], "failed", "{env}");
    let (_, e) = fuse.get("/v1/environments/fuse-rg-broken").await;
    assert_eq!(e["state"], "failed", "{e}");
    let error = e["error"].as_str().unwrap_or("");
    assert!(
        error.contains("cannot mount the root disk"),
        "the error says why: {error}"
    );
    assert_eq!(host.leftovers(), Vec::<String>::new());
    let (_, h) = fuse.get("/v1/hosts/broken-1").await;
    assert_eq!(h["allocated"]["vm_count"], 0, "{h}");
    let _ = std::fs::remove_file(broken);
}

#[tokio::test]
async fn a_silent_guest_is_booted_again_once_by_the_watchdog_then_fails() {
    let Some(assets) = guest_assets() else { return };
    let _serial = one_at_a_time().await;
    let Some(admin) = fuse_testkit::db::admin_url() else {
        return;
    };
    let db = fuse_testkit::TestDb::create_at(&admin).await;
    // A good image whose guest helper never starts: the guest boots and stays up, silent.
    let silent = std::env::temp_dir().join(format!("fuse-silent-{}.ext4", std::process::id()));
    std::fs::copy(assets.join("rootfs.ext4"), &silent).unwrap();
    run_ok(
        Command::new("debugfs")
            .args(["-w", "-R", "rm /usr/local/sbin/fuse-guest-start"])
            .arg(&silent),
    )
    .unwrap();
    let host = Host::start_with(3, &assets, &silent, &[("FC_AGENT_BOOT_WATCHDOG_SECS", "6")]);
    let fuse = spawn_patient_fuse(&db, &[]);
    fuse.ready().await;
    host.register(&fuse, "silent-1").await;
    let t = Instant::now();
    let (s, env) = fuse
        .post(
            "/v1/environments",
            json!({"task_id": "rg-silent", "spec": {"cpus": 1, "ram_mb": 256, "storage_gb": 1}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{env}");
    assert_eq!(env["state"], "failed", "{env}");
    let error = env["error"].as_str().unwrap_or("");
    assert!(
        error.contains("never answered within 6 s (2 boot attempts)"),
        "{error}"
    );
    assert!(
        t.elapsed() >= Duration::from_secs(12),
        "two full watchdog periods"
    );
    assert!(
        host.log_text().contains("booting it again"),
        "the watchdog retried:\n{}",
        host.log_text()
    );
    assert_eq!(host.leftovers(), Vec::<String>::new());
    let _ = std::fs::remove_file(silent);
}

/// The runtime surface on a real guest (virtio-serial link): a 50 MB binary file up and
/// down with matching SHA-256 (the throughput printed), a streamed exec whose first chunk
/// arrives while the command still runs, and a PTY session that answers `tty` and
/// `stty size` after a resize.
#[tokio::test]
async fn real_guest_runtime_io_files_stream_and_terminal_qemu() {
    use sha2::Digest as _;
    let Some(lab) = GuestLab::start(3, "qemu-rt", &[]).await else {
        return;
    };
    // Dropped in reverse: fuse first, then the host, then the database and the turn.
    let GuestLab { host, fuse, .. } = lab;
    let (s, env) = fuse
        .post(
            "/v1/environments",
            json!({"task_id": "rg-rt", "spec": {"cpus": 1, "ram_mb": 256, "storage_gb": 1}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{env}\n{}", host.log_text());
    assert_eq!(env["state"], "running", "{env}");
    let id = env["id"].as_str().unwrap().to_owned();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()
        .unwrap();

    // 50 MB of binary noise up and down.
    let data = fuse_testkit::runtime::noise(50_000_000);
    let sum = hex::encode(sha2::Sha256::digest(&data));
    let files = format!("{}/v1/environments/{id}/files", fuse.base);
    let t = Instant::now();
    let r = http
        .put(format!("{files}?path=/data/blob.bin&sha256={sum}"))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    let up = t.elapsed();
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    let w: Value = r.json().await.unwrap();
    assert_eq!(w["sha256"], sum.as_str());
    let t = Instant::now();
    let r = http
        .get(format!("{files}?path=/data/blob.bin"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-fuse-sha256"], sum.as_str());
    let back = r.bytes().await.unwrap();
    let down = t.elapsed();
    assert_eq!(back.len(), data.len());
    assert_eq!(hex::encode(sha2::Sha256::digest(&back)), sum);
    // The guest's own tool agrees.
    let r = exec(&fuse, &id, "sha256sum /data/blob.bin").await;
    assert!(r["stdout"].as_str().unwrap().starts_with(&sum), "{r}");
    println!(
        "real guest files: 50 MB up {:.1} MB/s ({up:?}), down {:.1} MB/s ({down:?})",
        50.0 / up.as_secs_f64(),
        50.0 / down.as_secs_f64()
    );

    // A streamed exec: the first chunk before the command ends.
    let t = Instant::now();
    let mut r = http
        .post(format!(
            "{}/v1/environments/{id}?action=exec&stream=true",
            fuse.base
        ))
        .json(&json!({"shell": "echo first; sleep 3; echo second"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let first = r.chunk().await.unwrap().unwrap();
    let at = t.elapsed();
    assert!(
        String::from_utf8_lossy(&first).contains("event: stdout"),
        "{first:?}"
    );
    assert!(at < Duration::from_millis(2500), "first chunk after {at:?}");
    let mut rest = String::new();
    while let Some(c) = r.chunk().await.unwrap() {
        rest.push_str(&String::from_utf8_lossy(&c));
    }
    assert!(t.elapsed() >= Duration::from_secs(3));
    assert!(
        rest.contains("event: exit\ndata: {\"exit_code\":0}"),
        "{rest}"
    );
    println!("real guest streamed exec: first chunk after {at:?}");

    // A terminal: a real PTY in the guest, resized.
    let ws = format!(
        "ws://{}/v1/environments/{id}/attach?cols=80&rows=24",
        fuse.base.trim_start_matches("http://")
    );
    let limit = Duration::from_secs(30);
    let t =
        fuse_testkit::runtime::terminal(&ws, None, (100, 40), b"stty size; tty; exit 3\n", limit)
            .await;
    assert_eq!(t.end["exit_code"], 3, "{}", t.screen);
    assert!(t.screen.contains("40 100"), "{}", t.screen);
    assert!(t.screen.contains("/dev/pts/"), "{}", t.screen);

    let (s, _) = fuse.delete(&format!("/v1/environments/{id}")).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
}

/// The ports proxy to a real guest: busybox `httpd` started in a QEMU guest (by the startup
/// script, and a second one by exec on a port published at runtime) answers through the
/// path-based and the host-based URL: a static page, a 3 MiB file whose SHA-256 matches
/// the guest's own, and a CGI script that sees the rewritten path and the proxy's
/// `X-Forwarded-Prefix`; a published port nothing listens on is a 502, an unpublished one a
/// 404. Prints the proxy's round trip (p50 of 20 GETs).
#[tokio::test]
async fn a_server_in_a_qemu_guest_answers_through_the_ports_proxy() {
    let Some(lab) = GuestLab::start(
        4,
        "qemu-ports",
        &[("FUSE_PROXY_DOMAIN", "guests.fuse.test")],
    )
    .await
    else {
        return;
    };
    // Dropped in reverse: fuse first, then the host, then the database and the turn.
    let GuestLab { host, fuse, .. } = lab;
    let cgi = "#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\n'\n\
               echo \"uri=$REQUEST_URI\"\necho \"prefix=$HTTP_X_FORWARDED_PREFIX\"\n";
    let (s, env) = fuse
        .post(
            "/v1/environments",
            json!({
                "task_id": "rg-ports",
                "spec": {"cpus": 1, "ram_mb": 256, "storage_gb": 1},
                "files": {"/www/index.html": b64("hello from the guest\n"),
                          "/www/cgi-bin/echo": b64(cgi)},
                "startup_script": "chmod 0755 /www/cgi-bin/echo && \
                    dd if=/dev/urandom of=/www/blob.bin bs=1024 count=3072 2>/dev/null && \
                    httpd -p 8080 -h /www",
                "expose": [{"port": 8080, "as": "web"}],
                "healthcheck": {"http": {"port": 8080, "path": "/"}},
            }),
        )
        .await;
    assert_eq!(
        s,
        StatusCode::CREATED,
        "{env}\nagent log:\n{}",
        host.log_text()
    );
    assert_eq!(env["state"], "running", "{env}");
    let id = env["id"].as_str().unwrap().to_owned();
    let ep = &env["endpoints"][0];
    let path_url = ep["proxy_url"].as_str().unwrap().to_owned();
    assert_eq!(
        path_url,
        format!("/v1/environments/{id}/ports/8080/"),
        "{env}"
    );
    let host_name = format!("8080-{id}.guests.fuse.test");
    assert!(
        ep["host_url"].as_str().unwrap().contains(&host_name),
        "{env}"
    );
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let url = format!("{}{path_url}", fuse.base);

    let r = http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().await.unwrap(), "hello from the guest\n");
    // The file comes down whole, as the guest has it.
    let r = http.get(format!("{url}blob.bin")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let blob = r.bytes().await.unwrap();
    assert_eq!(blob.len(), 3 << 20);
    let theirs = exec(&fuse, &id, "sha256sum /www/blob.bin").await;
    let ours = {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(&blob))
    };
    assert!(
        theirs["stdout"].as_str().unwrap().starts_with(&ours),
        "{theirs} vs {ours}"
    );
    // The guest's server sees its own path and the proxy's prefix.
    let r = http
        .get(format!("{url}cgi-bin/echo?x=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let text = r.text().await.unwrap();
    assert!(text.contains("uri=/cgi-bin/echo?x=1"), "{text}");
    assert!(
        text.contains(&format!("prefix=/v1/environments/{id}/ports/8080")),
        "{text}"
    );
    // By name: the same server, its path unchanged.
    let r = http
        .get(format!("{}/index.html", fuse.base))
        .header("host", &host_name)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().await.unwrap(), "hello from the guest\n");

    // The proxy's round trip to the guest (one tunnel per request).
    let mut ms = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let r = http.get(&url).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        r.bytes().await.unwrap();
        ms.push(t.elapsed().as_micros() as u64);
    }
    println!(
        "ports proxy to a qemu guest: GET p50 {:.1} ms, max {:.1} ms (20 requests)",
        median(ms.clone()) as f64 / 1000.0,
        *ms.iter().max().unwrap() as f64 / 1000.0
    );

    // A second server on a port published at runtime.
    exec(&fuse, &id, "httpd -p 8081 -h /www").await;
    let (s, e) = fuse
        .post(
            &format!("/v1/environments/{id}?action=expose"),
            json!({"port": 8081, "as": "second"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{e}");
    let r = http
        .get(format!(
            "{}/v1/environments/{id}/ports/8081/index.html",
            fuse.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().await.unwrap(), "hello from the guest\n");
    // Unpublished: 404; published with nothing listening: 502.
    let (s, _) = fuse
        .get(&format!("/v1/environments/{id}/ports/9999/"))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = fuse
        .post(
            &format!("/v1/environments/{id}?action=expose"),
            json!({"port": 9999}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, e) = fuse
        .get(&format!("/v1/environments/{id}/ports/9999/"))
        .await;
    assert_eq!(s, StatusCode::BAD_GATEWAY, "{e}");
    assert_eq!(e["error"]["details"]["reason"], "guest_refused", "{e}");

    let (s, _) = fuse.delete(&format!("/v1/environments/{id}")).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(host.leftovers(), Vec::<String>::new());
}

/// The egress test's world, in a Python process inside its own namespace: an HTTP server on
/// 8080 of each address in argv[3:] (answering `hello <its address>`), and a DNS server on
/// argv[1]:53 answering A records of the JSON map argv[2] (TTL 60), NXDOMAIN otherwise.
const WORLD: &str = r#"
import json, socket, struct, sys, threading
names = json.loads(sys.argv[2])
def http(addr):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, 8080))
    s.listen()
    while True:
        c, _ = s.accept()
        try:
            c.recv(4096)
            c.sendall(("HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nhello %s\n" % addr).encode())
        finally:
            c.close()
for a in sys.argv[3:]:
    threading.Thread(target=http, args=(a,), daemon=True).start()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind((sys.argv[1], 53))
while True:
    q, frm = u.recvfrom(4096)
    i, labels = 12, []
    while q[i]:
        labels.append(q[i + 1:i + 1 + q[i]].decode())
        i += q[i] + 1
    qtype = struct.unpack(">H", q[i + 1:i + 3])[0]
    question = q[12:i + 5]
    ip = names.get(".".join(labels).lower())
    if ip is None:
        r = q[:2] + struct.pack(">HHHHH", 0x8183, 1, 0, 0, 0) + question
    elif qtype != 1:
        r = q[:2] + struct.pack(">HHHHH", 0x8180, 1, 0, 0, 0) + question
    else:
        r = q[:2] + struct.pack(">HHHHH", 0x8180, 1, 1, 0, 0) + question
        r += struct.pack(">HHHIH", 0xC00C, 1, 1, 60, 4) + socket.inet_aton(ip)
    u.sendto(r, frm)
"#;

/// A namespace linked to a host's namespace on a /24 (the host's side `.1`), with the
/// world's servers running in it; all removed on drop.
struct EgressWorld {
    ns: String,
    net: String,
    servers: Child,
}

impl EgressWorld {
    fn addr(&self, last: u8) -> String {
        format!("{}{last}", self.net)
    }

    fn start(host_ns: &str, net: &str, names: &[(&str, u8)]) -> EgressWorld {
        let pid = std::process::id() % 100_000;
        let ns = format!("fuse-rgw-{pid}");
        let veth = format!("frgw{pid}");
        let peer = format!("{veth}p");
        let ip = |args: &[&str]| {
            run_ok(Command::new("ip").args(args)).unwrap_or_else(|e| panic!("ip {args:?}: {e}"))
        };
        let _ = Command::new("ip")
            .args(["netns", "del", &ns])
            .stderr(Stdio::null())
            .status();
        ip(&["netns", "add", &ns]);
        ip(&["link", "add", &veth, "type", "veth", "peer", "name", &peer]);
        ip(&["link", "set", &veth, "netns", host_ns]);
        ip(&["link", "set", &peer, "netns", &ns]);
        ip(&[
            "-n",
            host_ns,
            "addr",
            "add",
            &format!("{net}1/24"),
            "dev",
            &veth,
        ]);
        ip(&["-n", host_ns, "link", "set", &veth, "up"]);
        let lasts = [2u8, 3, 4, 5, 53];
        for last in lasts {
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{net}{last}/24"),
                "dev",
                &peer,
            ]);
        }
        ip(&["-n", &ns, "addr", "add", "169.254.169.254/32", "dev", &peer]);
        ip(&["-n", &ns, "link", "set", &peer, "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            host_ns,
            "route",
            "add",
            "169.254.169.254/32",
            "via",
            &format!("{net}2"),
        ]);
        let map: serde_json::Map<String, Value> = names
            .iter()
            .map(|(n, last)| ((*n).to_owned(), Value::from(format!("{net}{last}"))))
            .collect();
        let mut http: Vec<String> = lasts[..4].iter().map(|l| format!("{net}{l}")).collect();
        http.push("169.254.169.254".into());
        let servers = Command::new("ip")
            .args(["netns", "exec", &ns, "python3", "-c", WORLD])
            .arg(format!("{net}53"))
            .arg(Value::Object(map).to_string())
            .args(&http)
            .stdout(Stdio::null())
            .spawn()
            .expect("python3 for the world's servers");
        EgressWorld {
            ns,
            net: net.to_owned(),
            servers,
        }
    }
}

impl Drop for EgressWorld {
    fn drop(&mut self) {
        let _ = self.servers.kill();
        let _ = self.servers.wait();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

/// Egress rules on a real guest (issue 12): an allowlist lets one name through and refuses
/// another name and an address it does not list, whatever DNS server the guest asks; an
/// allowed name whose address is in a denied CIDR stays closed; the metadata address is
/// closed; a live `PUT …/egress` opens the world; destroy leaves nothing.
#[tokio::test]
async fn real_guest_egress_allowlist_by_name_and_cidr() {
    let Some(assets) = guest_assets() else { return };
    let _serial = one_at_a_time().await;
    let Some(admin) = fuse_testkit::db::admin_url() else {
        return;
    };
    let db = fuse_testkit::TestDb::create_at(&admin).await;
    let pid = std::process::id() % 100_000;
    let net = format!("10.254.{}.", 10 + pid % 200);
    let upstream = format!("{net}53");
    let host = Host::start_with(
        3,
        &assets,
        &assets.join("rootfs.ext4"),
        &[("FC_AGENT_DNS_UPSTREAM", &upstream)],
    );
    let world = EgressWorld::start(
        &host.ns,
        &net,
        &[("allowed.test", 2), ("other.test", 3), ("bad.wild.test", 5)],
    );
    let fuse = spawn_patient_fuse(&db, &[]);
    fuse.ready().await;
    let health = host.register(&fuse, "qemu-eg").await;
    assert!(
        health["features"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "egress"),
        "{health}"
    );
    let (s, env) = fuse
        .post(
            "/v1/environments",
            json!({"task_id": "rg-egress", "spec": {"cpus": 1, "ram_mb": 256, "storage_gb": 1},
                   "egress": {"mode": "allowlist", "allow": ["allowed.test", "*.wild.test"],
                              "deny": [format!("{}/32", world.addr(5))]}}),
        )
        .await;
    assert_eq!(
        s,
        StatusCode::CREATED,
        "{env}\nagent log:\n{}",
        host.log_text()
    );
    assert_eq!(env["state"], "running", "{env}");
    assert_eq!(env["egress"]["mode"], "allowlist", "{env}");
    let id = env["id"].as_str().unwrap().to_owned();
    let sh = |cmd: String| {
        let fuse = &fuse;
        let id = id.clone();
        async move {
            let r = exec(fuse, &id, &cmd).await;
            (
                r["exit_code"].as_i64().unwrap_or(-1),
                format!(
                    "{}{}",
                    r["stdout"].as_str().unwrap_or(""),
                    r["stderr"].as_str().unwrap_or("")
                ),
            )
        }
    };
    // Busybox's nc (its static wget cannot be trusted with addresses here); a failed
    // connection is a non-zero exit.
    let get = |addr: String| {
        sh(format!(
            "out=$(printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {addr} 8080) && echo \"$out\" | tail -1"
        ))
    };
    // 192.0.2.1 runs no resolver: the guest's DNS goes to the host's whatever it asks. A
    // lookup expected to find `addr` is asked again (up to three times) when it does not:
    // DNS over UDP may lose a datagram on a loaded machine, and a guest's resolver retries.
    let lookup = |name: &'static str, addr: Option<String>| {
        let sh = &sh;
        async move {
            let mut last = (0, String::new());
            for _ in 0..3 {
                last = sh(format!("nslookup {name} 192.0.2.1")).await;
                match &addr {
                    Some(a) if last.0 == 0 && last.1.contains(a.as_str()) => return last,
                    Some(_) => continue,
                    None => return last,
                }
            }
            last
        }
    };

    // The allowed name resolves, and its address opens.
    let (code, out) = lookup("allowed.test", Some(world.addr(2))).await;
    assert!(code == 0 && out.contains(&world.addr(2)), "{code}: {out}");
    let (code, out) = get(world.addr(2)).await;
    assert_eq!(
        (code, out.trim()),
        (0, format!("hello {}", world.addr(2)).as_str())
    );
    // Another name is refused, and its address (listed nowhere) stays closed.
    let (code, out) = lookup("other.test", None).await;
    assert!(code != 0 || !out.contains(&world.addr(3)), "{code}: {out}");
    let (code, out) = get(world.addr(3)).await;
    assert_ne!(code, 0, "{out}");
    // A name the wildcard allows, at an address in a denied CIDR: resolved, still closed.
    let (code, out) = lookup("bad.wild.test", Some(world.addr(5))).await;
    assert!(code == 0 && out.contains(&world.addr(5)), "{code}: {out}");
    assert_ne!(get(world.addr(5)).await.0, 0);
    // Never the metadata address.
    assert_ne!(get("169.254.169.254".into()).await.0, 0);

    // Live: allow-all less the denied CIDR; the other address opens, the CIDR stays shut.
    let (s, e) = fuse
        .req(
            reqwest::Method::PUT,
            &format!("/v1/environments/{id}/egress"),
            Some(json!({"mode": "allow-all", "deny": [format!("{}/32", world.addr(5))]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{e}");
    assert_eq!(e["egress"]["mode"], "allow-all", "{e}");
    let (code, out) = get(world.addr(3)).await;
    assert_eq!(
        (code, out.trim()),
        (0, format!("hello {}", world.addr(3)).as_str())
    );
    assert_ne!(get(world.addr(5)).await.0, 0);
    assert_ne!(get("169.254.169.254".into()).await.0, 0);

    let (s, _) = fuse.delete(&format!("/v1/environments/{id}")).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(host.leftovers(), Vec::<String>::new());
    let egress = ns_output(
        &host.ns,
        &[
            "nft",
            "list",
            "table",
            "inet",
            &format!("fuse_{}_egress", fuse_hostagent::net::agent_tag(&host.dir)),
        ],
    );
    assert!(
        egress.contains("chain forward") && !egress.contains(&id),
        "{egress}"
    );
    drop(world);
}

/// A custom agent for a real guest, fetched by `agent.download_url` from a web server on the
/// host (the test's side of the host's link): busybox's `httpd` on its `listen` port, so
/// the create is `running` only once that port answers; it exits 0 on SIGTERM (a drain).
const CUSTOM_AGENT: &str = "#!/bin/sh
echo \"custom agent from the host, pid $$\"
echo \"token $FUSE_AUTH_TOKEN\"
mkdir -p /srv/agent
echo custom-agent-page > /srv/agent/index.html
httpd -f -v -p 8080 -h /srv/agent &
pid=$!
trap 'kill $pid; exit 0' TERM
wait $pid
";

#[tokio::test]
async fn a_real_guest_runs_a_custom_agent_fetched_from_the_host_and_serves_its_logs() {
    let Some(lab) = GuestLab::start(0, "qemu-agent", &[]).await else {
        return;
    };
    // Dropped in reverse: fuse first, then the host, then the database and the turn.
    let GuestLab { host, fuse, .. } = lab;
    // The agent on a web server here, on the root side (`.1`) of the host's link; the
    // guest reaches it through the host's NAT.
    let site = std::env::temp_dir().join(format!("fuse-rg-site-{}", std::process::id()));
    std::fs::create_dir_all(&site).unwrap();
    std::fs::write(site.join("agent.sh"), CUSTOM_AGENT).unwrap();
    let l = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _server = Kill(
        Command::new("python3")
            .args(["-m", "http.server", &port.to_string(), "--bind", "0.0.0.0"])
            .current_dir(&site)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 serves the agent"),
    );
    let net = host.addr.rsplit_once(".2:").unwrap().0.to_owned();
    let url = format!("http://{net}.1:{port}/agent.sh");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the web server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let digest: String = {
        use sha2::Digest;
        sha2::Sha256::digest(CUSTOM_AGENT.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let t = Instant::now();
    let (s, env) = fuse
        .post(
            "/v1/environments",
            json!({
                "task_id": "rg-agent",
                "spec": {"cpus": 1, "ram_mb": 256, "storage_gb": 1},
                "secrets": {"API_KEY": "rg-secret-value-77"},
                "startup_script": "echo startup in the guest; cat /fuse/secrets.json",
                "agent": {"download_url": url, "binary_path": "/usr/local/bin/fused",
                          "sha256": digest, "command": "exec /usr/local/bin/fused",
                          "listen": "0.0.0.0:8080",
                          "drain_command": "pkill -TERM -f 'sh /usr/local/bin/fused'",
                          "start_window_ms": 60000}
            }),
        )
        .await;
    assert_eq!(
        s,
        StatusCode::CREATED,
        "{env}\nagent log:\n{}",
        host.log_text()
    );
    assert_eq!(env["state"], "running", "{env}");
    eprintln!(
        "real guest create with a downloaded agent: {:?}",
        t.elapsed()
    );
    // The baked fused was replaced by the download, and what runs is the custom agent.
    let r = exec(&fuse, "fuse-rg-agent", "sha256sum /usr/local/bin/fused").await;
    assert!(r["stdout"].as_str().unwrap().starts_with(&digest), "{r}");
    // Running means its port answers: through the host's forward, from here.
    let page = reqwest::get(env["url"].as_str().unwrap())
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(page, "custom-agent-page\n");
    // Its logs: the agent's words (token redacted), the startup script's, the console's.
    let logs = |q: &str| {
        let q = q.to_owned();
        let http = fuse.http.clone();
        let base = fuse.base.clone();
        async move {
            let r = http
                .get(format!("{base}/v1/environments/fuse-rg-agent/logs?{q}"))
                .send()
                .await
                .unwrap();
            (r.status(), r.text().await.unwrap())
        }
    };
    let (s, text) = logs("source=agent&tail=20").await;
    assert_eq!(s, StatusCode::OK, "{text}");
    assert!(text.contains("custom agent from the host"), "{text}");
    assert!(text.contains("token [redacted]"), "{text}");
    let (_, text) = logs("source=startup").await;
    assert!(text.contains("startup in the guest"), "{text}");
    assert!(
        text.contains("[redacted]") && !text.contains("rg-secret-value-77"),
        "{text}"
    );
    let (s, text) = logs("source=console&tail=50").await;
    assert_eq!(s, StatusCode::OK);
    assert!(!text.is_empty(), "the serial console has the boot");
    // Drained with the image's own pkill -f.
    let (s, d) = fuse
        .post("/v1/environments/fuse-rg-agent?action=drain", json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{d}");
    let (_, e) = fuse.get("/v1/environments/fuse-rg-agent").await;
    assert_eq!(e["state"], "draining", "{e}");
    assert_eq!(e["error"], "", "the drain command worked: {e}");
    // The agent's trap stops its server (asynchronously: wait for it).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = exec(
            &fuse,
            "fuse-rg-agent",
            "pgrep -l -f '^httpd -f' || echo none",
        )
        .await;
        if r["stdout"].as_str().unwrap().trim() == "none" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the agent's server still runs: {r}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (_, text) = logs("source=agent").await;
    assert_eq!(
        text.matches("custom agent from the host").count(),
        1,
        "drained (exit 0), not restarted: {text}"
    );
    let (s, _) = fuse.delete("/v1/environments/fuse-rg-agent").await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let _ = std::fs::remove_dir_all(site);
}

/// What one guest says about who it is.
async fn identity(fuse: &FuseProc, id: &str) -> (String, String, String, String, String) {
    let r = exec(
        fuse,
        id,
        "hostname; ip -4 -o addr show eth0 | awk '{print $4}'; cat /sys/class/net/eth0/address; \
         cat /proc/sys/kernel/random/boot_id; head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'",
    )
    .await;
    let out = r["stdout"].as_str().unwrap_or("").to_owned();
    let mut l = out.lines().map(str::to_owned);
    let mut next = || l.next().unwrap_or_default();
    (next(), next(), next(), next(), next())
}

/// Issue 13 on real guests (QEMU, TCG here): a template restored into two new VMs gives each
/// its own identity (hostname, address, MAC, token, boot_id, random bytes); pause → resume
/// keeps a running process and what it holds in memory (a tmpfs file); a migration between
/// two `fc-agent` processes keeps a file and a running process; a migration whose target
/// agent is killed mid-transfer ends with the environment running at its source and nothing
/// left on the target.
#[tokio::test]
async fn real_guests_templates_pause_resume_and_migration_qemu() {
    let Some(lab) = GuestLab::start(2, "qemu-a", &[("FUSE_ORPHAN_GRACE_SECS", "5")]).await else {
        return;
    };
    let GuestLab {
        host: a,
        assets,
        fuse,
        ..
    } = lab;
    let mut b = Host::start(3, &assets, &assets.join("rootfs.ext4"));
    a.route_to(&b);
    b.register(&fuse, "qemu-b").await;

    // The template's source: a cold boot on qemu-a (nothing reads its boot_id first).
    let t = Instant::now();
    let (s, src) = fuse
        .post(
            "/v1/environments",
            json!({"task_id": "rg-tsrc", "spec": {"cpus": 1, "ram_mb": 256, "host_id": "qemu-a"}}),
        )
        .await;
    assert_eq!(
        (s, src["state"].as_str()),
        (StatusCode::CREATED, Some("running")),
        "{src}"
    );
    let cold_ms = t.elapsed().as_millis();
    let t = Instant::now();
    let (s, tpl) = fuse
        .post(
            "/v1/templates",
            json!({"name": "rg", "from_environment": "fuse-rg-tsrc"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{tpl}");
    assert_eq!(tpl["state"], "ready", "{tpl}");
    let snap_ms = t.elapsed().as_millis();

    // Two environments from it: each its own identity.
    let mut made = Vec::new();
    let mut tpl_ms = Vec::new();
    for task in ["rg-t1", "rg-t2"] {
        let t = Instant::now();
        let (s, e) = fuse
            .post(
                "/v1/environments",
                json!({"task_id": task, "template": "rg"}),
            )
            .await;
        assert_eq!(
            (s, e["state"].as_str()),
            (StatusCode::CREATED, Some("running")),
            "{e}"
        );
        tpl_ms.push(t.elapsed().as_millis());
        made.push(e["id"].as_str().unwrap().to_owned());
    }
    let i1 = identity(&fuse, &made[0]).await;
    let i2 = identity(&fuse, &made[1]).await;
    eprintln!("identities: {i1:?} / {i2:?}");
    assert_eq!(i1.0, made[0], "hostname is the VM id");
    assert_eq!(i2.0, made[1]);
    assert!(
        !i1.1.is_empty() && i1.1 != i2.1,
        "addresses {} / {}",
        i1.1,
        i2.1
    );
    assert!(!i1.2.is_empty() && i1.2 != i2.2, "MACs {} / {}", i1.2, i2.2);
    assert!(
        i1.3.len() == 36 && i1.3 != i2.3,
        "boot_ids {} / {}",
        i1.3,
        i2.3
    );
    assert!(
        i1.4.len() == 32 && i1.4 != i2.4,
        "random bytes {} / {}",
        i1.4,
        i2.4
    );
    let tok = |id: String| {
        let f = &fuse;
        async move {
            exec(f, &id, "cat /fuse/token").await["stdout"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        }
    };
    let (k1, k2) = (tok(made[0].clone()).await, tok(made[1].clone()).await);
    assert!(k1.len() >= 32 && k1 != k2, "agent tokens differ");
    eprintln!("cold {cold_ms} ms, live snapshot {snap_ms} ms, from the template {tpl_ms:?} ms");

    // Pause → resume keeps a running process and its memory (a tmpfs file).
    let id = made[0].clone();
    let pid = exec(
        &fuse,
        &id,
        "mkdir -p /dev/shm && echo in-memory > /dev/shm/v && (sleep 1000 >/dev/null 2>&1 &) ; sleep 0.2; pgrep -f 'sleep 1000' | head -1",
    )
    .await["stdout"]
        .as_str()
        .unwrap()
        .trim()
        .to_owned();
    assert!(!pid.is_empty(), "the background process runs");
    let t = Instant::now();
    let (s, p) = fuse
        .post(&format!("/v1/environments/{id}?action=pause"), json!({}))
        .await;
    assert_eq!(
        (s, p["state"].as_str()),
        (StatusCode::OK, Some("paused")),
        "{p}"
    );
    let pause_ms = t.elapsed().as_millis();
    let t = Instant::now();
    let (s, r) = fuse
        .post(&format!("/v1/environments/{id}?action=resume"), json!({}))
        .await;
    assert_eq!(
        (s, r["state"].as_str()),
        (StatusCode::OK, Some("running")),
        "{r}"
    );
    let resume_ms = t.elapsed().as_millis();
    let after = exec(
        &fuse,
        &id,
        &format!("kill -0 {pid} && echo alive; cat /dev/shm/v"),
    )
    .await;
    assert_eq!(after["stdout"], "alive\nin-memory\n", "{after}");
    eprintln!("pause {pause_ms} ms, resume {resume_ms} ms");

    // Migration to qemu-b keeps a file and a running process.
    exec(
        &fuse,
        &id,
        "mkdir -p /srv && echo on-disk > /srv/moved && sync",
    )
    .await;
    let t = Instant::now();
    let (s, m) = fuse
        .post(
            &format!("/v1/environments/{id}?action=migrate"),
            json!({"target_host_id": "qemu-b"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{m}");
    assert_eq!(
        (m["state"].as_str(), m["host_id"].as_str()),
        (Some("running"), Some("qemu-b"))
    );
    let migrate_ms = t.elapsed().as_millis();
    let moved = exec(
        &fuse,
        &id,
        &format!("kill -0 {pid} && echo alive; cat /srv/moved /dev/shm/v"),
    )
    .await;
    assert_eq!(moved["stdout"], "alive\non-disk\nin-memory\n", "{moved}");
    let ip_b = identity(&fuse, &id).await.1;
    assert_ne!(ip_b, i1.1, "the guest took an address of its new host");
    eprintln!("migrate {migrate_ms} ms");
    // Nothing of it is left on qemu-a (the source copy is destroyed at once).
    let left: Vec<String> = a
        .leftovers()
        .into_iter()
        .filter(|l| l.contains(&id))
        .collect();
    assert!(left.is_empty(), "left on the source: {left:?}");

    // An interrupted migration: the target agent dies while the files arrive.
    let id2 = made[1].clone();
    exec(&fuse, &id2, "mkdir -p /srv && echo stays > /srv/f && sync").await;
    let mig = {
        let (http, url) = (
            fuse.http.clone(),
            format!("{}/v1/environments/{id2}?action=migrate", fuse.base),
        );
        tokio::spawn(async move {
            let r = http
                .post(url)
                .json(&json!({"target_host_id": "qemu-b"}))
                .send()
                .await;
            match r {
                Ok(r) => r.status(),
                Err(_) => StatusCode::BAD_GATEWAY,
            }
        })
    };
    let incoming = b.dir.join("incoming");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_dir(&incoming).is_ok_and(|mut rd| rd.next().is_some()) {
        assert!(Instant::now() < deadline, "the transfer never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if let Some(c) = b.agent.as_mut() {
        let _ = c.kill();
        let _ = c.wait();
    }
    let st = mig.await.unwrap();
    assert!(
        !st.is_success(),
        "the migration cannot succeed without its target: {st}"
    );
    b.spawn_agent();
    let e = {
        let (_, e) = fuse.get(&format!("/v1/environments/{id2}")).await;
        e
    };
    assert_eq!(
        (e["state"].as_str(), e["host_id"].as_str()),
        (Some("running"), Some("qemu-a")),
        "{e}"
    );
    let f2 = exec(&fuse, &id2, "cat /srv/f").await;
    assert_eq!(f2["stdout"], "stays\n");
    // The target, back up, holds nothing of it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let staged = std::fs::read_dir(&incoming)
            .map(|rd| rd.count())
            .unwrap_or(0);
        let there: Vec<String> = b
            .leftovers()
            .into_iter()
            .filter(|l| l.contains(&id2))
            .collect();
        if staged == 0 && there.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left on the target: {staged} staged, {there:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for id in [&id, &id2, &"fuse-rg-tsrc".to_owned()] {
        let (s, _) = fuse.delete(&format!("/v1/environments/{id}")).await;
        assert_eq!(s, StatusCode::NO_CONTENT);
    }
    let (s, _) = fuse.delete("/v1/templates/rg").await;
    assert_eq!(s, StatusCode::NO_CONTENT);
}

/// E2B's SDK unchanged against a real guest (the image's `fuse-envd`, started by
/// `fuse-guest` at boot) through `fuse` on Postgres and a `qemu` host: the same script as
/// on the `process` backend (`e2b`), here with one root for commands and files, and the
/// guest's busybox `httpd` as the server `get_host` reaches.
#[tokio::test]
async fn the_e2b_sdk_runs_unchanged_against_a_real_qemu_guest() {
    let Some(python) = crate::e2b::e2b_python().await else {
        return;
    };
    let Some(lab) =
        GuestLab::start(1, "qemu-e2b", &[("FUSE_PROXY_DOMAIN", crate::e2b::DOMAIN)]).await
    else {
        return;
    };
    let GuestLab { host, fuse, .. } = lab;
    let server = "mkdir -p /tmp/www && printf fuse-e2b-ok > /tmp/www/index.html && \
                  exec httpd -f -p 8000 -h /tmp/www";
    let (ok, text) = crate::e2b::run_script(
        &python,
        &fuse.base,
        "any-key-of-an-open-server",
        &[("E2B_SHARED_ROOT", "1"), ("E2B_HTTP_SERVER", server)],
    )
    .await;
    println!("{text}");
    assert!(
        ok,
        "the e2b SDK script failed against a qemu guest:\n{text}\n--- fuse log (last 200 lines):\n{}\n--- fc-agent log (last 150 lines):\n{}",
        crate::sdk::tail(&fuse.log_text(), 200),
        crate::sdk::tail(&host.log_text(), 150),
    );
    assert!(text.contains("E2B-TIMINGS {"), "{text}");

    // `templateID` names a Fuse template: one made from a sandbox (a live snapshot of its
    // memory) starts the next sandboxes with what it had, without a boot.
    let sdk = |code: &str| {
        let mut c = std::process::Command::new(&python);
        c.arg("-c")
            .arg(code)
            .env("E2B_API_URL", format!("{}/e2b", fuse.base))
            .env("E2B_SANDBOX_URL", &fuse.base)
            .env("E2B_API_KEY", "any-key-of-an-open-server");
        let out = c.output().unwrap();
        let text = crate::sdk::output_text(&out);
        assert!(out.status.success(), "{code}\n{text}");
        text.trim().to_owned()
    };
    let src = sdk("from e2b import Sandbox\n\
                   s = Sandbox.create(timeout=600)\n\
                   s.files.write('/srv/e2b-marker', 'from-the-template')\n\
                   print(s.sandbox_id)");
    let (s, tpl) = fuse
        .post(
            "/v1/templates",
            json!({"name": "e2b-tpl", "from_environment": src}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{tpl}");
    let out = sdk("import time\nfrom e2b import Sandbox\n\
                   t = time.monotonic()\n\
                   s = Sandbox.create('e2b-tpl')\n\
                   took = time.monotonic() - t\n\
                   assert s.get_info().template_id == 'e2b-tpl'\n\
                   got = s.commands.run('cat /srv/e2b-marker').stdout\n\
                   assert got == 'from-the-template', got\n\
                   s.kill()\n\
                   print(f'{took:.3f}')");
    eprintln!(
        "an e2b sandbox from a Fuse template: created in {out} s (a cold one: see E2B-TIMINGS)"
    );
    sdk(&format!(
        "from e2b import Sandbox\nassert Sandbox.kill('{src}')"
    ));
    let (s, _) = fuse.delete("/v1/templates/e2b-tpl").await;
    assert!(s.is_success(), "deleting the template: {s}");
    // Every sandbox was killed: nothing of them stays on the host.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !host.leftovers().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        host.leftovers().is_empty(),
        "left on the host: {:?}",
        host.leftovers()
    );
}
