//! The cold-migration routes (`FEATURE_MIGRATE`: a paused VM or a snapshot to another
//! host) and the host-wide snapshot list. The
//! receiving routes (a file, the commit) are called by another host's agent with the
//! transfer's one-time token instead of this host's token: [`own_auth`] names them for the
//! host-token check to let through, and they check the one-time token before they read
//! a byte of the body.

use super::S;
use crate::vms::migrate::Arrived;
use crate::vms::VmError;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use fuse_types::hostagent::{
    AgentMigrationCommit, AgentMigrationIn, AgentSend, AgentSent, AgentSnapshotList, HEADER_SHA256,
};

/// Whether the route authenticates with a transfer's one-time token (not the host token):
/// `PUT /v1/migrations/{id}/files/{name}` and `POST /v1/migrations/{id}/commit`.
pub fn own_auth(method: &Method, path: &str) -> bool {
    let parts: Vec<&str> = path.split('/').collect();
    match parts.as_slice() {
        ["", "v1", "migrations", _, "files", _] => method == Method::PUT,
        ["", "v1", "migrations", _, "commit"] => method == Method::POST,
        _ => false,
    }
}

fn bearer(headers: &HeaderMap) -> &str {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
}

/// `POST /v1/migrations`: expect a VM from another host.
pub async fn register(
    State(s): State<S>,
    Json(b): Json<AgentMigrationIn>,
) -> Result<StatusCode, VmError> {
    s.vms.migration_register(&b)?;
    Ok(StatusCode::CREATED)
}

/// `DELETE /v1/migrations/{id}`: forget it and what arrived of it.
pub async fn abort(State(s): State<S>, Path(id): Path<String>) -> Result<StatusCode, VmError> {
    s.vms.migration_abort(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /v1/migrations/{id}/files/{name}` (one-time token): one file, streamed.
pub async fn receive(
    State(s): State<S>,
    Path((id, name)): Path<(String, String)>,
    req: Request,
) -> Result<Response, VmError> {
    let (parts, body) = req.into_parts();
    let sha = parts
        .headers
        .get(HEADER_SHA256)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let f = s
        .vms
        .migration_receive(
            &id,
            &name,
            bearer(&parts.headers),
            &sha,
            body.into_data_stream(),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(f)).into_response())
}

/// `POST /v1/migrations/{id}/commit` (one-time token): the VM is here now, paused.
pub async fn commit(
    State(s): State<S>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, VmError> {
    // The body is read only after the token: parsed here, not by an extractor.
    let token = bearer(&headers).to_owned();
    let parse = || {
        serde_json::from_slice::<AgentMigrationCommit>(&body)
            .map_err(|e| VmError::Invalid(format!("the commit body does not parse: {e}")))
    };
    Ok(match s.vms.migration_commit(&id, &token, parse).await? {
        Arrived::Vm(vm) => (StatusCode::CREATED, Json(vm)).into_response(),
        Arrived::Snapshot(snap) => (StatusCode::CREATED, Json(snap)).into_response(),
    })
}

/// `POST /v1/vm/{id}/send`: stream a paused VM to another host.
pub async fn send(
    State(s): State<S>,
    Path(id): Path<String>,
    Json(b): Json<AgentSend>,
) -> Result<Json<AgentSent>, VmError> {
    Ok(Json(s.vms.send(&id, &b).await?))
}

/// `POST /v1/vm/{id}/snapshots/{sid}/send`: copy a snapshot to another host's store.
pub async fn send_snapshot(
    State(s): State<S>,
    Path((id, sid)): Path<(String, String)>,
    Json(b): Json<AgentSend>,
) -> Result<Json<AgentSent>, VmError> {
    Ok(Json(s.vms.send_snapshot(&id, &sid, &b).await?))
}

/// `GET /v1/snapshots`: every snapshot in the host's store.
pub async fn snapshots(State(s): State<S>) -> Json<AgentSnapshotList> {
    Json(AgentSnapshotList {
        snapshots: s.vms.snapshots_all(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_receiving_routes_skip_the_host_token() {
        for (m, p, own) in [
            (Method::PUT, "/v1/migrations/fuse-a/files/root.tar", true),
            (Method::POST, "/v1/migrations/fuse-a/commit", true),
            (Method::GET, "/v1/migrations/fuse-a/files/root.tar", false),
            (Method::POST, "/v1/migrations/fuse-a/files/root.tar", false),
            (Method::PUT, "/v1/migrations/fuse-a/commit", false),
            (Method::POST, "/v1/migrations", false),
            (Method::DELETE, "/v1/migrations/fuse-a", false),
            (Method::PUT, "/v1/migrations/fuse-a/files/x/y", false),
            (Method::POST, "/v1/migrations/fuse-a/commit/", false),
            (Method::POST, "/v1/vm/fuse-a/send", false),
        ] {
            assert_eq!(own_auth(&m, p), own, "{m} {p}");
        }
    }
}
