//! Snapshot handlers.

use super::error::ApiError;
use super::extract::{ApiJson, Params};
use crate::app::api_keys::Caller;
use crate::app::App;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use fuse_store::SnapshotFilter;
use fuse_types::{CreateSnapshot, SnapshotResolve, SnapshotState};
use std::sync::Arc;

pub async fn create(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<CreateSnapshot>,
) -> Result<Response, ApiError> {
    let s = app.snapshot_create(&id, req, caller.tenant()).await?;
    Ok((StatusCode::CREATED, Json(s.to_wire())).into_response())
}

pub async fn list(State(app): State<Arc<App>>, q: Params) -> Result<Response, ApiError> {
    let own = |k: &str| q.str(k).filter(|v| !v.is_empty()).map(str::to_owned);
    let filter = SnapshotFilter {
        vm_id: own("vm_id"),
        task_id: own("task_id"),
        state: q.parse::<SnapshotState>("state")?,
        layer_key: own("layer_key"),
        arch: own("arch"),
        tenant_id: own("tenant_id"),
    };
    let limit = crate::app::paging::limit(q.parse::<usize>("limit")?)?;
    Ok(Json(app.snapshot_page(filter, limit, q.str("cursor")).await?).into_response())
}

/// `GET /v1/snapshots/resolve?layer_key=&arch=`: a miss is 200 `found: false`.
pub async fn resolve(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    q: Params,
) -> Result<Response, ApiError> {
    let hit = app
        .snapshot_resolve(
            q.str("layer_key").unwrap_or(""),
            q.str("arch").unwrap_or(""),
            caller.tenant(),
        )
        .await?;
    Ok(Json(SnapshotResolve {
        found: hit.is_some(),
        snapshot: hit.map(|s| s.to_wire()),
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
