//! Template handlers: `GET|POST /v1/templates`, `GET|PATCH|DELETE /v1/templates/{name}`.

use super::error::ApiError;
use super::extract::ApiJson;
use crate::app::api_keys::Caller;
use crate::app::App;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use fuse_types::{CreateTemplate, UpdateTemplate};
use std::sync::Arc;

/// `POST /v1/templates`: 201 with the template (a live snapshot is taken first when it is
/// made from an environment).
pub async fn create(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<CreateTemplate>,
) -> Result<Response, ApiError> {
    let tenant = caller.tenant().to_owned();
    // Its own task: a client that disconnects must not leave a snapshot without its template.
    let t = tokio::spawn(async move { app.template_create(req, &tenant).await })
        .await
        .map_err(|e| ApiError::internal(format!("template task: {e}")))??;
    Ok((StatusCode::CREATED, Json(t)).into_response())
}

/// `GET /v1/templates`.
pub async fn list(State(app): State<Arc<App>>) -> Result<Response, ApiError> {
    Ok(Json(app.template_list().await?).into_response())
}

/// `GET /v1/templates/{name}`.
pub async fn get(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(app.template_get(&name).await?).into_response())
}

/// `PATCH /v1/templates/{name}`: changes its pool.
pub async fn update(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<UpdateTemplate>,
) -> Result<Response, ApiError> {
    Ok(Json(app.template_update(&name, req).await?).into_response())
}

/// `DELETE /v1/templates/{name}`: 204; 409 while its pool or environments use it.
pub async fn delete(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    app.template_delete(&name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
