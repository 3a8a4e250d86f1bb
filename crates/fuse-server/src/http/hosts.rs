//! `/v1/hosts` handlers.

use super::error::ApiError;
use super::extract::{ApiJson, Params};
use crate::app::App;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use fuse_types::{HostList, RegisterHost};
use std::sync::Arc;

pub async fn list(State(app): State<Arc<App>>) -> Result<Response, ApiError> {
    let hosts = app.host_list().await?;
    Ok(Json(HostList {
        hosts: hosts.iter().map(|h| h.to_wire()).collect(),
    })
    .into_response())
}

pub async fn register(
    State(app): State<Arc<App>>,
    ApiJson(req): ApiJson<RegisterHost>,
) -> Result<Response, ApiError> {
    let h = app.host_register(req).await?;
    Ok((StatusCode::CREATED, Json(h.to_wire())).into_response())
}

pub async fn get(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(app.host_get(&id).await?.to_wire()).into_response())
}

pub async fn delete(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    app.host_delete(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/hosts/{id}?action=cordon|uncordon`.
pub async fn action(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    q: Params,
) -> Result<StatusCode, ApiError> {
    match q.str("action") {
        Some("cordon") => app.host_cordon(&id).await?,
        Some("uncordon") => app.host_uncordon(&id).await?,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "unknown action {other:?}; expected cordon or uncordon"
            )))
        }
        None => {
            return Err(ApiError::invalid(
                "query parameter action is required: cordon or uncordon",
            ))
        }
    }
    Ok(StatusCode::NO_CONTENT)
}
