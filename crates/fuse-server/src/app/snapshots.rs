//! Snapshots of running (or draining) environments (DESIGN §3): create, list, restore into
//! the same VM, delete (refused while children exist) and retention GC. A snapshot's parent
//! is the snapshot its VM was last restored from, so a chain of restores forms a tree.
//! Snapshots are allowed while draining, so "drain, then snapshot the result" works.

use super::error::AppError;
use super::lifecycle::{Change, LifecycleError};
use super::App;
use fuse_store::{SnapshotFilter, SnapshotPatch, SnapshotRecord};
use fuse_types::lifecycle::Event;
use fuse_types::{now, CreateSnapshot, SnapshotId, SnapshotList, SnapshotState, VmState};
use rand::RngCore;
use std::time::Instant;

fn parse_snapshot_id(id: &str) -> Result<SnapshotId, AppError> {
    SnapshotId::parse(id).map_err(|e| AppError::invalid(e.0))
}

/// What a snapshot of `mode` holds: `live` (memory too) or `disk`.
fn kind_of(mode: &str) -> &'static str {
    if mode == "full" {
        "live"
    } else {
        "disk"
    }
}

/// Sort key of the newest-first order (`created_at` descending, then id).
fn newest_first_key(s: &SnapshotRecord) -> String {
    let nanos = s
        .created_at
        .unix_timestamp_nanos()
        .clamp(0, i128::from(u64::MAX)) as u64;
    format!("{:020}:{}", u64::MAX - nanos, s.id)
}

/// Whether a VM in `state` can be snapshotted or restored into (its guest runs).
fn serving(state: VmState) -> bool {
    matches!(state, VmState::Running | VmState::Draining)
}

impl App {
    /// Takes a snapshot of a running environment, filed under `tenant` (the API key it was
    /// asked with; empty for the master token).
    pub async fn snapshot_create(
        &self,
        vm_id: &str,
        req: CreateSnapshot,
        tenant: &str,
    ) -> Result<SnapshotRecord, AppError> {
        let mut errs = Vec::new();
        let live = req.live.unwrap_or(false);
        let mode = req
            .mode
            .clone()
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| if live { "full" } else { "disk" }.into());
        if mode != "disk" && mode != "full" {
            errs.push(format!("mode must be disk or full (got {mode:?})"));
        }
        if live && mode == "disk" {
            errs.push("live: true captures memory; it cannot be combined with mode disk".into());
        }
        let layer_key = req.layer_key.clone().unwrap_or_default();
        if layer_key.len() > 256 {
            errs.push("layer_key must be at most 256 bytes".into());
        }
        let metadata = req.metadata.clone().unwrap_or_default();
        if metadata.len() > 64
            || metadata
                .iter()
                .any(|(k, v)| k.is_empty() || k.len() > 128 || v.len() > 1024)
        {
            errs.push(
                "metadata: at most 64 pairs, keys 1-128 bytes, values at most 1024 bytes".into(),
            );
        }
        if req.export_ref.as_deref().is_some_and(|e| !e.is_empty()) {
            errs.push("export_ref: snapshot exports are not offered by this control plane".into());
        }
        let comment = req.comment.clone().unwrap_or_default();
        if comment.len() > 1024 {
            errs.push("comment must be at most 1024 bytes".into());
        }
        let retention = req
            .retention_seconds
            .unwrap_or(self.config.snapshot_retention.as_secs());
        if retention > 10 * 365 * 86_400 {
            errs.push("retention_seconds must be at most ten years".into());
        }
        if !errs.is_empty() {
            return Err(AppError::Invalid(errs));
        }
        let vm = self.env_get(vm_id).await?;
        let arch = match &vm.host_id {
            Some(h) => self
                .store
                .host_get(h)
                .await?
                .map(|h| h.arch_or_default().to_owned())
                .unwrap_or_else(|| "amd64".into()),
            None => "amd64".into(),
        };
        if !serving(vm.state) {
            return Err(AppError::conflict(format!(
                "environment {} is {}; only a running or draining environment can be snapshotted",
                vm.id, vm.state
            )));
        }
        // The snapshot the VM was restored from is its parent, unless it has been deleted
        // since (then the new snapshot starts a new tree).
        let parent_id = match &vm.restored_from {
            Some(p) => self.store.snapshot_get(p).await?.map(|s| s.id),
            None => None,
        };
        let mut b = [0u8; 12];
        rand::thread_rng().fill_bytes(&mut b);
        let id = SnapshotId::from_hex(&hex::encode(b));
        let at = now();
        let rec = SnapshotRecord {
            id: id.clone(),
            vm_id: vm.id.clone(),
            task_id: vm.task_id.clone(),
            tenant_id: tenant.to_owned(),
            host_id: vm.host_id.clone(),
            parent_id,
            mode: mode.clone(),
            kind: kind_of(&mode).into(),
            layer_key,
            arch,
            digest: String::new(),
            metadata,
            state: SnapshotState::Creating,
            comment,
            size_bytes: 0,
            host_snapshot_id: String::new(),
            created_at: at,
            updated_at: at,
            retention_until: Some(at + time::Duration::seconds(retention as i64)),
            last_error: None,
        };
        let provider = self.provider_of(&vm).await?;
        self.store.snapshot_insert(rec).await?;
        let started = Instant::now();
        match provider
            .snapshot_create(vm.id.as_str(), id.as_str(), &mode)
            .await
        {
            Ok(s) if live && !s.mode.is_empty() && s.mode != "full" => {
                // The host wrote the disk alone: a live snapshot is not what was asked for.
                let _ = provider
                    .snapshot_delete(vm.id.as_str(), &s.snapshot_id)
                    .await;
                self.store.snapshot_remove(&id).await?;
                Err(AppError::Unimplemented(format!(
                    "live snapshots (memory and device state) need a host whose backend \
                     captures memory (qemu, firecracker); host {} runs the {} backend, which \
                     keeps the disk alone: leave live unset for a disk snapshot",
                    vm.host_id.as_ref().map(|h| h.as_str()).unwrap_or("?"),
                    self.host_backend(&vm).await
                )))
            }
            Ok(s) => {
                self.metrics
                    .snapshot_duration
                    .observe(started.elapsed().as_secs_f64());
                Ok(self
                    .store
                    .snapshot_update(
                        &id,
                        SnapshotPatch {
                            state: Some(SnapshotState::Ready),
                            size_bytes: Some(s.size_bytes),
                            host_snapshot_id: Some(s.snapshot_id),
                            last_error: Some(None),
                            // What the host wrote is what counts (QEMU: always memory + disk).
                            kind: Some(
                                kind_of(if s.mode.is_empty() { &mode } else { &s.mode }).into(),
                            ),
                            mode: (!s.mode.is_empty()).then_some(s.mode),
                            digest: (!s.digest.is_empty()).then_some(s.digest),
                        },
                    )
                    .await?)
            }
            Err(e) => {
                self.store
                    .snapshot_update(
                        &id,
                        SnapshotPatch {
                            state: Some(SnapshotState::Error),
                            last_error: Some(Some(e.client_message())),
                            ..SnapshotPatch::default()
                        },
                    )
                    .await?;
                Err(e.into())
            }
        }
    }

    /// The backend name of the environment's host, as it reports it (for messages).
    async fn host_backend(&self, vm: &fuse_store::VmRecord) -> String {
        match self.provider_of(vm).await {
            Ok(p) => p
                .health()
                .await
                .map(|h| h.backend)
                .unwrap_or_else(|_| "unknown".into()),
            Err(_) => "unknown".into(),
        }
    }

    /// Reads one snapshot or 404.
    pub async fn snapshot_get(&self, id: &str) -> Result<SnapshotRecord, AppError> {
        let id = parse_snapshot_id(id)?;
        self.store
            .snapshot_get(&id)
            .await?
            .ok_or_else(|| AppError::not_found("snapshot", &id))
    }

    /// Snapshots matching `filter`, newest first.
    pub async fn snapshot_list(
        &self,
        filter: SnapshotFilter,
    ) -> Result<Vec<SnapshotRecord>, AppError> {
        Ok(self.store.snapshot_list(&filter).await?)
    }

    /// One page of snapshots matching `filter`, newest first.
    pub async fn snapshot_page(
        &self,
        filter: SnapshotFilter,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<SnapshotList, AppError> {
        let all = self.store.snapshot_list(&filter).await?;
        let (page, next_cursor) = super::paging::page(all, newest_first_key, limit, cursor)?;
        Ok(SnapshotList {
            snapshots: page.iter().map(SnapshotRecord::to_wire).collect(),
            next_cursor,
        })
    }

    /// The newest ready snapshot with this build-layer key and architecture, in the
    /// caller's tenant. A miss is `None`, not an error.
    pub async fn snapshot_resolve(
        &self,
        layer_key: &str,
        arch: &str,
        tenant: &str,
    ) -> Result<Option<SnapshotRecord>, AppError> {
        let mut errs = Vec::new();
        if layer_key.is_empty() {
            errs.push("query parameter layer_key is required".to_owned());
        }
        if arch.is_empty() {
            errs.push("query parameter arch is required (amd64, arm64, …)".to_owned());
        }
        if !errs.is_empty() {
            return Err(AppError::Invalid(errs));
        }
        let filter = SnapshotFilter {
            layer_key: Some(layer_key.to_owned()),
            arch: Some(arch.to_owned()),
            tenant_id: Some(tenant.to_owned()),
            state: Some(SnapshotState::Ready),
            ..SnapshotFilter::default()
        };
        Ok(self.store.snapshot_list(&filter).await?.into_iter().next())
    }

    /// Restores a ready snapshot into its (running) environment.
    pub async fn snapshot_restore(&self, id: &str) -> Result<(), AppError> {
        let snap = self.snapshot_get(id).await?;
        if snap.state != SnapshotState::Ready {
            return Err(AppError::conflict(format!(
                "snapshot {} is {}; only a ready snapshot can be restored",
                snap.id, snap.state
            )));
        }
        let vm = self.env_get(snap.vm_id.as_str()).await?;
        if !serving(vm.state) {
            return Err(AppError::conflict(format!(
                "environment {} is {}; snapshots restore only into a running or draining environment",
                vm.id, vm.state
            )));
        }
        let provider = self.provider_of(&vm).await?;
        self.store
            .snapshot_update(
                &snap.id,
                SnapshotPatch {
                    state: Some(SnapshotState::Restoring),
                    ..SnapshotPatch::default()
                },
            )
            .await?;
        let host_id = if snap.host_snapshot_id.is_empty() {
            snap.id.to_string()
        } else {
            snap.host_snapshot_id.clone()
        };
        let result = provider.snapshot_restore(vm.id.as_str(), &host_id).await;
        let patch = SnapshotPatch {
            state: Some(SnapshotState::Ready),
            last_error: Some(result.as_ref().err().map(|e| e.client_message())),
            ..SnapshotPatch::default()
        };
        self.store.snapshot_update(&snap.id, patch).await?;
        result?;
        let change = Change::new(Event::Restored).restored_from(snap.id.clone());
        match self.transition_latest(&vm.id, change).await {
            // Deleted or stopped meanwhile: the restore is moot.
            Ok(_) | Err(LifecycleError::Illegal { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes a snapshot; 409 while it has children.
    pub async fn snapshot_delete(&self, id: &str) -> Result<(), AppError> {
        let sid = parse_snapshot_id(id)?;
        let before = self.store.snapshot_begin_delete(&sid).await?;
        let host_id = if before.host_snapshot_id.is_empty() {
            before.id.to_string()
        } else {
            before.host_snapshot_id.clone()
        };
        // The snapshot's files live on its host, beyond its VM's life: the host deletes
        // them (one it no longer knows is already gone).
        let result = match &before.host_id {
            Some(h) => match self.providers.for_host(&*self.store, h).await {
                Ok(p) => match p.snapshot_delete(before.vm_id.as_str(), &host_id).await {
                    Err(crate::provider::ProviderError::NotFound(_)) => Ok(()),
                    r => r,
                },
                Err(e) => Err(e),
            },
            _ => Ok(()),
        };
        if let Err(e) = result {
            self.store
                .snapshot_update(
                    &sid,
                    SnapshotPatch {
                        state: Some(SnapshotState::Error),
                        last_error: Some(Some(format!("delete failed: {}", e.client_message()))),
                        ..SnapshotPatch::default()
                    },
                )
                .await?;
            return Err(e.into());
        }
        self.store.snapshot_remove(&sid).await?;
        Ok(())
    }

    /// Deletes snapshots past their retention that have no children; returns how many.
    pub async fn snapshot_gc(&self) -> Result<u64, AppError> {
        let at = self.clock.now();
        let all = self.store.snapshot_list(&SnapshotFilter::default()).await?;
        let mut n = 0;
        for s in all {
            let expired = s.retention_until.is_some_and(|r| r < at);
            if !expired || !matches!(s.state, SnapshotState::Ready | SnapshotState::Error) {
                continue;
            }
            match self.snapshot_delete(s.id.as_str()).await {
                Ok(()) => n += 1,
                Err(AppError::Store(fuse_store::StoreError::HasChildren { .. })) => {}
                Err(e) => tracing::warn!(snapshot_id = %s.id, error = %e, "snapshot gc"),
            }
        }
        Ok(n)
    }
}
