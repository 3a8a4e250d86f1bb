//! The VMs of this host: their on-disk state (`<dir>/vms/<id>/vm.json`, written atomically),
//! adoption of running and paused VMs at start, reclaim of leftovers, and the lifecycle
//! operations (snapshots in [`snapshots`], healthchecks in [`health`], pause and resume in
//! `pause`, templates, warm VMs and claims in `template`).
//!
//! Each VM admits a bounded number of pending operations (`MAX_PENDING`); beyond it a
//! request is answered 503 at once instead of queueing without bound. Lifecycle operations
//! (destroy, snapshot, restore) of one VM are serialized by its lock; guest-link operations
//! (upload, exec, agent) run concurrently.

use crate::backend::{guest_socket, process_alive, BackendError, BootSpec, VmmBackend};
use crate::link::{Link, LinkError};
use fuse_guest::proto::{Op, Response};
use fuse_types::hostagent::{AgentVm, AgentVmCreate, HostEndpoint, HostVmState};
use fuse_types::Resources;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore};

pub mod agent;
mod boot;
pub mod health;
pub mod logs;
pub mod migrate;
mod pause;
pub mod ports;
pub mod setup;
pub mod snapshots;
mod template;

/// Pending operations admitted per VM.
pub const MAX_PENDING: usize = 32;

/// Host-agent errors, mapped to the JSON envelope by `http`. Each variant says what kind
/// of thing failed (the VM's state on disk, its backend, its guest link, its network, its
/// guest setup); the cause is its source.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// No such VM (or snapshot).
    #[error("{0} not found")]
    NotFound(String),
    /// Invalid input.
    #[error("{0}")]
    Invalid(String),
    /// Out of capacity, addresses or ports, or too busy now (retryable).
    #[error("{0}")]
    Busy(String),
    /// The VMM backend failed.
    #[error("{what}")]
    Backend {
        /// What was being done.
        what: &'static str,
        /// The cause.
        #[source]
        source: BackendError,
    },
    /// The VM's private link to its guest helper failed.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// The VM's network could not be set up.
    #[error("network")]
    Network(#[source] crate::net::NetError),
    /// The VM's state on disk could not be read or written.
    #[error("{what}")]
    State {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The VM's guest did not come up; the message carries its console's tail.
    #[error("{0}")]
    GuestDidNotBoot(String),
    /// The VM came up but a step of its guest setup failed; the message is the guest's.
    #[error("{message}")]
    SetupFailed {
        /// The step.
        step: fuse_types::hostagent::SetupStep,
        /// What failed, safe for the environment's owner.
        message: String,
    },
    /// A restored VM did not answer (the message carries its log tail).
    #[error("{0}")]
    RestoreFailed(String),
    /// The VM's state does not allow this now (it is paused, or not warm).
    #[error("{0}")]
    Conflict(String),
    /// This host's backend cannot do this (a memory restore on the `process` backend).
    #[error("{0}")]
    Unsupported(String),
    /// A transfer's one-time token is unknown, expired or spent.
    #[error("{0}")]
    Unauthorized(String),
    /// Another host's agent refused or failed a transfer.
    #[error("{0}")]
    Transfer(String),
}

impl VmError {
    /// A backend failure while doing `what`.
    pub fn backend(what: &'static str) -> impl FnOnce(BackendError) -> VmError {
        move |source| VmError::Backend { what, source }
    }

    /// A failure of the VM's files while doing `what`.
    pub fn state(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> VmError {
        let what = what.into();
        move |source| VmError::State { what, source }
    }
}

/// What is persisted per VM.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmMeta {
    /// VM id.
    pub vm_id: String,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mb: u64,
    /// Disk in GiB.
    pub storage_gb: u64,
    /// The watched process.
    pub pid: i32,
    /// Backend that booted it.
    pub backend: String,
    /// Creation time (Unix seconds).
    pub created_unix: u64,
    /// Token of the private link.
    pub token: String,
    /// Snapshots an older agent kept in the VM's directory (id → mode); moved into the
    /// snapshot store when the VM is adopted.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub snapshots: BTreeMap<String, String>,
    /// Its network.
    #[serde(default)]
    pub net: Option<crate::net::NetInfo>,
    /// Its URL.
    #[serde(default)]
    pub url: String,
    /// Its healthcheck, run for its whole life (again after an agent restart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<fuse_types::HealthcheckSpec>,
    /// Set while the VM is paused (its VMM stopped, its state in its directory) or warm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<PausedMeta>,
}

/// What is recorded of a paused VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PausedMeta {
    /// `live`, `disk` or `warm` (see [`fuse_types::hostagent::PausedInfo::kind`]).
    pub kind: String,
    /// Bytes its artifacts use.
    #[serde(default)]
    pub size_bytes: u64,
    /// When it was paused (Unix seconds).
    #[serde(default)]
    pub paused_unix: u64,
    /// Set by a migration receiver: the VM's network (address, gateway, tap) is not the one
    /// it was paused with, so its resume gives the guest its new one.
    #[serde(default)]
    pub moved: bool,
}

impl PausedMeta {
    /// Whether the VM is warm: held in its running VMM with its vCPUs stopped (it holds
    /// its memory, and its capacity).
    pub fn is_warm(&self) -> bool {
        self.kind == crate::backend::PAUSED_WARM
    }
}

/// One VM.
pub struct Vm {
    /// Persisted state.
    pub meta: RwLock<VmMeta>,
    /// Its directory.
    pub dir: PathBuf,
    link: Link,
    lifecycle: Mutex<()>,
    admission: Arc<Semaphore>,
    /// Its healthcheck, when it has one.
    pub health: Option<Arc<health::Check>>,
    /// A pause is under way: the VM is listed as running until it is recorded paused, so a
    /// reader never sees the moment between its VMM stopping and `paused` being written as
    /// a VM that died.
    pausing: std::sync::atomic::AtomicBool,
}

impl Vm {
    fn new(meta: VmMeta, dir: PathBuf, link: Link) -> Vm {
        Vm {
            health: meta
                .healthcheck
                .clone()
                .map(|h| Arc::new(health::Check::new(h))),
            meta: RwLock::new(meta),
            link,
            dir,
            lifecycle: Mutex::new(()),
            admission: Arc::new(Semaphore::new(MAX_PENDING)),
            pausing: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Marks a pause under way (see `pausing`) until the returned guard is dropped.
    pub(crate) fn pausing(&self) -> impl Drop + '_ {
        struct Guard<'a>(&'a std::sync::atomic::AtomicBool);
        impl Drop for Guard<'_> {
            fn drop(&mut self) {
                self.0.store(false, std::sync::atomic::Ordering::SeqCst);
            }
        }
        self.pausing
            .store(true, std::sync::atomic::Ordering::SeqCst);
        Guard(&self.pausing)
    }

    /// Admits one operation, or says the VM is too busy.
    pub fn admit(&self) -> Result<OwnedSemaphorePermit, VmError> {
        self.admission.clone().try_acquire_owned().map_err(|_| {
            VmError::Busy(format!(
                "vm {} has {MAX_PENDING} operations pending; retry later",
                self.meta.read().vm_id
            ))
        })
    }

    /// The link token, unless the VM is paused (its guest does not run: 409).
    fn token(&self) -> Result<String, VmError> {
        let m = self.meta.read();
        match &m.paused {
            Some(p) => Err(VmError::Conflict(format!(
                "vm {} is paused ({}); resume it first",
                m.vm_id,
                if p.is_warm() {
                    "warm: claim it"
                } else {
                    &p.kind
                }
            ))),
            None => Ok(m.token.clone()),
        }
    }

    /// Calls the guest.
    pub async fn guest(&self, op: Op, limit: Duration) -> Result<Vec<Response>, VmError> {
        Ok(self.link.call(&self.token()?, op, limit).await?)
    }

    /// Opens a request on the guest link whose lines are exchanged by the caller.
    pub async fn open(&self, op: Op, window: Option<u32>) -> Result<crate::link::Conn, VmError> {
        Ok(self.link.open(&self.token()?, op, window).await?)
    }

    /// Sends one request to the guest helper and forwards each response line to `tx` as it
    /// arrives (streamed exec).
    pub async fn guest_stream(
        &self,
        op: Op,
        limit: Duration,
        tx: &tokio::sync::mpsc::Sender<Response>,
    ) -> Result<(), VmError> {
        Ok(self
            .link
            .call_streaming(&self.token()?, op, limit, tx)
            .await?)
    }

    /// Its wire view; endpoint addresses name `public_host`.
    fn wire(&self, public_host: &str) -> AgentVm {
        let m = self.meta.read();
        let alive = process_alive(m.pid, &marker(&self.dir))
            || (m.paused.is_none() && self.pausing.load(std::sync::atomic::Ordering::SeqCst));
        // A paused VM has no process (a warm one has its VMM, holding it).
        let paused = m.paused.as_ref().filter(|p| !p.is_warm() || alive);
        let endpoints = m
            .net
            .iter()
            .flat_map(|n| &n.exposed)
            .map(|e| HostEndpoint {
                port: e.port,
                protocol: e.protocol,
                host_port: e.host_port,
                address: format!("{public_host}:{}", e.host_port),
            })
            .collect();
        AgentVm {
            endpoints,
            health: self.health.as_ref().map(|h| h.health()),
            net_bytes: m.net.as_ref().and_then(|n| n.bytes()),
            agent_restarts: None,
            agent_running: None,
            vm_id: m.vm_id.clone(),
            url: m.url.clone(),
            state: if paused.is_some() {
                HostVmState::Paused
            } else if alive {
                HostVmState::Running
            } else {
                HostVmState::Stopped
            },
            paused: paused.map(|p| fuse_types::hostagent::PausedInfo {
                kind: p.kind.clone(),
                size_bytes: p.size_bytes,
                paused_unix: p.paused_unix,
            }),
            setup: None,
            age_seconds: now_unix().saturating_sub(m.created_unix),
            // A VM that died says why: the tail of its console / helper log.
            error: (!alive && paused.is_none()).then(|| {
                format!(
                    "vm process {} is not running; log tail: {}",
                    m.pid,
                    log_tail(&self.dir)
                )
            }),
        }
    }
}

/// What a VM's processes have on their command line: its directory with a trailing slash
/// (so `vms/fuse-a/` never matches `vms/fuse-ab/…`).
fn marker(dir: &Path) -> String {
    format!("{}/", dir.display())
}

/// The last lines of a VM's console, VMM and helper logs.
pub fn log_tail(dir: &Path) -> String {
    let mut out = String::new();
    // The console last: it says most about a guest that did not come up.
    for f in ["firecracker.log", "qemu.log", "guest.log", "console.log"] {
        for l in fuse_firecracker::tail_lines(&dir.join(f), 5) {
            out.push_str(l.trim());
            out.push_str(" | ");
        }
    }
    out
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Saves the VM's state (it holds the link token: private, written atomically).
fn write_meta(dir: &Path, m: &VmMeta) -> Result<(), VmError> {
    // Plain data always serialises.
    let body = serde_json::to_vec_pretty(m).unwrap_or_default();
    crate::files::write_private_atomic(&dir.join("vm.json"), &body)
        .map_err(VmError::state("saving VM state"))
}

/// Counts of what happened at start.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StartReport {
    /// Running VMs taken over.
    pub adopted: usize,
    /// Dead VMs and stray directories removed.
    pub reclaimed: usize,
    /// Network leftovers removed (rules, devices, namespaces).
    pub net: crate::net::Reclaimed,
}

/// How the host is set up.
#[derive(Debug, Clone)]
pub struct Options {
    /// Offered capacity.
    pub capacity: Resources,
    /// How long a guest helper may take to answer after boot.
    pub boot_timeout: Duration,
    /// The /30 pool, when the host does networking.
    pub pool: Option<crate::net::Pool>,
    /// Host ports for forwards.
    pub forward_ports: (u16, u16),
    /// Address put in VM URLs.
    pub public_host: String,
    /// The host's networking (netlink and nftables), when it does networking.
    pub net: Option<Arc<crate::net::Net>>,
}

/// Every VM on this host.
pub struct Vms {
    root: PathBuf,
    snaps: snapshots::SnapshotStore,
    backend: Arc<dyn VmmBackend>,
    map: RwLock<HashMap<String, Arc<Vm>>>,
    /// Offered capacity.
    pub capacity: Resources,
    creating: Mutex<()>,
    pending: parking_lot::Mutex<HashMap<String, Pending>>,
    opts: Options,
    arrivals: migrate::Arrivals,
}

/// A VM's address slot, its optional (host port, agent port) forward and its exposed
/// ports with their host ports.
#[derive(Debug, Clone)]
struct NetPlan {
    index: u32,
    forward: Option<(u16, u16)>,
    exposed: Vec<crate::net::Exposed>,
}

/// A create admitted but not finished: its resources, address slot and ports are taken.
#[derive(Debug, Clone)]
struct Pending {
    need: Resources,
    index: Option<u32>,
    ports: Vec<u16>,
}

impl Pending {
    /// What a VM being made holds until it exists: its size, its address slot and the host
    /// ports of its network plan.
    fn of(need: Resources, plan: Option<&NetPlan>) -> Pending {
        Pending {
            need,
            index: plan.map(|p| p.index),
            ports: plan
                .iter()
                .flat_map(|p| {
                    p.forward
                        .map(|f| f.0)
                        .into_iter()
                        .chain(p.exposed.iter().map(|e| e.host_port))
                })
                .collect(),
        }
    }
}

/// Removes a pending entry when the create ends, however it ends.
struct PendingGuard<'a> {
    vms: &'a Vms,
    id: String,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.vms.pending.lock().remove(&self.id);
    }
}

/// Egress rules as sent, checked again here (the agent trusts no caller's validation) and
/// put in their canonical spelling.
fn check_egress(r: &fuse_types::EgressRules) -> Result<fuse_types::EgressRules, VmError> {
    fuse_types::EgressRules::build("egress", r.mode, &r.allow, &r.deny)
        .map_err(|errs| VmError::Invalid(errs.join("; ")))
}

/// VM ids are used as directory names: the same rule as control-plane ids.
pub fn check_id(id: &str) -> Result<(), VmError> {
    fuse_types::VmId::parse(id)
        .map(|_| ())
        .map_err(|e| VmError::Invalid(e.0))
}

impl Vms {
    /// Loads the VMs under `root/vms`: adopts those whose process still runs, reclaims the
    /// rest (stop, then remove the directory), in that order.
    pub async fn load(
        root: PathBuf,
        backend: Arc<dyn VmmBackend>,
        opts: Options,
    ) -> Result<(Vms, StartReport), std::io::Error> {
        let dir = root.join("vms");
        crate::files::create_private_dir(&dir)?;
        let snaps = snapshots::SnapshotStore::new(root.join("snapshots"));
        crate::files::create_private_dir(&root.join("snapshots"))?;
        snaps.clean_partial();
        let vms = Vms {
            root: dir.clone(),
            snaps,
            backend,
            map: RwLock::new(HashMap::new()),
            capacity: opts.capacity,
            creating: Mutex::new(()),
            pending: parking_lot::Mutex::new(HashMap::new()),
            arrivals: migrate::Arrivals::new(root.join("incoming"))?,
            opts,
        };
        let mut report = StartReport::default();
        for entry in std::fs::read_dir(&dir)?.flatten() {
            let path = entry.path();
            if !path.is_dir() {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let meta: Option<VmMeta> = std::fs::read(path.join("vm.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            match meta {
                // A paused VM has no process; a warm one must still have its VMM.
                Some(mut m)
                    if m.paused.as_ref().is_some_and(|p| !p.is_warm())
                        || process_alive(m.pid, &marker(&path)) =>
                {
                    tracing::info!(vm_id = %m.vm_id, pid = m.pid, paused = m.paused.is_some(), "adopted a VM");
                    if m.paused.as_ref().is_some_and(|p| !p.is_warm()) {
                        // A paused VM runs nothing: a process in its directory is a VMM of a
                        // resume the previous agent did not finish (it holds the tap).
                        let killed = crate::backend::kill_by_marker(&marker(&path));
                        if killed > 0 {
                            tracing::info!(vm_id = %m.vm_id, killed, "killed the VMM of an unfinished resume");
                        }
                    }
                    if !m.snapshots.is_empty() {
                        vms.snaps.adopt_legacy(&m.vm_id, &path, &m.snapshots);
                        m.snapshots.clear();
                        if let Err(e) = write_meta(&path, &m) {
                            tracing::warn!(vm_id = %m.vm_id, error = %crate::error_chain(&e), "saving VM state");
                        }
                    }
                    let link = Link::new(guest_socket(&path), vms.backend.transport());
                    let vm = Arc::new(Vm::new(m, path, link));
                    if let Some(h) = &vm.health {
                        h.start(vm.clone());
                    }
                    vms.map
                        .write()
                        .insert(vm.meta.read().vm_id.clone(), vm.clone());
                    report.adopted += 1;
                }
                other => {
                    if let Some(m) = &other {
                        vms.backend.stop(&path, m.pid).await;
                        if let (Some(n), Some(net)) = (&m.net, &vms.opts.net) {
                            if let Err(e) = net.teardown(&m.vm_id, n, None).await {
                                tracing::warn!(vm_id = %m.vm_id, error = %e.report(), "removing a dead VM's network");
                            }
                        }
                    }
                    // Processes of a VM whose state was never written (or is unreadable).
                    let killed = crate::backend::kill_by_marker(&marker(&path));
                    if killed > 0 {
                        tracing::info!(dir = %path.display(), killed, "killed leftover VM processes");
                    }
                    tracing::info!(dir = %path.display(), "reclaimed a leftover VM directory");
                    let _ = tokio::fs::remove_dir_all(&path).await;
                    report.reclaimed += 1;
                }
            }
        }
        // Then network leftovers no adopted VM owns (nftables state, devices, namespaces).
        if let Some(net) = &vms.opts.net {
            // A paused VM whose namespace is gone (it was kept by a mount of the previous
            // agent's mount namespace) has its network removed here with the leftovers and
            // made again below.
            let gone = |n: &crate::net::NetInfo| {
                n.netns
                    .as_ref()
                    .is_some_and(|ns| crate::net::ns::id_of(&crate::net::ns::path(ns)).is_none())
            };
            let mut remake = Vec::new();
            let live: Vec<(String, crate::net::NetInfo)> = vms
                .map
                .read()
                .values()
                .filter_map(|v| {
                    let m = v.meta.read();
                    let n = m.net.clone()?;
                    if m.paused.is_some() && gone(&n) {
                        remake.push(v.clone());
                        return None;
                    }
                    Some((m.vm_id.clone(), n))
                })
                .collect();
            report.net = net
                .reclaim(&live)
                .await
                .map_err(|e| std::io::Error::other(e.report()))?;
            for vm in remake {
                vms.net_remake(net, &vm).await;
            }
        }
        Ok((vms, report))
    }

    /// The backend's acceleration, when it has one.
    pub fn acceleration(&self) -> Option<String> {
        self.backend.acceleration()
    }

    /// Whether the backend restores memory into new VMs (templates, warm VMs).
    pub fn restores_memory(&self) -> bool {
        self.backend.restores_memory()
    }

    /// The backend's name.
    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    /// One VM.
    pub fn get(&self, id: &str) -> Result<Arc<Vm>, VmError> {
        self.map
            .read()
            .get(id)
            .cloned()
            .ok_or_else(|| VmError::NotFound(format!("vm {id}")))
    }

    /// The wire view of one VM.
    pub fn describe(&self, id: &str) -> Result<AgentVm, VmError> {
        Ok(self.get(id)?.wire(&self.opts.public_host))
    }

    /// Whether this host publishes guest ports (it does per-VM networking).
    pub fn can_expose(&self) -> bool {
        self.opts.pool.is_some() && self.opts.net.is_some()
    }

    /// VMs whose id starts with `prefix`, by id.
    pub fn list(&self, prefix: &str) -> Vec<AgentVm> {
        let mut v: Vec<AgentVm> = self
            .map
            .read()
            .values()
            .filter(|vm| vm.meta.read().vm_id.starts_with(prefix))
            .map(|vm| vm.wire(&self.opts.public_host))
            .collect();
        v.sort_by(|a, b| a.vm_id.cmp(&b.vm_id));
        v
    }

    /// What the VMs use.
    pub fn allocated(&self) -> Resources {
        self.map
            .read()
            .values()
            .fold(Resources::default(), |acc, vm| {
                let m = vm.meta.read();
                // A paused VM holds its disk only; a warm one holds its memory too.
                let held = m.paused.as_ref().is_none_or(PausedMeta::is_warm);
                acc.plus(Resources {
                    cpus: if held { m.cpus } else { 0 },
                    ram_mb: if held { m.memory_mb } else { 0 },
                    storage_gb: m.storage_gb,
                    vm_count: u32::from(held),
                })
            })
    }

    /// Creates and boots a VM (its root disk a copy of a snapshot's for a fork, its ports
    /// published, its healthcheck recorded: [`Vms::health_start`] starts it), waiting until
    /// its guest helper answers. Idempotent: an existing VM with this id is returned as it
    /// is.
    pub async fn create(&self, req: &AgentVmCreate) -> Result<(AgentVm, bool), VmError> {
        let (id, cpus, memory_mb, storage_gb) =
            (req.name.as_str(), req.cpus, req.memory_mb, req.storage_gb);
        check_id(id)?;
        if cpus == 0 || memory_mb == 0 || storage_gb == 0 {
            return Err(VmError::Invalid(
                "cpus, memory_mb and storage_gb must be positive".into(),
            ));
        }
        if let Some(h) = &req.healthcheck {
            health::validate(h)?;
        }
        if !req.expose.is_empty() && !self.can_expose() {
            return Err(VmError::Invalid(
                "expose needs per-VM networking, which is off on this host".into(),
            ));
        }
        let egress = req.egress.as_ref().map(check_egress).transpose()?;
        if egress.as_ref().is_some_and(|r| !r.is_default()) && !self.can_expose() {
            return Err(VmError::Invalid(
                "egress rules need per-VM networking, which is off on this host".into(),
            ));
        }
        if let Some(p) = req.expose.iter().find(|e| e.port == 0) {
            return Err(VmError::Invalid(format!(
                "expose: guest port {} must be 1-65535",
                p.port
            )));
        }
        let memory = req.from_snapshot.as_ref().filter(|s| s.memory);
        if req.warm && memory.is_none() {
            return Err(VmError::Invalid(
                "warm needs from_snapshot with memory: true".into(),
            ));
        }
        let template = memory
            .map(|src| self.template_source(src, cpus, memory_mb))
            .transpose()?;
        let base = match (&req.from_snapshot, &template) {
            (Some(src), None) => Some(self.fork_source(src)?),
            _ => None,
        };
        let need = Resources {
            cpus,
            ram_mb: memory_mb,
            storage_gb,
            vm_count: 1,
        };
        // Admission under a short lock: id, capacity (live and pending), address slot and
        // forward port. Booting happens outside it, so creates run in parallel.
        let plan = {
            let _g = self.creating.lock().await;
            if let Ok(vm) = self.get(id) {
                return Ok((vm.wire(&self.opts.public_host), false));
            }
            let dir = self.root.join(id);
            if template::dir_in_use(self.map.read().values().map(|v| v.dir.as_path()), &dir) {
                return Err(VmError::Conflict(format!(
                    "the directory of vm {id} belongs to a claimed VM; choose another id"
                )));
            }
            let mut pending = self.pending.lock();
            if pending.contains_key(id) {
                return Err(VmError::Busy(format!("vm {id} is being created; retry")));
            }
            let used = self.in_use(&pending);
            if !self.capacity.minus(used).covers(need) {
                return Err(VmError::Busy(format!(
                    "host is full ({} of {} VMs); retry on another host",
                    used.vm_count, self.capacity.vm_count
                )));
            }
            let plan = self.net_plan(req.agent_port, &req.expose, &pending)?;
            pending.insert(id.to_owned(), Pending::of(need, plan.as_ref()));
            plan
        };
        let _pending = PendingGuard {
            vms: self,
            id: id.to_owned(),
        };
        let dir = self.root.join(id);
        let _ = tokio::fs::remove_dir_all(&dir).await;
        crate::files::create_private_dir(&dir)
            .map_err(VmError::state("creating the VM directory"))?;
        let token = {
            use rand::RngCore;
            let mut b = [0u8; 32];
            rand::thread_rng().fill_bytes(&mut b);
            hex::encode(b)
        };
        let net = match self.net_setup(id, plan, egress).await {
            Ok(n) => n,
            Err(e) => {
                let _ = tokio::fs::remove_dir_all(&dir).await;
                return Err(e);
            }
        };
        let url = self.agent_url(net.as_ref(), req.agent_port);
        let spec = BootSpec {
            vm_id: id.to_owned(),
            dir: dir.clone(),
            cpus,
            memory_mb,
            storage_gb,
            token: token.clone(),
            net: net.clone(),
            base,
        };
        let undo_net = || async {
            if let (Some(n), Some(h)) = (&net, &self.opts.net) {
                if let Err(e) = h.teardown(id, n, None).await {
                    tracing::warn!(vm_id = %id, error = %e.report(), "removing the network of a VM that did not boot");
                }
            }
        };
        let mut meta = VmMeta {
            vm_id: id.to_owned(),
            cpus,
            memory_mb,
            storage_gb,
            pid: -1,
            backend: self.backend.name().into(),
            created_unix: now_unix(),
            token,
            snapshots: BTreeMap::new(),
            net: net.clone(),
            url,
            healthcheck: req.healthcheck.clone(),
            paused: None,
        };
        let link = Link::new(guest_socket(&dir), self.backend.transport());
        let hostname = req.hostname.clone().unwrap_or_else(|| id.to_owned());
        let booted = match &template {
            Some(t) => {
                self.restore_until_ready(&spec, &mut meta, &link, t, &hostname, req.warm)
                    .await
            }
            None => self.boot_until_ready(&spec, &mut meta, &link).await,
        };
        if let Err(e) = booted {
            undo_net().await;
            let _ = tokio::fs::remove_dir_all(&dir).await;
            return Err(e);
        }
        if template.is_none() {
            self.hostname_at_boot(&link, &meta, &hostname).await;
        }
        let vm = Arc::new(Vm::new(meta, dir, link));
        let wire = vm.wire(&self.opts.public_host);
        self.map.write().insert(id.to_owned(), vm);
        tracing::info!(vm_id = %id, forked = req.from_snapshot.is_some(), memory = template.is_some(), warm = req.warm, "VM created");
        Ok((wire, true))
    }

    /// What the host's VMs use, live ones and those being made (`pending`).
    fn in_use(&self, pending: &HashMap<String, Pending>) -> Resources {
        let in_flight = pending
            .values()
            .fold(Resources::default(), |a, p| a.plus(p.need));
        self.allocated().plus(in_flight)
    }

    /// The URL of a VM's agent: its host port forwarded to the agent port, when it has one.
    fn agent_url(&self, net: Option<&crate::net::NetInfo>, agent_port: Option<u16>) -> String {
        match (net, agent_port) {
            (Some(n), Some(_)) => n
                .forward
                .map(|(hp, _)| format!("http://{}:{hp}", self.opts.public_host))
                .unwrap_or_default(),
            _ => String::new(),
        }
    }

    /// Starts the VM's healthcheck task, if it has a healthcheck (idempotent).
    pub fn health_start(&self, vm: &Arc<Vm>) {
        if let Some(h) = &vm.health {
            h.start(vm.clone());
        }
    }

    /// Whether `vm` is still the VM registered under `id` (not destroyed, not replaced by a
    /// re-create while we waited for its lock).
    fn still_current(&self, id: &str, vm: &Arc<Vm>) -> bool {
        self.map
            .read()
            .get(id)
            .is_some_and(|cur| Arc::ptr_eq(cur, vm))
    }

    /// Chooses a /30 slot and the host ports (the agent port's forward, one per exposed
    /// port) not used by live or pending VMs. One host port is never used twice, whatever
    /// the protocol.
    fn net_plan(
        &self,
        agent_port: Option<u16>,
        expose: &[fuse_types::hostagent::PortExpose],
        pending: &HashMap<String, Pending>,
    ) -> Result<Option<NetPlan>, VmError> {
        let Some(pool) = self.opts.pool else {
            return Ok(None);
        };
        let mut used: Vec<u32> = Vec::new();
        let mut ports: std::collections::HashSet<u16> = std::collections::HashSet::new();
        for v in self.map.read().values() {
            if let Some(n) = &v.meta.read().net {
                used.push(n.index);
                ports.extend(n.host_ports());
            }
        }
        for p in pending.values() {
            used.extend(p.index);
            ports.extend(p.ports.iter().copied());
        }
        let index = pool
            .first_free(&used)
            .ok_or_else(|| VmError::Busy("the VM address pool is exhausted".into()))?;
        let (lo, hi) = self.opts.forward_ports;
        let mut next = lo..=hi;
        let mut take = || {
            next.find(|p| !ports.contains(p))
                .ok_or_else(|| VmError::Busy("no forward port left".into()))
        };
        let forward = match agent_port {
            Some(ap) => Some((take()?, ap)),
            None => None,
        };
        let exposed = expose
            .iter()
            .map(|e| {
                Ok(crate::net::Exposed {
                    port: e.port,
                    protocol: e.protocol,
                    host_port: take()?,
                })
            })
            .collect::<Result<Vec<_>, VmError>>()?;
        Ok(Some(NetPlan {
            index,
            forward,
            exposed,
        }))
    }

    /// Sets the planned network up.
    async fn net_setup(
        &self,
        id: &str,
        plan: Option<NetPlan>,
        egress: Option<fuse_types::EgressRules>,
    ) -> Result<Option<crate::net::NetInfo>, VmError> {
        let (Some(pool), Some(net), Some(plan)) = (self.opts.pool, &self.opts.net, plan) else {
            return Ok(None);
        };
        let with_netns = self.backend.capabilities().netns;
        net.setup(
            id,
            plan.index,
            &pool,
            with_netns,
            plan.forward,
            plan.exposed,
            egress,
        )
        .await
        .map(Some)
        .map_err(VmError::Network)
    }

    /// Replaces a VM's egress rules, live (its lifecycle lock held, so it never races a
    /// destroy), and persists them with its network.
    pub async fn egress_set(
        &self,
        id: &str,
        rules: &fuse_types::EgressRules,
    ) -> Result<fuse_types::EgressRules, VmError> {
        let rules = check_egress(rules)?;
        let vm = self.get(id)?;
        let _l = vm.lifecycle.lock().await;
        if !self.still_current(id, &vm) {
            return Err(VmError::NotFound(format!("vm {id}")));
        }
        let info = vm.meta.read().net.clone();
        let (Some(info), Some(net)) = (info, &self.opts.net) else {
            return Err(VmError::Invalid(
                "egress rules need per-VM networking, which is off on this host".into(),
            ));
        };
        let next = net
            .egress_update(id, &info, rules.clone())
            .await
            .map_err(VmError::Network)?;
        let meta = {
            let mut m = vm.meta.write();
            m.net = Some(next);
            m.clone()
        };
        write_meta(&vm.dir, &meta)?;
        tracing::info!(vm_id = %id, mode = rules.mode.as_str(), allow = rules.allow.len(), deny = rules.deny.len(), "egress rules replaced");
        Ok(rules)
    }

    /// A VM's egress rules (the defaults when it has none).
    pub fn egress_get(&self, id: &str) -> Result<fuse_types::EgressRules, VmError> {
        let vm = self.get(id)?;
        let m = vm.meta.read();
        Ok(m.net
            .as_ref()
            .and_then(|n| n.egress.clone())
            .unwrap_or_default())
    }

    /// Stops and removes a VM: its healthcheck, its process, its network and its
    /// directory. Its snapshots stay (in the snapshot store) until deleted.
    pub async fn destroy(&self, id: &str) -> Result<(), VmError> {
        let vm = match self.get(id) {
            Ok(vm) => vm,
            Err(e) if self.pending.lock().contains_key(id) => {
                return Err(VmError::Busy(format!(
                    "vm {id} is being created; retry the delete ({e})"
                )))
            }
            Err(e) => return Err(e),
        };
        // No admission slot: a tenant's long commands must never block a destroy.
        let _l = vm.lifecycle.lock().await;
        if !self.still_current(id, &vm) {
            return Ok(());
        }
        if let Some(h) = &vm.health {
            h.stop();
        }
        let (pid, net) = {
            let m = vm.meta.read();
            (m.pid, m.net.clone())
        };
        // The VM's namespace, held while its process (ours: checked by its command line)
        // still runs, so the teardown finds what else runs in it after the stop.
        let pin = net
            .as_ref()
            .filter(|n| n.netns.is_some() && process_alive(pid, &marker(&vm.dir)))
            .and_then(|_| crate::net::ns::Pin::of_pid(pid));
        self.backend.stop(&vm.dir, pid).await;
        if let (Some(n), Some(h)) = (net, &self.opts.net) {
            // A leftover is not worth failing the destroy for: the next start reclaims it.
            if let Err(e) = h.teardown(id, &n, pin).await {
                tracing::warn!(vm_id = %id, error = %e.report(), "removing the VM's network");
            }
        }
        tokio::fs::remove_dir_all(&vm.dir)
            .await
            .or_else(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    Ok(())
                } else {
                    Err(e)
                }
            })
            .map_err(VmError::state("removing the VM directory"))?;
        self.map.write().remove(id);
        tracing::info!(vm_id = %id, "VM destroyed");
        Ok(())
    }
}
