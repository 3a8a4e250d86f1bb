//! `StateStore` for [`PgStore`]: one transaction per method.

use super::rows::{self, seal_secrets, seal_token};
use super::{db_err, PgStore, CHANNEL, LOCK_LEADER, LOCK_REPLICA};
use crate::memory::{
    apply_patch, apply_snapshot_patch, release_event, repair_event, replaceable, transition_event,
};
use crate::{
    AuditEvent, AuditRecord, DeadLetter, HostRecord, HostUpsert, SnapshotFilter, SnapshotPatch,
    SnapshotRecord, StateStore, StoreError, VmCreated, VmFilter, VmPatch, VmRecord,
};
use async_trait::async_trait;
use fuse_scheduler::{HostView, Policy};
use fuse_types::{
    now, HostId, HostState, Resources, SnapshotId, SnapshotState, Timestamp, VmId, VmState,
};
use sqlx::postgres::PgListener;
use sqlx::{Postgres, Row, Transaction};

pub(super) type Tx<'a> = Transaction<'a, Postgres>;

const VM_COLS: &str =
    "id, task_id, state, generation, host_id, reserved, url, spec, request_hash, \
    agent, error, restored_from, owner, secrets_enc, created_at, updated_at, running_since, extras";

/// A host row's artifact bytes (its `ready` and `creating` snapshots), as a column of a
/// statement over `hosts`.
pub(super) const HOST_ARTIFACTS: &str = "COALESCE((SELECT sum(s.size_bytes) FROM snapshots s \
     WHERE s.host_id = hosts.id AND s.state IN ('ready', 'creating')), 0)::bigint AS artifact_bytes";

/// The whole GiB a host row's snapshot artifacts take, as an expression over `hosts`
/// (placement adds it to the reserved storage).
const HOST_ARTIFACT_GB: &str =
    "(SELECT ceil(COALESCE(sum(s.size_bytes), 0) / 1073741824.0)::bigint \
     FROM snapshots s WHERE s.host_id = hosts.id AND s.state IN ('ready', 'creating'))";

pub(super) fn to_json<T: serde::Serialize>(v: &T) -> Result<serde_json::Value, StoreError> {
    serde_json::to_value(v).map_err(|e| StoreError::Internal(e.to_string()))
}

pub(super) async fn audit(tx: &mut Tx<'_>, ev: &AuditEvent) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO events (entity_kind, entity_id, event_type, payload) VALUES ($1, $2, $3, $4)",
    )
    .bind(ev.entity_kind)
    .bind(&ev.entity_id)
    .bind(&ev.event_type)
    .bind(&ev.payload)
    .execute(&mut **tx)
    .await
    .map_err(db_err)?;
    Ok(())
}

impl PgStore {
    pub(super) async fn vm_lock(
        &self,
        tx: &mut Tx<'_>,
        id: &str,
    ) -> Result<Option<VmRecord>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {VM_COLS} FROM vms WHERE id = $1 FOR UPDATE"
        ))
        .bind(id)
        .fetch_optional(&mut **tx)
        .await
        .map_err(db_err)?;
        row.map(|r| rows::vm(&r, self.cipher.as_ref())).transpose()
    }

    /// Writes every column of `r` (insert or full update).
    async fn vm_write(
        &self,
        tx: &mut Tx<'_>,
        r: &VmRecord,
        insert: bool,
    ) -> Result<(), StoreError> {
        let sql = if insert {
            format!(
                "INSERT INTO vms ({VM_COLS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18)"
            )
        } else {
            "UPDATE vms SET task_id=$2, state=$3, generation=$4, host_id=$5, reserved=$6, url=$7, \
             spec=$8, request_hash=$9, agent=$10, error=$11, restored_from=$12, owner=$13, \
             secrets_enc=$14, created_at=$15, updated_at=$16, running_since=$17, extras=$18 WHERE id=$1"
                .to_owned()
        };
        self.bind_vm(sqlx::query(&sql), r)?
            .execute(&mut **tx)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    /// Binds every column of a VM row, in `VM_COLS` order, as `$1…$18`.
    fn bind_vm<'q>(
        &self,
        q: sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
        r: &'q VmRecord,
    ) -> Result<sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>, StoreError> {
        Ok(q.bind(r.id.as_str())
            .bind(r.task_id.as_str())
            .bind(r.state.as_str())
            .bind(r.generation as i64)
            .bind(r.host_id.as_ref().map(HostId::as_str))
            .bind(r.reserved.as_ref().map(to_json).transpose()?)
            .bind(&r.url)
            .bind(to_json(&r.spec)?)
            .bind(&r.request_hash)
            .bind(to_json(&r.agent)?)
            .bind(&r.error)
            .bind(r.restored_from.as_ref().map(SnapshotId::as_str))
            .bind(&r.owner)
            .bind(seal_secrets(self.cipher.as_ref(), r.secrets.as_ref()))
            .bind(r.created_at)
            .bind(r.updated_at)
            .bind(r.running_since)
            .bind(to_json(&r.extras)?))
    }

    async fn create_in(&self, tx: &mut Tx<'_>, rec: VmRecord) -> Result<VmCreated, StoreError> {
        let mut rec = rec;
        // The common case first: a new id, one INSERT.
        let sql = format!(
            "INSERT INTO vms ({VM_COLS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18) \
             ON CONFLICT (id) DO NOTHING"
        );
        let inserted = self
            .bind_vm(sqlx::query(&sql), &rec)?
            .execute(&mut **tx)
            .await
            .map_err(db_err)?
            .rows_affected();
        if inserted == 0 {
            let e = self
                .vm_lock(tx, rec.id.as_str())
                .await?
                .ok_or_else(|| vm_missing(&rec.id))?;
            if !replaceable(&e) {
                return Ok(VmCreated::Exists(e));
            }
            // A new incarnation continues the generation sequence, so writers holding the
            // old one's generation can never match the new row.
            rec.generation = e.generation + 1;
            self.vm_write(tx, &rec, false).await?;
        }
        // The task index and the audit event in one statement.
        sqlx::query(
            "WITH t AS (INSERT INTO tasks (task_id, vm_id, request_hash, created_at, updated_at) \
               VALUES ($1,$2,$3,$4,$4) \
               ON CONFLICT (task_id) DO UPDATE SET vm_id = $2, request_hash = $3, updated_at = $4) \
             INSERT INTO events (entity_kind, entity_id, event_type, payload) \
             VALUES ('environment', $2, 'created', $5)",
        )
        .bind(rec.task_id.as_str())
        .bind(rec.id.as_str())
        .bind(&rec.request_hash)
        .bind(rec.created_at)
        .bind(serde_json::json!({"state": rec.state.as_str(), "task_id": rec.task_id.as_str()}))
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
        Ok(VmCreated::Created(rec))
    }

    /// Chooses a host for a locked `provisioning` record and reserves on it; writes the row.
    async fn place_in(
        &self,
        tx: &mut Tx<'_>,
        rec: &mut VmRecord,
        policy: Policy,
        fallback: Option<&HostId>,
    ) -> Result<(), StoreError> {
        let id = rec.id.clone();
        if rec.state != VmState::Provisioning || rec.host_id.is_some() {
            return Err(StoreError::Internal(format!(
                "vm_place on {id} in state {} with host {:?}",
                rec.state, rec.host_id
            )));
        }
        let need = Resources::for_spec(&rec.spec);
        let mut excluded: Vec<String> = Vec::new();
        let chosen = loop {
            let hosts = self.hosts_read(tx).await?;
            if hosts.is_empty() {
                if let Some(fb) = fallback {
                    break fb.clone();
                }
            }
            let views: Vec<HostView> = hosts
                .iter()
                .filter(|h| !excluded.iter().any(|x| x == h.id.as_str()))
                .map(HostRecord::view)
                .collect();
            let candidate =
                match fuse_scheduler::place(&views, &crate::request_for(&rec.spec, need), policy) {
                    Ok(c) => c.to_owned(),
                    Err(mut why) => {
                        // Report against every host, not only those left after races.
                        why.hosts = hosts.len();
                        return Err(StoreError::NoCapacity(why));
                    }
                };
            // Reserve only if it still fits now: the row lock makes this atomic against
            // every other replica's reservation on the same host.
            let done = sqlx::query(&format!(
                "UPDATE hosts SET alloc_cpus = alloc_cpus + $2, alloc_ram_mb = alloc_ram_mb + $3, \
                 alloc_storage_gb = alloc_storage_gb + $4, alloc_vm_count = alloc_vm_count + 1, \
                 updated_at = now() \
                 WHERE id = $1 AND state = 'active' AND alloc_cpus + $2 <= cap_cpus \
                 AND alloc_ram_mb + $3 <= cap_ram_mb \
                 AND alloc_storage_gb + $4 + {HOST_ARTIFACT_GB} <= cap_storage_gb \
                 AND alloc_vm_count + 1 <= cap_vm_count"
            ))
            .bind(&candidate)
            .bind(i64::from(need.cpus))
            .bind(need.ram_mb as i64)
            .bind(need.storage_gb as i64)
            .execute(&mut **tx)
            .await
            .map_err(db_err)?
            .rows_affected();
            if done == 1 {
                rec.reserved = Some(need);
                break HostId::parse(&candidate).map_err(|e| StoreError::Internal(e.0))?;
            }
            excluded.push(candidate);
        };
        rec.host_id = Some(chosen.clone());
        rec.generation += 1;
        rec.updated_at = now();
        sqlx::query(
            "WITH u AS (UPDATE vms SET host_id = $2, reserved = $3, generation = $4, updated_at = $5 \
               WHERE id = $1) \
             INSERT INTO events (entity_kind, entity_id, event_type, payload) \
             SELECT 'environment', $1, 'placed', $6 WHERE $3::jsonb IS NOT NULL",
        )
        .bind(id.as_str())
        .bind(chosen.as_str())
        .bind(rec.reserved.as_ref().map(to_json).transpose()?)
        .bind(rec.generation as i64)
        .bind(rec.updated_at)
        .bind(serde_json::json!({"host_id": chosen.as_str(), "policy": policy.to_string()}))
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    /// Returns a reservation to its host (never below zero).
    pub(super) async fn unreserve(
        &self,
        tx: &mut Tx<'_>,
        host: &HostId,
        res: Resources,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE hosts SET alloc_cpus = GREATEST(0, alloc_cpus - $2), \
             alloc_ram_mb = GREATEST(0, alloc_ram_mb - $3), \
             alloc_storage_gb = GREATEST(0, alloc_storage_gb - $4), \
             alloc_vm_count = GREATEST(0, alloc_vm_count - $5), updated_at = now() WHERE id = $1",
        )
        .bind(host.as_str())
        .bind(i64::from(res.cpus))
        .bind(res.ram_mb as i64)
        .bind(res.storage_gb as i64)
        .bind(i64::from(res.vm_count))
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    /// The general path: one transaction with row locks (replacing a destroyed row,
    /// racing creates of one id, a lost reservation race).
    pub(super) async fn create_placed_tx(
        &self,
        rec: VmRecord,
        policy: Policy,
        fallback: Option<&HostId>,
    ) -> Result<(VmCreated, Option<fuse_scheduler::NoPlacement>), StoreError> {
        let mut tx = self.ready()?.begin().await.map_err(db_err)?;
        let mut rec = match self.create_in(&mut tx, rec).await? {
            VmCreated::Created(r) => r,
            exists => {
                tx.commit().await.map_err(db_err)?;
                return Ok((exists, None));
            }
        };
        let out = match self.place_in(&mut tx, &mut rec, policy, fallback).await {
            Ok(()) => (VmCreated::Created(rec), None),
            Err(StoreError::NoCapacity(np)) => {
                let patch = VmPatch::state(VmState::Failed, "placement").with_error(np.to_string());
                apply_patch(&mut rec, &patch, now());
                self.vm_write(&mut tx, &rec, false).await?;
                audit(
                    &mut tx,
                    &transition_event(
                        &rec.id,
                        VmState::Provisioning,
                        VmState::Failed,
                        Some("placement"),
                    ),
                )
                .await?;
                (VmCreated::Created(rec), Some(np))
            }
            Err(e) => return Err(e),
        };
        tx.commit().await.map_err(db_err)?;
        Ok(out)
    }

    /// The transition statement: `expected` `None` skips the generation check. Returns the
    /// updated row, or `None` when nothing matched.
    async fn update_row(
        &self,
        id: &VmId,
        expected: Option<u64>,
        patch: &VmPatch,
    ) -> Result<Option<VmRecord>, StoreError> {
        // One statement (one round trip, autocommit): lock, generation and transition check,
        // update, audit, and the optional release, all atomically.
        let allowed: Vec<&str> = match patch.state {
            Some(to) => VmState::ALL
                .iter()
                .filter(|f| f.can_transition_to(to))
                .map(|f| f.as_str())
                .collect(),
            None => Vec::new(),
        };
        let at = now();
        let row = sqlx::query(&format!(
            "WITH old AS (SELECT id, state, generation, reserved, host_id FROM vms WHERE id = $1 FOR UPDATE), \
             upd AS (UPDATE vms v SET state = COALESCE($3, v.state), url = COALESCE($4, v.url), \
                error = CASE WHEN $5 THEN $6 ELSE v.error END, agent = COALESCE($7, v.agent), \
                restored_from = CASE WHEN $8 THEN $9 ELSE v.restored_from END, \
                secrets_enc = CASE WHEN $10 THEN $11 ELSE v.secrets_enc END, \
                reserved = CASE WHEN $12 THEN NULL ELSE v.reserved END, \
                generation = v.generation + 1, updated_at = $13, \
                running_since = CASE WHEN $3 = 'running' AND old.state <> 'running' THEN $13 ELSE v.running_since END, \
                extras = COALESCE($17, v.extras) \
              FROM old WHERE v.id = old.id AND ($2::bigint IS NULL OR old.generation = $2) AND ($3::text IS NULL OR old.state = ANY($14)) \
              RETURNING v.*, old.state AS from_state, old.reserved AS old_reserved), \
             ev AS (INSERT INTO events (entity_kind, entity_id, event_type, payload) \
              SELECT 'environment', id, t, p FROM ( \
                SELECT 1 AS k, upd.id, 'state' AS t, jsonb_build_object('from', upd.from_state, 'to', upd.state, 'reason', $15::text) AS p \
                FROM upd WHERE $3::text IS NOT NULL \
                UNION ALL \
                SELECT 1, upd.id, $16::text, jsonb_build_object('reason', $15::text) \
                FROM upd WHERE $3::text IS NULL AND $16::text IS NOT NULL \
                UNION ALL \
                SELECT 2, upd.id, 'released', jsonb_build_object('cpus', upd.old_reserved->'cpus', \
                  'ram_mb', upd.old_reserved->'ram_mb', 'storage_gb', upd.old_reserved->'storage_gb') \
                FROM upd WHERE $12 AND upd.old_reserved IS NOT NULL) x ORDER BY k), \
             rel AS (UPDATE hosts h SET \
                alloc_cpus = GREATEST(0, h.alloc_cpus - (upd.old_reserved->>'cpus')::bigint), \
                alloc_ram_mb = GREATEST(0, h.alloc_ram_mb - (upd.old_reserved->>'ram_mb')::bigint), \
                alloc_storage_gb = GREATEST(0, h.alloc_storage_gb - (upd.old_reserved->>'storage_gb')::bigint), \
                alloc_vm_count = GREATEST(0, h.alloc_vm_count - (upd.old_reserved->>'vm_count')::bigint), \
                updated_at = $13 \
              FROM upd WHERE $12 AND upd.old_reserved IS NOT NULL AND h.id = upd.host_id RETURNING h.id) \
             SELECT {VM_COLS} FROM upd"
        ))
        .bind(id.as_str())
        .bind(expected.map(|g| g as i64))
        .bind(patch.state.map(VmState::as_str))
        .bind(patch.url.as_deref())
        .bind(patch.error.is_some())
        .bind(patch.error.clone().flatten())
        .bind(patch.agent.as_ref().map(to_json).transpose()?)
        .bind(patch.restored_from.is_some())
        .bind(patch.restored_from.clone().flatten().map(|s| s.to_string()))
        .bind(patch.secrets.is_some())
        .bind(
            patch
                .secrets
                .as_ref()
                .and_then(|s| seal_secrets(self.cipher.as_ref(), s.as_ref())),
        )
        .bind(patch.release)
        .bind(at)
        .bind(&allowed)
        .bind(patch.reason.as_deref())
        .bind(patch.audit.as_deref())
        .bind(patch.extras.as_ref().map(to_json).transpose()?)
        .fetch_optional(self.ready()?)
        .await
        .map_err(db_err)?;
        row.map(|r| rows::vm(&r, self.cipher.as_ref())).transpose()
    }

    async fn hosts_read(&self, tx: &mut Tx<'_>) -> Result<Vec<HostRecord>, StoreError> {
        let rs = sqlx::query(&format!(
            "SELECT *, {HOST_ARTIFACTS} FROM hosts ORDER BY id"
        ))
        .fetch_all(&mut **tx)
        .await
        .map_err(db_err)?;
        rs.iter()
            .map(|r| rows::host(r, self.cipher.as_ref()))
            .collect()
    }
}

fn stale(id: &VmId, expected: u64, actual: u64) -> StoreError {
    StoreError::Stale {
        id: id.to_string(),
        expected,
        actual,
    }
}

fn vm_missing(id: &VmId) -> StoreError {
    StoreError::NotFound {
        kind: "environment",
        id: id.to_string(),
    }
}

#[async_trait]
impl StateStore for PgStore {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    async fn prepare(&self) -> Result<String, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        let applied = super::migrate_in(&mut tx).await?;
        tx.commit().await.map_err(db_err)?;
        // Before anything reads or seals a secret (the store serves only after this): a
        // wrong key is found here, not when a host refuses a token that did not decrypt.
        let key = self.key_check().await?;
        self.migrated
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(if applied.is_empty() {
            format!("postgres ready; schema up to date; {key}")
        } else {
            format!("postgres ready; applied migrations {applied:?}; {key}")
        })
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(self.ready()?)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn vm_create(&self, rec: VmRecord) -> Result<VmCreated, StoreError> {
        let mut tx = self.ready()?.begin().await.map_err(db_err)?;
        let out = self.create_in(&mut tx, rec).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(out)
    }

    async fn vm_create_placed(
        &self,
        rec: VmRecord,
        policy: Policy,
        fallback: Option<&HostId>,
    ) -> Result<(VmCreated, Option<fuse_scheduler::NoPlacement>), StoreError> {
        // Fast path, two round trips: choose a host from a snapshot (the pure scheduler),
        // then one statement that reserves on it only if the VM id is new and the host
        // still has room, inserts the row, the task index and the audit events. Anything
        // unusual (existing id, lost race) falls back to the transactional path.
        let need = Resources::for_spec(&rec.spec);
        let choose =
            |hosts: &[HostRecord]| -> (Option<String>, bool, Option<fuse_scheduler::NoPlacement>) {
                if hosts.is_empty() && fallback.is_some() {
                    return (fallback.map(|h| h.to_string()), false, None);
                }
                let views: Vec<HostView> = hosts.iter().map(HostRecord::view).collect();
                let req = crate::request_for(&rec.spec, need);
                match fuse_scheduler::place(&views, &req, policy) {
                    Ok(id) => (Some(id.to_owned()), true, None),
                    Err(np) => (None, false, Some(np)),
                }
            };
        // Choose from the cached picture and count the reservation in it at once, under its
        // lock: concurrent creates of this replica then see each other's choices (so a burst
        // spreads) before their statements even run.
        let book = |hosts: &mut Vec<HostRecord>, plan: &(Option<String>, bool, _)| {
            if let (Some(t), true) = (&plan.0, plan.1) {
                if let Some(h) = hosts.iter_mut().find(|h| h.id.as_str() == t) {
                    h.allocated = h.allocated.plus(need);
                }
            }
        };
        let mut plan = {
            let mut cache = self.hosts_cache.lock();
            match cache
                .as_mut()
                .filter(|(at, _)| at.elapsed() < super::HOSTS_CACHE_TTL)
            {
                Some((_, hosts)) => {
                    let p = choose(hosts);
                    if p.2.is_none() {
                        book(hosts, &p);
                    }
                    Some(p)
                }
                None => None,
            }
        };
        // "No room" is only believed from a fresh read: capacity may have been freed since.
        if !matches!(plan, Some((_, _, None))) {
            let mut fresh = self.host_list().await?;
            let p = choose(&fresh);
            book(&mut fresh, &p);
            plan = Some(p);
            *self.hosts_cache.lock() = Some((std::time::Instant::now(), fresh));
        }
        let (target, reserve, no_room) = plan.unwrap_or((None, false, None));
        // Takes the booking back out of the cache when the statement did not reserve.
        let unbook = || {
            if let (Some((_, hosts)), Some(t), true) =
                (self.hosts_cache.lock().as_mut(), &target, reserve)
            {
                if let Some(h) = hosts.iter_mut().find(|h| h.id.as_str() == t) {
                    h.allocated = h.allocated.minus(need);
                }
            }
        };
        let mut out = rec.clone();
        if let Some(np) = &no_room {
            out.state = VmState::Failed;
            out.error = Some(np.to_string());
        }
        let at = out.updated_at;
        let row = sqlx::query(&format!(
            "WITH res AS (UPDATE hosts SET alloc_cpus = alloc_cpus + $19, alloc_ram_mb = alloc_ram_mb + $20, \
                alloc_storage_gb = alloc_storage_gb + $21, alloc_vm_count = alloc_vm_count + 1, updated_at = $16 \
              WHERE $22 AND id = $5 AND state = 'active' AND alloc_cpus + $19 <= cap_cpus \
                AND alloc_ram_mb + $20 <= cap_ram_mb \
                AND alloc_storage_gb + $21 + {HOST_ARTIFACT_GB} <= cap_storage_gb \
                AND alloc_vm_count + 1 <= cap_vm_count AND NOT EXISTS (SELECT 1 FROM vms WHERE id = $1) \
              RETURNING id), \
             ins AS (INSERT INTO vms ({VM_COLS}) \
              SELECT $1,$2,$3,$4, CASE WHEN $22 THEN (SELECT id FROM res) ELSE $5 END, \
                CASE WHEN EXISTS (SELECT 1 FROM res) THEN $6::jsonb END, \
                $7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18 \
              ON CONFLICT (id) DO NOTHING RETURNING id, host_id), \
             t AS (INSERT INTO tasks (task_id, vm_id, request_hash, created_at, updated_at) \
              SELECT $2, id, $9, $15, $15 FROM ins \
              ON CONFLICT (task_id) DO UPDATE SET vm_id = EXCLUDED.vm_id, request_hash = EXCLUDED.request_hash, \
                updated_at = EXCLUDED.updated_at), \
             ev AS (INSERT INTO events (entity_kind, entity_id, event_type, payload) \
              SELECT 'environment', id, t, p FROM ( \
                SELECT 1 AS k, ins.id, 'created' AS t, jsonb_build_object('state', 'provisioning', 'task_id', $2::text) AS p FROM ins \
                UNION ALL SELECT 2, ins.id, 'placed', jsonb_build_object('host_id', ins.host_id, 'policy', $23::text) \
                  FROM ins WHERE EXISTS (SELECT 1 FROM res) \
                UNION ALL SELECT 3, ins.id, 'state', jsonb_build_object('from', 'provisioning', 'to', 'failed', 'reason', 'placement') \
                  FROM ins WHERE $3 = 'failed') x ORDER BY k) \
             SELECT (SELECT count(*) FROM ins) AS inserted, (SELECT count(*) FROM res) AS reserved"
        ))
        .bind(out.id.as_str())
        .bind(out.task_id.as_str())
        .bind(out.state.as_str())
        .bind(out.generation as i64)
        .bind(target.as_deref())
        .bind(to_json(&need)?)
        .bind(&out.url)
        .bind(to_json(&out.spec)?)
        .bind(&out.request_hash)
        .bind(to_json(&out.agent)?)
        .bind(&out.error)
        .bind(out.restored_from.as_ref().map(SnapshotId::as_str))
        .bind(&out.owner)
        .bind(seal_secrets(self.cipher.as_ref(), out.secrets.as_ref()))
        .bind(out.created_at)
        .bind(at)
        .bind(out.running_since)
        .bind(to_json(&out.extras)?)
        .bind(i64::from(need.cpus))
        .bind(need.ram_mb as i64)
        .bind(need.storage_gb as i64)
        .bind(reserve)
        .bind(policy.to_string())
        .fetch_one(self.ready()?)
        .await
        .map_err(db_err)?;
        let inserted: i64 = row.try_get("inserted").map_err(db_err)?;
        let reserved: i64 = row.try_get("reserved").map_err(db_err)?;
        match (inserted, reserved, reserve) {
            (1, 1, true) | (1, 0, false) => {
                if no_room.is_none() {
                    out.host_id = target
                        .map(|t| HostId::parse(&t))
                        .transpose()
                        .map_err(|e| StoreError::Internal(e.0))?;
                    out.reserved = reserve.then_some(need);
                }
                Ok((VmCreated::Created(out), no_room))
            }
            (1, 0, true) => {
                unbook();
                self.hosts_changed();
                // Inserted unplaced: the host filled up meanwhile. Place it properly.
                match self
                    .vm_place(&out.id, out.generation, policy, fallback)
                    .await
                {
                    Ok(placed) => Ok((VmCreated::Created(placed), None)),
                    Err(StoreError::NoCapacity(np)) => {
                        let failed = self
                            .vm_update(
                                &out.id,
                                out.generation,
                                VmPatch::state(VmState::Failed, "placement")
                                    .with_error(np.to_string()),
                            )
                            .await?;
                        Ok((VmCreated::Created(failed), Some(np)))
                    }
                    Err(e) => Err(e),
                }
            }
            (_, r, _) => {
                unbook();
                // The id exists (or a concurrent create won): undo a reservation made in
                // the race, then take the general path.
                if r == 1 {
                    if let Some(h) = target.as_deref().and_then(|t| HostId::parse(t).ok()) {
                        let mut tx = self.ready()?.begin().await.map_err(db_err)?;
                        self.unreserve(&mut tx, &h, need).await?;
                        tx.commit().await.map_err(db_err)?;
                    }
                }
                self.create_placed_tx(rec, policy, fallback).await
            }
        }
    }

    async fn vm_get(&self, id: &VmId) -> Result<Option<VmRecord>, StoreError> {
        let row = sqlx::query(&format!("SELECT {VM_COLS} FROM vms WHERE id = $1"))
            .bind(id.as_str())
            .fetch_optional(self.ready()?)
            .await
            .map_err(db_err)?;
        row.map(|r| rows::vm(&r, self.cipher.as_ref())).transpose()
    }

    async fn vm_list(
        &self,
        filter: &VmFilter,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<VmRecord>, StoreError> {
        let rs = sqlx::query(&format!(
            "SELECT {VM_COLS} FROM vms WHERE ($1::text IS NULL OR id > $1) \
             AND ($2::text IS NULL OR task_id = $2) AND ($3::text IS NULL OR state = $3) \
             AND ($4::text IS NULL OR host_id = $4) \
             AND CASE WHEN $6::text IS NOT NULL THEN extras->>'pool' = $6 \
                      ELSE $7 OR NOT extras ? 'pool' END \
             ORDER BY id LIMIT $5"
        ))
        .bind(after)
        .bind(filter.task_id.as_deref())
        .bind(filter.state.map(VmState::as_str))
        .bind(filter.host_id.as_deref())
        .bind(limit.min(i64::MAX as usize) as i64)
        .bind(filter.pool.as_deref())
        .bind(filter.include_pool)
        .fetch_all(self.ready()?)
        .await
        .map_err(db_err)?;
        rs.iter()
            .map(|r| rows::vm(r, self.cipher.as_ref()))
            .collect()
    }

    async fn vm_count_by_state(&self) -> Result<Vec<(VmState, u64)>, StoreError> {
        let rs = sqlx::query("SELECT state, count(*) AS n FROM vms GROUP BY state")
            .fetch_all(self.ready()?)
            .await
            .map_err(db_err)?;
        let mut out: Vec<(VmState, u64)> = VmState::ALL.iter().map(|s| (*s, 0)).collect();
        for r in rs {
            let s: String = r.try_get("state").map_err(db_err)?;
            let n: i64 = r.try_get("n").map_err(db_err)?;
            if let Some(slot) = out.iter_mut().find(|(st, _)| st.as_str() == s) {
                slot.1 = n as u64;
            }
        }
        Ok(out)
    }

    async fn vm_update(
        &self,
        id: &VmId,
        expected_generation: u64,
        patch: VmPatch,
    ) -> Result<VmRecord, StoreError> {
        // One statement (one round trip, autocommit): lock, generation and transition check,
        // update, audit, and the optional release, all atomically.
        if let Some(r) = self
            .update_row(id, Some(expected_generation), &patch)
            .await?
        {
            return Ok(r);
        }
        // Nothing updated: say why.
        let cur = self.vm_get(id).await?.ok_or_else(|| vm_missing(id))?;
        if cur.generation != expected_generation {
            return Err(stale(id, expected_generation, cur.generation));
        }
        match patch.state {
            Some(to) => Err(StoreError::Transition {
                id: id.to_string(),
                source: fuse_types::TransitionError {
                    from: cur.state,
                    to,
                },
            }),
            None => Err(StoreError::Internal(format!(
                "update of {id} matched nothing"
            ))),
        }
    }

    async fn vm_begin_destroy(&self, id: &VmId) -> Result<(VmRecord, bool), StoreError> {
        let patch = VmPatch::state(VmState::Destroying, "delete requested");
        if let Some(r) = self.update_row(id, None, &patch).await? {
            return Ok((r, true));
        }
        // Nothing moved: it is already destroying or destroyed, or it does not exist.
        let cur = self.vm_get(id).await?.ok_or_else(|| vm_missing(id))?;
        if matches!(cur.state, VmState::Destroying | VmState::Destroyed) {
            return Ok((cur, false));
        }
        // Changed state between the two reads: take the general path.
        crate::begin_destroy_by_generation(self, id).await
    }

    async fn vm_place(
        &self,
        id: &VmId,
        expected_generation: u64,
        policy: Policy,
        fallback: Option<&HostId>,
    ) -> Result<VmRecord, StoreError> {
        let mut tx = self.ready()?.begin().await.map_err(db_err)?;
        let mut rec = self
            .vm_lock(&mut tx, id.as_str())
            .await?
            .ok_or_else(|| vm_missing(id))?;
        if rec.generation != expected_generation {
            return Err(stale(id, expected_generation, rec.generation));
        }
        self.place_in(&mut tx, &mut rec, policy, fallback).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(rec)
    }

    async fn vm_release(&self, id: &VmId) -> Result<bool, StoreError> {
        let mut tx = self.ready()?.begin().await.map_err(db_err)?;
        let Some(mut rec) = self.vm_lock(&mut tx, id.as_str()).await? else {
            return Ok(false);
        };
        let Some(res) = rec.reserved.take() else {
            return Ok(false);
        };
        rec.generation += 1;
        self.vm_write(&mut tx, &rec, false).await?;
        if let Some(h) = rec.host_id.clone() {
            self.unreserve(&mut tx, &h, res).await?;
        }
        audit(&mut tx, &release_event(id, res)).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(true)
    }

    async fn vm_purge_terminal(&self, before: Timestamp) -> Result<u64, StoreError> {
        let mut tx = self.ready()?.begin().await.map_err(db_err)?;
        let n = sqlx::query(
            "DELETE FROM vms WHERE state = 'destroyed' AND reserved IS NULL AND updated_at < $1",
        )
        .bind(before)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?
        .rows_affected();
        sqlx::query(
            "DELETE FROM tasks t WHERE NOT EXISTS (SELECT 1 FROM vms v WHERE v.id = t.vm_id)",
        )
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(n)
    }

    async fn host_upsert(&self, up: HostUpsert) -> Result<(HostRecord, bool), StoreError> {
        self.hosts_changed();
        let mut tx = self.ready()?.begin().await.map_err(db_err)?;
        let at = now();
        let row = sqlx::query(&format!(
            "INSERT INTO hosts (id, url, token_enc, region, state, state_reason, cap_cpus, cap_ram_mb, \
             cap_storage_gb, cap_vm_count, last_seen, created_at, updated_at, backend, arch, labels, declared) \
             VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$12,$13,$14,$15,$16) \
             ON CONFLICT (id) DO UPDATE SET url = EXCLUDED.url, token_enc = EXCLUDED.token_enc, \
             backend = EXCLUDED.backend, arch = EXCLUDED.arch, labels = EXCLUDED.labels, \
             declared = EXCLUDED.declared, \
             region = EXCLUDED.region, cap_cpus = EXCLUDED.cap_cpus, cap_ram_mb = EXCLUDED.cap_ram_mb, \
             cap_storage_gb = EXCLUDED.cap_storage_gb, cap_vm_count = EXCLUDED.cap_vm_count, \
             last_seen = COALESCE(EXCLUDED.last_seen, hosts.last_seen), updated_at = EXCLUDED.updated_at \
             RETURNING *, (xmax = 0) AS inserted, {HOST_ARTIFACTS}"
        ))
        .bind(up.id.as_str())
        .bind(&up.url)
        .bind(seal_token(self.cipher.as_ref(), &up.token))
        .bind(&up.region)
        .bind(up.initial_state.as_str())
        .bind(&up.initial_reason)
        .bind(i64::from(up.capacity.cpus))
        .bind(up.capacity.ram_mb as i64)
        .bind(up.capacity.storage_gb as i64)
        .bind(i64::from(up.capacity.vm_count))
        .bind(up.seen.then_some(at))
        .bind(at)
        .bind(&up.backend)
        .bind(&up.arch)
        .bind(to_json(&up.labels)?)
        .bind(to_json(&up.declared)?)
        .fetch_one(&mut *tx)
        .await
        .map_err(db_err)?;
        let created: bool = row.try_get("inserted").map_err(db_err)?;
        let mut rec = rows::host(&row, self.cipher.as_ref())?;
        // Without a key the token is not persisted; keep it for this process's answer.
        rec.token = up.token.clone();
        audit(
            &mut tx,
            &AuditEvent {
                entity_kind: "host",
                entity_id: rec.id.to_string(),
                event_type: if created { "registered" } else { "updated" }.into(),
                payload: serde_json::json!({"url": rec.url, "region": rec.region, "state": rec.state.as_str()}),
            },
        )
        .await?;
        tx.commit().await.map_err(db_err)?;
        Ok((rec, created))
    }

    async fn host_get(&self, id: &HostId) -> Result<Option<HostRecord>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT *, {HOST_ARTIFACTS} FROM hosts WHERE id = $1"
        ))
        .bind(id.as_str())
        .fetch_optional(self.ready()?)
        .await
        .map_err(db_err)?;
        row.map(|r| rows::host(&r, self.cipher.as_ref()))
            .transpose()
    }

    async fn host_list(&self) -> Result<Vec<HostRecord>, StoreError> {
        let rs = sqlx::query(&format!(
            "SELECT *, {HOST_ARTIFACTS} FROM hosts ORDER BY id"
        ))
        .fetch_all(self.ready()?)
        .await
        .map_err(db_err)?;
        rs.iter()
            .map(|r| rows::host(r, self.cipher.as_ref()))
            .collect()
    }

    async fn host_set_state(
        &self,
        id: &HostId,
        state: HostState,
        reason: Option<String>,
    ) -> Result<HostRecord, StoreError> {
        self.hosts_changed();
        let mut tx = self.ready()?.begin().await.map_err(db_err)?;
        let before: Option<String> =
            sqlx::query_scalar("SELECT state FROM hosts WHERE id = $1 FOR UPDATE")
                .bind(id.as_str())
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err)?;
        let Some(from) = before else {
            return Err(StoreError::NotFound {
                kind: "host",
                id: id.to_string(),
            });
        };
        let row = sqlx::query(&format!(
            "UPDATE hosts SET state = $2, state_reason = $3, updated_at = now() WHERE id = $1 \
             RETURNING *, {HOST_ARTIFACTS}"
        ))
        .bind(id.as_str())
        .bind(state.as_str())
        .bind(&reason)
        .fetch_one(&mut *tx)
        .await
        .map_err(db_err)?;
        if from != state.as_str() {
            audit(
                &mut tx,
                &AuditEvent {
                    entity_kind: "host",
                    entity_id: id.to_string(),
                    event_type: "state".into(),
                    payload: serde_json::json!({"from": from, "to": state.as_str(), "reason": reason}),
                },
            )
            .await?;
        }
        tx.commit().await.map_err(db_err)?;
        rows::host(&row, self.cipher.as_ref())
    }

    async fn host_repair_allocation(
        &self,
        id: &HostId,
    ) -> Result<Option<(Resources, Resources)>, StoreError> {
        let mut tx = self.ready()?.begin().await.map_err(db_err)?;
        // Every reservation and release changes this row in the transaction that changes
        // the VM row, so while it is locked none is half-done from our point of view: a
        // committed one is in the sum below (a fresh snapshot per statement), an
        // uncommitted one applies its delta after us.
        let row = sqlx::query(
            "SELECT alloc_cpus, alloc_ram_mb, alloc_storage_gb, alloc_vm_count FROM hosts \
             WHERE id = $1 FOR UPDATE",
        )
        .bind(id.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?
        .ok_or_else(|| StoreError::NotFound {
            kind: "host",
            id: id.to_string(),
        })?;
        let get = |r: &sqlx::postgres::PgRow, c: &str| -> Result<i64, StoreError> {
            r.try_get::<i64, _>(c).map_err(db_err)
        };
        let was = Resources {
            cpus: get(&row, "alloc_cpus")? as u32,
            ram_mb: get(&row, "alloc_ram_mb")? as u64,
            storage_gb: get(&row, "alloc_storage_gb")? as u64,
            vm_count: get(&row, "alloc_vm_count")? as u32,
        };
        let sum = sqlx::query(
            "SELECT COALESCE(SUM((reserved->>'cpus')::bigint), 0)::bigint AS c, \
             COALESCE(SUM((reserved->>'ram_mb')::bigint), 0)::bigint AS r, \
             COALESCE(SUM((reserved->>'storage_gb')::bigint), 0)::bigint AS s, \
             COALESCE(SUM((reserved->>'vm_count')::bigint), 0)::bigint AS n \
             FROM vms WHERE host_id = $1 AND reserved IS NOT NULL",
        )
        .bind(id.as_str())
        .fetch_one(&mut *tx)
        .await
        .map_err(db_err)?;
        let now_ = Resources {
            cpus: get(&sum, "c")? as u32,
            ram_mb: get(&sum, "r")? as u64,
            storage_gb: get(&sum, "s")? as u64,
            vm_count: get(&sum, "n")? as u32,
        };
        if now_ == was {
            return Ok(None);
        }
        sqlx::query(
            "UPDATE hosts SET alloc_cpus = $2, alloc_ram_mb = $3, alloc_storage_gb = $4, \
             alloc_vm_count = $5, updated_at = now() WHERE id = $1",
        )
        .bind(id.as_str())
        .bind(i64::from(now_.cpus))
        .bind(now_.ram_mb as i64)
        .bind(now_.storage_gb as i64)
        .bind(i64::from(now_.vm_count))
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        audit(&mut tx, &repair_event(id, was, now_)).await?;
        tx.commit().await.map_err(db_err)?;
        self.hosts_changed();
        Ok(Some((was, now_)))
    }

    async fn host_seen(
        &self,
        id: &HostId,
        capacity: Option<Resources>,
    ) -> Result<HostRecord, StoreError> {
        let c = capacity.unwrap_or_default();
        let row = sqlx::query(&format!(
            "UPDATE hosts SET last_seen = now(), updated_at = now(), \
             cap_cpus = CASE WHEN $2 THEN $3 ELSE cap_cpus END, \
             cap_ram_mb = CASE WHEN $2 THEN $4 ELSE cap_ram_mb END, \
             cap_storage_gb = CASE WHEN $2 THEN $5 ELSE cap_storage_gb END, \
             cap_vm_count = CASE WHEN $2 THEN $6 ELSE cap_vm_count END \
             WHERE id = $1 RETURNING *, {HOST_ARTIFACTS}"
        ))
        .bind(id.as_str())
        .bind(capacity.is_some())
        .bind(i64::from(c.cpus))
        .bind(c.ram_mb as i64)
        .bind(c.storage_gb as i64)
        .bind(i64::from(c.vm_count))
        .fetch_optional(self.ready()?)
        .await
        .map_err(db_err)?
        .ok_or_else(|| StoreError::NotFound {
            kind: "host",
            id: id.to_string(),
        })?;
        rows::host(&row, self.cipher.as_ref())
    }

    async fn host_delete(&self, id: &HostId) -> Result<(), StoreError> {
        self.hosts_changed();
        let mut tx = self.ready()?.begin().await.map_err(db_err)?;
        // Lock the host row first: a concurrent reservation on it waits, then finds it gone.
        let found: Option<String> =
            sqlx::query_scalar("SELECT id FROM hosts WHERE id = $1 FOR UPDATE")
                .bind(id.as_str())
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err)?;
        if found.is_none() {
            return Err(StoreError::NotFound {
                kind: "host",
                id: id.to_string(),
            });
        }
        let live: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM vms WHERE host_id = $1 AND (reserved IS NOT NULL OR state IN \
             ('provisioning', 'running', 'draining', 'destroying'))",
        )
        .bind(id.as_str())
        .fetch_one(&mut *tx)
        .await
        .map_err(db_err)?;
        if live > 0 {
            return Err(StoreError::HostBusy {
                id: id.to_string(),
                vms: live as u64,
            });
        }
        sqlx::query("DELETE FROM hosts WHERE id = $1")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        audit(
            &mut tx,
            &AuditEvent {
                entity_kind: "host",
                entity_id: id.to_string(),
                event_type: "deleted".into(),
                payload: serde_json::json!({}),
            },
        )
        .await?;
        tx.commit().await.map_err(db_err)?;
        Ok(())
    }

    async fn vm_note_activity(
        &self,
        id: &VmId,
        at: fuse_types::Timestamp,
        net_bytes: Option<u64>,
    ) -> Result<(), StoreError> {
        // RFC 3339 in UTC sorts as text, so GREATEST keeps the later time.
        let at_text = at
            .format(&time::format_description::well_known::Rfc3339)
            .map_err(|e| StoreError::Internal(e.to_string()))?;
        sqlx::query(
            "UPDATE vms SET extras = jsonb_set( \
               CASE WHEN $3::bigint IS NULL THEN extras \
                    ELSE jsonb_set(extras, '{net_bytes}', to_jsonb($3::bigint)) END, \
               '{last_active_at}', \
               to_jsonb(GREATEST(COALESCE(extras->>'last_active_at', ''), $2::text))) \
             WHERE id = $1",
        )
        .bind(id.as_str())
        .bind(at_text)
        .bind(net_bytes.map(|b| b as i64))
        .execute(self.ready()?)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn vm_move_reservation(
        &self,
        id: &VmId,
        expected_generation: u64,
        host: &HostId,
        reserved: Resources,
    ) -> Result<VmRecord, StoreError> {
        let out = self
            .move_reservation(id, expected_generation, host, reserved)
            .await;
        self.hosts_changed();
        out
    }

    async fn template_insert(
        &self,
        t: crate::TemplateRecord,
    ) -> Result<crate::TemplateRecord, StoreError> {
        self.template_insert_tx(t).await
    }

    async fn template_get(&self, name: &str) -> Result<Option<crate::TemplateRecord>, StoreError> {
        self.template_read(Some(name)).await.map(|mut v| v.pop())
    }

    async fn template_list(&self) -> Result<Vec<crate::TemplateRecord>, StoreError> {
        self.template_read(None).await
    }

    async fn template_update_pool(
        &self,
        name: &str,
        per_host: u32,
    ) -> Result<crate::TemplateRecord, StoreError> {
        self.template_update_pool_tx(name, per_host).await
    }

    async fn template_delete(&self, name: &str) -> Result<(), StoreError> {
        self.template_delete_tx(name).await
    }

    async fn api_key_create(&self, key: crate::ApiKeyRecord) -> Result<(), StoreError> {
        let mut tx = self.ready()?.begin().await.map_err(db_err)?;
        sqlx::query(
            "INSERT INTO api_keys (id, label, key_hash, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(&key.id)
        .bind(&key.label)
        .bind(&key.hash[..])
        .bind(key.created_at)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        audit(
            &mut tx,
            &AuditEvent {
                entity_kind: "api_key",
                entity_id: key.id.clone(),
                event_type: "created".into(),
                payload: serde_json::json!({"label": key.label}),
            },
        )
        .await?;
        tx.commit().await.map_err(db_err)?;
        Ok(())
    }

    async fn api_key_list(&self) -> Result<Vec<crate::ApiKeyRecord>, StoreError> {
        let rs = sqlx::query("SELECT * FROM api_keys ORDER BY created_at, id")
            .fetch_all(self.ready()?)
            .await
            .map_err(db_err)?;
        rs.iter().map(rows::api_key).collect()
    }

    async fn api_key_by_hash(
        &self,
        hash: &[u8; 32],
    ) -> Result<Option<crate::ApiKeyRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM api_keys WHERE key_hash = $1")
            .bind(&hash[..])
            .fetch_optional(self.ready()?)
            .await
            .map_err(db_err)?;
        row.map(|r| rows::api_key(&r)).transpose()
    }

    async fn api_key_revoke(&self, id: &str) -> Result<crate::ApiKeyRecord, StoreError> {
        let mut tx = self.ready()?.begin().await.map_err(db_err)?;
        let row = sqlx::query(
            "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, now()) WHERE id = $1 \
             RETURNING *",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?
        .ok_or_else(|| StoreError::NotFound {
            kind: "api key",
            id: id.to_owned(),
        })?;
        let key = rows::api_key(&row)?;
        audit(
            &mut tx,
            &AuditEvent {
                entity_kind: "api_key",
                entity_id: id.to_owned(),
                event_type: "revoked".into(),
                payload: serde_json::json!({}),
            },
        )
        .await?;
        tx.commit().await.map_err(db_err)?;
        Ok(key)
    }

    async fn api_key_touch(&self, id: &str, at: fuse_types::Timestamp) -> Result<(), StoreError> {
        sqlx::query("UPDATE api_keys SET last_used_at = $2 WHERE id = $1")
            .bind(id)
            .bind(at)
            .execute(self.ready()?)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn snapshot_insert(&self, s: SnapshotRecord) -> Result<(), StoreError> {
        let mut tx = self.ready()?.begin().await.map_err(db_err)?;
        sqlx::query(
            "INSERT INTO snapshots (id, vm_id, task_id, host_id, parent_id, mode, state, comment, size_bytes, \
             host_snapshot_id, created_at, updated_at, retention_until, last_error, tenant_id, kind, \
             layer_key, arch, digest, metadata) \
             VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18,$19,$20)",
        )
        .bind(s.id.as_str())
        .bind(s.vm_id.as_str())
        .bind(s.task_id.as_str())
        .bind(s.host_id.as_ref().map(HostId::as_str))
        .bind(s.parent_id.as_ref().map(SnapshotId::as_str))
        .bind(&s.mode)
        .bind(s.state.as_str())
        .bind(&s.comment)
        .bind(s.size_bytes as i64)
        .bind(&s.host_snapshot_id)
        .bind(s.created_at)
        .bind(s.updated_at)
        .bind(s.retention_until)
        .bind(&s.last_error)
        .bind(&s.tenant_id)
        .bind(&s.kind)
        .bind(&s.layer_key)
        .bind(&s.arch)
        .bind(&s.digest)
        .bind(to_json(&s.metadata)?)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        audit(
            &mut tx,
            &AuditEvent {
                entity_kind: "snapshot",
                entity_id: s.id.to_string(),
                event_type: "created".into(),
                payload: serde_json::json!({"vm_id": s.vm_id.as_str(), "mode": s.mode}),
            },
        )
        .await?;
        tx.commit().await.map_err(db_err)?;
        Ok(())
    }

    async fn snapshot_get(&self, id: &SnapshotId) -> Result<Option<SnapshotRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM snapshots WHERE id = $1")
            .bind(id.as_str())
            .fetch_optional(self.ready()?)
            .await
            .map_err(db_err)?;
        row.map(|r| rows::snapshot(&r)).transpose()
    }

    async fn snapshot_list(
        &self,
        filter: &SnapshotFilter,
    ) -> Result<Vec<SnapshotRecord>, StoreError> {
        let rs = sqlx::query(
            "SELECT * FROM snapshots WHERE ($1::text IS NULL OR vm_id = $1) \
             AND ($2::text IS NULL OR task_id = $2) AND ($3::text IS NULL OR state = $3) \
             AND ($4::text IS NULL OR layer_key = $4) AND ($5::text IS NULL OR arch = $5) \
             AND ($6::text IS NULL OR tenant_id = $6) \
             ORDER BY created_at DESC, id",
        )
        .bind(filter.vm_id.as_deref())
        .bind(filter.task_id.as_deref())
        .bind(filter.state.map(SnapshotState::as_str))
        .bind(filter.layer_key.as_deref())
        .bind(filter.arch.as_deref())
        .bind(filter.tenant_id.as_deref())
        .fetch_all(self.ready()?)
        .await
        .map_err(db_err)?;
        rs.iter().map(rows::snapshot).collect()
    }

    async fn snapshot_update(
        &self,
        id: &SnapshotId,
        patch: SnapshotPatch,
    ) -> Result<SnapshotRecord, StoreError> {
        let mut tx = self.ready()?.begin().await.map_err(db_err)?;
        let row = sqlx::query("SELECT * FROM snapshots WHERE id = $1 FOR UPDATE")
            .bind(id.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err)?
            .ok_or_else(|| StoreError::NotFound {
                kind: "snapshot",
                id: id.to_string(),
            })?;
        let mut s = rows::snapshot(&row)?;
        let from = s.state;
        apply_snapshot_patch(&mut s, patch, now());
        sqlx::query(
            "UPDATE snapshots SET state = $2, size_bytes = $3, host_snapshot_id = $4, last_error = $5, \
             updated_at = $6, mode = $7, kind = $8, digest = $9 WHERE id = $1",
        )
        .bind(id.as_str())
        .bind(s.state.as_str())
        .bind(s.size_bytes as i64)
        .bind(&s.host_snapshot_id)
        .bind(&s.last_error)
        .bind(s.updated_at)
        .bind(&s.mode)
        .bind(&s.kind)
        .bind(&s.digest)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        if from != s.state {
            audit(
                &mut tx,
                &AuditEvent {
                    entity_kind: "snapshot",
                    entity_id: id.to_string(),
                    event_type: "state".into(),
                    payload: serde_json::json!({"from": from.as_str(), "to": s.state.as_str()}),
                },
            )
            .await?;
        }
        tx.commit().await.map_err(db_err)?;
        Ok(s)
    }

    async fn snapshot_begin_delete(&self, id: &SnapshotId) -> Result<SnapshotRecord, StoreError> {
        let mut tx = self.ready()?.begin().await.map_err(db_err)?;
        // FOR UPDATE conflicts with the key-share lock a child's foreign key takes, so a
        // child cannot be added between the count and the state change.
        let row = sqlx::query("SELECT * FROM snapshots WHERE id = $1 FOR UPDATE")
            .bind(id.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err)?
            .ok_or_else(|| StoreError::NotFound {
                kind: "snapshot",
                id: id.to_string(),
            })?;
        let before = rows::snapshot(&row)?;
        let children: i64 =
            sqlx::query_scalar("SELECT count(*) FROM snapshots WHERE parent_id = $1")
                .bind(id.as_str())
                .fetch_one(&mut *tx)
                .await
                .map_err(db_err)?;
        if children > 0 {
            return Err(StoreError::HasChildren {
                id: id.to_string(),
                children: children as u64,
            });
        }
        // A template's foreign key takes a key-share lock on this row, so none can be added
        // between this check and the state change either.
        if let Some(t) = self.snapshot_template(&mut tx, id).await? {
            return Err(crate::snapshot_in_use(id, &t));
        }
        sqlx::query("UPDATE snapshots SET state = 'deleting', updated_at = now() WHERE id = $1")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        audit(
            &mut tx,
            &AuditEvent {
                entity_kind: "snapshot",
                entity_id: id.to_string(),
                event_type: "state".into(),
                payload: serde_json::json!({"from": before.state.as_str(), "to": "deleting"}),
            },
        )
        .await?;
        tx.commit().await.map_err(db_err)?;
        Ok(before)
    }

    async fn snapshot_remove(&self, id: &SnapshotId) -> Result<(), StoreError> {
        let mut tx = self.ready()?.begin().await.map_err(db_err)?;
        if let Some(t) = self.snapshot_template(&mut tx, id).await? {
            return Err(crate::snapshot_in_use(id, &t));
        }
        let n = sqlx::query("DELETE FROM snapshots WHERE id = $1")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db_err)?
            .rows_affected();
        if n == 0 {
            return Err(StoreError::NotFound {
                kind: "snapshot",
                id: id.to_string(),
            });
        }
        audit(
            &mut tx,
            &AuditEvent {
                entity_kind: "snapshot",
                entity_id: id.to_string(),
                event_type: "deleted".into(),
                payload: serde_json::json!({}),
            },
        )
        .await?;
        tx.commit().await.map_err(db_err)?;
        Ok(())
    }

    async fn audit_append(&self, ev: AuditEvent) -> Result<(), StoreError> {
        let mut tx = self.ready()?.begin().await.map_err(db_err)?;
        audit(&mut tx, &ev).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(())
    }

    async fn audit_list(&self, entity_id: &str) -> Result<Vec<AuditRecord>, StoreError> {
        let rs = sqlx::query(
            "SELECT seq, entity_kind, entity_id, event_type, payload, at FROM events \
             WHERE entity_id = $1 ORDER BY seq",
        )
        .bind(entity_id)
        .fetch_all(self.ready()?)
        .await
        .map_err(db_err)?;
        rs.iter()
            .map(|r| {
                Ok(AuditRecord {
                    seq: r.try_get::<i64, _>("seq").map_err(db_err)? as u64,
                    entity_kind: r.try_get("entity_kind").map_err(db_err)?,
                    entity_id: r.try_get("entity_id").map_err(db_err)?,
                    event_type: r.try_get("event_type").map_err(db_err)?,
                    payload: r.try_get("payload").map_err(db_err)?,
                    at: r.try_get("at").map_err(db_err)?,
                })
            })
            .collect()
    }

    async fn dead_letter_fail(
        &self,
        kind: &str,
        entity_id: &str,
        error: &str,
    ) -> Result<u32, StoreError> {
        let n: i32 = sqlx::query_scalar(
            "INSERT INTO dead_letters (kind, entity_id, attempts, last_error) VALUES ($1, $2, 1, $3) \
             ON CONFLICT (kind, entity_id) DO UPDATE SET attempts = dead_letters.attempts + 1, \
             last_error = EXCLUDED.last_error, updated_at = now() RETURNING attempts",
        )
        .bind(kind)
        .bind(entity_id)
        .bind(error)
        .fetch_one(self.ready()?)
        .await
        .map_err(db_err)?;
        Ok(n.max(0) as u32)
    }

    async fn dead_letter_clear(&self, kind: &str, entity_id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM dead_letters WHERE kind = $1 AND entity_id = $2")
            .bind(kind)
            .bind(entity_id)
            .execute(self.ready()?)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn dead_letter_list(&self) -> Result<Vec<DeadLetter>, StoreError> {
        let rs = sqlx::query(
            "SELECT kind, entity_id, attempts, last_error, created_at, updated_at \
             FROM dead_letters ORDER BY created_at, kind, entity_id",
        )
        .fetch_all(self.ready()?)
        .await
        .map_err(db_err)?;
        rs.iter()
            .map(|r| {
                Ok(DeadLetter {
                    kind: r.try_get("kind").map_err(db_err)?,
                    entity_id: r.try_get("entity_id").map_err(db_err)?,
                    attempts: r.try_get::<i32, _>("attempts").map_err(db_err)?.max(0) as u32,
                    last_error: r.try_get("last_error").map_err(db_err)?,
                    created_at: r.try_get("created_at").map_err(db_err)?,
                    updated_at: r.try_get("updated_at").map_err(db_err)?,
                })
            })
            .collect()
    }

    async fn replica_register(&self, replica_id: &str) -> Result<(), StoreError> {
        let mut s = self.session.lock().await;
        s.replica = Some(replica_id.to_owned());
        s.conn = None;
        s.leader = false;
        self.session_ensure(&mut s).await
    }

    async fn replica_alive(&self, replica_id: &str) -> Result<bool, StoreError> {
        // Someone holds the replica's lock exactly while that replica's session lives.
        let mut conn = self.ready()?.acquire().await.map_err(db_err)?;
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, hashtext($2))")
            .bind(LOCK_REPLICA)
            .bind(replica_id)
            .fetch_one(&mut *conn)
            .await
            .map_err(db_err)?;
        if got {
            sqlx::query("SELECT pg_advisory_unlock($1, hashtext($2))")
                .bind(LOCK_REPLICA)
                .bind(replica_id)
                .execute(&mut *conn)
                .await
                .map_err(db_err)?;
        }
        Ok(!got)
    }

    async fn leader_acquire(&self) -> Result<bool, StoreError> {
        self.ready()?;
        let mut s = self.session.lock().await;
        self.session_ensure(&mut s).await?;
        if s.leader {
            return Ok(true);
        }
        let conn = s
            .conn
            .as_mut()
            .ok_or_else(|| StoreError::Unavailable("no session".into()))?;
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, 1)")
            .bind(LOCK_LEADER)
            .fetch_one(&mut *conn)
            .await
            .map_err(db_err)?;
        s.leader = got;
        Ok(got)
    }

    async fn notify(&self, payloads: &[String]) -> Result<(), StoreError> {
        // One round trip for a batch; NOTIFY delivers in order within a transaction.
        sqlx::query(
            "SELECT pg_notify($1, p) FROM unnest($2::text[]) WITH ORDINALITY AS t(p, n) ORDER BY n",
        )
        .bind(CHANNEL)
        .bind(payloads)
        .execute(self.ready()?)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn listen(&self) -> Result<Option<tokio::sync::mpsc::Receiver<String>>, StoreError> {
        let mut listener = PgListener::connect_with(self.ready()?)
            .await
            .map_err(db_err)?;
        listener.listen(CHANNEL).await.map_err(db_err)?;
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        tokio::spawn(async move {
            loop {
                // `recv` reconnects and re-subscribes by itself after a lost connection.
                match listener.recv().await {
                    Ok(n) => {
                        if tx.send(n.payload().to_owned()).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "event listener lost Postgres; retrying");
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                }
            }
        });
        Ok(Some(rx))
    }
}
