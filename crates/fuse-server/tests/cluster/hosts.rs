//! Real `fc-agent` hosts for the cluster tests: each agent runs in its own network namespace
//! made by the test, reached over a veth link (root side .1, namespace side .2), with the
//! `process` backend. The link can be cut (`link(false)`) and the agent killed and
//! restarted on the same state directory.

use reqwest::StatusCode;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// The bearer token of every test agent.
pub const AGENT_TOKEN: &str = "cluster-agent-token-0123456789ab";

/// A binary of this workspace next to the test binary (built if missing).
pub fn target_bin(name: &str, package: &str) -> PathBuf {
    let me = std::env::current_exe().unwrap();
    // target/<profile>/deps/cluster-… → target/<profile>/<name>
    let dir = me.parent().unwrap().parent().unwrap().to_owned();
    let bin = dir.join(name);
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let st = Command::new(cargo)
            .args(["build", "-p", package, "--bin", name])
            .status()
            .unwrap();
        assert!(st.success(), "building {name}");
    }
    bin
}

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Index of the next host, unique within this test process. Hosts get 10.B.N.0/30 with the
/// second octet B from the process id, so two test processes on one machine (the suite and
/// a soak) do not take the same addresses.
static NEXT: AtomicUsize = AtomicUsize::new(10);

fn second_octet() -> u32 {
    // 10.160–10.199: clear of the agents' default VM pool (10.200/16, inside their
    // namespaces anyway) and of the real-guest tests (10.252).
    160 + std::process::id() % 40
}

/// One host: a namespace, its link, its agent.
pub struct Host {
    pub id: String,
    pub ns: String,
    lab: fuse_testkit::netns::Lab,
    idx: usize,
    agent: Option<Child>,
    pub dir: PathBuf,
    pub max_vms: u32,
    pub http: reqwest::Client,
}

impl Host {
    /// Makes the namespace and link; `None` (with the reason printed) without root.
    pub fn create(id: &str) -> Option<Host> {
        let idx = NEXT.fetch_add(1, Ordering::SeqCst);
        assert!(idx < 250, "too many test hosts");
        let pid = std::process::id() % 100_000;
        let name = format!("fuse-t{pid}-{idx}");
        let veth = format!("ft{pid}x{idx}");
        let net = format!("10.{}.{idx}.", second_octet());
        let lab = fuse_testkit::netns::Lab::create(&name, &veth, &net)?;
        let dir = std::env::temp_dir().join(format!("{name}-dir"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Some(Host {
            id: id.to_owned(),
            ns: name,
            lab,
            idx,
            agent: None,
            dir,
            max_vms: 20,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
        })
    }

    /// Lets this host's agent and `other`'s reach each other (a migration streams between
    /// them).
    pub fn route_to(&self, other: &Host) {
        assert!(
            self.lab.route_to(&other.lab),
            "routing {} <-> {}",
            self.id,
            other.id
        );
    }

    /// The agent's address.
    pub fn addr(&self) -> String {
        format!("10.{}.{}.2:8090", second_octet(), self.idx)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// Starts (or restarts) the agent on the same state directory.
    pub fn start_agent(&mut self) {
        assert!(self.agent.is_none(), "agent already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.with_extension("log"))
            .unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .arg(target_bin("fc-agent", "fuse-hostagent"))
            .env("FC_AGENT_LISTEN", self.addr())
            .env("FC_AGENT_TOKEN", AGENT_TOKEN)
            .env("FC_AGENT_BACKEND", "process")
            .env("FC_AGENT_DIR", &self.dir)
            .env("FC_AGENT_GUEST_BIN", target_bin("fuse-guest", "fuse-guest"))
            .env("FC_AGENT_CPUS", "16")
            .env("FC_AGENT_RAM_MB", "32768")
            .env("FC_AGENT_STORAGE_GB", "100")
            .env("FC_AGENT_MAX_VMS", self.max_vms.to_string())
            .env("RUST_LOG", "info")
            // Its log is a file: the agent must see that, not be told.
            .env_remove("NO_COLOR")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.agent = Some(child);
    }

    /// Waits until the agent answers.
    pub async fn wait_up(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let ok = self
                .http
                .get(format!("{}/healthz", self.url()))
                .bearer_auth(AGENT_TOKEN)
                .send()
                .await
                .is_ok_and(|r| r.status() == StatusCode::OK);
            if ok {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "agent {} never answered; log:\n{}",
                self.id,
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.with_extension("log")).unwrap_or_default()
    }

    /// SIGKILL of the agent (its VMs stay).
    pub fn kill9_agent(&mut self) {
        if let Some(mut c) = self.agent.take() {
            // `ip netns exec` execs the agent, so this is the agent's own pid.
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Brings the host's link down (cut off) or up.
    pub fn link(&self, up: bool) {
        self.lab.link(up);
    }

    /// VM ids the agent lists (under `fuse-`).
    pub async fn vms(&self) -> Vec<String> {
        self.vm_states()
            .await
            .into_iter()
            .map(|(id, _)| id)
            .collect()
    }

    /// Kills a VM's own process (the VM dies under the agent); whether one was killed.
    pub fn kill_vm(&self, vm_id: &str) -> bool {
        let marker = format!("{}/vms/{vm_id}/", self.dir.display());
        Command::new("pkill")
            .args(["-9", "-f", &marker])
            .status()
            .is_ok_and(|s| s.success())
    }

    /// `(id, state)` of every VM the agent lists (under `fuse-`).
    /// (vm id, snapshot id) of every snapshot the agent keeps.
    pub async fn snapshots(&self) -> BTreeSet<(String, String)> {
        let r = self
            .http
            .get(format!("{}/v1/snapshots", self.url()))
            .bearer_auth(AGENT_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let v: Value = r.json().await.unwrap();
        v["snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["vm_id"].as_str().unwrap_or("").to_owned(),
                    s["snapshot_id"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect()
    }

    pub async fn vm_states(&self) -> Vec<(String, String)> {
        let r = self
            .http
            .get(format!("{}/v1/vm?prefix=fuse-", self.url()))
            .bearer_auth(AGENT_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let v: Value = r.json().await.unwrap();
        let mut ids: Vec<(String, String)> = v["vms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| {
                (
                    x["vm_id"].as_str().unwrap().to_owned(),
                    x["state"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect();
        ids.sort();
        ids
    }

    /// What the host holds on the machine, whoever tracks it: VM directories, VM network
    /// namespaces and links of this agent, VM processes, NAT rules (by VM id).
    pub fn footprint(&self) -> Footprint {
        let vms_dir = self.dir.join("vms");
        let mut dirs: Vec<String> = std::fs::read_dir(&vms_dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        dirs.sort();
        let tag = fuse_hostagent::net::agent_tag(&self.dir);
        let prefix = format!("fv{tag}");
        let netns: Vec<String> = sh("ip netns list")
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| n.starts_with(&prefix))
            .map(str::to_owned)
            .collect();
        let links: Vec<String> = sh(&format!("ip netns exec {} ip -o link", self.ns))
            .lines()
            .filter_map(|l| l.split(':').nth(1))
            .map(|n| n.trim().split('@').next().unwrap_or("").to_owned())
            .filter(|n| n.starts_with(&prefix))
            .collect();
        let marker = format!("{}/", vms_dir.display());
        let mut procs = 0;
        if let Ok(rd) = std::fs::read_dir("/proc") {
            for e in rd.flatten() {
                let name = e.file_name();
                let Some(pid) = name.to_str().and_then(|s| s.parse::<u32>().ok()) else {
                    continue;
                };
                let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                let zombie = stat
                    .rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z'));
                if !zombie && String::from_utf8_lossy(&cmd).contains(&marker) {
                    procs += 1;
                }
            }
        }
        let nat_vms = nat_vm_ids(&self.ns, &tag);
        Footprint {
            dirs,
            netns: netns.len(),
            links: links.len(),
            procs,
            nat_vms,
        }
    }
}

/// The VMs that have NAT or forward state in the nftables table of the agent with `tag`
/// running in namespace `ns` (`nft`, Debian's `nftables`): every per-VM element, chain
/// and rule carries the comment `"<device> <vm id>"`, the device starting `fv<tag>`.
pub fn nat_vm_ids(ns: &str, tag: &str) -> Vec<String> {
    let table = fuse_hostagent::net::nft::table_name(tag);
    let listed = sh(&format!(
        "ip netns exec {ns} nft list table ip {table} 2>/dev/null"
    ));
    let mut ids: Vec<String> = listed
        .split(&format!("comment \"fv{tag}"))
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .filter_map(|c| c.split_whitespace().nth(1))
        .map(str::to_owned)
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// See [`Host::footprint`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Footprint {
    pub dirs: Vec<String>,
    pub netns: usize,
    pub links: usize,
    pub procs: usize,
    pub nat_vms: Vec<String>,
}

impl Drop for Host {
    fn drop(&mut self) {
        self.kill9_agent();
        // The guests of the process backend run in namespaces of their own.
        let tag = fuse_hostagent::net::agent_tag(&self.dir);
        let marker = format!("{}/vms/", self.dir.display());
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "pkill -9 -f '{marker}'; ip netns pids {} | xargs -r kill -9; \
                 for n in $(ip netns list | awk '{{print $1}}' | grep '^fv{tag}'); do ip netns del $n; done",
                self.ns
            ))
            .status();
        // The namespace and its link go with `lab`.
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_file(self.dir.with_extension("log"));
    }
}
