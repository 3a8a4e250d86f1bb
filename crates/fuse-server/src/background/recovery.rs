//! Recovery of interrupted work, so nothing is lost or leaked when a control-plane replica
//! dies (`kill -9`) in the middle of an operation:
//!
//! - a `provisioning` VM whose owning replica is dead — its liveness lock absent on every
//!   reading for a grace period, since after a database restart live replicas need a pass
//!   to re-take theirs — (or that has been provisioning for far longer than the provision
//!   limit) is destroyed on its host, its capacity released, and
//!   it is reported `failed`;
//! - a `destroying` VM untouched for a grace period is destroyed again (idempotent) and
//!   finished;
//! - a `failed` VM that still holds a reservation (its host did not confirm the destroy) is
//!   destroyed again and its capacity released once the host confirms.
//!
//! Every step is idempotent, so running it on any replica, or twice, is safe; it runs on the
//! leader only to avoid duplicate work.

use crate::app::App;
use fuse_store::{VmFilter, VmPatch, VmRecord};
use fuse_types::{now, VmState};
use std::sync::Arc;
use std::time::Duration;

/// How long a `destroying` VM must be untouched before recovery redoes the destroy (at
/// most; shorter when the recovery period is shorter). Destroy is idempotent, so a
/// duplicate destroy racing a live one is harmless; the grace only avoids needless calls.
fn destroy_grace(app: &App) -> Duration {
    app.config.recovery_period.min(Duration::from_secs(10))
}

async fn all_in(app: &App, state: VmState) -> Result<Vec<VmRecord>, String> {
    let filter = VmFilter {
        state: Some(state),
        ..VmFilter::default()
    };
    super::all_matching(app, &filter).await
}

fn age(rec: &VmRecord) -> Duration {
    (now() - rec.updated_at).unsigned_abs()
}

/// How long a replica must be seen without its liveness lock before its provisions count
/// as abandoned. After a database restart every replica re-takes its lock on its next
/// background pass; until then it only looks dead, so one absent reading is not enough.
fn owner_grace(app: &App) -> Duration {
    (app.config.host_poll.max(app.config.recovery_period) * 2).max(Duration::from_secs(5))
}

/// Whether `owner` has been continuously absent for the grace period.
async fn owner_gone(app: &App, owner: &str) -> Result<bool, String> {
    let alive = app
        .store
        .replica_alive(owner)
        .await
        .map_err(|e| e.to_string())?;
    let mut absent = app.owners_absent.lock();
    if alive {
        absent.remove(owner);
        return Ok(false);
    }
    let since = *absent
        .entry(owner.to_owned())
        .or_insert_with(std::time::Instant::now);
    Ok(since.elapsed() >= owner_grace(app))
}

/// One pass.
pub async fn pass(app: Arc<App>) -> Result<(), String> {
    let stuck_after = app.config.provision_timeout + Duration::from_secs(60);
    let mut checked: std::collections::HashMap<String, bool> = std::collections::HashMap::new();
    for rec in all_in(&app, VmState::Provisioning).await? {
        let ours = rec.owner == app.replica_id;
        let abandoned = if ours {
            false
        } else if let Some(g) = checked.get(&rec.owner) {
            *g
        } else {
            let g = owner_gone(&app, &rec.owner).await?;
            checked.insert(rec.owner.clone(), g);
            g
        };
        let stuck = (now() - rec.created_at).unsigned_abs() > stuck_after;
        if abandoned || stuck {
            let why = if abandoned {
                "interrupted: the control-plane replica provisioning it stopped"
            } else {
                "provisioning did not finish in time"
            };
            tracing::warn!(vm_id = %rec.id, owner = %rec.owner, reason = why, "recovering an abandoned provision");
            abandon_provision(&app, rec, why).await;
        }
    }
    // Forget replicas that no longer own any provision.
    app.owners_absent
        .lock()
        .retain(|owner, _| checked.contains_key(owner));
    for rec in all_in(&app, VmState::Destroying).await? {
        if age(&rec) >= destroy_grace(&app) {
            if let Err(e) = app.env_finish_destroy(rec.clone()).await {
                tracing::warn!(vm_id = %rec.id, error = %e.message, "recovery: finishing destroy");
            }
        }
    }
    for rec in all_in(&app, VmState::Failed).await? {
        if rec.reserved.is_some() && age(&rec) >= destroy_grace(&app) {
            if let Ok(p) = app.provider_of(&rec).await {
                if p.vm_destroy(rec.id.as_str()).await.is_ok() {
                    let _ = app.store.vm_release(&rec.id).await;
                }
            }
        }
    }
    Ok(())
}

async fn abandon_provision(app: &App, rec: VmRecord, why: &str) {
    let mut host_clean = rec.host_id.is_none();
    if rec.host_id.is_some() {
        if let Ok(p) = app.provider_of(&rec).await {
            host_clean = p.vm_destroy(rec.id.as_str()).await.is_ok();
        }
    }
    let patch = VmPatch::state(VmState::Failed, "recovery").with_error(why);
    match app.store.vm_update(&rec.id, rec.generation, patch).await {
        Ok(r) => {
            app.events.publish(&r);
            if host_clean {
                let _ = app.store.vm_release(&rec.id).await;
            }
        }
        Err(e) => tracing::info!(vm_id = %rec.id, error = %e, "recovery: record changed meanwhile"),
    }
}
