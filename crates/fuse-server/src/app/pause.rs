//! Pause, resume and cold migration (DESIGN §3, `paused`).
//!
//! - **Pause**: the host writes the VM's memory and disk into its directory and stops its
//!   VMM; then `running → paused` with the reservation shrunk to storage alone, in one
//!   lifecycle step. A pause the host finished but the control plane did not record (a crash
//!   in between) is finished by the reconciler, which finds the VM `paused` on its host.
//! - **Resume**: the full reservation comes back first (checked against the host's room), so
//!   a resume never over-commits; then the host restores the VM and `paused → running`.
//!   When its own host has no room, the environment moves to one that has (a migration).
//!   A VM paused with its disk alone (`process` hosts) boots again: its agent is restarted.
//! - **Migration**: the target is recorded first (`migrate_started`), the target host is
//!   told to expect the VM with a one-time token, the source streams the artifacts to it,
//!   the reservation moves, the target resumes it (`migrated`), and the source is destroyed.
//!   Any failure undoes the target's part and resumes the VM at its source; an interrupted
//!   one is finished or undone by recovery ([`App::recover_migration`]).

use super::error::AppError;
use super::lifecycle::{Change, LifecycleError};
use super::App;
use crate::provider::{Provider, ProviderError};
use fuse_store::{Migration, StoreError, VmRecord};
use fuse_types::hostagent::{AgentMigrationIn, AgentSend, AgentVm};
use fuse_types::lifecycle::Event;
use fuse_types::{now, HostId, HostState, Resources, VmState};
use rand::RngCore;
use std::time::Instant;

/// What a paused VM holds on its host: its disk.
pub fn paused_size(spec: &fuse_types::Spec) -> Resources {
    Resources {
        cpus: 0,
        ram_mb: 0,
        storage_gb: spec.storage_gb,
        vm_count: 0,
    }
}

/// `POST …?action=migrate` body (the SDK's `MigrateOptions`).
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct MigrateRequest {
    /// Where to; empty: the scheduler chooses among the other active hosts.
    #[serde(default)]
    pub target_host_id: Option<String>,
    /// Live migration (not built: 501).
    #[serde(default)]
    pub live: Option<bool>,
    /// Lazy (post-copy) migration (not built: 501).
    #[serde(default)]
    pub lazy: Option<bool>,
}

impl App {
    /// Pauses a running environment (idempotent on a paused one).
    pub async fn env_pause(&self, id: &str) -> Result<VmRecord, AppError> {
        let rec = self.env_get(id).await?;
        match rec.state {
            VmState::Paused => return Ok(rec),
            VmState::Running => {}
            s => {
                return Err(AppError::conflict(format!(
                    "environment {} is {s}; only a running environment can be paused",
                    rec.id
                )))
            }
        }
        let provider = self.provider_of(&rec).await?;
        let started = Instant::now();
        let vm = match provider.vm_pause(rec.id.as_str()).await {
            Ok(vm) => vm,
            // Not offered: nothing happened, nothing to record.
            Err(e @ ProviderError::Unsupported(_)) => return Err(e.into()),
            Err(e) => {
                let change = Change::new(Event::PauseFailed)
                    .error(format!("pause failed: {}", e.client_message()));
                let _ = self.transition_latest(&rec.id, change).await;
                return Err(e.into());
            }
        };
        let done = self.finish_pause(&rec.id, &vm).await?;
        self.metrics
            .pause_duration
            .with_label_values(&["pause"])
            .observe(started.elapsed().as_secs_f64());
        Ok(done)
    }

    /// Records a pause the host did (`vm` is its answer): `running → paused`, storage only.
    /// Also the reconciler's way to finish a pause whose recording was interrupted.
    pub(crate) async fn finish_pause(
        &self,
        id: &fuse_types::VmId,
        vm: &AgentVm,
    ) -> Result<VmRecord, AppError> {
        for _ in 0..5 {
            let cur = self
                .store
                .vm_get(id)
                .await?
                .ok_or_else(|| AppError::not_found("environment", id))?;
            if cur.state == VmState::Paused {
                return Ok(cur);
            }
            let host = cur
                .host_id
                .clone()
                .ok_or_else(|| AppError::Internal(format!("{id} has no host")))?;
            let mut extras = cur.extras.clone();
            extras.paused_kind = Some(
                vm.paused
                    .as_ref()
                    .map(|p| p.kind.clone())
                    .unwrap_or_else(|| "live".into()),
            );
            let change = Change::new(Event::Pause)
                .extras(extras)
                .reserve(host, paused_size(&cur.spec))
                .retrying();
            match self.transition(&cur, change).await {
                Ok(r) => return Ok(r),
                Err(LifecycleError::Stale { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(AppError::conflict(format!(
            "environment {id} kept changing while its pause was recorded; retry"
        )))
    }

    /// Resumes a paused environment on its host, or, when its host has no room for it, on
    /// another host with room (a migration). Idempotent on a running one.
    pub async fn env_resume(&self, id: &str) -> Result<VmRecord, AppError> {
        let rec = self.env_get(id).await?;
        match rec.state {
            VmState::Running | VmState::Draining => return Ok(rec),
            VmState::Paused if rec.extras.pool.is_some() => {
                return Err(AppError::conflict(format!(
                    "{} is a warm-pool member; create an environment from its template instead",
                    rec.id
                )))
            }
            VmState::Paused if rec.extras.migration.is_some() => {
                return Err(AppError::conflict(format!(
                    "environment {} is being migrated; it resumes where the migration ends",
                    rec.id
                )))
            }
            VmState::Paused => {}
            s => {
                return Err(AppError::conflict(format!(
                    "environment {} is {s}; only a paused environment can be resumed",
                    rec.id
                )))
            }
        }
        let host = rec
            .host_id
            .clone()
            .ok_or_else(|| AppError::Internal(format!("{} has no host", rec.id)))?;
        let full = Resources::for_spec(&rec.spec);
        // Room first, so the restore never over-commits its host.
        let grown = match self
            .store
            .vm_move_reservation(&rec.id, rec.generation, &host, full)
            .await
        {
            Ok(r) => r,
            Err(StoreError::NoCapacity(np)) => {
                tracing::info!(vm_id = %rec.id, host_id = %host, reason = %np,
                    "no room to resume on its own host; moving it");
                return self
                    .migrate_paused(rec, None, true)
                    .await
                    .map_err(|e| match e {
                        AppError::NoCapacity(_) => AppError::NoCapacity(np),
                        e => e,
                    });
            }
            Err(e) => return Err(e.into()),
        };
        self.resume_on(grown, &host, Event::Resume).await
    }

    /// Resumes `rec` (its full size already reserved on `host`) there, and records it with
    /// `event` (`resume` or `migrated`). A failed resume gives the room back and leaves it
    /// paused with the reason.
    async fn resume_on(
        &self,
        rec: VmRecord,
        host: &HostId,
        event: Event,
    ) -> Result<VmRecord, AppError> {
        let provider = self.providers.for_host(&*self.store, host).await?;
        let started = Instant::now();
        match provider.vm_resume(rec.id.as_str()).await {
            Ok(vm) => {
                let done = self.finish_resume(&rec.id, host, &vm, event).await?;
                self.metrics
                    .pause_duration
                    .with_label_values(&["resume"])
                    .observe(started.elapsed().as_secs_f64());
                if rec.extras.paused_kind.as_deref() == Some("disk") {
                    // The guest booted again: its agent is started again.
                    self.restart_agent(&done, &*provider).await;
                }
                Ok(done)
            }
            Err(e) => {
                let shrink = self
                    .store
                    .vm_get(&rec.id)
                    .await
                    .ok()
                    .flatten()
                    .filter(|c| c.state == VmState::Paused);
                if let Some(cur) = shrink {
                    let event = if event == Event::Migrated {
                        Event::MigrateFailed
                    } else {
                        Event::ResumeFailed
                    };
                    let back = self
                        .store
                        .vm_move_reservation(&cur.id, cur.generation, host, paused_size(&cur.spec))
                        .await;
                    if let Ok(cur) = back {
                        let change = Change::new(event)
                            .error(format!("resume failed: {}", e.client_message()));
                        let _ = self.transition(&cur, change).await;
                    }
                }
                Err(e.into())
            }
        }
    }

    /// Records a resume the host did: `paused → running` on `host` at full size (the
    /// reservation is normally there already). Also how the reconciler and recovery finish
    /// one whose recording was interrupted.
    pub(crate) async fn finish_resume(
        &self,
        id: &fuse_types::VmId,
        host: &HostId,
        vm: &AgentVm,
        event: Event,
    ) -> Result<VmRecord, AppError> {
        for _ in 0..5 {
            let cur = self
                .store
                .vm_get(id)
                .await?
                .ok_or_else(|| AppError::not_found("environment", id))?;
            if cur.state != VmState::Paused {
                return Ok(cur);
            }
            let mut extras = cur.extras.clone();
            extras.paused_kind = None;
            extras.migration = None;
            if !vm.endpoints.is_empty() {
                extras.endpoints =
                    super::environments::endpoints(&cur.extras.expose, &vm.endpoints);
                for e in &mut extras.endpoints {
                    super::ports::endpoint_urls(&self.config.proxy, cur.id.as_str(), e);
                }
            }
            let mut change = Change::new(event)
                .extras(extras)
                .reserve(host.clone(), Resources::for_spec(&cur.spec))
                .retrying();
            if !vm.url.is_empty() {
                change = change.url(self.profile.public_url(&vm.url, &cur.agent.command));
            }
            match self.transition(&cur, change).await {
                Ok(r) => return Ok(r),
                Err(LifecycleError::Stale { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(AppError::conflict(format!(
            "environment {id} kept changing while its resume was recorded; retry"
        )))
    }

    /// Starts the agent of an environment whose guest booted again (a disk-only resume).
    async fn restart_agent(&self, rec: &VmRecord, provider: &dyn Provider) {
        let Some(s) = &rec.secrets else {
            tracing::warn!(vm_id = %rec.id, "resumed from its disk, but its credentials were not kept: the agent is not restarted");
            return;
        };
        let start = super::environments::agent_start(&rec.agent, &s.auth_token, &s.gateway_token);
        if let Err(e) = provider.start_agent(rec.id.as_str(), &start).await {
            tracing::warn!(vm_id = %rec.id, error = %e, "restarting the agent after a resume");
        }
    }

    /// Moves an environment to another host, cold: pause (if running), stream, resume
    /// there, destroy the source. `live`/`lazy` are not built (501).
    pub async fn env_migrate(&self, id: &str, req: MigrateRequest) -> Result<VmRecord, AppError> {
        let rec = self.env_get(id).await?;
        if req.live.unwrap_or(false) || req.lazy.unwrap_or(false) {
            return Err(AppError::Unimplemented(
                "live and lazy migration are not built yet; leave live and lazy unset for a \
                 cold migration (the environment is paused while it moves)"
                    .into(),
            ));
        }
        let target = match req.target_host_id.as_deref().filter(|t| !t.is_empty()) {
            Some(t) => Some(HostId::parse(t).map_err(|e| AppError::invalid(e.0))?),
            None => None,
        };
        if target.is_some() && target == rec.host_id {
            return Err(AppError::invalid(format!(
                "environment {} is already on host {}",
                rec.id,
                target.as_ref().map(HostId::as_str).unwrap_or_default()
            )));
        }
        let was_running = match rec.state {
            VmState::Running => true,
            VmState::Paused if rec.extras.pool.is_none() && rec.extras.migration.is_none() => false,
            s => {
                return Err(AppError::conflict(format!(
                    "environment {} is {s}; only a running or paused environment can be migrated",
                    rec.id
                )))
            }
        };
        // Check the target before pausing anything.
        let target = self.choose_target(&rec, target).await?;
        let rec = if was_running {
            self.env_pause(id).await?
        } else {
            rec
        };
        self.migrate_paused(rec, Some(target), was_running).await
    }

    /// A host other than the VM's own, active, with room for it and the migrate feature.
    async fn choose_target(
        &self,
        rec: &VmRecord,
        want: Option<HostId>,
    ) -> Result<HostId, AppError> {
        let hosts = self.store.host_list().await?;
        let full = Resources::for_spec(&rec.spec);
        let mut spec = rec.spec.clone();
        // The pin is what brought it here; the target is chosen now.
        spec.host_id = want.as_ref().map(|h| h.to_string()).unwrap_or_default();
        let candidates: Vec<_> = hosts
            .iter()
            .filter(|h| Some(&h.id) != rec.host_id.as_ref())
            .filter(|h| h.state == HostState::Active)
            .collect();
        if let Some(w) = &want {
            if !hosts.iter().any(|h| &h.id == w) {
                return Err(AppError::not_found("host", w));
            }
        }
        let views: Vec<_> = candidates.iter().map(|h| h.view()).collect();
        let req = fuse_store::request_for(&spec, full);
        let chosen = fuse_scheduler::place(&views, &req, self.config.policy)
            .map_err(AppError::NoCapacity)?;
        HostId::parse(chosen).map_err(|e| AppError::Internal(e.0))
    }

    /// The migration of a paused environment to `target` (chosen when `None`). It is
    /// resumed where it lands; when the migration fails it stays paused at its source, and is
    /// resumed there if it was running before (`was_running`).
    async fn migrate_paused(
        &self,
        rec: VmRecord,
        target: Option<HostId>,
        was_running: bool,
    ) -> Result<VmRecord, AppError> {
        let target = match target {
            Some(t) => t,
            None => self.choose_target(&rec, None).await?,
        };
        let source = rec
            .host_id
            .clone()
            .ok_or_else(|| AppError::Internal(format!("{} has no host", rec.id)))?;
        let mut extras = rec.extras.clone();
        extras.migration = Some(Migration {
            target_host_id: target.clone(),
            source_host_id: source.clone(),
            replica: self.replica_id.clone(),
            started_at: now(),
            was_running,
        });
        let rec = self
            .transition(
                &rec,
                Change::new(Event::MigrateStarted)
                    .extras(extras)
                    .payload(serde_json::json!({"from": source.as_str(), "to": target.as_str()})),
            )
            .await?;
        let started = Instant::now();
        match self.migrate_steps(&rec, &source, &target).await {
            Ok(done) => {
                self.metrics
                    .pause_duration
                    .with_label_values(&["migrate"])
                    .observe(started.elapsed().as_secs_f64());
                tracing::info!(vm_id = %rec.id, from = %source, to = %target,
                    ms = started.elapsed().as_millis() as u64, "environment migrated");
                Ok(done)
            }
            Err(e) => {
                tracing::warn!(vm_id = %rec.id, from = %source, to = %target, error = %e, "migration failed; resuming at the source");
                self.undo_migration(&rec.id, &source, &target, &e.to_string())
                    .await;
                if was_running {
                    let id = rec.id.to_string();
                    if let Err(e2) = self.resume_boxed(&id).await {
                        tracing::warn!(vm_id = %id, error = %e2, "resuming at the source after a failed migration");
                    }
                }
                Err(e)
            }
        }
    }

    async fn migrate_steps(
        &self,
        rec: &VmRecord,
        source: &HostId,
        target: &HostId,
    ) -> Result<VmRecord, AppError> {
        let src = self.providers.for_host(&*self.store, source).await?;
        let dst = self.providers.for_host(&*self.store, target).await?;
        let target_rec = self
            .store
            .host_get(target)
            .await?
            .ok_or_else(|| AppError::not_found("host", target))?;
        let token = {
            let mut b = [0u8; 32];
            rand::thread_rng().fill_bytes(&mut b);
            hex::encode(b)
        };
        dst.migration_expect(&AgentMigrationIn {
            token: token.clone(),
            vm_id: rec.id.to_string(),
            cpus: rec.spec.cpus,
            memory_mb: rec.spec.ram_mb,
            storage_gb: rec.spec.storage_gb,
            ttl_seconds: 3600,
            expose: super::environments::port_exposes(&rec.extras.expose),
            agent_port: rec.agent.port,
            egress: rec.extras.egress.clone(),
            snapshot_id: None,
        })
        .await?;
        let sent = src
            .vm_send(
                rec.id.as_str(),
                &AgentSend {
                    target_url: target_rec.url.clone(),
                    token,
                },
            )
            .await?;
        tracing::info!(vm_id = %rec.id, bytes = sent.bytes, ms = sent.duration_ms, "artifacts sent");
        // The room on the target, then the resume there.
        let cur = self
            .store
            .vm_get(&rec.id)
            .await?
            .ok_or_else(|| AppError::not_found("environment", &rec.id))?;
        let moved = self
            .store
            .vm_move_reservation(
                &cur.id,
                cur.generation,
                target,
                Resources::for_spec(&cur.spec),
            )
            .await?;
        let done = self.resume_on(moved, target, Event::Migrated).await?;
        // The source's copy is no longer the environment.
        if let Err(e) = src.vm_destroy(rec.id.as_str()).await {
            tracing::warn!(vm_id = %rec.id, host_id = %source, error = %e,
                "removing the source copy of a migrated VM; the reconciler will");
        }
        Ok(done)
    }

    /// Undoes the target's part of a migration and records it failed: the VM is paused at
    /// its source again, holding storage there.
    async fn undo_migration(
        &self,
        id: &fuse_types::VmId,
        source: &HostId,
        target: &HostId,
        why: &str,
    ) {
        if let Ok(dst) = self.providers.for_host(&*self.store, target).await {
            if let Err(e) = dst.migration_abort(id.as_str()).await {
                tracing::warn!(vm_id = %id, host_id = %target, error = %e, "aborting the migration on the target");
            }
            // It may have arrived (and even resumed) before the failure.
            if let Err(e) = dst.vm_destroy(id.as_str()).await {
                tracing::warn!(vm_id = %id, host_id = %target, error = %e, "removing the target copy");
            }
        }
        for _ in 0..5 {
            let Ok(Some(cur)) = self.store.vm_get(id).await else {
                return;
            };
            if cur.state != VmState::Paused {
                return;
            }
            let cur = match self
                .store
                .vm_move_reservation(&cur.id, cur.generation, source, paused_size(&cur.spec))
                .await
            {
                Ok(c) => c,
                Err(StoreError::Stale { .. }) => continue,
                Err(e) => {
                    tracing::warn!(vm_id = %id, error = %e, "returning the reservation to the source");
                    cur
                }
            };
            let mut extras = cur.extras.clone();
            extras.migration = None;
            let change = Change::new(Event::MigrateFailed)
                .extras(extras)
                .error(format!("migration to {target} failed: {why}"))
                .retrying();
            match self.transition(&cur, change).await {
                Err(LifecycleError::Stale { .. }) => continue,
                _ => return,
            }
        }
    }

    /// Recovery of a migration whose replica is gone: finished when the target holds the
    /// VM, undone otherwise.
    pub(crate) async fn recover_migration(&self, rec: VmRecord) {
        let Some(m) = rec.extras.migration.clone() else {
            return;
        };
        let on_target = match self
            .providers
            .for_host(&*self.store, &m.target_host_id)
            .await
        {
            Ok(p) => p.vm_get(rec.id.as_str()).await,
            Err(e) => Err(e),
        };
        match on_target {
            Ok(Some(vm)) => {
                tracing::info!(vm_id = %rec.id, to = %m.target_host_id, state = %vm.state, "recovery: finishing an interrupted migration");
                let result = match vm.state {
                    fuse_types::hostagent::HostVmState::Running => self
                        .finish_resume(&rec.id, &m.target_host_id, &vm, Event::Migrated)
                        .await
                        .map(|_| ()),
                    _ => {
                        let moved = self
                            .store
                            .vm_move_reservation(
                                &rec.id,
                                rec.generation,
                                &m.target_host_id,
                                Resources::for_spec(&rec.spec),
                            )
                            .await;
                        match moved {
                            Ok(r) => self
                                .resume_on(r, &m.target_host_id, Event::Migrated)
                                .await
                                .map(|_| ()),
                            Err(e) => Err(e.into()),
                        }
                    }
                };
                match result {
                    Ok(()) => {
                        if let Ok(src) = self
                            .providers
                            .for_host(&*self.store, &m.source_host_id)
                            .await
                        {
                            let _ = src.vm_destroy(rec.id.as_str()).await;
                        }
                    }
                    Err(e) => {
                        self.undo_migration(
                            &rec.id,
                            &m.source_host_id,
                            &m.target_host_id,
                            &e.to_string(),
                        )
                        .await;
                        if m.was_running {
                            let _ = self.resume_boxed(rec.id.as_str()).await;
                        }
                    }
                }
            }
            Ok(None) => {
                tracing::info!(vm_id = %rec.id, to = %m.target_host_id, "recovery: undoing an interrupted migration");
                self.undo_migration(
                    &rec.id,
                    &m.source_host_id,
                    &m.target_host_id,
                    "interrupted (the control plane stopped mid-transfer)",
                )
                .await;
                if m.was_running {
                    if let Err(e) = self.resume_boxed(rec.id.as_str()).await {
                        tracing::warn!(vm_id = %rec.id, error = %e, "recovery: resuming at the source");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(vm_id = %rec.id, error = %e, "recovery: the migration's target does not answer; trying later");
            }
        }
    }

    /// [`App::env_resume`] behind a box (a failed migration resumes at its source, and a
    /// resume without room migrates).
    fn resume_boxed<'a>(
        &'a self,
        id: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<VmRecord, AppError>> + Send + 'a>>
    {
        Box::pin(self.env_resume(id))
    }

    /// For exec, files and attach: a paused environment is resumed first when its spec
    /// says `auto_resume`, else the call is refused with what to do.
    pub(crate) async fn awake(&self, rec: VmRecord) -> Result<VmRecord, AppError> {
        if rec.state != VmState::Paused {
            return Ok(rec);
        }
        if !rec.spec.auto_resume || rec.extras.pool.is_some() {
            return Err(AppError::conflict(format!(
                "environment {} is paused; resume it first (POST /v1/environments/{}?action=resume), \
                 or create it with spec.auto_resume",
                rec.id, rec.id
            )));
        }
        self.env_resume(rec.id.as_str()).await
    }
}
