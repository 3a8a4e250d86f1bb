//! The REST API (DESIGN §2). The router is built from one route table, so the OpenAPI
//! description can be checked against every route that exists. Layers, outermost first:
//! request id (always echoed) → metrics and tracing span → for `/v1`: CIDR allowlist (403)
//! → bearer token or the dashboard's session cookie (401; `ui`) → body limit → handler.
//! The dashboard's own routes (`/ui`) are added beside the route table: they are not part
//! of the REST contract.

mod api_keys;
pub mod e2b;
mod environments;
pub mod error;
mod events;
pub mod extract;
mod hosts;
mod logs;
pub mod proxy;
mod runtime;
mod snapshots;
mod system;
mod templates;
pub mod ui;

use crate::app::api_keys::{Caller, KeyLookup};
use crate::app::App;
use crate::background::Driver;
use axum::extract::FromRef;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderValue, Method};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{delete, get, post, MethodRouter};
use axum::Router;
use error::ApiError;
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use subtle::ConstantTimeEq;

/// What handlers can reach: the domain, and the background tasks (for their statuses).
#[derive(Clone)]
pub struct HttpState {
    /// The domain.
    pub app: Arc<App>,
    /// The background tasks of this process.
    pub tasks: Arc<Driver>,
    /// The dashboard's browser sessions.
    pub sessions: Arc<ui::Sessions>,
}

impl FromRef<HttpState> for Arc<App> {
    fn from_ref(s: &HttpState) -> Arc<App> {
        s.app.clone()
    }
}

impl FromRef<HttpState> for Arc<Driver> {
    fn from_ref(s: &HttpState) -> Arc<Driver> {
        s.tasks.clone()
    }
}

/// The request id of the current request, set by the outermost layer.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// The ports proxy's path.
const PROXY_ROUTE: &str = "/v1/environments/{id}/ports/{port}/{*path}";

/// Every route: method, path (axum syntax) and handler.
pub fn routes() -> Vec<(Method, &'static str, MethodRouter<HttpState>)> {
    vec![
        (Method::GET, "/health", get(system::health)),
        (Method::GET, "/ready", get(system::ready)),
        (Method::GET, "/metrics", get(system::metrics)),
        (Method::GET, "/openapi.json", get(system::openapi)),
        (Method::GET, "/v1/environments", get(environments::list)),
        (Method::POST, "/v1/environments", post(environments::create)),
        (Method::GET, "/v1/environments/{id}", get(environments::get)),
        (
            Method::DELETE,
            "/v1/environments/{id}",
            delete(environments::delete),
        ),
        (
            Method::POST,
            "/v1/environments/{id}",
            post(environments::action),
        ),
        (
            Method::GET,
            "/v1/environments/{id}/events",
            get(events::stream),
        ),
        (Method::GET, "/v1/environments/{id}/logs", get(logs::get)),
        (Method::GET, "/v1/events", get(events::fleet)),
        (
            Method::PUT,
            "/v1/environments/{id}/egress",
            axum::routing::put(environments::egress_put),
        ),
        (
            Method::POST,
            "/v1/environments/{id}/snapshots",
            post(snapshots::create),
        ),
        (Method::GET, "/v1/snapshots", get(snapshots::list)),
        (Method::GET, "/v1/snapshots/{id}", get(snapshots::get)),
        (
            Method::DELETE,
            "/v1/snapshots/{id}",
            delete(snapshots::delete),
        ),
        (Method::POST, "/v1/snapshots/{id}", post(snapshots::action)),
        (Method::GET, "/v1/templates", get(templates::list)),
        (Method::POST, "/v1/templates", post(templates::create)),
        (Method::GET, "/v1/templates/{name}", get(templates::get)),
        (
            Method::PATCH,
            "/v1/templates/{name}",
            axum::routing::patch(templates::update),
        ),
        (
            Method::DELETE,
            "/v1/templates/{name}",
            delete(templates::delete),
        ),
        (Method::GET, "/v1/hosts", get(hosts::list)),
        (Method::POST, "/v1/hosts", post(hosts::register)),
        (Method::GET, "/v1/hosts/{id}", get(hosts::get)),
        (Method::DELETE, "/v1/hosts/{id}", delete(hosts::delete)),
        (Method::POST, "/v1/hosts/{id}", post(hosts::action)),
        (Method::GET, "/v1/debug/background", get(system::background)),
        (Method::GET, "/v1/version", get(system::version)),
        (Method::GET, "/v1/api-keys", get(api_keys::list)),
        (Method::POST, "/v1/api-keys", post(api_keys::create)),
        (
            Method::DELETE,
            "/v1/api-keys/{id}",
            delete(api_keys::revoke),
        ),
        (
            Method::GET,
            "/v1/snapshots/resolve",
            get(snapshots::resolve),
        ),
        (
            Method::GET,
            "/v1/environments/{id}/computer",
            get(environments::computer),
        ),
        (
            Method::PUT,
            "/v1/environments/{id}/files",
            axum::routing::put(runtime::put),
        ),
        (
            Method::GET,
            "/v1/environments/{id}/files",
            get(runtime::get),
        ),
        (
            Method::DELETE,
            "/v1/environments/{id}/files",
            delete(runtime::delete),
        ),
        (
            Method::GET,
            "/v1/environments/{id}/attach",
            get(runtime::attach),
        ),
        (
            Method::POST,
            "/v1/environments/{id}/computer",
            post(environments::computer),
        ),
        // The ports proxy: served by `proxy::gate` in front of the router (so bodies
        // stream); listed here for the route table and its description.
        (Method::GET, PROXY_ROUTE, get(proxy::behind_gate)),
        (Method::POST, PROXY_ROUTE, post(proxy::behind_gate)),
        (
            Method::PUT,
            PROXY_ROUTE,
            axum::routing::put(proxy::behind_gate),
        ),
        (
            Method::PATCH,
            PROXY_ROUTE,
            axum::routing::patch(proxy::behind_gate),
        ),
        (Method::DELETE, PROXY_ROUTE, delete(proxy::behind_gate)),
    ]
}

/// Builds the whole router.
pub fn router(app: Arc<App>, tasks: Arc<Driver>) -> Router {
    let mut public = Router::new();
    let mut v1 = Router::new();
    for (_, path, handler) in routes() {
        if path.starts_with("/v1") {
            v1 = v1.route(path, handler);
        } else {
            public = public.route(path, handler);
        }
    }
    let sessions = Arc::new(ui::Sessions::default());
    let v1 = v1
        .route_layer(middleware::from_fn_with_state(
            (app.clone(), sessions.clone()),
            auth,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(
            app.config.max_body_bytes,
        ));
    let mut public = public.merge(v1).merge(ui::router());
    if let Some(prefix) = &app.config.e2b_prefix {
        public = public.nest(prefix, e2b::router(app.clone()));
    }
    public
        .route_layer(middleware::from_fn_with_state(app.clone(), observe))
        .fallback(system::not_found)
        .method_not_allowed_fallback(system::method_not_allowed)
        .layer(middleware::from_fn_with_state(
            app.config.max_body_bytes,
            whole_body,
        ))
        // In front of the whole-body layer: proxied bodies stream.
        .layer(middleware::from_fn_with_state(
            proxy::ProxyState {
                permits: Arc::new(tokio::sync::Semaphore::new(app.config.max_connections)),
                app: app.clone(),
            },
            proxy::gate,
        ))
        .layer(middleware::from_fn(request_id))
        .with_state(HttpState {
            app,
            tasks,
            sessions,
        })
}

fn valid_request_id(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Echoes a valid client `X-Request-ID` or generates `req_` + 32 hex; always on the response.
async fn request_id(mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|s| valid_request_id(s))
        .map(str::to_owned)
        .unwrap_or_else(|| {
            let mut b = [0u8; 16];
            rand::thread_rng().fill_bytes(&mut b);
            format!("req_{}", hex::encode(b))
        });
    req.extensions_mut().insert(RequestId(id.clone()));
    let mut resp = next.run(req).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

/// Reads the whole request body (up to the body limit) before anything answers. An answer
/// given before the body was read (a 401, a 404, a handler that takes no body) would make
/// the connection close without `Connection: close` once the late body arrives, and a
/// client that reuses kept-alive connections would see "server disconnected" on its next
/// request. A body over the limit, or one that does not arrive, is answered here, with
/// `Connection: close` since the rest of it is not read.
async fn whole_body(State(limit): State<usize>, req: Request, next: Next) -> Response {
    use axum::response::IntoResponse;
    if streams_body(req.method(), req.uri().path()) {
        return next.run(req).await;
    }
    let no_body = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .is_none()
        && req
            .headers()
            .get(axum::http::header::TRANSFER_ENCODING)
            .is_none();
    if no_body {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    match axum::body::to_bytes(body, limit).await {
        Ok(bytes) => {
            next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
                .await
        }
        Err(e) => {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|i| i.is::<http_body_util::LengthLimitError>());
            let mut err = extract::body_error(&e, too_large);
            err.details.clear();
            let mut resp = err.into_response();
            resp.headers_mut().insert(
                axum::http::header::CONNECTION,
                HeaderValue::from_static("close"),
            );
            resp
        }
    }
}

/// Whether a request's body is streamed to its handler rather than read whole first (a file
/// upload): its body limit is the handler's, and its body timeout counts from the last
/// byte that arrived rather than from the head.
pub fn streams_body(method: &Method, path: &str) -> bool {
    method == Method::PUT && path.starts_with("/v1/environments/") && path.ends_with("/files")
}

/// Counts and times every routed request, inside a span carrying the request id.
async fn observe(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().clone();
    let rid = req
        .extensions()
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_default();
    let span = tracing::info_span!("http", request_id = %rid, method = %method, route = %route);
    let m = &app.metrics;
    // A guard, so a request whose client went away (future dropped) is still counted out.
    struct InFlight(prometheus::IntGauge);
    impl Drop for InFlight {
        fn drop(&mut self) {
            self.0.dec();
        }
    }
    m.http_in_flight.inc();
    let guard = InFlight(m.http_in_flight.clone());
    let start = Instant::now();
    let resp = tracing::Instrument::instrument(next.run(req), span.clone()).await;
    drop(guard);
    m.http_duration
        .with_label_values(&[&route, method.as_str()])
        .observe(start.elapsed().as_secs_f64());
    m.http_requests
        .with_label_values(&[&route, method.as_str(), resp.status().as_str()])
        .inc();
    if resp.status().is_server_error() {
        span.in_scope(|| tracing::warn!(status = resp.status().as_u16(), "request failed"));
    } else {
        span.in_scope(|| {
            tracing::debug!(
                status = resp.status().as_u16(),
                ms = start.elapsed().as_millis() as u64,
                "request"
            )
        });
    }
    resp
}

/// CIDR allowlist (403), then bearer token (401), constant-time. Without a bearer header
/// the dashboard's session cookie stands for its token (`ui::token_of`, with its
/// cross-origin checks).
async fn auth(
    State((app, sessions)): State<(Arc<App>, Arc<ui::Sessions>)>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if !peer_allowed(&app.config, &req) {
        return Err(ApiError::new(
            fuse_types::ErrorCode::Forbidden,
            "client address is not in ORCH_ALLOWED_CIDRS",
        ));
    }
    let token = ui::token_of(&sessions, &req)?;
    let caller = match caller_of(&app, &token).await? {
        Ok(c) => c,
        Err(m) => return Err(ApiError::new(fuse_types::ErrorCode::Unauthorized, m)),
    };
    let mut req = req;
    req.extensions_mut().insert(caller);
    Ok(next.run(req).await)
}

/// Whether the client's address is in `ORCH_ALLOWED_CIDRS` (always, when it is empty).
pub(crate) fn peer_allowed(cfg: &crate::config::Config, req: &Request) -> bool {
    if cfg.allowed_cidrs.is_empty() {
        return true;
    }
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    peer.is_some_and(|ip| {
        let ip = match ip {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map(std::net::IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        cfg.allowed_cidrs.iter().any(|n| n.contains(&ip))
    })
}

/// The bearer token of a request (empty when none).
pub(crate) fn bearer_of(h: &axum::http::HeaderMap) -> String {
    h.get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .unwrap_or("")
        .to_owned()
}

/// Who a bearer token is: the master token (or anyone, on a server that requires none),
/// a live API key, or why it is refused (the 401's message).
pub(crate) async fn caller_of(
    app: &App,
    got: &str,
) -> Result<Result<Caller, &'static str>, ApiError> {
    let cfg = &app.config;
    let master = cfg.auth_token.as_ref().map(|want| {
        // Hash both sides so the comparison does not leak the token's length.
        let a = Sha256::digest(got.as_bytes());
        let b = Sha256::digest(want.as_bytes());
        !got.is_empty() && bool::from(a.ct_eq(&b))
    });
    Ok(match master {
        Some(true) => Ok(Caller::Master),
        required => match (app.api_key_lookup(got).await?, required) {
            (KeyLookup::Live(c), _) => Ok(c),
            (KeyLookup::Revoked, None) => Err("this API key was revoked"),
            // No token required: an unknown token is the open API's caller.
            (KeyLookup::Unknown, None) => Ok(Caller::Master),
            (_, _) => Err("missing or invalid bearer token"),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_id_rule() {
        assert!(valid_request_id("abc-DEF_123"));
        assert!(valid_request_id(&"a".repeat(128)));
        assert!(!valid_request_id(&"a".repeat(129)));
        assert!(!valid_request_id(""));
        assert!(!valid_request_id("a b"));
        assert!(!valid_request_id("a/b"));
    }
}
