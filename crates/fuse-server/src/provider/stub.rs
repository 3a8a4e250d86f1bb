//! The in-memory stub provider: a host that keeps VMs as records. It runs nothing; its
//! `exec` understands a handful of commands so that lifecycle paths can be exercised
//! without a hypervisor (documented in `docs/stub-provider.md`):
//!
//! - `true` → 0, `false` → 1, `echo ARGS` → ARGS, `cat PATH` → the uploaded file or 1,
//!   `uname -r` → `stub`, `sleep N` → 124 if N exceeds the timeout; other argv → 127;
//! - `sh -c|-lc SCRIPT`: `exit N` → N, `sleep N` as above, `echo`/`cat` as above, a script
//!   containing `pkill -TERM` or `systemctl stop` stops the agent; anything else → 0.
//!
//! Every call is recorded so tests can assert what the control plane asked for.

use super::runtime::{ExecStream, FileDownload, FileUpload};
use super::{Provider, ProviderError};
use async_trait::async_trait;
use base64::Engine as _;
use fuse_types::hostagent::{
    AgentClaim, AgentExec, AgentExecChunk, AgentExecResult, AgentHealth, AgentMigrationIn,
    AgentSend, AgentSent, AgentSnapshot, AgentSnapshotRef, AgentStart, AgentVm, AgentVmCreate,
    ArtifactFile, FileEntry, FileList, FileWritten, HostVmState, PausedInfo,
};
use fuse_types::{ExecResponse, Resources};
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// One VM in the stub.
#[derive(Debug, Clone, Default)]
pub struct StubVm {
    /// Creation request.
    pub spec: AgentVmCreate,
    /// Guest files.
    pub files: BTreeMap<String, (Vec<u8>, u32)>,
    /// Every command run, in order.
    pub execs: Vec<Vec<String>>,
    /// The last agent launch.
    pub agent: Option<AgentStart>,
    /// Whether the agent runs.
    pub agent_running: bool,
    /// How many times the agent was started.
    pub agent_starts: u32,
    /// Snapshots: id → files at that time.
    pub snapshots: BTreeMap<String, BTreeMap<String, (Vec<u8>, u32)>>,
    /// The healthcheck verdict the host reports.
    pub health: Option<fuse_types::Health>,
    /// The link byte counter the host reports.
    pub net_bytes: Option<u64>,
    /// How many times its egress rules were replaced (`spec.egress` holds the last).
    pub egress_updates: u32,
    /// Paused (`kind` `live` here, or `warm` for a warm VM): guest calls are refused.
    pub paused: Option<PausedInfo>,
    created: Option<Instant>,
}

/// A stub VM's files: path → (bytes, mode).
pub type Files = BTreeMap<String, (Vec<u8>, u32)>;

/// The stubs of one control plane, by name, so a stub can send a VM to another
/// (`stub://NAME` target URLs).
pub type StubPeers =
    std::sync::Weak<parking_lot::RwLock<HashMap<String, std::sync::Arc<StubProvider>>>>;

/// The stub host.
#[derive(Debug)]
pub struct StubProvider {
    vms: Mutex<HashMap<String, StubVm>>,
    capacity: Mutex<Resources>,
    destroy_delay: Mutex<Duration>,
    faults: Mutex<StubFaults>,
    surfd_only: std::sync::atomic::AtomicBool,
    tunnel_host: Mutex<Option<std::net::IpAddr>>,
    /// Snapshots of VMs destroyed since: (vm id, snapshot id) → files (they outlive it).
    kept: Mutex<BTreeMap<(String, String), Files>>,
    /// Expected arrivals: vm id → (token, what was announced), and those received.
    incoming: Mutex<HashMap<String, (String, AgentMigrationIn)>>,
    peers: Mutex<Option<StubPeers>>,
}

/// Failures a test makes the stub host answer with (each is a `ProviderError::Internal`
/// with this text, except `unreachable`, which fails every call as a dead host would).
#[derive(Debug, Clone, Default)]
pub struct StubFaults {
    /// Every call fails with `Unavailable` (the host is down or cut off).
    pub unreachable: bool,
    /// `vm_list` fails.
    pub list: Option<String>,
    /// `vm_create` fails as a VM that never boots.
    pub create: Option<String>,
    /// `vm_destroy` fails.
    pub destroy: Option<String>,
    /// `vm_list` answers empty (a host that lost or forgot its VMs, or a bad read).
    pub list_empty: bool,
}

impl Default for StubProvider {
    fn default() -> Self {
        Self::new()
    }
}

impl StubProvider {
    /// A stub host with a large capacity.
    pub fn new() -> Self {
        StubProvider {
            vms: Mutex::new(HashMap::new()),
            capacity: Mutex::new(Resources {
                cpus: 4096,
                ram_mb: 16 << 20,
                storage_gb: 1 << 20,
                vm_count: 1_000_000,
            }),
            destroy_delay: Mutex::new(Duration::ZERO),
            faults: Mutex::new(StubFaults::default()),
            surfd_only: std::sync::atomic::AtomicBool::new(false),
            tunnel_host: Mutex::new(None),
            kept: Mutex::new(BTreeMap::new()),
            incoming: Mutex::new(HashMap::new()),
            peers: Mutex::new(None),
        }
    }

    /// The other stubs of its control plane (targets of a migration).
    pub fn set_peers(&self, peers: StubPeers) {
        *self.peers.lock() = Some(peers);
    }

    /// Drops a snapshot's files behind the control plane's back (a disk lost or cleaned by
    /// hand), as a test of the artifact check.
    pub fn lose_snapshot(&self, vm_id: &str, snapshot_id: &str) {
        if let Some(v) = self.vms.lock().get_mut(vm_id) {
            v.snapshots.remove(snapshot_id);
        }
        self.kept
            .lock()
            .remove(&(vm_id.to_owned(), snapshot_id.to_owned()));
    }

    /// The files of a snapshot, whether its VM still exists or not.
    fn snapshot_files(&self, vm_id: &str, sid: &str) -> Option<Files> {
        if let Some(f) = self
            .vms
            .lock()
            .get(vm_id)
            .and_then(|v| v.snapshots.get(sid).cloned())
        {
            return Some(f);
        }
        self.kept
            .lock()
            .get(&(vm_id.to_owned(), sid.to_owned()))
            .cloned()
    }

    fn wire(id: &str, vm: &StubVm) -> AgentVm {
        AgentVm {
            vm_id: id.to_owned(),
            url: format!("http://stub.invalid/{id}"),
            state: if vm.paused.is_some() {
                HostVmState::Paused
            } else {
                HostVmState::Running
            },
            age_seconds: vm.created.map(|c| c.elapsed().as_secs()).unwrap_or(0),
            error: None,
            setup: None,
            endpoints: stub_endpoints(&vm.spec),
            health: vm.health.clone(),
            net_bytes: vm.net_bytes,
            agent_restarts: None,
            agent_running: None,
            paused: vm.paused.clone(),
        }
    }

    /// Where the stub's tunnels go: guest port P of any of its VMs is port P of this
    /// address (tests start real servers there). Off (`None`, the default): a tunnel is
    /// refused, so a quick-start stub never proxies into the control plane's own machine.
    pub fn set_tunnel_host(&self, host: Option<std::net::IpAddr>) {
        *self.tunnel_host.lock() = host;
    }

    /// Served over HTTP, answer `/start-agent` with 404 and serve only `/start-surfd`, as a
    /// host still running the original agent does.
    pub fn set_surfd_only(&self, on: bool) {
        self.surfd_only
            .store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether [`StubProvider::set_surfd_only`] is on.
    pub fn surfd_only(&self) -> bool {
        self.surfd_only.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The capacity the host reports from now on.
    pub fn set_capacity(&self, c: Resources) {
        *self.capacity.lock() = c;
    }

    /// What the host reports for one VM's healthcheck and link counter from now on.
    pub fn set_observed(
        &self,
        id: &str,
        health: Option<fuse_types::Health>,
        net_bytes: Option<u64>,
    ) {
        if let Some(v) = self.vms.lock().get_mut(id) {
            v.health = health;
            v.net_bytes = net_bytes;
        }
    }

    /// Makes every destroy take this long (to stage a crash in the middle of one).
    pub fn set_destroy_delay(&self, d: Duration) {
        *self.destroy_delay.lock() = d;
    }

    /// Makes the host fail from now on as `faults` says.
    pub fn set_faults(&self, faults: StubFaults) {
        *self.faults.lock() = faults;
    }

    /// The VM disappears from the host (it crashed, or the host rebooted).
    pub fn forget(&self, id: &str) -> bool {
        self.vms.lock().remove(id).is_some()
    }

    /// A VM the control plane never asked for appears on the host (a leak), created `age` ago.
    pub fn inject(&self, id: &str, age: Duration) {
        let created = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
        self.vms.lock().insert(
            id.to_owned(),
            StubVm {
                spec: AgentVmCreate {
                    name: id.to_owned(),
                    cpus: 1,
                    memory_mb: 128,
                    storage_gb: 1,
                    agent_port: None,
                    setup: None,
                    ..AgentVmCreate::default()
                },
                created: Some(created),
                ..StubVm::default()
            },
        );
    }

    /// Ids of every VM on the host.
    pub fn ids(&self) -> Vec<String> {
        let mut v: Vec<String> = self.vms.lock().keys().cloned().collect();
        v.sort();
        v
    }

    fn fault(&self, pick: impl FnOnce(&StubFaults) -> Option<String>) -> Result<(), ProviderError> {
        let f = self.faults.lock();
        if f.unreachable {
            return Err(ProviderError::Unavailable("stub host unreachable".into()));
        }
        match pick(&f) {
            Some(m) => Err(ProviderError::Internal(m)),
            None => Ok(()),
        }
    }

    /// A copy of one VM's record.
    pub fn vm(&self, id: &str) -> Option<StubVm> {
        self.vms.lock().get(id).cloned()
    }

    /// Bytes of guest files held for every VM (for memory accounting in benchmarks).
    pub fn bytes_held(&self) -> u64 {
        self.vms
            .lock()
            .values()
            .map(|v| {
                v.files
                    .iter()
                    .map(|(k, (b, _))| k.len() + b.len())
                    .sum::<usize>() as u64
            })
            .sum()
    }

    /// How many VMs it holds.
    pub fn len(&self) -> usize {
        self.vms.lock().len()
    }

    /// Whether it holds no VM.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn with_vm<T>(&self, id: &str, f: impl FnOnce(&mut StubVm) -> T) -> Result<T, ProviderError> {
        let mut g = self.vms.lock();
        let vm = g
            .get_mut(id)
            .ok_or_else(|| ProviderError::NotFound(format!("vm {id}")))?;
        if vm.paused.is_some() {
            return Err(ProviderError::Rejected {
                status: 409,
                message: format!("vm {id} is paused"),
            });
        }
        Ok(f(vm))
    }
}

fn out(code: i32, stdout: impl Into<String>, stderr: impl Into<String>) -> ExecResponse {
    ExecResponse {
        exit_code: code,
        stdout: stdout.into(),
        stderr: stderr.into(),
        ..ExecResponse::default()
    }
}

fn rejected(message: String) -> ProviderError {
    ProviderError::Rejected {
        status: 400,
        message,
    }
}

fn run_argv(vm: &mut StubVm, argv: &[&str], timeout: Duration) -> ExecResponse {
    match argv {
        [] => out(127, "", "empty command\n"),
        ["true", ..] | [":", ..] => out(0, "", ""),
        ["false", ..] => out(1, "", ""),
        ["echo", rest @ ..] => out(0, format!("{}\n", rest.join(" ")), ""),
        ["uname", "-r"] => out(0, "stub\n", ""),
        ["cat", path] => match vm.files.get(*path) {
            Some((b, _)) => out(0, String::from_utf8_lossy(b), ""),
            None => out(1, "", format!("cat: {path}: No such file or directory\n")),
        },
        ["sleep", n] => match n.parse::<f64>() {
            Ok(s) if Duration::from_secs_f64(s.max(0.0)) > timeout => out(124, "", "timed out\n"),
            Ok(_) => out(0, "", ""),
            Err(_) => out(1, "", "sleep: invalid time interval\n"),
        },
        ["exit", n] => out(n.parse().unwrap_or(2), "", ""),
        [cmd, ..] => out(127, "", format!("{cmd}: command not found\n")),
    }
}

fn run_shell(vm: &mut StubVm, script: &str, timeout: Duration) -> ExecResponse {
    if script.contains("pkill -TERM") || script.contains("systemctl stop") {
        vm.agent_running = false;
        return out(0, "", "");
    }
    let words: Vec<&str> = script.split_whitespace().collect();
    match words.as_slice() {
        ["exit", _]
        | ["echo", ..]
        | ["cat", _]
        | ["sleep", _]
        | ["true"]
        | ["false"]
        | ["uname", "-r"] => run_argv(vm, &words, timeout),
        _ => out(0, "", ""),
    }
}

#[async_trait]
impl Provider for StubProvider {
    fn kind(&self) -> &'static str {
        "stub"
    }

    async fn health(&self) -> Result<AgentHealth, ProviderError> {
        self.fault(|_| None)?;
        let g = self.vms.lock();
        let mut allocated = Resources::default();
        for v in g.values() {
            // A paused VM holds its disk; a warm one its memory too.
            let live = v.paused.as_ref().is_none_or(|p| p.kind == "warm");
            allocated = allocated.plus(Resources {
                cpus: if live { v.spec.cpus } else { 0 },
                ram_mb: if live { v.spec.memory_mb } else { 0 },
                storage_gb: v.spec.storage_gb,
                vm_count: u32::from(live),
            });
        }
        let artifact_bytes = g
            .values()
            .flat_map(|v| v.snapshots.values())
            .chain(self.kept.lock().values())
            .map(|f| f.values().map(|(b, _)| b.len() as u64).sum::<u64>())
            .sum();
        Ok(AgentHealth {
            status: "ok".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            backend: "stub".into(),
            // Says nothing, as a Go-era agent: the registration's declared arch counts.
            arch: String::new(),
            acceleration: None,
            capacity: *self.capacity.lock(),
            allocated,
            // The Go-era wire: no one-call provisioning (a provision is driven call by call).
            features: Vec::new(),
            artifact_bytes,
        })
    }

    async fn vm_create(&self, req: &AgentVmCreate) -> Result<AgentVm, ProviderError> {
        self.fault(|f| f.create.clone())?;
        // A fork starts with the files of the source's snapshot (and a template restore
        // with its memory: here, the same files).
        let files = match &req.from_snapshot {
            Some(src) => self
                .snapshot_files(&src.vm_id, &src.snapshot_id)
                .ok_or_else(|| {
                    ProviderError::NotFound(format!(
                        "snapshot {} of {}",
                        src.snapshot_id, src.vm_id
                    ))
                })?,
            None => BTreeMap::new(),
        };
        let mut g = self.vms.lock();
        // The stub runs no probes: an exec probe of `false` fails, every other passes.
        let health = req.healthcheck.as_ref().map(|h| {
            let fails = h
                .exec
                .as_deref()
                .is_some_and(|a| a.first().is_some_and(|c| c == "false"));
            fuse_types::Health {
                state: if fails {
                    fuse_types::HealthState::Failing
                } else {
                    fuse_types::HealthState::Passing
                },
                since: Some(fuse_types::now()),
                failures: u32::from(fails),
                message: if fails {
                    "exit status 1".into()
                } else {
                    String::new()
                },
            }
        });
        if let (Some(h), true) = (&health, req.healthcheck_wait_ms > 0) {
            if h.state != fuse_types::HealthState::Passing {
                return Err(ProviderError::SetupFailed {
                    step: fuse_types::hostagent::SetupStep::Healthcheck,
                    message: format!("healthcheck did not pass: {}", h.message),
                });
            }
        }
        let vm = g.entry(req.name.clone()).or_insert_with(|| StubVm {
            spec: req.clone(),
            files,
            health: health.clone(),
            paused: req.warm.then(|| PausedInfo {
                kind: "warm".into(),
                size_bytes: 0,
                paused_unix: 0,
            }),
            created: Some(Instant::now()),
            ..StubVm::default()
        });
        Ok(Self::wire(&req.name, vm))
    }

    async fn vm_destroy(&self, vm_id: &str) -> Result<(), ProviderError> {
        let delay = *self.destroy_delay.lock();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        self.fault(|f| f.destroy.clone())?;
        // Its snapshots outlive it.
        if let Some(vm) = self.vms.lock().remove(vm_id) {
            let mut kept = self.kept.lock();
            for (sid, files) in vm.snapshots {
                kept.insert((vm_id.to_owned(), sid), files);
            }
        }
        Ok(())
    }

    async fn vm_list(&self, prefix: &str) -> Result<Vec<AgentVm>, ProviderError> {
        self.fault(|f| f.list.clone())?;
        if self.faults.lock().list_empty {
            return Ok(Vec::new());
        }
        let g = self.vms.lock();
        let mut v: Vec<AgentVm> = g
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, vm)| Self::wire(k, vm))
            .collect();
        v.sort_by(|a, b| a.vm_id.cmp(&b.vm_id));
        Ok(v)
    }

    async fn upload(
        &self,
        vm_id: &str,
        path: &str,
        content: &[u8],
        mode: u32,
    ) -> Result<(), ProviderError> {
        self.fault(|_| None)?;
        if !path.starts_with('/') {
            return Err(ProviderError::Rejected {
                status: 400,
                message: format!("path {path:?} must be absolute"),
            });
        }
        self.with_vm(vm_id, |vm| {
            vm.files.insert(path.to_owned(), (content.to_vec(), mode));
        })
    }

    async fn exec(
        &self,
        vm_id: &str,
        cmd: &[String],
        timeout: Duration,
    ) -> Result<ExecResponse, ProviderError> {
        self.fault(|_| None)?;
        // `sleep N` really waits (up to the limit), so slow provisions can be staged.
        let words: Vec<&str> = match cmd {
            [sh, flag, script] if sh == "sh" && (flag == "-c" || flag == "-lc") => {
                script.split_whitespace().collect()
            }
            _ => cmd.iter().map(String::as_str).collect(),
        };
        if let ["sleep", n] = words.as_slice() {
            if let Ok(secs) = n.parse::<f64>() {
                let want = Duration::from_secs_f64(secs.clamp(0.0, 3600.0));
                self.with_vm(vm_id, |vm| vm.execs.push(cmd.to_vec()))?;
                tokio::time::sleep(want.min(timeout)).await;
                return Ok(if want > timeout {
                    out(124, "", "timed out\n")
                } else {
                    out(0, "", "")
                });
            }
        }
        self.with_vm(vm_id, |vm| {
            vm.execs.push(cmd.to_vec());
            let argv: Vec<&str> = cmd.iter().map(String::as_str).collect();
            match argv.as_slice() {
                ["sh", "-c" | "-lc", script] => run_shell(vm, script, timeout),
                _ => run_argv(vm, &argv, timeout),
            }
        })
    }

    async fn start_agent(&self, vm_id: &str, spec: &AgentStart) -> Result<(), ProviderError> {
        self.fault(|_| None)?;
        self.with_vm(vm_id, |vm| {
            vm.agent = Some(spec.clone());
            vm.agent_running = true;
            vm.agent_starts += 1;
        })
    }

    async fn stop_agent(&self, vm_id: &str) -> Result<(), ProviderError> {
        self.fault(|_| None)?;
        self.with_vm(vm_id, |vm| vm.agent_running = false)
    }

    async fn snapshot_create(
        &self,
        vm_id: &str,
        snapshot_id: &str,
        mode: &str,
    ) -> Result<AgentSnapshot, ProviderError> {
        self.fault(|_| None)?;
        self.with_vm(vm_id, |vm| {
            let size: usize = vm.files.values().map(|(b, _)| b.len()).sum();
            vm.snapshots
                .insert(snapshot_id.to_owned(), vm.files.clone());
            AgentSnapshot {
                snapshot_id: snapshot_id.to_owned(),
                size_bytes: size as u64,
                mode: mode.to_owned(),
                digest: String::new(),
            }
        })
    }

    async fn snapshot_restore(&self, vm_id: &str, snapshot_id: &str) -> Result<(), ProviderError> {
        self.fault(|_| None)?;
        self.with_vm(vm_id, |vm| match vm.snapshots.get(snapshot_id) {
            Some(files) => {
                vm.files = files.clone();
                Ok(())
            }
            None => Err(ProviderError::NotFound(format!("snapshot {snapshot_id}"))),
        })?
    }

    async fn tunnel(&self, vm_id: &str, port: u16) -> Result<super::Tunnel, ProviderError> {
        self.fault(|_| None)?;
        if !self.vms.lock().contains_key(vm_id) {
            return Err(ProviderError::NotFound(format!("vm {vm_id}")));
        }
        let Some(host) = *self.tunnel_host.lock() else {
            return Err(ProviderError::Unsupported(
                "the ports proxy: the stub provider runs no guests to connect to".into(),
            ));
        };
        let connect = tokio::net::TcpStream::connect((host, port));
        match tokio::time::timeout(TUNNEL_CONNECT, connect).await {
            Ok(Ok(c)) => {
                let _ = c.set_nodelay(true);
                Ok(Box::new(c))
            }
            Ok(Err(e)) => Err(ProviderError::GuestRefused(format!(
                "the guest of vm {vm_id} refused a connection to port {port}: {e}"
            ))),
            Err(_) => Err(ProviderError::GuestRefused(format!(
                "the guest of vm {vm_id} did not accept a connection to port {port} within {} s",
                TUNNEL_CONNECT.as_secs()
            ))),
        }
    }

    async fn expose(
        &self,
        vm_id: &str,
        port: &fuse_types::hostagent::PortExpose,
    ) -> Result<fuse_types::hostagent::HostEndpoint, ProviderError> {
        self.fault(|_| None)?;
        self.with_vm(vm_id, |vm| {
            if !vm.spec.expose.contains(port) {
                vm.spec.expose.push(port.clone());
            }
            stub_endpoints(&vm.spec)
                .into_iter()
                .find(|e| e.port == port.port && e.protocol == port.protocol)
                .ok_or_else(|| ProviderError::Internal("the stub lost a forward".into()))
        })?
    }

    async fn vm_egress(
        &self,
        vm_id: &str,
        rules: &fuse_types::EgressRules,
    ) -> Result<(), ProviderError> {
        self.fault(|_| None)?;
        self.with_vm(vm_id, |vm| {
            vm.spec.egress = (!rules.is_default()).then(|| rules.clone());
            vm.egress_updates += 1;
        })
    }

    async fn snapshot_delete(&self, vm_id: &str, snapshot_id: &str) -> Result<(), ProviderError> {
        self.fault(|_| None)?;
        let mut g = self.vms.lock();
        if let Some(vm) = g.get_mut(vm_id) {
            vm.snapshots.remove(snapshot_id);
        }
        self.kept
            .lock()
            .remove(&(vm_id.to_owned(), snapshot_id.to_owned()));
        Ok(())
    }

    async fn exec_job(
        &self,
        vm_id: &str,
        job: &AgentExec,
    ) -> Result<AgentExecResult, ProviderError> {
        let timeout = Duration::from_millis(job.timeout_ms.unwrap_or(30_000));
        let enc = |x: &[u8]| base64::engine::general_purpose::STANDARD.encode(x);
        // `cat` with standard input echoes it (the one use of stdin the stub understands).
        let argv: Vec<&str> = job.cmd.iter().map(String::as_str).collect();
        if let (["cat"], Some(stdin)) = (argv.as_slice(), &job.stdin) {
            self.with_vm(vm_id, |vm| vm.execs.push(job.cmd.clone()))?;
            return Ok(AgentExecResult {
                stdout: stdin.clone(),
                ..AgentExecResult::default()
            });
        }
        let r = self.exec(vm_id, &job.cmd, timeout).await?;
        Ok(AgentExecResult {
            exit_code: r.exit_code,
            stdout: enc(r.stdout.as_bytes()),
            stderr: enc(r.stderr.as_bytes()),
            truncated: false,
        })
    }

    async fn exec_stream(&self, vm_id: &str, job: &AgentExec) -> Result<ExecStream, ProviderError> {
        use futures::StreamExt as _;
        let r = self.exec_job(vm_id, job).await?;
        let mut lines = Vec::new();
        if !r.stdout.is_empty() {
            lines.push(AgentExecChunk {
                stdout_b64: Some(r.stdout),
                ..AgentExecChunk::default()
            });
        }
        if !r.stderr.is_empty() {
            lines.push(AgentExecChunk {
                stderr_b64: Some(r.stderr),
                ..AgentExecChunk::default()
            });
        }
        lines.push(AgentExecChunk {
            exit_code: Some(r.exit_code),
            ..AgentExecChunk::default()
        });
        Ok(futures::stream::iter(lines.into_iter().map(Ok)).boxed())
    }

    async fn file_put(&self, vm_id: &str, file: FileUpload) -> Result<FileWritten, ProviderError> {
        use futures::StreamExt as _;
        use sha2::Digest as _;
        self.fault(|_| None)?;
        self.with_vm(vm_id, |_| ())?;
        // The stub keeps files in memory: it is for tests and the quick start.
        let mut bytes = Vec::new();
        let mut body = file.body;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| rejected(format!("reading the body: {e}")))?;
            bytes.extend_from_slice(&chunk);
        }
        let sum = hex::encode(sha2::Sha256::digest(&bytes));
        if let Some(want) = &file.sha256 {
            if !want.eq_ignore_ascii_case(&sum) {
                return Err(rejected(format!(
                    "checksum mismatch: the body's sha256 is {sum}, the request said {want}; nothing was written"
                )));
            }
        }
        let size = bytes.len() as u64;
        self.with_vm(vm_id, |vm| {
            vm.files
                .insert(file.path.clone(), (bytes, file.mode.unwrap_or(0o644)));
        })?;
        Ok(FileWritten {
            path: file.path,
            size,
            sha256: sum,
        })
    }

    async fn file_get(&self, vm_id: &str, path: &str) -> Result<FileDownload, ProviderError> {
        use futures::StreamExt as _;
        use sha2::Digest as _;
        self.fault(|_| None)?;
        let (bytes, _) = self
            .with_vm(vm_id, |vm| vm.files.get(path).cloned())?
            .ok_or_else(|| ProviderError::NotFound(format!("{path}: no such file or directory")))?;
        Ok(FileDownload {
            size: bytes.len() as u64,
            sha256: hex::encode(sha2::Sha256::digest(&bytes)),
            body: futures::stream::iter([Ok(bytes::Bytes::from(bytes))]).boxed(),
        })
    }

    async fn file_list(&self, vm_id: &str, path: &str) -> Result<FileList, ProviderError> {
        self.fault(|_| None)?;
        let base = format!("{}/", path.trim_end_matches('/'));
        let entries = self.with_vm(vm_id, |vm| {
            let mut seen = BTreeMap::new();
            for (p, (bytes, mode)) in &vm.files {
                let Some(rest) = p.strip_prefix(&base) else {
                    continue;
                };
                let (name, is_dir) = match rest.split_once('/') {
                    Some((dir, _)) => (dir, true),
                    None => (rest, false),
                };
                seen.entry(name.to_owned()).or_insert_with(|| FileEntry {
                    name: name.to_owned(),
                    path: format!("{base}{name}"),
                    kind: if is_dir { "dir" } else { "file" }.into(),
                    size: if is_dir { 0 } else { bytes.len() as u64 },
                    mode: format!("{:04o}", if is_dir { 0o755 } else { *mode }),
                    modified_at: String::new(),
                });
            }
            seen.into_values().collect::<Vec<_>>()
        })?;
        if entries.is_empty() && path != "/" {
            return Err(ProviderError::NotFound(format!(
                "{path}: no such file or directory"
            )));
        }
        Ok(FileList {
            entries,
            truncated: false,
        })
    }

    async fn file_delete(
        &self,
        vm_id: &str,
        path: &str,
        recursive: bool,
    ) -> Result<(), ProviderError> {
        self.fault(|_| None)?;
        let base = format!("{}/", path.trim_end_matches('/'));
        self.with_vm(vm_id, |vm| {
            if vm.files.remove(path).is_some() {
                return Ok(());
            }
            let under: Vec<String> = vm
                .files
                .keys()
                .filter(|p| p.starts_with(&base))
                .cloned()
                .collect();
            match (under.is_empty(), recursive) {
                (true, _) => Err(ProviderError::NotFound(format!(
                    "{path}: no such file or directory"
                ))),
                (false, false) => Err(rejected(
                    "the directory is not empty (remove it recursively)".into(),
                )),
                (false, true) => {
                    for p in under {
                        vm.files.remove(&p);
                    }
                    Ok(())
                }
            }
        })?
    }

    async fn vm_pause(&self, vm_id: &str) -> Result<AgentVm, ProviderError> {
        self.fault(|_| None)?;
        let mut g = self.vms.lock();
        let vm = g
            .get_mut(vm_id)
            .ok_or_else(|| ProviderError::NotFound(format!("vm {vm_id}")))?;
        if vm.paused.is_none() {
            let size = vm.files.values().map(|(b, _)| b.len() as u64).sum();
            vm.paused = Some(PausedInfo {
                kind: "live".into(),
                size_bytes: size,
                paused_unix: time::OffsetDateTime::now_utc().unix_timestamp() as u64,
            });
        }
        Ok(Self::wire(vm_id, vm))
    }

    async fn vm_resume(&self, vm_id: &str) -> Result<AgentVm, ProviderError> {
        self.fault(|f| f.create.clone())?;
        let mut g = self.vms.lock();
        let vm = g
            .get_mut(vm_id)
            .ok_or_else(|| ProviderError::NotFound(format!("vm {vm_id}")))?;
        vm.paused = None;
        Ok(Self::wire(vm_id, vm))
    }

    async fn vm_claim(&self, warm_id: &str, claim: &AgentClaim) -> Result<AgentVm, ProviderError> {
        self.fault(|f| f.create.clone())?;
        let mut g = self.vms.lock();
        match g.get(warm_id) {
            None => return Err(ProviderError::NotFound(format!("vm {warm_id}"))),
            Some(v) if v.paused.as_ref().is_none_or(|p| p.kind != "warm") => {
                return Err(ProviderError::Rejected {
                    status: 409,
                    message: format!("vm {warm_id} is not warm"),
                })
            }
            Some(_) => {}
        }
        let mut vm = g.remove(warm_id).unwrap_or_default();
        vm.paused = None;
        vm.spec.name = claim.name.clone();
        if !claim.expose.is_empty() {
            vm.spec.expose = claim.expose.clone();
        }
        if let Some(setup) = &claim.setup {
            for f in &setup.files {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(&f.content_b64)
                    .unwrap_or_default();
                vm.files.insert(f.path.clone(), (bytes, f.mode));
            }
            if let Some(a) = &setup.agent {
                vm.agent = Some(a.clone());
                vm.agent_running = true;
                vm.agent_starts += 1;
            }
        }
        let wire = Self::wire(&claim.name, &vm);
        g.insert(claim.name.clone(), vm);
        Ok(wire)
    }

    async fn migration_expect(&self, m: &AgentMigrationIn) -> Result<(), ProviderError> {
        self.fault(|_| None)?;
        if self.vms.lock().contains_key(&m.vm_id) {
            return Err(ProviderError::Rejected {
                status: 409,
                message: format!("vm {} already exists here", m.vm_id),
            });
        }
        self.incoming
            .lock()
            .insert(m.vm_id.clone(), (m.token.clone(), m.clone()));
        Ok(())
    }

    async fn vm_send(&self, vm_id: &str, send: &AgentSend) -> Result<AgentSent, ProviderError> {
        self.fault(|_| None)?;
        let vm = self
            .vms
            .lock()
            .get(vm_id)
            .cloned()
            .ok_or_else(|| ProviderError::NotFound(format!("vm {vm_id}")))?;
        if vm.paused.is_none() {
            return Err(ProviderError::Rejected {
                status: 409,
                message: format!("vm {vm_id} is not paused"),
            });
        }
        let target = send
            .target_url
            .strip_prefix("stub://")
            .and_then(|name| {
                let peers = self.peers.lock().clone()?;
                let peers = peers.upgrade()?;
                let t = peers.read().get(name).cloned();
                t
            })
            .ok_or_else(|| {
                ProviderError::Unavailable(format!("target {} unreachable", send.target_url))
            })?;
        target.fault(|_| None)?;
        let mut inc = target.incoming.lock();
        match inc.get(vm_id) {
            Some((token, _)) if *token == send.token => {}
            _ => {
                return Err(ProviderError::Rejected {
                    status: 401,
                    message: "the target refused the migration token".into(),
                })
            }
        }
        inc.remove(vm_id);
        drop(inc);
        let bytes: u64 = vm.files.values().map(|(b, _)| b.len() as u64).sum();
        target.vms.lock().insert(vm_id.to_owned(), vm);
        Ok(AgentSent {
            files: vec![ArtifactFile {
                name: "state".into(),
                size: bytes,
                sha256: String::new(),
            }],
            bytes,
            duration_ms: 0,
        })
    }

    async fn migration_abort(&self, vm_id: &str) -> Result<(), ProviderError> {
        self.fault(|_| None)?;
        self.incoming.lock().remove(vm_id);
        Ok(())
    }

    async fn snapshots_all(&self) -> Result<Option<Vec<AgentSnapshotRef>>, ProviderError> {
        self.fault(|f| f.list.clone())?;
        let mut v = Vec::new();
        let size =
            |f: &BTreeMap<String, (Vec<u8>, u32)>| f.values().map(|(b, _)| b.len() as u64).sum();
        for (id, vm) in self.vms.lock().iter() {
            for (sid, f) in &vm.snapshots {
                v.push(AgentSnapshotRef {
                    vm_id: id.clone(),
                    snapshot: AgentSnapshot {
                        snapshot_id: sid.clone(),
                        size_bytes: size(f),
                        mode: String::new(),
                        digest: String::new(),
                    },
                });
            }
        }
        for ((id, sid), f) in self.kept.lock().iter() {
            v.push(AgentSnapshotRef {
                vm_id: id.clone(),
                snapshot: AgentSnapshot {
                    snapshot_id: sid.clone(),
                    size_bytes: size(f),
                    mode: String::new(),
                    digest: String::new(),
                },
            });
        }
        Ok(Some(v))
    }
}

/// How long a stub tunnel waits for its connection.
const TUNNEL_CONNECT: Duration = Duration::from_secs(5);

/// The stub's forwards: host ports from 30000 on, in the order asked.
fn stub_endpoints(spec: &AgentVmCreate) -> Vec<fuse_types::hostagent::HostEndpoint> {
    spec.expose
        .iter()
        .enumerate()
        .map(|(i, e)| fuse_types::hostagent::HostEndpoint {
            port: e.port,
            protocol: e.protocol,
            host_port: 30000 + i as u16,
            address: format!("stub.invalid:{}", 30000 + i),
        })
        .collect()
}
