//! Templates and warm pools (DESIGN §3): a template is a named live snapshot; a create that
//! names it restores the snapshot's memory into a new VM, which the host gives a new
//! identity (address, MAC, link token, hostname, clock, a reseeded random pool) before the
//! request's files, startup script and agent. A template may keep a warm pool: VMs already
//! restored and paused on their host, waiting, which a create draws (`drawn`) and the host
//! claims under the new environment's id in milliseconds; the pool loop
//! ([`App::pool_pass`]) refills what was drawn.

use super::error::AppError;
use super::lifecycle::{Change, LifecycleError};
use super::App;
use crate::provider::DEFAULT_HOST;
use fuse_store::{SnapshotRecord, StoreError, TemplateRecord, VmFilter, VmRecord};
use fuse_types::hostagent::{AgentVmCreate, SnapshotSource};
use fuse_types::lifecycle::Event;
use fuse_types::{
    now, CreateSnapshot, CreateTemplate, PoolStatus, SnapshotState, Template, TemplateList,
    UpdateTemplate, VmState,
};
use rand::RngCore;
use std::sync::Arc;

/// The most warm VMs a template keeps per host.
pub const MAX_POOL_PER_HOST: u32 = 32;

/// What a create starts from when it names a template (or a live snapshot).
#[derive(Debug, Clone)]
pub struct Seed {
    /// The template's name (empty for a bare snapshot).
    pub template: Option<String>,
    /// The snapshot restored.
    pub snapshot: SnapshotRecord,
    /// The size every VM from it has (`None`: from the request).
    pub spec: Option<fuse_types::Spec>,
}

impl Seed {
    /// The host-side source of the restore.
    pub fn source(&self) -> SnapshotSource {
        SnapshotSource {
            vm_id: self.snapshot.vm_id.to_string(),
            snapshot_id: if self.snapshot.host_snapshot_id.is_empty() {
                self.snapshot.id.to_string()
            } else {
                self.snapshot.host_snapshot_id.clone()
            },
            memory: true,
        }
    }
}

fn usable(s: &SnapshotRecord) -> Result<(), AppError> {
    if s.state != SnapshotState::Ready {
        return Err(AppError::conflict(format!(
            "snapshot {} is {}; a template restores a ready snapshot",
            s.id, s.state
        )));
    }
    if s.kind != "live" {
        return Err(AppError::conflict(format!(
            "snapshot {} holds the disk alone (kind {}); a template restores memory too: \
             take a live snapshot (live: true) on a qemu or firecracker host",
            s.id, s.kind
        )));
    }
    Ok(())
}

impl App {
    /// Makes a template from a running environment (a live snapshot taken now) or a ready
    /// live snapshot.
    pub async fn template_create(
        &self,
        req: CreateTemplate,
        tenant: &str,
    ) -> Result<Template, AppError> {
        let mut errs = Vec::new();
        if let Err(e) = fuse_store::template_name_check(&req.name) {
            errs.push(e);
        }
        let from_env = req.from_environment.clone().filter(|s| !s.is_empty());
        let from_snap = req.from_snapshot.clone().filter(|s| !s.is_empty());
        if from_env.is_some() == from_snap.is_some() {
            errs.push("give exactly one of from_environment and from_snapshot".into());
        }
        let per_host = req.pool.map(|p| p.per_host).unwrap_or(0);
        if per_host > MAX_POOL_PER_HOST {
            errs.push(format!(
                "pool.per_host must be at most {MAX_POOL_PER_HOST} (got {per_host})"
            ));
        }
        if !errs.is_empty() {
            return Err(AppError::Invalid(errs));
        }
        if self.store.template_get(&req.name).await?.is_some() {
            return Err(AppError::conflict(format!(
                "template {} already exists",
                req.name
            )));
        }
        let snap = match (&from_env, &from_snap) {
            (Some(env), _) => {
                let snap = self
                    .snapshot_create(
                        env,
                        CreateSnapshot {
                            live: Some(true),
                            comment: Some(format!("template {}", req.name)),
                            // Kept as long as the template is (its deletion is refused while
                            // the template exists).
                            retention_seconds: Some(10 * 365 * 86_400 - 1),
                            ..CreateSnapshot::default()
                        },
                        tenant,
                    )
                    .await?;
                usable(&snap)?;
                snap
            }
            (None, Some(sid)) => {
                let s = self.snapshot_get(sid).await?;
                usable(&s)?;
                s
            }
            (None, None) => unreachable_none()?,
        };
        let source = self.store.vm_get(&snap.vm_id).await?;
        let spec = match &source {
            Some(r) => r.spec.clone(),
            None => {
                return Err(AppError::conflict(format!(
                    "snapshot {}'s environment {} is no longer known, so the size to restore \
                     it into is not either; make the template from a running environment",
                    snap.id, snap.vm_id
                )))
            }
        };
        let host_id = snap
            .host_id
            .clone()
            .ok_or_else(|| AppError::conflict(format!("snapshot {} is on no host", snap.id)))?;
        let at = now();
        let rec = TemplateRecord {
            name: req.name.clone(),
            snapshot_id: snap.id.clone(),
            source_vm_id: Some(snap.vm_id.clone()),
            host_id,
            tenant_id: tenant.to_owned(),
            spec: fuse_types::Spec {
                host_id: String::new(),
                ..spec
            },
            pool_per_host: per_host,
            created_at: at,
            updated_at: at,
        };
        let rec = match self.store.template_insert(rec).await {
            Ok(r) => r,
            Err(StoreError::Exists { .. }) => {
                return Err(AppError::conflict(format!(
                    "template {} already exists",
                    req.name
                )))
            }
            Err(StoreError::Invalid(m)) => return Err(AppError::invalid(m)),
            Err(e) => return Err(e.into()),
        };
        tracing::info!(template = %rec.name, snapshot_id = %rec.snapshot_id, host_id = %rec.host_id, pool = per_host, "template created");
        if per_host > 0 {
            self.pools_wake();
        }
        self.template_wire(&rec).await
    }

    /// One template or 404.
    pub async fn template_get(&self, name: &str) -> Result<Template, AppError> {
        let rec = self.template_record(name).await?;
        self.template_wire(&rec).await
    }

    async fn template_record(&self, name: &str) -> Result<TemplateRecord, AppError> {
        self.store
            .template_get(name)
            .await?
            .ok_or_else(|| AppError::not_found("template", name))
    }

    /// Every template, by name.
    pub async fn template_list(&self) -> Result<TemplateList, AppError> {
        let mut templates = Vec::new();
        for t in self.store.template_list().await? {
            templates.push(self.template_wire(&t).await?);
        }
        Ok(TemplateList { templates })
    }

    /// Changes a template's warm pool.
    pub async fn template_update(
        &self,
        name: &str,
        req: UpdateTemplate,
    ) -> Result<Template, AppError> {
        let Some(pool) = req.pool else {
            return Err(AppError::invalid("nothing to change: give pool.per_host"));
        };
        if pool.per_host > MAX_POOL_PER_HOST {
            return Err(AppError::invalid(format!(
                "pool.per_host must be at most {MAX_POOL_PER_HOST} (got {})",
                pool.per_host
            )));
        }
        self.template_record(name).await?;
        let rec = self.store.template_update_pool(name, pool.per_host).await?;
        self.pools_wake();
        self.template_wire(&rec).await
    }

    /// Deletes a template; refused while its pool is asked for or has members, or while
    /// environments started from it live. Its snapshot stays (delete it on its own).
    pub async fn template_delete(&self, name: &str) -> Result<(), AppError> {
        let rec = self.template_record(name).await?;
        let members = self.pool_members(name).await?;
        if rec.pool_per_host > 0 || !members.is_empty() {
            return Err(AppError::conflict(format!(
                "template {name} has a warm pool ({} asked per host, {} members); set its \
                 pool to 0 (PATCH /v1/templates/{name}) and wait for it to empty",
                rec.pool_per_host,
                members.len()
            )));
        }
        match self.store.template_delete(name).await {
            Ok(()) => Ok(()),
            Err(StoreError::InUse { what, .. }) => Err(AppError::conflict(format!(
                "template {name} is used by {what}; destroy them first"
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// The pool members of a template that are not ended.
    async fn pool_members(&self, name: &str) -> Result<Vec<VmRecord>, AppError> {
        let filter = VmFilter {
            pool: Some(name.to_owned()),
            ..VmFilter::default()
        };
        let mut all = crate::background::all_matching(self, &filter).await?;
        all.retain(|r| !r.state.is_terminal() && r.state != VmState::Destroying);
        Ok(all)
    }

    async fn template_wire(&self, t: &TemplateRecord) -> Result<Template, AppError> {
        let state = self
            .store
            .snapshot_get(&t.snapshot_id)
            .await?
            .map(|s| s.state.as_str().to_owned())
            .unwrap_or_else(|| "missing".into());
        let members = self.pool_members(&t.name).await?;
        let ready = members
            .iter()
            .filter(|m| m.state == VmState::Paused)
            .count() as u32;
        let warming = members
            .iter()
            .filter(|m| m.state == VmState::Provisioning)
            .count() as u32;
        Ok(Template {
            name: t.name.clone(),
            snapshot_id: t.snapshot_id.to_string(),
            state,
            host_id: t.host_id.to_string(),
            source_environment_id: t
                .source_vm_id
                .as_ref()
                .map(|v| v.to_string())
                .unwrap_or_default(),
            spec: t.spec.clone(),
            pool: PoolStatus {
                per_host: t.pool_per_host,
                ready,
                warming,
            },
            created_at: t.created_at,
            updated_at: t.updated_at,
        })
    }

    /// What a create's `template` (or `seed_snapshot_id`: a template's name or a ready live
    /// snapshot's id) starts from.
    pub async fn seed_for(&self, name: &str) -> Result<Seed, AppError> {
        if let Some(t) = self.store.template_get(name).await? {
            let snap = self
                .store
                .snapshot_get(&t.snapshot_id)
                .await?
                .ok_or_else(|| {
                    AppError::conflict(format!(
                        "template {name}'s snapshot {} is gone",
                        t.snapshot_id
                    ))
                })?;
            usable(&snap).map_err(|e| match e {
                AppError::Conflict { message, details } => AppError::Conflict {
                    message: format!("template {name}: {message}"),
                    details,
                },
                e => e,
            })?;
            return Ok(Seed {
                template: Some(t.name.clone()),
                snapshot: snap,
                spec: Some(t.spec.clone()),
            });
        }
        match fuse_types::SnapshotId::parse(name) {
            Ok(sid) => match self.store.snapshot_get(&sid).await? {
                Some(snap) => {
                    usable(&snap)?;
                    let spec = self.store.vm_get(&snap.vm_id).await?.map(|r| r.spec);
                    Ok(Seed {
                        template: None,
                        snapshot: snap,
                        spec,
                    })
                }
                None => Err(AppError::not_found("template", name)),
            },
            Err(_) => Err(AppError::not_found("template", name)),
        }
    }

    /// Takes a ready warm VM of `template` for a new environment: the member is recorded
    /// `drawn` (its reservation returned, so the new environment's takes its place on the
    /// same host). Returns the member's VM id and host, or `None` when the pool is empty.
    pub(crate) async fn pool_draw(
        &self,
        template: &str,
    ) -> Result<Option<(String, fuse_types::HostId)>, AppError> {
        let filter = VmFilter {
            pool: Some(template.to_owned()),
            state: Some(VmState::Paused),
            ..VmFilter::default()
        };
        let members = self.store.vm_list(&filter, None, 64).await?;
        for m in members {
            let Some(host) = m.host_id.clone() else {
                continue;
            };
            match self
                .transition(&m, Change::new(Event::Drawn).reason("drawn by a create"))
                .await
            {
                Ok(_) => {
                    self.metrics
                        .pool_draws
                        .with_label_values(&[template, "hit"])
                        .inc();
                    // The refill is asked for once this create is done (see `provision`):
                    // a restore running beside the claim would slow the very create the
                    // pool is there to speed up.
                    return Ok(Some((m.id.to_string(), host)));
                }
                // Another create drew it first.
                Err(LifecycleError::Stale { .. } | LifecycleError::Illegal { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        self.metrics
            .pool_draws
            .with_label_values(&[template, "miss"])
            .inc();
        Ok(None)
    }

    /// Asks the pool loop for a pass now (a template's pool changed, or a member was drawn).
    pub fn pools_wake(&self) {
        if let Some(a) = self.pools.get() {
            a.activate();
        }
    }

    /// One pass of the pool loop: every template with a pool gets its missing members
    /// restored (one after another, so a refill never floods its host) and its extra ones
    /// destroyed. Returns (created, destroyed, failed).
    pub async fn pool_pass(self: &Arc<Self>) -> Result<(u32, u32, u32), AppError> {
        let (mut made, mut removed, mut failed) = (0, 0, 0);
        let templates = self.store.template_list().await?;
        for t in &templates {
            let members = self.pool_members(&t.name).await?;
            let want = t.pool_per_host as usize;
            if members.len() > want {
                // The newest first: the oldest have waited longest and are drawn first.
                for m in members.iter().rev().take(members.len() - want) {
                    if self.env_delete(m.id.as_str()).await.is_ok() {
                        removed += 1;
                    }
                }
                continue;
            }
            if members.len() == want {
                continue;
            }
            if self
                .pool_backoff
                .lock()
                .get(&t.name)
                .is_some_and(|until| std::time::Instant::now() < *until)
            {
                continue;
            }
            let seed = match self.seed_for(&t.name).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(template = %t.name, error = %e, "pool: the template cannot be restored");
                    self.pool_backoff
                        .lock()
                        .insert(t.name.clone(), std::time::Instant::now() + POOL_BACKOFF);
                    continue;
                }
            };
            for _ in members.len()..want {
                match self.pool_fill_one(t, &seed).await {
                    Ok(()) => made += 1,
                    Err(e) => {
                        failed += 1;
                        tracing::warn!(template = %t.name, error = %e, "pool: restoring a warm VM failed; backing off");
                        self.pool_backoff
                            .lock()
                            .insert(t.name.clone(), std::time::Instant::now() + POOL_BACKOFF);
                        break;
                    }
                }
            }
        }
        for t in &templates {
            let members = self.pool_members(&t.name).await?;
            let ready = members
                .iter()
                .filter(|m| m.state == VmState::Paused)
                .count();
            for (state, n) in [("ready", ready), ("warming", members.len() - ready)] {
                self.metrics
                    .pool_members
                    .with_label_values(&[&t.name, state])
                    .set(n as i64);
            }
        }
        Ok((made, removed, failed))
    }

    /// Restores one warm VM of template `t` on its host.
    async fn pool_fill_one(&self, t: &TemplateRecord, seed: &Seed) -> Result<(), AppError> {
        let mut b = [0u8; 4];
        rand::thread_rng().fill_bytes(&mut b);
        // Task ids take lowercase letters, digits and '-'.
        let stem: String = t
            .name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(40)
            .collect();
        let task = fuse_types::TaskId::parse(&format!(
            "pool-{}-{}",
            stem.trim_matches('-'),
            hex::encode(b)
        ))
        .map_err(|e| AppError::Internal(e.0))?;
        let id = fuse_types::VmId::for_task(&self.config.vm_prefix, &task);
        let at = now();
        let spec = fuse_types::Spec {
            host_id: t.host_id.to_string(),
            ..t.spec.clone()
        };
        let rec = VmRecord {
            id: id.clone(),
            task_id: task,
            state: VmState::Provisioning,
            generation: 1,
            host_id: None,
            reserved: None,
            url: String::new(),
            spec: spec.clone(),
            request_hash: String::new(),
            agent: self.agent_for(None, ""),
            error: None,
            restored_from: Some(seed.snapshot.id.clone()),
            created_at: at,
            updated_at: at,
            running_since: None,
            owner: self.replica_id.clone(),
            secrets: None,
            extras: fuse_store::VmExtras {
                pool: Some(t.name.clone()),
                template: Some(t.name.clone()),
                ..Default::default()
            },
        };
        let fallback =
            fuse_types::HostId::parse(DEFAULT_HOST).map_err(|e| AppError::Internal(e.0))?;
        let (created, no_room) = self
            .lifecycle_create(rec, self.config.policy, Some(&fallback))
            .await?;
        let placed = match created {
            fuse_store::VmCreated::Created(r) => r,
            fuse_store::VmCreated::Exists(_) => {
                return Err(AppError::Internal("a pool member's id was taken".into()))
            }
        };
        if let Some(np) = no_room {
            return Err(AppError::NoCapacity(np));
        }
        let provider = self.provider_of(&placed).await?;
        // Warmed up by the work of a plain create before it waits, so a claim redoes it warm.
        let warm_up = self.warm_up_setup(&placed)?;
        let made = provider
            .vm_provision(&AgentVmCreate {
                name: id.to_string(),
                cpus: spec.cpus,
                memory_mb: spec.ram_mb,
                storage_gb: spec.storage_gb,
                from_snapshot: Some(seed.source()),
                warm: true,
                setup: Some(warm_up),
                ..AgentVmCreate::default()
            })
            .await;
        match made {
            Ok(_) => {
                let mut extras = placed.extras.clone();
                extras.paused_kind = Some("warm".into());
                self.transition(
                    &placed,
                    Change::new(Event::Warmed).extras(extras).retrying(),
                )
                .await?;
                tracing::info!(vm_id = %id, template = %t.name, "pool: warm VM ready");
                Ok(())
            }
            Err(e) => {
                let gone = provider.vm_destroy(id.as_str()).await.is_ok();
                let change = Change::new(Event::ProvisionFailed)
                    .reason("pool")
                    .error(format!("restoring a warm VM: {}", e.client_message()))
                    .gone_from_host(gone)
                    .retrying();
                let _ = self.transition(&placed, change).await;
                Err(e.into())
            }
        }
    }
}

/// How long a template whose restore failed is left alone by the pool loop.
pub const POOL_BACKOFF: std::time::Duration = std::time::Duration::from_secs(30);

fn unreachable_none() -> Result<SnapshotRecord, AppError> {
    Err(AppError::invalid(
        "give exactly one of from_environment and from_snapshot",
    ))
}
