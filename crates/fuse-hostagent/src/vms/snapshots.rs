//! Snapshots: taking, listing, restoring and deleting them, and where they live.
//!
//! A snapshot outlives its VM (a fork may start from the snapshot of a VM destroyed since),
//! so it is kept outside the VM's directory, in the host's snapshot store:
//! `<state>/snapshots/<vm id>/<snapshot id>/` holds the backend's files (the disk image,
//! and the memory and VM state of a full snapshot) and `snapshot.json` (mode, size, the
//! disk image's sha256), written last: a directory without it is a snapshot that was never
//! finished, removed at start. Destroying a VM leaves its snapshots; only
//! `DELETE /v1/vm/{id}/snapshots/{sid}` removes one. Snapshots taken by an older agent
//! (inside the VM's directory, listed in `vm.json`) are moved into the store when the VM is
//! adopted.

use super::{check_id, write_meta, Vm, VmError, Vms};
use fuse_guest::proto::Op;
use fuse_types::hostagent::AgentSnapshot;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The file of a snapshot's own record, inside its directory.
pub const RECORD: &str = "snapshot.json";

/// What is recorded of one snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    /// Snapshot id.
    pub snapshot_id: String,
    /// What it holds (`disk`, `full`).
    pub mode: String,
    /// Bytes used.
    #[serde(default)]
    pub size_bytes: u64,
    /// Hex sha256 of its disk image (empty for a snapshot moved from an older agent).
    #[serde(default)]
    pub digest: String,
    /// When it was taken (Unix seconds).
    #[serde(default)]
    pub created_unix: u64,
    /// What a memory restore of a full snapshot needs of the VM it was taken of (absent
    /// from a disk snapshot and from those of older agents). The record is private (0600):
    /// it holds the VM's link token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SnapshotSourceVm>,
}

/// The VM a full snapshot was taken of, as a memory restore needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotSourceVm {
    /// Its link token (what the guest helper in the snapshot's memory accepts).
    pub token: String,
    /// Its virtual CPUs (a restore keeps them).
    pub cpus: u32,
    /// Its memory in MiB (a restore keeps it).
    pub memory_mb: u64,
    /// Its guest address at the snapshot (a restored VM is given its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_ip: Option<String>,
}

impl SnapshotRecord {
    /// The wire view.
    pub fn wire(&self) -> AgentSnapshot {
        AgentSnapshot {
            snapshot_id: self.snapshot_id.clone(),
            size_bytes: self.size_bytes,
            mode: self.mode.clone(),
            digest: self.digest.clone(),
        }
    }
}

/// The host's snapshots, by VM id and snapshot id.
#[derive(Debug, Clone)]
pub struct SnapshotStore {
    root: PathBuf,
}

impl SnapshotStore {
    /// The store under `root` (`<state>/snapshots`).
    pub fn new(root: PathBuf) -> SnapshotStore {
        SnapshotStore { root }
    }

    /// The store's directory of one VM id's snapshots.
    pub fn vm_dir(&self, vm_id: &str) -> PathBuf {
        self.root.join(vm_id)
    }

    /// The directory of one snapshot's files.
    pub fn dir(&self, vm_id: &str, sid: &str) -> PathBuf {
        self.root.join(vm_id).join(sid)
    }

    /// One snapshot's record, if it was finished.
    pub fn get(&self, vm_id: &str, sid: &str) -> Option<SnapshotRecord> {
        let body = std::fs::read(self.dir(vm_id, sid).join(RECORD)).ok()?;
        serde_json::from_slice(&body).ok()
    }

    /// The finished snapshots of a VM id, by id; `None` when the store has none for it.
    pub fn list(&self, vm_id: &str) -> Option<Vec<SnapshotRecord>> {
        let rd = std::fs::read_dir(self.root.join(vm_id)).ok()?;
        let mut v: Vec<SnapshotRecord> = rd
            .flatten()
            .filter_map(|e| self.get(vm_id, e.file_name().to_str()?))
            .collect();
        v.sort_by(|a, b| a.snapshot_id.cmp(&b.snapshot_id));
        Some(v)
    }

    /// Every finished snapshot in the store, as `(vm id, record)`, by VM id then id.
    pub fn all(&self) -> Vec<(String, SnapshotRecord)> {
        let mut vms: Vec<String> = std::fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .collect();
        vms.sort();
        vms.into_iter()
            .flat_map(|vm| {
                self.list(&vm)
                    .unwrap_or_default()
                    .into_iter()
                    .map(move |r| (vm.clone(), r))
            })
            .collect()
    }

    fn write(&self, vm_id: &str, r: &SnapshotRecord) -> Result<(), VmError> {
        // Plain data always serialises.
        let body = serde_json::to_vec_pretty(r).unwrap_or_default();
        crate::files::write_private_atomic(&self.dir(vm_id, &r.snapshot_id).join(RECORD), &body)
            .map_err(VmError::state("saving the snapshot record"))
    }

    /// Removes one snapshot (and its VM's directory in the store once empty); whether it
    /// was there.
    pub(super) async fn remove(&self, vm_id: &str, sid: &str) -> Result<bool, VmError> {
        let dir = self.dir(vm_id, sid);
        let existed = match tokio::fs::remove_dir_all(&dir).await {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(VmError::state("removing the snapshot")(e)),
        };
        // Fails while other snapshots of the VM remain: that is the point.
        let _ = tokio::fs::remove_dir(self.root.join(vm_id)).await;
        Ok(existed)
    }

    /// At start: removes snapshots that were never finished (no record). Returns how many.
    pub fn clean_partial(&self) -> usize {
        let mut n = 0;
        for vm in std::fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
        {
            for s in std::fs::read_dir(vm.path()).into_iter().flatten().flatten() {
                let p = s.path();
                if !p.join(RECORD).is_file() {
                    tracing::info!(snapshot = %p.display(), "removing an unfinished snapshot");
                    let _ = std::fs::remove_dir_all(&p);
                    n += 1;
                }
            }
            let _ = std::fs::remove_dir(vm.path());
        }
        n
    }

    /// Moves the snapshots an older agent kept in the VM's directory (`legacy`: id → mode)
    /// into the store.
    pub fn adopt_legacy(&self, vm_id: &str, vm_dir: &Path, legacy: &BTreeMap<String, String>) {
        for (sid, mode) in legacy {
            let (from, to) = (vm_dir.join("snapshots").join(sid), self.dir(vm_id, sid));
            let moved = crate::files::create_private_dir(&self.root.join(vm_id))
                .and_then(|()| std::fs::rename(&from, &to));
            let record = SnapshotRecord {
                snapshot_id: sid.clone(),
                mode: mode.clone(),
                ..SnapshotRecord::default()
            };
            match moved
                .map_err(VmError::state("moving"))
                .and_then(|()| self.write(vm_id, &record))
            {
                Ok(()) => {
                    tracing::info!(vm_id, snapshot_id = %sid, "moved a snapshot into the store")
                }
                Err(e) => {
                    tracing::warn!(vm_id, snapshot_id = %sid, error = %crate::error_chain(&e), "moving a snapshot into the store")
                }
            }
        }
    }
}

/// Hex sha256 of the file at `p`, streamed. Holes of a sparse image are hashed as the
/// zeros they read as without being read (`SEEK_DATA`/`SEEK_HOLE`).
pub fn sha256_file(p: &Path) -> std::io::Result<String> {
    use nix::unistd::{lseek, Whence};
    use std::io::{Read as _, Seek as _, SeekFrom};
    use std::os::fd::AsRawFd as _;
    let mut f = std::fs::File::open(p)?;
    let len = f.metadata()?.len();
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let zeros = vec![0u8; 1 << 20];
    let fd = f.as_raw_fd();
    let mut pos: u64 = 0;
    while pos < len {
        // The next data at or after `pos` (ENXIO: only a hole is left).
        let data = match lseek(fd, pos as i64, Whence::SeekData) {
            Ok(d) => d as u64,
            Err(nix::errno::Errno::ENXIO) => len,
            // A filesystem without SEEK_DATA: everything is data.
            Err(_) => pos,
        };
        let mut hole = data - pos;
        while hole > 0 {
            let n = hole.min(zeros.len() as u64) as usize;
            h.update(&zeros[..n]);
            hole -= n as u64;
        }
        pos = data;
        if pos >= len {
            break;
        }
        let end = match lseek(fd, pos as i64, Whence::SeekHole) {
            Ok(e) => (e as u64).min(len),
            Err(_) => len,
        };
        f.seek(SeekFrom::Start(pos))?;
        let mut left = end - pos;
        while left > 0 {
            let want = left.min(buf.len() as u64) as usize;
            let n = f.read(&mut buf[..want])?;
            if n == 0 {
                // Shorter than its length said (truncated meanwhile): hash what there is.
                return Ok(hex::encode(h.finalize()));
            }
            h.update(&buf[..n]);
            left -= n as u64;
        }
        pos = end;
    }
    Ok(hex::encode(h.finalize()))
}

impl Vms {
    /// Every snapshot in the host's store, whatever its VM (`GET /v1/snapshots`).
    pub fn snapshots_all(&self) -> Vec<fuse_types::hostagent::AgentSnapshotRef> {
        self.snaps
            .all()
            .into_iter()
            .map(|(vm_id, r)| fuse_types::hostagent::AgentSnapshotRef {
                vm_id,
                snapshot: r.wire(),
            })
            .collect()
    }

    /// The host's snapshot store.
    pub fn snapshot_store(&self) -> &SnapshotStore {
        &self.snaps
    }

    /// Bytes the snapshot store and the paused VMs' artifacts use (`/healthz`).
    pub fn artifact_bytes(&self) -> u64 {
        let snaps: u64 = std::fs::read_dir(&self.snaps.root)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter_map(|vm| self.snaps.list(&vm))
            .flatten()
            .map(|r| r.size_bytes)
            .sum();
        let paused: u64 = self
            .map
            .read()
            .values()
            .filter_map(|v| v.meta.read().paused.as_ref().map(|p| p.size_bytes))
            .sum();
        snaps + paused
    }

    /// Takes a snapshot of the VM (its disk, and its memory where the backend captures
    /// it), with the sha256 of its disk image.
    pub async fn snapshot(
        &self,
        id: &str,
        sid: &str,
        mode: &str,
    ) -> Result<AgentSnapshot, VmError> {
        check_id(sid)?;
        let vm = self.get(id)?;
        let _permit = vm.admit()?;
        let _l = vm.lifecycle.lock().await;
        if !self.still_current(id, &vm) {
            return Err(VmError::NotFound(format!("vm {id}")));
        }
        if vm.meta.read().paused.is_some() {
            return Err(VmError::Conflict(format!(
                "vm {id} is paused; resume it before a snapshot"
            )));
        }
        let dest = self.snaps.dir(id, sid);
        let _ = tokio::fs::remove_dir_all(&dest).await;
        crate::files::create_private_dir(&dest)
            .map_err(VmError::state("creating the snapshot directory"))?;
        let taken = self.snapshot_files(&vm, id, sid, &dest, mode).await;
        match taken {
            Ok(record) => {
                self.snaps.write(id, &record)?;
                Ok(record.wire())
            }
            Err(e) => {
                let _ = self.snaps.remove(id, sid).await;
                Err(e)
            }
        }
    }

    async fn snapshot_files(
        &self,
        vm: &Vm,
        id: &str,
        sid: &str,
        dest: &Path,
        mode: &str,
    ) -> Result<SnapshotRecord, VmError> {
        if self.backend.capabilities().guest_page_cache {
            // A real guest: flush its page cache so the disk copy is consistent on its own.
            let sync = Op::Exec {
                cmd: vec!["sync".into()],
                shell: None,
                env: BTreeMap::new(),
                cwd: None,
                timeout_ms: Some(30_000),
                stream: false,
                stdin_b64: None,
                window: None,
            };
            if let Err(e) = vm.guest(sync, Duration::from_secs(40)).await {
                tracing::warn!(vm_id = %id, error = %e, "sync before the snapshot failed");
            }
        }
        let pid = vm.meta.read().pid;
        let size = self
            .backend
            .snapshot(&vm.dir, pid, dest)
            .await
            .map_err(VmError::backend("taking the snapshot"))?;
        let disk = self.backend.snapshot_disk(dest);
        let started = std::time::Instant::now();
        let digest = tokio::task::spawn_blocking(move || sha256_file(&disk))
            .await
            .map_err(|e| VmError::state("hashing the snapshot's disk")(std::io::Error::other(e)))?
            .map_err(VmError::state("hashing the snapshot's disk"))?;
        tracing::info!(vm_id = %id, size, hash_ms = started.elapsed().as_millis() as u64, "snapshot taken");
        let mode = self.backend.snapshot_mode(mode);
        let source = (mode == "full").then(|| {
            let m = vm.meta.read();
            SnapshotSourceVm {
                token: m.token.clone(),
                cpus: m.cpus,
                memory_mb: m.memory_mb,
                guest_ip: m.net.as_ref().map(|n| n.guest_ip.to_string()),
            }
        });
        Ok(SnapshotRecord {
            snapshot_id: sid.to_owned(),
            mode,
            size_bytes: size,
            digest,
            created_unix: super::now_unix(),
            source,
        })
    }

    /// The snapshots of a VM id, whether the VM still exists or not (404 only when neither
    /// the VM nor any snapshot of it does).
    pub fn snapshots(&self, id: &str) -> Result<Vec<AgentSnapshot>, VmError> {
        match self.snaps.list(id) {
            Some(v) => Ok(v.iter().map(SnapshotRecord::wire).collect()),
            None => self.get(id).map(|_| Vec::new()),
        }
    }

    /// Restores a snapshot into its VM.
    pub async fn restore(&self, id: &str, sid: &str) -> Result<(), VmError> {
        check_id(sid)?;
        let vm = self.get(id)?;
        let _permit = vm.admit()?;
        let _l = vm.lifecycle.lock().await;
        if !self.still_current(id, &vm) {
            return Err(VmError::NotFound(format!("vm {id}")));
        }
        if self.snaps.get(id, sid).is_none() {
            return Err(VmError::NotFound(format!("snapshot {sid}")));
        }
        if vm.meta.read().paused.is_some() {
            return Err(VmError::Conflict(format!(
                "vm {id} is paused; resume it before a restore"
            )));
        }
        let pid = vm.meta.read().pid;
        let replaced = self
            .backend
            .restore(&vm.dir, pid, &self.snaps.dir(id, sid))
            .await
            .map_err(VmError::backend("restoring the snapshot"))?;
        if let Some(b) = replaced {
            // A new VMM process runs the restored VM: record it, reconnect, wait for the
            // guest helper (restored with the memory) to answer again.
            let meta = {
                let mut m = vm.meta.write();
                m.pid = b.pid;
                m.clone()
            };
            write_meta(&vm.dir, &meta)?;
            vm.link.reset().await;
            vm.link
                .wait_ready(&meta.token, self.opts.boot_timeout, || {
                    crate::backend::pid_running(b.pid)
                })
                .await
                .map_err(|e| {
                    VmError::RestoreFailed(format!(
                        "the restored VM did not answer ({e}); log: {}",
                        super::log_tail(&vm.dir)
                    ))
                })?;
            tracing::info!(vm_id = %id, snapshot_id = %sid, pid = b.pid, "snapshot restored");
        }
        Ok(())
    }

    /// Deletes a snapshot (idempotent), whether its VM still exists or not.
    pub async fn snapshot_delete(&self, id: &str, sid: &str) -> Result<(), VmError> {
        check_id(sid)?;
        let Ok(vm) = self.get(id) else {
            // The VM is gone; its snapshots are not.
            return match self.snaps.remove(id, sid).await? {
                true => Ok(()),
                false => Err(VmError::NotFound(format!("snapshot {sid} of vm {id}"))),
            };
        };
        let _permit = vm.admit()?;
        let _l = vm.lifecycle.lock().await;
        self.snaps.remove(id, sid).await.map(|_| ())
    }

    /// The snapshot directory a fork starts from, or 404.
    pub(super) fn fork_source(
        &self,
        src: &fuse_types::hostagent::SnapshotSource,
    ) -> Result<PathBuf, VmError> {
        check_id(&src.vm_id)?;
        check_id(&src.snapshot_id)?;
        match self.snaps.get(&src.vm_id, &src.snapshot_id) {
            Some(_) => Ok(self.snaps.dir(&src.vm_id, &src.snapshot_id)),
            None => Err(VmError::NotFound(format!(
                "snapshot {} of vm {}",
                src.snapshot_id, src.vm_id
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("fc-snap-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn digest_of_a_sparse_file_equals_the_digest_of_its_bytes() {
        let d = tmp("digest");
        let p = d.join("disk.img");
        {
            use std::io::{Seek as _, SeekFrom, Write as _};
            let mut f = std::fs::File::create(&p).unwrap();
            f.write_all(b"head").unwrap();
            f.seek(SeekFrom::Start(5 << 20)).unwrap();
            f.write_all(b"middle").unwrap();
            f.set_len(9 << 20).unwrap();
        }
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(
            sha256_file(&p).unwrap(),
            hex::encode(sha2::Sha256::digest(&bytes))
        );
        std::fs::write(&p, b"").unwrap();
        assert_eq!(
            sha256_file(&p).unwrap(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[tokio::test]
    async fn the_store_lists_finished_snapshots_and_cleans_unfinished_ones() {
        let d = tmp("store");
        let s = SnapshotStore::new(d.clone());
        assert!(s.list("fuse-a").is_none());
        std::fs::create_dir_all(s.dir("fuse-a", "s1")).unwrap();
        let r = SnapshotRecord {
            snapshot_id: "s1".into(),
            mode: "disk".into(),
            size_bytes: 3,
            digest: "ab".into(),
            created_unix: 1,
            source: None,
        };
        s.write("fuse-a", &r).unwrap();
        std::fs::create_dir_all(s.dir("fuse-a", "half")).unwrap();
        assert_eq!(s.list("fuse-a").unwrap(), std::slice::from_ref(&r));
        assert_eq!(s.clean_partial(), 1);
        assert!(!s.dir("fuse-a", "half").exists());
        assert!(s.remove("fuse-a", "s1").await.unwrap());
        assert!(!s.remove("fuse-a", "s1").await.unwrap());
        assert!(
            !d.join("fuse-a").exists(),
            "the VM's store directory goes with its last"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}
