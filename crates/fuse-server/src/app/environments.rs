//! Environment lifecycle (DESIGN §3): create → provision → running → draining → destroyed,
//! exec and rotate-token. Every transition is persisted (generation-checked) before the
//! provider acts on it; a concurrent delete wins over a provision in flight, and the
//! provision then removes what it created itself.

use super::validate::{self, ValidCreate};
use super::App;
use crate::error::ApiError;
use crate::provider::{Provider, ProviderError, DEFAULT_HOST};
use base64::Engine as _;
use fuse_store::{AuditEvent, StoreError, VmCreated, VmFilter, VmPatch, VmRecord, VmSecrets};
use fuse_types::hostagent::{AgentStart, AgentVmCreate};
use fuse_types::{
    now, AgentSpec, CreateEnvironment, Environment, EnvironmentList, ExecRequest, ExecResponse,
    HostId, VmId, VmState,
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
    fn host(step: &'static str, e: ProviderError) -> Self {
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
}

/// How long work in flight waits for an unavailable store (a database restart takes
/// seconds) before it gives up and leaves the rest to recovery.
const STORE_RETRY: std::time::Duration = std::time::Duration::from_secs(30);

/// Runs a store call, again while the store answers `Unavailable`, with back-off, for at
/// most [`STORE_RETRY`].
async fn store_retry<T, F, Fut>(mut call: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let deadline = Instant::now() + STORE_RETRY;
    let mut wait = std::time::Duration::from_millis(50);
    loop {
        match call().await {
            Err(StoreError::Unavailable(m)) if Instant::now() < deadline => {
                tracing::debug!(error = %m, "store unavailable; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(std::time::Duration::from_secs(2));
            }
            r => return r,
        }
    }
}

fn parse_id(id: &str) -> Result<VmId, ApiError> {
    VmId::parse(id).map_err(|e| ApiError::invalid(e.0))
}

/// Opaque pagination cursor: the last id of the previous page, base64url.
fn cursor_encode(id: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id)
}

fn cursor_decode(c: &str) -> Result<String, ApiError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(c)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| ApiError::invalid("cursor is not a value returned as next_cursor"))
}

fn tail(s: &str, max: usize) -> &str {
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

impl App {
    /// Reads one environment or 404.
    pub async fn env_get(&self, id: &str) -> Result<VmRecord, ApiError> {
        let id = parse_id(id)?;
        self.store
            .vm_get(&id)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("environment {id} not found")))
    }

    /// One page of environments.
    pub async fn env_list(
        &self,
        filter: VmFilter,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<EnvironmentList, ApiError> {
        let after = cursor.map(cursor_decode).transpose()?;
        let mut rows = self
            .store
            .vm_list(&filter, after.as_deref(), limit + 1)
            .await?;
        let next_cursor = if rows.len() > limit {
            rows.truncate(limit);
            rows.last().map(|r| cursor_encode(r.id.as_str()))
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
    ) -> Result<(Environment, CreateOutcome), ApiError> {
        let valid = validate::create(&req).map_err(ApiError::invalid_all)?;
        let id = VmId::for_task(&self.config.vm_prefix, &valid.task_id);
        let agent = self.profile.resolve(
            &self.config.agent_download_url,
            req.agent.as_ref(),
            &valid.gateway_url,
        );
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
        };
        let started = Instant::now();
        let fallback = HostId::parse(DEFAULT_HOST).map_err(|e| ApiError::internal(e.0))?;
        // Persist `provisioning` and reserve capacity in one atomic step.
        let (created, no_room) = self
            .store
            .vm_create_placed(rec, self.config.policy, Some(&fallback))
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
                return Err(ApiError::conflict(format!(
                    "task {} already has environment {} ({}) created with a different request; \
                     delete it first or repeat the original request",
                    e.task_id, e.id, e.state
                ))
                .with_detail("environment_id", e.id.to_string()));
            }
            VmCreated::Created(r) => r,
        };
        if let Some(np) = no_room {
            self.events.publish(&placed);
            self.metrics
                .provision_failures
                .with_label_values(&["placement"])
                .inc();
            return Err(ApiError::unavailable(np.to_string()));
        }
        self.events.publish(&placed);
        let app = self.clone();
        let handle = tokio::spawn(tracing::Instrument::instrument(
            async move { app.provision(placed, valid, started).await },
            tracing::Span::current(),
        ));
        if !wait {
            let cur = self.store.vm_get(&id).await?;
            let cur = cur.ok_or_else(|| ApiError::internal("environment vanished after create"))?;
            return Ok((cur.to_wire(), CreateOutcome::New));
        }
        let done = handle
            .await
            .map_err(|e| ApiError::internal(format!("provision task: {e}")))?;
        Ok((done.to_wire(), CreateOutcome::New))
    }

    /// Waits until the environment leaves `provisioning` (or the provision limit passes).
    pub async fn wait_settled(&self, id: &VmId) -> Result<VmRecord, ApiError> {
        let mut rx = self.events.subscribe();
        let deadline = tokio::time::Instant::now() + self.config.provision_timeout;
        loop {
            let cur = self
                .store
                .vm_get(id)
                .await?
                .ok_or_else(|| ApiError::not_found(format!("environment {id} not found")))?;
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
            self.provision_steps(rec, &valid),
        )
        .await;
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
        let replaced = match store_retry(|| self.store.vm_get(&id)).await {
            Ok(Some(cur)) => cur.created_at != incarnation,
            _ => false,
        };
        // Remove what may have been created (destroy is idempotent: even a create that
        // timed out may have happened); release capacity only once the host confirmed.
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
        let release_now = host_clean && !replaced;
        let mut last = None;
        for _ in 0..5 {
            let cur = match store_retry(|| self.store.vm_get(&id)).await {
                Ok(Some(c)) => c,
                _ => break,
            };
            if failure.aborted || replaced || cur.state != VmState::Provisioning {
                // Someone else owns the record's state now; still return our reservation
                // if the host confirmed the VM is gone (a no-op if already released).
                if release_now && !replaced {
                    if let Err(e) = self.store.vm_release(&id).await {
                        tracing::error!(vm_id = %id, error = %e, "releasing capacity after a stopped provision");
                    }
                }
                last = Some(cur);
                break;
            }
            let mut patch = VmPatch::state(VmState::Failed, failure.step)
                .with_error(format!("{}: {message}", failure.step.replace('_', " ")));
            patch.release = release_now;
            match store_retry(|| self.store.vm_update(&id, cur.generation, patch.clone())).await {
                Ok(r) => {
                    self.metrics
                        .provision_duration
                        .with_label_values(&["failed"])
                        .observe(started.elapsed().as_secs_f64());
                    self.events.publish(&r);
                    last = Some(r);
                    break;
                }
                Err(StoreError::Stale { .. }) => continue,
                Err(e) => {
                    tracing::error!(vm_id = %id, error = %e, "recording a failed provision");
                    break;
                }
            }
        }
        match last {
            Some(r) => r,
            None => self
                .store
                .vm_get(&id)
                .await
                .ok()
                .flatten()
                .unwrap_or_else(|| unreachable_record(&id)),
        }
    }

    /// Persists `patch` against the generation we hold; a concurrent change aborts. While
    /// the store is unavailable (a database restart) the write is retried; if a retried
    /// write finds the record already where the patch leads, the lost reply is taken as
    /// success.
    async fn advance(&self, rec: &VmRecord, patch: VmPatch) -> Result<VmRecord, Failure> {
        let mut retried = false;
        let r = store_retry(|| {
            let patch = patch.clone();
            let first = !retried;
            retried = true;
            async move {
                let r = self
                    .store
                    .vm_update(&rec.id, rec.generation, patch.clone())
                    .await;
                match r {
                    Err(StoreError::Stale { .. }) if !first => {
                        match self.store.vm_get(&rec.id).await? {
                            Some(cur)
                                if Some(cur.state) == patch.state
                                    && cur.generation == rec.generation + 1 =>
                            {
                                Ok(cur)
                            }
                            _ => r,
                        }
                    }
                    r => r,
                }
            }
        })
        .await;
        match r {
            Ok(r) => Ok(r),
            Err(StoreError::Stale { .. } | StoreError::Transition { .. }) => Err(Failure {
                step: "aborted",
                message: "environment changed concurrently".into(),
                aborted: true,
                boot: false,
            }),
            Err(e) => Err(Failure::at("store", e)),
        }
    }

    async fn provision_steps(
        &self,
        rec: VmRecord,
        valid: &ValidCreate,
    ) -> Result<VmRecord, Failure> {
        let host_id = rec
            .host_id
            .clone()
            .ok_or_else(|| Failure::at("placement", "environment has no host"))?;
        let provider = self
            .providers
            .for_host(&*self.store, &host_id)
            .await
            .map_err(|e| Failure::host("host", e))?;
        let vm = provider
            .vm_create(&AgentVmCreate {
                name: rec.id.to_string(),
                cpus: rec.spec.cpus,
                memory_mb: rec.spec.ram_mb,
                storage_gb: rec.spec.storage_gb,
                agent_port: rec
                    .agent
                    .listen
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.parse().ok()),
            })
            .await
            .map_err(|e| Failure::host("create_vm", e))?;
        let url = self.profile.public_url(&vm.url, &rec.agent.command);
        let secrets = super::credentials::generate(rec.id.as_str(), valid)
            .map_err(|e| Failure::at("credentials", e))?;
        self.upload_agent_files(&*provider, &rec, valid, &secrets)
            .await
            .map_err(|e| Failure::host("upload", e))?;
        if let Some(script) = &valid.startup_script {
            let argv = vec!["sh".to_owned(), "-lc".to_owned(), script.clone()];
            let r = provider
                .exec(rec.id.as_str(), &argv, self.config.provision_timeout)
                .await
                .map_err(|e| Failure::host("startup_script", e))?;
            if r.exit_code != 0 {
                return Err(Failure::at(
                    "startup_script",
                    format!("exited with {}: {}", r.exit_code, tail(&r.stderr, 400)),
                ));
            }
        }
        provider
            .start_agent(
                rec.id.as_str(),
                &agent_start(&rec.agent, &secrets.auth_token, &secrets.gateway_token),
            )
            .await
            .map_err(|e| Failure::host("start_agent", e))?;
        let patch = VmPatch {
            url: Some(url),
            secrets: Some(Some(secrets)),
            ..VmPatch::state(VmState::Running, "provisioned")
        };
        let rec = self.advance(&rec, patch).await?;
        self.events.publish(&rec);
        Ok(rec)
    }

    async fn upload_agent_files(
        &self,
        provider: &dyn Provider,
        rec: &VmRecord,
        valid: &ValidCreate,
        secrets: &VmSecrets,
    ) -> Result<(), ProviderError> {
        let id = rec.id.as_str();
        let p = self.profile;
        if let Some(m) = &valid.manifest {
            provider.upload(id, &p.manifest_path(), m, 0o644).await?;
        }
        super::credentials::upload(provider, p, id, secrets).await?;
        let config = serde_json::json!({
            "vm_id": id,
            "task_id": rec.task_id.as_str(),
            "listen": rec.agent.listen,
            "gateway_url": valid.gateway_url,
        });
        provider
            .upload(id, &p.config_path(), config.to_string().as_bytes(), 0o644)
            .await?;
        for (path, content) in &valid.files {
            provider.upload(id, path, content, 0o644).await?;
        }
        Ok(())
    }

    /// Deletes an environment: persist `destroying`, destroy on its host, release, persist
    /// `destroyed`. A host that cannot be reached leaves it `destroying` for the reconciler.
    pub async fn env_delete(&self, id: &str) -> Result<(), ApiError> {
        let id = parse_id(id)?;
        let (rec, changed) = match self.store.vm_begin_destroy(&id).await {
            Ok(r) => r,
            Err(StoreError::NotFound { .. }) => {
                return Err(ApiError::not_found(format!("environment {id} not found")))
            }
            Err(e) => return Err(e.into()),
        };
        if changed {
            self.events.publish(&rec);
        }
        if rec.state == VmState::Destroyed {
            return Ok(());
        }
        self.env_finish_destroy(rec).await
    }

    /// Finishes the destroy of a `destroying` environment (also used by the reconciler).
    pub async fn env_finish_destroy(&self, rec: VmRecord) -> Result<(), ApiError> {
        let id = rec.id.clone();
        if let Some(h) = &rec.host_id {
            let res = match self.providers.for_host(&*self.store, h).await {
                Ok(p) => p.vm_destroy(id.as_str()).await,
                Err(e) => Err(e),
            };
            if let Err(e) = res {
                tracing::warn!(vm_id = %id, host_id = %h, error = %e, "destroy deferred: host did not confirm");
                if let Ok(Some(cur)) = self.store.vm_get(&id).await {
                    let patch = VmPatch {
                        error: Some(Some(format!("destroy pending: {}", e.client_message()))),
                        ..VmPatch::default()
                    };
                    if let Ok(r) = self.store.vm_update(&id, cur.generation, patch).await {
                        self.events.publish(&r);
                    }
                }
                return Ok(());
            }
        }
        // First try with the record we hold; re-read only if someone changed it meanwhile.
        let mut held = Some(rec);
        loop {
            let cur = match held.take() {
                Some(r) => r,
                None => match self.store.vm_get(&id).await? {
                    Some(c) => c,
                    None => return Ok(()),
                },
            };
            if cur.state != VmState::Destroying {
                return Ok(());
            }
            match self
                .store
                .vm_update(
                    &id,
                    cur.generation,
                    VmPatch {
                        secrets: Some(None),
                        release: true,
                        ..VmPatch::state(VmState::Destroyed, "destroyed on host")
                    },
                )
                .await
            {
                Ok(r) => {
                    self.events.publish(&r);
                    tracing::info!(vm_id = %id, "environment destroyed");
                    return Ok(());
                }
                Err(StoreError::Stale { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Drains a running environment: persist `draining`, then run the drain command with
    /// its limit. A failure keeps `draining` and records the error. Never destroys.
    pub async fn env_drain(&self, id: &str) -> Result<VmRecord, ApiError> {
        let rec = self.env_get(id).await?;
        if rec.state != VmState::Running {
            return Err(ApiError::conflict(format!(
                "environment {} is {}; only a running environment can be drained",
                rec.id, rec.state
            )));
        }
        let rec = self
            .store
            .vm_update(
                &rec.id,
                rec.generation,
                VmPatch::state(VmState::Draining, "drain requested"),
            )
            .await?;
        self.events.publish(&rec);
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
                tail(&r.stderr, 400)
            )),
            Err(e) => Some(format!("drain command failed: {}", e.client_message())),
        };
        let Some(error) = error else {
            return Ok(rec);
        };
        let secrets = rec.secrets.clone().unwrap_or_default();
        let error = validate::redact(&error, &secrets.values());
        tracing::warn!(vm_id = %rec.id, error = %error, "drain failed");
        let patch = VmPatch {
            error: Some(Some(error)),
            ..VmPatch::default()
        };
        let rec = self.store.vm_update(&rec.id, rec.generation, patch).await?;
        self.events.publish(&rec);
        Ok(rec)
    }

    /// Gives the agent new credentials and restarts it, so the old token stops working.
    pub async fn env_rotate_token(&self, id: &str) -> Result<(), ApiError> {
        let rec = self.env_get(id).await?;
        if rec.state != VmState::Running {
            return Err(ApiError::conflict(format!(
                "environment {} is {}; only a running environment can rotate its token",
                rec.id, rec.state
            )));
        }
        let provider = self.provider_of(&rec).await?;
        let Some(old) = rec.secrets.clone() else {
            return Err(ApiError::unavailable(
                "this environment's credentials were not persisted (no TOKEN_ENCRYPTION_KEY when it \
                 was created, or the control plane restarted); recreate it to rotate its token",
            ));
        };
        let fresh = super::credentials::rotate(rec.id.as_str(), &old)
            .map_err(|e| ApiError::internal(format!("generating credentials: {e}")))?;
        // Persist first: if the upload fails half-way, a retry rotates again from here.
        let rec = self
            .store
            .vm_update(
                &rec.id,
                rec.generation,
                VmPatch {
                    secrets: Some(Some(fresh.clone())),
                    ..VmPatch::default()
                },
            )
            .await?;
        super::credentials::upload(&*provider, self.profile, rec.id.as_str(), &fresh).await?;
        provider.stop_agent(rec.id.as_str()).await?;
        provider
            .start_agent(
                rec.id.as_str(),
                &agent_start(&rec.agent, &fresh.auth_token, &fresh.gateway_token),
            )
            .await?;
        self.store
            .audit_append(AuditEvent {
                entity_kind: "environment",
                entity_id: rec.id.to_string(),
                event_type: "token_rotated".into(),
                payload: serde_json::json!({}),
            })
            .await?;
        Ok(())
    }

    /// Runs a command in a running (or draining) environment.
    pub async fn env_exec(&self, id: &str, req: ExecRequest) -> Result<ExecResponse, ApiError> {
        let (argv, timeout) = validate::exec(&req).map_err(ApiError::invalid_all)?;
        let rec = self.env_get(id).await?;
        if !matches!(rec.state, VmState::Running | VmState::Draining) {
            return Err(ApiError::conflict(format!(
                "environment {} is {}; commands run only in running or draining environments",
                rec.id, rec.state
            )));
        }
        let provider = self.provider_of(&rec).await?;
        Ok(provider.exec(rec.id.as_str(), &argv, timeout).await?)
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

fn agent_start(a: &AgentSpec, auth_token: &str, gateway_token: &str) -> AgentStart {
    AgentStart {
        download_url: a.download_url.clone(),
        command: a.command.clone(),
        binary_path: a.binary_path.clone(),
        listen: a.listen.clone(),
        auth_token: auth_token.to_owned(),
        gateway: a.gateway.clone(),
        gateway_token: gateway_token.to_owned(),
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
        spec: fuse_types::Spec {
            cpus: 0,
            ram_mb: 0,
            storage_gb: 0,
            region: String::new(),
            max_runtime_seconds: 0,
        },
        request_hash: String::new(),
        agent: AgentSpec::default(),
        error: Some("environment record lost".into()),
        restored_from: None,
        created_at: at,
        updated_at: at,
        running_since: None,
        owner: String::new(),
        secrets: None,
    }
}
