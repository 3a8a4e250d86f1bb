//! The host-agent wire (DESIGN §6): what the control plane sends to `fc-agent` and what it
//! answers. Byte payloads (file contents, command output) are standard base64.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `details.reason` of a host-agent error whose VM did not boot (its message then carries
/// the tail of the guest's console, safe to show to the environment's owner).
pub const GUEST_DID_NOT_BOOT: &str = "guest_did_not_boot";

/// `details.reason` of a host-agent error whose VM booted but whose guest setup (files,
/// startup script, agent start) failed; `details.step` names the step.
pub const SETUP_FAILED: &str = "setup_failed";

/// The last `max` bytes of a command's output (trailing whitespace trimmed, cut on a
/// character boundary): what a failed startup script's message quotes.
pub fn output_tail(s: &str, max: usize) -> &str {
    let s = s.trim_end();
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// The `/healthz` feature of a host that does the whole guest setup in its create
/// ([`AgentVmCreate::setup`]). A host without it is driven call by call.
pub const FEATURE_PROVISION: &str = "provision";

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
    /// The whole guest setup, done by the host over the VM's private link before it
    /// answers, so a create is one call. Only for hosts advertising [`FEATURE_PROVISION`]
    /// (an older host would ignore it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setup: Option<GuestSetup>,
    /// Start the new VM's root disk as a copy of this snapshot's disk (a fork). The
    /// snapshot is on this host. Hosts without [`FEATURE_FORK`] do not know the field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_snapshot: Option<SnapshotSource>,
    /// Guest ports to publish on host ports, one forward per entry (besides `agent_port`).
    /// Answered in [`AgentVm::endpoints`]. Needs [`FEATURE_EXPOSE`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose: Vec<PortExpose>,
    /// The environment's readiness probe, run by the host against the guest for the VM's
    /// whole life; reported in [`AgentVm::health`]. Needs [`FEATURE_HEALTHCHECK`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<crate::HealthcheckSpec>,
    /// With a healthcheck: how long the create waits for the first `passing` before it
    /// fails with step `healthcheck` and the last probe's message (0: do not wait).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub healthcheck_wait_ms: u64,
    /// The VM's egress rules; absent: the defaults (everything but the host, metadata
    /// addresses and other guests). Rules other than the defaults need [`FEATURE_EGRESS`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<crate::EgressRules>,
    /// With `from_snapshot.memory`: leave the restored VM warm, its vCPUs stopped in its
    /// VMM (state `paused`, `warm: true`), for [`AgentClaim`] to start in milliseconds; its
    /// `setup` is not run (the claim carries it). Needs [`FEATURE_TEMPLATE`].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub warm: bool,
    /// The guest's hostname (default: the VM id). Set at every memory restore; a cold boot
    /// sets it too on hosts with [`FEATURE_TEMPLATE`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// Feature of `/healthz`: `from_snapshot` on create.
pub const FEATURE_FORK: &str = "fork";
/// Feature of `/healthz`: `expose` on create, `endpoints` on VMs.
pub const FEATURE_EXPOSE: &str = "expose";
/// Feature of `/healthz`: `healthcheck` on create, `health` on VMs.
pub const FEATURE_HEALTHCHECK: &str = "healthcheck";
/// Feature of `/healthz`: `GET /v1/vm/{id}/ports/{port}/tunnel` (a byte stream to a guest
/// port, after `101` with `Upgrade: fuse-tunnel`) and `POST /v1/vm/{id}/expose`.
pub const FEATURE_TUNNEL: &str = "tunnel";
/// The `Upgrade` protocol of the tunnel route.
pub const TUNNEL_UPGRADE: &str = "fuse-tunnel";
/// `details.reason` of a tunnel the guest refused (a 502): nothing listens on the port.
pub const GUEST_REFUSED: &str = "guest_refused";

/// Feature of `/healthz`: `egress` on create and `PUT /v1/vm/{id}/egress` (egress rules
/// enforced in nftables, names through the host's resolver).
pub const FEATURE_EGRESS: &str = "egress";

/// `PUT /v1/vm/{id}/egress` answer: the rules now in force.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentEgress {
    /// The VM.
    pub vm_id: String,
    /// Its rules.
    pub egress: crate::EgressRules,
}

/// The snapshot a fork starts from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotSource {
    /// The VM the snapshot was taken of (it may be gone; its snapshot files are kept).
    pub vm_id: String,
    /// The host's id of the snapshot.
    pub snapshot_id: String,
    /// Restore the snapshot's memory into the new VM (a template; the snapshot must be
    /// `full`) instead of cold-booting a copy of its disk. The restored guest is given the
    /// new VM's identity before anything else runs: link token, MAC, address and gateway,
    /// hostname, the clock, and a reseeded kernel random pool. Needs [`FEATURE_TEMPLATE`].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub memory: bool,
}

/// Feature of `/healthz`: `POST /v1/vm/{id}/pause` and `/resume`; `paused` VMs in listings
/// (their capacity: storage only), kept across an agent restart.
pub const FEATURE_PAUSE: &str = "pause";
/// Feature of `/healthz`: `from_snapshot.memory` and `warm` on create, and
/// `POST /v1/vm/{id}/claim`.
pub const FEATURE_TEMPLATE: &str = "template";
/// Feature of `/healthz`: cold migration between hosts (`POST /v1/migrations`,
/// `POST /v1/vm/{id}/send`, the receiving routes, `DELETE /v1/migrations/{vm_id}`).
pub const FEATURE_MIGRATE: &str = "migrate";

/// What a paused VM keeps, in [`AgentVm::paused`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PausedInfo {
    /// `live`: memory and device state (a resume continues every process); `disk`: the
    /// disk alone (the `process` backend: a resume boots the guest again, and the control
    /// plane starts its agent again); `warm`: held in its VMM with vCPUs stopped.
    pub kind: String,
    /// Bytes its artifacts use on the host.
    #[serde(default)]
    pub size_bytes: u64,
    /// When it was paused (Unix seconds).
    #[serde(default)]
    pub paused_unix: u64,
}

/// `POST /v1/vm/{id}/claim` body: a warm VM becomes the environment `name`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentClaim {
    /// Its VM id from now on (the warm VM's id is gone afterwards).
    pub name: String,
    /// The guest's hostname (default: `name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Files, startup script and agent, run after its vCPUs start, the clock is set and
    /// its random pool is reseeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setup: Option<GuestSetup>,
    /// Ports to publish (as on create).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose: Vec<PortExpose>,
    /// Egress rules (as on create).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<crate::EgressRules>,
}

/// `POST /v1/migrations` body (on the target host): expect a VM from another host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentMigrationIn {
    /// The one-time token the control plane minted; the sending host presents it as its
    /// bearer token, and it is good for this VM only, once, until it expires.
    pub token: String,
    /// The VM that will arrive (its id stays).
    pub vm_id: String,
    /// Its size, reserved on this host when it is resumed here.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mb: u64,
    /// Disk in GiB.
    pub storage_gb: u64,
    /// How long the token is good for (seconds).
    pub ttl_seconds: u64,
    /// Ports to publish when it resumes here (as on create).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose: Vec<PortExpose>,
    /// The agent port (as on create).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_port: Option<u16>,
    /// Egress rules (as on create).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<crate::EgressRules>,
    /// Expect this snapshot of `vm_id` for the host's snapshot store instead of the VM
    /// (sent by `POST /v1/vm/{vm_id}/snapshots/{snapshot_id}/send`; a template's snapshot
    /// replicated to another host). `cpus`, `memory_mb` and `storage_gb` bound its size;
    /// the network fields are not used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
}

/// `POST /v1/vm/{id}/send` body (on the source host, the VM paused): stream its artifacts
/// to the target host. Also the body of `POST /v1/vm/{id}/snapshots/{sid}/send`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentSend {
    /// The target host agent's base URL.
    pub target_url: String,
    /// The one-time token registered there.
    pub token: String,
}

/// One file of a transfer, checked by the receiver.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactFile {
    /// Its name inside the VM's directory (no `/`).
    pub name: String,
    /// Bytes.
    pub size: u64,
    /// Hex SHA-256.
    pub sha256: String,
}

/// Header of `PUT /v1/migrations/{vm_id}/files/{name}`: the hex SHA-256 the file must have.
pub const HEADER_SHA256: &str = "x-fuse-sha256";

/// `POST /v1/migrations/{vm_id}/commit` body (sending host to target host): the files it
/// sent and what the VM's own record on the target must say.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentMigrationCommit {
    /// Every file of the VM, as sent (each checked against what arrived).
    pub files: Vec<ArtifactFile>,
    /// The VM (a VM's transfer).
    #[serde(default)]
    pub meta: MigratedVm,
    /// The snapshot's record (a snapshot's transfer): its digest must be the hash of the
    /// disk image among `files`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<AgentSnapshot>,
}

/// What a moved VM carries from its source host's record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigratedVm {
    /// Its private link's token (the guest knows it).
    pub token: String,
    /// What its pause kept ([`PausedInfo::kind`]).
    pub kind: String,
    /// Bytes its artifacts use.
    #[serde(default)]
    pub size_bytes: u64,
    /// When it was paused (Unix seconds).
    #[serde(default)]
    pub paused_unix: u64,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mb: u64,
    /// Disk in GiB.
    pub storage_gb: u64,
    /// When it was created (Unix seconds).
    #[serde(default)]
    pub created_unix: u64,
    /// Its healthcheck.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<crate::HealthcheckSpec>,
    /// The backend that paused it (`process`, `firecracker`, `qemu`): only a host with
    /// the same backend can resume it.
    pub backend: String,
}

/// `POST /v1/vm/{id}/send` answer: what arrived at the target, which now holds the VM paused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentSent {
    /// Each file sent.
    pub files: Vec<ArtifactFile>,
    /// Bytes sent in all.
    pub bytes: u64,
    /// How long the transfer took.
    pub duration_ms: u64,
}

/// `GET /v1/snapshots` answer: every snapshot in the host's store, whatever its VM.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentSnapshotList {
    /// The snapshots.
    pub snapshots: Vec<AgentSnapshotRef>,
}

/// One snapshot of [`AgentSnapshotList`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentSnapshotRef {
    /// The VM it was taken of (which may be gone).
    pub vm_id: String,
    /// The snapshot.
    #[serde(flatten)]
    pub snapshot: AgentSnapshot,
}

/// One guest port to publish.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortExpose {
    /// Guest port.
    pub port: u16,
    /// `tcp` or `udp`.
    pub protocol: crate::Protocol,
}

/// A published guest port, as the host made it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostEndpoint {
    /// Guest port.
    pub port: u16,
    /// `tcp` or `udp`.
    pub protocol: crate::Protocol,
    /// Host port that forwards to it.
    pub host_port: u16,
    /// `host:port` a client outside the host connects to (the host's public address).
    pub address: String,
}

/// What a new VM's guest is set up with, in this order: files, startup script, agent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestSetup {
    /// Files written (atomically, parents created) before anything runs.
    #[serde(default)]
    pub files: Vec<GuestFile>,
    /// A script run with `sh -lc` after the files; a non-zero exit fails the create.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup: Option<StartupScript>,
    /// The agent started last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentStart>,
}

/// One file of a [`GuestSetup`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestFile {
    /// Absolute guest path.
    pub path: String,
    /// Standard base64 content.
    pub content_b64: String,
    /// File mode.
    pub mode: u32,
}

/// The startup script of a [`GuestSetup`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartupScript {
    /// Script text (`sh -lc`).
    pub script: String,
    /// Limit in milliseconds.
    pub timeout_ms: u64,
}

/// A step of a guest setup, as named in timings and in a failure's `details.step`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SetupStep {
    /// The VM booted and its guest helper answered.
    Boot,
    /// The files were written.
    Files,
    /// The startup script ran.
    StartupScript,
    /// The agent was started.
    StartAgent,
    /// The healthcheck passed for the first time.
    Healthcheck,
}

impl SetupStep {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SetupStep::Boot => "boot",
            SetupStep::Files => "files",
            SetupStep::StartupScript => "startup_script",
            SetupStep::StartAgent => "start_agent",
            SetupStep::Healthcheck => "healthcheck",
        }
    }
}

impl std::str::FromStr for SetupStep {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            SetupStep::Boot,
            SetupStep::Files,
            SetupStep::StartupScript,
            SetupStep::StartAgent,
            SetupStep::Healthcheck,
        ]
        .into_iter()
        .find(|x| x.as_str() == s)
        .ok_or_else(|| format!("unknown setup step {s:?}"))
    }
}

/// How long one setup step took.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepTiming {
    /// The step.
    pub step: SetupStep,
    /// Milliseconds.
    pub ms: u64,
}

/// What a one-call create did, step by step.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetupReport {
    /// Each step in order with its duration.
    pub steps: Vec<StepTiming>,
}

/// The state of a VM as its host sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostVmState {
    /// Its VMM (or helper) process runs.
    Running,
    /// Its process is gone; `error` says why.
    Stopped,
    /// Paused ([`FEATURE_PAUSE`]): its VMM is stopped and its memory and disk are kept in
    /// its directory (`paused` says what), or, for a warm VM ([`AgentVmCreate::warm`]), its
    /// VMM holds it with its vCPUs stopped.
    Paused,
    /// A state this control plane does not know (an agent of another version).
    #[default]
    #[serde(other)]
    Unknown,
}

impl HostVmState {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            HostVmState::Running => "running",
            HostVmState::Stopped => "stopped",
            HostVmState::Paused => "paused",
            HostVmState::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for HostVmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `POST /v1/vm` answer and the items of `GET /v1/vm`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentVm {
    /// VM id on the host.
    pub vm_id: String,
    /// URL of the VM's agent as reachable from outside the host.
    #[serde(default)]
    pub url: String,
    /// Whether it runs, as the host sees it.
    #[serde(default)]
    pub state: HostVmState,
    /// Seconds since the host created it.
    #[serde(default)]
    pub age_seconds: u64,
    /// Why the VM is not running, when it died (its log tail).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What a one-call create did, with timings (only in the answer to such a create).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setup: Option<SetupReport>,
    /// The guest ports published on host ports ([`AgentVmCreate::expose`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<HostEndpoint>,
    /// The healthcheck's current verdict; absent without a healthcheck.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<crate::Health>,
    /// Bytes received plus sent on the VM's network link (host side); absent without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_bytes: Option<u64>,
    /// How often the guest's supervisor restarted the agent after a crash; absent when the
    /// guest did not answer (or from a host that does not report it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_restarts: Option<u32>,
    /// Whether the agent runs, as the guest's supervisor sees it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_running: Option<bool>,
    /// What a paused VM keeps (state `paused`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<PausedInfo>,
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
    /// Extra environment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Working directory (guest path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Standard input, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
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
    /// The output was cut at the guest's buffered-output limit (4 MiB per stream).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

/// One line of a streamed `POST /v1/vm/{id}/exec?stream=true` (NDJSON): a chunk of output
/// (base64) or, last, the exit code; or an error that ended the stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentExecChunk {
    /// Standard output bytes, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout_b64: Option<String>,
    /// Standard error bytes, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr_b64: Option<String>,
    /// The exit code (the last line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// What ended the stream early.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One entry of `GET /v1/vm/{id}/files?list=true` (and of the REST API's listing).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// The name.
    pub name: String,
    /// The guest path.
    pub path: String,
    /// `file`, `dir`, `symlink` or `other`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits, octal text (`0644`).
    pub mode: String,
    /// Last modification, RFC 3339.
    pub modified_at: String,
}

/// `GET …/files?list=true` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileList {
    /// Sorted by name.
    pub entries: Vec<FileEntry>,
    /// More entries exist than were answered (10 000 at most).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

/// `PUT …/files` answer: what was written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileWritten {
    /// The guest path.
    pub path: String,
    /// Bytes written.
    pub size: u64,
    /// Their SHA-256, hex.
    pub sha256: String,
}

/// Parses an octal file mode (`0644`, `644`, `0o600`) as the files routes take it.
pub fn parse_mode(m: &str) -> Result<u32, String> {
    let digits = m.trim_start_matches("0o");
    match u32::from_str_radix(digits, 8) {
        Ok(v) if v <= 0o7777 && !digits.is_empty() => Ok(v),
        _ => Err(format!(
            "mode {m:?} must be octal permission bits such as 0644"
        )),
    }
}

/// The header of a file read (`GET …/files`) that carries the file's SHA-256.
pub const SHA256_HEADER: &str = "x-fuse-sha256";

/// The terminal feature of `/healthz`: files, streamed exec with input, and `attach`.
pub const FEATURE_RUNTIME: &str = "runtime-io";

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
    /// Expected SHA-256 (hex) of the download; empty: not checked.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sha256: String,
    /// How long the agent has to come up (its `listen` port answers, or it is still
    /// running at the end); absent: the guest's default (3 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_window_ms: Option<u64>,
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
    /// Hex sha256 of the snapshot's disk image, when the host computed it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub digest: String,
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
    /// CPU architecture in Go's vocabulary (`amd64`, `arm64`); empty from older hosts.
    #[serde(default)]
    pub arch: String,
    /// How guests run (`kvm`, `tcg`), for backends that choose (`qemu`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acceleration: Option<String>,
    /// Total capacity.
    #[serde(default)]
    pub capacity: crate::Resources,
    /// In use.
    #[serde(default)]
    pub allocated: crate::Resources,
    /// What this host agent can do beyond the base wire (e.g. [`FEATURE_PROVISION`]).
    #[serde(default)]
    pub features: Vec<String>,
    /// Bytes the host's snapshot store and paused VMs' artifacts use on its disk.
    #[serde(default)]
    pub artifact_bytes: u64,
}

impl AgentHealth {
    /// Whether the host advertises `feature`.
    pub fn has(&self, feature: &str) -> bool {
        self.features.iter().any(|f| f == feature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_tail_cuts_on_a_character_boundary() {
        assert_eq!(output_tail("abc\n\n", 10), "abc");
        assert_eq!(output_tail("0123456789", 4), "6789");
        assert_eq!(output_tail("ééé", 3), "é", "never half a character");
    }

    #[test]
    fn host_vm_state_reads_unknown_words_as_unknown() {
        let v: AgentVm = serde_json::from_str(r#"{"vm_id":"a","state":"running"}"#).unwrap();
        assert_eq!(v.state, HostVmState::Running);
        let v: AgentVm = serde_json::from_str(r#"{"vm_id":"a","state":"paused"}"#).unwrap();
        assert_eq!(v.state, HostVmState::Paused);
        let v: AgentVm = serde_json::from_str(r#"{"vm_id":"a","state":"hibernating"}"#).unwrap();
        assert_eq!(v.state, HostVmState::Unknown);
        let v: AgentVm = serde_json::from_str(r#"{"vm_id":"a"}"#).unwrap();
        assert_eq!(v.state, HostVmState::Unknown);
        assert_eq!(
            serde_json::to_string(&HostVmState::Stopped).unwrap(),
            "\"stopped\""
        );
    }

    #[test]
    fn an_old_create_body_has_no_setup_and_steps_round_trip() {
        let c: AgentVmCreate =
            serde_json::from_str(r#"{"name":"a","cpus":1,"memory_mb":128,"storage_gb":1}"#)
                .unwrap();
        assert!(c.setup.is_none());
        assert!(!serde_json::to_string(&c).unwrap().contains("setup"));
        for s in [
            SetupStep::Boot,
            SetupStep::Files,
            SetupStep::StartupScript,
            SetupStep::StartAgent,
        ] {
            assert_eq!(s.as_str().parse::<SetupStep>().unwrap(), s);
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
        let h: AgentHealth = serde_json::from_str(r#"{"status":"ok"}"#).unwrap();
        assert!(!h.has(FEATURE_PROVISION), "a Go-era host has no features");
    }
}
