//! Booting a VM until its guest helper answers, under the backend's boot watchdog: a guest
//! that neither answers nor exits within it is booted again, once (a rare silent hang early
//! in an emulated boot, see docs/hosts.md); one that exits (a broken image, a kernel panic)
//! is not retried, as it would fail the same way, and its failure carries the tail of its
//! console. The VM's state is written before each wait, so an agent that dies meanwhile
//! leaves a VM the next start reclaims.

use super::{log_tail, write_meta, VmError, VmMeta, Vms};
use crate::backend::BootSpec;
use crate::link::Link;

impl Vms {
    /// Boots `spec` until its guest helper answers on `link`, recording the VM's process in
    /// `meta`. On failure the VM is stopped; the caller removes its network and directory.
    pub(super) async fn boot_until_ready(
        &self,
        spec: &BootSpec,
        meta: &mut VmMeta,
        link: &Link,
    ) -> Result<(), VmError> {
        let dir = &spec.dir;
        // The boot watchdog: a guest that neither answers nor exits within it is booted
        // again, once (a rare silent hang early in boot, see docs/hosts.md); one that exits
        // (a broken image, a kernel panic) is not retried: it would fail the same way.
        let (per_try, attempts) = match self.backend.boot_watchdog() {
            Some(w) => (w.min(self.opts.boot_timeout), 2),
            None => (self.opts.boot_timeout, 1),
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let started = std::time::Instant::now();
            let booted = self
                .backend
                .boot(spec)
                .await
                .map_err(VmError::backend("booting the VM"))?;
            meta.pid = booted.pid;
            if let Err(e) = write_meta(dir, meta) {
                self.backend.stop(dir, booted.pid).await;
                return Err(e);
            }
            // The process was started moments ago by this call: its pid is checked without
            // the command-line marker (which reads empty while the process `exec`s).
            let alive = || crate::backend::pid_running(booted.pid);
            let e = match link.wait_ready(&meta.token, per_try, alive).await {
                Ok(()) => {
                    tracing::info!(
                        vm_id = %spec.vm_id,
                        backend = self.backend.name(),
                        ready_ms = started.elapsed().as_millis() as u64,
                        attempt,
                        "guest helper ready"
                    );
                    break;
                }
                Err(e) => e,
            };
            let exited = !alive();
            self.backend.stop(dir, booted.pid).await;
            link.reset().await;
            if !exited && attempt < attempts {
                tracing::warn!(
                    vm_id = %spec.vm_id,
                    watchdog_secs = per_try.as_secs(),
                    "guest did not answer within the boot watchdog; booting it again"
                );
                continue;
            }
            let log = log_tail(dir);
            let tail: String = log
                .chars()
                .rev()
                .take(800)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            let why = if exited {
                "the VM stopped during boot: the guest did not come up".to_owned()
            } else {
                format!(
                    "guest helper never answered within {} s ({attempt} boot attempts)",
                    per_try.as_secs()
                )
            };
            return Err(VmError::GuestDidNotBoot(format!(
                "{why} ({e}); log: {tail}"
            )));
        }
        Ok(())
    }
}
