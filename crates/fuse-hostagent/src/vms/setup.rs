//! A new VM's guest setup, done here over the VM's private link so that a control-plane
//! create is one call: the files (with their modes), the startup script (`sh -lc`, its
//! output in the guest's startup log; a non-zero exit fails the setup with the tail of its
//! output), then the agent (the guest answers once it is up, or fails with the reason). Each step is
//! timed; a failed step is [`VmError::SetupFailed`] naming it (the VM stays; the control
//! plane destroys it).

use super::{Vm, VmError};
use crate::link::LinkError;
use fuse_guest::proto::Op;
use fuse_types::hostagent::{
    output_tail, AgentStart, GuestSetup, SetupReport, SetupStep, StepTiming,
};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How long one file upload may take on the link.
const UPLOAD_LIMIT: Duration = Duration::from_secs(60);
/// How long the agent may take to be fetched and started.
const AGENT_LIMIT: Duration = Duration::from_secs(300);

/// The environment the agent is started with.
pub fn agent_env(a: &AgentStart) -> BTreeMap<String, String> {
    [
        ("FUSE_AUTH_TOKEN", &a.auth_token),
        ("FUSE_LISTEN", &a.listen),
        ("FUSE_GATEWAY", &a.gateway),
        ("FUSE_GATEWAY_TOKEN", &a.gateway_token),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.clone()))
    .collect()
}

/// The link operation that starts the agent.
pub fn start_agent_op(a: &AgentStart) -> Op {
    Op::StartAgent {
        download_url: a.download_url.clone(),
        command: a.command.clone(),
        binary_path: a.binary_path.clone(),
        env: agent_env(a),
        sha256: a.sha256.clone(),
        listen: a.listen.clone(),
        start_window_ms: a.start_window_ms,
    }
}

fn failed(step: SetupStep, e: VmError) -> VmError {
    let message = match e {
        // The guest's own words (a bad path, a command that does not exist).
        VmError::Link(LinkError::Guest(m)) => m,
        other => other.to_string(),
    };
    VmError::SetupFailed { step, message }
}

/// Runs `setup` in `vm`'s guest; returns the timings of the steps after `boot`.
pub async fn run(vm: &Vm, setup: &GuestSetup) -> Result<Vec<StepTiming>, VmError> {
    let mut steps = Vec::new();
    let mut t = Instant::now();
    let mut lap = |step: SetupStep, t: &mut Instant| {
        steps.push(StepTiming {
            step,
            ms: t.elapsed().as_millis() as u64,
        });
        *t = Instant::now();
    };
    // The files at once, each on its own channel of the link: a guest writes (and syncs)
    // them in parallel, so the step costs about one file's round trip, not one per file
    // (five small files took ~190 ms one after another under QEMU TCG, ~60 ms at once). A
    // path given twice keeps its last content, as when they were written in order.
    let mut last: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, f) in setup.files.iter().enumerate() {
        last.insert(f.path.as_str(), i);
    }
    let writes = setup
        .files
        .iter()
        .enumerate()
        .filter(|(i, f)| last.get(f.path.as_str()) == Some(i))
        .map(|(_, f)| {
            let op = Op::Upload {
                path: f.path.clone(),
                content_b64: f.content_b64.clone(),
                mode: Some(f.mode),
                no_sync: true,
            };
            vm.guest(op, UPLOAD_LIMIT)
        });
    for r in futures_util::future::join_all(writes).await {
        r.map_err(|e| failed(SetupStep::Files, e))?;
    }
    lap(SetupStep::Files, &mut t);
    if let Some(s) = &setup.startup {
        // Run by the guest with its output in the guest's startup log (`logs?source=startup`).
        let op = Op::Startup {
            script: s.script.clone(),
            timeout_ms: Some(s.timeout_ms),
        };
        let limit = Duration::from_millis(s.timeout_ms) + Duration::from_secs(10);
        let lines = vm
            .guest(op, limit)
            .await
            .map_err(|e| failed(SetupStep::StartupScript, e))?;
        let last = lines.into_iter().last().unwrap_or_default();
        let code = last.exit_code.unwrap_or(-1);
        if code != 0 {
            let output = last
                .stderr_b64
                .as_deref()
                .map(|b| {
                    use base64::Engine as _;
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(b)
                        .unwrap_or_default();
                    String::from_utf8_lossy(&bytes).into_owned()
                })
                .unwrap_or_default();
            return Err(VmError::SetupFailed {
                step: SetupStep::StartupScript,
                message: format!("exited with {code}: {}", output_tail(&output, 400)),
            });
        }
        lap(SetupStep::StartupScript, &mut t);
    }
    if let Some(a) = &setup.agent {
        vm.guest(start_agent_op(a), AGENT_LIMIT)
            .await
            .map_err(|e| failed(SetupStep::StartAgent, e))?;
        lap(SetupStep::StartAgent, &mut t);
    }
    Ok(steps)
}

/// The report of a create: its boot time, then the setup's steps.
pub fn report(boot: Duration, after: Vec<StepTiming>) -> SetupReport {
    let mut steps = vec![StepTiming {
        step: SetupStep::Boot,
        ms: boot.as_millis() as u64,
    }];
    steps.extend(after);
    SetupReport { steps }
}
