//! The reconciler (DESIGN §4): per host, compares the environments the control plane tracks
//! with the VMs the host lists, and heals the difference.
//!
//! - **Tracked but missing** (running or draining, and the host confirms it has no such VM,
//!   or that it stopped): `failed` with the reason, capacity released once the host holds
//!   nothing.
//! - **Untracked on the host** (no live environment names it) and older than the grace
//!   period: destroyed; after 5 failed attempts it is dead-lettered (kept for an operator,
//!   no more attempts).
//! - **Past `max_runtime_seconds`**: suspected on the first pass, failed and destroyed on the
//!   next one (so a clock jump or a slow pass never kills at once).
//! - **`destroying` and gone**: reaped (`destroyed`, capacity released).
//!
//! Safety rules: the host's list is read first and the store after, so a VM being created
//! (its record is written before the host is asked) is never taken for an orphan; every
//! destructive step is confirmed by a per-VM read of the host first; a host that fails to
//! answer is skipped (its VMs untouched) without stopping the pass for the others; an empty
//! list while VMs are tracked there is only believed when the next pass reads it again.

use crate::app::App;
use crate::events::EventHub;
use crate::provider::{Provider, ProviderError, DEFAULT_HOST};
use fuse_store::{AuditEvent, VmFilter, VmPatch, VmRecord};
use fuse_types::hostagent::AgentVm;
use fuse_types::{now, HostId, HostState, VmId, VmState};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Failed destroys of one orphan before it is dead-lettered.
pub const ORPHAN_ATTEMPTS: u32 = 5;

/// What the reconciler remembers between passes (leader only; a new leader starts afresh,
/// which only delays a max-runtime kill or an empty-list confirmation by one pass).
#[derive(Debug, Default)]
pub struct State {
    /// VMs seen past their maximum runtime, and when they were last seen so.
    suspected: HashMap<VmId, Instant>,
    /// Hosts whose previous list was empty while environments were tracked on them.
    empty_once: HashSet<String>,
}

/// One pass over every host. A host that fails is reported in the error (after the others
/// were reconciled).
pub async fn pass(app: Arc<App>) -> Result<(), String> {
    let started = Instant::now();
    let hosts = app.store.host_list().await.map_err(|e| e.to_string())?;
    let mut targets: Vec<HostId> = hosts
        .iter()
        .filter(|h| h.state != HostState::Unreachable)
        .map(|h| h.id.clone())
        .collect();
    // The pseudo-host of the default provider, while it has environments.
    if let Ok(d) = HostId::parse(DEFAULT_HOST) {
        let filter = VmFilter {
            host_id: Some(DEFAULT_HOST.to_owned()),
            ..VmFilter::default()
        };
        let used = app
            .store
            .vm_list(&filter, None, 1)
            .await
            .map_err(|e| e.to_string())?;
        if !used.is_empty() && !targets.contains(&d) {
            targets.push(d);
        }
    }
    let runs = targets.into_iter().map(|h| {
        let app = app.clone();
        async move {
            let r = host_pass(&app, &h).await;
            (h, r)
        }
    });
    let results = futures::future::join_all(runs).await;
    let mut listed = 0usize;
    let mut failures = Vec::new();
    for (h, r) in results {
        match r {
            Ok(n) => {
                listed += n;
                repair_allocation(&app, &h).await;
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
    app.metrics.fleet_provider_vms.set(listed as i64);
    app.metrics.reconcile_cycles.inc();
    app.metrics
        .reconcile_duration
        .observe(started.elapsed().as_secs_f64());
    if let Ok(dl) = app.store.dead_letter_list().await {
        app.metrics.dead_letters.set(dl.len() as i64);
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} host(s) could not be read: {}",
            failures.len(),
            failures.join("; ")
        ))
    }
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
async fn tracked_on(app: &App, host: &HostId) -> Result<Vec<VmRecord>, String> {
    let filter = VmFilter {
        host_id: Some(host.to_string()),
        ..VmFilter::default()
    };
    let mut all = super::all_matching(app, &filter).await?;
    all.retain(|r| r.state != VmState::Destroyed);
    Ok(all)
}

/// Whether a record stands for a VM that should exist on its host.
fn live(rec: &VmRecord) -> bool {
    match rec.state {
        VmState::Provisioning | VmState::Running | VmState::Draining | VmState::Destroying => true,
        VmState::Failed => rec.reserved.is_some(),
        VmState::Destroyed => false,
    }
}

/// Reconciles one host; returns how many VMs it listed (what it did is in the metrics).
pub async fn host_pass(app: &App, host: &HostId) -> Result<usize, String> {
    let provider = app
        .providers
        .for_host(&*app.store, host)
        .await
        .map_err(|e| e.to_string())?;
    // The host first, the store second (see the module docs).
    let listed = provider
        .vm_list(&app.config.vm_prefix)
        .await
        .map_err(|e| e.to_string())?;
    let tracked = tracked_on(app, host).await?;
    let on_host: HashMap<&str, &AgentVm> = listed.iter().map(|v| (v.vm_id.as_str(), v)).collect();

    let serving = tracked
        .iter()
        .filter(|r| matches!(r.state, VmState::Running | VmState::Draining))
        .count();
    let believe_missing = if listed.is_empty() && serving > 0 {
        let mut st = app.reconcile.lock();
        let second = st.empty_once.contains(host.as_str());
        st.empty_once.insert(host.to_string());
        if !second {
            tracing::warn!(host_id = %host, tracked = serving,
                "reconcile: the host listed no VMs while environments run there; confirming on the next pass");
        }
        second
    } else {
        app.reconcile.lock().empty_once.remove(host.as_str());
        true
    };

    let mut over_limit = Vec::new();
    for rec in &tracked {
        let here = on_host.get(rec.id.as_str()).copied();
        match rec.state {
            VmState::Running | VmState::Draining => {
                let alive = here.is_some_and(|v| v.state == "running");
                if !alive {
                    if believe_missing {
                        fail_missing(app, &*provider, rec).await;
                    }
                } else if past_runtime(rec) {
                    over_limit.push(rec.clone());
                }
            }
            VmState::Destroying if here.is_none() => {
                if let Err(e) = app.env_finish_destroy(rec.clone()).await {
                    tracing::info!(vm_id = %rec.id, error = %e.message, "reconcile: reaping");
                }
            }
            VmState::Failed if rec.reserved.is_some() && here.is_none() => {
                // Confirm before returning capacity.
                if let Ok(None) = provider.vm_get(rec.id.as_str()).await {
                    let _ = app.store.vm_release(&rec.id).await;
                }
            }
            _ => {}
        }
    }
    runtime(app, &*provider, host, over_limit).await;

    // Untracked VMs on the host.
    let known: HashMap<&str, &VmRecord> = tracked.iter().map(|r| (r.id.as_str(), r)).collect();
    let dead: HashMap<String, u32> = match app.store.dead_letter_list().await {
        Ok(v) => v
            .into_iter()
            .filter(|d| d.kind == "orphan")
            .map(|d| (d.entity_id, d.attempts))
            .collect(),
        Err(e) => return Err(format!("reading dead letters: {e}")),
    };
    for vm in &listed {
        if known.get(vm.vm_id.as_str()).is_some_and(|r| live(r)) {
            continue;
        }
        if Duration::from_secs(vm.age_seconds) < app.config.orphan_grace {
            continue;
        }
        let key = format!("{host}/{}", vm.vm_id);
        if dead.get(&key).copied().unwrap_or(0) >= ORPHAN_ATTEMPTS {
            continue;
        }
        // Re-read the record: it may have been created or changed since the list.
        if let Ok(id) = VmId::parse(&vm.vm_id) {
            match app.store.vm_get(&id).await {
                Ok(Some(r)) if live(&r) && r.host_id.as_ref() == Some(host) => continue,
                Ok(_) => {}
                Err(_) => continue,
            }
        }
        destroy_orphan(app, &*provider, host, vm, &key).await;
    }
    Ok(listed.len())
}

fn past_runtime(rec: &VmRecord) -> bool {
    let Some(since) = rec.running_since else {
        return false;
    };
    let limit = Duration::from_secs(rec.spec.max_runtime_seconds.max(1));
    (now() - since).unsigned_abs() > limit
}

/// Fails a tracked VM the host no longer runs, after the host confirmed it individually.
async fn fail_missing(app: &App, provider: &dyn Provider, rec: &VmRecord) {
    let (detail, stopped) = match provider.vm_get(rec.id.as_str()).await {
        Ok(None) => ("the VM is gone from its host".to_owned(), false),
        Ok(Some(v)) if v.state != "running" => match &v.error {
            Some(e) => (
                format!("the VM stopped on its host ({}): {e}", v.state),
                true,
            ),
            None => (format!("the VM stopped on its host ({})", v.state), true),
        },
        // Back, or the host could not say: nothing to do on this pass.
        Ok(Some(_)) | Err(_) => return,
    };
    // Remove a dead VM's remains so the capacity can be returned.
    if stopped && provider.vm_destroy(rec.id.as_str()).await.is_err() {
        return;
    }
    let secrets = rec.secrets.clone().unwrap_or_default();
    let detail = crate::app::redact(&detail, &secrets.values());
    let patch = VmPatch {
        release: true,
        ..VmPatch::state(VmState::Failed, "reconcile: missing on host").with_error(detail.clone())
    };
    match app.store.vm_update(&rec.id, rec.generation, patch).await {
        Ok(r) => {
            app.metrics.vms_missing_provider.inc();
            tracing::warn!(vm_id = %rec.id, reason = %detail, "reconcile: environment failed");
            app.events.publish(&r);
        }
        Err(e) => {
            tracing::info!(vm_id = %rec.id, error = %e, "reconcile: record changed meanwhile");
        }
    }
}

/// Suspects VMs past their maximum runtime; fails and destroys those already suspected.
async fn runtime(app: &App, provider: &dyn Provider, host: &HostId, over: Vec<VmRecord>) {
    let (to_fail, newly): (Vec<VmRecord>, Vec<VmRecord>) = {
        let mut st = app.reconcile.lock();
        // Forget suspicions not confirmed lately (the VM ended, or was seen on no pass).
        let stale = app.config.reconcile_period * 3;
        st.suspected.retain(|_, seen| seen.elapsed() < stale);
        over.into_iter()
            .partition(|r| st.suspected.contains_key(&r.id))
    };
    for rec in &newly {
        app.reconcile
            .lock()
            .suspected
            .insert(rec.id.clone(), Instant::now());
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
    }
    for rec in to_fail {
        app.reconcile.lock().suspected.remove(&rec.id);
        let why = format!(
            "ran longer than its max_runtime_seconds ({} s)",
            rec.spec.max_runtime_seconds
        );
        let patch = VmPatch::state(VmState::Failed, "reconcile: max runtime").with_error(why);
        let r = match app.store.vm_update(&rec.id, rec.generation, patch).await {
            Ok(r) => r,
            Err(e) => {
                tracing::info!(vm_id = %rec.id, error = %e, "reconcile: record changed meanwhile");
                continue;
            }
        };
        app.events.publish(&r);
        app.metrics.stuck_failed.inc();
        tracing::warn!(vm_id = %rec.id, "reconcile: environment failed for its runtime; destroying it");
        // Failed first (persisted), then destroyed on the host; the capacity comes back once
        // the host confirms (or later through recovery, which retries failed reservations).
        if provider.vm_destroy(rec.id.as_str()).await.is_ok() {
            let _ = app.store.vm_release(&rec.id).await;
        }
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

/// Called when a host that was unreachable answers again: every environment it still runs
/// is reported `running` again (after the `lost` sent when it went silent); the reconcile
/// pass that follows fails the ones it lost.
pub async fn host_returned(app: &App, host: &HostId) {
    let Ok(provider) = app.providers.for_host(&*app.store, host).await else {
        return;
    };
    let Ok(listed) = provider.vm_list(&app.config.vm_prefix).await else {
        return;
    };
    let alive: HashSet<&str> = listed
        .iter()
        .filter(|v| v.state == "running")
        .map(|v| v.vm_id.as_str())
        .collect();
    let Ok(tracked) = tracked_on(app, host).await else {
        return;
    };
    for rec in tracked
        .iter()
        .filter(|r| matches!(r.state, VmState::Running | VmState::Draining))
    {
        if alive.contains(rec.id.as_str()) {
            app.events.publish_event(EventHub::event_for(rec));
            let _ = app
                .store
                .audit_append(AuditEvent {
                    entity_kind: "environment",
                    entity_id: rec.id.to_string(),
                    event_type: "found".into(),
                    payload: serde_json::json!({"host_id": host.as_str()}),
                })
                .await;
        }
    }
    app.loops.poke("reconcile");
}

/// Called when a host becomes unreachable: each of its serving environments is reported
/// `lost` (events and audit); they stay tracked and are reconciled when it returns.
pub async fn host_lost(app: &App, host: &HostId, why: &str) {
    let Ok(tracked) = tracked_on(app, host).await else {
        return;
    };
    for rec in tracked
        .iter()
        .filter(|r| matches!(r.state, VmState::Running | VmState::Draining))
    {
        app.metrics.lost_vms.inc();
        let mut ev = EventHub::event_with_state(rec, "lost");
        ev.error = Some(format!("host {host} stopped answering: {why}"));
        app.events.publish_event(ev);
        let _ = app
            .store
            .audit_append(AuditEvent {
                entity_kind: "environment",
                entity_id: rec.id.to_string(),
                event_type: "lost".into(),
                payload: serde_json::json!({"host_id": host.as_str(), "reason": why}),
            })
            .await;
    }
}
