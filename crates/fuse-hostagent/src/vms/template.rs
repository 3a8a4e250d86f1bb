//! Templates and warm VMs ([`fuse_types::hostagent::FEATURE_TEMPLATE`]): a new VM made
//! from a full snapshot's memory (`from_snapshot.memory`) instead of a cold boot, and a
//! warm VM (`warm`) held in its VMM with its vCPUs stopped until a claim names it.
//!
//! A restored guest still is the snapshot's source VM: its helper accepts the source's link
//! token (kept, 0600, in the snapshot's record) and has its hostname, address and random
//! state. Before anything else runs it is given the new VM's identity (`identity` op: token,
//! hostname, MAC, address and gateway, clock, reseeded random pool); only then is the VM
//! registered. A claim renames the warm VM in the registry and in `vm.json` (its directory
//! and network devices keep the names they were made with: they are found through
//! `vm.json`, not by the id), runs its vCPUs, and gives it its hostname, the clock and a
//! fresh random pool again.

use super::pause::identity;
use super::{log_tail, now_unix, write_meta, PausedMeta, Vm, VmError, VmMeta, Vms};
use crate::backend::{BackendError, BootSpec, PAUSED_WARM};
use crate::link::Link;
use fuse_types::hostagent::{AgentClaim, AgentVm, GuestSetup, SnapshotSource, StepTiming};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long an identity may take in the guest.
const IDENTITY_LIMIT: Duration = Duration::from_secs(20);

/// What a memory restore starts from: the snapshot's directory and its source's token.
pub(super) struct Template {
    /// The snapshot's directory.
    pub dir: PathBuf,
    /// The link token the restored guest accepts until its identity is applied.
    pub token: String,
}

impl Vms {
    /// Checks that a memory restore of `src` can be done here, for a VM of this size.
    pub(super) fn template_source(
        &self,
        src: &SnapshotSource,
        cpus: u32,
        memory_mb: u64,
    ) -> Result<Template, VmError> {
        if !self.backend.restores_memory() {
            return Err(VmError::Unsupported(format!(
                "the {} backend keeps no memory: from_snapshot.memory is not supported on this host",
                self.backend.name()
            )));
        }
        let dir = self.fork_source(src)?;
        let Some(rec) = self.snaps.get(&src.vm_id, &src.snapshot_id) else {
            return Err(VmError::NotFound(format!("snapshot {}", src.snapshot_id)));
        };
        if rec.mode != "full" {
            return Err(VmError::Conflict(format!(
                "snapshot {} of vm {} holds the disk only (mode {}); a memory restore needs a full snapshot",
                src.snapshot_id, src.vm_id, rec.mode
            )));
        }
        let Some(source) = rec.source else {
            return Err(VmError::Conflict(format!(
                "snapshot {} of vm {} was taken by an older agent, without what a memory restore needs",
                src.snapshot_id, src.vm_id
            )));
        };
        if (source.cpus, source.memory_mb) != (cpus, memory_mb) {
            return Err(VmError::Invalid(format!(
                "a memory restore keeps the snapshot's size: {} CPUs and {} MiB (asked: {cpus} CPUs, {memory_mb} MiB)",
                source.cpus, source.memory_mb
            )));
        }
        Ok(Template {
            dir,
            token: source.token,
        })
    }

    /// Starts `spec` from the template's memory, waits for its guest helper (with the
    /// source's token), and gives it the new VM's identity; a `warm` VM's vCPUs are then
    /// stopped. On failure the VM is stopped; the caller removes its network and directory.
    pub(super) async fn restore_until_ready(
        &self,
        spec: &BootSpec,
        meta: &mut VmMeta,
        link: &Link,
        template: &Template,
        hostname: &str,
        warm: bool,
    ) -> Result<(), VmError> {
        let dir = &spec.dir;
        let started = std::time::Instant::now();
        let booted = self
            .backend
            .restore_into(spec, &template.dir)
            .await
            .map_err(|e| match e {
                BackendError::Unsupported(m) => VmError::Unsupported(m),
                e => VmError::RestoreFailed(format!(
                    "the snapshot's memory did not load ({}); log: {}",
                    crate::error_chain(&e),
                    log_tail(dir)
                )),
            })?;
        meta.pid = booted.pid;
        let ready = async {
            // Written before the wait, so an agent that dies meanwhile leaves a VM the next
            // start reclaims.
            write_meta(dir, meta)?;
            link.wait_ready(&template.token, self.opts.boot_timeout, || {
                crate::backend::pid_running(booted.pid)
            })
            .await?;
            let loaded = started.elapsed();
            let op = identity(Some(&meta.token), Some(hostname), meta.net.as_ref());
            let lines = link.call(&template.token, op, IDENTITY_LIMIT).await?;
            tracing::info!(
                vm_id = %spec.vm_id,
                ready_ms = loaded.as_millis() as u64,
                identity_ms = (started.elapsed() - loaded).as_millis() as u64,
                applied = ?lines.last().and_then(|l| l.applied.clone()),
                "restored from a template"
            );
            if warm {
                self.backend
                    .vcpus(dir, false)
                    .await
                    .map_err(VmError::backend("stopping the warm VM's vCPUs"))?;
                meta.paused = Some(PausedMeta {
                    kind: PAUSED_WARM.into(),
                    size_bytes: 0,
                    paused_unix: now_unix(),
                    moved: false,
                });
                write_meta(dir, meta)?;
            }
            Ok::<_, VmError>(())
        }
        .await;
        if let Err(e) = ready {
            self.backend.stop(dir, booted.pid).await;
            link.reset().await;
            return Err(match e {
                VmError::Link(l) => VmError::RestoreFailed(format!(
                    "the VM restored from the snapshot did not answer ({l}); log: {}",
                    log_tail(dir)
                )),
                other => other,
            });
        }
        Ok(())
    }

    /// Gives a cold-booted real guest its hostname (hosts with the template feature); an
    /// older guest helper without the `identity` op is only logged.
    pub(super) async fn hostname_at_boot(&self, link: &Link, meta: &VmMeta, hostname: &str) {
        if !self.backend.restores_memory() {
            return;
        }
        let op = identity(None, Some(hostname), None);
        if let Err(e) = link.call(&meta.token, op, IDENTITY_LIMIT).await {
            tracing::warn!(vm_id = %meta.vm_id, error = %e, "the guest took no hostname (an older guest helper?)");
        }
    }

    /// Warms a warm VM up: its vCPUs run `setup` (what a create would run: files, the
    /// agent), then stop again. Its claim then finds the guest's caches, and under TCG the
    /// emulator's translations, already made for that work, and only redoes it with the
    /// claiming environment's own files and credentials.
    pub async fn warm_up(&self, vm: &Vm, setup: &GuestSetup) -> Result<Vec<StepTiming>, VmError> {
        let _l = vm.lifecycle.lock().await;
        self.backend
            .vcpus(&vm.dir, true)
            .await
            .map_err(VmError::backend("starting the warm VM's vCPUs"))?;
        // Running for its warm-up: guest calls are let through (it is warm again after).
        let warm = vm.meta.write().paused.take();
        let steps = super::setup::run(vm, setup).await;
        vm.meta.write().paused = warm;
        let stopped = self
            .backend
            .vcpus(&vm.dir, false)
            .await
            .map_err(VmError::backend("stopping the warm VM's vCPUs"));
        let steps = steps?;
        stopped?;
        Ok(steps)
    }

    /// Claims a warm VM: it becomes `c.name`, runs, takes its hostname, the clock and a
    /// fresh random pool, and gets the claim's ports and egress rules. The caller runs the
    /// claim's setup. A claim retried after it succeeded answers the claimed VM.
    pub async fn claim(&self, id: &str, c: &AgentClaim) -> Result<AgentVm, VmError> {
        super::check_id(&c.name)?;
        let vm = match self.get(id) {
            Ok(vm) => vm,
            Err(e) => {
                return match self.get(&c.name) {
                    Ok(done) if done.meta.read().paused.is_none() => {
                        Ok(done.wire(&self.opts.public_host))
                    }
                    _ => Err(e),
                }
            }
        };
        // Checked before anything changes: a claim that cannot be done as asked is not done.
        if let Some(egress) = &c.egress {
            let rules = super::check_egress(egress)?;
            if !rules.is_default() && !self.can_expose() {
                return Err(VmError::Invalid(
                    "egress rules need per-VM networking, which is off on this host".into(),
                ));
            }
        }
        if !c.expose.is_empty() && !self.can_expose() {
            return Err(VmError::Invalid(
                "expose needs per-VM networking, which is off on this host".into(),
            ));
        }
        if let Some(p) = c.expose.iter().find(|e| e.port == 0) {
            return Err(VmError::Invalid(format!(
                "expose: guest port {} must be 1-65535",
                p.port
            )));
        }
        {
            let _l = vm.lifecycle.lock().await;
            if !self.still_current(id, &vm) {
                return Err(VmError::NotFound(format!("vm {id}")));
            }
            if !vm
                .meta
                .read()
                .paused
                .as_ref()
                .is_some_and(PausedMeta::is_warm)
            {
                return Err(VmError::Conflict(format!(
                    "vm {id} is not warm; only a warm VM can be claimed"
                )));
            }
            if c.name != id && self.map.read().contains_key(&c.name) {
                return Err(VmError::Conflict(format!("vm {} exists already", c.name)));
            }
            let started = std::time::Instant::now();
            self.backend
                .vcpus(&vm.dir, true)
                .await
                .map_err(VmError::backend("starting the warm VM's vCPUs"))?;
            let token = vm.meta.read().token.clone();
            let hostname = c.hostname.clone().unwrap_or_else(|| c.name.clone());
            let op = identity(None, Some(&hostname), None);
            if let Err(e) = vm.link.call(&token, op, IDENTITY_LIMIT).await {
                // Back to warm, as it was: the claim can be retried.
                let _ = self.backend.vcpus(&vm.dir, false).await;
                return Err(VmError::RestoreFailed(format!(
                    "the warm VM {id} did not take its identity ({e}); log: {}",
                    log_tail(&vm.dir)
                )));
            }
            let meta = {
                let mut m = vm.meta.write();
                m.vm_id = c.name.clone();
                m.paused = None;
                m.clone()
            };
            write_meta(&vm.dir, &meta)?;
            {
                let mut map = self.map.write();
                map.remove(id);
                map.insert(c.name.clone(), vm.clone());
            }
            tracing::info!(warm_id = %id, vm_id = %c.name, claim_ms = started.elapsed().as_millis() as u64, "warm VM claimed");
        }
        if let Some(egress) = &c.egress {
            self.egress_set(&c.name, egress).await?;
        }
        for e in &c.expose {
            self.expose(&c.name, e).await?;
        }
        Ok(vm.wire(&self.opts.public_host))
    }
}

/// Whether `dir` is the directory of a registered VM (a claimed VM keeps its warm
/// directory, whose name a new VM must not take over).
pub(super) fn dir_in_use<'a>(mut dirs: impl Iterator<Item = &'a Path>, dir: &Path) -> bool {
    dirs.any(|d| d == dir)
}
