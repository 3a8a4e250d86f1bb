//! The host-agent wire (DESIGN §6): bearer token on every route, the JSON error envelope,
//! a body limit, and `/start-surfd` as an alias of `/start-agent` for the original wire.
//! `POST /v1/vm` with a `setup` does the whole guest setup before it answers (advertised as
//! the `provision` feature in `/healthz`), and with a `healthcheck_wait_ms` waits for the
//! first passing healthcheck (`healthcheck`); forks (`fork`) and published ports (`expose`)
//! are advertised the same way, and so is the ports tunnel (`tunnel`: a byte stream to a
//! guest port after `101 Switching Protocols`, and runtime `expose`); so are pause and
//! resume (`pause`) and templates, warm VMs and claims (`template`, where the backend
//! restores memory). Every request is counted by route, method and status in `/metrics`
//! (`fc_agent_http_requests_total`).

mod migrations;

use crate::vms::{VmError, Vms};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use fuse_guest::proto::Op;
use fuse_types::hostagent::{
    AgentExec, AgentExecResult, AgentHealth, AgentRestore, AgentSnapshotCreate, AgentStart,
    AgentUpload, AgentVmCreate, AgentVmList,
};
use fuse_types::{ErrorBody, ErrorCode, ErrorDetail};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;

/// Shared state of the HTTP layer.
pub struct AgentState {
    /// The VMs.
    pub vms: Vms,
    /// Bearer token.
    pub token: String,
    /// Request counters.
    pub metrics: Metrics,
}

/// What `fc-agent` counts (served at `/metrics`).
pub struct Metrics {
    registry: prometheus::Registry,
    requests: prometheus::IntCounterVec,
    duration: prometheus::HistogramVec,
}

impl Default for Metrics {
    fn default() -> Self {
        let registry = prometheus::Registry::new();
        let requests = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "fc_agent_http_requests_total",
                "Requests served, by route, method and status.",
            ),
            &["route", "method", "code"],
        )
        .unwrap_or_else(|e| panic!("metric fc_agent_http_requests_total: {e}"));
        let duration = prometheus::HistogramVec::new(
            prometheus::HistogramOpts::new(
                "fc_agent_http_request_duration_seconds",
                "Time to serve a request, by route and method.",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ]),
            &["route", "method"],
        )
        .unwrap_or_else(|e| panic!("metric fc_agent_http_request_duration_seconds: {e}"));
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(duration.clone()),
        ] {
            registry
                .register(c)
                .unwrap_or_else(|e| panic!("registering a metric: {e}"));
        }
        Metrics {
            registry,
            requests,
            duration,
        }
    }
}

impl Metrics {
    /// The text exposition.
    pub fn render(&self) -> String {
        use prometheus::Encoder as _;
        let mut out = Vec::new();
        let _ = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

type S = Arc<AgentState>;

fn envelope(status: StatusCode, code: ErrorCode, message: String) -> Response {
    envelope_with(status, code, message, serde_json::Map::new())
}

fn envelope_with(
    status: StatusCode,
    code: ErrorCode,
    message: String,
    details: serde_json::Map<String, serde_json::Value>,
) -> Response {
    let body = ErrorBody {
        error: ErrorDetail {
            code,
            message,
            details,
        },
    };
    (status, Json(body)).into_response()
}

impl IntoResponse for VmError {
    fn into_response(self) -> Response {
        use crate::link::LinkError;
        let (status, code) = match &self {
            VmError::NotFound(_) | VmError::Link(LinkError::NotFound(_)) => {
                (StatusCode::NOT_FOUND, ErrorCode::NotFound)
            }
            VmError::Invalid(_) | VmError::Link(LinkError::Guest(_)) => {
                (StatusCode::BAD_REQUEST, ErrorCode::InvalidArgument)
            }
            VmError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized),
            VmError::Transfer(_) => (StatusCode::BAD_GATEWAY, ErrorCode::Unavailable),
            VmError::Busy(_) | VmError::Link(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable)
            }
            VmError::Conflict(_) => (StatusCode::CONFLICT, ErrorCode::Conflict),
            VmError::Unsupported(_) => (StatusCode::NOT_IMPLEMENTED, ErrorCode::Unimplemented),
            VmError::Backend { .. }
            | VmError::Network(_)
            | VmError::State { .. }
            | VmError::GuestDidNotBoot(_)
            | VmError::SetupFailed { .. }
            | VmError::RestoreFailed(_) => (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal),
        };
        let message = crate::error_chain(&self);
        if status.is_server_error() {
            tracing::warn!(error = %message, "request failed");
        }
        let mut details = serde_json::Map::new();
        match &self {
            VmError::GuestDidNotBoot(_) => {
                details.insert(
                    "reason".into(),
                    fuse_types::hostagent::GUEST_DID_NOT_BOOT.into(),
                );
            }
            VmError::SetupFailed { step, .. } => {
                details.insert("reason".into(), fuse_types::hostagent::SETUP_FAILED.into());
                details.insert("step".into(), step.as_str().into());
            }
            _ => {}
        }
        envelope_with(status, code, message, details)
    }
}

/// Counts and times every routed request.
async fn observe(State(s): State<S>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().clone();
    let start = std::time::Instant::now();
    let resp = next.run(req).await;
    s.metrics
        .duration
        .with_label_values(&[&route, method.as_str()])
        .observe(start.elapsed().as_secs_f64());
    s.metrics
        .requests
        .with_label_values(&[&route, method.as_str(), resp.status().as_str()])
        .inc();
    resp
}

async fn metrics(State(s): State<S>) -> Response {
    (
        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
        s.metrics.render(),
    )
        .into_response()
}

async fn auth(State(s): State<S>, req: Request, next: Next) -> Response {
    if migrations::own_auth(req.method(), req.uri().path()) {
        return next.run(req).await;
    }
    let got = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let ok = !got.is_empty()
        && bool::from(Sha256::digest(got.as_bytes()).ct_eq(&Sha256::digest(s.token.as_bytes())));
    if !ok {
        return envelope(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            "missing or invalid bearer token".into(),
        );
    }
    next.run(req).await
}

/// The host's CPU architecture in Go's vocabulary (what the control plane matches
/// `spec.arch` against).
pub fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64",
        "loongarch64" => "loong64",
        other => other,
    }
}

async fn healthz(State(s): State<S>) -> Json<AgentHealth> {
    use fuse_types::hostagent::{
        FEATURE_EXPOSE, FEATURE_FORK, FEATURE_HEALTHCHECK, FEATURE_PROVISION, FEATURE_TUNNEL,
    };
    let mut features = vec![
        FEATURE_PROVISION,
        FEATURE_FORK,
        FEATURE_HEALTHCHECK,
        fuse_types::hostagent::FEATURE_RUNTIME,
        FEATURE_TUNNEL,
    ];
    features.push(fuse_types::hostagent::FEATURE_MIGRATE);
    if s.vms.can_expose() {
        features.push(FEATURE_EXPOSE);
        features.push(fuse_types::hostagent::FEATURE_EGRESS);
    }
    features.push(fuse_types::hostagent::FEATURE_PAUSE);
    if s.vms.restores_memory() {
        features.push(fuse_types::hostagent::FEATURE_TEMPLATE);
    }
    Json(AgentHealth {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        backend: s.vms.backend_name().into(),
        arch: go_arch().into(),
        acceleration: s.vms.acceleration(),
        capacity: s.vms.capacity,
        allocated: s.vms.allocated(),
        features: features.into_iter().map(str::to_owned).collect(),
        artifact_bytes: s.vms.artifact_bytes(),
    })
}

async fn vm_create(State(s): State<S>, Json(b): Json<AgentVmCreate>) -> Result<Response, VmError> {
    // In its own task: a caller that goes away must not leave a half-built VM behind.
    let (vm, created) = tokio::spawn(async move {
        let started = std::time::Instant::now();
        let (mut vm, created) = s.vms.create(&b).await?;
        let boot = started.elapsed();
        let guest = s.vms.get(&b.name)?;
        let mut steps = Vec::new();
        // A warm VM's setup warms it up (its claim runs the claiming environment's own).
        if let Some(setup) = &b.setup {
            let _permit = guest.admit()?;
            steps = if b.warm {
                s.vms.warm_up(&guest, setup).await?
            } else {
                crate::vms::setup::run(&guest, setup).await?
            };
        }
        // The healthcheck probes what the setup started: it starts after it.
        s.vms.health_start(&guest);
        let wait = std::time::Duration::from_millis(if b.warm { 0 } else { b.healthcheck_wait_ms });
        if let (Some(check), false) = (&guest.health, wait.is_zero()) {
            let t = std::time::Instant::now();
            check
                .wait_passing(wait)
                .await
                .map_err(|message| VmError::SetupFailed {
                    step: fuse_types::hostagent::SetupStep::Healthcheck,
                    message,
                })?;
            steps.push(fuse_types::hostagent::StepTiming {
                step: fuse_types::hostagent::SetupStep::Healthcheck,
                ms: t.elapsed().as_millis() as u64,
            });
            // The answer carries the verdict it waited for.
            vm = s.vms.describe(&b.name)?;
        }
        if b.setup.is_some() || !steps.is_empty() {
            vm.setup = Some(crate::vms::setup::report(boot, steps));
        }
        Ok::<_, VmError>((vm, created))
    })
    .await
    .map_err(|e| VmError::Busy(format!("the create was interrupted: {e}")))??;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(vm)).into_response())
}

async fn vm_list(
    State(s): State<S>,
    Query(q): Query<HashMap<String, String>>,
) -> Json<AgentVmList> {
    let mut vms = s
        .vms
        .list(q.get("prefix").map(String::as_str).unwrap_or(""));
    s.vms.observe_agents(&mut vms).await;
    Json(AgentVmList { vms })
}

async fn vm_get(State(s): State<S>, Path(id): Path<String>) -> Result<Response, VmError> {
    let mut vm = [s.vms.describe(&id)?];
    s.vms.observe_agents(&mut vm).await;
    let [vm] = vm;
    Ok(Json(vm).into_response())
}

/// `POST /v1/vm/{id}/pause`: the VM's state into its directory, its VMM stopped.
async fn vm_pause(State(s): State<S>, Path(id): Path<String>) -> Result<Response, VmError> {
    let vm = tokio::spawn(async move { s.vms.pause(&id).await })
        .await
        .map_err(|e| VmError::Busy(format!("the pause was interrupted: {e}")))??;
    Ok(Json(vm).into_response())
}

/// `POST /v1/vm/{id}/resume`: a paused VM in a new VMM, from its directory.
async fn vm_resume(State(s): State<S>, Path(id): Path<String>) -> Result<Response, VmError> {
    let vm = tokio::spawn(async move { s.vms.resume(&id).await })
        .await
        .map_err(|e| VmError::Busy(format!("the resume was interrupted: {e}")))??;
    Ok(Json(vm).into_response())
}

/// `POST /v1/vm/{id}/claim`: a warm VM becomes `name`, runs, then its setup is done.
async fn vm_claim(
    State(s): State<S>,
    Path(id): Path<String>,
    Json(b): Json<fuse_types::hostagent::AgentClaim>,
) -> Result<Response, VmError> {
    let vm = tokio::spawn(async move {
        let started = std::time::Instant::now();
        let mut vm = s.vms.claim(&id, &b).await?;
        let claimed = started.elapsed();
        let guest = s.vms.get(&b.name)?;
        if let Some(setup) = &b.setup {
            let _permit = guest.admit()?;
            let steps = crate::vms::setup::run(&guest, setup).await?;
            vm.setup = Some(crate::vms::setup::report(claimed, steps));
        }
        s.vms.health_start(&guest);
        Ok::<_, VmError>(vm)
    })
    .await
    .map_err(|e| VmError::Busy(format!("the claim was interrupted: {e}")))??;
    Ok(Json(vm).into_response())
}

async fn vm_delete(State(s): State<S>, Path(id): Path<String>) -> Result<StatusCode, VmError> {
    s.vms.destroy(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn upload(
    State(s): State<S>,
    Path(id): Path<String>,
    Json(b): Json<AgentUpload>,
) -> Result<StatusCode, VmError> {
    let vm = s.vms.get(&id)?;
    let _p = vm.admit()?;
    let op = Op::Upload {
        path: b.path,
        content_b64: b.content_b64,
        mode: b.mode,
        no_sync: false,
    };
    vm.guest(op, Duration::from_secs(60)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn exec(
    State(s): State<S>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    Json(b): Json<AgentExec>,
) -> Result<Response, VmError> {
    if b.cmd.is_empty() {
        return Err(VmError::Invalid("cmd must be a non-empty argv list".into()));
    }
    let vm = s.vms.get(&id)?;
    let permit = vm.admit()?;
    let ms = b.timeout_ms.unwrap_or(30_000);
    let limit = Duration::from_millis(ms) + Duration::from_secs(10);
    let stream = q.get("stream").is_some_and(|v| v == "true" || v == "1");
    let op = Op::Exec {
        cmd: b.cmd,
        shell: None,
        env: b.env,
        cwd: b.cwd,
        timeout_ms: Some(ms),
        stream,
        stdin_b64: b.stdin,
        window: stream.then_some(crate::link::WINDOW),
    };
    if stream {
        // NDJSON: one line per output chunk as it arrives, then the exit code. Each line is
        // forwarded as the guest sends it; a client that reads slowly slows the guest link
        // down (bounded channels), nothing piles up here.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(16);
        tokio::spawn(async move {
            let _permit = permit;
            let (rtx, mut rrx) = tokio::sync::mpsc::channel(16);
            let call = vm.guest_stream(op, limit, &rtx);
            tokio::pin!(call);
            let line = |v: String| Ok::<_, std::io::Error>(format!("{v}\n"));
            let result = loop {
                tokio::select! {
                    r = &mut call => break r,
                    // The client left: dropping the call hangs up, which kills the command.
                    _ = tx.closed() => return,
                    Some(resp) = rrx.recv() => {
                        let json = serde_json::to_string(&resp).unwrap_or_default();
                        if tx.send(line(json)).await.is_err() {
                            return; // the client left
                        }
                    }
                }
            };
            // The call is over: what it sent last is still queued.
            while let Ok(resp) = rrx.try_recv() {
                let json = serde_json::to_string(&resp).unwrap_or_default();
                if tx.send(line(json)).await.is_err() {
                    return;
                }
            }
            if let Err(e) = result {
                let err = serde_json::json!({ "error": e.to_string() }).to_string();
                let _ = tx.send(line(err)).await;
            }
        });
        let body = axum::body::Body::from_stream(tokio_stream_from(rx));
        return Ok(([("content-type", "application/x-ndjson")], body).into_response());
    }
    let lines = vm.guest(op, limit).await?;
    let last = lines.into_iter().last().unwrap_or_default();
    Ok(Json(AgentExecResult {
        exit_code: last.exit_code.unwrap_or(-1),
        stdout: last.stdout_b64.unwrap_or_default(),
        stderr: last.stderr_b64.unwrap_or_default(),
        truncated: last.truncated,
    })
    .into_response())
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<String, std::io::Error>>,
) -> impl futures_core::Stream<Item = Result<String, std::io::Error>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

async fn start_agent(
    State(s): State<S>,
    Path(id): Path<String>,
    Json(b): Json<AgentStart>,
) -> Result<StatusCode, VmError> {
    let vm = s.vms.get(&id)?;
    let _p = vm.admit()?;
    vm.guest(
        crate::vms::setup::start_agent_op(&b),
        Duration::from_secs(300),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn stop_agent(State(s): State<S>, Path(id): Path<String>) -> Result<StatusCode, VmError> {
    let vm = s.vms.get(&id)?;
    let _p = vm.admit()?;
    vm.guest(Op::StopAgent { grace_ms: None }, Duration::from_secs(30))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn snapshot(
    State(s): State<S>,
    Path(id): Path<String>,
    Json(b): Json<AgentSnapshotCreate>,
) -> Result<Response, VmError> {
    let mode = if b.mode.is_empty() {
        "disk".to_owned()
    } else {
        b.mode
    };
    let snap = s.vms.snapshot(&id, &b.snapshot_id, &mode).await?;
    Ok((StatusCode::CREATED, Json(snap)).into_response())
}

async fn snapshots(State(s): State<S>, Path(id): Path<String>) -> Result<Response, VmError> {
    Ok(Json(serde_json::json!({"snapshots": s.vms.snapshots(&id)?})).into_response())
}

async fn restore(
    State(s): State<S>,
    Path(id): Path<String>,
    Json(b): Json<AgentRestore>,
) -> Result<StatusCode, VmError> {
    s.vms.restore(&id, &b.snapshot_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn snapshot_delete(
    State(s): State<S>,
    Path((id, sid)): Path<(String, String)>,
) -> Result<StatusCode, VmError> {
    s.vms.snapshot_delete(&id, &sid).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// How long the tunnel route waits for the guest to accept a connection.
const TUNNEL_CONNECT: Duration = Duration::from_secs(5);

/// `GET /v1/vm/{id}/ports/{port}/tunnel` with `Upgrade: fuse-tunnel`: connects to the
/// guest's port first (a refusal is a 502 with `details.reason = guest_refused`, so the
/// control plane can say so), then answers `101` and copies bytes both ways until either
/// side closes. The control plane speaks HTTP (or anything else) over it.
async fn tunnel(
    State(s): State<S>,
    Path((id, port)): Path<(String, u16)>,
    mut req: Request,
) -> Result<Response, VmError> {
    use fuse_types::hostagent::{GUEST_REFUSED, TUNNEL_UPGRADE};
    let wants = req
        .headers()
        .get(axum::http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(TUNNEL_UPGRADE));
    if !wants {
        return Err(VmError::Invalid(format!(
            "the tunnel route needs Connection: Upgrade and Upgrade: {TUNNEL_UPGRADE}"
        )));
    }
    let target = s.vms.tunnel_target(&id, port)?;
    let refused = |message: String| {
        let mut d = serde_json::Map::new();
        d.insert("reason".into(), GUEST_REFUSED.into());
        d.insert("port".into(), port.into());
        envelope_with(StatusCode::BAD_GATEWAY, ErrorCode::Unavailable, message, d)
    };
    let guest =
        match tokio::time::timeout(TUNNEL_CONNECT, tokio::net::TcpStream::connect(target)).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                return Ok(refused(format!(
                    "the guest of vm {id} refused a connection to port {port}: {e}"
                )))
            }
            Err(_) => {
                return Ok(refused(format!(
                    "the guest of vm {id} did not accept a connection to port {port} within {} s",
                    TUNNEL_CONNECT.as_secs()
                )))
            }
        };
    let _ = guest.set_nodelay(true);
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(vm_id = %id, port, error = %e, "tunnel upgrade failed");
                return;
            }
        };
        let mut client = hyper_util::rt::TokioIo::new(upgraded);
        let mut guest = guest;
        match tokio::io::copy_bidirectional(&mut client, &mut guest).await {
            Ok((up, down)) => tracing::debug!(vm_id = %id, port, up, down, "tunnel closed"),
            Err(e) => tracing::debug!(vm_id = %id, port, error = %e, "tunnel ended"),
        }
    });
    Ok(Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(axum::http::header::CONNECTION, "upgrade")
        .header(axum::http::header::UPGRADE, TUNNEL_UPGRADE)
        .body(axum::body::Body::empty())
        .unwrap_or_default())
}

/// `POST /v1/vm/{id}/expose` `{port, protocol}`: one more host-port forward of a running
/// VM; 201 with the endpoint, or 200 with the one made before.
async fn expose(
    State(s): State<S>,
    Path(id): Path<String>,
    Json(b): Json<fuse_types::hostagent::PortExpose>,
) -> Result<Response, VmError> {
    let (ep, created) = s.vms.expose(&id, &b).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(ep)).into_response())
}

async fn egress_put(
    State(s): State<S>,
    Path(id): Path<String>,
    Json(b): Json<fuse_types::EgressRules>,
) -> Result<Json<fuse_types::hostagent::AgentEgress>, VmError> {
    let egress = s.vms.egress_set(&id, &b).await?;
    Ok(Json(fuse_types::hostagent::AgentEgress {
        vm_id: id,
        egress,
    }))
}

async fn egress_get(
    State(s): State<S>,
    Path(id): Path<String>,
) -> Result<Json<fuse_types::hostagent::AgentEgress>, VmError> {
    let egress = s.vms.egress_get(&id)?;
    Ok(Json(fuse_types::hostagent::AgentEgress {
        vm_id: id,
        egress,
    }))
}

/// `GET /v1/vm/{id}/logs?source=agent|startup|console&tail=N&follow=true`: the log as
/// `text/plain`, from its last `tail` lines (default: all of it), streamed; with `follow`
/// new output is sent as it is written (polled every 250 ms) until the client goes away or
/// the VM does. Errors before the first byte are the JSON envelope.
async fn logs(
    State(s): State<S>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, VmError> {
    use crate::vms::logs::{LogSource, Position};
    let source: LogSource = q.get("source").map_or("agent", String::as_str).parse()?;
    let tail = match q.get("tail").filter(|t| !t.is_empty()) {
        None => None,
        Some(t) => match t.parse::<u32>() {
            Ok(n) if n as usize <= fuse_guest::logs::MAX_TAIL_LINES => Some(n),
            _ => {
                return Err(VmError::Invalid(format!(
                    "tail {t:?} must be a number of lines from 0 to {}",
                    fuse_guest::logs::MAX_TAIL_LINES
                )))
            }
        },
    };
    let follow = match q.get("follow").map(String::as_str) {
        None | Some("false") | Some("0") | Some("") => false,
        Some("true") | Some("1") => true,
        Some(other) => {
            return Err(VmError::Invalid(format!(
                "follow {other:?} must be true or false"
            )))
        }
    };
    let vm = s.vms.get(&id)?;
    // The first chunk is read before answering, so a failure is a status, not a cut stream.
    let first = s.vms.log_chunk(&vm, source, Position::Tail(tail)).await?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    tokio::spawn(async move {
        let mut chunk = first;
        loop {
            let mut full = chunk.data.len() >= fuse_guest::logs::MAX_CHUNK;
            let pos = Position::At(chunk.id, chunk.next);
            if !chunk.data.is_empty() && tx.send(Ok(chunk.data)).await.is_err() {
                return; // the client left
            }
            chunk = loop {
                if !full {
                    if !follow {
                        return;
                    }
                    tokio::select! {
                        _ = tx.closed() => return,
                        _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                    }
                }
                match s.vms.log_chunk(&vm, source, pos).await {
                    Ok(c) => break c,
                    // Too busy now: again at the next tick.
                    Err(VmError::Busy(_)) => full = false,
                    Err(e) => {
                        tracing::info!(vm_id = %id, error = %crate::error_chain(&e), "a log stream ended");
                        return;
                    }
                }
            };
        }
    });
    let body =
        axum::body::Body::from_stream(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)));
    Ok((
        [
            ("content-type", "text/plain; charset=utf-8"),
            ("cache-control", "no-store"),
        ],
        body,
    )
        .into_response())
}

async fn not_found() -> Response {
    envelope(
        StatusCode::NOT_FOUND,
        ErrorCode::NotFound,
        "no such route".into(),
    )
}

/// The whole router.
pub fn router(state: S) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/vm", post(vm_create).get(vm_list))
        .route("/v1/vm/{id}", get(vm_get).delete(vm_delete))
        .route("/v1/vm/{id}/pause", post(vm_pause))
        .route("/v1/vm/{id}/resume", post(vm_resume))
        .route("/v1/vm/{id}/claim", post(vm_claim))
        .route("/v1/vm/{id}/upload", post(upload))
        .route("/v1/vm/{id}/exec", post(exec))
        .route(
            "/v1/vm/{id}/files",
            get(crate::runtime::get)
                .put(crate::runtime::put)
                .delete(crate::runtime::delete),
        )
        .route("/v1/vm/{id}/attach", get(crate::runtime::attach))
        .route("/v1/vm/{id}/start-agent", post(start_agent))
        .route("/v1/vm/{id}/start-surfd", post(start_agent))
        .route("/v1/vm/{id}/stop-agent", post(stop_agent))
        .route("/v1/vm/{id}/logs", get(logs))
        .route("/v1/vm/{id}/snapshot", post(snapshot))
        .route("/v1/vm/{id}/snapshots", get(snapshots))
        .route("/v1/vm/{id}/restore", post(restore))
        .route("/v1/vm/{id}/expose", post(expose))
        .route("/v1/vm/{id}/ports/{port}/tunnel", get(tunnel))
        .route("/v1/vm/{id}/egress", get(egress_get).put(egress_put))
        .route(
            "/v1/vm/{id}/snapshots/{sid}",
            axum::routing::delete(snapshot_delete),
        )
        .route("/v1/vm/{id}/send", post(migrations::send))
        .route(
            "/v1/vm/{id}/snapshots/{sid}/send",
            post(migrations::send_snapshot),
        )
        .route("/v1/snapshots", get(migrations::snapshots))
        .route("/v1/migrations", post(migrations::register))
        .route(
            "/v1/migrations/{id}",
            axum::routing::delete(migrations::abort),
        )
        .route(
            "/v1/migrations/{id}/files/{name}",
            axum::routing::put(migrations::receive),
        )
        .route("/v1/migrations/{id}/commit", post(migrations::commit))
        .route_layer(middleware::from_fn_with_state(state.clone(), observe))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), auth))
        .layer(DefaultBodyLimit::max(64 << 20))
        .with_state(state)
}
