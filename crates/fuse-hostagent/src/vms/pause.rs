//! Pause and resume ([`fuse_types::hostagent::FEATURE_PAUSE`]): a paused VM's VMM is
//! stopped and its state kept in its own directory (memory and devices where the backend
//! captures them, `live`; the disk alone under the `process` backend, `disk`), recorded in
//! `vm.json` (`paused`). It keeps its network (tap, address, forwards) and its disk; its
//! capacity is its storage only. Guest operations on it are refused (409) until it resumes.
//!
//! Invariants: a failed pause leaves the VM running as it was; a failed resume leaves it
//! paused with its files intact (to retry, or to move); the record changes only once the
//! backend's step succeeded. A resume can start from a directory another host filled (the
//! backend's [`crate::backend::VmmBackend::paused_files`] and a `vm.json` with
//! `paused.moved`): the VMM is configured for this host's directory and network, and the
//! guest is given its new address.

use super::{log_tail, now_unix, write_meta, PausedMeta, Pending, PendingGuard, Vm, VmError, Vms};
use crate::backend::{BootSpec, PAUSED_LIVE};
use fuse_guest::proto::{Identity, IdentityNet, Op};
use fuse_types::hostagent::AgentVm;
use fuse_types::Resources;
use std::sync::Arc;
use std::time::Duration;

/// How long an identity may take in the guest.
const IDENTITY_LIMIT: Duration = Duration::from_secs(20);

/// A new locally administered unicast MAC (`x2:…`), random.
pub(super) fn random_mac() -> String {
    use rand::RngCore;
    let mut b = [0u8; 6];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b[0] = (b[0] & 0xfc) | 0x02;
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// What a guest that was not booted as itself is given (see `fuse_guest::identity`): the
/// host's clock and 64 fresh bytes of the host's random source always; `token`,
/// `hostname` and the network when given (`mac`: a new random one with the network).
pub(super) fn identity(
    token: Option<&str>,
    hostname: Option<&str>,
    net: Option<&crate::net::NetInfo>,
) -> Op {
    use base64::Engine as _;
    use rand::RngCore;
    let mut seed = [0u8; 64];
    rand::rngs::OsRng.fill_bytes(&mut seed);
    let unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    Op::Identity(Identity {
        new_token: token.map(str::to_owned),
        hostname: hostname.map(str::to_owned),
        net: net.map(|n| IdentityNet {
            dev: "eth0".into(),
            mac: Some(random_mac()),
            address: n.guest_ip.to_string(),
            prefix: 30,
            gateway: Some(n.host_ip.to_string()),
        }),
        unix_ms: Some(unix_ms),
        seed_b64: Some(base64::engine::general_purpose::STANDARD.encode(seed)),
    })
}

impl Vms {
    /// Pauses a VM (idempotent: a paused VM answers as it is).
    pub async fn pause(&self, id: &str) -> Result<AgentVm, VmError> {
        let vm = self.get(id)?;
        let _l = vm.lifecycle.lock().await;
        if !self.still_current(id, &vm) {
            return Err(VmError::NotFound(format!("vm {id}")));
        }
        if let Some(p) = vm.meta.read().paused.clone() {
            if p.is_warm() {
                return Err(VmError::Conflict(format!(
                    "vm {id} is warm; claim it or delete it"
                )));
            }
            return Ok(vm.wire(&self.opts.public_host));
        }
        let pid = vm.meta.read().pid;
        let started = std::time::Instant::now();
        let _pausing = vm.pausing();
        let paused = self
            .backend
            .pause(&vm.dir, pid)
            .await
            .map_err(VmError::backend("pausing the VM"))?;
        vm.link.reset().await;
        let meta = {
            let mut m = vm.meta.write();
            m.paused = Some(PausedMeta {
                kind: paused.kind.into(),
                size_bytes: paused.size_bytes,
                paused_unix: now_unix(),
                moved: false,
            });
            m.pid = -1;
            m.clone()
        };
        write_meta(&vm.dir, &meta)?;
        tracing::info!(vm_id = %id, kind = paused.kind, size = paused.size_bytes, pause_ms = started.elapsed().as_millis() as u64, "VM paused");
        Ok(vm.wire(&self.opts.public_host))
    }

    /// Reserves `need` for `id` against the host's capacity (live VMs and pending
    /// creates), or answers 503.
    async fn reserve(&self, id: &str, need: Resources) -> Result<PendingGuard<'_>, VmError> {
        let _g = self.creating.lock().await;
        let mut pending = self.pending.lock();
        if pending.contains_key(id) {
            return Err(VmError::Busy(format!("vm {id} is busy; retry")));
        }
        let used = self.in_use(&pending);
        if !self.capacity.minus(used).covers(need) {
            return Err(VmError::Busy(format!(
                "host has no room for vm {id} ({} CPUs, {} MiB free); retry on another host",
                self.capacity.cpus.saturating_sub(used.cpus),
                self.capacity.ram_mb.saturating_sub(used.ram_mb)
            )));
        }
        pending.insert(
            id.to_owned(),
            Pending {
                need,
                index: None,
                ports: Vec::new(),
            },
        );
        Ok(PendingGuard {
            vms: self,
            id: id.to_owned(),
        })
    }

    /// Resumes a paused VM into a new VMM (idempotent: a running VM answers as it is).
    pub async fn resume(&self, id: &str) -> Result<AgentVm, VmError> {
        let vm = self.get(id)?;
        let _l = vm.lifecycle.lock().await;
        if !self.still_current(id, &vm) {
            return Err(VmError::NotFound(format!("vm {id}")));
        }
        let Some(paused) = vm.meta.read().paused.clone() else {
            return Ok(vm.wire(&self.opts.public_host));
        };
        if paused.is_warm() {
            return Err(VmError::Conflict(format!(
                "vm {id} is warm; claim it instead of resuming it"
            )));
        }
        let meta = vm.meta.read().clone();
        let _reserved = self
            .reserve(
                id,
                Resources {
                    cpus: meta.cpus,
                    ram_mb: meta.memory_mb,
                    storage_gb: 0,
                    vm_count: 1,
                },
            )
            .await?;
        let spec = BootSpec {
            vm_id: id.to_owned(),
            dir: vm.dir.clone(),
            cpus: meta.cpus,
            memory_mb: meta.memory_mb,
            storage_gb: meta.storage_gb,
            token: meta.token.clone(),
            net: meta.net.clone(),
            base: None,
        };
        let started = std::time::Instant::now();
        let booted = self.backend.resume(&spec).await.map_err(|e| {
            VmError::RestoreFailed(format!(
                "vm {id} did not resume ({}); it stays paused; log: {}",
                crate::error_chain(&e),
                log_tail(&vm.dir)
            ))
        })?;
        tracing::info!(vm_id = %id, load_ms = started.elapsed().as_millis() as u64, "the paused VM's VMM runs");
        vm.link.reset().await;
        let ready = self.resumed_ready(&vm, &meta, &paused, booted.pid).await;
        if let Err(e) = ready {
            self.backend.stop(&vm.dir, booted.pid).await;
            vm.link.reset().await;
            return Err(VmError::RestoreFailed(format!(
                "vm {id} did not resume ({e}); it stays paused; log: {}",
                log_tail(&vm.dir)
            )));
        }
        let meta = {
            let mut m = vm.meta.write();
            m.paused = None;
            m.pid = booted.pid;
            m.clone()
        };
        write_meta(&vm.dir, &meta)?;
        self.backend.paused_cleanup(&vm.dir);
        self.health_start(&vm);
        tracing::info!(vm_id = %id, kind = %paused.kind, moved = paused.moved, resume_ms = started.elapsed().as_millis() as u64, "VM resumed");
        Ok(vm.wire(&self.opts.public_host))
    }

    /// At start: makes a paused VM's network again, its namespace being gone (kept by a
    /// mount of the previous agent's mount namespace, which an agent run in one of its own,
    /// as under `ip netns exec`, takes with it): the same slot, forwards and egress rules.
    /// A failure is logged; the VM's resume then fails and says why.
    pub(super) async fn net_remake(&self, net: &crate::net::Net, vm: &Vm) {
        let (id, info) = {
            let m = vm.meta.read();
            (m.vm_id.clone(), m.net.clone())
        };
        let (Some(info), Some(pool)) = (info, self.opts.pool) else {
            return;
        };
        let made = net
            .setup(
                &id,
                info.index,
                &pool,
                info.netns.is_some(),
                info.forward,
                info.exposed.clone(),
                info.egress.clone(),
            )
            .await;
        match made {
            Ok(n) => {
                let meta = {
                    let mut m = vm.meta.write();
                    m.net = Some(n);
                    m.clone()
                };
                if let Err(e) = write_meta(&vm.dir, &meta) {
                    tracing::warn!(vm_id = %id, error = %crate::error_chain(&e), "saving VM state");
                }
                tracing::info!(vm_id = %id, "made the paused VM's network again");
            }
            Err(e) => {
                tracing::warn!(vm_id = %id, error = %e.report(), "making the paused VM's network again")
            }
        }
    }

    /// Waits for a resumed guest's helper; a live one is given the clock, a fresh random
    /// pool, and, when it moved, its new network.
    async fn resumed_ready(
        &self,
        vm: &Arc<Vm>,
        meta: &super::VmMeta,
        paused: &PausedMeta,
        pid: i32,
    ) -> Result<(), VmError> {
        let t = std::time::Instant::now();
        vm.link
            .wait_ready(&meta.token, self.opts.boot_timeout, || {
                crate::backend::pid_running(pid)
            })
            .await?;
        tracing::info!(vm_id = %meta.vm_id, ready_ms = t.elapsed().as_millis() as u64, "the resumed guest helper answers");
        if paused.kind != PAUSED_LIVE {
            // Booted again: the guest took its network and the clock at boot.
            return Ok(());
        }
        let net = meta.net.as_ref().filter(|_| paused.moved);
        let op = identity(None, None, net);
        match vm.link.call(&meta.token, op, IDENTITY_LIMIT).await {
            Ok(_) => Ok(()),
            // Its clock and random pool are a nicety; a moved guest's address is not.
            Err(e) if !paused.moved => {
                tracing::warn!(vm_id = %meta.vm_id, error = %e, "the resumed guest took no identity (an older guest helper?)");
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The files a paused VM's resume needs (names inside its directory), for a move.
    pub fn paused_files(&self, id: &str) -> Result<Vec<String>, VmError> {
        let vm = self.get(id)?;
        if vm
            .meta
            .read()
            .paused
            .as_ref()
            .is_none_or(PausedMeta::is_warm)
        {
            return Err(VmError::Conflict(format!("vm {id} is not paused")));
        }
        Ok(self.backend.paused_files(&vm.dir))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_are_random_locally_administered_unicast() {
        let (a, b) = (random_mac(), random_mac());
        assert_ne!(a, b);
        let first = u8::from_str_radix(&a[..2], 16).unwrap();
        assert_eq!(first & 0x03, 0x02, "locally administered, unicast: {a}");
        assert_eq!(a.split(':').count(), 6, "{a}");
    }

    #[test]
    fn a_moved_resume_gives_the_guest_its_network_and_a_plain_one_only_clock_and_random() {
        let net = crate::net::NetInfo {
            index: 0,
            dev: "fvtap0".into(),
            netns: None,
            netns_id: None,
            host_ip: "10.200.0.1".parse().unwrap(),
            guest_ip: "10.200.0.2".parse().unwrap(),
            forward: None,
            exposed: vec![],
            egress: None,
        };
        let Op::Identity(id) = identity(None, None, Some(&net)) else {
            panic!("an identity op")
        };
        let n = id.net.unwrap();
        assert_eq!((n.address.as_str(), n.prefix), ("10.200.0.2", 30));
        assert_eq!(n.gateway.as_deref(), Some("10.200.0.1"));
        assert!(n.mac.is_some() && id.new_token.is_none() && id.hostname.is_none());
        let Op::Identity(plain) = identity(Some(&"t".repeat(32)), Some("h"), None) else {
            panic!("an identity op")
        };
        assert!(plain.net.is_none() && plain.unix_ms.is_some());
        use base64::Engine as _;
        let seed = base64::engine::general_purpose::STANDARD
            .decode(plain.seed_b64.unwrap())
            .unwrap();
        assert_eq!(seed.len(), 64);
    }

    #[test]
    fn an_older_vm_json_has_no_pause_and_a_paused_one_round_trips() {
        let old = r#"{"vm_id":"fuse-a","cpus":1,"memory_mb":128,"storage_gb":1,"pid":7,
                      "backend":"qemu","created_unix":1,"token":"t"}"#;
        let m: crate::vms::VmMeta = serde_json::from_str(old).unwrap();
        assert!(m.paused.is_none());
        assert!(!serde_json::to_string(&m).unwrap().contains("paused"));
        let p: PausedMeta =
            serde_json::from_str(r#"{"kind":"live","size_bytes":3,"paused_unix":4}"#).unwrap();
        assert!(!p.moved && !p.is_warm(), "moved defaults to false");
    }
}
