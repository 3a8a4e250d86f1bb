//! Host liveness, by polling (the control plane calls each host's `/healthz`; hosts need no
//! way to reach the control plane, and a replica that cannot reach a host is exactly the
//! case to detect). A host that answers has `last_seen` refreshed and, if it was
//! `unreachable`, becomes `active` again: its environments still running are announced
//! `found` (their state again) and a reconcile pass is asked for at once (failing the ones
//! it lost). A host silent for `FUSE_HOST_DOWN_AFTER_SECS` (default three poll periods)
//! becomes `unreachable` (not schedulable) and its serving environments are announced
//! `lost`. Both announcements go through the lifecycle (`host_lost`, `host_found` rows).
//! Hosts are polled concurrently, so one slow host does not delay the others.

use super::reconciler::tracked_on;
use super::{Activator, BackgroundTask, TaskError};
use crate::app::lifecycle::Change;
use crate::app::App;
use async_trait::async_trait;
use fuse_types::hostagent::HostVmState;
use fuse_types::lifecycle::Event;
use fuse_types::{HostId, HostState, VmState};
use std::collections::HashSet;
use std::sync::Arc;

/// The host monitor; it wakes the reconciler when a host comes back.
#[derive(Debug)]
pub struct HostMonitor {
    reconcile: Activator,
}

impl HostMonitor {
    /// A monitor that activates `reconcile` when a host answers again.
    pub fn new(reconcile: Activator) -> Self {
        HostMonitor { reconcile }
    }
}

#[async_trait]
impl BackgroundTask for HostMonitor {
    fn name(&self) -> &'static str {
        "host_monitor"
    }

    async fn activate(&mut self, app: &Arc<App>) -> Result<serde_json::Value, TaskError> {
        let hosts = app.store.host_list().await?;
        let limit = app.config.host_down_after;
        let checks = hosts.into_iter().map(|h| {
            let app = app.clone();
            async move {
                let provider = match app.providers.for_host(&*app.store, &h.id).await {
                    Ok(p) => p,
                    Err(_) => return Poll::Skipped,
                };
                match provider.health().await {
                    Ok(health) => {
                        // The host's own report, every poll, never above what was
                        // declared at registration (a Go-era host that reports none keeps
                        // what it has).
                        let reported = health.capacity;
                        let cap = (reported != fuse_types::Resources::default())
                            .then(|| fuse_store::capped(reported, h.declared))
                            .filter(|c| *c != h.capacity);
                        if let Err(e) = app.store.host_seen(&h.id, cap).await {
                            tracing::warn!(host_id = %h.id, error = %e, "recording host heartbeat");
                            return Poll::Skipped;
                        }
                        if h.state == HostState::Unreachable {
                            tracing::info!(host_id = %h.id, "host answers again; active");
                            if app
                                .store
                                .host_set_state(&h.id, HostState::Active, None)
                                .await
                                .is_ok()
                            {
                                host_returned(&app, &h.id).await;
                                return Poll::Returned;
                            }
                        }
                        Poll::Answered
                    }
                    Err(e) => {
                        let silent_for = h
                            .last_seen
                            .map(|t| (app.clock.now() - t).unsigned_abs())
                            .unwrap_or(std::time::Duration::MAX);
                        // Only an active host becomes unreachable; a cordon is never lifted
                        // by an outage.
                        if h.state == HostState::Active
                            && silent_for >= limit
                            && still(&app, &h.id, HostState::Active).await
                        {
                            tracing::warn!(host_id = %h.id, error = %e, silent_s = silent_for.as_secs(), "host unreachable");
                            let why = format!(
                                "no answer for {} s: {}",
                                silent_for.as_secs().min(10 * 365 * 86400),
                                e.client_message()
                            );
                            if app
                                .store
                                .host_set_state(&h.id, HostState::Unreachable, Some(why.clone()))
                                .await
                                .is_ok()
                            {
                                host_lost(&app, &h.id, &why).await;
                                return Poll::Lost;
                            }
                        }
                        Poll::Silent
                    }
                }
            }
        });
        let polls = futures::future::join_all(checks).await;
        if polls.contains(&Poll::Returned) {
            self.reconcile.activate();
        }
        let count = |p: Poll| polls.iter().filter(|x| **x == p).count();
        Ok(serde_json::json!({
            "answered": count(Poll::Answered) + count(Poll::Returned),
            "silent": count(Poll::Silent) + count(Poll::Lost),
            "returned": count(Poll::Returned),
            "lost": count(Poll::Lost),
        }))
    }
}

/// What polling one host found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Poll {
    Answered,
    Returned,
    Silent,
    Lost,
    Skipped,
}

/// Whether the host is still in `state` (re-read right before changing it, so an operator's
/// cordon made during the health call is not overwritten).
async fn still(app: &App, id: &HostId, state: HostState) -> bool {
    matches!(app.store.host_get(id).await, Ok(Some(h)) if h.state == state)
}

/// A host that was unreachable answers again: every environment it still runs is
/// announced again (after the `lost` sent when it went silent); the reconcile pass that
/// follows fails the ones it lost.
async fn host_returned(app: &App, host: &HostId) {
    let Ok(provider) = app.providers.for_host(&*app.store, host).await else {
        return;
    };
    let Ok(listed) = provider.vm_list(&app.config.vm_prefix).await else {
        return;
    };
    let alive: HashSet<&str> = listed
        .iter()
        .filter(|v| v.state == HostVmState::Running)
        .map(|v| v.vm_id.as_str())
        .collect();
    let Ok(tracked) = tracked_on(app, host).await else {
        return;
    };
    for rec in tracked
        .iter()
        .filter(|r| matches!(r.state, VmState::Running | VmState::Draining))
        .filter(|r| alive.contains(r.id.as_str()))
    {
        let change =
            Change::new(Event::HostFound).payload(serde_json::json!({"host_id": host.as_str()}));
        if let Err(e) = app.transition(rec, change).await {
            tracing::info!(vm_id = %rec.id, error = %e, "announcing a found environment");
        }
    }
}

/// A host became unreachable: each of its serving environments is announced `lost`
/// (events and audit); they stay tracked and are reconciled when it returns.
async fn host_lost(app: &App, host: &HostId, why: &str) {
    let Ok(tracked) = tracked_on(app, host).await else {
        return;
    };
    for rec in tracked
        .iter()
        .filter(|r| matches!(r.state, VmState::Running | VmState::Draining))
    {
        app.metrics.lost_vms.inc();
        let change = Change::new(Event::HostLost)
            .error(format!("host {host} stopped answering: {why}"))
            .payload(serde_json::json!({"host_id": host.as_str(), "reason": why}));
        if let Err(e) = app.transition(rec, change).await {
            tracing::info!(vm_id = %rec.id, error = %e, "announcing a lost environment");
        }
    }
}
