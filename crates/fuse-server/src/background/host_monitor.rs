//! Host liveness, by polling (the control plane calls each host's `/healthz`; hosts need no
//! way to reach the control plane, and a replica that cannot reach a host is exactly the
//! case to detect). A host that answers has `last_seen` refreshed and, if it was
//! `unreachable`, becomes `active` again: its environments still running are reported
//! `running` again and a reconcile pass follows at once (failing the ones it lost). A host
//! silent for `FUSE_HOST_DOWN_AFTER_SECS` (default three poll periods) becomes
//! `unreachable` (not schedulable) and its serving environments are reported `lost`. Hosts
//! are polled concurrently, so one slow host does not delay the others.

use crate::app::App;
use fuse_types::{now, HostState};
use std::sync::Arc;

/// One pass over every host.
pub async fn pass(app: Arc<App>) -> Result<(), String> {
    let hosts = app.store.host_list().await.map_err(|e| e.to_string())?;
    let limit = app.config.host_down_after;
    let checks = hosts.into_iter().map(|h| {
        let app = app.clone();
        async move {
            let provider = match app.providers.for_host(&*app.store, &h.id).await {
                Ok(p) => p,
                Err(_) => return,
            };
            match provider.health().await {
                Ok(health) => {
                    // A host registered while silent has no capacity yet: take its own.
                    let unknown = h.capacity == fuse_types::Resources::default();
                    let cap = unknown.then_some(health.capacity);
                    if let Err(e) = app.store.host_seen(&h.id, cap).await {
                        tracing::warn!(host_id = %h.id, error = %e, "recording host heartbeat");
                        return;
                    }
                    if h.state == HostState::Unreachable {
                        tracing::info!(host_id = %h.id, "host answers again; active");
                        if app
                            .store
                            .host_set_state(&h.id, HostState::Active, None)
                            .await
                            .is_ok()
                        {
                            super::reconcile::host_returned(&app, &h.id).await;
                        }
                    }
                }
                Err(e) => {
                    let silent_for = h
                        .last_seen
                        .map(|t| (now() - t).unsigned_abs())
                        .unwrap_or(std::time::Duration::MAX);
                    // Only an active host becomes unreachable; a cordon is never lifted by
                    // an outage.
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
                            super::reconcile::host_lost(&app, &h.id, &why).await;
                        }
                    }
                }
            }
        }
    });
    futures::future::join_all(checks).await;
    Ok(())
}

/// Whether the host is still in `state` (re-read right before changing it, so an operator's
/// cordon made during the health call is not overwritten).
async fn still(app: &App, id: &fuse_types::HostId, state: HostState) -> bool {
    matches!(app.store.host_get(id).await, Ok(Some(h)) if h.state == state)
}
