//! Providers: how the control plane acts on one host. [`Provider`] is the seam; the
//! in-memory [`stub::StubProvider`] serves the quick start and tests of everything above
//! the host, and [`hostagent::HostAgentClient`] speaks the `fc-agent` wire (DESIGN §6).
//! [`Providers`] maps every VM to its own host's provider; there is no global default
//! except the pseudo-host `default`, used only while no host is registered.

pub mod hostagent;
pub mod runtime;
pub mod stub;
pub mod stub_http;

use async_trait::async_trait;
use base64::Engine as _;
use fuse_store::{HostRecord, StateStore};
use fuse_types::hostagent::{
    output_tail, AgentClaim, AgentExec, AgentExecResult, AgentHealth, AgentMigrationIn, AgentSend,
    AgentSent, AgentSnapshot, AgentSnapshotRef, AgentStart, AgentVm, AgentVmCreate, FileList,
    FileWritten, HostEndpoint, PortExpose, SetupReport, SetupStep, StepTiming,
};
use fuse_types::{ExecResponse, HostId};
use parking_lot::RwLock;
use runtime::{Attached, ExecStream, FileDownload, FileUpload};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// The id of the pseudo-host that stands for the default provider.
pub const DEFAULT_HOST: &str = "default";

/// Failures talking to a host.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    /// The VM (or snapshot) is not on the host.
    #[error("not found on host: {0}")]
    NotFound(String),
    /// The host could not be reached, timed out, or is out of room (retryable).
    #[error("host unavailable: {0}")]
    Unavailable(String),
    /// The host refused the request as invalid.
    #[error("host rejected the request ({status}): {message}")]
    Rejected {
        /// HTTP status from the host.
        status: u16,
        /// The host's message.
        message: String,
    },
    /// The host failed or answered nonsense.
    #[error("host error: {0}")]
    Internal(String),
    /// The VM's guest did not come up (a broken image, a kernel that does not boot); the
    /// host's message carries the tail of its console.
    #[error("the VM did not boot: {0}")]
    GuestFailed(String),
    /// The host cannot do this (its `fc-agent` predates the feature, or the provider has
    /// no guests); safe to show.
    #[error("{0}")]
    Unsupported(String),
    /// The VM booted but a step of its guest setup failed (a file that could not be
    /// written, a startup script that exited non-zero, an agent that would not start).
    #[error("guest setup failed at {}: {message}", .step.as_str())]
    SetupFailed {
        /// The step.
        step: SetupStep,
        /// What the host said, safe for the environment's owner (secrets are redacted by
        /// the control plane before it is stored).
        message: String,
    },
    /// Nothing in the guest accepted a connection to the port (the ports proxy's 502).
    #[error("the guest refused the connection: {0}")]
    GuestRefused(String),
}

impl ProviderError {
    /// A message safe for a client (no URLs or host internals beyond the host's own words).
    pub fn client_message(&self) -> String {
        match self {
            ProviderError::NotFound(m) => format!("not found on host: {m}"),
            ProviderError::Unavailable(_) => "host unavailable; retry later".into(),
            ProviderError::Rejected { message, .. } => {
                format!("host rejected the request: {message}")
            }
            ProviderError::Internal(_) => "host error".into(),
            ProviderError::Unsupported(m) => m.clone(),
            ProviderError::GuestFailed(m) => format!("the VM did not boot: {m}"),
            ProviderError::SetupFailed { message, .. } => message.clone(),
            ProviderError::GuestRefused(m) => m.clone(),
        }
    }
}

/// What the control plane can ask of one host. Every call names the VM by its id; destroy
/// and the deletes are idempotent (a missing VM is success).
#[async_trait]
pub trait Provider: Send + Sync + 'static {
    /// `stub` or `fc-agent`.
    fn kind(&self) -> &'static str;
    /// Capacity, version, backend.
    async fn health(&self) -> Result<AgentHealth, ProviderError>;
    /// Creates and boots a VM; returns its id and agent URL. Ignores `req.setup`.
    async fn vm_create(&self, req: &AgentVmCreate) -> Result<AgentVm, ProviderError>;
    /// Creates a VM and sets its guest up (`req.setup`: files, startup script, agent) as one
    /// operation: one call to a host that advertises it. The default drives a host call by
    /// call ([`provision_call_by_call`]), as hosts of the Go-era wire need.
    async fn vm_provision(&self, req: &AgentVmCreate) -> Result<AgentVm, ProviderError> {
        provision_call_by_call(self, req).await
    }
    /// Destroys a VM; success if it is already gone.
    async fn vm_destroy(&self, vm_id: &str) -> Result<(), ProviderError>;
    /// VMs on the host whose id starts with `prefix`.
    async fn vm_list(&self, prefix: &str) -> Result<Vec<AgentVm>, ProviderError>;
    /// One VM on the host, `None` if the host says it does not have it. The default asks
    /// for the list under the VM's own id.
    async fn vm_get(&self, vm_id: &str) -> Result<Option<AgentVm>, ProviderError> {
        Ok(self
            .vm_list(vm_id)
            .await?
            .into_iter()
            .find(|v| v.vm_id == vm_id))
    }
    /// Writes a file in the guest.
    async fn upload(
        &self,
        vm_id: &str,
        path: &str,
        content: &[u8],
        mode: u32,
    ) -> Result<(), ProviderError>;
    /// Runs a command in the guest.
    async fn exec(
        &self,
        vm_id: &str,
        cmd: &[String],
        timeout: Duration,
    ) -> Result<ExecResponse, ProviderError>;
    /// Starts (or restarts) the agent.
    async fn start_agent(&self, vm_id: &str, spec: &AgentStart) -> Result<(), ProviderError>;
    /// Stops the agent.
    async fn stop_agent(&self, vm_id: &str) -> Result<(), ProviderError>;
    /// Snapshots a VM.
    async fn snapshot_create(
        &self,
        vm_id: &str,
        snapshot_id: &str,
        mode: &str,
    ) -> Result<AgentSnapshot, ProviderError>;
    /// Restores a snapshot into its VM.
    async fn snapshot_restore(&self, vm_id: &str, snapshot_id: &str) -> Result<(), ProviderError>;
    /// Deletes a snapshot; success if it is already gone.
    async fn snapshot_delete(&self, vm_id: &str, snapshot_id: &str) -> Result<(), ProviderError>;
    /// Runs a command with everything the REST API offers (environment, directory,
    /// standard input); output base64.
    async fn exec_job(
        &self,
        vm_id: &str,
        job: &AgentExec,
    ) -> Result<AgentExecResult, ProviderError> {
        let _ = (vm_id, job);
        Err(unsupported(self.kind(), "exec with env, cwd or stdin"))
    }
    /// Runs a command and streams its output as the guest produces it; dropping the
    /// stream kills the command.
    async fn exec_stream(&self, vm_id: &str, job: &AgentExec) -> Result<ExecStream, ProviderError> {
        let _ = (vm_id, job);
        Err(unsupported(self.kind(), "streamed exec"))
    }
    /// Writes a file from a stream.
    async fn file_put(&self, vm_id: &str, file: FileUpload) -> Result<FileWritten, ProviderError> {
        let _ = (vm_id, file);
        Err(unsupported(self.kind(), "file writes"))
    }
    /// Reads a file as a stream.
    async fn file_get(&self, vm_id: &str, path: &str) -> Result<FileDownload, ProviderError> {
        let _ = (vm_id, path);
        Err(unsupported(self.kind(), "file reads"))
    }
    /// Lists a directory.
    async fn file_list(&self, vm_id: &str, path: &str) -> Result<FileList, ProviderError> {
        let _ = (vm_id, path);
        Err(unsupported(self.kind(), "directory listings"))
    }
    /// Removes a file (or a directory tree when `recursive`).
    async fn file_delete(
        &self,
        vm_id: &str,
        path: &str,
        recursive: bool,
    ) -> Result<(), ProviderError> {
        let _ = (vm_id, path, recursive);
        Err(unsupported(self.kind(), "file removal"))
    }
    /// Opens a terminal: the host's WebSocket, upgraded, for the client's handshake
    /// `headers` (`query` is `cmd`, `cols`, `rows` as the client gave them).
    async fn attach(
        &self,
        vm_id: &str,
        query: &str,
        headers: &[(String, String)],
    ) -> Result<Attached, ProviderError> {
        let _ = (vm_id, query, headers);
        Err(unsupported(self.kind(), "terminals"))
    }
    /// Opens a byte stream to TCP `port` of the VM's guest (what the ports proxy speaks
    /// HTTP over). A guest that refuses is [`ProviderError::GuestRefused`].
    async fn tunnel(&self, vm_id: &str, port: u16) -> Result<Tunnel, ProviderError> {
        let _ = (vm_id, port);
        Err(ProviderError::Unsupported(format!(
            "the ports proxy: not offered by this host ({}); hosts need an fc-agent with the \
             tunnel feature",
            self.kind()
        )))
    }
    /// Publishes one more guest port of a running VM on a host port; answers the forward
    /// (the same one again for a port already published).
    async fn expose(&self, vm_id: &str, port: &PortExpose) -> Result<HostEndpoint, ProviderError> {
        let _ = (vm_id, port);
        Err(ProviderError::Unsupported(format!(
            "publishing a port at runtime: not offered by this host ({}); hosts need an \
             fc-agent with the tunnel feature",
            self.kind()
        )))
    }

    /// Replaces a VM's egress rules, live. The default: a host that cannot (501).
    async fn vm_egress(
        &self,
        vm_id: &str,
        rules: &fuse_types::EgressRules,
    ) -> Result<(), ProviderError> {
        let _ = (vm_id, rules);
        Err(egress_unsupported())
    }
    /// Streams one of a VM's logs ([`LogQuery`]); the stream ends with the log, or, when
    /// following, when the VM goes away or the stream is dropped.
    async fn logs(&self, vm_id: &str, q: &LogQuery) -> Result<LogStream, ProviderError> {
        let _ = (vm_id, q);
        Err(unsupported(self.kind(), "logs"))
    }
    /// Pauses a VM: its memory (where the backend keeps it) and disk are written on the
    /// host and its VMM stops. Answers the VM as `paused` with what it kept.
    async fn vm_pause(&self, vm_id: &str) -> Result<AgentVm, ProviderError> {
        let _ = vm_id;
        Err(fast_start_unsupported(self.kind(), "pause"))
    }
    /// Resumes a paused VM on this host (503 when it has no room for it).
    async fn vm_resume(&self, vm_id: &str) -> Result<AgentVm, ProviderError> {
        let _ = vm_id;
        Err(fast_start_unsupported(self.kind(), "resume"))
    }
    /// Gives a warm VM the id `claim.name`, starts its vCPUs and runs the claim's setup.
    async fn vm_claim(&self, warm_id: &str, claim: &AgentClaim) -> Result<AgentVm, ProviderError> {
        let _ = (warm_id, claim);
        Err(fast_start_unsupported(self.kind(), "warm pools"))
    }
    /// On the target host of a migration: expects the VM, authorised by a one-time token.
    async fn migration_expect(&self, m: &AgentMigrationIn) -> Result<(), ProviderError> {
        let _ = m;
        Err(fast_start_unsupported(self.kind(), "migration"))
    }
    /// On the source host of a migration: streams the paused VM's artifacts to the target,
    /// which then holds it paused.
    async fn vm_send(&self, vm_id: &str, send: &AgentSend) -> Result<AgentSent, ProviderError> {
        let _ = (vm_id, send);
        Err(fast_start_unsupported(self.kind(), "migration"))
    }
    /// On the target host: forgets an expected or partly received VM (idempotent).
    async fn migration_abort(&self, vm_id: &str) -> Result<(), ProviderError> {
        let _ = vm_id;
        Err(fast_start_unsupported(self.kind(), "migration"))
    }
    /// Every snapshot in the host's store, whatever its VM (`None`: the host cannot list
    /// them, so nothing can be concluded from their absence).
    async fn snapshots_all(&self) -> Result<Option<Vec<AgentSnapshotRef>>, ProviderError> {
        Ok(None)
    }
}

/// What a host without a fast-start feature answers (501).
pub fn fast_start_unsupported(kind: &str, what: &str) -> ProviderError {
    ProviderError::Unsupported(format!(
        "{what}: not offered by this host ({kind}); hosts need an fc-agent with the pause, \
         template and migrate features"
    ))
}

/// What a provider without a runtime call answers.
pub fn unsupported(kind: &str, what: &str) -> ProviderError {
    ProviderError::Unsupported(format!(
        "{what}: not offered by this host ({kind}); hosts need an fc-agent with the \
         runtime-io feature"
    ))
}

/// What a tunnel is: any byte stream both ways.
pub trait TunnelIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> TunnelIo for T {}

/// A byte stream to a guest port.
pub type Tunnel = Box<dyn TunnelIo>;

/// What a host without the `egress` feature answers to rules other than the defaults.
pub fn egress_unsupported() -> ProviderError {
    ProviderError::Rejected {
        status: 501,
        message: format!(
            "this host's agent cannot enforce egress rules; upgrade its fc-agent (it does not \
             advertise the {:?} feature)",
            fuse_types::hostagent::FEATURE_EGRESS
        ),
    }
}

/// What a log read asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogQuery {
    /// `agent`, `startup` or `console`.
    pub source: String,
    /// Start at the last this many lines (`None`: the whole log).
    pub tail: Option<u32>,
    /// Keep the stream open and send new output as it is written.
    pub follow: bool,
}

/// A log's bytes as they come from the host.
pub type LogStream = futures::stream::BoxStream<'static, Result<bytes::Bytes, ProviderError>>;

/// A provision on the base wire: create, one upload per file, the startup script as an
/// exec, start-agent. Failures after the boot are [`ProviderError::SetupFailed`] naming the
/// step, as a one-call host answers them; the reply carries the same per-step timings.
pub async fn provision_call_by_call<P: Provider + ?Sized>(
    p: &P,
    req: &AgentVmCreate,
) -> Result<AgentVm, ProviderError> {
    let mut bare = req.clone();
    let setup = bare.setup.take().unwrap_or_default();
    let mut steps = Vec::new();
    let mut t = std::time::Instant::now();
    let mut lap = |step: SetupStep, t: &mut std::time::Instant| {
        steps.push(StepTiming {
            step,
            ms: t.elapsed().as_millis() as u64,
        });
        *t = std::time::Instant::now();
    };
    let mut vm = p.vm_create(&bare).await?;
    lap(SetupStep::Boot, &mut t);
    if req.warm {
        // A warm VM's setup only warms it up, in the host's one-call create; a host driven
        // call by call holds it cold (its claim runs the claiming environment's setup).
        return Ok(vm);
    }
    let id = vm.vm_id.clone();
    let failed = |step: SetupStep, e: ProviderError| {
        tracing::warn!(vm_id = %id, step = step.as_str(), error = %e, "guest setup step failed");
        ProviderError::SetupFailed {
            step,
            message: e.client_message(),
        }
    };
    for f in &setup.files {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&f.content_b64)
            .map_err(|e| ProviderError::Internal(format!("file {} is not base64: {e}", f.path)))?;
        p.upload(&id, &f.path, &bytes, f.mode)
            .await
            .map_err(|e| failed(SetupStep::Files, e))?;
    }
    lap(SetupStep::Files, &mut t);
    if let Some(s) = &setup.startup {
        let argv = vec!["sh".to_owned(), "-lc".to_owned(), s.script.clone()];
        let r = p
            .exec(&id, &argv, Duration::from_millis(s.timeout_ms))
            .await
            .map_err(|e| failed(SetupStep::StartupScript, e))?;
        if r.exit_code != 0 {
            return Err(ProviderError::SetupFailed {
                step: SetupStep::StartupScript,
                message: format!(
                    "exited with {}: {}",
                    r.exit_code,
                    output_tail(&r.stderr, 400)
                ),
            });
        }
        lap(SetupStep::StartupScript, &mut t);
    }
    if let Some(a) = &setup.agent {
        p.start_agent(&id, a)
            .await
            .map_err(|e| failed(SetupStep::StartAgent, e))?;
        lap(SetupStep::StartAgent, &mut t);
    }
    vm.setup = Some(SetupReport { steps });
    Ok(vm)
}

/// Maps hosts to providers, building a client the first time a host is used (also for
/// hosts registered through another replica).
pub struct Providers {
    default: Arc<dyn Provider>,
    hosts: RwLock<HashMap<String, Arc<dyn Provider>>>,
    stubs: Arc<RwLock<HashMap<String, Arc<stub::StubProvider>>>>,
    allow_stub_hosts: bool,
}

impl Providers {
    /// `default` serves the pseudo-host; `allow_stub_hosts` lets hosts register with
    /// `stub://NAME` URLs (quick start and tests only).
    pub fn new(default: Arc<dyn Provider>, allow_stub_hosts: bool) -> Self {
        Providers {
            default,
            hosts: RwLock::new(HashMap::new()),
            stubs: Arc::new(RwLock::new(HashMap::new())),
            allow_stub_hosts,
        }
    }

    /// Providers whose default is an in-memory stub, reachable by tests as `stub("default")`;
    /// `stub://` host URLs are accepted.
    pub fn new_stub() -> Self {
        let stub = Arc::new(stub::StubProvider::new());
        let p = Providers::new(stub.clone(), true);
        stub.set_peers(Arc::downgrade(&p.stubs));
        p.stubs.write().insert(DEFAULT_HOST.to_owned(), stub);
        p
    }

    /// Whether `stub://` host URLs are accepted.
    pub fn allow_stub_hosts(&self) -> bool {
        self.allow_stub_hosts
    }

    /// The default provider.
    pub fn default_provider(&self) -> Arc<dyn Provider> {
        self.default.clone()
    }

    /// Builds (without caching) the provider for a host record.
    pub fn build(&self, url: &str, token: &str) -> Arc<dyn Provider> {
        if let Some(name) = url.strip_prefix("stub://") {
            let mut stubs = self.stubs.write();
            let s = stubs
                .entry(name.to_owned())
                .or_insert_with(|| {
                    let s = stub::StubProvider::new();
                    s.set_peers(Arc::downgrade(&self.stubs));
                    Arc::new(s)
                })
                .clone();
            return s;
        }
        Arc::new(hostagent::HostAgentClient::new(url, token))
    }

    /// Installs (or replaces) the provider of a host after registration.
    pub fn install(&self, host: &HostRecord) -> Arc<dyn Provider> {
        let p = self.build(&host.url, &host.token);
        self.hosts.write().insert(host.id.to_string(), p.clone());
        p
    }

    /// Forgets a deleted host.
    pub fn remove(&self, id: &str) {
        self.hosts.write().remove(id);
    }

    /// The provider of the VM's own host.
    pub async fn for_host(
        &self,
        store: &dyn StateStore,
        host_id: &HostId,
    ) -> Result<Arc<dyn Provider>, ProviderError> {
        if host_id.as_str() == DEFAULT_HOST {
            return Ok(self.default.clone());
        }
        if let Some(p) = self.hosts.read().get(host_id.as_str()) {
            return Ok(p.clone());
        }
        match store.host_get(host_id).await {
            Ok(Some(h)) => Ok(self.install(&h)),
            Ok(None) => Err(ProviderError::Unavailable(format!(
                "host {host_id} is not registered"
            ))),
            Err(e) => Err(ProviderError::Unavailable(e.to_string())),
        }
    }

    /// The stub behind a `stub://NAME` host (tests inspect what it recorded).
    pub fn stub(&self, name: &str) -> Option<Arc<stub::StubProvider>> {
        self.stubs.read().get(name).cloned()
    }
}
