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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    /// The last failure, redacted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
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
}

/// The result of a command in a guest. A non-zero exit is a successful call.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecResponse {
    /// Exit code (127 if the command does not exist, 124 on timeout).
    pub exit_code: i32,
    /// Standard output (lossy UTF-8).
    pub stdout: String,
    /// Standard error (lossy UTF-8).
    pub stderr: String,
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
    /// Total resources.
    pub capacity: Resources,
    /// Resources reserved by live VMs.
    pub allocated: Resources,
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
    /// Capacity; when absent it is read from the host's `/healthz`.
    #[serde(default)]
    pub capacity: Option<Resources>,
}

/// `GET /v1/hosts` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostList {
    /// Every host.
    pub hosts: Vec<Host>,
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
    /// The snapshot the VM had been restored from when this one was taken, if any.
    #[serde(default)]
    pub parent_snapshot_id: Option<String>,
    /// `disk` or `full` (disk and memory).
    pub mode: String,
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
    /// The last failure, if any.
    #[serde(default)]
    pub last_error: Option<String>,
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
}

/// `GET /v1/snapshots` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotList {
    /// Matching snapshots.
    pub snapshots: Vec<Snapshot>,
}

/// One SSE `data:` payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateEvent {
    /// Event id (32 hex), also sent as the SSE `id:` line.
    pub id: String,
    /// Always `state`.
    pub event: String,
    /// The environment.
    pub vm_id: String,
    /// A lifecycle state, or `lost` when the host stopped answering.
    pub state: String,
    /// The agent URL.
    pub url: String,
    /// The last error, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When the change happened.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: Timestamp,
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
}
