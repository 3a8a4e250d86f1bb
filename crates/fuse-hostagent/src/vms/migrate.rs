//! Cold migration: a paused VM's files travel from its host (the source) to another host's
//! agent (the target), which then holds the VM paused, with a network of its own.
//!
//! The control plane registers the arrival on the target (`POST /v1/migrations`: the VM
//! id, its size and network, and a one-time token of which only the SHA-256 is kept) and
//! asks the source to send (`POST /v1/vm/{id}/send`). The source streams each artifact
//! file to the target with that token (`PUT /v1/migrations/{id}/files/{name}`), each into
//! a staging directory `<state>/incoming/<id>/`, hashed as it is written and refused
//! unless it matches the hash the sender announced; then it commits
//! (`POST /v1/migrations/{id}/commit`), and the target checks every file again, plans and
//! sets up the VM's network as a create would, moves the files into the VM's directory and
//! records the VM as paused and `moved` (its resume re-identifies the guest's network).
//! The token is spent by the commit; an expired registration, and its staging directory,
//! are removed by [`Vms::migration_sweep`]; nothing of the staging survives an agent
//! restart. The source only reads: an interrupted send leaves it paused and intact.
//!
//! A snapshot travels the same way (`POST /v1/vm/{id}/snapshots/{sid}/send`, registered
//! with its `snapshot_id`), its own record (`snapshot.json`) among its files: the commit
//! puts the files into the target's snapshot store, the record last, so a template can
//! start on another host. One arrival per VM id at a
//! time: a VM and a snapshot of it are not expected at once.
//!
//! Pause lives in `pause`: this module reads what it leaves (`VmMeta::paused`, the
//! backend's [`crate::backend::VmmBackend::paused_files`]) and writes a moved VM's record
//! as a pause would, with `moved` set.

mod send;

use super::snapshots::{SnapshotRecord, RECORD};
use super::{
    check_egress, check_id, write_meta, PausedMeta, Pending, PendingGuard, Vm, VmError, VmMeta, Vms,
};
use crate::link::Link;
use bytes::Bytes;
use fuse_types::hostagent::{
    AgentMigrationCommit, AgentMigrationIn, AgentVm, ArtifactFile, MigratedVm, HEADER_SHA256,
};
use fuse_types::Resources;
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq as _;
use tokio::io::{AsyncSeekExt as _, AsyncWriteExt as _};

/// The longest a registration may be good for.
const MAX_TTL: Duration = Duration::from_secs(24 * 3600);
/// Bytes a transfer may stage beyond the VM's disk and memory (state files, slack).
const SLACK_BYTES: u64 = 256 << 20;
/// Receive blocks: a block of zeros becomes a hole instead of a write.
const BLOCK: usize = 64 << 10;

/// What the VM's record says of its pause, if it is paused (a warm VM, held in its VMM,
/// is not: it has no files to send).
pub fn paused_state(vm: &Vm) -> Option<PausedMeta> {
    vm.meta.read().paused.clone().filter(|p| !p.is_warm())
}

/// A file name a transfer may use: one path component of `[A-Za-z0-9._-]`, not starting
/// with a dot (so it is never `.`, `..` or a staging name).
pub fn check_file_name(name: &str) -> Result<(), VmError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(VmError::Invalid(format!(
            "file name {name:?} must be one path component of letters, digits, '.', '_' and \
             '-', not starting with '.'"
        )))
    }
}

/// One expected arrival.
#[derive(Debug)]
struct Arrival {
    /// SHA-256 of its one-time token.
    token_sha: [u8; 32],
    /// What was registered (its token blanked).
    req: AgentMigrationIn,
    expires: Instant,
    /// Distinguishes this registration from a later one of the same VM id.
    serial: u64,
    /// Files that arrived whole and matched their hash.
    received: BTreeMap<String, ArtifactFile>,
    /// Bytes staged so far (finished files and those being written).
    staged: u64,
    /// A commit is running.
    committing: bool,
}

impl Arrival {
    fn limit(&self) -> u64 {
        (self.req.storage_gb << 30)
            .saturating_add(self.req.memory_mb << 20)
            .saturating_add(SLACK_BYTES)
    }
}

/// The arrivals this host expects, and their staging directories.
#[derive(Debug)]
pub struct Arrivals {
    root: PathBuf,
    map: parking_lot::Mutex<HashMap<String, Arrival>>,
    serial: AtomicU64,
}

impl Arrivals {
    /// The staging area `root` (`<state>/incoming`), emptied: registrations do not survive
    /// a restart, so neither does what was staged for them.
    pub fn new(root: PathBuf) -> std::io::Result<Arrivals> {
        match std::fs::remove_dir_all(&root) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        crate::files::create_private_dir(&root)?;
        Ok(Arrivals {
            root,
            map: parking_lot::Mutex::new(HashMap::new()),
            serial: AtomicU64::new(0),
        })
    }

    fn staging(&self, vm_id: &str) -> PathBuf {
        self.root.join(vm_id)
    }

    /// Checks `bearer` against the registration of `vm_id`: `Unauthorized` when there is
    /// none, it expired, or the token is not its token. Returns its serial.
    fn authorize(&self, vm_id: &str, bearer: &str) -> Result<u64, VmError> {
        let refused = || {
            VmError::Unauthorized(format!(
                "no transfer of vm {vm_id} is expected with this token (unknown, expired or \
                 already used)"
            ))
        };
        let g = self.map.lock();
        let a = g.get(vm_id).ok_or_else(refused)?;
        let sha: [u8; 32] = Sha256::digest(bearer.as_bytes()).into();
        if bearer.is_empty() || !bool::from(sha.ct_eq(&a.token_sha)) || a.expires <= Instant::now()
        {
            return Err(refused());
        }
        Ok(a.serial)
    }
}

/// Removes a staged file, unless it was finished, and takes its bytes back out of its
/// arrival's count (so failed uploads do not use up the limit).
struct PartGuard<'a> {
    arrivals: &'a Arrivals,
    vm_id: &'a str,
    serial: u64,
    path: PathBuf,
    counted: u64,
    done: bool,
}

impl Drop for PartGuard<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let _ = std::fs::remove_file(&self.path);
        if let Some(a) = self
            .arrivals
            .map
            .lock()
            .get_mut(self.vm_id)
            .filter(|a| a.serial == self.serial)
        {
            a.staged = a.staged.saturating_sub(self.counted);
        }
    }
}

impl Vms {
    /// Registers an expected arrival (`POST /v1/migrations`). A VM with this id here is a
    /// `Conflict`; a registration of the same id is replaced (its staging emptied).
    pub fn migration_register(&self, req: &AgentMigrationIn) -> Result<(), VmError> {
        check_id(&req.vm_id)?;
        if req.token.len() < 16 {
            return Err(VmError::Invalid(
                "token must be at least 16 characters".into(),
            ));
        }
        let ttl = Duration::from_secs(req.ttl_seconds);
        if ttl.is_zero() || ttl > MAX_TTL {
            return Err(VmError::Invalid(format!(
                "ttl_seconds must be 1 to {}",
                MAX_TTL.as_secs()
            )));
        }
        if req.storage_gb == 0 {
            return Err(VmError::Invalid("storage_gb must be positive".into()));
        }
        if let Some(p) = req.expose.iter().find(|e| e.port == 0) {
            return Err(VmError::Invalid(format!(
                "expose: guest port {} must be 1-65535",
                p.port
            )));
        }
        if (!req.expose.is_empty() || req.egress.as_ref().is_some_and(|r| !r.is_default()))
            && !self.can_expose()
        {
            return Err(VmError::Invalid(
                "expose and egress rules need per-VM networking, which is off on this host".into(),
            ));
        }
        if let Some(r) = &req.egress {
            check_egress(r)?;
        }
        match &req.snapshot_id {
            Some(sid) => {
                check_id(sid)?;
                if self.snaps.get(&req.vm_id, sid).is_some() {
                    return Err(VmError::Conflict(format!(
                        "snapshot {sid} of vm {} is already in this host's store",
                        req.vm_id
                    )));
                }
            }
            None => {
                if self.get(&req.vm_id).is_ok() || self.pending.lock().contains_key(&req.vm_id) {
                    return Err(VmError::Conflict(format!(
                        "vm {} already exists on this host",
                        req.vm_id
                    )));
                }
            }
        }
        let id = &req.vm_id;
        let dir = self.arrivals.staging(id);
        let mut g = self.arrivals.map.lock();
        if g.get(id).is_some_and(|a| a.committing) {
            return Err(VmError::Conflict(format!(
                "vm {id} is being committed here"
            )));
        }
        let _ = std::fs::remove_dir_all(&dir);
        crate::files::create_private_dir(&dir)
            .map_err(VmError::state("creating the staging directory"))?;
        let serial = self.arrivals.serial.fetch_add(1, Ordering::Relaxed) + 1;
        g.insert(
            id.clone(),
            Arrival {
                token_sha: Sha256::digest(req.token.as_bytes()).into(),
                req: AgentMigrationIn {
                    token: String::new(),
                    ..req.clone()
                },
                expires: Instant::now() + ttl,
                serial,
                received: BTreeMap::new(),
                staged: 0,
                committing: false,
            },
        );
        tracing::info!(vm_id = %id, ttl_s = ttl.as_secs(), "migration registered");
        Ok(())
    }

    /// Forgets a registration and its staging (`DELETE /v1/migrations/{id}`); idempotent.
    /// A commit that is running finishes.
    pub async fn migration_abort(&self, vm_id: &str) -> Result<(), VmError> {
        check_id(vm_id)?;
        let removed = {
            let mut g = self.arrivals.map.lock();
            match g.get(vm_id) {
                Some(a) if a.committing => {
                    return Err(VmError::Conflict(format!(
                        "vm {vm_id} is being committed here; delete the VM instead"
                    )))
                }
                Some(_) => g.remove(vm_id).is_some(),
                None => false,
            }
        };
        remove_dir(&self.arrivals.staging(vm_id)).await?;
        if removed {
            tracing::info!(vm_id, "migration aborted");
        }
        Ok(())
    }

    /// Removes expired registrations and staging directories nobody expects (run every
    /// second by the agent). Returns how many registrations it removed.
    pub async fn migration_sweep(&self) -> usize {
        let now = Instant::now();
        let (expired, live): (Vec<String>, Vec<String>) = {
            let mut g = self.arrivals.map.lock();
            let expired: Vec<String> = g
                .iter()
                .filter(|(_, a)| a.expires <= now && !a.committing)
                .map(|(k, _)| k.clone())
                .collect();
            for k in &expired {
                g.remove(k);
            }
            (expired, g.keys().cloned().collect())
        };
        for id in &expired {
            tracing::info!(vm_id = %id, "migration registration expired");
        }
        let mut rd = match tokio::fs::read_dir(&self.arrivals.root).await {
            Ok(rd) => rd,
            Err(e) => {
                tracing::warn!(error = %e, "reading the staging directory");
                return expired.len();
            }
        };
        while let Ok(Some(e)) = rd.next_entry().await {
            let name = e.file_name().to_string_lossy().into_owned();
            if !live.contains(&name) {
                if let Err(err) = remove_dir(&e.path()).await {
                    tracing::warn!(vm_id = %name, error = %crate::error_chain(&err), "removing a staging directory");
                }
            }
        }
        expired.len()
    }

    /// Receives one file of a registered arrival into its staging directory, hashing it
    /// as it is written; blocks of zeros become holes. Refused (and removed) unless it
    /// hashes to `sha256`; a transfer larger than the VM's disk and memory is refused.
    pub async fn migration_receive<S, E>(
        &self,
        vm_id: &str,
        name: &str,
        bearer: &str,
        sha256: &str,
        body: S,
    ) -> Result<ArtifactFile, VmError>
    where
        S: futures_core::Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        use futures_util::StreamExt as _;
        check_id(vm_id)?;
        let serial = self.arrivals.authorize(vm_id, bearer)?;
        check_file_name(name)?;
        let want = sha256.trim().to_ascii_lowercase();
        if want.len() != 64 || !want.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(VmError::Invalid(format!(
                "header {HEADER_SHA256} must be the file's hex SHA-256"
            )));
        }
        let dir = self.arrivals.staging(vm_id);
        let part = dir.join(format!(".part-{name}"));
        let mut guard = PartGuard {
            arrivals: &self.arrivals,
            vm_id,
            serial,
            path: part.clone(),
            counted: 0,
            done: false,
        };
        // Private like every VM file (a snapshot's record holds the guest's link token).
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(crate::files::PRIVATE_FILE)
            .open(&part)
            .await
            .map_err(VmError::state(format!("creating staged file {name}")))?;
        let mut hash = Sha256::new();
        let mut len: u64 = 0;
        let mut pending: Vec<u8> = Vec::with_capacity(BLOCK);
        let write_err = |what: &str| VmError::state(format!("{what} staged file {name}"));
        let mut body = body;
        loop {
            let chunk = match body.next().await {
                Some(Ok(c)) => c,
                Some(Err(e)) => {
                    return Err(VmError::Invalid(format!(
                        "the upload of {name} was cut off after {len} bytes: {e}"
                    )))
                }
                None => break,
            };
            self.migration_count(vm_id, serial, chunk.len() as u64)?;
            guard.counted += chunk.len() as u64;
            hash.update(&chunk);
            len += chunk.len() as u64;
            let mut rest: &[u8] = &chunk;
            while !rest.is_empty() {
                let take = (BLOCK - pending.len()).min(rest.len());
                pending.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
                if pending.len() == BLOCK {
                    write_block(&mut file, &pending)
                        .await
                        .map_err(write_err("writing"))?;
                    pending.clear();
                }
            }
        }
        write_block(&mut file, &pending)
            .await
            .map_err(write_err("writing"))?;
        // Trailing holes are not written: the length says where the file ends.
        file.set_len(len).await.map_err(write_err("sizing"))?;
        file.sync_all().await.map_err(write_err("syncing"))?;
        drop(file);
        let got = hex::encode(hash.finalize());
        if got != want {
            return Err(VmError::Invalid(format!(
                "file {name} does not match its {HEADER_SHA256} (received {len} bytes hashing \
                 to {got}); it was discarded"
            )));
        }
        let f = ArtifactFile {
            name: name.to_owned(),
            size: len,
            sha256: got,
        };
        let mut g = self.arrivals.map.lock();
        let a = g
            .get_mut(vm_id)
            .filter(|a| a.serial == serial)
            .ok_or_else(|| {
                VmError::Unauthorized(format!(
                    "the transfer of vm {vm_id} was aborted or replaced"
                ))
            })?;
        std::fs::rename(&part, dir.join(name))
            .map_err(VmError::state(format!("finishing staged file {name}")))?;
        guard.done = true;
        if let Some(old) = a.received.insert(name.to_owned(), f.clone()) {
            a.staged = a.staged.saturating_sub(old.size);
        }
        Ok(f)
    }

    /// Counts `n` more staged bytes against the arrival's limit.
    fn migration_count(&self, vm_id: &str, serial: u64, n: u64) -> Result<(), VmError> {
        let mut g = self.arrivals.map.lock();
        let a = g
            .get_mut(vm_id)
            .filter(|a| a.serial == serial)
            .ok_or_else(|| {
                VmError::Unauthorized(format!(
                    "the transfer of vm {vm_id} was aborted or replaced"
                ))
            })?;
        a.staged = a.staged.saturating_add(n);
        if a.staged > a.limit() {
            let limit = a.limit();
            a.staged = a.staged.saturating_sub(n);
            return Err(VmError::Invalid(format!(
                "the transfer of vm {vm_id} is larger than its disk and memory ({limit} bytes)"
            )));
        }
        Ok(())
    }

    /// Commits an arrival (`POST /v1/migrations/{id}/commit`): checks every file, sets up
    /// the VM's network, moves the files into its directory and records it paused and
    /// moved. The token is spent on success; on failure nothing is kept but the staging.
    /// `commit` parses the body, called once the token is checked.
    pub async fn migration_commit(
        &self,
        vm_id: &str,
        bearer: &str,
        commit: impl FnOnce() -> Result<AgentMigrationCommit, VmError>,
    ) -> Result<Arrived, VmError> {
        check_id(vm_id)?;
        let serial = self.arrivals.authorize(vm_id, bearer)?;
        let commit = &commit()?;
        let req = {
            let mut g = self.arrivals.map.lock();
            let a = g
                .get_mut(vm_id)
                .filter(|a| a.serial == serial)
                .ok_or_else(|| VmError::Unauthorized(format!("vm {vm_id}: aborted")))?;
            if a.committing {
                return Err(VmError::Conflict(format!(
                    "vm {vm_id} is being committed already"
                )));
            }
            check_files(&a.received, &commit.files, &self.arrivals.staging(vm_id))?;
            a.committing = true;
            a.req.clone()
        };
        let out = match &req.snapshot_id {
            Some(sid) => self
                .adopt_snapshot(vm_id, sid, commit)
                .await
                .map(Arrived::Snapshot),
            None => self
                .adopt_moved(vm_id, &req, &commit.meta, &commit.files)
                .await
                .map(Arrived::Vm),
        };
        {
            let mut g = self.arrivals.map.lock();
            if out.is_ok() {
                // Spent: a second use of the token finds no registration.
                g.remove(vm_id);
            } else if let Some(a) = g.get_mut(vm_id) {
                a.committing = false;
            }
        }
        if out.is_ok() {
            remove_dir(&self.arrivals.staging(vm_id)).await?;
            tracing::info!(vm_id, files = commit.files.len(), "migrated VM committed");
        }
        out
    }

    /// Puts an arrived snapshot into the host's store: its files, then its record (the
    /// source's own `snapshot.json`, sent as a file, so every field it has travels), which
    /// makes it finished. The record must name the registered snapshot, agree with the
    /// commit's, and its digest must be the hash of the disk image among the files.
    async fn adopt_snapshot(
        &self,
        vm_id: &str,
        sid: &str,
        commit: &AgentMigrationCommit,
    ) -> Result<fuse_types::hostagent::AgentSnapshot, VmError> {
        let staging = self.arrivals.staging(vm_id);
        if !commit.files.iter().any(|f| f.name == RECORD) {
            return Err(VmError::Invalid(format!(
                "a snapshot's transfer must include its record {RECORD}"
            )));
        }
        let record: SnapshotRecord = std::fs::read(staging.join(RECORD))
            .map_err(VmError::state(format!("reading the staged {RECORD}")))
            .and_then(|b| {
                serde_json::from_slice(&b)
                    .map_err(|e| VmError::Invalid(format!("the sent {RECORD} does not parse: {e}")))
            })?;
        let told = commit.snapshot.as_ref();
        if record.snapshot_id != sid
            || told.is_some_and(|t| t.snapshot_id != sid || t.digest != record.digest)
        {
            return Err(VmError::Invalid(format!(
                "the sent record is of snapshot {} (digest {:?}), not the {sid} registered",
                record.snapshot_id, record.digest
            )));
        }
        let disk = self.backend.snapshot_disk(Path::new(""));
        let disk = disk.to_string_lossy();
        if !record.digest.is_empty()
            && !commit
                .files
                .iter()
                .any(|f| f.name == disk && f.sha256.eq_ignore_ascii_case(&record.digest))
        {
            return Err(VmError::Invalid(format!(
                "snapshot {sid}'s digest is not the hash of its disk image {disk} among the files"
            )));
        }
        if self.snaps.get(vm_id, sid).is_some() {
            return Err(VmError::Conflict(format!(
                "snapshot {sid} of vm {vm_id} is already in this host's store"
            )));
        }
        let dest = self.snaps.dir(vm_id, sid);
        let placed = async {
            crate::files::create_private_dir(&self.snaps.vm_dir(vm_id))
                .and_then(|()| crate::files::create_private_dir(&dest))
                .map_err(VmError::state("creating the snapshot directory"))?;
            // The record last: until it is there the snapshot is unfinished.
            let files = commit.files.iter().filter(|f| f.name != RECORD);
            for name in files.map(|f| f.name.as_str()).chain([RECORD]) {
                tokio::fs::rename(staging.join(name), dest.join(name))
                    .await
                    .map_err(VmError::state(format!(
                        "moving {name} into the snapshot store"
                    )))?;
            }
            Ok::<_, VmError>(())
        }
        .await;
        if let Err(e) = placed {
            let _ = self.snaps.remove(vm_id, sid).await;
            return Err(e);
        }
        Ok(record.wire())
    }

    /// Makes the arrived VM one of this host's, paused.
    async fn adopt_moved(
        &self,
        id: &str,
        req: &AgentMigrationIn,
        meta: &MigratedVm,
        files: &[ArtifactFile],
    ) -> Result<AgentVm, VmError> {
        if meta.kind == crate::backend::PAUSED_WARM {
            return Err(VmError::Invalid(
                "a warm VM cannot move: it is held in its VMM".into(),
            ));
        }
        if meta.token.is_empty() || meta.kind.is_empty() {
            return Err(VmError::Invalid(
                "meta.token and meta.kind are required".into(),
            ));
        }
        if meta.backend != self.backend.name() {
            return Err(VmError::Invalid(format!(
                "vm {id} was paused by the {} backend; this host runs {}",
                meta.backend,
                self.backend.name()
            )));
        }
        let egress = req.egress.as_ref().map(check_egress).transpose()?;
        let need = Resources {
            storage_gb: req.storage_gb,
            ..Resources::default()
        };
        let plan = {
            let _g = self.creating.lock().await;
            let mut pending = self.pending.lock();
            if self.get(id).is_ok() || pending.contains_key(id) {
                return Err(VmError::Conflict(format!(
                    "vm {id} already exists on this host"
                )));
            }
            let used = self.in_use(&pending);
            if self.capacity.minus(used).storage_gb < need.storage_gb {
                return Err(VmError::Busy(format!(
                    "host storage is full ({} of {} GiB used); {} GiB needed",
                    used.storage_gb, self.capacity.storage_gb, need.storage_gb
                )));
            }
            let plan = self.net_plan(req.agent_port, &req.expose, &pending)?;
            pending.insert(id.to_owned(), Pending::of(need, plan.as_ref()));
            plan
        };
        let _pending = PendingGuard {
            vms: self,
            id: id.to_owned(),
        };
        let dir = self.root.join(id);
        let _ = tokio::fs::remove_dir_all(&dir).await;
        crate::files::create_private_dir(&dir)
            .map_err(VmError::state("creating the VM directory"))?;
        let net = match self.net_setup(id, plan, egress).await {
            Ok(n) => n,
            Err(e) => {
                let _ = tokio::fs::remove_dir_all(&dir).await;
                return Err(e);
            }
        };
        let url = self.agent_url(net.as_ref(), req.agent_port);
        let m = VmMeta {
            vm_id: id.to_owned(),
            cpus: req.cpus,
            memory_mb: req.memory_mb,
            storage_gb: req.storage_gb,
            pid: -1,
            backend: self.backend.name().into(),
            created_unix: meta.created_unix,
            token: meta.token.clone(),
            snapshots: BTreeMap::new(),
            net: net.clone(),
            url,
            healthcheck: meta.healthcheck.clone(),
            // Moved: its resume gives the guest this host's network.
            paused: Some(PausedMeta {
                kind: meta.kind.clone(),
                size_bytes: meta.size_bytes,
                paused_unix: meta.paused_unix,
                moved: true,
            }),
        };
        let staging = self.arrivals.staging(id);
        let placed = async {
            for f in files {
                tokio::fs::rename(staging.join(&f.name), dir.join(&f.name))
                    .await
                    .map_err(VmError::state(format!(
                        "moving {} into the VM directory",
                        f.name
                    )))?;
            }
            write_meta(&dir, &m)
        }
        .await;
        if let Err(e) = placed {
            if let (Some(n), Some(h)) = (&net, &self.opts.net) {
                if let Err(e) = h.teardown(id, n, None).await {
                    tracing::warn!(vm_id = %id, error = %e.report(), "removing the network of a VM that did not arrive");
                }
            }
            let _ = tokio::fs::remove_dir_all(&dir).await;
            return Err(e);
        }
        let link = Link::new(crate::backend::guest_socket(&dir), self.backend.transport());
        let vm = Arc::new(Vm::new(m, dir, link));
        let wire = vm.wire(&self.opts.public_host);
        self.map.write().insert(id.to_owned(), vm);
        Ok(wire)
    }
}

/// What a commit made.
#[derive(Debug)]
pub enum Arrived {
    /// The VM, paused here.
    Vm(AgentVm),
    /// The snapshot, in the store.
    Snapshot(fuse_types::hostagent::AgentSnapshot),
}

/// Writes one block at the file's position, or skips it (a hole) when it is all zeros.
async fn write_block(file: &mut tokio::fs::File, block: &[u8]) -> std::io::Result<()> {
    if block.is_empty() {
        return Ok(());
    }
    if block.iter().all(|b| *b == 0) {
        file.seek(std::io::SeekFrom::Current(block.len() as i64))
            .await?;
        return Ok(());
    }
    file.write_all(block).await
}

/// Checks the commit's file list against what arrived: every file listed arrived whole
/// with that size and hash, and is still staged.
fn check_files(
    received: &BTreeMap<String, ArtifactFile>,
    listed: &[ArtifactFile],
    staging: &Path,
) -> Result<(), VmError> {
    if listed.is_empty() {
        return Err(VmError::Invalid("a commit must list its files".into()));
    }
    for f in listed {
        check_file_name(&f.name)?;
        match received.get(&f.name) {
            Some(r) if r.size == f.size && r.sha256 == f.sha256.to_ascii_lowercase() => {}
            Some(r) => {
                return Err(VmError::Invalid(format!(
                    "file {} arrived as {} bytes hashing to {}, not {} bytes hashing to {}",
                    f.name, r.size, r.sha256, f.size, f.sha256
                )))
            }
            None => return Err(VmError::Invalid(format!("file {} did not arrive", f.name))),
        }
        let on_disk = std::fs::metadata(staging.join(&f.name)).map(|m| m.len());
        if on_disk.as_ref().ok() != Some(&f.size) {
            return Err(VmError::Invalid(format!(
                "staged file {} is gone or changed size",
                f.name
            )));
        }
    }
    Ok(())
}

/// Removes a directory tree; absent is fine.
async fn remove_dir(p: &Path) -> Result<(), VmError> {
    match tokio::fs::remove_dir_all(p).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(VmError::state(format!("removing {}", p.display()))(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_one_plain_component() {
        for (name, ok) in [
            ("root.tar", true),
            ("mem.snap", true),
            ("vm-state_1", true),
            ("", false),
            (".", false),
            ("..", false),
            (".part-root.tar", false),
            ("a/b", false),
            ("../etc", false),
            ("nul\0", false),
            ("sp ace", false),
        ] {
            assert_eq!(check_file_name(name).is_ok(), ok, "{name:?}");
        }
    }

    #[test]
    fn a_commit_lists_only_files_that_arrived_whole() {
        let d = std::env::temp_dir().join(format!("fc-migrate-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(d.join("root.tar"), b"abc").unwrap_or_else(|e| panic!("{e}"));
        let f = ArtifactFile {
            name: "root.tar".into(),
            size: 3,
            sha256: hex::encode(Sha256::digest(b"abc")),
        };
        let got: BTreeMap<String, ArtifactFile> = [(f.name.clone(), f.clone())].into();
        assert!(check_files(&got, std::slice::from_ref(&f), &d).is_ok());
        assert!(check_files(&got, &[], &d).is_err(), "nothing listed");
        let other = ArtifactFile {
            sha256: "00".repeat(32),
            ..f.clone()
        };
        assert!(check_files(&got, &[other], &d).is_err(), "another hash");
        let missing = ArtifactFile {
            name: "mem.snap".into(),
            ..f.clone()
        };
        assert!(check_files(&got, &[f.clone(), missing], &d).is_err());
        std::fs::write(d.join("root.tar"), b"abcd").unwrap_or_else(|e| panic!("{e}"));
        assert!(check_files(&got, &[f], &d).is_err(), "changed on disk");
        let _ = std::fs::remove_dir_all(&d);
    }
}
