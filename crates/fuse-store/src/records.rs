//! Storage rows. They are separate from the wire types: they carry what the control plane
//! needs internally (generation, reservation, idempotency fingerprint).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

use fuse_types::{
    AgentSpec, ApiKey, Endpoint, Environment, ExposeSpec, Health, HealthcheckSpec, Host,
    HostCapacity, HostId, HostState, Resources, Snapshot, SnapshotId, SnapshotState, Spec, TaskId,
    Timestamp, VmId, VmState,
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
    /// The ports proxy's per-environment token (64 hex; empty for records made before it).
    #[serde(default)]
    pub traffic_token: String,
}

impl VmSecrets {
    /// Every secret value, for redaction of error text.
    pub fn values(&self) -> Vec<String> {
        let mut v: Vec<String> = self.secrets.values().cloned().collect();
        v.push(self.gateway_token.clone());
        v.push(self.auth_token.clone());
        if !self.traffic_token.is_empty() {
            v.push(self.traffic_token.clone());
        }
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
    /// What the request asked for beyond size and agent, and what the host reported back
    /// (ports, health, activity); one JSON column.
    pub extras: VmExtras,
}

/// The parts of an environment that only some environments have.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmExtras {
    /// Ports asked to be published.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose: Vec<ExposeSpec>,
    /// Ports published, as reported by the host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<Endpoint>,
    /// The readiness probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<HealthcheckSpec>,
    /// Its last verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
    /// The snapshot this environment was forked from (our id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forked_from: Option<String>,
    /// While paused: what its host kept (`live`: memory and disk, a resume continues every
    /// process; `disk`: the disk alone, a resume boots it again and restarts its agent;
    /// `warm`: a warm-pool member held in its VMM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_kind: Option<String>,
    /// A cold migration in progress (recovery finishes or undoes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<Migration>,
    /// Last API call, exec or guest traffic seen (for the idle timeout).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub last_active_at: Option<Timestamp>,
    /// The VM link's byte counter when it was last read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_bytes: Option<u64>,
    /// SHA-256 (hex) of the ports proxy's traffic token: what the proxy checks, kept even
    /// where the secrets themselves are not (a store without an encryption key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_token_sha256: Option<String>,
    /// Its egress rules (absent: the defaults, reported as `direct`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<fuse_types::EgressRules>,
    /// The agent's restart count (the guest supervisor's) when a crash loop was last
    /// recorded: later crashes are counted from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_restarts: Option<u32>,
    /// The template it was started from (by name): a template cannot be deleted while a
    /// live environment names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// The template whose warm pool it belongs to, while it waits to be claimed: hidden
    /// from [`crate::StateStore::vm_list`] unless the filter asks for pool members.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// When the environment's time is up (E2B's sandbox timeout, which `timeout`,
    /// `refreshes` and `connect` move): reconcile ends it then, instead of after
    /// `max_runtime_seconds` in `running`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub ends_at: Option<Timestamp>,
    /// What an environment created through the E2B-compatible API was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e2b: Option<E2bSandbox>,
}

/// The E2B side of a sandbox (an environment created through `POST /e2b/sandboxes`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct E2bSandbox {
    /// The template asked for (`templateID`), as the sandbox answers it.
    pub template_id: String,
    /// The caller's metadata (`metadata`), filtered on by the list.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// Pause instead of kill when the time is up (`autoPause`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub auto_pause: bool,
    /// Ports other than envd's need the traffic token (`network.allowPublicTraffic:
    /// false`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub private_traffic: bool,
}

/// A cold migration in progress, recorded before anything moves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Migration {
    /// Where the VM goes.
    pub target_host_id: HostId,
    /// Where it comes from.
    pub source_host_id: HostId,
    /// The control-plane replica doing it (recovery takes over when it is gone).
    pub replica: String,
    /// When it began.
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: Timestamp,
    /// Whether it was running before (then it is resumed wherever it ends).
    pub was_running: bool,
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
            error: self.error.clone().unwrap_or_default(),
            endpoints: self.extras.endpoints.clone(),
            health: self.extras.health.clone(),
            egress: match &self.extras.egress {
                None => fuse_types::EgressStatus {
                    mode: "direct".into(),
                    ..Default::default()
                },
                Some(r) => fuse_types::EgressStatus {
                    mode: r.mode.as_str().into(),
                    allow: r.allow.clone(),
                    deny: r.deny.clone(),
                    ..Default::default()
                },
            },
            traffic_token: self
                .secrets
                .as_ref()
                .map(|s| s.traffic_token.clone())
                .unwrap_or_default(),
        }
    }

    /// When it ended (`destroyed` or `failed`): its last change.
    pub fn ended_at(&self) -> Option<Timestamp> {
        self.state.is_terminal().then_some(self.updated_at)
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
    /// New extras.
    pub extras: Option<VmExtras>,
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
    /// Only the warm-pool members of this template (`extras.pool`).
    pub pool: Option<String>,
    /// With `pool` unset: warm-pool members too (by default they are left out).
    pub include_pool: bool,
}

impl VmFilter {
    /// Whether `r` matches.
    pub fn matches(&self, r: &VmRecord) -> bool {
        let pool_ok = match (&self.pool, &r.extras.pool) {
            (Some(want), got) => got.as_ref() == Some(want),
            (None, Some(_)) => self.include_pool,
            (None, None) => true,
        };
        pool_ok
            && self
                .task_id
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
    /// VMM backend.
    pub backend: String,
    /// CPU architecture (`amd64`, `arm64`; empty = amd64).
    pub arch: String,
    /// Operator labels.
    pub labels: BTreeMap<String, String>,
    /// Capacity declared at registration (0 = not declared: the host's report counts).
    pub declared: Resources,
    /// Total resources: the host's last report, capped by what was declared.
    pub capacity: Resources,
    /// Reserved by live VMs.
    pub allocated: Resources,
    /// Bytes of its `ready` and `creating` snapshots (their `size_bytes`), computed by the
    /// store on every read: placement counts them against its storage (see
    /// [`HostRecord::artifact_gb`]).
    pub artifact_bytes: u64,
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
            backend: self.backend.clone(),
            labels: self.labels.clone(),
            capacity: HostCapacity::of(self.capacity, self.arch_or_default()),
            allocated: HostCapacity::of(self.allocated, ""),
            artifact_bytes: self.artifact_bytes,
            last_seen: self.last_seen,
            created_at: self.created_at,
            updated_at: self.updated_at,
            state_reason: self.state_reason.clone(),
            warnings: Vec::new(),
        }
    }

    /// Its architecture, `amd64` when it never said.
    pub fn arch_or_default(&self) -> &str {
        if self.arch.is_empty() {
            "amd64"
        } else {
            &self.arch
        }
    }

    /// Whole GiB its snapshot artifacts take: `ceil(artifact_bytes / GiB)`.
    pub fn artifact_gb(&self) -> u64 {
        artifact_gb(self.artifact_bytes)
    }

    /// What placement counts as used: the reservations plus, in storage, the GiB its
    /// snapshot artifacts take (so free storage is `capacity − allocated − artifacts`).
    pub fn used(&self) -> Resources {
        Resources {
            storage_gb: self.allocated.storage_gb.saturating_add(self.artifact_gb()),
            ..self.allocated
        }
    }

    /// The scheduler's view of it (its `allocated` is [`HostRecord::used`]).
    pub fn view(&self) -> fuse_scheduler::HostView<'_> {
        fuse_scheduler::HostView {
            id: self.id.as_str(),
            region: &self.region,
            arch: self.arch_or_default(),
            labels: &self.labels,
            state: self.state,
            capacity: self.capacity,
            allocated: self.used(),
        }
    }
}

/// Bytes per GiB.
const GIB: u64 = 1 << 30;

/// Whole GiB `bytes` take, rounded up.
pub fn artifact_gb(bytes: u64) -> u64 {
    bytes.div_ceil(GIB)
}

/// Whether a snapshot in `state` counts against its host's storage (its files exist or
/// are being written).
pub fn snapshot_holds_storage(state: SnapshotState) -> bool {
    matches!(state, SnapshotState::Ready | SnapshotState::Creating)
}

/// A named, reusable starting point: a `full` snapshot of a VM, from which environments
/// start by memory restore, and a warm pool of such VMs kept per host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateRecord {
    /// Unique name (see [`template_name_check`]).
    pub name: String,
    /// The snapshot it starts from (its state is the template's: a template is usable
    /// while its snapshot is `ready`).
    pub snapshot_id: SnapshotId,
    /// The VM the snapshot was taken of, while it exists.
    pub source_vm_id: Option<VmId>,
    /// The host holding the snapshot.
    pub host_id: HostId,
    /// The API key that made it (empty: the master token).
    pub tenant_id: String,
    /// The size of the source VM, which every VM started from it has.
    pub spec: Spec,
    /// Warm VMs to keep ready on each host that has the snapshot.
    pub pool_per_host: u32,
    /// Creation time.
    pub created_at: Timestamp,
    /// Last change.
    pub updated_at: Timestamp,
}

/// Checks a template name: `^[a-z0-9][a-z0-9._-]{0,62}$`. The error says what is wrong.
pub fn template_name_check(name: &str) -> Result<(), String> {
    let b = name.as_bytes();
    let first_ok = b
        .first()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let rest_ok = b
        .iter()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-'));
    if !first_ok || !rest_ok || b.len() > 63 {
        return Err(format!(
            "template name {name:?} must be 1-63 characters of a-z, 0-9, '.', '_' and '-', \
             starting with a letter or digit"
        ));
    }
    Ok(())
}

/// The capacity a host has: what it reports, never above a declared (non-zero) value.
pub fn capped(reported: Resources, declared: Resources) -> Resources {
    let cap32 = |r: u32, d: u32| if d == 0 { r } else { r.min(d) };
    let cap64 = |r: u64, d: u64| if d == 0 { r } else { r.min(d) };
    Resources {
        cpus: cap32(reported.cpus, declared.cpus),
        ram_mb: cap64(reported.ram_mb, declared.ram_mb),
        storage_gb: cap64(reported.storage_gb, declared.storage_gb),
        vm_count: cap32(reported.vm_count, declared.vm_count),
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
    /// VMM backend.
    pub backend: String,
    /// CPU architecture.
    pub arch: String,
    /// Operator labels.
    pub labels: BTreeMap<String, String>,
    /// Declared capacity (0 fields: not declared).
    pub declared: Resources,
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
    /// The API key it was taken with (empty: the master token).
    pub tenant_id: String,
    /// The host holding it.
    pub host_id: Option<HostId>,
    /// Parent snapshot.
    pub parent_id: Option<SnapshotId>,
    /// `disk` or `full`.
    pub mode: String,
    /// What was written: `disk` or `live`.
    pub kind: String,
    /// Build-layer cache key (empty: none).
    pub layer_key: String,
    /// Architecture of its host.
    pub arch: String,
    /// Hex sha256 of the disk image.
    pub digest: String,
    /// Free-form labels.
    pub metadata: BTreeMap<String, String>,
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
            tenant_id: self.tenant_id.clone(),
            parent_snapshot_id: self
                .parent_id
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            mode: self.mode.clone(),
            kind: self.kind.clone(),
            layer_key: self.layer_key.clone(),
            arch: self.arch.clone(),
            digest: self.digest.clone(),
            metadata: self.metadata.clone(),
            state: self.state,
            comment: self.comment.clone(),
            size_bytes: self.size_bytes,
            created_at: self.created_at,
            updated_at: self.updated_at,
            retention_until: self.retention_until,
            last_error: self.last_error.clone().unwrap_or_default(),
            export_ref: String::new(),
            exports: Vec::new(),
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
    /// What was written (`disk`, `live`).
    pub kind: Option<String>,
    /// Hex sha256 of the disk image.
    pub digest: Option<String>,
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
    /// Exact build-layer key.
    pub layer_key: Option<String>,
    /// Exact architecture.
    pub arch: Option<String>,
    /// Exact tenant (API key id; empty = the master token's).
    pub tenant_id: Option<String>,
}

impl SnapshotFilter {
    /// Whether `s` matches.
    pub fn matches(&self, s: &SnapshotRecord) -> bool {
        self.layer_key.as_deref().is_none_or(|v| s.layer_key == v)
            && self.arch.as_deref().is_none_or(|v| s.arch == v)
            && self.tenant_id.as_deref().is_none_or(|v| s.tenant_id == v)
            && self.vm_id.as_deref().is_none_or(|v| s.vm_id.as_str() == v)
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

/// One API key. The raw key is never stored: only its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    /// `ak_` + 16 hex.
    pub id: String,
    /// Free text.
    pub label: String,
    /// SHA-256 of the raw key.
    pub hash: [u8; 32],
    /// Creation time.
    pub created_at: Timestamp,
    /// Last time it authenticated a request.
    pub last_used_at: Option<Timestamp>,
    /// When it was revoked.
    pub revoked_at: Option<Timestamp>,
}

impl ApiKeyRecord {
    /// The wire view (no hash).
    pub fn to_wire(&self) -> ApiKey {
        ApiKey {
            id: self.id.clone(),
            label: self.label.clone(),
            created_at: self.created_at,
            last_used_at: self.last_used_at,
            revoked_at: self.revoked_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_names() {
        let long = "a".repeat(63);
        let too_long = "a".repeat(64);
        for (name, ok) in [
            ("base", true),
            ("0-py3.12_slim", true),
            (long.as_str(), true),
            ("", false),
            (too_long.as_str(), false),
            ("-lead", false),
            (".hidden", false),
            ("Upper", false),
            ("with/slash", false),
            ("sp ace", false),
            ("ünï", false),
        ] {
            assert_eq!(template_name_check(name).is_ok(), ok, "{name:?}");
        }
    }

    #[test]
    fn artifacts_round_up_to_whole_gib_and_count_as_used_storage() {
        assert_eq!(artifact_gb(0), 0);
        assert_eq!(artifact_gb(1), 1);
        assert_eq!(artifact_gb(1 << 30), 1);
        assert_eq!(artifact_gb((1 << 30) + 1), 2);
        let at = fuse_types::now();
        let h = HostRecord {
            id: HostId::parse("h").unwrap_or_else(|e| panic!("{e:?}")),
            url: String::new(),
            token: String::new(),
            region: String::new(),
            state: HostState::Active,
            state_reason: None,
            backend: String::new(),
            arch: String::new(),
            labels: BTreeMap::new(),
            declared: Resources::default(),
            capacity: Resources {
                cpus: 4,
                ram_mb: 4096,
                storage_gb: 10,
                vm_count: 4,
            },
            allocated: Resources {
                cpus: 1,
                ram_mb: 512,
                storage_gb: 2,
                vm_count: 1,
            },
            artifact_bytes: 3 * (1 << 30) + 5,
            last_seen: None,
            created_at: at,
            updated_at: at,
        };
        assert_eq!(h.view().free().storage_gb, 4);
        assert_eq!(h.view().free().cpus, 3);
        assert_eq!(
            h.to_wire().allocated.storage_gb,
            2,
            "the wire keeps reservations"
        );
        assert_eq!(h.to_wire().artifact_bytes, h.artifact_bytes);
    }
}
