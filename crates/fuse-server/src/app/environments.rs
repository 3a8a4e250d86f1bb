//! Environment operations (DESIGN §3): create → provision → running → draining →
//! destroyed, exec and rotate-token. Every transition goes through [`App::transition`] (the
//! lifecycle table); the provider is asked to act only after the state it acts on is
//! persisted. A concurrent delete wins over a provision in flight, and the provision then
//! removes what it created itself.
//!
//! A provision is one host call: the VM's whole guest setup (files with modes, credentials,
//! the startup script, the agent) travels with the create, and the host answers once with
//! per-step timings. Hosts of the Go-era wire are driven call by call by the provider.

use super::error::AppError;
use super::lifecycle::{Change, LifecycleError};
use super::validate::{self, ValidCreate};
use super::App;
use crate::provider::{Provider, ProviderError, DEFAULT_HOST};
use base64::Engine as _;
use fuse_store::{VmCreated, VmFilter, VmRecord, VmSecrets};
use fuse_types::hostagent::{
    AgentStart, AgentVmCreate, GuestFile, GuestSetup, HostEndpoint, PortExpose, SetupReport,
    SetupStep, StartupScript,
};
use fuse_types::lifecycle::{self as table, Event};
use fuse_types::{
    now, AgentSpec, CreateEnvironment, Endpoint, Environment, EnvironmentList, HostId, Protocol,
    VmId, VmState,
};
use std::sync::Arc;
use std::time::Instant;

/// Whether a create made a new environment or found the existing one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateOutcome {
    /// A new environment (201, or 202 with `wait=false`).
    New,
    /// The same request was made before; this is that environment (200).
    Existing,
}

/// Why a provision stopped.
#[derive(Debug)]
struct Failure {
    /// The step, as named in the record's error and the failure metric.
    step: &'static str,
    message: String,
    /// Someone else (a delete) changed the record; clean up but do not mark it failed.
    aborted: bool,
    /// The host failed to boot the VM (counts toward its quarantine).
    boot: bool,
}

impl Failure {
    fn at(step: &'static str, e: impl std::fmt::Display) -> Self {
        Failure {
            step,
            message: e.to_string(),
            aborted: false,
            boot: false,
        }
    }

    /// A host error: the full text goes to the log, the client-safe text to the record.
    fn host(e: ProviderError) -> Self {
        let step = match &e {
            ProviderError::SetupFailed { step, .. } => setup_step_name(*step),
            _ => "create_vm",
        };
        tracing::warn!(step, error = %e, "host call failed during provision");
        let mut f = Failure::at(step, e.client_message());
        // The host answered that the VM failed (not: out of room, unreachable, refused).
        f.boot = step == "create_vm"
            && matches!(
                e,
                ProviderError::Internal(_) | ProviderError::GuestFailed(_)
            );
        f
    }

    fn lifecycle(e: LifecycleError) -> Self {
        match e {
            LifecycleError::Store(s) => Failure::at("store", s),
            other => Failure {
                step: "aborted",
                message: other.to_string(),
                aborted: true,
                boot: false,
            },
        }
    }
}

/// The name of a setup step in records and metrics (the names of the call-by-call era).
fn setup_step_name(step: SetupStep) -> &'static str {
    match step {
        SetupStep::Boot => "create_vm",
        SetupStep::Files => "upload",
        SetupStep::StartupScript => "startup_script",
        SetupStep::StartAgent => "start_agent",
        SetupStep::Healthcheck => "healthcheck",
    }
}

/// Counts a provision in `provisions_in_flight` while it lives, however it ends.
struct InFlight(prometheus::IntGauge);

impl InFlight {
    fn new(g: &prometheus::IntGauge) -> Self {
        g.inc();
        InFlight(g.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn parse_id(id: &str) -> Result<VmId, AppError> {
    VmId::parse(id).map_err(|e| AppError::invalid(e.0))
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Refuses `event` early (before any host is asked) when the table does not allow it.
fn allowed(rec: &VmRecord, event: Event) -> Result<(), AppError> {
    table::step(Some(rec.state), event)
        .map(|_| ())
        .map_err(|source| {
            AppError::Lifecycle(LifecycleError::Illegal {
                id: rec.id.clone(),
                source,
            })
        })
}

impl App {
    /// Reads one environment in any state (also `destroyed` and `failed`) or 404.
    pub async fn env_record(&self, id: &str) -> Result<VmRecord, AppError> {
        let id = parse_id(id)?;
        self.store
            .vm_get(&id)
            .await?
            .ok_or_else(|| AppError::not_found("environment", &id))
    }

    /// Reads one live environment, as the API shows it: an environment that ended
    /// (`destroyed` or `failed`) is 404, as in the Go original (its clients poll until
    /// 404), with its last state, error and end time in the details while the record is
    /// kept. Counts as activity for the idle timeout.
    pub async fn env_get(&self, id: &str) -> Result<VmRecord, AppError> {
        let rec = self.env_record(id).await?;
        if rec.state.is_terminal() {
            let mut details = super::error::Details::new();
            details.insert("state".into(), rec.state.as_str().into());
            details.insert("error".into(), rec.error.clone().unwrap_or_default().into());
            let ended = rec
                .ended_at()
                .and_then(|t| {
                    t.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .unwrap_or_default();
            details.insert("destroyed_at".into(), ended.into());
            return Err(AppError::Ended {
                id: rec.id.to_string(),
                state: rec.state,
                details,
            });
        }
        self.touch(&rec).await;
        Ok(rec)
    }

    /// Records an API call on `rec` for its idle timeout (only environments that have one
    /// pay the write).
    pub async fn touch(&self, rec: &VmRecord) {
        if rec.spec.idle_timeout_seconds == 0 || !rec.state.is_serving() {
            return;
        }
        if let Err(e) = self
            .store
            .vm_note_activity(&rec.id, self.clock.now(), None)
            .await
        {
            tracing::debug!(vm_id = %rec.id, error = %e, "recording activity");
        }
    }

    /// One page of environments.
    pub async fn env_list(
        &self,
        filter: VmFilter,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<EnvironmentList, AppError> {
        // Paged in the store (by id), with the cursor of `paging`.
        let after = cursor.map(super::paging::cursor_decode).transpose()?;
        let mut rows = self
            .store
            .vm_list(&filter, after.as_deref(), limit + 1)
            .await?;
        let next_cursor = if rows.len() > limit {
            rows.truncate(limit);
            rows.last()
                .map(|r| super::paging::cursor_encode(r.id.as_str()))
        } else {
            None
        };
        Ok(EnvironmentList {
            environments: rows.iter().map(VmRecord::to_wire).collect(),
            next_cursor,
        })
    }

    /// Creates an environment (or returns the one made by the same request before).
    /// With `wait`, returns once it is `running` or `failed`.
    pub async fn env_create(
        self: &Arc<Self>,
        req: CreateEnvironment,
        wait: bool,
    ) -> Result<(Environment, CreateOutcome), AppError> {
        self.env_create_with(req, wait, None, None).await
    }

    /// [`App::env_create`], with when its time is up and (for an E2B sandbox) what the E2B
    /// API was asked for.
    pub async fn env_create_with(
        self: &Arc<Self>,
        req: CreateEnvironment,
        wait: bool,
        ends_at: Option<fuse_types::Timestamp>,
        e2b: Option<fuse_store::E2bSandbox>,
    ) -> Result<(Environment, CreateOutcome), AppError> {
        let mut valid = validate::create(&req).map_err(AppError::Invalid)?;
        valid.ends_at = ends_at;
        valid.e2b = e2b;
        let seed_name = req
            .template
            .clone()
            .filter(|t| !t.is_empty())
            .or_else(|| req.seed_snapshot_id.clone().filter(|t| !t.is_empty()));
        if let Some(name) = seed_name {
            let seed = self.seed_for(&name).await?;
            apply_seed(&mut valid, &req.spec, &seed)?;
        }
        let agent = self.agent_for(req.agent.as_ref(), &valid.gateway_url);
        self.create_valid(valid, agent, None, wait).await
    }

    /// The agent launch of a create: the profile's, the request's overrides, the server's
    /// defaults (start window, `FUSE_AGENT_COMMAND`).
    pub(super) fn agent_for(
        &self,
        asked: Option<&fuse_types::AgentOverride>,
        gateway_url: &str,
    ) -> AgentSpec {
        let mut agent = self
            .profile
            .resolve(&self.config.agent_download_url, asked, gateway_url);
        agent
            .start_window_ms
            .get_or_insert(self.config.agent_start_window.as_millis() as u64);
        let command_asked = asked.is_some_and(|a| a.command.is_some());
        if !command_asked && !self.config.agent_command.is_empty() {
            agent.command = self.config.agent_command.clone();
        }
        agent
    }

    /// What a warm-pool member runs before it waits (see `fc-agent`'s warm-up): the files
    /// and agent of a plain create, with credentials of its own that no one is given (its
    /// claim replaces them with the claiming environment's).
    pub(super) fn warm_up_setup(&self, rec: &VmRecord) -> Result<GuestSetup, AppError> {
        let (cert, key) = super::credentials::tls_pair(rec.id.as_str())
            .map_err(|e| AppError::Internal(format!("credentials: {e}")))?;
        let s = VmSecrets {
            auth_token: super::random_token(),
            gateway_token: String::new(),
            secrets: Default::default(),
            tls_cert_pem: cert,
            tls_key_pem: key,
            traffic_token: super::random_token(),
        };
        let mut files = super::credentials::files(self.profile, &s);
        let config = serde_json::json!({
            "vm_id": rec.id.as_str(),
            "task_id": rec.task_id.as_str(),
            "listen": rec.agent.listen,
            "gateway_url": "",
        });
        files.push(GuestFile {
            path: self.profile.config_path(),
            content_b64: b64(config.to_string().as_bytes()),
            mode: 0o644,
        });
        Ok(GuestSetup {
            files,
            startup: None,
            agent: Some(agent_start(&rec.agent, &s.auth_token, "")),
        })
    }

    /// Creates an environment from a validated request (a create, or a fork).
    pub(super) async fn create_valid(
        self: &Arc<Self>,
        valid: ValidCreate,
        agent: AgentSpec,
        forked_from: Option<String>,
        wait: bool,
    ) -> Result<(Environment, CreateOutcome), AppError> {
        let id = VmId::for_task(&self.config.vm_prefix, &valid.task_id);
        let mut valid = valid;
        if let Some(t) = valid.template.clone() {
            // A warm VM of the template's pool, unless this task's environment exists (the
            // create is then answered without one).
            let exists = self
                .store
                .vm_get(&id)
                .await?
                .is_some_and(|r| !r.state.is_terminal());
            if !exists {
                if let Some((warm, host)) = self.pool_draw(&t).await? {
                    valid.spec.host_id = host.to_string();
                    valid.warm_from = Some(warm);
                }
            }
        }
        let at = now();
        let rec = VmRecord {
            id: id.clone(),
            task_id: valid.task_id.clone(),
            state: VmState::Provisioning,
            generation: 1,
            host_id: None,
            reserved: None,
            url: String::new(),
            spec: valid.spec.clone(),
            request_hash: valid.request_hash.clone(),
            agent,
            error: None,
            restored_from: None,
            created_at: at,
            updated_at: at,
            running_since: None,
            owner: self.replica_id.clone(),
            secrets: None,
            extras: fuse_store::VmExtras {
                expose: valid.expose.clone(),
                healthcheck: valid.healthcheck.clone(),
                forked_from,
                egress: valid.egress.clone(),
                template: valid.template.clone(),
                ends_at: valid.ends_at,
                e2b: valid.e2b.clone(),
                ..Default::default()
            },
        };
        let started = Instant::now();
        let fallback = HostId::parse(DEFAULT_HOST).map_err(|e| AppError::Internal(e.0))?;
        // Persist `provisioning` and reserve capacity in one atomic step.
        let (created, no_room) = self
            .lifecycle_create(rec, self.config.policy, Some(&fallback))
            .await?;
        let placed = match created {
            VmCreated::Exists(e) if e.request_hash == valid.request_hash => {
                let e = if wait && e.state == VmState::Provisioning {
                    self.wait_settled(&e.id).await?
                } else {
                    e
                };
                return Ok((e.to_wire(), CreateOutcome::Existing));
            }
            VmCreated::Exists(e) => {
                return Err(AppError::conflict(format!(
                    "task {} already has environment {} ({}) created with a different request; \
                     delete it first or repeat the original request",
                    e.task_id, e.id, e.state
                ))
                .with_detail("environment_id", e.id.to_string()));
            }
            VmCreated::Created(r) => r,
        };
        if let Some(np) = no_room {
            self.metrics
                .provision_failures
                .with_label_values(&["placement"])
                .inc();
            return Err(AppError::NoCapacity(np));
        }
        let app = self.clone();
        let in_flight = InFlight::new(&self.metrics.provisions_in_flight);
        let handle = tokio::spawn(tracing::Instrument::instrument(
            async move {
                let _in_flight = in_flight;
                app.provision(placed, valid, started).await
            },
            tracing::Span::current(),
        ));
        if !wait {
            let cur = self.store.vm_get(&id).await?;
            let cur =
                cur.ok_or_else(|| AppError::Internal("environment vanished after create".into()))?;
            return Ok((cur.to_wire(), CreateOutcome::New));
        }
        let done = handle
            .await
            .map_err(|e| AppError::Internal(format!("provision task: {e}")))?;
        Ok((done.to_wire(), CreateOutcome::New))
    }

    /// Waits until the environment leaves `provisioning` (or the provision limit passes).
    pub async fn wait_settled(&self, id: &VmId) -> Result<VmRecord, AppError> {
        let mut rx = self.events.subscribe();
        let deadline = tokio::time::Instant::now() + self.config.provision_timeout;
        loop {
            let cur = self
                .store
                .vm_get(id)
                .await?
                .ok_or_else(|| AppError::not_found("environment", id))?;
            if cur.state != VmState::Provisioning {
                return Ok(cur);
            }
            loop {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Err(_) => return Ok(cur),
                    Ok(Ok(ev)) if ev.vm_id == id.as_str() => break,
                    Ok(Ok(_)) => continue,
                    Ok(Err(_)) => {
                        rx = self.events.subscribe();
                        break;
                    }
                }
            }
        }
    }

    async fn provision(
        self: Arc<Self>,
        rec: VmRecord,
        valid: ValidCreate,
        started: Instant,
    ) -> VmRecord {
        let id = rec.id.clone();
        let host_id = rec.host_id.clone();
        let incarnation = rec.created_at;
        let mut redact_list: Vec<String> = valid.secrets.values().cloned().collect();
        redact_list.push(valid.gateway_token.clone());
        let result = tokio::time::timeout(
            self.config.provision_timeout,
            self.provision_steps(rec, &valid, started),
        )
        .await;
        if valid.warm_from.is_some() {
            // A warm VM was drawn for it: its pool is refilled now that it is done.
            self.pools_wake();
        }
        let failure = match result {
            Ok(Ok(done)) => {
                self.metrics
                    .provision_duration
                    .with_label_values(&["running"])
                    .observe(started.elapsed().as_secs_f64());
                tracing::info!(vm_id = %id, host_id = ?done.host_id.as_ref().map(HostId::as_str),
                    ms = started.elapsed().as_millis() as u64, "environment running");
                if let Some(h) = &host_id {
                    self.boot_failures.lock().remove(h.as_str());
                }
                return done;
            }
            Ok(Err(f)) => f,
            Err(_) => Failure::at(
                "timeout",
                format!(
                    "provisioning took longer than {} s",
                    self.config.provision_timeout.as_secs()
                ),
            ),
        };
        let message = validate::redact(&failure.message, &redact_list);
        if let (Some(h), true) = (&host_id, failure.boot) {
            self.count_boot_failure(h, &message).await;
        }
        if failure.aborted {
            tracing::info!(vm_id = %id, "provision stopped: environment changed concurrently");
        } else {
            tracing::warn!(vm_id = %id, step = failure.step, error = %message, "provision failed");
            self.metrics
                .provision_failures
                .with_label_values(&[failure.step])
                .inc();
        }
        // A delete and a re-create with the same task id may have replaced our record: then
        // the VM name on the host and the reservation belong to the new incarnation.
        let current = self.store.vm_get(&id).await.ok().flatten();
        let replaced = current
            .as_ref()
            .is_some_and(|c| c.created_at != incarnation);
        // Remove what may have been created (destroy is idempotent: even a create that
        // timed out may have happened); capacity comes back only once the host confirmed.
        let mut host_clean = true;
        if let (Some(h), false) = (&host_id, replaced) {
            host_clean = match self.providers.for_host(&*self.store, h).await {
                Ok(p) => match p.vm_destroy(id.as_str()).await {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!(vm_id = %id, error = %e, "could not remove a failed VM; recovery will");
                        false
                    }
                },
                Err(_) => false,
            };
        }
        if replaced {
            return current.unwrap_or_else(|| unreachable_record(&id));
        }
        let change = if failure.aborted {
            // The record belongs to whoever changed it; only hand back our reservation if
            // it failed meanwhile and the host holds nothing.
            Change::new(Event::HostConfirmedGone)
        } else {
            Change::new(Event::ProvisionFailed)
                .reason(failure.step)
                .error(format!("{}: {message}", failure.step.replace('_', " ")))
                .redacting(redact_list)
                .gone_from_host(host_clean)
                .retrying()
        };
        let skip = failure.aborted
            && !(host_clean
                && current
                    .as_ref()
                    .is_some_and(|c| c.state == VmState::Failed && c.reserved.is_some()));
        if !skip {
            match self.transition_latest(&id, change).await {
                Ok(Some(r)) => {
                    if !failure.aborted {
                        self.metrics
                            .provision_duration
                            .with_label_values(&["failed"])
                            .observe(started.elapsed().as_secs_f64());
                    }
                    return r;
                }
                Ok(None) => {}
                Err(LifecycleError::Illegal { .. }) => {}
                Err(e) => {
                    tracing::error!(vm_id = %id, error = %e, "recording a failed provision")
                }
            }
        }
        match self.store.vm_get(&id).await {
            Ok(Some(r)) => r,
            _ => unreachable_record(&id),
        }
    }

    async fn provision_steps(
        &self,
        rec: VmRecord,
        valid: &ValidCreate,
        started: Instant,
    ) -> Result<VmRecord, Failure> {
        let host_id = rec
            .host_id
            .clone()
            .ok_or_else(|| Failure::at("placement", "environment has no host"))?;
        let provider = self
            .providers
            .for_host(&*self.store, &host_id)
            .await
            .map_err(Failure::host)?;
        let secrets = super::credentials::generate(rec.id.as_str(), valid)
            .map_err(|e| Failure::at("credentials", e))?;
        let setup = GuestSetup {
            files: self.setup_files(&rec, valid, &secrets),
            startup: valid.startup_script.as_ref().map(|s| StartupScript {
                script: s.clone(),
                timeout_ms: self.config.provision_timeout.as_millis() as u64,
            }),
            agent: Some(agent_start(
                &rec.agent,
                &secrets.auth_token,
                &secrets.gateway_token,
            )),
        };
        let expose = port_exposes(&valid.expose);
        let create = AgentVmCreate {
            name: rec.id.to_string(),
            cpus: rec.spec.cpus,
            memory_mb: rec.spec.ram_mb,
            storage_gb: rec.spec.storage_gb,
            agent_port: rec.agent.port,
            setup: Some(setup),
            from_snapshot: valid.from_snapshot.clone(),
            expose,
            healthcheck: valid.healthcheck.clone(),
            healthcheck_wait_ms: if valid.healthcheck.is_some() {
                healthcheck_wait(self.config.provision_timeout, started.elapsed())
            } else {
                0
            },
            egress: valid.egress.clone(),
            warm: false,
            hostname: None,
        };
        let claimed = match &valid.warm_from {
            Some(warm) => {
                let claim = fuse_types::hostagent::AgentClaim {
                    name: create.name.clone(),
                    hostname: None,
                    setup: create.setup.clone(),
                    expose: create.expose.clone(),
                    egress: create.egress.clone(),
                };
                match provider.vm_claim(warm, &claim).await {
                    Ok(vm) => Some(vm),
                    Err(e) => {
                        // The template's own restore still works: the warm VM goes.
                        tracing::warn!(vm_id = %rec.id, warm = %warm, error = %e,
                            "claiming a warm VM failed; restoring the template instead");
                        let _ = provider.vm_destroy(warm).await;
                        None
                    }
                }
            }
            None => None,
        };
        let vm = match claimed {
            Some(vm) => vm,
            None => provider
                .vm_provision(&create)
                .await
                .map_err(Failure::host)?,
        };
        if let Some(report) = &vm.setup {
            self.observe_setup(&rec.id, report);
        }
        let url = self.profile.public_url(&vm.url, &rec.agent.command);
        let mut extras = rec.extras.clone();
        extras.endpoints = endpoints(&valid.expose, &vm.endpoints);
        for e in &mut extras.endpoints {
            super::ports::endpoint_urls(&self.config.proxy, rec.id.as_str(), e);
        }
        extras.traffic_token_sha256 = Some(super::ports::token_digest(&secrets.traffic_token));
        extras.health = vm.health.clone();
        extras.net_bytes = vm.net_bytes;
        let change = Change::new(Event::Provisioned)
            .url(url)
            .secrets(secrets)
            .extras(extras)
            .retrying();
        self.transition(&rec, change)
            .await
            .map_err(Failure::lifecycle)
    }

    /// Records how long each step of a provision took on its host.
    fn observe_setup(&self, id: &VmId, report: &SetupReport) {
        for s in &report.steps {
            self.metrics
                .provision_step_duration
                .with_label_values(&[s.step.as_str()])
                .observe(s.ms as f64 / 1000.0);
        }
        tracing::debug!(vm_id = %id, steps = ?report.steps, "guest setup timings");
    }

    /// Every file a new environment's guest gets, in order: the manifest, the credentials,
    /// the agent's config, then the request's own files.
    fn setup_files(&self, rec: &VmRecord, valid: &ValidCreate, s: &VmSecrets) -> Vec<GuestFile> {
        let p = self.profile;
        let mut files = Vec::with_capacity(6 + valid.files.len());
        if let Some(m) = &valid.manifest {
            files.push(GuestFile {
                path: p.manifest_path(),
                content_b64: b64(m),
                mode: 0o644,
            });
        }
        files.extend(super::credentials::files(p, s));
        let config = serde_json::json!({
            "vm_id": rec.id.as_str(),
            "task_id": rec.task_id.as_str(),
            "listen": rec.agent.listen,
            "gateway_url": valid.gateway_url,
        });
        files.push(GuestFile {
            path: p.config_path(),
            content_b64: b64(config.to_string().as_bytes()),
            mode: 0o644,
        });
        for (path, content) in &valid.files {
            files.push(GuestFile {
                path: path.clone(),
                content_b64: b64(content),
                mode: 0o644,
            });
        }
        files
    }

    /// Deletes an environment: persist `destroying`, destroy on its host, release, persist
    /// `destroyed`. A host that cannot be reached leaves it `destroying` for the reconciler.
    pub async fn env_delete(&self, id: &str) -> Result<(), AppError> {
        // A repeated delete of a destroyed environment is a no-op, not a 404.
        let rec = self.env_record(id).await?;
        let rec = self.transition(&rec, Change::new(Event::Destroy)).await?;
        match rec.state {
            VmState::Destroying => self.env_finish_destroy(rec).await,
            _ => Ok(()),
        }
    }

    /// Finishes the destroy of a `destroying` environment (also used by the reconciler and
    /// recovery): the host destroys the VM, then `destroyed` with the capacity returned; a
    /// host that does not confirm leaves it `destroying` with the reason.
    pub async fn env_finish_destroy(&self, rec: VmRecord) -> Result<(), AppError> {
        let id = rec.id.clone();
        if let Some(h) = &rec.host_id {
            let res = match self.providers.for_host(&*self.store, h).await {
                Ok(p) => p.vm_destroy(id.as_str()).await,
                Err(e) => Err(e),
            };
            if let Err(e) = res {
                tracing::warn!(vm_id = %id, host_id = %h, error = %e, "destroy deferred: host did not confirm");
                let change = Change::new(Event::DestroyDeferred)
                    .error(format!("destroy pending: {}", e.client_message()));
                match self.transition_latest(&id, change).await {
                    Ok(_) | Err(LifecycleError::Illegal { .. }) => return Ok(()),
                    Err(e) => return Err(e.into()),
                }
            }
        }
        let change = Change::new(Event::DestroyConfirmed).reason("destroyed on host");
        let first = self.transition(&rec, change.clone()).await;
        let done = match first {
            Err(LifecycleError::Stale { .. }) => self.transition_latest(&id, change).await,
            r => r.map(Some),
        };
        match done {
            // Someone else finished it first.
            Ok(_) | Err(LifecycleError::Illegal { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Drains a running environment (or a draining one again, e.g. after its drain command
    /// failed): persist `draining`, then run the drain command with its limit. A failure
    /// keeps `draining` and records the error. Never destroys.
    pub async fn env_drain(&self, id: &str) -> Result<VmRecord, AppError> {
        let rec = self.env_get(id).await?;
        let rec = self
            .transition(&rec, Change::new(Event::Drain).reason("drain requested"))
            .await?;
        let cmd = rec.agent.drain_command.trim();
        if cmd.is_empty() {
            return Ok(rec);
        }
        let argv = vec!["sh".to_owned(), "-c".to_owned(), cmd.to_owned()];
        let result = match self.provider_of(&rec).await {
            Ok(p) => {
                p.exec(rec.id.as_str(), &argv, self.config.drain_timeout)
                    .await
            }
            Err(e) => Err(e),
        };
        let error = match result {
            Ok(r) if r.exit_code == 0 => None,
            Ok(r) if r.exit_code == 124 => Some(format!(
                "drain command did not finish within {} s",
                self.config.drain_timeout.as_secs()
            )),
            Ok(r) => Some(format!(
                "drain command exited with {}: {}",
                r.exit_code,
                fuse_types::hostagent::output_tail(&r.stderr, 400)
            )),
            Err(e) => Some(format!("drain command failed: {}", e.client_message())),
        };
        let Some(error) = error else {
            return Ok(rec);
        };
        let rec = self
            .transition(&rec, Change::new(Event::DrainFailed).error(error))
            .await?;
        tracing::warn!(vm_id = %rec.id, error = ?rec.error, "drain failed");
        Ok(rec)
    }

    /// Gives the agent new credentials and restarts it, so the old token stops working.
    pub async fn env_rotate_token(&self, id: &str) -> Result<(), AppError> {
        let rec = self.env_get(id).await?;
        allowed(&rec, Event::TokenRotated)?;
        let provider = self.provider_of(&rec).await?;
        let Some(old) = rec.secrets.clone() else {
            return Err(AppError::Unavailable(
                "this environment's credentials were not persisted (no TOKEN_ENCRYPTION_KEY when it \
                 was created, or the control plane restarted); recreate it to rotate its token"
                    .into(),
            ));
        };
        let fresh = super::credentials::rotate(rec.id.as_str(), &old)
            .map_err(|e| AppError::Internal(format!("generating credentials: {e}")))?;
        // Persist first: if the upload fails half-way, a retry rotates again from here.
        let rec = self
            .transition(
                &rec,
                Change::new(Event::TokenRotated).secrets(fresh.clone()),
            )
            .await?;
        for f in super::credentials::files(self.profile, &fresh) {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(&f.content_b64)
                .map_err(|e| AppError::Internal(e.to_string()))?;
            provider
                .upload(rec.id.as_str(), &f.path, &bytes, f.mode)
                .await?;
        }
        provider.stop_agent(rec.id.as_str()).await?;
        // The binary was fetched at create: a restart with new credentials uses it.
        let mut restart = agent_start(&rec.agent, &fresh.auth_token, &fresh.gateway_token);
        restart.download_url.clear();
        provider.start_agent(rec.id.as_str(), &restart).await?;
        Ok(())
    }

    /// Replaces a running (or draining) environment's egress rules: the host enforces them
    /// first (one nftables transaction there), then they are persisted with an
    /// `egress_changed` audit event. Updates of one environment are serialized here, so
    /// the host and the store end with the same rules.
    pub async fn env_egress_set(
        &self,
        id: &str,
        spec: fuse_types::EgressSpec,
    ) -> Result<VmRecord, AppError> {
        let mut errs = Vec::new();
        let rules = validate::check_egress(&spec, &mut errs);
        if !errs.is_empty() {
            return Err(AppError::Invalid(errs));
        }
        let _one = self.egress_lock.lock().await;
        let rec = self.env_get(id).await?;
        if !matches!(rec.state, VmState::Running | VmState::Draining) {
            return Err(AppError::conflict(format!(
                "environment {} is {}; egress rules change only in running or draining environments",
                rec.id, rec.state
            )));
        }
        let provider = self.provider_of(&rec).await?;
        provider
            .vm_egress(rec.id.as_str(), &rules.clone().unwrap_or_default())
            .await?;
        let mode = rules.as_ref().map_or("direct", |r| r.mode.as_str());
        // Another writer (a health verdict) may bump the generation meanwhile: read again
        // and write the rules on top of what it wrote.
        let mut rec = rec;
        for _ in 0..5 {
            let mut extras = rec.extras.clone();
            extras.egress = rules.clone();
            let change = Change::new(Event::EgressChanged)
                .extras(extras)
                .payload(serde_json::json!({ "mode": mode }));
            match self.transition(&rec, change).await {
                Ok(written) => {
                    tracing::info!(vm_id = %written.id, mode, "egress rules changed");
                    return Ok(written);
                }
                Err(LifecycleError::Stale { .. }) => rec = self.env_record(id).await?,
                Err(e) => return Err(e.into()),
            }
        }
        Err(AppError::Unavailable(format!(
            "environment {id} kept changing; retry the egress update"
        )))
    }

    /// The provider of the VM's own host.
    pub async fn provider_of(&self, rec: &VmRecord) -> Result<Arc<dyn Provider>, ProviderError> {
        let h = rec
            .host_id
            .as_ref()
            .ok_or_else(|| ProviderError::Unavailable(format!("{} is not placed", rec.id)))?;
        self.providers.for_host(&*self.store, h).await
    }
}

/// The host's form of the ports an environment publishes (validated before: the port fits
/// and the protocol parses).
pub(super) fn port_exposes(asked: &[fuse_types::ExposeSpec]) -> Vec<PortExpose> {
    asked
        .iter()
        .map(|e| PortExpose {
            port: e.port as u16,
            protocol: e
                .protocol
                .as_deref()
                .unwrap_or("")
                .parse()
                .unwrap_or_default(),
        })
        .collect()
}

/// Makes a validated create start from `seed` (a template or a live snapshot): the size is
/// the seed's (a request that asks for another CPU count or memory size is refused: a memory
/// image restores only into the machine it was taken of), the disk at least the seed's, the
/// host the one holding the snapshot.
fn apply_seed(
    valid: &mut ValidCreate,
    asked: &fuse_types::SpecInput,
    seed: &super::templates::Seed,
) -> Result<(), AppError> {
    let mut errs = Vec::new();
    let what = seed
        .template
        .as_deref()
        .map(|t| format!("template {t}"))
        .unwrap_or_else(|| format!("snapshot {}", seed.snapshot.id));
    if let Some(ts) = &seed.spec {
        if asked.cpus.is_some_and(|c| c != ts.cpus) {
            errs.push(format!(
                "spec.cpus must be {} (the size of {what}) or left out",
                ts.cpus
            ));
        }
        if asked.ram_mb.is_some_and(|m| m != ts.ram_mb) {
            errs.push(format!(
                "spec.ram_mb must be {} (the size of {what}) or left out",
                ts.ram_mb
            ));
        }
        valid.spec.cpus = ts.cpus;
        valid.spec.ram_mb = ts.ram_mb;
        match asked.storage_gb {
            None => valid.spec.storage_gb = ts.storage_gb,
            Some(g) if g < ts.storage_gb => errs.push(format!(
                "spec.storage_gb must be at least {} (the disk of {what})",
                ts.storage_gb
            )),
            Some(_) => {}
        }
    }
    let host = seed
        .snapshot
        .host_id
        .as_ref()
        .map(|h| h.to_string())
        .unwrap_or_default();
    if !valid.spec.host_id.is_empty() && valid.spec.host_id != host {
        errs.push(format!(
            "spec.host_id: {what} is on host {host}; environments from it start there"
        ));
    }
    if !errs.is_empty() {
        return Err(AppError::Invalid(errs));
    }
    valid.spec.host_id = host;
    valid.from_snapshot = Some(seed.source());
    valid.template = seed.template.clone();
    Ok(())
}

/// How long the host waits for a first `passing`: what is left of the provision's time,
/// less a margin for the answer to come back, so a probe that never passes fails the create
/// with its own message rather than with the provision's timeout.
fn healthcheck_wait(limit: std::time::Duration, elapsed: std::time::Duration) -> u64 {
    let margin = (limit / 10).clamp(
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(10),
    );
    limit
        .saturating_sub(elapsed)
        .saturating_sub(margin)
        .max(std::time::Duration::from_secs(1))
        .as_millis() as u64
}

/// The published ports of an environment: what was asked, with the address the host made
/// (the proxy's URLs are added by [`super::ports::endpoint_urls`]).
pub fn endpoints(asked: &[fuse_types::ExposeSpec], made: &[HostEndpoint]) -> Vec<Endpoint> {
    asked
        .iter()
        .filter_map(|e| {
            let proto: Protocol = e.protocol.as_deref().unwrap_or("").parse().ok()?;
            let m = made
                .iter()
                .find(|m| u32::from(m.port) == e.port && m.protocol == proto)?;
            let forward = format!("{}://{}", proto.as_str(), m.address);
            Some(Endpoint {
                as_: e.as_.clone().unwrap_or_default(),
                url: forward.clone(),
                protocol: proto.as_str().into(),
                port: m.port,
                public: e.public.unwrap_or(false),
                forward_url: forward,
                ..Endpoint::default()
            })
        })
        .collect()
}

pub(super) fn agent_start(a: &AgentSpec, auth_token: &str, gateway_token: &str) -> AgentStart {
    AgentStart {
        download_url: a.download_url.clone(),
        command: a.command.clone(),
        binary_path: a.binary_path.clone(),
        listen: a.listen.clone(),
        auth_token: auth_token.to_owned(),
        gateway: a.gateway.clone(),
        gateway_token: gateway_token.to_owned(),
        sha256: a.sha256.clone(),
        start_window_ms: a.start_window_ms,
    }
}

/// Only reached if the store lost a row it just wrote; keeps the task from panicking.
fn unreachable_record(id: &VmId) -> VmRecord {
    let at = now();
    VmRecord {
        id: id.clone(),
        task_id: fuse_types::TaskId::parse("unknown").unwrap_or_else(|_| unreachable!()),
        state: VmState::Failed,
        generation: 0,
        host_id: None,
        reserved: None,
        url: String::new(),
        spec: fuse_types::Spec::default(),
        request_hash: String::new(),
        agent: AgentSpec::default(),
        error: Some("environment record lost".into()),
        restored_from: None,
        created_at: at,
        updated_at: at,
        running_since: None,
        owner: String::new(),
        secrets: None,
        extras: Default::default(),
    }
}

/// Task id of a fork of `task`: the source's id (shortened to fit) and 8 random hex.
fn fork_task_id(task: &str) -> Result<fuse_types::TaskId, AppError> {
    let mut b = [0u8; 4];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut b);
    let head: String = task.chars().take(63 - 14).collect();
    let head = head.trim_end_matches('-');
    fuse_types::TaskId::parse(&format!("{head}-fork-{}", hex::encode(b)))
        .map_err(|e| AppError::Internal(e.0))
}

impl App {
    /// Forks a running environment: a new environment on the same host whose disk starts
    /// from a disk snapshot of the source (taken now, or `reuse_snapshot_id`), with its own
    /// id, network address, credentials and token. The source's published ports and
    /// healthcheck carry over; its startup script does not run again (its effects are on
    /// the disk). Returns the new environment once it runs.
    pub async fn env_fork(
        self: &Arc<Self>,
        id: &str,
        req: fuse_types::ForkRequest,
        tenant: &str,
    ) -> Result<Environment, AppError> {
        let src = self.env_get(id).await?;
        if !src.state.is_serving() {
            return Err(AppError::conflict(format!(
                "environment {} is {}; only a running or draining environment can be forked",
                src.id, src.state
            )));
        }
        let host = src
            .host_id
            .clone()
            .ok_or_else(|| AppError::conflict(format!("environment {} is not placed", src.id)))?;
        let snap = match req.reuse_snapshot_id.as_deref().filter(|s| !s.is_empty()) {
            Some(sid) => {
                let s = self.snapshot_get(sid).await?;
                if s.vm_id != src.id {
                    return Err(AppError::invalid(format!(
                        "reuse_snapshot_id {sid} is a snapshot of {}, not of {}",
                        s.vm_id, src.id
                    )));
                }
                if s.state != fuse_types::SnapshotState::Ready {
                    return Err(AppError::conflict(format!(
                        "snapshot {sid} is {}; only a ready snapshot can seed a fork",
                        s.state
                    )));
                }
                if s.kind == "live" {
                    return Err(AppError::conflict(format!(
                        "snapshot {sid} is live (memory and disk); a fork starts from a disk \
                         snapshot"
                    )));
                }
                s
            }
            None => {
                // What the guest wrote but has not flushed would be missing from the disk.
                if let Ok(p) = self.provider_of(&src).await {
                    let sync = ["sync".to_owned()];
                    match p
                        .exec(src.id.as_str(), &sync, std::time::Duration::from_secs(30))
                        .await
                    {
                        Ok(r) if r.exit_code == 0 => {}
                        other => {
                            tracing::warn!(vm_id = %src.id, result = ?other.map(|r| r.exit_code),
                            "sync before the fork's snapshot did not succeed; snapshotting anyway")
                        }
                    }
                }
                let comment = req
                    .comment
                    .clone()
                    .unwrap_or_else(|| format!("fork of {}", src.id));
                self.snapshot_create(
                    src.id.as_str(),
                    fuse_types::CreateSnapshot {
                        mode: Some("disk".into()),
                        comment: Some(comment),
                        ..Default::default()
                    },
                    tenant,
                )
                .await?
            }
        };
        let Some(kept) = src.secrets.clone() else {
            return Err(AppError::Unavailable(format!(
                "environment {}'s secrets were not persisted (no TOKEN_ENCRYPTION_KEY when it \
                 was created, or the control plane restarted); a fork would start without them",
                src.id
            )));
        };
        let task_id = fork_task_id(src.task_id.as_str())?;
        let mut spec = src.spec.clone();
        spec.host_id = host.to_string();
        let (secrets, gateway_token) = (kept.secrets, kept.gateway_token);
        let h = <sha2::Sha256 as sha2::Digest>::new_with_prefix(
            format!("fork\0{}\0{}", snap.id, task_id).as_bytes(),
        );
        let valid = ValidCreate {
            task_id,
            spec,
            manifest: None,
            secrets,
            files: Vec::new(),
            startup_script: None,
            gateway_url: src.agent.gateway.clone(),
            gateway_token,
            request_hash: hex::encode(sha2::Digest::finalize(h)),
            expose: src.extras.expose.clone(),
            healthcheck: src.extras.healthcheck.clone(),
            egress: src.extras.egress.clone(),
            from_snapshot: Some(fuse_types::hostagent::SnapshotSource {
                vm_id: src.id.to_string(),
                snapshot_id: if snap.host_snapshot_id.is_empty() {
                    snap.id.to_string()
                } else {
                    snap.host_snapshot_id.clone()
                },
                memory: false,
            }),
            template: None,
            warm_from: None,
            ends_at: None,
            e2b: None,
        };
        tracing::info!(source = %src.id, snapshot_id = %snap.id, task_id = %valid.task_id, "forking environment");
        let (env, _) = self
            .create_valid(valid, src.agent.clone(), Some(snap.id.to_string()), true)
            .await?;
        Ok(env)
    }
}
