//! Storage rows. They are separate from the wire types: they carry what the control plane
//! needs internally (generation, reservation, idempotency fingerprint).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

use fuse_types::{
    AgentSpec, Environment, Host, HostId, HostState, Resources, Snapshot, SnapshotId,
    SnapshotState, Spec, TaskId, Timestamp, VmId, VmState,
};

/// Per-VM secrets the control plane keeps to (re)configure the agent: encrypted at rest by
/// the Postgres backend, never persisted without an encryption key, never logged.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSecrets {
    /// The agent's bearer token (64 hex).
    pub auth_token: String,
    /// The gateway token.
    pub gateway_token: String,
    /// The create request's secrets map.
    pub secrets: BTreeMap<String, String>,
    /// The agent's TLS certificate (PEM, self-signed, CN = VM id).
    pub tls_cert_pem: String,
    /// The agent's TLS key (PEM).
    pub tls_key_pem: String,
}

impl VmSecrets {
    /// Every secret value, for redaction of error text.
    pub fn values(&self) -> Vec<String> {
        let mut v: Vec<String> = self.secrets.values().cloned().collect();
        v.push(self.gateway_token.clone());
        v.push(self.auth_token.clone());
        v
    }
}

impl fmt::Debug for VmSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "VmSecrets {{ {} secret(s), redacted }}",
            self.secrets.len()
        )
    }
}

/// One environment.
#[derive(Debug, Clone, PartialEq)]
pub struct VmRecord {
    /// VM id (prefix + task id).
    pub id: VmId,
    /// Task id.
    pub task_id: TaskId,
    /// Lifecycle state.
    pub state: VmState,
    /// Bumped on every write; writers pass the generation they read.
    pub generation: u64,
    /// The host it is placed on; `None` until placed. `default` for the default provider.
    pub host_id: Option<HostId>,
    /// Resources reserved on `host_id`, until released (exactly once).
    pub reserved: Option<Resources>,
    /// Agent URL.
    pub url: String,
    /// Resolved spec.
    pub spec: Spec,
    /// Fingerprint of the create request, for idempotent create.
    pub request_hash: String,
    /// The resolved agent launch (no secrets).
    pub agent: AgentSpec,
    /// The last failure, redacted.
    pub error: Option<String>,
    /// The snapshot the VM was last restored from.
    pub restored_from: Option<SnapshotId>,
    /// Creation time.
    pub created_at: Timestamp,
    /// Last change.
    pub updated_at: Timestamp,
    /// When the VM entered `running`.
    pub running_since: Option<Timestamp>,
    /// The control-plane replica that created it (its provision is that replica's job).
    pub owner: String,
    /// Secrets needed to re-configure the agent.
    pub secrets: Option<VmSecrets>,
}

impl VmRecord {
    /// The wire view.
    pub fn to_wire(&self) -> Environment {
        Environment {
            id: self.id.to_string(),
            state: self.state,
            task_id: self.task_id.to_string(),
            host_id: self
                .host_id
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            url: self.url.clone(),
            spec: self.spec.clone(),
            created_at: self.created_at,
            updated_at: self.updated_at,
            error: self.error.clone(),
        }
    }
}

/// A partial update of a VM. `None` leaves a field unchanged.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VmPatch {
    /// New state (checked against the lifecycle).
    pub state: Option<VmState>,
    /// New URL.
    pub url: Option<String>,
    /// New error (`Some(None)` clears it).
    pub error: Option<Option<String>>,
    /// New agent launch.
    pub agent: Option<AgentSpec>,
    /// New restored-from snapshot.
    pub restored_from: Option<Option<SnapshotId>>,
    /// New secrets (`Some(None)` forgets them).
    pub secrets: Option<Option<VmSecrets>>,
    /// Also return the VM's reservation to its host, in the same atomic step (exactly once,
    /// as [`crate::StateStore::vm_release`]).
    pub release: bool,
    /// Why (recorded in the audit event of a state change).
    pub reason: Option<String>,
    /// The audit event type of a write that keeps the state (`drain_failed`,
    /// `token_rotated`, …), appended in the same atomic step; a state change always
    /// appends its `state` event.
    pub audit: Option<String>,
}

impl VmPatch {
    /// A state change with a reason.
    pub fn state(state: VmState, reason: impl Into<String>) -> Self {
        VmPatch {
            state: Some(state),
            reason: Some(reason.into()),
            ..VmPatch::default()
        }
    }

    /// Sets the error too.
    pub fn with_error(mut self, error: impl Into<String>) -> Self {
        self.error = Some(Some(error.into()));
        self
    }
}

/// Filters of `GET /v1/environments`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VmFilter {
    /// Exact task id.
    pub task_id: Option<String>,
    /// Exact state.
    pub state: Option<VmState>,
    /// Exact host id.
    pub host_id: Option<String>,
}

impl VmFilter {
    /// Whether `r` matches.
    pub fn matches(&self, r: &VmRecord) -> bool {
        self.task_id
            .as_deref()
            .is_none_or(|t| r.task_id.as_str() == t)
            && self.state.is_none_or(|s| r.state == s)
            && self
                .host_id
                .as_deref()
                .is_none_or(|h| r.host_id.as_ref().is_some_and(|x| x.as_str() == h))
    }
}

/// One host.
#[derive(Debug, Clone, PartialEq)]
pub struct HostRecord {
    /// Host id.
    pub id: HostId,
    /// `fc-agent` base URL.
    pub url: String,
    /// `fc-agent` bearer token (never on the wire).
    pub token: String,
    /// Region label.
    pub region: String,
    /// Scheduling state.
    pub state: HostState,
    /// Why it is in that state.
    pub state_reason: Option<String>,
    /// Total resources.
    pub capacity: Resources,
    /// Reserved by live VMs.
    pub allocated: Resources,
    /// Last time it answered.
    pub last_seen: Option<Timestamp>,
    /// Registration time.
    pub created_at: Timestamp,
    /// Last change.
    pub updated_at: Timestamp,
}

impl HostRecord {
    /// The wire view (no token).
    pub fn to_wire(&self) -> Host {
        Host {
            id: self.id.to_string(),
            url: self.url.clone(),
            region: self.region.clone(),
            state: self.state,
            capacity: self.capacity,
            allocated: self.allocated,
            last_seen: self.last_seen,
            created_at: self.created_at,
            updated_at: self.updated_at,
            state_reason: self.state_reason.clone(),
        }
    }
}

/// Input of [`crate::StateStore::host_upsert`].
#[derive(Debug, Clone, PartialEq)]
pub struct HostUpsert {
    /// Host id.
    pub id: HostId,
    /// `fc-agent` base URL.
    pub url: String,
    /// `fc-agent` token.
    pub token: String,
    /// Region label.
    pub region: String,
    /// Total resources.
    pub capacity: Resources,
    /// State for a new host (an existing host keeps its state).
    pub initial_state: HostState,
    /// Reason for that state.
    pub initial_reason: Option<String>,
    /// Whether the host answered during registration.
    pub seen: bool,
}

/// One snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotRecord {
    /// Snapshot id.
    pub id: SnapshotId,
    /// The VM it was taken of.
    pub vm_id: VmId,
    /// The VM's task.
    pub task_id: TaskId,
    /// The host holding it.
    pub host_id: Option<HostId>,
    /// Parent snapshot.
    pub parent_id: Option<SnapshotId>,
    /// `disk` or `full`.
    pub mode: String,
    /// State.
    pub state: SnapshotState,
    /// Free text.
    pub comment: String,
    /// Bytes on the host.
    pub size_bytes: u64,
    /// The host's own id for it (may differ from ours).
    pub host_snapshot_id: String,
    /// Creation time.
    pub created_at: Timestamp,
    /// Last change.
    pub updated_at: Timestamp,
    /// GC after this time.
    pub retention_until: Option<Timestamp>,
    /// Last failure.
    pub last_error: Option<String>,
}

impl SnapshotRecord {
    /// The wire view.
    pub fn to_wire(&self) -> Snapshot {
        Snapshot {
            id: self.id.to_string(),
            vm_id: self.vm_id.to_string(),
            task_id: self.task_id.to_string(),
            parent_snapshot_id: self.parent_id.as_ref().map(ToString::to_string),
            mode: self.mode.clone(),
            state: self.state,
            comment: self.comment.clone(),
            size_bytes: self.size_bytes,
            created_at: self.created_at,
            updated_at: self.updated_at,
            retention_until: self.retention_until,
            last_error: self.last_error.clone(),
        }
    }
}

/// A partial update of a snapshot.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SnapshotPatch {
    /// New state.
    pub state: Option<SnapshotState>,
    /// New size.
    pub size_bytes: Option<u64>,
    /// The host's id for it.
    pub host_snapshot_id: Option<String>,
    /// New error (`Some(None)` clears).
    pub last_error: Option<Option<String>>,
    /// What the host actually took (`disk`, `full`), when it differs from the request.
    pub mode: Option<String>,
}

/// Filters of `GET /v1/snapshots`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SnapshotFilter {
    /// Exact VM id.
    pub vm_id: Option<String>,
    /// Exact task id.
    pub task_id: Option<String>,
    /// Exact state.
    pub state: Option<SnapshotState>,
}

impl SnapshotFilter {
    /// Whether `s` matches.
    pub fn matches(&self, s: &SnapshotRecord) -> bool {
        self.vm_id.as_deref().is_none_or(|v| s.vm_id.as_str() == v)
            && self
                .task_id
                .as_deref()
                .is_none_or(|t| s.task_id.as_str() == t)
            && self.state.is_none_or(|st| s.state == st)
    }
}

/// An audit event to append.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    /// `environment`, `host` or `snapshot`.
    pub entity_kind: &'static str,
    /// Its id.
    pub entity_id: String,
    /// What happened (`created`, `state`, `cordoned`, …).
    pub event_type: String,
    /// Structured detail; never secret values.
    pub payload: serde_json::Value,
}

/// A stored audit event.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    /// Monotonic sequence number.
    pub seq: u64,
    /// `environment`, `host` or `snapshot`.
    pub entity_kind: String,
    /// Its id.
    pub entity_id: String,
    /// What happened.
    pub event_type: String,
    /// Structured detail.
    pub payload: serde_json::Value,
    /// When.
    pub at: Timestamp,
}

/// Work the reconciler gave up on after repeated failures (e.g. an orphan VM its host
/// would not destroy), kept for an operator to look at.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// What kind of work (`orphan`).
    pub kind: String,
    /// What it was about (`<host>/<vm id>` for an orphan).
    pub entity_id: String,
    /// Failed attempts so far.
    pub attempts: u32,
    /// The last failure.
    pub last_error: Option<String>,
    /// First failure.
    pub created_at: Timestamp,
    /// Last failure.
    pub updated_at: Timestamp,
}
