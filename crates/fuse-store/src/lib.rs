//! The control plane's state: the [`StateStore`] trait, its storage rows, and its backends.
//!
//! Rules that must hold under concurrency are trait methods with a documented contract that
//! every backend implements atomically: placing a VM and reserving host capacity
//! ([`StateStore::vm_place`]), releasing that capacity exactly once
//! ([`StateStore::vm_release`]), generation-checked state transitions that append their
//! audit event in the same step ([`StateStore::vm_update`]), moving a reservation between
//! hosts ([`StateStore::vm_move_reservation`]), deleting a host only when it is empty,
//! deleting a snapshot only when it has no children and no template, and deleting a
//! template only while no live environment uses it. A host's snapshot artifacts count
//! against its storage in every placement ([`HostRecord::used`]). The conformance suite in
//! [`conformance`] runs against every backend.

pub mod conformance;
pub mod crypto;
mod memory;
mod pg;
mod records;

pub use memory::MemoryStore;
pub use pg::{
    redact_url, rotate_key, KeyCheck, KeyError, PgOptions, PgStore, RotateError, Rotated,
};
pub use records::*;

use async_trait::async_trait;
use fuse_scheduler::{NoPlacement, Policy};
use fuse_types::{HostId, HostState, Resources, SnapshotId, TransitionError, VmId, VmState};

/// Failures of store operations. Messages are safe to show to a client except `Internal`
/// and `Unavailable`, whose detail is for logs.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The named row does not exist.
    #[error("{kind} {id} not found")]
    NotFound {
        /// `environment`, `host` or `snapshot`.
        kind: &'static str,
        /// Its id.
        id: String,
    },
    /// Someone else changed the row since it was read.
    #[error(
        "environment {id} changed concurrently (expected generation {expected}, found {actual})"
    )]
    Stale {
        /// The row.
        id: String,
        /// The generation the caller read.
        expected: u64,
        /// The generation found.
        actual: u64,
    },
    /// The requested state change is not allowed by the lifecycle.
    #[error("environment {id}: {source}")]
    Transition {
        /// The row.
        id: String,
        /// The refused transition.
        source: TransitionError,
    },
    /// No host can take the VM.
    #[error(transparent)]
    NoCapacity(#[from] NoPlacement),
    /// The host still has live VMs.
    #[error("host {id} still has {vms} live environment(s)")]
    HostBusy {
        /// Host id.
        id: String,
        /// Live VMs on it.
        vms: u64,
    },
    /// The snapshot has children.
    #[error("snapshot {id} has {children} child snapshot(s); delete them first")]
    HasChildren {
        /// Snapshot id.
        id: String,
        /// Number of children.
        children: u64,
    },
    /// A row with this key already exists.
    #[error("{kind} {id} already exists")]
    Exists {
        /// `template`.
        kind: &'static str,
        /// Its key.
        id: String,
    },
    /// The row is still used by others and cannot be deleted.
    #[error("{kind} {id} is in use by {what}")]
    InUse {
        /// `template` or `snapshot`.
        kind: &'static str,
        /// Its key.
        id: String,
        /// Who uses it (`3 environment(s)`, `template base`).
        what: String,
    },
    /// The input is not acceptable (the message says why and is safe to show).
    #[error("{0}")]
    Invalid(String),
    /// The encryption key does not fit the stored data (not retryable: the process needs
    /// the right `TOKEN_ENCRYPTION_KEY`).
    #[error("encryption key check failed")]
    Key(#[from] KeyError),
    /// The backing database cannot be reached (retryable).
    #[error("state store unavailable: {0}")]
    Unavailable(String),
    /// A bug or corrupt data.
    #[error("state store internal error: {0}")]
    Internal(String),
}

/// What [`StateStore::vm_create`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum VmCreated {
    /// A new record was stored (possibly replacing a `destroyed` one with the same id).
    Created(VmRecord),
    /// A live or failed record with this id already exists; nothing was written.
    Exists(VmRecord),
}

/// The control plane's persistent state. Every method is atomic on its own.
#[async_trait]
pub trait StateStore: Send + Sync + 'static {
    /// A short name for logs and `/ready` (`memory`, `postgres`).
    fn kind(&self) -> &'static str;

    /// Makes the backend usable (applies migrations, checks the encryption key against the
    /// stored data); idempotent. Until it succeeds every other call may answer
    /// `Unavailable`. `Key` is permanent (retrying cannot help); other errors are worth
    /// retrying. Returns what it did, for the log.
    async fn prepare(&self) -> Result<String, StoreError>;

    /// Checks that the backend answers (for `/ready`).
    async fn ping(&self) -> Result<(), StoreError>;

    /// Inserts `rec` unless a record with its id exists. A `destroyed` record, or a `failed`
    /// one that was never placed on a host, is replaced (its task id is reused); any other
    /// existing record is returned untouched.
    /// The insert appends a `created` audit event.
    async fn vm_create(&self, rec: VmRecord) -> Result<VmCreated, StoreError>;

    /// [`StateStore::vm_create`] and, if it created, [`StateStore::vm_place`], as one step
    /// where the backend can. When no host has room the new record is stored as `failed`
    /// (with the reasons as its error) and the reasons are returned beside it.
    async fn vm_create_placed(
        &self,
        rec: VmRecord,
        policy: Policy,
        fallback: Option<&HostId>,
    ) -> Result<(VmCreated, Option<NoPlacement>), StoreError> {
        let created = match self.vm_create(rec).await? {
            VmCreated::Created(r) => r,
            exists => return Ok((exists, None)),
        };
        match self
            .vm_place(&created.id, created.generation, policy, fallback)
            .await
        {
            Ok(placed) => Ok((VmCreated::Created(placed), None)),
            Err(StoreError::NoCapacity(np)) => {
                let failed = self
                    .vm_update(
                        &created.id,
                        created.generation,
                        VmPatch::state(VmState::Failed, "placement").with_error(np.to_string()),
                    )
                    .await?;
                Ok((VmCreated::Created(failed), Some(np)))
            }
            Err(e) => Err(e),
        }
    }

    /// Reads one VM.
    async fn vm_get(&self, id: &VmId) -> Result<Option<VmRecord>, StoreError>;

    /// Lists VMs ordered by id, strictly after `after`, at most `limit`, matching `filter`.
    async fn vm_list(
        &self,
        filter: &VmFilter,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<VmRecord>, StoreError>;

    /// Counts VMs per stored state (for gauges).
    async fn vm_count_by_state(&self) -> Result<Vec<(VmState, u64)>, StoreError>;

    /// Applies `patch` if the record's generation is still `expected_generation` and the
    /// state change (if any) is legal. Bumps the generation and `updated_at`; a state change
    /// appends a `state` audit event `{from, to, reason}` in the same atomic step.
    async fn vm_update(
        &self,
        id: &VmId,
        expected_generation: u64,
        patch: VmPatch,
    ) -> Result<VmRecord, StoreError>;

    /// Records activity on a VM for its idle timeout: `extras.last_active_at` becomes `at`
    /// (never earlier than it was) and `extras.net_bytes` the counter when given. Not a
    /// state change: no generation bump, no audit event, so it never races a transition.
    async fn vm_note_activity(
        &self,
        id: &VmId,
        at: fuse_types::Timestamp,
        net_bytes: Option<u64>,
    ) -> Result<(), StoreError>;

    /// Moves a VM to `destroying` from whatever state it is in (no generation needed: a
    /// delete wins over everything). Returns the record and whether this call changed it; a
    /// VM already `destroying` or `destroyed` is returned unchanged.
    async fn vm_begin_destroy(&self, id: &VmId) -> Result<(VmRecord, bool), StoreError> {
        begin_destroy_by_generation(self, id).await
    }

    /// Chooses a host for a `provisioning` VM that has none and reserves the VM's resources
    /// on it, atomically: concurrent calls (from any replica) never over-commit a host.
    /// `NoCapacity` carries why nothing fits (with `hosts == 0` when none is registered).
    /// When no host is registered at all and `fallback` is given, the VM is assigned to
    /// that pseudo-host without a reservation.
    async fn vm_place(
        &self,
        id: &VmId,
        expected_generation: u64,
        policy: Policy,
        fallback: Option<&HostId>,
    ) -> Result<VmRecord, StoreError>;

    /// Returns the VM's reserved resources to its host exactly once: the first call
    /// subtracts them (never below zero) and clears the reservation; later calls are no-ops
    /// returning `false`.
    async fn vm_release(&self, id: &VmId) -> Result<bool, StoreError>;

    /// Moves the VM's reservation, atomically against every other reservation, release
    /// and move (from any replica): its current reservation (if any) goes back to its
    /// current host, `reserved` is reserved on `host`, and the record gets `host_id = host`
    /// and `reserved = Some(reserved)`, with its generation bumped (checked against
    /// `expected_generation` as in [`StateStore::vm_update`]) and a `moved` audit event.
    /// `reserved` must fit in the host's free capacity (capacity minus reservations minus
    /// its snapshot artifacts, the VM's own current reservation there not counted), and
    /// `host` must be `active` unless it is the VM's current host; otherwise the answer is
    /// `NoCapacity` with the reasons and nothing changes. Pause (same host, storage only),
    /// resume (back to full, possibly elsewhere) and migration (the target) use it.
    async fn vm_move_reservation(
        &self,
        id: &VmId,
        expected_generation: u64,
        host: &HostId,
        reserved: Resources,
    ) -> Result<VmRecord, StoreError>;

    /// Removes terminal VM records last updated before `before`; returns how many.
    async fn vm_purge_terminal(&self, before: fuse_types::Timestamp) -> Result<u64, StoreError>;

    /// Registers a host or updates its url, token, region and capacity. `allocated`,
    /// `state` and `created_at` of an existing host are kept. Returns the row and whether
    /// it was created.
    async fn host_upsert(&self, host: HostUpsert) -> Result<(HostRecord, bool), StoreError>;

    /// Reads one host.
    async fn host_get(&self, id: &HostId) -> Result<Option<HostRecord>, StoreError>;

    /// Lists every host ordered by id.
    async fn host_list(&self) -> Result<Vec<HostRecord>, StoreError>;

    /// Sets a host's state (and the reason shown with it), appending an audit event.
    async fn host_set_state(
        &self,
        id: &HostId,
        state: HostState,
        reason: Option<String>,
    ) -> Result<HostRecord, StoreError>;

    /// Sets the host's `allocated` to the sum of the reservations its environments hold,
    /// atomically with respect to every reservation and release (they all change the host
    /// row, which this locks). Returns `(was, now)` when they differed (an audit event
    /// `allocation_repaired` is written), `None` when the books were right.
    async fn host_repair_allocation(
        &self,
        id: &HostId,
    ) -> Result<Option<(Resources, Resources)>, StoreError>;

    /// Records that the host answered now; optionally refreshes its capacity.
    async fn host_seen(
        &self,
        id: &HostId,
        capacity: Option<Resources>,
    ) -> Result<HostRecord, StoreError>;

    /// Deletes a host, refused with `HostBusy` while any non-destroyed VM is placed on it.
    async fn host_delete(&self, id: &HostId) -> Result<(), StoreError>;

    /// Inserts a snapshot record.
    async fn snapshot_insert(&self, snap: SnapshotRecord) -> Result<(), StoreError>;

    /// Reads one snapshot.
    async fn snapshot_get(&self, id: &SnapshotId) -> Result<Option<SnapshotRecord>, StoreError>;

    /// Lists snapshots matching `filter`, newest first.
    async fn snapshot_list(
        &self,
        filter: &SnapshotFilter,
    ) -> Result<Vec<SnapshotRecord>, StoreError>;

    /// Updates state, size and error of a snapshot.
    async fn snapshot_update(
        &self,
        id: &SnapshotId,
        patch: SnapshotPatch,
    ) -> Result<SnapshotRecord, StoreError>;

    /// Moves a snapshot to `deleting`, refused with `HasChildren` while any snapshot names
    /// it as parent and with `InUse` while a template starts from it. Returns the record as
    /// it was before.
    async fn snapshot_begin_delete(&self, id: &SnapshotId) -> Result<SnapshotRecord, StoreError>;

    /// Removes a snapshot record (after the host deleted its files).
    async fn snapshot_remove(&self, id: &SnapshotId) -> Result<(), StoreError>;

    /// Stores a new template. `Invalid` for a bad name, `Exists` when the name is taken,
    /// `NotFound` when its snapshot does not exist.
    async fn template_insert(&self, t: TemplateRecord) -> Result<TemplateRecord, StoreError>;

    /// Reads one template.
    async fn template_get(&self, name: &str) -> Result<Option<TemplateRecord>, StoreError>;

    /// Every template, by name.
    async fn template_list(&self) -> Result<Vec<TemplateRecord>, StoreError>;

    /// Sets how many warm VMs to keep per host; `NotFound` if there is no such template.
    async fn template_update_pool(
        &self,
        name: &str,
        per_host: u32,
    ) -> Result<TemplateRecord, StoreError>;

    /// Deletes a template, refused with `InUse` while any environment that is not
    /// `destroyed` or `failed` names it in `extras.template`; `NotFound` if there is none.
    async fn template_delete(&self, name: &str) -> Result<(), StoreError>;

    /// Stores a new API key (its id and hash are unique).
    async fn api_key_create(&self, key: ApiKeyRecord) -> Result<(), StoreError>;

    /// Every API key, revoked ones included, oldest first.
    async fn api_key_list(&self) -> Result<Vec<ApiKeyRecord>, StoreError>;

    /// The key whose raw value hashes to `hash`, revoked or not.
    async fn api_key_by_hash(&self, hash: &[u8; 32]) -> Result<Option<ApiKeyRecord>, StoreError>;

    /// Revokes a key (a second revoke keeps the first time); `NotFound` if unknown.
    async fn api_key_revoke(&self, id: &str) -> Result<ApiKeyRecord, StoreError>;

    /// Records that the key authenticated a request at `at`.
    async fn api_key_touch(&self, id: &str, at: fuse_types::Timestamp) -> Result<(), StoreError>;

    /// Appends an audit event.
    async fn audit_append(&self, ev: AuditEvent) -> Result<(), StoreError>;

    /// The audit events of one entity, oldest first.
    async fn audit_list(&self, entity_id: &str) -> Result<Vec<AuditRecord>, StoreError>;

    /// Records one more failed attempt at `kind`/`entity_id` and returns the count so far.
    async fn dead_letter_fail(
        &self,
        kind: &str,
        entity_id: &str,
        error: &str,
    ) -> Result<u32, StoreError>;

    /// Forgets the failures of `kind`/`entity_id` (the work succeeded or is moot).
    async fn dead_letter_clear(&self, kind: &str, entity_id: &str) -> Result<(), StoreError>;

    /// Every recorded failure, oldest first.
    async fn dead_letter_list(&self) -> Result<Vec<DeadLetter>, StoreError>;

    /// Registers this process as a live replica. Other replicas see it alive (through
    /// [`StateStore::replica_alive`]) until the process dies or loses the database.
    async fn replica_register(&self, replica_id: &str) -> Result<(), StoreError>;

    /// Whether a replica is alive; `false` means its in-flight work is abandoned.
    async fn replica_alive(&self, replica_id: &str) -> Result<bool, StoreError>;

    /// Tries to become (or stay) the one leader among replicas; leader-only background
    /// loops run only while this returns `true`. Leadership ends when the process dies.
    async fn leader_acquire(&self) -> Result<bool, StoreError>;

    /// Sends event payloads, in order, to every replica's [`StateStore::listen`] stream.
    async fn notify(&self, payloads: &[String]) -> Result<(), StoreError>;

    /// Payloads sent by [`StateStore::notify`] from any replica, or `None` when the store
    /// is private to this process (nothing to listen to).
    async fn listen(&self) -> Result<Option<tokio::sync::mpsc::Receiver<String>>, StoreError>;
}

/// The scheduler's request for a VM of `spec` needing `need`.
pub fn request_for(spec: &fuse_types::Spec, need: Resources) -> fuse_scheduler::Request<'_> {
    fuse_scheduler::Request {
        need,
        region: &spec.region,
        arch: &spec.arch,
        labels: &spec.labels,
        host_id: &spec.host_id,
    }
}

/// The refusal to delete a snapshot a template starts from.
pub(crate) fn snapshot_in_use(id: &SnapshotId, template: &str) -> StoreError {
    StoreError::InUse {
        kind: "snapshot",
        id: id.to_string(),
        what: format!("template {template}"),
    }
}

/// Whether `reserved` may move onto `host` (shared by the backends): the host must be
/// `active` unless it is the VM's current host, and `reserved` must fit in what is free
/// there, not counting `own`, the VM's current reservation if it is on that host.
pub(crate) fn move_fits(
    host: &HostRecord,
    own: Option<Resources>,
    reserved: Resources,
) -> Result<(), NoPlacement> {
    let mut view = host.view();
    if let Some(o) = own {
        // The VM's own host takes it back whatever its state (a paused VM on a cordoned
        // host resumes where it is).
        view.state = HostState::Active;
        view.allocated = view.allocated.minus(o);
    }
    let req = fuse_scheduler::Request::any(reserved);
    fuse_scheduler::place(&[view], &req, Policy::Spread).map(|_| ())
}

/// The refusal to delete a template live environments use.
pub(crate) fn template_in_use(name: &str, users: u64) -> StoreError {
    StoreError::InUse {
        kind: "template",
        id: name.to_owned(),
        what: format!("{users} environment(s)"),
    }
}

/// The audit event of a template change (shared by the backends).
pub(crate) fn template_event(name: &str, event_type: &str, t: &TemplateRecord) -> AuditEvent {
    AuditEvent {
        entity_kind: "template",
        entity_id: name.to_owned(),
        event_type: event_type.to_owned(),
        payload: serde_json::json!({
            "snapshot_id": t.snapshot_id.as_str(),
            "host_id": t.host_id.as_str(),
            "pool_per_host": t.pool_per_host,
        }),
    }
}

/// The audit event of a moved reservation (shared by the backends).
pub(crate) fn move_event(
    id: &VmId,
    from: Option<&HostId>,
    to: &HostId,
    reserved: Resources,
) -> AuditEvent {
    AuditEvent {
        entity_kind: "environment",
        entity_id: id.to_string(),
        event_type: "moved".into(),
        payload: serde_json::json!({
            "from_host": from.map(HostId::as_str),
            "to_host": to.as_str(),
            "reserved": reserved,
        }),
    }
}

/// `destroying` through generation-checked updates (retried on a concurrent change); the
/// default of [`StateStore::vm_begin_destroy`] and the Postgres backend's slow path.
pub(crate) async fn begin_destroy_by_generation<S: StateStore + ?Sized>(
    store: &S,
    id: &VmId,
) -> Result<(VmRecord, bool), StoreError> {
    loop {
        let rec = store
            .vm_get(id)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                kind: "environment",
                id: id.to_string(),
            })?;
        if matches!(rec.state, VmState::Destroying | VmState::Destroyed) {
            return Ok((rec, false));
        }
        let patch = VmPatch::state(VmState::Destroying, "delete requested");
        match store.vm_update(id, rec.generation, patch).await {
            Ok(r) => return Ok((r, true)),
            Err(StoreError::Stale { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
}
