//! `/v1/api-keys` handlers: master token only.

use super::error::ApiError;
use super::extract::ApiJson;
use crate::app::api_keys::Caller;
use crate::app::App;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use fuse_types::{ApiKeyList, CreateApiKey};
use std::sync::Arc;

pub async fn create(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<CreateApiKey>,
) -> Result<Response, ApiError> {
    caller.require_master("managing API keys")?;
    let k = app.api_key_create(req.label).await?;
    Ok((StatusCode::CREATED, Json(k)).into_response())
}

pub async fn list(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    caller.require_master("managing API keys")?;
    Ok(Json(ApiKeyList {
        api_keys: app.api_key_list().await?,
    })
    .into_response())
}

pub async fn revoke(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require_master("managing API keys")?;
    app.api_key_revoke(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}
