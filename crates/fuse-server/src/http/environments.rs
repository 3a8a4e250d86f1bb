//! `/v1/environments` handlers: thin wrappers over `app::environments`.

use super::error::ApiError;
use super::extract::{ApiBytes, ApiJson, Params};
use crate::app::api_keys::Caller;
use crate::app::environments::CreateOutcome;
use crate::app::error::AppError;
use crate::app::App;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use fuse_store::VmFilter;
use fuse_types::{CreateEnvironment, ExecRequest, ExposeRequest, ForkRequest, VmState};
use std::sync::Arc;

pub async fn list(State(app): State<Arc<App>>, q: Params) -> Result<Response, ApiError> {
    let state = q.parse::<VmState>("state")?;
    let limit = crate::app::paging::limit(q.parse::<usize>("limit")?)?;
    let filter = VmFilter {
        task_id: q.str("task_id").map(str::to_owned),
        state,
        host_id: q.str("host_id").map(str::to_owned),
        ..VmFilter::default()
    };
    let page = app.env_list(filter, limit, q.str("cursor")).await?;
    Ok(Json(page).into_response())
}

pub async fn create(
    State(app): State<Arc<App>>,
    q: Params,
    ApiJson(req): ApiJson<CreateEnvironment>,
) -> Result<Response, ApiError> {
    let wait = q.bool("wait", true)?;
    let (env, outcome) = app.env_create(req, wait).await?;
    let status = match (outcome, wait) {
        (CreateOutcome::Existing, _) => StatusCode::OK,
        (CreateOutcome::New, true) => StatusCode::CREATED,
        (CreateOutcome::New, false) => StatusCode::ACCEPTED,
    };
    Ok((status, Json(env)).into_response())
}

pub async fn get(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(app.env_get(&id).await?.to_wire()).into_response())
}

pub async fn delete(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    // Run the delete in its own task: a client that disconnects must not leave the
    // environment half-destroyed.
    tokio::spawn(async move { app.env_delete(&id).await })
        .await
        .map_err(|e| ApiError::internal(format!("delete task: {e}")))??;
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /v1/environments/{id}/egress`: replaces the egress rules, live; answers the
/// environment.
pub async fn egress_put(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    ApiJson(spec): ApiJson<fuse_types::EgressSpec>,
) -> Result<Response, ApiError> {
    Ok(Json(app.env_egress_set(&id, spec).await?.to_wire()).into_response())
}

/// The actions of `POST /v1/environments/{id}`.
const ACTIONS: &str = "drain, rotate-token, exec, expose, fork, pause, resume or migrate";

/// `POST /v1/environments/{id}?action=drain|rotate-token|exec|expose|fork|pause|resume|migrate`.
pub async fn action(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    q: Params,
    ApiBytes(body): ApiBytes,
) -> Result<Response, ApiError> {
    match q.str("action") {
        Some("drain") => Ok(Json(app.env_drain(&id).await?.to_wire()).into_response()),
        Some("rotate-token") => {
            app.env_rotate_token(&id).await?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        Some("exec") => {
            caller.require_master("running commands in an environment")?;
            let req: ExecRequest = super::extract::parse_json(&body)?;
            if q.bool("stream", false)? {
                return super::runtime::exec_stream(app, &id, req).await;
            }
            Ok(Json(app.env_exec(&id, req).await?).into_response())
        }
        Some("expose") => {
            let req: ExposeRequest = super::extract::parse_json(&body)?;
            Ok(Json(app.env_expose(&id, req).await?).into_response())
        }
        Some("fork") => {
            let req: ForkRequest = super::extract::parse_json(&body)?;
            let app2 = app.clone();
            let tenant = caller.tenant().to_owned();
            // Its own task: a client that disconnects must not leave a half-made fork.
            let env = tokio::spawn(async move { app2.env_fork(&id, req, &tenant).await })
                .await
                .map_err(|e| ApiError::internal(format!("fork task: {e}")))??;
            Ok((StatusCode::CREATED, Json(env)).into_response())
        }
        // Each in its own task: a client that disconnects must not cut a pause, a resume or
        // a migration short between its host call and its record.
        Some("pause") => {
            let env = tokio::spawn(async move { app.env_pause(&id).await })
                .await
                .map_err(|e| ApiError::internal(format!("pause task: {e}")))??;
            Ok(Json(env.to_wire()).into_response())
        }
        Some("resume") => {
            let env = tokio::spawn(async move { app.env_resume(&id).await })
                .await
                .map_err(|e| ApiError::internal(format!("resume task: {e}")))??;
            Ok(Json(env.to_wire()).into_response())
        }
        Some("migrate") => {
            let req: crate::app::pause::MigrateRequest = if body.is_empty() {
                Default::default()
            } else {
                super::extract::parse_json(&body)?
            };
            let env = tokio::spawn(async move { app.env_migrate(&id, req).await })
                .await
                .map_err(|e| ApiError::internal(format!("migrate task: {e}")))??;
            Ok(Json(env.to_wire()).into_response())
        }
        Some(other) => Err(ApiError::invalid(format!(
            "unknown action {other:?}; expected {ACTIONS}"
        ))),
        None => Err(ApiError::invalid(format!(
            "query parameter action is required: {ACTIONS}"
        ))),
    }
}

/// `GET|POST /v1/environments/{id}/computer`: no desktop images exist yet.
pub async fn computer(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let rec = app.env_get(&id).await?;
    Err(ApiError::from(AppError::Unavailable(format!(
        "environment {} has no display: computer use needs a desktop image, and this control \
         plane does not offer one yet",
        rec.id
    ))))
}
