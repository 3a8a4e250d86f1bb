//! The real `fc-agent` binary with the `process` backend over real HTTP: the wire, VM
//! lifecycle through `fuse-guest`, capacity, and adoption/reclaim across agent restarts;
//! and the host toolchain's install script (`tools`).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod egress;
mod expose;
mod fc_memory;
mod healthcheck;
mod logs;
mod migrate;
mod pause;
mod provision;
mod qemu_memory;
mod runtime;
mod snapshots;
mod tools;
mod tunnel;

use base64::Engine as _;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

const TOKEN: &str = "agent-token-0123456789abcdef";

/// `fuse-guest` next to `fc-agent` in the target directory (built if missing).
fn guest_bin() -> PathBuf {
    let agent = PathBuf::from(env!("CARGO_BIN_EXE_fc-agent"));
    let guest = agent.parent().unwrap().join("fuse-guest");
    if !guest.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let st = Command::new(cargo)
            .args(["build", "-p", "fuse-guest", "--bin", "fuse-guest"])
            .status()
            .unwrap();
        assert!(st.success());
    }
    assert!(guest.exists(), "fuse-guest not at {}", guest.display());
    guest
}

/// A network namespace for one agent, linked to the root namespace by a veth pair (the
/// workspace's test host, `fuse_testkit::netns::Lab`).
struct Ns {
    lab: fuse_testkit::netns::Lab,
    name: String,
    ip: String,
}

impl Ns {
    fn new(tag: &str) -> Option<Ns> {
        let n = std::process::id() % 100_000;
        let octet = 20 + (tag.bytes().map(u32::from).sum::<u32>() % 200);
        let lab = fuse_testkit::netns::Lab::create(
            &format!("fat-{n}-{tag}"),
            // The octet, unlike a letter of the tag, differs between every test.
            &format!("fat{n}x{octet}"),
            &format!("10.252.{octet}."),
        )?;
        Some(Ns {
            name: lab.name.clone(),
            ip: lab.ip(),
            lab,
        })
    }

    pub fn in_ns(&self, args: &[&str]) -> String {
        self.lab.in_ns(args)
    }

    /// The nftables table of the agent with state directory `dir`, as `nft` (Debian's
    /// `nftables`) lists it inside this namespace; empty when there is no such table.
    fn nft_table(&self, dir: &Path) -> String {
        let table = fuse_hostagent::net::nft::table_name(&fuse_hostagent::net::agent_tag(dir));
        let out = Command::new("ip")
            .args([
                "netns", "exec", &self.name, "nft", "list", "table", "ip", &table,
            ])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() || err.contains("No such file"),
            "nft (Debian package nftables) failed: {err}"
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `nft` with these arguments inside this namespace.
    fn nft(&self, args: &[&str]) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name, "nft"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "nft {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

struct Agent {
    child: Child,
    base: String,
    dir: PathBuf,
    http: reqwest::Client,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // VM namespaces are global: remove this agent's, and its VMs' processes (which
        // outlive it), even after a failed test. Its devices and table live in the test's
        // namespace and go with it.
        let marker = format!("{}/", self.dir.join("vms").display());
        let prefix = format!("fv{}", fuse_hostagent::net::agent_tag(&self.dir));
        let _ = Command::new("pkill").args(["-9", "-f", &marker]).status();
        for name in std::fs::read_dir("/run/netns")
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = name.file_name().to_string_lossy().into_owned();
            if name.starts_with(&prefix) {
                let _ = Command::new("ip").args(["netns", "del", &name]).status();
            }
        }
    }
}

/// Starts fc-agent inside `ns`, listening on the namespace's address.
async fn spawn(ns: &Ns, dir: &Path, extra: &[(&str, &str)]) -> Agent {
    spawn_at(ns, 8090, dir, extra).await
}

/// Starts fc-agent inside `ns`, listening on `port` of the namespace's address (a second
/// agent in one namespace also needs a subnet and forward ports of its own).
async fn spawn_at(ns: &Ns, port: u16, dir: &Path, extra: &[(&str, &str)]) -> Agent {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.name])
        .arg(env!("CARGO_BIN_EXE_fc-agent"))
        .env_clear()
        .env("FC_AGENT_LISTEN", format!("{}:{port}", ns.ip))
        .env("FC_AGENT_PUBLIC_HOST", &ns.ip)
        .env("FC_AGENT_TOKEN", TOKEN)
        .env("FC_AGENT_BACKEND", "process")
        .env("FC_AGENT_DIR", dir)
        .env("FC_AGENT_GUEST_BIN", guest_bin())
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        // Appended to: a restarted agent's log follows its predecessor's.
        .stdout(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.with_extension("log"))
                .unwrap(),
        )
        .stderr(std::process::Stdio::null());
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let child = cmd.spawn().unwrap();
    let a = Agent {
        child,
        base: format!("http://{}:{port}", ns.ip),
        dir: dir.to_owned(),
        http: reqwest::Client::new(),
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(r) = a
            .http
            .get(format!("{}/healthz", a.base))
            .bearer_auth(TOKEN)
            .send()
            .await
        {
            if r.status() == StatusCode::OK {
                return a;
            }
        }
        assert!(Instant::now() < deadline, "fc-agent did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Agent {
    async fn call(
        &self,
        m: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut r = self
            .http
            .request(m, format!("{}{}", self.base, path))
            .bearer_auth(TOKEN);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.unwrap();
        let s = resp.status();
        let t = resp.text().await.unwrap();
        (s, serde_json::from_str(&t).unwrap_or(Value::Null))
    }
    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }
    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }
    async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.call(reqwest::Method::DELETE, path, None).await
    }
    async fn exec(&self, id: &str, cmd: &[&str]) -> (i64, String) {
        let (s, r) = self
            .post(&format!("/v1/vm/{id}/exec"), json!({"cmd": cmd}))
            .await;
        assert_eq!(s, StatusCode::OK, "{r}");
        let out = base64::engine::general_purpose::STANDARD
            .decode(r["stdout"].as_str().unwrap())
            .unwrap();
        (
            r["exit_code"].as_i64().unwrap(),
            String::from_utf8(out).unwrap(),
        )
    }
}

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("fc-agent-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    let _ = std::fs::remove_file(d.with_extension("log"));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[tokio::test]
async fn wire_and_vm_lifecycle() {
    let Some(ns) = Ns::new("life") else { return };
    let a = spawn(&ns, &tempdir("life"), &[("FC_AGENT_MAX_VMS", "2")]).await;
    // Token on every route.
    let r = a
        .http
        .get(format!("{}/healthz", a.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
    let (_, h) = a.get("/healthz").await;
    assert_eq!(
        (h["status"].as_str(), h["backend"].as_str()),
        (Some("ok"), Some("process"))
    );
    assert_eq!(h["capacity"]["vm_count"], 2);
    // Create (idempotent).
    let (s, vm) = a
        .post(
            "/v1/vm",
            json!({"name": "fuse-a", "cpus": 1, "memory_mb": 128, "storage_gb": 1}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{vm}");
    assert_eq!(vm["vm_id"], "fuse-a");
    let (s, _) = a
        .post(
            "/v1/vm",
            json!({"name": "fuse-a", "cpus": 1, "memory_mb": 128, "storage_gb": 1}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, e) = a
        .post(
            "/v1/vm",
            json!({"name": "../x", "cpus": 1, "memory_mb": 128, "storage_gb": 1}),
        )
        .await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_argument"))
    );
    // Upload, exec, cat.
    let content = base64::engine::general_purpose::STANDARD.encode("manifest!");
    let (s, _) = a
        .post(
            "/v1/vm/fuse-a/upload",
            json!({"path": "/fuse/manifest.json", "content_b64": content, "mode": 0o600}),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(
        a.exec("fuse-a", &["cat", "fuse/manifest.json"]).await,
        (0, "manifest!".into())
    );
    assert_eq!(a.exec("fuse-a", &["no-such-command"]).await.0, 127);
    let (s, r) = a
        .post(
            "/v1/vm/fuse-a/exec",
            json!({"cmd": ["sleep", "5"], "timeout_ms": 200}),
        )
        .await;
    assert_eq!((s, r["exit_code"].as_i64()), (StatusCode::OK, Some(124)));
    // Streaming exec: NDJSON lines, the last with the exit code.
    let text = a
        .http
        .post(format!("{}/v1/vm/fuse-a/exec?stream=true", a.base))
        .bearer_auth(TOKEN)
        .json(&json!({"cmd": ["sh", "-c", "echo a; sleep 0.1; echo b"]}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.len() >= 2, "{text}");
    assert_eq!(lines.last().unwrap()["exit_code"], 0);
    // Each line is forwarded as the guest sends it: this command prints, then waits for a
    // file the test creates only after it has read that first line (a buffered stream would
    // never deliver it, and the command would time out).
    let mut resp = a
        .http
        .post(format!("{}/v1/vm/fuse-a/exec?stream=true", a.base))
        .bearer_auth(TOKEN)
        .json(&json!({"cmd": ["sh", "-c", "echo first; while [ ! -e go ]; do sleep 0.02; done; echo second"],
                      "timeout_ms": 20000}))
        .send()
        .await
        .unwrap();
    let mut got = String::new();
    let first = base64::engine::general_purpose::STANDARD.encode("first\n");
    while !got.contains(&first) {
        let chunk = tokio::time::timeout(Duration::from_secs(15), resp.chunk())
            .await
            .expect("the first line was held back")
            .unwrap()
            .expect("the stream ended before its first line");
        got.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert!(!got.contains("exit_code"), "still running: {got}");
    std::fs::write(a.dir.join("vms/fuse-a").join("root").join("go"), b"").unwrap();
    while let Some(chunk) = resp.chunk().await.unwrap() {
        got.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    let last: Value = serde_json::from_str(got.lines().last().unwrap()).unwrap();
    assert_eq!(last["exit_code"], 0, "{got}");
    assert!(
        got.contains(&base64::engine::general_purpose::STANDARD.encode("second\n")),
        "{got}"
    );
    // Agent: start (both routes), environment passed, stop.
    let (s, _) = a
        .post("/v1/vm/fuse-a/start-agent", json!({"command": "echo $FUSE_AUTH_TOKEN > seen; exec sleep 60", "binary_path": "", "auth_token": "tok-123"}))
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let seen = a.dir.join("vms").join("fuse-a").join("root").join("seen");
    fuse_testkit::eventually(
        "the agent wrote its token",
        Duration::from_secs(10),
        || async { std::fs::read_to_string(&seen).is_ok_and(|t| t.ends_with('\n')) },
    )
    .await;
    assert_eq!(a.exec("fuse-a", &["cat", "seen"]).await.1, "tok-123\n");
    let (s, _) = a.post("/v1/vm/fuse-a/stop-agent", json!({})).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = a
        .post(
            "/v1/vm/fuse-a/start-surfd",
            json!({"command": "exec sleep 60", "binary_path": ""}),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "the original route is an alias");
    // Snapshot, change, restore, delete snapshot.
    let (s, snap) = a
        .post(
            "/v1/vm/fuse-a/snapshot",
            json!({"snapshot_id": "snap_1", "mode": "disk"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{snap}");
    assert!(snap["size_bytes"].as_u64().unwrap() > 0);
    a.exec("fuse-a", &["rm", "fuse/manifest.json"]).await;
    let (_, list) = a.get("/v1/vm/fuse-a/snapshots").await;
    assert_eq!(list["snapshots"][0]["snapshot_id"], "snap_1");
    let (s, _) = a
        .post("/v1/vm/fuse-a/restore", json!({"snapshot_id": "snap_1"}))
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(
        a.exec("fuse-a", &["cat", "fuse/manifest.json"]).await.1,
        "manifest!"
    );
    let (s, _) = a.delete("/v1/vm/fuse-a/snapshots/snap_1").await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = a
        .post("/v1/vm/fuse-a/restore", json!({"snapshot_id": "snap_1"}))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // Capacity.
    a.post(
        "/v1/vm",
        json!({"name": "fuse-b", "cpus": 1, "memory_mb": 128, "storage_gb": 1}),
    )
    .await;
    let (s, e) = a
        .post(
            "/v1/vm",
            json!({"name": "fuse-c", "cpus": 1, "memory_mb": 128, "storage_gb": 1}),
        )
        .await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("unavailable"))
    );
    let (_, l) = a.get("/v1/vm?prefix=fuse-").await;
    assert_eq!(l["vms"].as_array().unwrap().len(), 2);
    let (_, h) = a.get("/healthz").await;
    assert_eq!(h["allocated"]["vm_count"], 2);
    // Networking: the VM has its /30 in its own namespace, NAT, and a port forward to its
    // agent port that answers from outside the host's namespace.
    let (s, web) = a.post("/v1/vm", json!({"name": "fuse-web", "cpus": 1, "memory_mb": 128, "storage_gb": 1, "agent_port": 8000})).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "still full: {web}");
    a.delete("/v1/vm/fuse-b").await;
    let (s, web) = a.post("/v1/vm", json!({"name": "fuse-web", "cpus": 1, "memory_mb": 128, "storage_gb": 1, "agent_port": 8000})).await;
    assert_eq!(s, StatusCode::CREATED, "{web}");
    let url = web["url"].as_str().unwrap().to_owned();
    assert!(url.starts_with(&format!("http://{}:2", ns.ip)), "{url}");
    let (_, addrs) = a.exec("fuse-web", &["ip", "-4", "-o", "addr"]).await;
    assert!(
        addrs.contains("10.200.0."),
        "the guest has its /30: {addrs}"
    );
    let (s, _) = a.post("/v1/vm/fuse-web/start-agent", json!({"command": "exec python3 -m http.server 8000 --bind 0.0.0.0", "binary_path": ""})).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(r) = a.http.get(&url).send().await {
            if r.status() == StatusCode::OK {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the forward to the agent port never answered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Its NAT and forward in the agent's table: the masqueraded address, the port's
    // element in the forwards map, its chain with the DNAT; each names the VM.
    let tag = fuse_hostagent::net::agent_tag(&a.dir);
    let web_dev = fuse_hostagent::net::dev_name(&tag, "fuse-web");
    let table = ns.nft_table(&a.dir);
    let hp = url.rsplit(':').next().unwrap();
    assert!(table.contains("masquerade"), "{table}");
    assert!(table.contains("fib daddr type local"), "{table}");
    assert!(
        table.contains(&format!("comment \"{web_dev} fuse-web\"")),
        "{table}"
    );
    assert!(
        table.contains(&format!(
            "{hp} comment \"{web_dev} fuse-web\" : goto {web_dev}"
        )),
        "the forward's element: {table}"
    );
    assert!(table.contains(&format!("chain {web_dev}")), "{table}");
    assert!(table.contains("dnat to 10.200.0."), "{table}");
    let (s, _) = a.delete("/v1/vm/fuse-web").await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let table = ns.nft_table(&a.dir);
    assert!(
        !table.contains("fuse-web") && !table.contains(&web_dev),
        "its NAT and forward removed: {table}"
    );
    assert!(
        table.contains(&format!(
            "\"{} fuse-a\"",
            fuse_hostagent::net::dev_name(&tag, "fuse-a")
        )),
        "fuse-a's NAT is still there: {table}"
    );
    assert_eq!(
        ns.in_ns(&["ip", "-o", "link"]).matches(": fv").count(),
        1,
        "only fuse-a's device is left"
    );
    // A VM that dies is reported as stopped, with its log tail as the error.
    let (s, _) = a
        .post(
            "/v1/vm",
            json!({"name": "fuse-dead", "cpus": 1, "memory_mb": 128, "storage_gb": 1}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let pid = guest_pid(&a.dir, "fuse-dead");
    Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, v) = a.get("/v1/vm/fuse-dead").await;
        if v["state"] == "stopped" {
            assert!(
                v["error"].as_str().unwrap().contains("is not running"),
                "{v}"
            );
            assert!(
                v["error"].as_str().unwrap().contains("ready on unix:"),
                "log tail: {v}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "death not reported: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(a.delete("/v1/vm/fuse-dead").await.0, StatusCode::NO_CONTENT);
    // Destroy leaves nothing.
    let pid_dir = a.dir.join("vms/fuse-a");
    assert!(pid_dir.exists());
    let (s, _) = a.delete("/v1/vm/fuse-a").await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert!(!pid_dir.exists());
    assert_eq!(a.get("/v1/vm/fuse-a").await.0, StatusCode::NOT_FOUND);
    assert_eq!(a.delete("/v1/vm/fuse-a").await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        a.post("/v1/vm/fuse-a/exec", json!({"cmd": ["true"]}))
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    let (_, l) = a.get("/v1/vm").await;
    assert!(l["vms"].as_array().unwrap().is_empty());
    let table = ns.nft_table(&a.dir);
    assert!(
        table.contains("masquerade") && !table.contains(&format!("fv{tag}")),
        "the table stays, with no VM's NAT left: {table}"
    );
    assert!(
        !ns.in_ns(&["ip", "-o", "link"]).contains(": fv"),
        "no device left"
    );
    let netns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let ours = ["fuse-a", "fuse-b", "fuse-web", "fuse-dead"]
        .map(|v| fuse_hostagent::net::dev_name(&tag, v));
    assert!(
        !String::from_utf8_lossy(&netns.stdout)
            .lines()
            .any(|l| ours.iter().any(|o| l.starts_with(o.as_str()))),
        "VM namespaces removed"
    );
}

fn guest_pid(dir: &Path, id: &str) -> i32 {
    let meta: Value =
        serde_json::from_slice(&std::fs::read(dir.join("vms").join(id).join("vm.json")).unwrap())
            .unwrap();
    meta["pid"].as_i64().unwrap() as i32
}

#[tokio::test]
async fn vms_survive_an_agent_restart_and_leftovers_are_reclaimed() {
    let Some(ns) = Ns::new("restart") else { return };
    let dir = tempdir("restart");
    let mut a = spawn(&ns, &dir, &[]).await;
    for id in ["fuse-keep", "fuse-dies"] {
        let (s, _) = a
            .post(
                "/v1/vm",
                json!({"name": id, "cpus": 1, "memory_mb": 128, "storage_gb": 1, "agent_port": 8000}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED);
    }
    a.exec("fuse-keep", &["sh", "-c", "echo state > kept"])
        .await;
    // The agent crashes; one VM dies while it is down; a stray directory appears.
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    let keep_pid = guest_pid(&dir, "fuse-keep");
    let dead_pid = guest_pid(&dir, "fuse-dies");
    let _ = nix_kill(dead_pid);
    std::fs::create_dir_all(dir.join("vms/stray")).unwrap();
    // A VM whose agent died mid-create: its helper runs, but no state was written.
    let orphan_dir = dir.join("vms/fuse-orphan");
    std::fs::create_dir_all(orphan_dir.join("root")).unwrap();
    std::fs::write(
        orphan_dir.join("guest.token"),
        "orphan-token-0123456789abcdef",
    )
    .unwrap();
    let mut orphan = Command::new(guest_bin())
        .arg("--listen")
        .arg(format!("unix:{}", orphan_dir.join("guest.sock").display()))
        .arg("--token-file")
        .arg(orphan_dir.join("guest.token"))
        .arg("--root")
        .arg(orphan_dir.join("root"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::path::Path::new(&format!("/proc/{dead_pid}")).exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A stray device, a stray namespace (something running in it) and the nftables
    // state of a VM that no longer exists, all of ours.
    let tag = fuse_hostagent::net::agent_tag(&dir);
    let stray = format!("fv{tag}deadbeef");
    ns.in_ns(&["ip", "tuntap", "add", &stray, "mode", "tap"]);
    let stray_ns = format!("fv{tag}cafebabe");
    assert!(Command::new("ip")
        .args(["netns", "add", &stray_ns])
        .status()
        .unwrap()
        .success());
    let mut in_stray = Command::new("ip")
        .args(["netns", "exec", &stray_ns, "sleep", "60"])
        .spawn()
        .unwrap();
    let ghost = format!("fv{tag}0badf00d");
    let table = fuse_hostagent::net::nft::table_name(&tag);
    ns.nft(&[
        "add",
        "chain",
        "ip",
        &table,
        &ghost,
        "{ comment \"ghost\"; }",
    ]);
    ns.nft(&[
        "add",
        "element",
        "ip",
        &table,
        "vms",
        &format!("{{ 10.200.9.10 comment \"{ghost} ghost\" }}"),
    ]);
    ns.nft(&[
        "add",
        "element",
        "ip",
        &table,
        "forwards",
        &format!("{{ 29999 comment \"{ghost} ghost\" : goto {ghost} }}"),
    ]);
    assert!(ns.nft_table(&dir).contains(&ghost));
    let b = spawn(&ns, &dir, &[]).await;
    assert!(
        !ns.in_ns(&["ip", "-o", "link"]).contains(&stray),
        "stray tap reclaimed"
    );
    assert!(
        !Path::new("/run/netns").join(&stray_ns).exists(),
        "stray namespace reclaimed"
    );
    let st = in_stray.wait().unwrap();
    assert!(!st.success(), "what ran in the stray namespace was killed");
    let t = ns.nft_table(&dir);
    assert!(
        !t.contains(&ghost) && !t.contains("ghost") && !t.contains("fuse-dies"),
        "a dead VM's elements and chain reclaimed: {t}"
    );
    let keep_dev = fuse_hostagent::net::dev_name(&tag, "fuse-keep");
    assert!(
        t.contains(&format!("\"{keep_dev} fuse-keep\" : goto {keep_dev}"))
            && t.contains(&format!("chain {keep_dev}")),
        "the adopted VM keeps its NAT and forward: {t}"
    );
    let log = std::fs::read_to_string(dir.with_extension("log")).unwrap();
    assert!(
        log.contains("net_nft=3") && log.contains("net_devices=1") && log.contains("net_netns=1"),
        "reclaim counts logged: {log}"
    );
    let (_, l) = b.get("/v1/vm").await;
    let ids: Vec<&str> = l["vms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["vm_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["fuse-keep"], "adopted the live one only");
    assert_eq!(
        guest_pid(&dir, "fuse-keep"),
        keep_pid,
        "the same process, not a new VM"
    );
    assert_eq!(b.exec("fuse-keep", &["cat", "kept"]).await.1, "state\n");
    assert!(!dir.join("vms/fuse-dies").exists(), "dead VM reclaimed");
    assert!(!dir.join("vms/stray").exists(), "stray directory reclaimed");
    assert!(!orphan_dir.exists(), "orphan directory reclaimed");
    let status = orphan.wait().unwrap();
    assert!(!status.success(), "the orphan helper was killed at start");
    b.delete("/v1/vm/fuse-keep").await;
    assert!(
        !ns.nft_table(&dir).contains(&keep_dev),
        "destroy of an adopted VM removes its NAT"
    );
    assert!(
        !std::path::Path::new(&format!("/proc/{keep_pid}/cmdline")).exists()
            || !std::fs::read_to_string(format!("/proc/{keep_pid}/cmdline"))
                .unwrap_or_default()
                .contains("fuse-keep")
    );
    drop(b);
    let _ = std::fs::remove_dir_all(dir);
}

fn nix_kill(pid: i32) -> bool {
    Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

#[test]
fn refuses_to_start_without_a_token() {
    let out = Command::new(env!("CARGO_BIN_EXE_fc-agent"))
        .env_clear()
        .env("FC_AGENT_BACKEND", "process")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("FC_AGENT_TOKEN is required"));
}

/// The Firecracker binary, a fresh directory and the tiny test guests built in it (its
/// `guests/`), or `None` (skip, reason printed) without the binary, `/dev/kvm` or a compiler.
fn firecracker_and_tiny_guests(name: &str) -> Option<(PathBuf, PathBuf, PathBuf)> {
    let ws = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let fc = std::env::var("FUSE_FIRECRACKER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| ws.join(".fuse-test/bin/firecracker"));
    if !fc.exists()
        || std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_err()
    {
        fuse_testkit::prereq::missing(
            "the Firecracker binary and a usable /dev/kvm",
            "set FUSE_FIRECRACKER_BIN (tools/install-firecracker.sh)",
        );
        return None;
    }
    let dir = tempdir(name);
    let g = dir.join("guests");
    let st = Command::new(ws.join("tools/tiny-guest/build.sh"))
        .arg(&g)
        .output()
        .unwrap();
    if !st.status.success() {
        fuse_testkit::prereq::missing("the tiny test guests", "gcc and ld build them");
        return None;
    }
    Some((fc, dir, g))
}

/// The `firecracker` backend inside fc-agent with the real binary: a guest that never runs
/// the guest helper (the tiny test guest) ends in a clear error, and nothing is left behind.
#[tokio::test]
async fn firecracker_backend_reports_a_guest_that_never_answers_and_leaves_nothing() {
    let Some((fc, dir, g)) = firecracker_and_tiny_guests("fc") else {
        return;
    };
    let rootfs = dir.join("base.ext4");
    std::fs::File::create(&rootfs)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let state = dir.join("state");
    let kernel = g.join("tiny-loop.elf");
    let Some(ns) = Ns::new("fc") else { return };
    let a = spawn(
        &ns,
        &state,
        &[
            ("FC_AGENT_BACKEND", "firecracker"),
            ("FC_AGENT_FIRECRACKER_BIN", fc.to_str().unwrap()),
            ("FC_AGENT_KERNEL", kernel.to_str().unwrap()),
            ("FC_AGENT_ROOTFS", rootfs.to_str().unwrap()),
            ("FC_AGENT_BOOT_TIMEOUT_SECS", "2"),
        ],
    )
    .await;
    let (_, h) = a.get("/healthz").await;
    assert_eq!(h["backend"], "firecracker");
    let (s, e) = a
        .post(
            "/v1/vm",
            json!({"name": "fuse-fc", "cpus": 1, "memory_mb": 64, "storage_gb": 1}),
        )
        .await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR, "{e}");
    let msg = e["error"]["message"].as_str().unwrap();
    assert!(msg.contains("guest helper never answered"), "{msg}");
    assert!(
        msg.contains("FUSE-TINY-LOOP"),
        "the console tail explains it: {msg}"
    );
    assert!(!state.join("vms/fuse-fc").exists(), "VM directory removed");
    let ps = Command::new("pgrep")
        .args(["-f", &format!("{}", state.display())])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&ps.stdout).trim().is_empty(),
        "no firecracker process left"
    );
    assert!(
        !ns.in_ns(&["ip", "-o", "link"]).contains(": fv"),
        "no tap left"
    );
    let table = ns.nft_table(&state);
    assert!(
        !table.contains("fuse-fc") && !table.contains(": fv"),
        "no NAT left: {table}"
    );
    let (_, l) = a.get("/v1/vm").await;
    assert!(l["vms"].as_array().unwrap().is_empty());
    drop(a);
    let _ = std::fs::remove_dir_all(dir);
}

/// The firecracker backend's full snapshot and restore with the real binary and the tiny
/// looping guest (a Linux guest cannot boot under this machine's KVM; see VMS-HERE.md):
/// the snapshot pauses the VM, writes its state, memory and disk, and resumes it; the
/// restore replaces the VMM with a new one loaded from the snapshot (resumed, running) and
/// puts the disk back as it was at the snapshot.
#[tokio::test]
async fn firecracker_backend_full_snapshot_and_restore() {
    use fuse_hostagent::backend::{firecracker::FirecrackerBackend, BootSpec, VmmBackend};
    let Some((fc, dir, g)) = firecracker_and_tiny_guests("fcsnap") else {
        return;
    };
    let base = dir.join("base.img");
    std::fs::write(&base, b"disk at the snapshot").unwrap();
    let backend = FirecrackerBackend {
        bin: fc,
        kernel: g.join("tiny-loop.elf"),
        initrd: None,
        rootfs: base,
        boot_args: "console=ttyS0".into(),
    };
    let vm_dir = dir.join("vms/fuse-snap");
    std::fs::create_dir_all(&vm_dir).unwrap();
    let spec = BootSpec {
        vm_id: "fuse-snap".into(),
        dir: vm_dir.clone(),
        cpus: 1,
        memory_mb: 64,
        storage_gb: 0,
        token: "t".repeat(32),
        net: None,
        base: None,
    };
    let booted = backend.boot(&spec).await.unwrap();
    let ctl = fuse_firecracker::Control::attach(&vm_dir);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(fuse_firecracker::console_log(&vm_dir))
        .unwrap_or_default()
        .contains("FUSE-TINY-LOOP")
    {
        assert!(
            Instant::now() < deadline,
            "the guest never printed its marker"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let snap = vm_dir.join("snapshots/s1");
    let t = Instant::now();
    let size = backend.snapshot(&vm_dir, booted.pid, &snap).await.unwrap();
    let took = t.elapsed();
    assert!(size >= 64 << 20, "memory is in it: {size} bytes");
    for f in ["vm.state", "vm.mem", "rootfs.ext4"] {
        assert!(snap.join(f).exists(), "{f}");
    }
    assert_eq!(
        ctl.state().await.unwrap(),
        "Running",
        "resumed after the snapshot"
    );
    assert_eq!(backend.snapshot_mode("disk"), "full");
    // The disk changes after the snapshot; the restore brings the old one back.
    std::fs::write(vm_dir.join("rootfs.ext4"), b"changed later").unwrap();
    let t = Instant::now();
    let restored = backend
        .restore(&vm_dir, booted.pid, &snap)
        .await
        .unwrap()
        .expect("a new VMM process");
    eprintln!(
        "figures: firecracker full snapshot (64 MiB) {took:?}, restore {:?}",
        t.elapsed()
    );
    assert_ne!(restored.pid, booted.pid);
    assert!(
        !Path::new(&format!("/proc/{}", booted.pid)).exists()
            || std::fs::read_to_string(format!("/proc/{}/stat", booted.pid))
                .unwrap_or_default()
                .contains(") Z"),
        "the old VMM is gone"
    );
    assert_eq!(ctl.state().await.unwrap(), "Running", "loaded and resumed");
    assert_eq!(
        std::fs::read(vm_dir.join("rootfs.ext4")).unwrap(),
        b"disk at the snapshot"
    );
    // A disk-only snapshot of an older agent is refused with the reason.
    let old = vm_dir.join("snapshots/old");
    std::fs::create_dir_all(&old).unwrap();
    std::fs::write(old.join("rootfs.ext4"), b"x").unwrap();
    let e = backend
        .restore(&vm_dir, restored.pid, &old)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("disk only"), "{e}");
    backend.stop(&vm_dir, restored.pid).await;
    let _ = std::fs::remove_dir_all(dir);
}
