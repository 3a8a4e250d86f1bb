//! Row ↔ record mapping and the sealing of secrets.

use super::db_err;
use crate::crypto::Cipher;
use crate::{HostRecord, SnapshotRecord, StoreError, VmRecord, VmSecrets};
use fuse_types::{HostId, Resources, SnapshotId, TaskId, VmId};
use sqlx::postgres::PgRow;
use sqlx::Row;

fn bad(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(format!("corrupt {what}: {e}"))
}

pub(super) fn json<T: serde::de::DeserializeOwned>(
    v: serde_json::Value,
    what: &str,
) -> Result<T, StoreError> {
    serde_json::from_value(v).map_err(|e| bad(what, e))
}

pub(super) fn seal_secrets(cipher: Option<&Cipher>, s: Option<&VmSecrets>) -> Option<Vec<u8>> {
    let (c, s) = (cipher?, s?);
    let plain = serde_json::to_vec(s).ok()?;
    Some(c.seal(&plain))
}

fn open_secrets(cipher: Option<&Cipher>, sealed: Option<Vec<u8>>, id: &str) -> Option<VmSecrets> {
    let (c, sealed) = (cipher?, sealed?);
    match c.open(&sealed) {
        Ok(plain) => serde_json::from_slice(&plain).ok(),
        Err(e) => {
            tracing::warn!(vm_id = id, error = %e, "cannot open stored secrets (wrong TOKEN_ENCRYPTION_KEY?)");
            None
        }
    }
}

pub(super) fn seal_token(cipher: Option<&Cipher>, token: &str) -> Option<Vec<u8>> {
    cipher.map(|c| c.seal(token.as_bytes()))
}

pub(super) fn vm(row: &PgRow, cipher: Option<&Cipher>) -> Result<VmRecord, StoreError> {
    let g = |e: sqlx::Error| db_err(e);
    let id: String = row.try_get("id").map_err(g)?;
    let task: String = row.try_get("task_id").map_err(g)?;
    let state: String = row.try_get("state").map_err(g)?;
    let host: Option<String> = row.try_get("host_id").map_err(g)?;
    let reserved: Option<serde_json::Value> = row.try_get("reserved").map_err(g)?;
    let restored: Option<String> = row.try_get("restored_from").map_err(g)?;
    let generation: i64 = row.try_get("generation").map_err(g)?;
    Ok(VmRecord {
        id: VmId::parse(&id).map_err(|e| bad("vm id", e))?,
        task_id: TaskId::parse(&task).map_err(|e| bad("task id", e))?,
        state: state.parse().map_err(|e| bad("vm state", e))?,
        generation: generation as u64,
        host_id: host
            .map(|h| HostId::parse(&h))
            .transpose()
            .map_err(|e| bad("host id", e))?,
        reserved: reserved
            .map(|r| json::<Resources>(r, "reservation"))
            .transpose()?,
        url: row.try_get("url").map_err(g)?,
        spec: json(row.try_get("spec").map_err(g)?, "spec")?,
        request_hash: row.try_get("request_hash").map_err(g)?,
        agent: json(row.try_get("agent").map_err(g)?, "agent")?,
        error: row.try_get("error").map_err(g)?,
        restored_from: restored
            .map(|s| SnapshotId::parse(&s))
            .transpose()
            .map_err(|e| bad("snapshot id", e))?,
        created_at: row.try_get("created_at").map_err(g)?,
        updated_at: row.try_get("updated_at").map_err(g)?,
        running_since: row.try_get("running_since").map_err(g)?,
        owner: row.try_get("owner").map_err(g)?,
        secrets: open_secrets(cipher, row.try_get("secrets_enc").map_err(g)?, &id),
        extras: json(row.try_get("extras").map_err(g)?, "extras")?,
    })
}

fn res(row: &PgRow, prefix: &str) -> Result<Resources, StoreError> {
    let get = |c: &str| -> Result<i64, StoreError> {
        row.try_get::<i64, _>(format!("{prefix}_{c}").as_str())
            .map_err(db_err)
    };
    Ok(Resources {
        cpus: get("cpus")?.max(0) as u32,
        ram_mb: get("ram_mb")?.max(0) as u64,
        storage_gb: get("storage_gb")?.max(0) as u64,
        vm_count: get("vm_count")?.max(0) as u32,
    })
}

pub(super) fn host(row: &PgRow, cipher: Option<&Cipher>) -> Result<HostRecord, StoreError> {
    let g = |e: sqlx::Error| db_err(e);
    let id: String = row.try_get("id").map_err(g)?;
    let sealed: Option<Vec<u8>> = row.try_get("token_enc").map_err(g)?;
    let token = match (cipher, sealed) {
        (Some(c), Some(s)) => match c.open(&s) {
            Ok(t) => String::from_utf8(t).unwrap_or_default(),
            Err(e) => {
                tracing::warn!(host_id = %id, error = %e, "cannot open stored host token (wrong TOKEN_ENCRYPTION_KEY?)");
                String::new()
            }
        },
        _ => String::new(),
    };
    let state: String = row.try_get("state").map_err(g)?;
    Ok(HostRecord {
        id: HostId::parse(&id).map_err(|e| bad("host id", e))?,
        url: row.try_get("url").map_err(g)?,
        token,
        region: row.try_get("region").map_err(g)?,
        state: state.parse().map_err(|e| bad("host state", e))?,
        state_reason: row.try_get("state_reason").map_err(g)?,
        backend: row.try_get("backend").map_err(g)?,
        arch: row.try_get("arch").map_err(g)?,
        labels: json(row.try_get("labels").map_err(g)?, "host labels")?,
        declared: json(row.try_get("declared").map_err(g)?, "declared capacity")?,
        capacity: res(row, "cap")?,
        allocated: res(row, "alloc")?,
        artifact_bytes: row.try_get::<i64, _>("artifact_bytes").map_err(g)?.max(0) as u64,
        last_seen: row.try_get("last_seen").map_err(g)?,
        created_at: row.try_get("created_at").map_err(g)?,
        updated_at: row.try_get("updated_at").map_err(g)?,
    })
}

pub(super) fn snapshot(row: &PgRow) -> Result<SnapshotRecord, StoreError> {
    let g = |e: sqlx::Error| db_err(e);
    let id: String = row.try_get("id").map_err(g)?;
    let vm: String = row.try_get("vm_id").map_err(g)?;
    let task: String = row.try_get("task_id").map_err(g)?;
    let host: Option<String> = row.try_get("host_id").map_err(g)?;
    let parent: Option<String> = row.try_get("parent_id").map_err(g)?;
    let state: String = row.try_get("state").map_err(g)?;
    let size: i64 = row.try_get("size_bytes").map_err(g)?;
    Ok(SnapshotRecord {
        id: SnapshotId::parse(&id).map_err(|e| bad("snapshot id", e))?,
        vm_id: VmId::parse(&vm).map_err(|e| bad("vm id", e))?,
        task_id: TaskId::parse(&task).map_err(|e| bad("task id", e))?,
        tenant_id: row.try_get("tenant_id").map_err(g)?,
        kind: row.try_get("kind").map_err(g)?,
        layer_key: row.try_get("layer_key").map_err(g)?,
        arch: row.try_get("arch").map_err(g)?,
        digest: row.try_get("digest").map_err(g)?,
        metadata: json(row.try_get("metadata").map_err(g)?, "snapshot metadata")?,
        host_id: host
            .map(|h| HostId::parse(&h))
            .transpose()
            .map_err(|e| bad("host id", e))?,
        parent_id: parent
            .map(|p| SnapshotId::parse(&p))
            .transpose()
            .map_err(|e| bad("snapshot id", e))?,
        mode: row.try_get("mode").map_err(g)?,
        state: state.parse().map_err(|e| bad("snapshot state", e))?,
        comment: row.try_get("comment").map_err(g)?,
        size_bytes: size.max(0) as u64,
        host_snapshot_id: row.try_get("host_snapshot_id").map_err(g)?,
        created_at: row.try_get("created_at").map_err(g)?,
        updated_at: row.try_get("updated_at").map_err(g)?,
        retention_until: row.try_get("retention_until").map_err(g)?,
        last_error: row.try_get("last_error").map_err(g)?,
    })
}

pub(super) fn api_key(row: &PgRow) -> Result<crate::ApiKeyRecord, StoreError> {
    let g = |e: sqlx::Error| db_err(e);
    let hash: Vec<u8> = row.try_get("key_hash").map_err(g)?;
    Ok(crate::ApiKeyRecord {
        id: row.try_get("id").map_err(g)?,
        label: row.try_get("label").map_err(g)?,
        hash: hash
            .try_into()
            .map_err(|_| bad("api key hash", "not 32 bytes"))?,
        created_at: row.try_get("created_at").map_err(g)?,
        last_used_at: row.try_get("last_used_at").map_err(g)?,
        revoked_at: row.try_get("revoked_at").map_err(g)?,
    })
}

pub(super) fn template(row: &PgRow) -> Result<crate::TemplateRecord, StoreError> {
    let g = |e: sqlx::Error| db_err(e);
    let snap: String = row.try_get("snapshot_id").map_err(g)?;
    let vm: Option<String> = row.try_get("source_vm_id").map_err(g)?;
    let host: String = row.try_get("host_id").map_err(g)?;
    let pool: i64 = row.try_get("pool_per_host").map_err(g)?;
    Ok(crate::TemplateRecord {
        name: row.try_get("name").map_err(g)?,
        snapshot_id: SnapshotId::parse(&snap).map_err(|e| bad("snapshot id", e))?,
        source_vm_id: vm
            .map(|v| VmId::parse(&v))
            .transpose()
            .map_err(|e| bad("vm id", e))?,
        host_id: HostId::parse(&host).map_err(|e| bad("host id", e))?,
        tenant_id: row.try_get("tenant_id").map_err(g)?,
        spec: json(row.try_get("spec").map_err(g)?, "template spec")?,
        pool_per_host: pool.clamp(0, i64::from(u32::MAX)) as u32,
        created_at: row.try_get("created_at").map_err(g)?,
        updated_at: row.try_get("updated_at").map_err(g)?,
    })
}
