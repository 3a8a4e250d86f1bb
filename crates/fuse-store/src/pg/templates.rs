//! The Postgres backend's reservation moves and templates, one transaction each.
//!
//! A move locks the VM row, then the host rows involved in id order (the order every
//! reservation path uses: VM first, then host), so two moves in opposite directions never
//! deadlock and no reservation or release on those hosts interleaves with the check.

use super::rows;
use super::store::{audit, to_json, Tx, HOST_ARTIFACTS};
use super::{db_err, PgStore};
use crate::{StoreError, TemplateRecord, VmRecord};
use fuse_types::{now, HostId, Resources, SnapshotId, VmId};

fn template_not_found(name: &str) -> StoreError {
    StoreError::NotFound {
        kind: "template",
        id: name.to_owned(),
    }
}

/// Whether a driver error is a foreign-key violation (`23503`).
fn foreign_key_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("23503"))
}

impl PgStore {
    /// [`crate::StateStore::vm_move_reservation`].
    pub(super) async fn move_reservation(
        &self,
        id: &VmId,
        expected: u64,
        host: &HostId,
        reserved: Resources,
    ) -> Result<VmRecord, StoreError> {
        let mut tx = self.ready()?.begin().await.map_err(db_err)?;
        let mut rec =
            self.vm_lock(&mut tx, id.as_str())
                .await?
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
        let from = rec.host_id.clone();
        let old = rec.reserved;
        let mut ids = vec![host.to_string()];
        if let Some(f) = from.as_ref().filter(|f| *f != host) {
            ids.push(f.to_string());
        }
        let locked = sqlx::query(&format!(
            "SELECT *, {HOST_ARTIFACTS} FROM hosts WHERE id = ANY($1) ORDER BY id FOR UPDATE OF hosts"
        ))
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?;
        let target = locked
            .iter()
            .map(|r| rows::host(r, self.cipher.as_ref()))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .find(|h| &h.id == host)
            .ok_or_else(|| StoreError::NotFound {
                kind: "host",
                id: host.to_string(),
            })?;
        let own = match (&from, old) {
            (Some(f), o) if f == host => Some(o.unwrap_or_default()),
            _ => None,
        };
        // Nothing has been written yet: an early return rolls back.
        crate::move_fits(&target, own, reserved)?;
        if let (Some(f), Some(o)) = (&from, old) {
            self.unreserve(&mut tx, f, o).await?;
        }
        sqlx::query(
            "UPDATE hosts SET alloc_cpus = alloc_cpus + $2, alloc_ram_mb = alloc_ram_mb + $3, \
             alloc_storage_gb = alloc_storage_gb + $4, alloc_vm_count = alloc_vm_count + $5, \
             updated_at = now() WHERE id = $1",
        )
        .bind(host.as_str())
        .bind(i64::from(reserved.cpus))
        .bind(reserved.ram_mb as i64)
        .bind(reserved.storage_gb as i64)
        .bind(i64::from(reserved.vm_count))
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        rec.host_id = Some(host.clone());
        rec.reserved = Some(reserved);
        rec.generation += 1;
        rec.updated_at = now();
        sqlx::query(
            "UPDATE vms SET host_id = $2, reserved = $3, generation = $4, updated_at = $5 \
             WHERE id = $1",
        )
        .bind(id.as_str())
        .bind(host.as_str())
        .bind(to_json(&reserved)?)
        .bind(rec.generation as i64)
        .bind(rec.updated_at)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        audit(
            &mut tx,
            &crate::move_event(id, from.as_ref(), host, reserved),
        )
        .await?;
        tx.commit().await.map_err(db_err)?;
        Ok(rec)
    }

    /// The name of a template that starts from the snapshot, if any.
    pub(super) async fn snapshot_template(
        &self,
        tx: &mut Tx<'_>,
        id: &SnapshotId,
    ) -> Result<Option<String>, StoreError> {
        sqlx::query_scalar(
            "SELECT name FROM templates WHERE snapshot_id = $1 ORDER BY name LIMIT 1",
        )
        .bind(id.as_str())
        .fetch_optional(&mut **tx)
        .await
        .map_err(db_err)
    }

    /// [`crate::StateStore::template_insert`].
    pub(super) async fn template_insert_tx(
        &self,
        t: TemplateRecord,
    ) -> Result<TemplateRecord, StoreError> {
        crate::template_name_check(&t.name).map_err(StoreError::Invalid)?;
        let mut tx = self.ready()?.begin().await.map_err(db_err)?;
        let inserted = sqlx::query(
            "INSERT INTO templates (name, snapshot_id, source_vm_id, host_id, tenant_id, spec, \
             pool_per_host, created_at, updated_at) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(&t.name)
        .bind(t.snapshot_id.as_str())
        .bind(t.source_vm_id.as_ref().map(VmId::as_str))
        .bind(t.host_id.as_str())
        .bind(&t.tenant_id)
        .bind(to_json(&t.spec)?)
        .bind(i64::from(t.pool_per_host))
        .bind(t.created_at)
        .bind(t.updated_at)
        .execute(&mut *tx)
        .await
        .map_err(|e| {
            if foreign_key_violation(&e) {
                StoreError::NotFound {
                    kind: "snapshot",
                    id: t.snapshot_id.to_string(),
                }
            } else {
                db_err(e)
            }
        })?
        .rows_affected();
        if inserted == 0 {
            return Err(StoreError::Exists {
                kind: "template",
                id: t.name,
            });
        }
        audit(&mut tx, &crate::template_event(&t.name, "created", &t)).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(t)
    }

    /// One template (`Some(name)`) or all of them, by name.
    pub(super) async fn template_read(
        &self,
        name: Option<&str>,
    ) -> Result<Vec<TemplateRecord>, StoreError> {
        let rs = sqlx::query(
            "SELECT * FROM templates WHERE $1::text IS NULL OR name = $1 ORDER BY name",
        )
        .bind(name)
        .fetch_all(self.ready()?)
        .await
        .map_err(db_err)?;
        rs.iter().map(rows::template).collect()
    }

    /// [`crate::StateStore::template_update_pool`].
    pub(super) async fn template_update_pool_tx(
        &self,
        name: &str,
        per_host: u32,
    ) -> Result<TemplateRecord, StoreError> {
        let mut tx = self.ready()?.begin().await.map_err(db_err)?;
        let row = sqlx::query(
            "UPDATE templates SET pool_per_host = $2, updated_at = $3 WHERE name = $1 RETURNING *",
        )
        .bind(name)
        .bind(i64::from(per_host))
        .bind(now())
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?
        .ok_or_else(|| template_not_found(name))?;
        let t = rows::template(&row)?;
        audit(&mut tx, &crate::template_event(name, "pool", &t)).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(t)
    }

    /// [`crate::StateStore::template_delete`].
    pub(super) async fn template_delete_tx(&self, name: &str) -> Result<(), StoreError> {
        let mut tx = self.ready()?.begin().await.map_err(db_err)?;
        let row = sqlx::query("SELECT * FROM templates WHERE name = $1 FOR UPDATE")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err)?
            .ok_or_else(|| template_not_found(name))?;
        let t = rows::template(&row)?;
        let users: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM vms WHERE extras ? 'template' AND extras->>'template' = $1 \
             AND state NOT IN ('destroyed', 'failed')",
        )
        .bind(name)
        .fetch_one(&mut *tx)
        .await
        .map_err(db_err)?;
        if users > 0 {
            return Err(crate::template_in_use(name, users as u64));
        }
        let n = sqlx::query("DELETE FROM templates WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?
            .rows_affected();
        if n != 1 {
            return Err(StoreError::Internal(format!(
                "deleting locked template {name} removed {n} rows"
            )));
        }
        audit(&mut tx, &crate::template_event(name, "deleted", &t)).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(())
    }
}
