//! Snapshot handlers.

use super::error::ApiError;
use super::extract::{ApiJson, Params};
use crate::app::App;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use fuse_store::SnapshotFilter;
use fuse_types::{CreateSnapshot, SnapshotList, SnapshotState};
use std::sync::Arc;

pub async fn create(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<CreateSnapshot>,
) -> Result<Response, ApiError> {
    let s = app.snapshot_create(&id, req).await?;
    Ok((StatusCode::CREATED, Json(s.to_wire())).into_response())
}

pub async fn list(State(app): State<Arc<App>>, q: Params) -> Result<Response, ApiError> {
    let filter = SnapshotFilter {
        vm_id: q.str("vm_id").map(str::to_owned),
        task_id: q.str("task_id").map(str::to_owned),
        state: q.parse::<SnapshotState>("state")?,
    };
    let all = app.snapshot_list(filter).await?;
    Ok(Json(SnapshotList {
        snapshots: all.iter().map(|s| s.to_wire()).collect(),
    })
    .into_response())
}

pub async fn get(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(app.snapshot_get(&id).await?.to_wire()).into_response())
}

pub async fn delete(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    app.snapshot_delete(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/snapshots/{id}?action=restore`.
pub async fn action(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    q: Params,
) -> Result<StatusCode, ApiError> {
    match q.str("action") {
        Some("restore") => {
            app.snapshot_restore(&id).await?;
            Ok(StatusCode::NO_CONTENT)
        }
        Some(other) => Err(ApiError::invalid(format!(
            "unknown action {other:?}; expected restore"
        ))),
        None => Err(ApiError::invalid(
            "query parameter action is required: restore",
        )),
    }
}
