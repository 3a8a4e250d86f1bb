//! The E2B-compatible API (`FUSE_E2B_PREFIX`, `/e2b` by default), so code written for
//! E2B's SDK runs against Fuse with `E2B_API_URL`, `E2B_API_KEY` and `E2B_SANDBOX_URL`
//! (or `E2B_DOMAIN`) changed. Not part of the REST contract: its shapes are E2B's
//! (camelCase, `{"code": <status>, "message": "…"}` errors).
//!
//! | Route | What |
//! |---|---|
//! | `POST /sandboxes`, `POST /v2/sandboxes` | create (`201`, the sandbox with `envdAccessToken`, `domain`) |
//! | `GET /sandboxes` | running sandboxes (`?metadata=`) |
//! | `GET /v2/sandboxes` | `?state=running,paused&metadata=&limit=&nextToken=`, next page in `x-next-token` |
//! | `GET /sandboxes/{id}` | one sandbox |
//! | `DELETE /sandboxes/{id}` | kill (`204`) |
//! | `POST /sandboxes/{id}/timeout` | `{"timeout": s}`: ends `s` from now (`204`) |
//! | `POST /sandboxes/{id}/refreshes` | `{"duration": s}`: ends no sooner than `s` from now (`204`) |
//! | `POST /sandboxes/{id}/pause` | `204`; `409` when paused |
//! | `POST /sandboxes/{id}/resume` | `201`; `409` when running |
//! | `POST /sandboxes/{id}/connect`, `POST /v2/sandboxes/{id}/connect` | `200` running (time extended), `201` resumed |
//!
//! Authentication: `X-API-KEY` (or `Authorization: Bearer`) is the master token or a Fuse
//! API key, as on `/v1`. Traffic to a sandbox (envd on 49983, the ports its programs
//! open) is routed by [`route`] in front of everything, from the `E2b-Sandbox-Id` and
//! `E2b-Sandbox-Port` headers or a `{port}-{id}.{FUSE_PROXY_DOMAIN}` host name.

use super::error::ApiError;
use super::proxy::{forward, Proof, ProxyState};
use crate::app::e2b::{self as domain, SandboxCreate, ENVD_PORT, ENVD_VERSION};
use crate::app::App;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use fuse_store::VmRecord;
use fuse_types::VmState;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// An error as E2B's API answers it.
pub struct E2bError {
    status: StatusCode,
    message: String,
}

impl E2bError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        E2bError {
            status,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl From<crate::app::error::AppError> for E2bError {
    fn from(e: crate::app::error::AppError) -> Self {
        ApiError::from(e).into()
    }
}

impl From<ApiError> for E2bError {
    fn from(e: ApiError) -> Self {
        if let Some(i) = &e.internal {
            tracing::warn!(error = %i, "e2b api");
        }
        E2bError {
            status: e.status,
            message: e.message,
        }
    }
}

impl IntoResponse for E2bError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"code": self.status.as_u16(), "message": self.message});
        (self.status, axum::Json(body)).into_response()
    }
}

type E2bResult<T> = Result<T, E2bError>;

/// The E2B API's routes, to be nested under its prefix.
pub fn router(app: Arc<App>) -> Router<super::HttpState> {
    Router::new()
        .route("/sandboxes", post(create).get(list_v1))
        .route("/v2/sandboxes", post(create).get(list_v2))
        .route("/sandboxes/{id}", get(detail).delete(kill))
        .route("/sandboxes/{id}/timeout", post(timeout))
        .route("/sandboxes/{id}/refreshes", post(refresh))
        .route("/sandboxes/{id}/pause", post(pause))
        .route("/sandboxes/{id}/resume", post(resume))
        .route("/sandboxes/{id}/connect", post(connect))
        .route("/v2/sandboxes/{id}/connect", post(connect))
        .fallback(unsupported)
        .route_layer(axum::middleware::from_fn_with_state(app, auth))
}

async fn unsupported(req: Request) -> E2bError {
    E2bError::new(
        StatusCode::NOT_IMPLEMENTED,
        format!(
            "{} {} is not part of Fuse's E2B-compatible API (sandboxes only; templates are \
             Fuse templates, made with POST /v1/templates): see docs/e2b.md",
            req.method(),
            req.uri().path()
        ),
    )
}

async fn auth(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    if !super::peer_allowed(&app.config, &req) {
        return E2bError::new(
            StatusCode::FORBIDDEN,
            "client address is not in ORCH_ALLOWED_CIDRS",
        )
        .into_response();
    }
    let h = req.headers();
    let key = h
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .unwrap_or_else(|| super::bearer_of(h));
    match super::caller_of(&app, &key).await {
        Ok(Ok(_)) => next.run(req).await,
        Ok(Err(m)) => E2bError::new(
            StatusCode::UNAUTHORIZED,
            format!("{m}: send the master token or a Fuse API key as X-API-KEY (E2B_API_KEY)"),
        )
        .into_response(),
        Err(e) => E2bError::from(e).into_response(),
    }
}

fn parse<T: serde::de::DeserializeOwned + Default>(body: &Bytes) -> E2bResult<T> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| E2bError::bad_request(format!("invalid body: {e}")))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct NewSandbox {
    #[serde(rename = "templateID")]
    template_id: Option<String>,
    timeout: Option<u64>,
    auto_pause: Option<bool>,
    metadata: Option<BTreeMap<String, String>>,
    env_vars: Option<BTreeMap<String, String>>,
    #[serde(rename = "allow_internet_access")]
    allow_internet_access: Option<bool>,
    network: Option<NetworkConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct NetworkConfig {
    allow_public_traffic: Option<bool>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct SandboxOut {
    #[serde(rename = "templateID")]
    template_id: String,
    #[serde(rename = "sandboxID")]
    sandbox_id: String,
    alias: String,
    #[serde(rename = "clientID")]
    client_id: String,
    envd_version: &'static str,
    envd_access_token: String,
    traffic_access_token: Option<String>,
    domain: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct SandboxInfo {
    #[serde(rename = "templateID")]
    template_id: String,
    #[serde(rename = "sandboxID")]
    sandbox_id: String,
    alias: String,
    #[serde(rename = "clientID")]
    client_id: String,
    started_at: String,
    end_at: String,
    envd_version: &'static str,
    cpu_count: u32,
    #[serde(rename = "memoryMB")]
    memory_mb: u64,
    #[serde(rename = "diskSizeMB")]
    disk_size_mb: u64,
    state: &'static str,
    metadata: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    envd_access_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    domain: Option<String>,
}

fn rfc3339(t: Option<fuse_types::Timestamp>) -> String {
    t.and_then(|t| {
        t.format(&time::format_description::well_known::Rfc3339)
            .ok()
    })
    .unwrap_or_default()
}

fn token_of(rec: &VmRecord) -> String {
    rec.secrets
        .as_ref()
        .map(|s| s.traffic_token.clone())
        .unwrap_or_default()
}

fn e2b_state(s: VmState) -> &'static str {
    if s == VmState::Paused {
        "paused"
    } else {
        "running"
    }
}

fn template_of(rec: &VmRecord) -> String {
    rec.extras
        .e2b
        .as_ref()
        .map(|e| e.template_id.clone())
        .unwrap_or_default()
}

fn sandbox_out(app: &App, rec: &VmRecord) -> SandboxOut {
    let token = token_of(rec);
    SandboxOut {
        template_id: template_of(rec),
        sandbox_id: rec.id.to_string(),
        alias: template_of(rec),
        client_id: rec
            .host_id
            .as_ref()
            .map(|h| h.to_string())
            .unwrap_or_default(),
        envd_version: ENVD_VERSION,
        traffic_access_token: Some(token.clone()),
        envd_access_token: token,
        domain: app.config.proxy.domain.clone(),
    }
}

fn sandbox_info(app: &App, rec: &VmRecord, with_token: bool) -> SandboxInfo {
    let e = rec.extras.e2b.clone().unwrap_or_default();
    SandboxInfo {
        template_id: e.template_id.clone(),
        sandbox_id: rec.id.to_string(),
        alias: e.template_id,
        client_id: rec
            .host_id
            .as_ref()
            .map(|h| h.to_string())
            .unwrap_or_default(),
        started_at: rfc3339(Some(rec.running_since.unwrap_or(rec.created_at))),
        end_at: rfc3339(rec.extras.ends_at),
        envd_version: ENVD_VERSION,
        cpu_count: rec.spec.cpus,
        memory_mb: rec.spec.ram_mb,
        disk_size_mb: rec.spec.storage_gb * 1024,
        state: e2b_state(rec.state),
        metadata: e.metadata,
        envd_access_token: with_token.then(|| token_of(rec)),
        domain: app.config.proxy.domain.clone(),
    }
}

async fn create(State(app): State<Arc<App>>, body: Bytes) -> E2bResult<Response> {
    let r: NewSandbox = parse(&body)?;
    let template = r
        .template_id
        .filter(|t| !t.trim().is_empty())
        .ok_or_else(|| E2bError::bad_request("templateID is required"))?;
    let timeout = match r.timeout {
        Some(t) => domain::check_timeout(t, "timeout")?,
        None => domain::DEFAULT_TIMEOUT,
    };
    let c = SandboxCreate {
        template,
        timeout,
        metadata: r.metadata.unwrap_or_default(),
        env_vars: r.env_vars.unwrap_or_default(),
        auto_pause: r.auto_pause.unwrap_or(false),
        private_traffic: r
            .network
            .and_then(|n| n.allow_public_traffic)
            .is_some_and(|p| !p),
        no_internet: r.allow_internet_access == Some(false),
    };
    let rec = app.e2b_create(c).await?;
    Ok((StatusCode::CREATED, axum::Json(sandbox_out(&app, &rec))).into_response())
}

/// `metadata=k%3Dv%26k2%3Dv2` (the SDK URL-encodes the pairs, and each key and value in
/// them): the pairs.
fn metadata_filter(q: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let Some(m) = q.get("metadata") else {
        return BTreeMap::new();
    };
    form_urlencoded::parse(m.as_bytes())
        .map(|(k, v)| {
            let dec = |s: &str| {
                form_urlencoded::parse(format!("x={s}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default()
            };
            (dec(&k), dec(&v))
        })
        .collect()
}

fn matches(rec: &VmRecord, want: &BTreeMap<String, String>, states: &[&str]) -> bool {
    let meta = rec
        .extras
        .e2b
        .as_ref()
        .map(|e| &e.metadata)
        .cloned()
        .unwrap_or_default();
    want.iter().all(|(k, v)| meta.get(k) == Some(v)) && states.contains(&e2b_state(rec.state))
}

async fn list_v1(
    State(app): State<Arc<App>>,
    Query(q): Query<BTreeMap<String, String>>,
) -> E2bResult<Response> {
    let want = metadata_filter(&q);
    let all = app.e2b_sandboxes().await?;
    let out: Vec<SandboxInfo> = all
        .iter()
        .filter(|r| matches(r, &want, &["running"]))
        .map(|r| sandbox_info(&app, r, false))
        .collect();
    Ok(axum::Json(out).into_response())
}

async fn list_v2(
    State(app): State<Arc<App>>,
    Query(q): Query<BTreeMap<String, String>>,
) -> E2bResult<Response> {
    let want = metadata_filter(&q);
    let states: Vec<String> = q
        .get("state")
        .map(|s| s.split(',').map(|x| x.trim().to_owned()).collect())
        .unwrap_or_else(|| vec!["running".into(), "paused".into()]);
    for s in &states {
        if s != "running" && s != "paused" {
            return Err(E2bError::bad_request(format!(
                "state {s:?} is not running or paused"
            )));
        }
    }
    let states: Vec<&str> = states.iter().map(String::as_str).collect();
    let limit = match q.get("limit") {
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=1000).contains(l))
            .ok_or_else(|| E2bError::bad_request("limit must be from 1 to 1000"))?,
        None => 100,
    };
    let all: Vec<VmRecord> = app
        .e2b_sandboxes()
        .await?
        .into_iter()
        .filter(|r| matches(r, &want, &states))
        .collect();
    let (page, next) = crate::app::paging::page(
        all,
        |r| r.id.to_string(),
        limit,
        q.get("nextToken")
            .map(String::as_str)
            .filter(|t| !t.is_empty()),
    )?;
    let out: Vec<SandboxInfo> = page.iter().map(|r| sandbox_info(&app, r, false)).collect();
    let mut resp = axum::Json(out).into_response();
    if let Some(v) = next.and_then(|n| HeaderValue::from_str(&n).ok()) {
        resp.headers_mut().insert("x-next-token", v);
    }
    Ok(resp)
}

async fn detail(State(app): State<Arc<App>>, Path(id): Path<String>) -> E2bResult<Response> {
    let rec = app.e2b_sandbox(&id).await?;
    Ok(axum::Json(sandbox_info(&app, &rec, true)).into_response())
}

async fn kill(State(app): State<Arc<App>>, Path(id): Path<String>) -> E2bResult<StatusCode> {
    app.e2b_kill(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct TimeoutBody {
    timeout: Option<u64>,
    duration: Option<u64>,
}

async fn timeout(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    body: Bytes,
) -> E2bResult<StatusCode> {
    let r: TimeoutBody = parse(&body)?;
    let t = r
        .timeout
        .ok_or_else(|| E2bError::bad_request("timeout is required"))?;
    app.e2b_timeout(&id, domain::check_timeout(t, "timeout")?)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn refresh(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    body: Bytes,
) -> E2bResult<StatusCode> {
    let r: TimeoutBody = parse(&body)?;
    let d = domain::check_timeout(r.duration.unwrap_or(60), "duration")?;
    app.e2b_refresh(&id, d).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn pause(State(app): State<Arc<App>>, Path(id): Path<String>) -> E2bResult<StatusCode> {
    app.e2b_pause(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn timeout_of(body: &Bytes) -> E2bResult<std::time::Duration> {
    let r: TimeoutBody = parse(body)?;
    match r.timeout {
        Some(t) => Ok(domain::check_timeout(t, "timeout")?),
        None => Ok(domain::DEFAULT_TIMEOUT),
    }
}

async fn resume(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    body: Bytes,
) -> E2bResult<Response> {
    let rec = app.e2b_resume(&id, timeout_of(&body)?).await?;
    Ok((StatusCode::CREATED, axum::Json(sandbox_out(&app, &rec))).into_response())
}

async fn connect(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    body: Bytes,
) -> E2bResult<Response> {
    let (rec, resumed) = app.e2b_connect(&id, timeout_of(&body)?).await?;
    let status = if resumed {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(sandbox_out(&app, &rec))).into_response())
}

/// Where a request for a sandbox goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    id: String,
    port: u16,
}

/// The header naming the sandbox.
const SANDBOX_HEADER: &str = "e2b-sandbox-id";
/// The header naming its port.
const PORT_HEADER: &str = "e2b-sandbox-port";
/// The header of a private sandbox's traffic token.
const TRAFFIC_HEADER: &str = "e2b-traffic-access-token";

/// The `{port}-{id}` label of the request's host name under `domain`, if it has one.
fn host_label(h: &HeaderMap, uri: &axum::http::Uri, domain: &str) -> Option<String> {
    let host = super::proxy::host_name(h, uri)?;
    super::proxy::label_under(&host, domain).map(str::to_owned)
}

/// The sandbox a request is for: by header (`E2b-Sandbox-Id`, `E2b-Sandbox-Port`,
/// envd's port by default), or by a `{port}-{id}` name under the proxy's domain that is a
/// sandbox's (other names there are the ports proxy's).
pub async fn route(
    app: &App,
    h: &HeaderMap,
    uri: &axum::http::Uri,
) -> Result<Option<Route>, ApiError> {
    if let Some(id) = h.get(SANDBOX_HEADER).and_then(|v| v.to_str().ok()) {
        let port = match h.get(PORT_HEADER).and_then(|v| v.to_str().ok()) {
            None => ENVD_PORT,
            Some(p) => p.trim().parse().ok().filter(|p| *p > 0).ok_or_else(|| {
                ApiError::invalid(format!(
                    "E2b-Sandbox-Port {p:?} must be a number from 1 to 65535"
                ))
            })?,
        };
        return Ok(Some(Route {
            id: id.trim().to_owned(),
            port,
        }));
    }
    let Some(domain) = &app.config.proxy.domain else {
        return Ok(None);
    };
    let Some(label) = host_label(h, uri, domain) else {
        return Ok(None);
    };
    let Some((port, id)) = crate::app::ports::parse_host_label(&label) else {
        return Ok(None);
    };
    let is_sandbox = app.e2b_sandbox(id).await.is_ok();
    Ok(is_sandbox.then(|| Route {
        id: id.to_owned(),
        port,
    }))
}

fn unavailable(message: String) -> ApiError {
    let mut e = ApiError::unavailable(message);
    e.status = StatusCode::BAD_GATEWAY;
    e
}

/// Sends a request to a sandbox's port: envd's needs the sandbox's access token
/// (`X-Access-Token`, which envd checks again); others are open unless the sandbox was
/// made with `allowPublicTraffic: false` (then `e2b-traffic-access-token`).
pub async fn send(s: ProxyState, r: Route, mut req: Request) -> Result<Response, ApiError> {
    let app = s.app.clone();
    let rec = match app.e2b_sandbox(&r.id).await {
        Ok(rec) => rec,
        Err(_) => return Err(unavailable(format!("sandbox {} not found", r.id))),
    };
    if !matches!(rec.state, VmState::Running | VmState::Draining) {
        return Err(unavailable(format!(
            "sandbox {} is {}; connect to it to resume it",
            r.id,
            e2b_state(rec.state)
        )));
    }
    let h = req.headers();
    let token = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("");
    if r.port == ENVD_PORT {
        if !crate::app::ports::traffic_token_ok(&rec, token("x-access-token")) {
            return Err(ApiError::new(
                fuse_types::ErrorCode::Unauthorized,
                format!(
                    "envd of sandbox {} needs the sandbox's envdAccessToken as X-Access-Token",
                    r.id
                ),
            ));
        }
    } else if rec.extras.e2b.as_ref().is_some_and(|e| e.private_traffic)
        && !crate::app::ports::traffic_token_ok(&rec, token(TRAFFIC_HEADER))
    {
        return Err(ApiError::new(
            fuse_types::ErrorCode::Forbidden,
            format!(
                "sandbox {} takes traffic only with its trafficAccessToken as {TRAFFIC_HEADER}",
                r.id
            ),
        ));
    }
    let hm = req.headers_mut();
    hm.remove(SANDBOX_HEADER);
    hm.remove(PORT_HEADER);
    hm.remove(TRAFFIC_HEADER);
    let upstream = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    let (parts, body) = req.into_parts();
    let req = Request::from_parts(parts, Body::new(body));
    forward(s, &rec, r.port, None, Proof::Public, upstream, req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_filters_are_decoded_twice_as_the_sdk_encodes_them() {
        let mut q = BTreeMap::new();
        q.insert("metadata".to_string(), "run=ab%2Fc&suite=x".to_string());
        let m = metadata_filter(&q);
        assert_eq!(m.get("run").map(String::as_str), Some("ab/c"));
        assert_eq!(m.get("suite").map(String::as_str), Some("x"));
        assert!(metadata_filter(&BTreeMap::new()).is_empty());
    }

    #[test]
    fn host_names_under_the_domain_have_one_label() {
        let uri = axum::http::Uri::from_static("/");
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("8000-vm1.e2b.test:8080"));
        assert_eq!(
            host_label(&h, &uri, "e2b.test").as_deref(),
            Some("8000-vm1")
        );
        h.insert("host", HeaderValue::from_static("a.b.e2b.test"));
        assert_eq!(host_label(&h, &uri, "e2b.test"), None);
        h.insert("host", HeaderValue::from_static("e2b.test"));
        assert_eq!(host_label(&h, &uri, "e2b.test"), None);
    }
}
