//! The stub provider served over HTTP with the host-agent wire (DESIGN §6): a fake host for
//! tests that need a host which outlives a `fuse` process (crash recovery) and for testing
//! [`super::hostagent::HostAgentClient`] against a real socket. Never a production host.

use super::stub::StubProvider;
use super::{Provider, ProviderError};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use fuse_types::hostagent::{
    AgentExec, AgentExecResult, AgentRestore, AgentSnapshotCreate, AgentStart, AgentUpload,
    AgentVmCreate, AgentVmList,
};
use fuse_types::{ErrorBody, ErrorCode, ErrorDetail};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone)]
struct S {
    stub: Arc<StubProvider>,
    token: String,
}

fn err(status: StatusCode, code: ErrorCode, msg: impl Into<String>) -> Response {
    let body = ErrorBody {
        error: ErrorDetail {
            code,
            message: msg.into(),
            details: serde_json::Map::new(),
        },
    };
    (status, Json(body)).into_response()
}

fn from_provider(e: ProviderError) -> Response {
    match e {
        ProviderError::NotFound(m) => err(StatusCode::NOT_FOUND, ErrorCode::NotFound, m),
        ProviderError::Rejected { message, .. } => {
            err(StatusCode::BAD_REQUEST, ErrorCode::InvalidArgument, message)
        }
        e => err(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            e.to_string(),
        ),
    }
}

fn authorized(s: &S, h: &HeaderMap) -> bool {
    let want = format!("Bearer {}", s.token);
    h.get("authorization").and_then(|v| v.to_str().ok()) == Some(want.as_str())
}

macro_rules! guard {
    ($s:expr, $h:expr) => {
        if !authorized(&$s, &$h) {
            return err(
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthorized,
                "bad token",
            );
        }
    };
}

async fn healthz(State(s): State<S>, h: HeaderMap) -> Response {
    guard!(s, h);
    match s.stub.health().await {
        Ok(v) => Json(v).into_response(),
        Err(e) => from_provider(e),
    }
}

async fn vm_create(State(s): State<S>, h: HeaderMap, Json(b): Json<AgentVmCreate>) -> Response {
    guard!(s, h);
    match s.stub.vm_create(&b).await {
        Ok(v) => (StatusCode::CREATED, Json(v)).into_response(),
        Err(e) => from_provider(e),
    }
}

async fn vm_list(
    State(s): State<S>,
    h: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    guard!(s, h);
    let prefix = q.get("prefix").cloned().unwrap_or_default();
    match s.stub.vm_list(&prefix).await {
        Ok(vms) => Json(AgentVmList { vms }).into_response(),
        Err(e) => from_provider(e),
    }
}

async fn vm_get(State(s): State<S>, h: HeaderMap, Path(id): Path<String>) -> Response {
    guard!(s, h);
    match s.stub.vm_list(&id).await {
        Ok(vms) => match vms.into_iter().find(|v| v.vm_id == id) {
            Some(v) => Json(v).into_response(),
            None => err(
                StatusCode::NOT_FOUND,
                ErrorCode::NotFound,
                format!("vm {id}"),
            ),
        },
        Err(e) => from_provider(e),
    }
}

async fn vm_delete(State(s): State<S>, h: HeaderMap, Path(id): Path<String>) -> Response {
    guard!(s, h);
    if s.stub.vm(&id).is_none() {
        return err(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            format!("vm {id}"),
        );
    }
    match s.stub.vm_destroy(&id).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => from_provider(e),
    }
}

async fn upload(
    State(s): State<S>,
    h: HeaderMap,
    Path(id): Path<String>,
    Json(b): Json<AgentUpload>,
) -> Response {
    guard!(s, h);
    let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(&b.content_b64) else {
        return err(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidArgument,
            "content_b64 is not base64",
        );
    };
    match s
        .stub
        .upload(&id, &b.path, &bytes, b.mode.unwrap_or(0o644))
        .await
    {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => from_provider(e),
    }
}

async fn exec(
    State(s): State<S>,
    h: HeaderMap,
    Path(id): Path<String>,
    Json(b): Json<AgentExec>,
) -> Response {
    guard!(s, h);
    let t = Duration::from_millis(b.timeout_ms.unwrap_or(30_000));
    match s.stub.exec(&id, &b.cmd, t).await {
        Ok(r) => {
            let enc = |x: &str| base64::engine::general_purpose::STANDARD.encode(x);
            Json(AgentExecResult {
                exit_code: r.exit_code,
                stdout: enc(&r.stdout),
                stderr: enc(&r.stderr),
                truncated: false,
            })
            .into_response()
        }
        Err(e) => from_provider(e),
    }
}

async fn start_agent(
    State(s): State<S>,
    h: HeaderMap,
    Path(id): Path<String>,
    Json(b): Json<AgentStart>,
) -> Response {
    guard!(s, h);
    if s.stub.surfd_only() {
        return err(StatusCode::NOT_FOUND, ErrorCode::NotFound, "no such route");
    }
    start(&s, &id, &b).await
}

/// The original agent's route (same payload).
async fn start_surfd(
    State(s): State<S>,
    h: HeaderMap,
    Path(id): Path<String>,
    Json(b): Json<AgentStart>,
) -> Response {
    guard!(s, h);
    start(&s, &id, &b).await
}

async fn start(s: &S, id: &str, b: &AgentStart) -> Response {
    match s.stub.start_agent(id, b).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => from_provider(e),
    }
}

async fn stop_agent(State(s): State<S>, h: HeaderMap, Path(id): Path<String>) -> Response {
    guard!(s, h);
    match s.stub.stop_agent(&id).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => from_provider(e),
    }
}

async fn snapshot(
    State(s): State<S>,
    h: HeaderMap,
    Path(id): Path<String>,
    Json(b): Json<AgentSnapshotCreate>,
) -> Response {
    guard!(s, h);
    match s.stub.snapshot_create(&id, &b.snapshot_id, &b.mode).await {
        Ok(v) => (StatusCode::CREATED, Json(v)).into_response(),
        Err(e) => from_provider(e),
    }
}

async fn restore(
    State(s): State<S>,
    h: HeaderMap,
    Path(id): Path<String>,
    Json(b): Json<AgentRestore>,
) -> Response {
    guard!(s, h);
    match s.stub.snapshot_restore(&id, &b.snapshot_id).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => from_provider(e),
    }
}

async fn snapshot_delete(
    State(s): State<S>,
    h: HeaderMap,
    Path((id, sid)): Path<(String, String)>,
) -> Response {
    guard!(s, h);
    match s.stub.snapshot_delete(&id, &sid).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => from_provider(e),
    }
}

/// The host-agent routes over `stub`, requiring `token`.
pub fn router(stub: Arc<StubProvider>, token: &str) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/vm", post(vm_create).get(vm_list))
        .route("/v1/vm/{id}", get(vm_get).delete(vm_delete))
        .route("/v1/vm/{id}/upload", post(upload))
        .route("/v1/vm/{id}/exec", post(exec))
        .route("/v1/vm/{id}/start-agent", post(start_agent))
        .route("/v1/vm/{id}/start-surfd", post(start_surfd))
        .route("/v1/vm/{id}/stop-agent", post(stop_agent))
        .route("/v1/vm/{id}/snapshot", post(snapshot))
        .route("/v1/vm/{id}/restore", post(restore))
        .route(
            "/v1/vm/{id}/snapshots/{sid}",
            axum::routing::delete(snapshot_delete),
        )
        .with_state(S {
            stub,
            token: token.to_owned(),
        })
}

/// Serves a stub host on `addr` until the returned task is aborted.
pub async fn serve(
    addr: SocketAddr,
    stub: Arc<StubProvider>,
    token: &str,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = router(stub, token);
    let join = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((bound, join))
}
