//! Recovery of interrupted work, so nothing is lost or leaked when a control-plane replica
//! dies (`kill -9`) in the middle of an operation:
//!
//! - a `provisioning` VM whose owning replica is dead — its liveness lock absent on every
//!   reading for a grace period, since after a database restart live replicas need a pass
//!   to re-take theirs — (or that has been provisioning for far longer than the provision
//!   limit) is destroyed on its host and reported `failed` (`abandoned`), its capacity
//!   released once the host confirmed;
//! - a `destroying` VM untouched for a grace period is destroyed again (idempotent) and
//!   finished;
//! - a `failed` VM that still holds a reservation (its host did not confirm the destroy) is
//!   destroyed again and its capacity released once the host confirms.
//!
//! Every step is idempotent, so running it on any replica, or twice, is safe; it runs on the
//! leader only to avoid duplicate work. The task owns what it remembers: since when each
//! replica has been seen without its liveness lock.

use super::{BackgroundTask, TaskError};
use crate::app::lifecycle::Change;
use crate::app::App;
use async_trait::async_trait;
use fuse_store::{StoreError, VmFilter, VmRecord};
use fuse_types::lifecycle::Event;
use fuse_types::VmState;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// The recovery task and its memory.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Replicas seen without their liveness lock, and since when.
    owners_absent: HashMap<String, fuse_types::Timestamp>,
}

/// How long a `destroying` VM must be untouched before recovery redoes the destroy (at
/// most; shorter when the recovery period is shorter). Destroy is idempotent, so a
/// duplicate destroy racing a live one is harmless; the grace only avoids needless calls.
fn destroy_grace(app: &App) -> Duration {
    app.config.recovery_period.min(Duration::from_secs(10))
}

async fn all_in(app: &App, state: VmState) -> Result<Vec<VmRecord>, StoreError> {
    let filter = VmFilter {
        state: Some(state),
        // Warm-pool members are provisioned and destroyed as any environment.
        include_pool: true,
        ..VmFilter::default()
    };
    super::all_matching(app, &filter).await
}

fn age(app: &App, rec: &VmRecord) -> Duration {
    (app.clock.now() - rec.updated_at).unsigned_abs()
}

/// How long a replica must be seen without its liveness lock before its provisions count
/// as abandoned. After a database restart every replica re-takes its lock on its next
/// background pass; until then it only looks dead, so one absent reading is not enough.
fn owner_grace(app: &App) -> Duration {
    (app.config.host_poll.max(app.config.recovery_period) * 2).max(Duration::from_secs(5))
}

impl Recovery {
    /// Whether `owner` has been continuously absent for the grace period.
    async fn owner_gone(&mut self, app: &App, owner: &str) -> Result<bool, StoreError> {
        if app.store.replica_alive(owner).await? {
            self.owners_absent.remove(owner);
            return Ok(false);
        }
        let now = app.clock.now();
        let since = *self.owners_absent.entry(owner.to_owned()).or_insert(now);
        Ok((now - since).unsigned_abs() >= owner_grace(app))
    }
}

#[async_trait]
impl BackgroundTask for Recovery {
    fn name(&self) -> &'static str {
        "recovery"
    }

    async fn activate(&mut self, app: &Arc<App>) -> Result<serde_json::Value, TaskError> {
        let stuck_after = app.config.provision_timeout + Duration::from_secs(60);
        let mut checked: HashMap<String, bool> = HashMap::new();
        let (mut abandoned_n, mut destroys, mut releases) = (0, 0, 0);
        for rec in all_in(app, VmState::Provisioning).await? {
            let abandoned = if rec.owner == app.replica_id {
                false
            } else if let Some(g) = checked.get(&rec.owner) {
                *g
            } else {
                let g = self.owner_gone(app, &rec.owner).await?;
                checked.insert(rec.owner.clone(), g);
                g
            };
            let stuck = (app.clock.now() - rec.created_at).unsigned_abs() > stuck_after;
            if abandoned || stuck {
                let why = if abandoned {
                    "interrupted: the control-plane replica provisioning it stopped"
                } else {
                    "provisioning did not finish in time"
                };
                tracing::warn!(vm_id = %rec.id, owner = %rec.owner, reason = why, "recovering an abandoned provision");
                abandon_provision(app, rec, why).await;
                abandoned_n += 1;
            }
        }
        // Forget replicas that no longer own any provision.
        self.owners_absent
            .retain(|owner, _| checked.contains_key(owner));
        for rec in all_in(app, VmState::Destroying).await? {
            if age(app, &rec) >= destroy_grace(app) {
                destroys += 1;
                if let Err(e) = app.env_finish_destroy(rec.clone()).await {
                    tracing::warn!(vm_id = %rec.id, error = %e, "recovery: finishing destroy");
                }
            }
        }
        for rec in all_in(app, VmState::Failed).await? {
            if rec.reserved.is_some() && age(app, &rec) >= destroy_grace(app) {
                if let Ok(p) = app.provider_of(&rec).await {
                    if p.vm_destroy(rec.id.as_str()).await.is_ok() {
                        releases += 1;
                        let change = Change::new(Event::HostConfirmedGone);
                        if let Err(e) = app.transition(&rec, change).await {
                            tracing::info!(vm_id = %rec.id, error = %e, "recovery: releasing");
                        }
                    }
                }
            }
        }
        Ok(serde_json::json!({
            "abandoned_provisions": abandoned_n,
            "destroys_finished": destroys,
            "failed_released": releases,
        }))
    }
}

async fn abandon_provision(app: &App, rec: VmRecord, why: &str) {
    let mut host_clean = rec.host_id.is_none();
    if rec.host_id.is_some() {
        if let Ok(p) = app.provider_of(&rec).await {
            host_clean = p.vm_destroy(rec.id.as_str()).await.is_ok();
        }
    }
    let change = Change::new(Event::Abandoned)
        .reason("recovery")
        .error(why)
        .gone_from_host(host_clean);
    if let Err(e) = app.transition(&rec, change).await {
        tracing::info!(vm_id = %rec.id, error = %e, "recovery: record changed meanwhile");
    }
}
