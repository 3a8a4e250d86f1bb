//! The one path every environment transition takes, from handlers, the reconciler, recovery
//! and the host monitor alike. [`App::transition`] looks the (state, event) row up in the
//! lifecycle table (`fuse_types::lifecycle`) and executes its effects in this order:
//!
//! 1. **redact** the event's error text (every secret value of the environment replaced),
//!    so nothing unredacted is ever written or sent;
//! 2. **persist** the record, generation-checked (a delete wins whatever the generation),
//!    **with its audit event and its capacity change in the same atomic store step** — a
//!    crash can never leave a state written without its audit entry, or a reservation
//!    returned twice or not at all;
//! 3. **publish** the SSE event (to every replica).
//!
//! An illegal event is a typed [`LifecycleError::Illegal`]; a write that lost a race with a
//! concurrent change is [`LifecycleError::Stale`]. Nothing else in the control plane writes
//! an environment's state, releases its capacity or publishes its events.

use super::{redact, App};
use fuse_scheduler::{NoPlacement, Policy};
use fuse_store::{AuditEvent, StoreError, VmCreated, VmPatch, VmRecord, VmSecrets};
use fuse_types::lifecycle::{self, Effect, Event, IllegalEvent};
use fuse_types::{HostId, SnapshotId, VmId, VmState};
use std::time::{Duration, Instant};

/// How long a transition marked [`Change::retrying`] waits for an unavailable store (a
/// database restart takes seconds) before it gives up and leaves the rest to recovery.
pub const STORE_RETRY: Duration = Duration::from_secs(30);

/// Why a transition did not happen.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// The event is not allowed in the environment's state.
    #[error("environment {id}: {source}")]
    Illegal {
        /// The environment.
        id: VmId,
        /// The refused row.
        #[source]
        source: IllegalEvent,
    },
    /// Someone else changed the record since it was read.
    #[error("environment {id} was changed concurrently; retry")]
    Stale {
        /// The environment.
        id: VmId,
    },
    /// The store failed.
    #[error(transparent)]
    Store(StoreError),
}

impl LifecycleError {
    /// A store failure during `event`: a lost race is `Stale`, a refusal by the store's
    /// own transition check (it saw a newer state) is `Illegal`.
    fn from_store(id: &VmId, event: Event, e: StoreError) -> Self {
        match e {
            StoreError::Stale { .. } => LifecycleError::Stale { id: id.clone() },
            StoreError::Transition { source, .. } => LifecycleError::Illegal {
                id: id.clone(),
                source: IllegalEvent {
                    from: Some(source.from),
                    event,
                },
            },
            other => LifecycleError::Store(other),
        }
    }
}

/// One event with what it carries.
#[derive(Debug, Clone)]
pub struct Change {
    event: Event,
    reason: String,
    error: Option<String>,
    url: Option<String>,
    secrets: Option<VmSecrets>,
    restored_from: Option<SnapshotId>,
    gone_from_host: bool,
    redact_also: Vec<String>,
    payload: serde_json::Value,
    retry: bool,
    extras: Option<fuse_store::VmExtras>,
    reserve: Option<(HostId, fuse_types::Resources)>,
}

impl Change {
    /// `event`, with its name as the reason.
    pub fn new(event: Event) -> Self {
        Change {
            event,
            reason: event.as_str().replace('_', " "),
            error: None,
            url: None,
            secrets: None,
            restored_from: None,
            gone_from_host: false,
            redact_also: Vec::new(),
            payload: serde_json::Value::Null,
            retry: false,
            extras: None,
            reserve: None,
        }
    }

    /// For a row that resizes the reservation: the VM holds `r` on `host` afterwards
    /// (checked against that host's capacity, in the step before the write).
    pub fn reserve(mut self, host: HostId, r: fuse_types::Resources) -> Self {
        self.reserve = Some((host, r));
        self
    }

    /// The environment's extras afterwards (ports, health).
    pub fn extras(mut self, x: fuse_store::VmExtras) -> Self {
        self.extras = Some(x);
        self
    }

    /// The reason recorded in the audit event.
    pub fn reason(mut self, r: impl Into<String>) -> Self {
        self.reason = r.into();
        self
    }

    /// The error text the event records (redacted before anything is written).
    pub fn error(mut self, e: impl Into<String>) -> Self {
        self.error = Some(e.into());
        self
    }

    /// The agent URL the environment gets.
    pub fn url(mut self, u: impl Into<String>) -> Self {
        self.url = Some(u.into());
        self
    }

    /// The per-VM secrets to keep.
    pub fn secrets(mut self, s: VmSecrets) -> Self {
        self.secrets = Some(s);
        self
    }

    /// The snapshot the VM now runs from.
    pub fn restored_from(mut self, s: SnapshotId) -> Self {
        self.restored_from = Some(s);
        self
    }

    /// Whether the host confirmed it holds nothing of the VM (lets a `ReleaseIfGone` row
    /// return the reservation).
    pub fn gone_from_host(mut self, gone: bool) -> Self {
        self.gone_from_host = gone;
        self
    }

    /// More secret values to redact (those of a provision not yet stored on the record).
    pub fn redacting(mut self, values: Vec<String>) -> Self {
        self.redact_also = values;
        self
    }

    /// Structured detail of an announcement's audit event.
    pub fn payload(mut self, p: serde_json::Value) -> Self {
        self.payload = p;
        self
    }

    /// Rides out an unavailable store for up to [`STORE_RETRY`] (work in flight that must
    /// not be abandoned by a database restart).
    pub fn retrying(mut self) -> Self {
        self.retry = true;
        self
    }
}

impl App {
    /// Writes a new environment and reserves its capacity on a host in one atomic step
    /// (the table's `create` row). When no host has room the record is failed in the same
    /// step (`no_room`) and the reasons are returned beside it. Publishes what was written.
    pub async fn lifecycle_create(
        &self,
        rec: VmRecord,
        policy: Policy,
        fallback: Option<&HostId>,
    ) -> Result<(VmCreated, Option<NoPlacement>), LifecycleError> {
        let id = rec.id.clone();
        lifecycle::step(None, Event::Create).map_err(|source| LifecycleError::Illegal {
            id: id.clone(),
            source,
        })?;
        let (created, no_room) = self
            .store
            .vm_create_placed(rec, policy, fallback)
            .await
            .map_err(|e| LifecycleError::from_store(&id, Event::Create, e))?;
        if let VmCreated::Created(r) = &created {
            self.events.publish(r);
        }
        Ok((created, no_room))
    }

    /// Executes `change` on the environment as read in `rec` (see the module docs). Returns
    /// the record as it is afterwards.
    pub async fn transition(
        &self,
        rec: &VmRecord,
        change: Change,
    ) -> Result<VmRecord, LifecycleError> {
        let row = lifecycle::step(Some(rec.state), change.event).map_err(|source| {
            LifecycleError::Illegal {
                id: rec.id.clone(),
                source,
            }
        })?;
        // 1. Redact (what is recorded, and what an announcement says).
        let error = match (&change.error, row.does(Effect::RecordError)) {
            (None, false) => None,
            (e, _) => {
                let mut secrets = rec
                    .secrets
                    .as_ref()
                    .map(VmSecrets::values)
                    .unwrap_or_default();
                secrets.extend(change.redact_also.iter().cloned());
                Some(redact(e.as_deref().unwrap_or(""), &secrets))
            }
        };
        if !row.persists() {
            return self.execute_unwritten(rec, row, change, error).await;
        }
        // 2. Persist, with audit and capacity in the same step.
        let patch = VmPatch {
            state: row.changes_state().then_some(row.to),
            url: change.url.clone(),
            error: match (&error, row.does(Effect::RecordError)) {
                (Some(e), true) => Some(Some(e.clone())),
                _ if row.does(Effect::ClearError) => Some(None),
                _ => None,
            },
            agent: None,
            restored_from: change.restored_from.clone().map(Some),
            secrets: if row.does(Effect::ForgetSecrets) {
                Some(None)
            } else {
                change.secrets.clone().map(Some)
            },
            release: row.does(Effect::Release)
                || (row.does(Effect::ReleaseIfGone) && change.gone_from_host),
            reason: Some(change.reason.clone()),
            audit: (!row.changes_state()).then(|| change.event.as_str().to_owned()),
            extras: change.extras.clone(),
        };
        // The reservation first: a resize that does not fit refuses the whole change.
        let mut rec = std::borrow::Cow::Borrowed(rec);
        if let (true, Some((host, r))) = (row.does(Effect::Resize), &change.reserve) {
            let same = rec.host_id.as_ref() == Some(host) && rec.reserved == Some(*r);
            if !same {
                let moved = self
                    .store
                    .vm_move_reservation(&rec.id, rec.generation, host, *r)
                    .await
                    .map_err(|e| LifecycleError::from_store(&rec.id, change.event, e))?;
                rec = std::borrow::Cow::Owned(moved);
            }
        }
        let rec = &*rec;
        let written = if change.event == Event::Destroy {
            self.write(rec, &change, || async {
                self.store.vm_begin_destroy(&rec.id).await.map(|(r, _)| r)
            })
            .await?
        } else {
            self.write(rec, &change, || {
                let patch = patch.clone();
                async move { self.store.vm_update(&rec.id, rec.generation, patch).await }
            })
            .await?
        };
        // 3. Publish.
        if row.does(Effect::Publish) && change.event == Event::HealthChanged {
            let mut ev =
                crate::events::EventHub::event_with_state(&written, written.state.as_str());
            ev.event = "health".into();
            ev.health = written.extras.health.clone();
            self.events.publish_event(ev);
        } else if row.does(Effect::Publish) {
            self.events.publish(&written);
        }
        if row.changes_state() {
            tracing::info!(vm_id = %rec.id, from = %rec.state, to = %row.to, event = %change.event,
                error = ?written.error, "environment {}", row.to);
        }
        Ok(written)
    }

    /// Rows that do not write the record: a release on its own, an announcement, a no-op.
    async fn execute_unwritten(
        &self,
        rec: &VmRecord,
        row: &lifecycle::Row,
        change: Change,
        error: Option<String>,
    ) -> Result<VmRecord, LifecycleError> {
        let fail = |e| LifecycleError::from_store(&rec.id, change.event, e);
        let mut out = rec.clone();
        if row.does(Effect::Release) {
            let released = self.store.vm_release(&rec.id).await.map_err(fail)?;
            if released {
                out.reserved = None;
            }
        }
        if row.does(Effect::Audit) {
            let mut payload = change.payload.clone();
            if let (Some(e), serde_json::Value::Object(m)) = (&error, &mut payload) {
                m.insert("error".into(), e.clone().into());
            }
            self.store
                .audit_append(AuditEvent {
                    entity_kind: "environment",
                    entity_id: rec.id.to_string(),
                    event_type: change.event.as_str().into(),
                    payload,
                })
                .await
                .map_err(fail)?;
        }
        if row.does(Effect::Publish) {
            let word = match change.event {
                Event::HostLost => "lost",
                Event::Idle => "idle",
                _ => rec.state.as_str(),
            };
            let mut ev = crate::events::EventHub::event_with_state(rec, word);
            // An announcement is news of now: stamped with the time it was made, so a stream
            // that already sent a later change of the record does not drop it as stale.
            ev.updated_at = fuse_types::now().max(rec.updated_at);
            if error.is_some() {
                ev.error = error;
            }
            self.events.publish_event(ev);
        }
        Ok(out)
    }

    /// Runs a store write; with [`Change::retrying`], again while the store is unavailable,
    /// and a retried write that finds the record already where this row leads (the first
    /// attempt landed but its reply was lost) counts as done.
    async fn write<F, Fut>(
        &self,
        rec: &VmRecord,
        change: &Change,
        mut call: F,
    ) -> Result<VmRecord, LifecycleError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<VmRecord, StoreError>>,
    {
        let fail = |e| LifecycleError::from_store(&rec.id, change.event, e);
        let deadline = Instant::now() + STORE_RETRY;
        let mut wait = Duration::from_millis(50);
        let mut attempts = 0;
        loop {
            attempts += 1;
            match call().await {
                Ok(r) => return Ok(r),
                Err(StoreError::Unavailable(m)) if change.retry && Instant::now() < deadline => {
                    tracing::debug!(vm_id = %rec.id, error = %m, "store unavailable; retrying the write");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
                Err(e @ StoreError::Stale { .. }) if attempts > 1 => {
                    let landed = matches!(
                        self.store.vm_get(&rec.id).await,
                        Ok(Some(ref cur)) if cur.generation == rec.generation + 1
                            && lifecycle::step(Some(rec.state), change.event)
                                .is_ok_and(|r| r.to == cur.state)
                    );
                    if landed {
                        return self
                            .store
                            .vm_get(&rec.id)
                            .await
                            .map_err(fail)?
                            .ok_or_else(|| LifecycleError::Stale { id: rec.id.clone() });
                    }
                    return Err(fail(e));
                }
                Err(e) => return Err(fail(e)),
            }
        }
    }

    /// Re-reads the environment and applies `change` again while concurrent writes keep
    /// changing it (at most a few times), for writers that hold no particular generation
    /// (the reconciler, recovery, destroy). Returns `None` when the environment is gone.
    pub async fn transition_latest(
        &self,
        id: &VmId,
        change: Change,
    ) -> Result<Option<VmRecord>, LifecycleError> {
        for _ in 0..5 {
            let Some(cur) = self
                .store
                .vm_get(id)
                .await
                .map_err(|e| LifecycleError::from_store(id, change.event, e))?
            else {
                return Ok(None);
            };
            match self.transition(&cur, change.clone()).await {
                Err(LifecycleError::Stale { .. }) => continue,
                r => return r.map(Some),
            }
        }
        Err(LifecycleError::Stale { id: id.clone() })
    }
}

/// Whether a record stands for a VM that should exist on its host.
pub fn expects_vm_on_host(rec: &VmRecord) -> bool {
    match rec.state {
        VmState::Provisioning
        | VmState::Running
        | VmState::Draining
        | VmState::Paused
        | VmState::Destroying => true,
        VmState::Failed => rec.reserved.is_some(),
        VmState::Destroyed => false,
    }
}
