//! Polls every host's `/healthz`. A host that answers has `last_seen` refreshed and, if it
//! was `unreachable`, becomes `active`; a host silent for three periods becomes
//! `unreachable` (not schedulable). Hosts are polled concurrently, so one slow host does
//! not delay the others.

use crate::app::App;
use fuse_types::{now, HostState};
use std::sync::Arc;

/// One pass over every host.
pub async fn pass(app: Arc<App>) -> Result<(), String> {
    let hosts = app.store.host_list().await.map_err(|e| e.to_string())?;
    let limit = app.config.host_poll * 3;
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
                        let _ = app
                            .store
                            .host_set_state(&h.id, HostState::Active, None)
                            .await;
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
                        tracing::warn!(host_id = %h.id, error = %e, "host unreachable");
                        let _ = app
                            .store
                            .host_set_state(
                                &h.id,
                                HostState::Unreachable,
                                Some(format!("no answer: {}", e.client_message())),
                            )
                            .await;
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
