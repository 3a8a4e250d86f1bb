//! Request and response bodies of the control-plane REST API (DESIGN §2) and the SSE event
//! payload (§5). Unknown request fields are ignored, as the Go original did.

use crate::{HostState, SnapshotState, Timestamp, VmState};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Resources of a host: capacity or allocation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// Virtual CPUs.
    #[serde(default)]
    pub cpus: u32,
    /// Memory in MiB.
    #[serde(default)]
    pub ram_mb: u64,
    /// Disk in GiB.
    #[serde(default)]
    pub storage_gb: u64,
    /// Number of VMs.
    #[serde(default)]
    pub vm_count: u32,
}

impl Resources {
    /// What one VM of `spec` uses.
    pub fn for_spec(spec: &Spec) -> Self {
        Resources {
            cpus: spec.cpus,
            ram_mb: spec.ram_mb,
            storage_gb: spec.storage_gb,
            vm_count: 1,
        }
    }

    /// `self + other`, saturating.
    pub fn plus(self, o: Resources) -> Resources {
        Resources {
            cpus: self.cpus.saturating_add(o.cpus),
            ram_mb: self.ram_mb.saturating_add(o.ram_mb),
            storage_gb: self.storage_gb.saturating_add(o.storage_gb),
            vm_count: self.vm_count.saturating_add(o.vm_count),
        }
    }

    /// `self - other`, never below zero.
    pub fn minus(self, o: Resources) -> Resources {
        Resources {
            cpus: self.cpus.saturating_sub(o.cpus),
            ram_mb: self.ram_mb.saturating_sub(o.ram_mb),
            storage_gb: self.storage_gb.saturating_sub(o.storage_gb),
            vm_count: self.vm_count.saturating_sub(o.vm_count),
        }
    }

    /// Whether every dimension of `need` fits in `self`.
    pub fn covers(self, need: Resources) -> bool {
        self.cpus >= need.cpus
            && self.ram_mb >= need.ram_mb
            && self.storage_gb >= need.storage_gb
            && self.vm_count >= need.vm_count
    }
}

/// The resolved size and placement constraints of an environment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spec {
    /// Virtual CPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub ram_mb: u64,
    /// Root disk in GiB.
    pub storage_gb: u64,
    /// Required host region; empty means any.
    #[serde(default)]
    pub region: String,
    /// The reconciler fails the VM after this long in `running`.
    pub max_runtime_seconds: u64,
    /// CPU architecture the host must have (`amd64`, `arm64`); empty = any.
    #[serde(default)]
    pub arch: String,
    /// Destroy (or pause, see `on_idle`) after this many seconds without API calls, exec
    /// or guest network traffic; 0 = never.
    #[serde(default)]
    pub idle_timeout_seconds: u64,
    /// What the idle timeout does: `destroy` (the default) or `pause`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub on_idle: String,
    /// Exec, files and attach on a paused environment resume it first (else they answer
    /// 409).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub auto_resume: bool,
    /// The image asked for (recorded and echoed; hosts boot their configured rootfs).
    #[serde(default)]
    pub image: String,
    /// Pin to this host id; empty = any.
    #[serde(default)]
    pub host_id: String,
    /// Every pair must equal one of the host's labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Back guest memory with 2 MiB pages (recorded and echoed).
    #[serde(default)]
    pub huge_pages: bool,
    /// GPUs (always 0 here: no GPU hosts yet).
    #[serde(default)]
    pub gpus: u32,
    /// GPU model asked for.
    #[serde(default)]
    pub gpu_kind: String,
    /// MIG profile asked for.
    #[serde(default)]
    pub gpu_profile: String,
}

/// `spec` as a client sends it: every field optional, defaults filled in by the server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecInput {
    /// Virtual CPUs (default 1).
    #[serde(default)]
    pub cpus: Option<u32>,
    /// Memory in MiB (default 512).
    #[serde(default)]
    pub ram_mb: Option<u64>,
    /// Root disk in GiB (default 1).
    #[serde(default)]
    pub storage_gb: Option<u64>,
    /// Required host region.
    #[serde(default)]
    pub region: Option<String>,
    /// Maximum runtime (default 7200).
    #[serde(default)]
    pub max_runtime_seconds: Option<u64>,
    /// Host CPU architecture (`amd64`, `arm64`).
    #[serde(default)]
    pub arch: Option<String>,
    /// Idle limit in seconds (0 = none).
    #[serde(default)]
    pub idle_timeout_seconds: Option<u64>,
    /// `destroy` (default) or `pause` when idle.
    #[serde(default)]
    pub on_idle: Option<String>,
    /// Resume a paused environment on exec, files and attach.
    #[serde(default)]
    pub auto_resume: Option<bool>,
    /// Image name.
    #[serde(default)]
    pub image: Option<String>,
    /// Host pin.
    #[serde(default)]
    pub host_id: Option<String>,
    /// Label selectors.
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    /// Huge pages.
    #[serde(default)]
    pub huge_pages: Option<bool>,
    /// GPUs.
    #[serde(default)]
    pub gpus: Option<u32>,
    /// GPU model.
    #[serde(default)]
    pub gpu_kind: Option<String>,
    /// MIG profile.
    #[serde(default)]
    pub gpu_profile: Option<String>,
}

/// A transport of a published port.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP (the default).
    #[default]
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// `tcp` or `udp`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl std::str::FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "" | "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            _ => Err(format!("unknown protocol {s:?}; expected tcp or udp")),
        }
    }
}

/// A port to publish, as a client asks for it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExposeSpec {
    /// Guest port.
    #[serde(default)]
    pub port: u32,
    /// A name for the endpoint.
    #[serde(default, rename = "as")]
    pub as_: Option<String>,
    /// `tcp` (default) or `udp`.
    #[serde(default)]
    pub protocol: Option<String>,
    /// Whether the ports proxy lets anyone in (default: only callers with the API's bearer
    /// token, an API key or the environment's traffic token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public: Option<bool>,
}

/// A published port of an environment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// The name it was asked with (empty when none).
    #[serde(rename = "as")]
    pub as_: String,
    /// Where a client reaches it: for TCP the ports proxy's URL (host-based when the
    /// control plane has a proxy domain, else path-based); for UDP `udp://host:port`.
    pub url: String,
    /// `tcp` or `udp`.
    pub protocol: String,
    /// Guest port.
    pub port: u16,
    /// Whether the proxy lets anyone in (no token).
    #[serde(default)]
    pub public: bool,
    /// The path-based proxy URL (`…/v1/environments/{id}/ports/{port}/`; TCP only).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub proxy_url: String,
    /// The host-based proxy URL (`{scheme}://{port}-{id}.{domain}/`; TCP, with a domain).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host_url: String,
    /// The raw forward on the VM's host (`tcp://host:port` or `udp://host:port`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub forward_url: String,
}

/// An HTTP probe inside the guest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthcheckHttp {
    /// Guest port.
    #[serde(default)]
    pub port: u16,
    /// Request path, starting with `/` (default `/`).
    #[serde(default)]
    pub path: String,
}

/// The environment's readiness probe: exactly one of `http` and `exec`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthcheckSpec {
    /// GET against a guest port; 2xx and 3xx pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HealthcheckHttp>,
    /// Argument vector run in the guest; exit 0 passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<Vec<String>>,
    /// Seconds between attempts (0: 10).
    #[serde(default)]
    pub interval_seconds: u64,
    /// Bound on one attempt (0: 2).
    #[serde(default)]
    pub timeout_seconds: u64,
    /// Consecutive failures that make it `failing` (0: 3).
    #[serde(default)]
    pub retries: u32,
    /// Failures before the first pass within this many seconds are not counted.
    #[serde(default)]
    pub start_period_seconds: u64,
}

/// A healthcheck verdict.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthState {
    /// No verdict yet.
    #[default]
    Starting,
    /// The last attempt passed.
    Passing,
    /// `retries` consecutive attempts failed.
    Failing,
}

impl HealthState {
    /// The wire word.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Starting => "starting",
            HealthState::Passing => "passing",
            HealthState::Failing => "failing",
        }
    }
}

/// The last verdict of an environment's healthcheck.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// `starting`, `passing` or `failing`.
    pub state: HealthState,
    /// When it entered this state.
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub since: Option<Timestamp>,
    /// Consecutive failed attempts (0 while passing).
    pub failures: u32,
    /// The last failure's detail (empty while passing).
    pub message: String,
}

/// How outbound traffic is routed and what it may reach, as asked (at create, and the body
/// of `PUT /v1/environments/{id}/egress`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressSpec {
    /// `direct` (default; = `allow-all`), `allow-all`, `deny-all`, `allowlist`, or `proxy`
    /// (not available here).
    #[serde(default)]
    pub mode: Option<String>,
    /// With `allowlist`: the CIDRs, addresses, names and `*.` wildcards the VM may reach.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow: Option<Vec<String>>,
    /// What the VM may never reach (wins over `allow`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deny: Option<Vec<String>>,
    /// Proxy provider.
    #[serde(default)]
    pub provider: Option<String>,
    /// Proxy protocol.
    #[serde(default)]
    pub protocol: Option<String>,
}

/// How outbound traffic is routed and what it may reach.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressStatus {
    /// `direct` (the default, everything reachable), `allow-all`, `deny-all` or
    /// `allowlist`.
    pub mode: String,
    /// Proxy provider (empty for direct).
    pub provider: String,
    /// Proxy protocol (empty for direct).
    pub protocol: String,
    /// Proxy endpoint (empty for direct).
    pub endpoint: String,
    /// Allowed CIDRs and names (canonical spelling), for `allowlist`.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Refused CIDRs and names (canonical spelling).
    #[serde(default)]
    pub deny: Vec<String>,
}

/// Geometry of a graphical session (accepted; no desktop images yet).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesktopSpec {
    /// Width in pixels.
    #[serde(default)]
    pub width: u32,
    /// Height in pixels.
    #[serde(default)]
    pub height: u32,
    /// Window manager.
    #[serde(default)]
    pub wm: Option<String>,
}

/// Per-environment override of the agent profile.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentOverride {
    /// Where the guest downloads the agent binary from (empty: the binary is in the image).
    #[serde(default)]
    pub download_url: Option<String>,
    /// The agent's launch command (run with `sh -c`).
    #[serde(default)]
    pub command: Option<String>,
    /// The drain command (run with `sh -c`); empty skips the drain step.
    #[serde(default)]
    pub drain_command: Option<String>,
    /// The address the agent listens on inside the guest, e.g. `0.0.0.0:8443`.
    #[serde(default)]
    pub listen: Option<String>,
    /// Where the downloaded binary is installed in the guest (absolute; default the
    /// profile's path). A download replaces what the image has there.
    #[serde(default)]
    pub binary_path: Option<String>,
    /// Expected SHA-256 of the download (64 hex digits); a mismatch fails the create.
    #[serde(default)]
    pub sha256: Option<String>,
    /// How long the agent has to come up, in milliseconds (default: the server's
    /// `FUSE_AGENT_START_WINDOW_MS`, 3000): up when its `listen` port answers, or when it is
    /// still running at the end of the window.
    #[serde(default)]
    pub start_window_ms: Option<u64>,
}

/// `POST /v1/environments` body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateEnvironment {
    /// Required; see [`crate::TaskId`].
    #[serde(default)]
    pub task_id: Option<String>,
    /// Size and placement.
    #[serde(default)]
    pub spec: SpecInput,
    /// Standard base64 of the manifest JSON.
    #[serde(default)]
    pub manifest_inline: Option<String>,
    /// Secrets written for the agent; values never appear in logs or errors.
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
    /// Run with `sh -lc` after the files are written, before the agent starts.
    #[serde(default)]
    pub startup_script: Option<String>,
    /// Absolute guest path → standard base64 content, written before the startup script.
    #[serde(default)]
    pub files: BTreeMap<String, String>,
    /// Gateway the agent reports to.
    #[serde(default)]
    pub gateway_url: Option<String>,
    /// Token for the gateway.
    #[serde(default)]
    pub gateway_token: Option<String>,
    /// Agent profile override.
    #[serde(default)]
    pub agent: Option<AgentOverride>,
    /// Guest ports to publish on host ports.
    #[serde(default)]
    pub expose: Option<Vec<ExposeSpec>>,
    /// Readiness probe; the create waits for `passing`.
    #[serde(default)]
    pub healthcheck: Option<HealthcheckSpec>,
    /// Outbound routing and egress rules (`direct` routing only here).
    #[serde(default)]
    pub egress: Option<EgressSpec>,
    /// Desktop geometry (accepted; no desktop images yet).
    #[serde(default)]
    pub desktop: Option<DesktopSpec>,
    /// Start from this template (`POST /v1/templates`): its memory is restored into the
    /// new VM, which gets its own identity, instead of a cold boot.
    #[serde(default)]
    pub template: Option<String>,
    /// The original's name for starting from a snapshot: a template's name, or the id of a
    /// ready live snapshot.
    #[serde(default)]
    pub seed_snapshot_id: Option<String>,
}

/// An environment (a VM running an agent for a task).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Environment {
    /// VM prefix + task id.
    pub id: String,
    /// Lifecycle state.
    pub state: VmState,
    /// The task this environment serves.
    pub task_id: String,
    /// The host it was placed on (empty until placed).
    pub host_id: String,
    /// The agent's URL (empty until the host answered).
    pub url: String,
    /// Resolved spec.
    pub spec: Spec,
    /// Creation time.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: Timestamp,
    /// Last change.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: Timestamp,
    /// The last failure, redacted (empty when none).
    #[serde(default)]
    pub error: String,
    /// Published ports.
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// The healthcheck's last verdict; absent without a healthcheck.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
    /// Outbound routing.
    #[serde(default)]
    pub egress: EgressStatus,
    /// The per-environment token of the ports proxy (header `X-Fuse-Traffic-Token`, or
    /// `?fuse_token=` once in a browser); absent when the store keeps no secrets.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub traffic_token: String,
}

/// `POST /v1/environments/{id}?action=expose` body: one more published port.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExposeRequest {
    /// Guest port.
    #[serde(default)]
    pub port: u32,
    /// A name for the endpoint.
    #[serde(default, rename = "as")]
    pub as_: Option<String>,
    /// `tcp` (default) or `udp`.
    #[serde(default)]
    pub protocol: Option<String>,
    /// Whether the proxy lets anyone in.
    #[serde(default)]
    pub public: Option<bool>,
}

/// `GET /v1/environments` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvironmentList {
    /// One page.
    pub environments: Vec<Environment>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// `POST /v1/environments/{id}?action=exec` body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// Argument vector, run without a shell.
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    /// Shell command, run with `sh -c`.
    #[serde(default)]
    pub shell: Option<String>,
    /// Limit in milliseconds (default 30 000, at most 600 000).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory (absolute guest path).
    #[serde(default)]
    pub cwd: Option<String>,
    /// Standard input, base64 (none: the command reads end-of-file).
    #[serde(default)]
    pub stdin: Option<String>,
    /// `text` (default: output as lossy UTF-8) or `base64` (output exactly).
    #[serde(default)]
    pub output: Option<String>,
}

/// The result of a command in a guest. A non-zero exit is a successful call.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecResponse {
    /// Exit code (127 if the command does not exist, 124 on timeout).
    pub exit_code: i32,
    /// Standard output (lossy UTF-8, or base64 with `output: "base64"`).
    pub stdout: String,
    /// Standard error (lossy UTF-8, or base64 with `output: "base64"`).
    pub stderr: String,
    /// The output was cut at the buffered limit (4 MiB per stream; stream the exec for
    /// more). Absent when nothing was cut.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

/// A host as reported by the API. The host token is never returned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    /// Host id.
    pub id: String,
    /// Base URL of its `fc-agent`.
    pub url: String,
    /// Region label.
    pub region: String,
    /// Scheduling state.
    pub state: HostState,
    /// VMM backend its agent reported (`firecracker`, `qemu`, `process`) or was declared.
    #[serde(default)]
    pub backend: String,
    /// Operator-declared labels, matched by `spec.labels`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Total resources.
    pub capacity: HostCapacity,
    /// Resources reserved by live VMs.
    pub allocated: HostCapacity,
    /// Bytes its snapshots (`ready` or being taken) use on its disk; placement counts them,
    /// rounded up to whole GiB, against its storage.
    #[serde(default)]
    pub artifact_bytes: u64,
    /// Last time the host answered.
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub last_seen: Option<Timestamp>,
    /// Registration time (kept across re-registration).
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: Timestamp,
    /// Last change.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: Timestamp,
    /// Why the host is in its state (e.g. unreachable at registration), if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_reason: Option<String>,
    /// Non-fatal notices of a registration (only on the answer to `POST /v1/hosts`).
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// A host's resources as the wire carries them: [`Resources`] plus the architecture and
/// the GPU fields of the Go original (always empty here).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostCapacity {
    /// Virtual CPUs.
    #[serde(default)]
    pub cpus: u32,
    /// Memory in MiB.
    #[serde(default)]
    pub ram_mb: u64,
    /// Disk in GiB.
    #[serde(default)]
    pub storage_gb: u64,
    /// Number of VMs.
    #[serde(default)]
    pub vm_count: u32,
    /// CPU architecture (`amd64`, `arm64`); empty means amd64.
    #[serde(default)]
    pub arch: String,
    /// GPUs.
    #[serde(default)]
    pub gpus: u32,
    /// GPU model.
    #[serde(default)]
    pub gpu_kind: String,
    /// MIG instances by profile.
    #[serde(default)]
    pub mig_profiles: BTreeMap<String, u32>,
    /// Per-instance MIG inventory.
    #[serde(default)]
    pub mig_instances: Vec<serde_json::Value>,
    /// MIG instances bound to VMs.
    #[serde(default)]
    pub mig_instance_uuids: Vec<String>,
    /// Per-device GPU detail.
    #[serde(default)]
    pub gpu_devices: Vec<serde_json::Value>,
}

impl HostCapacity {
    /// The wire form of `r` on a host of `arch`.
    pub fn of(r: Resources, arch: &str) -> HostCapacity {
        HostCapacity {
            cpus: r.cpus,
            ram_mb: r.ram_mb,
            storage_gb: r.storage_gb,
            vm_count: r.vm_count,
            arch: arch.to_owned(),
            ..HostCapacity::default()
        }
    }

    /// The schedulable part.
    pub fn resources(&self) -> Resources {
        Resources {
            cpus: self.cpus,
            ram_mb: self.ram_mb,
            storage_gb: self.storage_gb,
            vm_count: self.vm_count,
        }
    }
}

/// `POST /v1/hosts` body: registers or updates a host by id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterHost {
    /// Host id (required).
    #[serde(default)]
    pub id: Option<String>,
    /// Base URL of its `fc-agent` (required), e.g. `http://10.0.0.5:8090`.
    #[serde(default)]
    pub url: Option<String>,
    /// Bearer token of its `fc-agent` (write-only).
    #[serde(default)]
    pub token: Option<String>,
    /// Region label.
    #[serde(default)]
    pub region: Option<String>,
    /// VMM backend; when absent it is read from the host's `/healthz`.
    #[serde(default)]
    pub backend: Option<String>,
    /// Labels matched by `spec.labels` (never probed).
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    /// Capacity; zero fields are read from the host's `/healthz`, and the host's live
    /// report never raises a declared value.
    #[serde(default)]
    pub capacity: Option<HostCapacity>,
}

/// `GET /v1/hosts` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostList {
    /// One page of hosts.
    pub hosts: Vec<Host>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// A snapshot of an environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Snapshot id.
    pub id: String,
    /// The environment it was taken of.
    pub vm_id: String,
    /// That environment's task.
    pub task_id: String,
    /// The API key the snapshot was taken with (empty: the master token).
    #[serde(default)]
    pub tenant_id: String,
    /// The snapshot the VM had been restored from when this one was taken (empty if none).
    #[serde(default)]
    pub parent_snapshot_id: String,
    /// `disk` or `full` (disk and memory), as asked.
    pub mode: String,
    /// What was written: `disk`, or `live` when memory was captured too.
    #[serde(default)]
    pub kind: String,
    /// The cache key of the setup step this snapshot is the artifact of (empty if none).
    #[serde(default)]
    pub layer_key: String,
    /// CPU architecture of the host that took it.
    #[serde(default)]
    pub arch: String,
    /// Hex sha256 of the disk image (empty until the host reported it).
    #[serde(default)]
    pub digest: String,
    /// Free-form labels.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// State.
    pub state: SnapshotState,
    /// Free text.
    #[serde(default)]
    pub comment: String,
    /// Bytes on the host.
    pub size_bytes: u64,
    /// Creation time.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: Timestamp,
    /// Last change.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: Timestamp,
    /// Garbage-collected after this time (unless it has children).
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub retention_until: Option<Timestamp>,
    /// The last failure (empty if none).
    #[serde(default)]
    pub last_error: String,
    /// Export reference (exports are not offered here: always empty).
    #[serde(default)]
    pub export_ref: String,
    /// Exports (always empty here).
    #[serde(default)]
    pub exports: Vec<serde_json::Value>,
}

/// `POST /v1/environments/{id}/snapshots` body (every field optional).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateSnapshot {
    /// `disk` (default) or `full`.
    #[serde(default)]
    pub mode: Option<String>,
    /// Free text (≤ 1024 bytes).
    #[serde(default)]
    pub comment: Option<String>,
    /// Keep at least this long; default from the server's configuration.
    #[serde(default)]
    pub retention_seconds: Option<u64>,
    /// Capture memory too (the same as `mode: "full"`).
    #[serde(default)]
    pub live: Option<bool>,
    /// Cache key of the setup step this is the artifact of.
    #[serde(default)]
    pub layer_key: Option<String>,
    /// Free-form labels (at most 64 pairs).
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
    /// Export reference (not offered here; a non-empty value is refused).
    #[serde(default)]
    pub export_ref: Option<String>,
}

/// `GET /v1/snapshots` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotList {
    /// One page of matching snapshots.
    pub snapshots: Vec<Snapshot>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// `GET /v1/snapshots/resolve` body: a miss is `found: false`, not an error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotResolve {
    /// Whether a ready snapshot matched.
    pub found: bool,
    /// The newest one that did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<Snapshot>,
}

/// `POST /v1/environments/{id}?action=fork` body (every field optional).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForkRequest {
    /// Start from this ready disk snapshot of the source instead of taking one now.
    #[serde(default)]
    pub reuse_snapshot_id: Option<String>,
    /// Comment of the snapshot taken for the fork.
    #[serde(default)]
    pub comment: Option<String>,
}

/// An API key's metadata; the raw key appears only in [`CreatedApiKey`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    /// `ak_` + 16 hex.
    pub id: String,
    /// Free text.
    pub label: String,
    /// Creation time.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: Timestamp,
    /// Last time it authenticated a request (to the minute or so).
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub last_used_at: Option<Timestamp>,
    /// When it was revoked.
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub revoked_at: Option<Timestamp>,
}

/// `POST /v1/api-keys` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedApiKey {
    /// The metadata.
    #[serde(flatten)]
    pub meta: ApiKey,
    /// The raw key: shown once, unrecoverable afterwards.
    pub key: String,
}

/// `POST /v1/api-keys` body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateApiKey {
    /// Free text (≤ 256 bytes).
    #[serde(default)]
    pub label: Option<String>,
}

/// `GET /v1/api-keys` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyList {
    /// Every key, revoked ones included, oldest first.
    pub api_keys: Vec<ApiKey>,
}

/// `GET /v1/version` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// The server's version.
    pub version: String,
    /// The commit it was built from (`unknown` outside a git checkout).
    pub commit: String,
    /// The REST API version (`v1`).
    pub api: String,
}

/// One SSE `data:` payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateEvent {
    /// Event id (32 hex), also sent as the SSE `id:` line.
    pub id: String,
    /// `state`, or `health` when the healthcheck's verdict changed.
    pub event: String,
    /// The environment.
    pub vm_id: String,
    /// A lifecycle state; `lost` when the host stopped answering (`running` or `draining`
    /// again when it came back); `idle` when the idle timeout passed (a destroy follows).
    pub state: String,
    /// The agent URL.
    pub url: String,
    /// The last error, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When the change happened.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: Timestamp,
    /// The healthcheck verdict, on `health` events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
    /// The template whose warm pool the VM belongs to, while it waits to be drawn (such
    /// VMs are hidden from lists and from the fleet-wide stream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
}

/// `GET /health` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthStatus {
    /// `ok`.
    pub status: String,
}

/// `GET /ready` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadyStatus {
    /// `ok` or `unavailable`.
    pub status: String,
    /// Per-check status (`ok` or a short reason).
    pub checks: BTreeMap<String, String>,
}

/// The resolved agent launch for one environment: what `start-agent` receives on the
/// host-agent wire (DESIGN §6) minus the secrets, which travel separately.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentSpec {
    /// Profile name (`fused`, `surfd`, or `custom` when overridden).
    pub profile: String,
    /// Where the guest downloads the agent binary from; empty when it is in the image.
    #[serde(default)]
    pub download_url: String,
    /// Where the binary lives in the guest.
    pub binary_path: String,
    /// Launch command (`sh -c`).
    pub command: String,
    /// Drain command (`sh -c`); empty skips the drain step.
    #[serde(default)]
    pub drain_command: String,
    /// Listen address inside the guest.
    #[serde(default)]
    pub listen: String,
    /// The port of `listen`, resolved once when the request is validated (the host
    /// forwards a port of its own to it). `None` when the agent listens nowhere known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Gateway URL handed to the agent.
    #[serde(default)]
    pub gateway: String,
    /// Expected SHA-256 (hex) of the download; empty: not checked.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sha256: String,
    /// The start window in milliseconds (`None`: the guest's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_window_ms: Option<u64>,
}

/// `POST /v1/templates` body: a named starting point, made from a running environment (a
/// live snapshot of it, taken now) or from a ready live snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateTemplate {
    /// Its name (`^[a-z0-9][a-z0-9._-]{0,62}$`), what creates name as `template`.
    #[serde(default)]
    pub name: String,
    /// A running environment to snapshot (memory and disk) now.
    #[serde(default)]
    pub from_environment: Option<String>,
    /// A ready live snapshot to use.
    #[serde(default)]
    pub from_snapshot: Option<String>,
    /// A warm pool kept for it.
    #[serde(default)]
    pub pool: Option<PoolSpec>,
}

/// A template's warm pool, as asked for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolSpec {
    /// Restored, paused VMs kept waiting on each host that has the template (0: none).
    #[serde(default)]
    pub per_host: u32,
}

/// `PATCH /v1/templates/{name}` body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateTemplate {
    /// The new pool size.
    #[serde(default)]
    pub pool: Option<PoolSpec>,
}

/// A template's warm pool, as it is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolStatus {
    /// Asked for, per host.
    pub per_host: u32,
    /// Paused and ready to be drawn.
    pub ready: u32,
    /// Being restored.
    pub warming: u32,
}

/// A template as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Template {
    /// Its name.
    pub name: String,
    /// The live snapshot it restores.
    pub snapshot_id: String,
    /// That snapshot's state (`ready` while the template is usable).
    pub state: String,
    /// The host holding it.
    pub host_id: String,
    /// The environment it was made from (it may be gone).
    #[serde(default)]
    pub source_environment_id: String,
    /// The size every environment started from it has.
    pub spec: Spec,
    /// Its warm pool.
    pub pool: PoolStatus,
    /// Creation time.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: Timestamp,
    /// Last change.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: Timestamp,
}

/// `GET /v1/templates` answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateList {
    /// Every template, by name.
    pub templates: Vec<Template>,
}
