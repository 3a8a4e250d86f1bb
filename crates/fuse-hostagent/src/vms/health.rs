//! A VM's healthcheck, run by the host against the guest for the VM's whole life: one task
//! per VM probing every interval (the first probe at once), each outcome fed to the pure
//! [`fuse_types::health::Machine`], whose verdict is what `GET /v1/vm/{id}` reports. The
//! task starts once the create's guest setup is done (or when an adopted VM is taken over
//! after an agent restart, from `starting` again) and stops when the VM is destroyed.
//!
//! Probes go through the guest helper: `exec` runs the argv in the guest with the timing's
//! timeout (exit 0 passes); `http` is the helper's `http_get` of
//! `http://127.0.0.1:{port}{path}` inside the guest (2xx and 3xx pass).

use super::{Vm, VmError};
use crate::link::LinkError;
use fuse_guest::proto::Op;
use fuse_types::health::{Machine, Outcome, Timing};
use fuse_types::hostagent::output_tail;
use fuse_types::{Health, HealthState, HealthcheckSpec};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How much longer than the probe's own timeout its call on the link may take.
const LINK_SLACK: Duration = Duration::from_secs(5);

/// Checks a healthcheck as a client sends it: exactly one of `http` and `exec`.
pub fn validate(spec: &HealthcheckSpec) -> Result<(), VmError> {
    match (&spec.http, &spec.exec) {
        (Some(h), None) if h.port == 0 => Err(VmError::Invalid(
            "healthcheck.http.port must be 1-65535".into(),
        )),
        (Some(h), None) if !h.path.is_empty() && !h.path.starts_with('/') => Err(VmError::Invalid(
            "healthcheck.http.path must start with '/'".into(),
        )),
        (None, Some(argv)) if argv.is_empty() || argv[0].is_empty() => Err(VmError::Invalid(
            "healthcheck.exec must be a non-empty argv list".into(),
        )),
        (Some(_), None) | (None, Some(_)) => Ok(()),
        _ => Err(VmError::Invalid(
            "healthcheck takes exactly one of http and exec".into(),
        )),
    }
}

/// One VM's healthcheck: its spec, its running verdict, and its task's stop switch.
pub struct Check {
    spec: HealthcheckSpec,
    timing: Timing,
    machine: parking_lot::Mutex<Machine>,
    verdict: watch::Sender<Health>,
    started: AtomicBool,
    stop: CancellationToken,
}

impl Check {
    /// A check of `spec`, `starting` from now; its task is not running yet.
    pub fn new(spec: HealthcheckSpec) -> Check {
        let timing = Timing::of(&spec);
        let machine = Machine::new(timing, fuse_types::now());
        let (verdict, _) = watch::channel(machine.health().clone());
        Check {
            spec,
            timing,
            machine: parking_lot::Mutex::new(machine),
            verdict,
            started: AtomicBool::new(false),
            stop: CancellationToken::new(),
        }
    }

    /// The current verdict.
    pub fn health(&self) -> Health {
        self.verdict.borrow().clone()
    }

    /// Starts the probe task of `vm` (whose check this is); a second call does nothing.
    pub fn start(self: &Arc<Self>, vm: Arc<Vm>) {
        if self.started.swap(true, Ordering::SeqCst) {
            return;
        }
        let check = self.clone();
        tokio::spawn(async move {
            loop {
                let id = vm.meta.read().vm_id.clone();
                // A paused VM is not probed (its guest does not run): its verdict stays
                // what it was until it resumes.
                if vm.meta.read().paused.is_some() {
                    tokio::select! {
                        _ = check.stop.cancelled() => return,
                        _ = tokio::time::sleep(check.timing.interval) => {}
                    }
                    continue;
                }
                let outcome = tokio::select! {
                    _ = check.stop.cancelled() => return,
                    o = probe(&vm, &check.spec, check.timing.timeout) => o,
                };
                let health = {
                    let mut m = check.machine.lock();
                    let changed = m.observe(outcome, fuse_types::now());
                    let h = m.health().clone();
                    if changed {
                        tracing::info!(vm_id = %id, state = h.state.as_str(), message = %h.message, "healthcheck verdict changed");
                    }
                    h
                };
                check.verdict.send_replace(health);
                tokio::select! {
                    _ = check.stop.cancelled() => return,
                    _ = tokio::time::sleep(check.timing.interval) => {}
                }
            }
        });
    }

    /// Stops the probe task (idempotent).
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Waits until the check passes, at most `limit`; the error is the last probe's
    /// message.
    pub async fn wait_passing(&self, limit: Duration) -> Result<(), String> {
        let mut rx = self.verdict.subscribe();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let h = rx.borrow_and_update().clone();
            if h.state == HealthState::Passing {
                return Ok(());
            }
            let waited = tokio::time::timeout_at(deadline, rx.changed()).await;
            if !matches!(waited, Ok(Ok(()))) {
                let h = self.health();
                if h.state == HealthState::Passing {
                    return Ok(());
                }
                return Err(if h.message.is_empty() {
                    format!("no probe passed within {} ms", limit.as_millis())
                } else {
                    format!(
                        "not passing after {} ms ({}): {}",
                        limit.as_millis(),
                        h.state.as_str(),
                        h.message
                    )
                });
            }
        }
    }
}

/// Runs one probe of `spec` in `vm`'s guest.
async fn probe(vm: &Vm, spec: &HealthcheckSpec, timeout: Duration) -> Outcome {
    let ms = timeout.as_millis() as u64;
    let op = match (&spec.http, &spec.exec) {
        (Some(h), _) => Op::HttpGet {
            port: h.port,
            path: h.path.clone(),
            timeout_ms: Some(ms),
        },
        (None, Some(argv)) => Op::Exec {
            cmd: argv.clone(),
            shell: None,
            env: BTreeMap::new(),
            cwd: None,
            timeout_ms: Some(ms),
            stream: false,
            stdin_b64: None,
            window: None,
        },
        (None, None) => return Outcome::Fail("the healthcheck has no probe".into()),
    };
    let is_http = spec.http.is_some();
    let lines = match vm.guest(op, timeout + LINK_SLACK).await {
        Ok(l) => l,
        // The guest's own words (connection refused, a bad answer).
        Err(VmError::Link(LinkError::Guest(m))) => return Outcome::Fail(m),
        Err(e) => return Outcome::Fail(crate::error_chain(&e)),
    };
    let last = lines.into_iter().last().unwrap_or_default();
    if is_http {
        return match last.http_status {
            Some(c) if (200..400).contains(&c) => Outcome::Pass,
            Some(c) => Outcome::Fail(format!("HTTP {c}")),
            None => Outcome::Fail("the guest helper gave no HTTP status".into()),
        };
    }
    match last.exit_code {
        Some(0) => Outcome::Pass,
        code => {
            use base64::Engine as _;
            let text = |b: &Option<String>| {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(b.as_deref().unwrap_or(""))
                    .unwrap_or_default();
                String::from_utf8_lossy(&bytes).into_owned()
            };
            let (err, out) = (text(&last.stderr_b64), text(&last.stdout_b64));
            let said = if err.trim().is_empty() { out } else { err };
            let code = code.unwrap_or(-1);
            Outcome::Fail(match output_tail(&said, 400) {
                "" => format!("exited with {code}"),
                tail => format!("exited with {code}: {tail}"),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fuse_types::HealthcheckHttp;

    #[test]
    fn exactly_one_probe() {
        let http = Some(HealthcheckHttp {
            port: 8080,
            path: "/ready".into(),
        });
        let exec = Some(vec!["true".to_owned()]);
        let spec = |http, exec| HealthcheckSpec {
            http,
            exec,
            ..HealthcheckSpec::default()
        };
        assert!(validate(&spec(http.clone(), None)).is_ok());
        assert!(validate(&spec(None, exec.clone())).is_ok());
        assert!(validate(&spec(http, exec)).is_err());
        assert!(validate(&spec(None, None)).is_err());
        assert!(validate(&spec(None, Some(vec![]))).is_err());
        let no_port = Some(HealthcheckHttp::default());
        assert!(validate(&spec(no_port, None)).is_err());
    }

    #[tokio::test]
    async fn waiting_ends_with_the_last_message() {
        let c = Check::new(HealthcheckSpec {
            exec: Some(vec!["false".into()]),
            retries: 1,
            ..HealthcheckSpec::default()
        });
        let e = c.wait_passing(Duration::from_millis(10)).await.unwrap_err();
        assert!(e.contains("no probe passed"), "{e}");
        c.machine.lock().observe(
            Outcome::Fail("exited with 1: nope".into()),
            fuse_types::now(),
        );
        c.verdict.send_replace(c.machine.lock().health().clone());
        let e = c.wait_passing(Duration::from_millis(10)).await.unwrap_err();
        assert!(e.ends_with("(failing): exited with 1: nope"), "{e}");
        c.machine.lock().observe(Outcome::Pass, fuse_types::now());
        c.verdict.send_replace(c.machine.lock().health().clone());
        assert_eq!(c.wait_passing(Duration::from_millis(10)).await, Ok(()));
    }
}
