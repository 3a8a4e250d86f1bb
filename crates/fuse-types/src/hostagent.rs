//! The host-agent wire (DESIGN §6): what the control plane sends to `fc-agent` and what it
//! answers. Byte payloads (file contents, command output) are standard base64.

use serde::{Deserialize, Serialize};

/// `details.reason` of a host-agent error whose VM did not boot (its message then carries
/// the tail of the guest's console, safe to show to the environment's owner).
pub const GUEST_DID_NOT_BOOT: &str = "guest_did_not_boot";

/// `POST /v1/vm` body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentVmCreate {
    /// VM id (prefix + task id).
    pub name: String,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mb: u64,
    /// Root disk in GiB.
    pub storage_gb: u64,
    /// The agent's port inside the VM; when given, the host forwards a port of its own to
    /// it and the VM's URL names that port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_port: Option<u16>,
}

/// `POST /v1/vm` answer and the items of `GET /v1/vm`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentVm {
    /// VM id on the host.
    pub vm_id: String,
    /// URL of the VM's agent as reachable from outside the host.
    #[serde(default)]
    pub url: String,
    /// `running`, `stopped`, … as the host sees it.
    #[serde(default)]
    pub state: String,
    /// Seconds since the host created it.
    #[serde(default)]
    pub age_seconds: u64,
    /// Why the VM is not running, when it died (its log tail).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `GET /v1/vm?prefix=` answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentVmList {
    /// VMs on the host.
    pub vms: Vec<AgentVm>,
}

/// `POST /v1/vm/{id}/upload` body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentUpload {
    /// Absolute guest path.
    pub path: String,
    /// Standard base64 content.
    pub content_b64: String,
    /// File mode (default 0644).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
}

/// `POST /v1/vm/{id}/exec` body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentExec {
    /// Argument vector.
    pub cmd: Vec<String>,
    /// Limit in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// `POST /v1/vm/{id}/exec` answer; output is base64.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentExecResult {
    /// Exit code.
    pub exit_code: i32,
    /// Standard output, base64.
    pub stdout: String,
    /// Standard error, base64.
    pub stderr: String,
}

/// `POST /v1/vm/{id}/start-agent` body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStart {
    /// Download URL of the agent binary (empty: already in the image).
    #[serde(default)]
    pub download_url: String,
    /// Launch command.
    pub command: String,
    /// Where the binary lives.
    pub binary_path: String,
    /// Listen address inside the guest.
    #[serde(default)]
    pub listen: String,
    /// The agent's bearer token.
    #[serde(default)]
    pub auth_token: String,
    /// Gateway URL.
    #[serde(default)]
    pub gateway: String,
    /// Gateway token.
    #[serde(default)]
    pub gateway_token: String,
}

/// `POST /v1/vm/{id}/snapshot` body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentSnapshotCreate {
    /// The control plane's snapshot id (the host uses it as its own id).
    pub snapshot_id: String,
    /// `disk` or `full`.
    pub mode: String,
}

/// A snapshot on a host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentSnapshot {
    /// Snapshot id.
    pub snapshot_id: String,
    /// Bytes used.
    #[serde(default)]
    pub size_bytes: u64,
    /// `disk` or `full`.
    #[serde(default)]
    pub mode: String,
}

/// `POST /v1/vm/{id}/restore` body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRestore {
    /// Snapshot to restore.
    pub snapshot_id: String,
}

/// `GET /healthz` answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentHealth {
    /// `ok`.
    pub status: String,
    /// Agent version.
    #[serde(default)]
    pub version: String,
    /// VMM backend (`firecracker`, `qemu`, `process`).
    #[serde(default)]
    pub backend: String,
    /// How guests run (`kvm`, `tcg`), for backends that choose (`qemu`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acceleration: Option<String>,
    /// Total capacity.
    #[serde(default)]
    pub capacity: crate::Resources,
    /// In use.
    #[serde(default)]
    pub allocated: crate::Resources,
}
