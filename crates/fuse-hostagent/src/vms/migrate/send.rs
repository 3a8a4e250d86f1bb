//! The sending side of a transfer: a paused VM's files, or a snapshot's, hashed, streamed
//! to the target one file at a time (bounded memory: one chunk in flight) and committed.
//! The source only reads.

use super::{check_file_name, paused_state};
use crate::vms::{check_id, VmError, Vms};
use bytes::Bytes;
use fuse_types::hostagent::{
    AgentMigrationCommit, AgentSend, AgentSent, ArtifactFile, MigratedVm, HEADER_SHA256,
};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt as _;

/// Send chunk.
const CHUNK: usize = 1 << 20;
/// Bytes between two progress lines of a send.
const PROGRESS_BYTES: u64 = 256 << 20;

impl Vms {
    /// Sends a paused VM's files to the target named in `req` and commits them there
    /// (`POST /v1/vm/{id}/send`). Only reads the VM, which stays paused here.
    pub async fn send(&self, id: &str, req: &AgentSend) -> Result<AgentSent, VmError> {
        let vm = self.get(id)?;
        let _permit = vm.admit()?;
        // Held for the whole transfer: no resume or destroy changes the files meanwhile.
        let _l = vm.lifecycle.lock().await;
        if !self.still_current(id, &vm) {
            return Err(VmError::NotFound(format!("vm {id}")));
        }
        let Some(paused) = paused_state(&vm) else {
            return Err(VmError::Conflict(format!(
                "vm {id} is not paused; pause it before sending it"
            )));
        };
        let names = self.backend.paused_files(&vm.dir);
        if let Some(gone) = names.iter().find(|f| !vm.dir.join(f).is_file()) {
            return Err(VmError::Conflict(format!(
                "vm {id} is paused but its file {gone} is missing; it cannot be sent"
            )));
        }
        if names.is_empty() {
            return Err(VmError::Conflict(format!(
                "vm {id} has no paused files this agent can send (backend {})",
                self.backend.name()
            )));
        }
        let target = check_target(&req.target_url)?;
        let started = Instant::now();
        let http = client()?;
        let (files, bytes) = transfer(&http, target, id, &req.token, &vm.dir, &names).await?;
        let m = vm.meta.read().clone();
        let commit = AgentMigrationCommit {
            files: files.clone(),
            meta: MigratedVm {
                token: m.token,
                kind: paused.kind,
                size_bytes: paused.size_bytes,
                paused_unix: paused.paused_unix,
                cpus: m.cpus,
                memory_mb: m.memory_mb,
                storage_gb: m.storage_gb,
                created_unix: m.created_unix,
                healthcheck: m.healthcheck,
                backend: m.backend,
            },
            snapshot: None,
        };
        commit_at(&http, target, id, &req.token, &commit).await?;
        let duration_ms = started.elapsed().as_millis() as u64;
        tracing::info!(vm_id = %id, target, bytes, duration_ms, "VM sent");
        Ok(AgentSent {
            files,
            bytes,
            duration_ms,
        })
    }

    /// Copies a snapshot from the host's store to another host's
    /// (`POST /v1/vm/{id}/snapshots/{sid}/send`, registered there with its `snapshot_id`),
    /// whether its VM still exists or not: every file of its directory, its record
    /// included. Only reads it.
    pub async fn send_snapshot(
        &self,
        vm_id: &str,
        sid: &str,
        req: &AgentSend,
    ) -> Result<AgentSent, VmError> {
        check_id(vm_id)?;
        check_id(sid)?;
        let record = self
            .snaps
            .get(vm_id, sid)
            .ok_or_else(|| VmError::NotFound(format!("snapshot {sid} of vm {vm_id}")))?;
        let dir = self.snaps.dir(vm_id, sid);
        let mut names = Vec::new();
        let mut rd = tokio::fs::read_dir(&dir)
            .await
            .map_err(VmError::state("listing the snapshot's files"))?;
        while let Some(e) = rd
            .next_entry()
            .await
            .map_err(VmError::state("listing the snapshot's files"))?
        {
            let name = e.file_name().to_string_lossy().into_owned();
            let kind = e
                .file_type()
                .await
                .map_err(VmError::state("listing the snapshot's files"))?;
            if !kind.is_file() || check_file_name(&name).is_err() {
                return Err(VmError::Conflict(format!(
                    "snapshot {sid} of vm {vm_id} holds {name:?}, which is not a plain file \
                     (a snapshot of an older agent?); it cannot be sent"
                )));
            }
            // The record too: the target's copy is the source's, field for field.
            names.push(name);
        }
        names.sort();
        let target = check_target(&req.target_url)?;
        let started = Instant::now();
        let http = client()?;
        let (files, bytes) = transfer(&http, target, vm_id, &req.token, &dir, &names).await?;
        let commit = AgentMigrationCommit {
            files: files.clone(),
            meta: MigratedVm::default(),
            snapshot: Some(record.wire()),
        };
        commit_at(&http, target, vm_id, &req.token, &commit).await?;
        let duration_ms = started.elapsed().as_millis() as u64;
        tracing::info!(
            vm_id,
            snapshot_id = sid,
            target,
            bytes,
            duration_ms,
            "snapshot sent"
        );
        Ok(AgentSent {
            files,
            bytes,
            duration_ms,
        })
    }
}

/// The HTTP client of a send.
fn client() -> Result<reqwest::Client, VmError> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| VmError::Transfer(format!("building the HTTP client: {e}")))
}

/// The target's base URL, checked.
fn check_target(url: &str) -> Result<&str, VmError> {
    let target = url.trim_end_matches('/');
    if target.starts_with("http://") || target.starts_with("https://") {
        Ok(target)
    } else {
        Err(VmError::Invalid(format!(
            "target_url {target:?} must be an http(s) URL"
        )))
    }
}

/// Hashes and sends the files `names` of `dir` for the arrival `id`; returns them and the
/// bytes sent.
async fn transfer(
    http: &reqwest::Client,
    target: &str,
    id: &str,
    token: &str,
    dir: &Path,
    names: &[String],
) -> Result<(Vec<ArtifactFile>, u64), VmError> {
    let mut files = Vec::new();
    for n in names {
        let p = dir.join(n);
        let hashed = p.clone();
        let sha256 =
            tokio::task::spawn_blocking(move || crate::vms::snapshots::sha256_file(&hashed))
                .await
                .map_err(|e| VmError::state(format!("hashing {n}"))(std::io::Error::other(e)))?
                .map_err(VmError::state(format!("hashing {n}")))?;
        let size = std::fs::metadata(&p)
            .map_err(VmError::state(format!("reading {n}")))?
            .len();
        files.push(ArtifactFile {
            name: n.clone(),
            size,
            sha256,
        });
    }
    let mut bytes = 0u64;
    for f in &files {
        bytes += send_file(http, target, id, token, dir, f).await?;
    }
    Ok((files, bytes))
}

/// Commits a transfer at the target.
async fn commit_at(
    http: &reqwest::Client,
    target: &str,
    id: &str,
    token: &str,
    commit: &AgentMigrationCommit,
) -> Result<(), VmError> {
    let what = format!("committing {id} at {target}");
    let resp = http
        .post(format!("{target}/v1/migrations/{id}/commit"))
        .bearer_auth(token)
        .timeout(Duration::from_secs(120))
        .json(commit)
        .send()
        .await
        .map_err(|e| VmError::Transfer(format!("{what}: {e}")))?;
    refused(resp, &what).await
}

/// Streams one file to the target; returns its bytes.
async fn send_file(
    http: &reqwest::Client,
    target: &str,
    id: &str,
    token: &str,
    dir: &Path,
    f: &ArtifactFile,
) -> Result<u64, VmError> {
    let file = tokio::fs::File::open(dir.join(&f.name))
        .await
        .map_err(VmError::state(format!("opening {}", f.name)))?;
    let sent = Arc::new(AtomicU64::new(0));
    let body = reqwest::Body::wrap_stream(file_stream(
        file,
        sent.clone(),
        id.to_owned(),
        f.name.clone(),
        f.size,
    ));
    // Bounded: a minute plus the time the file takes at 4 MiB/s.
    let limit = Duration::from_secs(60 + f.size / (4 << 20));
    let what = format!("sending {} of vm {id} to {target}", f.name);
    let resp = http
        .put(format!("{target}/v1/migrations/{id}/files/{}", f.name))
        .bearer_auth(token)
        .header(HEADER_SHA256, &f.sha256)
        .header(reqwest::header::CONTENT_LENGTH, f.size)
        .timeout(limit)
        .body(body)
        .send()
        .await
        .map_err(|e| VmError::Transfer(format!("{what}: {e}")))?;
    refused(resp, &what).await?;
    Ok(sent.load(Ordering::Relaxed))
}

/// A file as a stream of chunks, one read ahead of the network at most, counting what
/// was read and logging progress.
fn file_stream(
    file: tokio::fs::File,
    sent: Arc<AtomicU64>,
    vm_id: String,
    name: String,
    size: u64,
) -> impl futures_core::Stream<Item = Result<Bytes, std::io::Error>> {
    futures_util::stream::unfold(Some(file), move |file| {
        let (sent, vm_id, name) = (sent.clone(), vm_id.clone(), name.clone());
        async move {
            let mut file = file?;
            let mut buf = vec![0u8; CHUNK];
            match file.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    let before = sent.fetch_add(n as u64, Ordering::Relaxed);
                    if (before + n as u64) / PROGRESS_BYTES > before / PROGRESS_BYTES {
                        tracing::info!(vm_id, file = %name, sent = before + n as u64, size, "sending");
                    }
                    Some((Ok(Bytes::from(buf)), Some(file)))
                }
                Err(e) => Some((Err(e), None)),
            }
        }
    })
}

/// A non-2xx answer of the target as an error that quotes its message.
async fn refused(resp: reqwest::Response, what: &str) -> Result<(), VmError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let body = resp.text().await.unwrap_or_default();
    let message = serde_json::from_str::<fuse_types::ErrorBody>(&body)
        .map(|b| b.error.message)
        .unwrap_or(body);
    Err(VmError::Transfer(format!(
        "{what}: the target answered {status}: {message}"
    )))
}
