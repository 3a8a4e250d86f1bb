//! The in-memory backend: one mutex over plain maps. Every trait method takes the lock once,
//! so each is atomic exactly as the contract requires. Nothing survives a restart; the audit
//! log keeps the newest [`MemoryStore::AUDIT_CAP`] events. A host's `artifact_bytes` is
//! computed from the snapshots on every read, as the Postgres backend does.

mod templates;

use crate::{
    AuditEvent, AuditRecord, DeadLetter, HostRecord, HostUpsert, SnapshotFilter, SnapshotPatch,
    SnapshotRecord, StateStore, StoreError, TemplateRecord, VmCreated, VmFilter, VmPatch, VmRecord,
};
use async_trait::async_trait;
use fuse_scheduler::{HostView, Policy};
use fuse_types::{
    now, HostId, HostState, Resources, SnapshotId, SnapshotState, Timestamp, VmId, VmState,
};
use parking_lot::Mutex;
use std::collections::{BTreeMap, VecDeque};

/// In-memory [`StateStore`].
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    vms: BTreeMap<String, VmRecord>,
    hosts: BTreeMap<String, HostRecord>,
    snapshots: BTreeMap<String, SnapshotRecord>,
    audit: VecDeque<AuditRecord>,
    audit_seq: u64,
    replicas: std::collections::HashSet<String>,
    dead_letters: BTreeMap<(String, String), DeadLetter>,
    api_keys: Vec<crate::ApiKeyRecord>,
    templates: BTreeMap<String, TemplateRecord>,
}

impl MemoryStore {
    /// How many audit events are kept.
    pub const AUDIT_CAP: usize = 200_000;

    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Inner {
    /// Bytes of the snapshots that hold storage on `host`.
    fn artifact_bytes(&self, host: &HostId) -> u64 {
        self.snapshots
            .values()
            .filter(|s| s.host_id.as_ref() == Some(host) && crate::snapshot_holds_storage(s.state))
            .map(|s| s.size_bytes)
            .fold(0, u64::saturating_add)
    }

    /// A host as it is answered: with its artifact bytes.
    fn host_out(&self, h: &HostRecord) -> HostRecord {
        HostRecord {
            artifact_bytes: self.artifact_bytes(&h.id),
            ..h.clone()
        }
    }

    /// Every host as placement sees it.
    fn hosts_out(&self) -> Vec<HostRecord> {
        self.hosts.values().map(|h| self.host_out(h)).collect()
    }

    fn audit(&mut self, ev: AuditEvent) {
        self.audit_seq += 1;
        if self.audit.len() >= MemoryStore::AUDIT_CAP {
            self.audit.pop_front();
        }
        self.audit.push_back(AuditRecord {
            seq: self.audit_seq,
            entity_kind: ev.entity_kind.to_owned(),
            entity_id: ev.entity_id,
            event_type: ev.event_type,
            payload: ev.payload,
            at: now(),
        });
    }

    fn vm_mut(&mut self, id: &VmId, expected: u64) -> Result<&mut VmRecord, StoreError> {
        let rec = self
            .vms
            .get_mut(id.as_str())
            .ok_or_else(|| StoreError::NotFound {
                kind: "environment",
                id: id.to_string(),
            })?;
        if rec.generation != expected {
            return Err(StoreError::Stale {
                id: id.to_string(),
                expected,
                actual: rec.generation,
            });
        }
        Ok(rec)
    }
}

fn host_not_found(id: &HostId) -> StoreError {
    StoreError::NotFound {
        kind: "host",
        id: id.to_string(),
    }
}

fn snapshot_not_found(id: &SnapshotId) -> StoreError {
    StoreError::NotFound {
        kind: "snapshot",
        id: id.to_string(),
    }
}

/// Whether a new create may replace this record (shared with the Postgres backend).
pub(crate) fn replaceable(r: &VmRecord) -> bool {
    r.state == VmState::Destroyed || (r.state == VmState::Failed && r.host_id.is_none())
}

/// The audit event of a released reservation (shared with the Postgres backend).
pub(crate) fn release_event(id: &VmId, res: Resources) -> AuditEvent {
    AuditEvent {
        entity_kind: "environment",
        entity_id: id.to_string(),
        event_type: "released".into(),
        payload: serde_json::json!({"cpus": res.cpus, "ram_mb": res.ram_mb, "storage_gb": res.storage_gb}),
    }
}

/// The audit event of an allocation repair (shared with the Postgres backend).
pub(crate) fn repair_event(id: &HostId, was: Resources, now: Resources) -> AuditEvent {
    AuditEvent {
        entity_kind: "host",
        entity_id: id.to_string(),
        event_type: "allocation_repaired".into(),
        payload: serde_json::json!({"was": was, "now": now}),
    }
}

/// The audit event a state transition appends (shared with the Postgres backend).
pub(crate) fn transition_event(
    id: &VmId,
    from: VmState,
    to: VmState,
    reason: Option<&str>,
) -> AuditEvent {
    AuditEvent {
        entity_kind: "environment",
        entity_id: id.to_string(),
        event_type: "state".into(),
        payload: serde_json::json!({"from": from.as_str(), "to": to.as_str(), "reason": reason}),
    }
}

/// The audit event of a write that keeps the state.
pub(crate) fn write_event(id: &VmId, event_type: &str, reason: Option<&str>) -> AuditEvent {
    AuditEvent {
        entity_kind: "environment",
        entity_id: id.to_string(),
        event_type: event_type.to_owned(),
        payload: serde_json::json!({"reason": reason}),
    }
}

/// Applies a snapshot patch in place (shared with the Postgres backend).
pub(crate) fn apply_snapshot_patch(s: &mut SnapshotRecord, patch: SnapshotPatch, at: Timestamp) {
    if let Some(st) = patch.state {
        s.state = st;
    }
    if let Some(b) = patch.size_bytes {
        s.size_bytes = b;
    }
    if let Some(h) = patch.host_snapshot_id {
        s.host_snapshot_id = h;
    }
    if let Some(e) = patch.last_error {
        s.last_error = e;
    }
    if let Some(m) = patch.mode {
        s.mode = m;
    }
    if let Some(k) = patch.kind {
        s.kind = k;
    }
    if let Some(d) = patch.digest {
        s.digest = d;
    }
    s.updated_at = at;
}

/// Applies a patch to a record in place (shared by backends that hold rows in memory).
pub(crate) fn apply_patch(rec: &mut VmRecord, patch: &VmPatch, at: Timestamp) {
    if let Some(s) = patch.state {
        if s == VmState::Running && rec.state != VmState::Running {
            rec.running_since = Some(at);
        }
        rec.state = s;
    }
    if let Some(u) = &patch.url {
        rec.url.clone_from(u);
    }
    if let Some(e) = &patch.error {
        rec.error.clone_from(e);
    }
    if let Some(a) = &patch.agent {
        rec.agent = a.clone();
    }
    if let Some(r) = &patch.restored_from {
        rec.restored_from.clone_from(r);
    }
    if let Some(sec) = &patch.secrets {
        rec.secrets.clone_from(sec);
    }
    if let Some(x) = &patch.extras {
        rec.extras = x.clone();
    }
    rec.generation += 1;
    rec.updated_at = at;
}

#[async_trait]
impl StateStore for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn prepare(&self) -> Result<String, StoreError> {
        Ok("in-memory store ready".into())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn vm_create(&self, rec: VmRecord) -> Result<VmCreated, StoreError> {
        let mut g = self.inner.lock();
        let mut rec = rec;
        if let Some(existing) = g.vms.get(rec.id.as_str()) {
            if !replaceable(existing) {
                return Ok(VmCreated::Exists(existing.clone()));
            }
            // A new incarnation continues the generation sequence, so writers holding the
            // old one's generation can never match the new row.
            rec.generation = existing.generation + 1;
        }
        g.audit(AuditEvent {
            entity_kind: "environment",
            entity_id: rec.id.to_string(),
            event_type: "created".into(),
            payload: serde_json::json!({"state": rec.state.as_str(), "task_id": rec.task_id.as_str()}),
        });
        g.vms.insert(rec.id.to_string(), rec.clone());
        Ok(VmCreated::Created(rec))
    }

    async fn vm_get(&self, id: &VmId) -> Result<Option<VmRecord>, StoreError> {
        Ok(self.inner.lock().vms.get(id.as_str()).cloned())
    }

    async fn vm_list(
        &self,
        filter: &VmFilter,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<VmRecord>, StoreError> {
        let g = self.inner.lock();
        let range = match after {
            Some(a) => g
                .vms
                .range::<str, _>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)),
            None => g.vms.range::<str, _>(..),
        };
        Ok(range
            .map(|(_, v)| v)
            .filter(|v| filter.matches(v))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn vm_count_by_state(&self) -> Result<Vec<(VmState, u64)>, StoreError> {
        let g = self.inner.lock();
        let mut counts = [0u64; VmState::ALL.len()];
        for v in g.vms.values() {
            if let Some(i) = VmState::ALL.iter().position(|s| *s == v.state) {
                counts[i] += 1;
            }
        }
        Ok(VmState::ALL.into_iter().zip(counts).collect())
    }

    async fn vm_update(
        &self,
        id: &VmId,
        expected_generation: u64,
        patch: VmPatch,
    ) -> Result<VmRecord, StoreError> {
        let mut g = self.inner.lock();
        let rec = g.vm_mut(id, expected_generation)?;
        let from = rec.state;
        if let Some(to) = patch.state {
            from.check_transition(to)
                .map_err(|source| StoreError::Transition {
                    id: id.to_string(),
                    source,
                })?;
        }
        apply_patch(rec, &patch, now());
        let released = if patch.release {
            rec.reserved.take()
        } else {
            None
        };
        let host = rec.host_id.clone();
        let out = rec.clone();
        if let Some(to) = patch.state {
            g.audit(transition_event(id, from, to, patch.reason.as_deref()));
        } else if let Some(t) = &patch.audit {
            g.audit(write_event(id, t, patch.reason.as_deref()));
        }
        if let Some(res) = released {
            if let Some(h) = host.and_then(|h| g.hosts.get_mut(h.as_str())) {
                h.allocated = h.allocated.minus(res);
                h.updated_at = now();
            }
            g.audit(release_event(id, res));
        }
        Ok(out)
    }

    async fn vm_place(
        &self,
        id: &VmId,
        expected_generation: u64,
        policy: Policy,
        fallback: Option<&HostId>,
    ) -> Result<VmRecord, StoreError> {
        let mut guard = self.inner.lock();
        let g = &mut *guard;
        let rec = g.vm_mut(id, expected_generation)?;
        if rec.state != VmState::Provisioning || rec.host_id.is_some() {
            return Err(StoreError::Internal(format!(
                "vm_place on {id} in state {} with host {:?}",
                rec.state, rec.host_id
            )));
        }
        let need = Resources::for_spec(&rec.spec);
        let spec = rec.spec.clone();
        if let (true, Some(fb)) = (g.hosts.is_empty(), fallback) {
            let rec = g.vm_mut(id, expected_generation)?;
            rec.host_id = Some(fb.clone());
            rec.generation += 1;
            rec.updated_at = now();
            return Ok(rec.clone());
        }
        let hosts = g.hosts_out();
        let views: Vec<HostView> = hosts.iter().map(HostRecord::view).collect();
        let chosen =
            fuse_scheduler::place(&views, &crate::request_for(&spec, need), policy)?.to_owned();
        let at = now();
        let host = g
            .hosts
            .get_mut(&chosen)
            .ok_or_else(|| StoreError::Internal("chosen host vanished".into()))?;
        host.allocated = host.allocated.plus(need);
        host.updated_at = at;
        let host_id = host.id.clone();
        let rec = g.vm_mut(id, expected_generation)?;
        rec.host_id = Some(host_id.clone());
        rec.reserved = Some(need);
        rec.generation += 1;
        rec.updated_at = at;
        let out = rec.clone();
        g.audit(AuditEvent {
            entity_kind: "environment",
            entity_id: id.to_string(),
            event_type: "placed".into(),
            payload: serde_json::json!({"host_id": host_id.as_str(), "policy": policy.to_string()}),
        });
        Ok(out)
    }

    async fn vm_release(&self, id: &VmId) -> Result<bool, StoreError> {
        let mut guard = self.inner.lock();
        let g = &mut *guard;
        let Some(rec) = g.vms.get_mut(id.as_str()) else {
            return Ok(false);
        };
        let Some(res) = rec.reserved.take() else {
            return Ok(false);
        };
        rec.generation += 1;
        let host_id = rec.host_id.clone();
        if let Some(h) = host_id.and_then(|h| g.hosts.get_mut(h.as_str())) {
            h.allocated = h.allocated.minus(res);
            h.updated_at = now();
        }
        g.audit(release_event(id, res));
        Ok(true)
    }

    async fn vm_purge_terminal(&self, before: Timestamp) -> Result<u64, StoreError> {
        let mut g = self.inner.lock();
        let n = g.vms.len();
        g.vms.retain(|_, v| {
            !(v.state == VmState::Destroyed && v.reserved.is_none() && v.updated_at < before)
        });
        Ok((n - g.vms.len()) as u64)
    }

    async fn host_upsert(&self, up: HostUpsert) -> Result<(HostRecord, bool), StoreError> {
        let mut g = self.inner.lock();
        let at = now();
        let created;
        let rec = match g.hosts.get_mut(up.id.as_str()) {
            Some(h) => {
                h.url = up.url;
                h.token = up.token;
                h.region = up.region;
                h.backend = up.backend;
                h.arch = up.arch;
                h.labels = up.labels;
                h.declared = up.declared;
                h.capacity = up.capacity;
                if up.seen {
                    h.last_seen = Some(at);
                }
                h.updated_at = at;
                created = false;
                h.clone()
            }
            None => {
                let h = HostRecord {
                    id: up.id.clone(),
                    url: up.url,
                    token: up.token,
                    region: up.region,
                    backend: up.backend,
                    arch: up.arch,
                    labels: up.labels,
                    declared: up.declared,
                    state: up.initial_state,
                    state_reason: up.initial_reason,
                    capacity: up.capacity,
                    allocated: Resources::default(),
                    artifact_bytes: 0,
                    last_seen: up.seen.then_some(at),
                    created_at: at,
                    updated_at: at,
                };
                g.hosts.insert(up.id.to_string(), h.clone());
                created = true;
                h
            }
        };
        g.audit(AuditEvent {
            entity_kind: "host",
            entity_id: rec.id.to_string(),
            event_type: if created { "registered" } else { "updated" }.into(),
            payload: serde_json::json!({"url": rec.url, "region": rec.region, "state": rec.state.as_str()}),
        });
        let rec = g.host_out(&rec);
        Ok((rec, created))
    }

    async fn host_get(&self, id: &HostId) -> Result<Option<HostRecord>, StoreError> {
        let g = self.inner.lock();
        Ok(g.hosts.get(id.as_str()).map(|h| g.host_out(h)))
    }

    async fn host_list(&self) -> Result<Vec<HostRecord>, StoreError> {
        Ok(self.inner.lock().hosts_out())
    }

    async fn host_set_state(
        &self,
        id: &HostId,
        state: HostState,
        reason: Option<String>,
    ) -> Result<HostRecord, StoreError> {
        let mut g = self.inner.lock();
        let h = g
            .hosts
            .get_mut(id.as_str())
            .ok_or_else(|| host_not_found(id))?;
        let from = h.state;
        h.state = state;
        h.state_reason.clone_from(&reason);
        h.updated_at = now();
        let out = h.clone();
        let out = g.host_out(&out);
        if from != state {
            g.audit(AuditEvent {
                entity_kind: "host",
                entity_id: id.to_string(),
                event_type: "state".into(),
                payload: serde_json::json!({"from": from.as_str(), "to": state.as_str(), "reason": reason}),
            });
        }
        Ok(out)
    }

    async fn host_repair_allocation(
        &self,
        id: &HostId,
    ) -> Result<Option<(Resources, Resources)>, StoreError> {
        let mut guard = self.inner.lock();
        let g = &mut *guard;
        let sum = g
            .vms
            .values()
            .filter(|v| v.host_id.as_ref() == Some(id))
            .filter_map(|v| v.reserved)
            .fold(Resources::default(), Resources::plus);
        let h = g
            .hosts
            .get_mut(id.as_str())
            .ok_or_else(|| host_not_found(id))?;
        if h.allocated == sum {
            return Ok(None);
        }
        let was = h.allocated;
        h.allocated = sum;
        h.updated_at = now();
        g.audit(repair_event(id, was, sum));
        Ok(Some((was, sum)))
    }

    async fn host_seen(
        &self,
        id: &HostId,
        capacity: Option<Resources>,
    ) -> Result<HostRecord, StoreError> {
        let mut g = self.inner.lock();
        let h = g
            .hosts
            .get_mut(id.as_str())
            .ok_or_else(|| host_not_found(id))?;
        let at = now();
        h.last_seen = Some(at);
        if let Some(c) = capacity {
            h.capacity = c;
        }
        h.updated_at = at;
        let out = h.clone();
        Ok(g.host_out(&out))
    }

    async fn host_delete(&self, id: &HostId) -> Result<(), StoreError> {
        let mut g = self.inner.lock();
        if !g.hosts.contains_key(id.as_str()) {
            return Err(host_not_found(id));
        }
        let live = g
            .vms
            .values()
            .filter(|v| {
                v.host_id.as_ref() == Some(id)
                    && (v.reserved.is_some()
                        || !matches!(v.state, VmState::Destroyed | VmState::Failed))
            })
            .count() as u64;
        if live > 0 {
            return Err(StoreError::HostBusy {
                id: id.to_string(),
                vms: live,
            });
        }
        g.hosts.remove(id.as_str());
        g.audit(AuditEvent {
            entity_kind: "host",
            entity_id: id.to_string(),
            event_type: "deleted".into(),
            payload: serde_json::json!({}),
        });
        Ok(())
    }

    async fn vm_note_activity(
        &self,
        id: &VmId,
        at: Timestamp,
        net_bytes: Option<u64>,
    ) -> Result<(), StoreError> {
        let mut g = self.inner.lock();
        if let Some(v) = g.vms.get_mut(id.as_str()) {
            let x = &mut v.extras;
            x.last_active_at = Some(x.last_active_at.map_or(at, |t| t.max(at)));
            if net_bytes.is_some() {
                x.net_bytes = net_bytes;
            }
        }
        Ok(())
    }

    async fn vm_move_reservation(
        &self,
        id: &VmId,
        expected_generation: u64,
        host: &HostId,
        reserved: Resources,
    ) -> Result<VmRecord, StoreError> {
        self.inner
            .lock()
            .move_reservation(id, expected_generation, host, reserved)
    }

    async fn template_insert(&self, t: TemplateRecord) -> Result<TemplateRecord, StoreError> {
        self.inner.lock().template_insert(t)
    }

    async fn template_get(&self, name: &str) -> Result<Option<TemplateRecord>, StoreError> {
        Ok(self.inner.lock().templates.get(name).cloned())
    }

    async fn template_list(&self) -> Result<Vec<TemplateRecord>, StoreError> {
        Ok(self.inner.lock().templates.values().cloned().collect())
    }

    async fn template_update_pool(
        &self,
        name: &str,
        per_host: u32,
    ) -> Result<TemplateRecord, StoreError> {
        self.inner.lock().template_update_pool(name, per_host)
    }

    async fn template_delete(&self, name: &str) -> Result<(), StoreError> {
        self.inner.lock().template_delete(name)
    }

    async fn api_key_create(&self, key: crate::ApiKeyRecord) -> Result<(), StoreError> {
        let mut g = self.inner.lock();
        if g.api_keys
            .iter()
            .any(|k| k.id == key.id || k.hash == key.hash)
        {
            return Err(StoreError::Internal(format!("api key {} exists", key.id)));
        }
        g.audit(AuditEvent {
            entity_kind: "api_key",
            entity_id: key.id.clone(),
            event_type: "created".into(),
            payload: serde_json::json!({"label": key.label}),
        });
        g.api_keys.push(key);
        Ok(())
    }

    async fn api_key_list(&self) -> Result<Vec<crate::ApiKeyRecord>, StoreError> {
        Ok(self.inner.lock().api_keys.clone())
    }

    async fn api_key_by_hash(
        &self,
        hash: &[u8; 32],
    ) -> Result<Option<crate::ApiKeyRecord>, StoreError> {
        Ok(self
            .inner
            .lock()
            .api_keys
            .iter()
            .find(|k| &k.hash == hash)
            .cloned())
    }

    async fn api_key_revoke(&self, id: &str) -> Result<crate::ApiKeyRecord, StoreError> {
        let mut g = self.inner.lock();
        let k = g
            .api_keys
            .iter_mut()
            .find(|k| k.id == id)
            .ok_or_else(|| StoreError::NotFound {
                kind: "api key",
                id: id.to_owned(),
            })?;
        let first = k.revoked_at.is_none();
        k.revoked_at.get_or_insert_with(now);
        let out = k.clone();
        if first {
            g.audit(AuditEvent {
                entity_kind: "api_key",
                entity_id: id.to_owned(),
                event_type: "revoked".into(),
                payload: serde_json::json!({}),
            });
        }
        Ok(out)
    }

    async fn api_key_touch(&self, id: &str, at: Timestamp) -> Result<(), StoreError> {
        if let Some(k) = self.inner.lock().api_keys.iter_mut().find(|k| k.id == id) {
            k.last_used_at = Some(at);
        }
        Ok(())
    }

    async fn snapshot_insert(&self, snap: SnapshotRecord) -> Result<(), StoreError> {
        let mut g = self.inner.lock();
        g.audit(AuditEvent {
            entity_kind: "snapshot",
            entity_id: snap.id.to_string(),
            event_type: "created".into(),
            payload: serde_json::json!({"vm_id": snap.vm_id.as_str(), "mode": snap.mode}),
        });
        g.snapshots.insert(snap.id.to_string(), snap);
        Ok(())
    }

    async fn snapshot_get(&self, id: &SnapshotId) -> Result<Option<SnapshotRecord>, StoreError> {
        Ok(self.inner.lock().snapshots.get(id.as_str()).cloned())
    }

    async fn snapshot_list(
        &self,
        filter: &SnapshotFilter,
    ) -> Result<Vec<SnapshotRecord>, StoreError> {
        let g = self.inner.lock();
        let mut out: Vec<SnapshotRecord> = g
            .snapshots
            .values()
            .filter(|s| filter.matches(s))
            .cloned()
            .collect();
        out.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    async fn snapshot_update(
        &self,
        id: &SnapshotId,
        patch: SnapshotPatch,
    ) -> Result<SnapshotRecord, StoreError> {
        let mut g = self.inner.lock();
        let s = g
            .snapshots
            .get_mut(id.as_str())
            .ok_or_else(|| snapshot_not_found(id))?;
        let from = s.state;
        apply_snapshot_patch(s, patch, now());
        let out = s.clone();
        if from != out.state {
            g.audit(AuditEvent {
                entity_kind: "snapshot",
                entity_id: id.to_string(),
                event_type: "state".into(),
                payload: serde_json::json!({"from": from.as_str(), "to": out.state.as_str()}),
            });
        }
        Ok(out)
    }

    async fn snapshot_begin_delete(&self, id: &SnapshotId) -> Result<SnapshotRecord, StoreError> {
        let mut g = self.inner.lock();
        let children = g
            .snapshots
            .values()
            .filter(|s| s.parent_id.as_ref() == Some(id))
            .count() as u64;
        let s = g
            .snapshots
            .get_mut(id.as_str())
            .ok_or_else(|| snapshot_not_found(id))?;
        if children > 0 {
            return Err(StoreError::HasChildren {
                id: id.to_string(),
                children,
            });
        }
        let before = s.clone();
        if let Some(t) = g.templates.values().find(|t| &t.snapshot_id == id) {
            return Err(crate::snapshot_in_use(id, &t.name));
        }
        let Some(s) = g.snapshots.get_mut(id.as_str()) else {
            return Err(snapshot_not_found(id));
        };
        s.state = SnapshotState::Deleting;
        s.updated_at = now();
        g.audit(AuditEvent {
            entity_kind: "snapshot",
            entity_id: id.to_string(),
            event_type: "state".into(),
            payload: serde_json::json!({"from": before.state.as_str(), "to": "deleting"}),
        });
        Ok(before)
    }

    async fn snapshot_remove(&self, id: &SnapshotId) -> Result<(), StoreError> {
        let mut g = self.inner.lock();
        if let Some(t) = g.templates.values().find(|t| &t.snapshot_id == id) {
            return Err(crate::snapshot_in_use(id, &t.name));
        }
        if g.snapshots.remove(id.as_str()).is_none() {
            return Err(snapshot_not_found(id));
        }
        g.audit(AuditEvent {
            entity_kind: "snapshot",
            entity_id: id.to_string(),
            event_type: "deleted".into(),
            payload: serde_json::json!({}),
        });
        Ok(())
    }

    async fn audit_append(&self, ev: AuditEvent) -> Result<(), StoreError> {
        self.inner.lock().audit(ev);
        Ok(())
    }

    async fn replica_register(&self, replica_id: &str) -> Result<(), StoreError> {
        self.inner.lock().replicas.insert(replica_id.to_owned());
        Ok(())
    }

    async fn replica_alive(&self, replica_id: &str) -> Result<bool, StoreError> {
        Ok(self.inner.lock().replicas.contains(replica_id))
    }

    async fn leader_acquire(&self) -> Result<bool, StoreError> {
        Ok(true)
    }

    async fn notify(&self, _payloads: &[String]) -> Result<(), StoreError> {
        Ok(())
    }

    async fn listen(&self) -> Result<Option<tokio::sync::mpsc::Receiver<String>>, StoreError> {
        Ok(None)
    }

    async fn dead_letter_fail(
        &self,
        kind: &str,
        entity_id: &str,
        error: &str,
    ) -> Result<u32, StoreError> {
        let at = fuse_types::now();
        let mut g = self.inner.lock();
        let d = g
            .dead_letters
            .entry((kind.to_owned(), entity_id.to_owned()))
            .or_insert_with(|| DeadLetter {
                kind: kind.to_owned(),
                entity_id: entity_id.to_owned(),
                attempts: 0,
                last_error: None,
                created_at: at,
                updated_at: at,
            });
        d.attempts += 1;
        d.last_error = Some(error.to_owned());
        d.updated_at = at;
        Ok(d.attempts)
    }

    async fn dead_letter_clear(&self, kind: &str, entity_id: &str) -> Result<(), StoreError> {
        self.inner
            .lock()
            .dead_letters
            .remove(&(kind.to_owned(), entity_id.to_owned()));
        Ok(())
    }

    async fn dead_letter_list(&self) -> Result<Vec<DeadLetter>, StoreError> {
        let mut v: Vec<DeadLetter> = self.inner.lock().dead_letters.values().cloned().collect();
        v.sort_by_key(|d| d.created_at);
        Ok(v)
    }

    async fn audit_list(&self, entity_id: &str) -> Result<Vec<AuditRecord>, StoreError> {
        Ok(self
            .inner
            .lock()
            .audit
            .iter()
            .filter(|a| a.entity_id == entity_id)
            .cloned()
            .collect())
    }
}
