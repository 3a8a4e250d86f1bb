//! `/v1/hosts` handlers.

use super::error::ApiError;
use super::extract::{ApiJson, Params};
use crate::app::App;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use fuse_types::RegisterHost;
use std::sync::Arc;

pub async fn list(State(app): State<Arc<App>>, q: Params) -> Result<Response, ApiError> {
    let limit = crate::app::paging::limit(q.parse::<usize>("limit")?)?;
    Ok(Json(app.host_page(limit, q.str("cursor")).await?).into_response())
}

pub async fn register(
    State(app): State<Arc<App>>,
    ApiJson(req): ApiJson<RegisterHost>,
) -> Result<Response, ApiError> {
    let (h, warnings) = app.host_register(req).await?;
    let mut wire = h.to_wire();
    wire.warnings = warnings;
    Ok((StatusCode::CREATED, Json(wire)).into_response())
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
