//! The reconciler task (DESIGN §4): per host, reads what the host lists and then what the
//! store tracks there, asks the pure plan (`reconcile_plan`) what to do, and executes the
//! actions through the lifecycle. It owns what it remembers between passes (per host: an
//! unconfirmed empty list, runtime suspicions); a new leader starts afresh, which only
//! delays a max-runtime kill or an empty-list confirmation by one pass.
//!
//! Safety rules: the host's list is read first and the store after, so a VM being created
//! (its record is written before the host is asked) is never taken for an orphan; every
//! destructive step is confirmed by a per-VM read of the host first; a host that fails to
//! answer is skipped (its VMs untouched) without stopping the pass for the others.

use super::reconcile_plan::{self, Action, HostMemory, PlanInput, ORPHAN_ATTEMPTS};
use super::{BackgroundTask, TaskError};
use crate::app::lifecycle::{Change, LifecycleError};
use crate::app::App;
use crate::provider::{Provider, ProviderError, DEFAULT_HOST};
use async_trait::async_trait;
use fuse_store::{AuditEvent, VmFilter, VmRecord};
use fuse_types::hostagent::{AgentVm, HostVmState};
use fuse_types::lifecycle::Event;
use fuse_types::{HostId, HostState, VmId, VmState};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

/// The reconciler and its memory.
#[derive(Debug, Default)]
pub struct Reconciler {
    memory: HashMap<HostId, HostMemory>,
}

/// What one pass did, for `/v1/debug/background`.
#[derive(Debug, Default, serde::Serialize)]
struct Summary {
    hosts: usize,
    listed: usize,
    actions: std::collections::BTreeMap<&'static str, usize>,
}

#[async_trait]
impl BackgroundTask for Reconciler {
    fn name(&self) -> &'static str {
        "reconcile"
    }

    async fn activate(&mut self, app: &Arc<App>) -> Result<serde_json::Value, TaskError> {
        let started = Instant::now();
        let hosts = app.store.host_list().await?;
        let mut targets: Vec<HostId> = hosts
            .iter()
            .filter(|h| h.state != HostState::Unreachable)
            .map(|h| h.id.clone())
            .collect();
        // The pseudo-host of the default provider, while it has environments.
        if let Ok(d) = HostId::parse(DEFAULT_HOST) {
            let filter = VmFilter {
                host_id: Some(DEFAULT_HOST.to_owned()),
                include_pool: true,
                ..VmFilter::default()
            };
            if !app.store.vm_list(&filter, None, 1).await?.is_empty() && !targets.contains(&d) {
                targets.push(d);
            }
        }
        let dead: HashMap<String, u32> = app
            .store
            .dead_letter_list()
            .await?
            .into_iter()
            .filter(|d| d.kind == "orphan")
            .map(|d| (d.entity_id, d.attempts))
            .collect();
        let runs = targets.iter().map(|h| {
            let memory = self.memory.get(h).cloned().unwrap_or_default();
            let (app, dead) = (app.clone(), &dead);
            async move { (h.clone(), host_pass(&app, h, dead, &memory).await) }
        });
        let results = futures::future::join_all(runs).await;
        // Forget hosts that are gone.
        self.memory.retain(|h, _| targets.contains(h));
        let mut summary = Summary {
            hosts: targets.len(),
            ..Summary::default()
        };
        let mut failures = Vec::new();
        for (h, r) in results {
            match r {
                Ok((listed, kinds, memory)) => {
                    summary.listed += listed;
                    for k in kinds {
                        *summary.actions.entry(k).or_default() += 1;
                    }
                    self.memory.insert(h.clone(), memory);
                    repair_allocation(app, &h).await;
                }
                Err(e) => {
                    app.metrics
                        .reconcile_host_errors
                        .with_label_values(&[h.as_str()])
                        .inc();
                    tracing::warn!(host_id = %h, error = %e, "reconcile: host skipped");
                    failures.push(format!("{h}: {e}"));
                }
            }
        }
        app.metrics.fleet_provider_vms.set(summary.listed as i64);
        app.metrics.reconcile_cycles.inc();
        app.metrics
            .reconcile_duration
            .observe(started.elapsed().as_secs_f64());
        if let Ok(dl) = app.store.dead_letter_list().await {
            app.metrics.dead_letters.set(dl.len() as i64);
        }
        if failures.is_empty() {
            Ok(serde_json::to_value(&summary).unwrap_or_default())
        } else {
            Err(TaskError::Hosts {
                failed: failures.len(),
                of: targets.len(),
                detail: failures.join("; "),
            })
        }
    }
}

/// Why one host could not be reconciled.
#[derive(Debug, thiserror::Error)]
pub enum HostPassError {
    /// The host did not answer its list.
    #[error("listing its VMs: {0}")]
    Host(#[from] ProviderError),
    /// The store could not be read.
    #[error("reading its environments: {0}")]
    Store(#[from] fuse_store::StoreError),
}

/// Makes the host's `allocated` equal to the reservations its environments hold (a crash
/// between two statements can leave them apart; the store does it atomically).
async fn repair_allocation(app: &App, host: &HostId) {
    if host.as_str() == DEFAULT_HOST {
        return;
    }
    match app.store.host_repair_allocation(host).await {
        Ok(Some((was, now))) => {
            app.metrics.allocation_repairs.inc();
            tracing::warn!(host_id = %host, ?was, ?now, "reconcile: host allocation repaired from its reservations");
        }
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(host_id = %host, error = %e, "reconcile: checking the host's allocation")
        }
    }
}

/// Every environment tracked on `host` that is not destroyed.
pub async fn tracked_on(app: &App, host: &HostId) -> Result<Vec<VmRecord>, fuse_store::StoreError> {
    let filter = VmFilter {
        host_id: Some(host.to_string()),
        // Warm-pool members are VMs on the host too.
        include_pool: true,
        ..VmFilter::default()
    };
    let mut all = super::all_matching(app, &filter).await?;
    all.retain(|r| r.state != VmState::Destroyed);
    Ok(all)
}

/// Reconciles one host: its VM count, the kinds of actions taken, and its new memory.
async fn host_pass(
    app: &Arc<App>,
    host: &HostId,
    dead: &HashMap<String, u32>,
    memory: &HostMemory,
) -> Result<(usize, Vec<&'static str>, HostMemory), HostPassError> {
    let provider = app.providers.for_host(&*app.store, host).await?;
    // The host first, the store second (see the module docs).
    let listed = provider.vm_list(&app.config.vm_prefix).await?;
    let tracked = tracked_on(app, host).await?;
    let (actions, next) = reconcile_plan::plan(
        PlanInput {
            host,
            listed: &listed,
            tracked: &tracked,
            dead_letters: dead,
            now: app.clock.now(),
            orphan_grace: app.config.orphan_grace,
            suspicion_ttl: app.config.reconcile_period * 3,
        },
        memory,
    );
    let mut kinds = Vec::with_capacity(actions.len());
    for a in actions {
        kinds.push(execute(app, &*provider, host, a).await);
    }
    kinds.extend(check_artifacts(app, &*provider, host).await);
    Ok((listed.len(), kinds, next))
}

/// Marks every `ready` snapshot of `host` whose files the host no longer has as `error`,
/// with the reason (a host that cannot list its snapshots is not judged). The store is read
/// after the host, so a snapshot finished meanwhile is not taken for a missing one.
async fn check_artifacts(app: &App, provider: &dyn Provider, host: &HostId) -> Vec<&'static str> {
    let on_host = match provider.snapshots_all().await {
        Ok(Some(v)) => v,
        Ok(None) => return Vec::new(),
        Err(e) => {
            tracing::debug!(host_id = %host, error = %e, "reconcile: listing the host's snapshots");
            return Vec::new();
        }
    };
    let have: std::collections::HashSet<(String, String)> = on_host
        .into_iter()
        .map(|s| (s.vm_id, s.snapshot.snapshot_id))
        .collect();
    let filter = fuse_store::SnapshotFilter {
        state: Some(fuse_types::SnapshotState::Ready),
        ..Default::default()
    };
    let Ok(ready) = app.store.snapshot_list(&filter).await else {
        return Vec::new();
    };
    let mut kinds = Vec::new();
    for s in ready
        .into_iter()
        .filter(|s| s.host_id.as_ref() == Some(host))
    {
        let hid = if s.host_snapshot_id.is_empty() {
            s.id.to_string()
        } else {
            s.host_snapshot_id.clone()
        };
        if have.contains(&(s.vm_id.to_string(), hid)) {
            continue;
        }
        tracing::warn!(snapshot_id = %s.id, host_id = %host, "reconcile: a ready snapshot's files are gone from its host");
        let patch = fuse_store::SnapshotPatch {
            state: Some(fuse_types::SnapshotState::Error),
            last_error: Some(Some(format!(
                "its files are no longer on host {host} (found missing by the reconciler)"
            ))),
            ..Default::default()
        };
        if let Err(e) = app.store.snapshot_update(&s.id, patch).await {
            tracing::warn!(snapshot_id = %s.id, error = %e, "reconcile: marking a snapshot missing");
        }
        kinds.push("snapshot_missing");
    }
    kinds
}

/// Executes one action; returns its kind for the pass summary.
async fn execute(app: &App, provider: &dyn Provider, host: &HostId, a: Action) -> &'static str {
    match a {
        Action::EmptyListUnconfirmed { serving } => {
            tracing::warn!(host_id = %host, tracked = serving,
                "reconcile: the host listed no VMs while environments run there; confirming on the next pass");
            "empty_list_unconfirmed"
        }
        Action::FailMissing(rec) => {
            fail_missing(app, provider, &rec).await;
            "fail_missing"
        }
        Action::Reap(rec) => {
            if let Err(e) = app.env_finish_destroy(rec.clone()).await {
                tracing::info!(vm_id = %rec.id, error = %e, "reconcile: reaping");
            }
            "reap"
        }
        Action::ReleaseFailed(rec) => {
            // Confirm before returning capacity.
            if let Ok(None) = provider.vm_get(rec.id.as_str()).await {
                let change = Change::new(Event::HostConfirmedGone);
                if let Err(e) = app.transition(&rec, change).await {
                    tracing::info!(vm_id = %rec.id, error = %e, "reconcile: releasing a failed VM");
                }
            }
            "release_failed"
        }
        Action::SuspectRuntime(rec) => {
            app.metrics.stuck_suspected.inc();
            tracing::warn!(vm_id = %rec.id, host_id = %host, max_runtime_seconds = rec.spec.max_runtime_seconds,
                "reconcile: environment past its maximum runtime; failing it on the next pass");
            let _ = app
                .store
                .audit_append(AuditEvent {
                    entity_kind: "environment",
                    entity_id: rec.id.to_string(),
                    event_type: "runtime_exceeded_suspected".into(),
                    payload: serde_json::json!({"max_runtime_seconds": rec.spec.max_runtime_seconds}),
                })
                .await;
            "suspect_runtime"
        }
        Action::FailRuntime(rec) => {
            fail_runtime(app, provider, &rec).await;
            "fail_runtime"
        }
        Action::Health(rec, health) => {
            let mut extras = rec.extras.clone();
            extras.health = Some(health.clone());
            let change = Change::new(Event::HealthChanged)
                .reason(format!("healthcheck {}", health.state.as_str()))
                .extras(extras);
            match app.transition(&rec, change).await {
                Ok(_) => tracing::info!(vm_id = %rec.id, health = health.state.as_str(),
                    failures = health.failures, message = %health.message, "healthcheck verdict"),
                Err(e) => {
                    tracing::debug!(vm_id = %rec.id, error = %e, "reconcile: recording health")
                }
            }
            "health"
        }
        Action::AgentCrashLoop(rec, restarts) => {
            let since = rec.extras.agent_restarts.unwrap_or(0).min(restarts);
            let mut extras = rec.extras.clone();
            extras.agent_restarts = Some(restarts);
            let change = Change::new(Event::AgentCrashLoop)
                .reason(format!("the agent was restarted {restarts} times"))
                .error(format!(
                    "the agent keeps crashing: restarted {} times since it came up (or since                      this was last reported; {restarts} in all); its log:                      GET /v1/environments/{}/logs?source=agent",
                    restarts - since,
                    rec.id
                ))
                .payload(serde_json::json!({"agent_restarts": restarts}))
                .extras(extras);
            match app.transition(&rec, change).await {
                Ok(_) => {
                    tracing::warn!(vm_id = %rec.id, restarts, "reconcile: the agent crash-loops")
                }
                Err(e) => {
                    tracing::debug!(vm_id = %rec.id, error = %e, "reconcile: recording a crash loop")
                }
            }
            "agent_crash_loop"
        }
        Action::Activity(rec, bytes) => {
            if let Err(e) = app
                .store
                .vm_note_activity(&rec.id, app.clock.now(), Some(bytes))
                .await
            {
                tracing::debug!(vm_id = %rec.id, error = %e, "reconcile: recording activity");
            }
            "activity"
        }
        Action::Idle(rec) => {
            let limit = rec.spec.idle_timeout_seconds;
            let change = Change::new(Event::Idle)
                .reason(format!("idle for more than {limit} s"))
                .payload(serde_json::json!({"idle_timeout_seconds": limit}));
            if app.transition(&rec, change).await.is_ok() {
                if rec.spec.on_idle == "pause" && rec.state == VmState::Running {
                    tracing::info!(vm_id = %rec.id, idle_timeout_seconds = limit,
                        "reconcile: environment idle past its limit; pausing it");
                    if let Err(e) = app.env_pause(rec.id.as_str()).await {
                        tracing::warn!(vm_id = %rec.id, error = %e, "reconcile: pausing an idle environment");
                    }
                    return "idle";
                }
                tracing::info!(vm_id = %rec.id, idle_timeout_seconds = limit,
                    "reconcile: environment idle past its limit; destroying it");
                if let Err(e) = app.env_delete(rec.id.as_str()).await {
                    tracing::warn!(vm_id = %rec.id, error = %e, "reconcile: destroying an idle environment");
                }
            }
            "idle"
        }
        Action::FinishPause(rec, vm) => {
            tracing::info!(vm_id = %rec.id, host_id = %host, "reconcile: recording a pause its host finished");
            if let Err(e) = app.finish_pause(&rec.id, &vm).await {
                tracing::info!(vm_id = %rec.id, error = %e, "reconcile: recording a pause");
            }
            "finish_pause"
        }
        Action::FinishResume(rec, vm) => {
            tracing::info!(vm_id = %rec.id, host_id = %host, "reconcile: recording a resume its host finished");
            if let Err(e) = app.finish_resume(&rec.id, host, &vm, Event::Resume).await {
                tracing::info!(vm_id = %rec.id, error = %e, "reconcile: recording a resume");
            }
            "finish_resume"
        }
        Action::SettlePaused(rec) => {
            tracing::info!(vm_id = %rec.id, host_id = %host,
                "reconcile: a paused environment held more than its disk; giving the rest back");
            if let Err(e) = app
                .store
                .vm_move_reservation(
                    &rec.id,
                    rec.generation,
                    host,
                    crate::app::pause::paused_size(&rec.spec),
                )
                .await
            {
                tracing::info!(vm_id = %rec.id, error = %e, "reconcile: settling a paused reservation");
            }
            "settle_paused"
        }
        Action::RecoverMigration(rec) => {
            let Some(m) = &rec.extras.migration else {
                return "recover_migration";
            };
            // The replica doing it is alive (this one, or another that still heartbeats).
            let alive = m.replica == app.replica_id
                || app.store.replica_alive(&m.replica).await.unwrap_or(true);
            if alive {
                return "migration_in_progress";
            }
            app.recover_migration(rec.clone()).await;
            "recover_migration"
        }
        Action::DestroyOrphan { vm, key } => {
            // Re-read the record: it may have been created or changed since the list.
            if let Ok(id) = VmId::parse(&vm.vm_id) {
                match app.store.vm_get(&id).await {
                    Ok(Some(r))
                        if (crate::app::lifecycle::expects_vm_on_host(&r)
                            && r.host_id.as_ref() == Some(host))
                            // Arriving here by a migration in progress.
                            || r
                                .extras
                                .migration
                                .as_ref()
                                .is_some_and(|m| &m.target_host_id == host) =>
                    {
                        return "orphan_skipped"
                    }
                    Ok(_) => {}
                    Err(_) => return "orphan_skipped",
                }
            }
            destroy_orphan(app, provider, host, &vm, &key).await;
            "destroy_orphan"
        }
    }
}

/// Fails a tracked VM the host no longer runs, after the host confirmed it individually.
async fn fail_missing(app: &App, provider: &dyn Provider, rec: &VmRecord) {
    let (detail, stopped) = match provider.vm_get(rec.id.as_str()).await {
        Ok(None) => ("the VM is gone from its host".to_owned(), false),
        Ok(Some(v)) if v.state == HostVmState::Stopped => match &v.error {
            Some(e) => (
                format!("the VM stopped on its host ({}): {e}", v.state),
                true,
            ),
            None => (format!("the VM stopped on its host ({})", v.state), true),
        },
        // Back, in a state this control plane does not know, or the host could not say:
        // nothing to do on this pass.
        Ok(Some(_)) | Err(_) => return,
    };
    // Remove a dead VM's remains so the capacity can be returned.
    if stopped && provider.vm_destroy(rec.id.as_str()).await.is_err() {
        return;
    }
    let change = Change::new(Event::VanishedOnHost)
        .reason("reconcile: missing on host")
        .error(detail);
    match app.transition(rec, change).await {
        Ok(r) => {
            app.metrics.vms_missing_provider.inc();
            tracing::warn!(vm_id = %rec.id, reason = ?r.error, "reconcile: environment failed");
        }
        Err(e) => {
            tracing::info!(vm_id = %rec.id, error = %e, "reconcile: record changed meanwhile");
        }
    }
}

/// Fails a VM past its maximum runtime (second pass), then destroys it on its host; the
/// capacity comes back once the host confirms (or later through recovery).
async fn fail_runtime(app: &App, provider: &dyn Provider, rec: &VmRecord) {
    if rec.extras.e2b.as_ref().is_some_and(|e| e.auto_pause) {
        // An E2B sandbox created with `autoPause` is paused when its time is up.
        match app.env_pause(rec.id.as_str()).await {
            Ok(_) => {
                tracing::info!(vm_id = %rec.id, "reconcile: timeout reached; paused (autoPause)")
            }
            Err(e) => {
                tracing::warn!(vm_id = %rec.id, error = %e, "reconcile: pausing at the timeout")
            }
        }
        return;
    }
    let why = match rec.extras.ends_at {
        Some(t) => format!(
            "its timeout ran out at {}",
            t.format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()
        ),
        None => format!(
            "ran longer than its max_runtime_seconds ({} s)",
            rec.spec.max_runtime_seconds
        ),
    };
    let change = Change::new(Event::RuntimeExceeded)
        .reason("reconcile: max runtime")
        .error(why);
    let failed = match app.transition(rec, change).await {
        Ok(r) => r,
        Err(LifecycleError::Stale { .. } | LifecycleError::Illegal { .. }) => {
            tracing::info!(vm_id = %rec.id, "reconcile: record changed meanwhile");
            return;
        }
        Err(e) => {
            tracing::warn!(vm_id = %rec.id, error = %e, "reconcile: failing for its runtime");
            return;
        }
    };
    app.metrics.stuck_failed.inc();
    tracing::warn!(vm_id = %rec.id, "reconcile: environment failed for its runtime; destroying it");
    if provider.vm_destroy(rec.id.as_str()).await.is_ok() {
        let _ = app
            .transition(&failed, Change::new(Event::HostConfirmedGone))
            .await;
    }
}

/// Destroys an untracked VM, counting failures toward the dead letter.
async fn destroy_orphan(
    app: &App,
    provider: &dyn Provider,
    host: &HostId,
    vm: &AgentVm,
    key: &str,
) {
    match provider.vm_destroy(&vm.vm_id).await {
        Ok(()) => {
            app.metrics.orphans_destroyed.inc();
            tracing::warn!(vm_id = %vm.vm_id, host_id = %host, age_s = vm.age_seconds,
                "reconcile: destroyed a VM no environment tracks");
            let _ = app.store.dead_letter_clear("orphan", key).await;
            audit_orphan(app, host, vm, "orphan_destroyed", None).await;
        }
        Err(e) => {
            app.metrics.orphans_failed.inc();
            let msg = match &e {
                ProviderError::Internal(m) | ProviderError::Unavailable(m) => m.clone(),
                other => other.to_string(),
            };
            let n = app
                .store
                .dead_letter_fail("orphan", key, &msg)
                .await
                .unwrap_or(0);
            if n >= ORPHAN_ATTEMPTS {
                app.metrics.orphans_dead_lettered.inc();
                tracing::error!(vm_id = %vm.vm_id, host_id = %host, attempts = n, error = %msg,
                    "reconcile: giving up on an untracked VM (dead-lettered); an operator must remove it");
                audit_orphan(app, host, vm, "orphan_dead_lettered", Some(&msg)).await;
            } else {
                tracing::warn!(vm_id = %vm.vm_id, host_id = %host, attempt = n, error = %msg,
                    "reconcile: could not destroy an untracked VM; will retry");
            }
        }
    }
}

async fn audit_orphan(app: &App, host: &HostId, vm: &AgentVm, what: &str, error: Option<&str>) {
    let _ = app
        .store
        .audit_append(AuditEvent {
            entity_kind: "environment",
            entity_id: vm.vm_id.clone(),
            event_type: what.into(),
            payload: serde_json::json!({"host_id": host.as_str(), "age_seconds": vm.age_seconds, "error": error}),
        })
        .await;
}
