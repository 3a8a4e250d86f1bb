//! The web dashboard at `/ui` (docs/dashboard.md): hand-written assets embedded in the
//! binary, and the browser session that lets `EventSource` and `WebSocket` (which cannot
//! send an `Authorization` header) use the API.
//!
//! The session cookie holds an opaque random id, never the token. The id maps, in this
//! process's memory, to the token the user logged in with, and every request re-resolves
//! that token exactly as a bearer header would be ([`super::caller_of`]): a revoked API key
//! or a changed master token stops its sessions at once. Sessions expire after
//! [`SESSION_TTL`] and are dropped on logout. A cookie-authenticated request must come from
//! the dashboard's own origin: `Sec-Fetch-Site` (when the browser sends it) must not be
//! `cross-site`/`same-site`, and a state-changing request or a WebSocket upgrade must carry
//! an `Origin` whose host is the request's `Host`.

use super::error::ApiError;
use super::{bearer_of, caller_of, peer_allowed, HttpState};
use crate::app::api_keys::Caller;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use fuse_types::ErrorCode;
use parking_lot::Mutex;
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The session cookie's name.
pub const COOKIE: &str = "fuse_session";

/// How long a session lasts after login.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// The most sessions kept at once; past it the one closest to expiry is dropped.
const MAX_SESSIONS: usize = 10_000;

/// The dashboard's Content-Security-Policy: only its own files, no inline script or style.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; \
    base-uri 'none'";

/// The live browser sessions of this process.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, (String, Instant)>>,
}

impl Sessions {
    /// A new session for `token`: its id.
    fn open(&self, token: &str) -> String {
        let mut b = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut b);
        let id = hex::encode(b);
        let now = Instant::now();
        let mut m = self.map.lock();
        m.retain(|_, (_, exp)| *exp > now);
        if m.len() >= MAX_SESSIONS {
            if let Some(oldest) = m
                .iter()
                .min_by_key(|(_, (_, e))| *e)
                .map(|(k, _)| k.clone())
            {
                m.remove(&oldest);
            }
        }
        m.insert(id.clone(), (token.to_owned(), now + SESSION_TTL));
        id
    }

    /// The token of a live session.
    fn token(&self, id: &str) -> Option<String> {
        let mut m = self.map.lock();
        match m.get(id) {
            Some((t, exp)) if *exp > Instant::now() => Some(t.clone()),
            Some(_) => {
                m.remove(id);
                None
            }
            None => None,
        }
    }

    fn close(&self, id: &str) {
        self.map.lock().remove(id);
    }
}

/// The session id in a request's cookies.
fn session_id(h: &HeaderMap) -> Option<String> {
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_owned())
        .filter(|v| !v.is_empty())
}

fn forbidden(m: &str) -> ApiError {
    ApiError::new(ErrorCode::Forbidden, m)
}

/// The host (and port) the request was sent to: its `Host` header, or under HTTP/2 (which
/// has none) the URI's authority.
fn request_host(req: &Request) -> String {
    req.headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.as_str().to_owned()))
        .unwrap_or_default()
}

/// Whether the request's `Origin` (when there is one, or always when `required`) names
/// `host`, the host the request was sent to.
fn same_origin(h: &HeaderMap, host: &str, required: bool) -> Result<(), ApiError> {
    let origin = h.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let Some(origin) = origin else {
        return if required {
            Err(forbidden(
                "a state-changing request with a session cookie needs an Origin header",
            ))
        } else {
            Ok(())
        };
    };
    let authority = origin.split_once("://").map(|(_, a)| a).unwrap_or("");
    if host.is_empty() || !authority.eq_ignore_ascii_case(host) {
        return Err(forbidden(
            "cross-origin request refused: Origin does not match Host",
        ));
    }
    Ok(())
}

/// The token a `/v1` request authenticates with: its bearer header, else its session's
/// (after the cross-origin checks a cookie needs), else empty.
pub(crate) fn token_of(sessions: &Sessions, req: &Request) -> Result<String, ApiError> {
    let h = req.headers();
    let bearer = bearer_of(h);
    if !bearer.is_empty() {
        return Ok(bearer);
    }
    let Some(token) = session_id(h).and_then(|id| sessions.token(&id)) else {
        return Ok(String::new());
    };
    let site = h.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    if matches!(site, Some("cross-site") | Some("same-site")) {
        return Err(forbidden(
            "cross-site request refused: the session cookie is for the dashboard's own pages",
        ));
    }
    let unsafe_method = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let upgrade = h.contains_key(header::UPGRADE);
    if unsafe_method || upgrade {
        same_origin(h, &request_host(req), true)?;
    }
    Ok(token)
}

/// The `/ui` routes (kept out of [`super::routes`]: they are not the REST contract).
pub fn router() -> Router<HttpState> {
    Router::new()
        .route("/ui", get(|| async { redirect() }))
        .route("/ui/", get(index))
        .route("/ui/{file}", get(asset))
        .route("/ui/login", post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/session", get(session))
}

fn redirect() -> Response {
    (StatusCode::PERMANENT_REDIRECT, [(header::LOCATION, "/ui/")]).into_response()
}

/// One embedded file: name, content type, bytes.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_str!("../../ui/index.html"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("../../ui/app.css"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../ui/app.js"),
    ),
    (
        "term.js",
        "text/javascript; charset=utf-8",
        include_str!("../../ui/term.js"),
    ),
    (
        "chart.js",
        "text/javascript; charset=utf-8",
        include_str!("../../ui/chart.js"),
    ),
    (
        "icon.svg",
        "image/svg+xml",
        include_str!("../../ui/icon.svg"),
    ),
];

/// Each asset's ETag (SHA-256 of its bytes, quoted), computed once.
fn etags() -> &'static Vec<String> {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    TAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|(_, _, body)| format!("\"{}\"", &hex::encode(Sha256::digest(body))[..32]))
            .collect()
    })
}

async fn index(h: HeaderMap) -> Response {
    serve("index.html", &h)
}

async fn asset(Path(file): Path<String>, h: HeaderMap) -> Response {
    serve(&file, &h)
}

fn serve(name: &str, h: &HeaderMap) -> Response {
    let Some(i) = ASSETS.iter().position(|(n, _, _)| *n == name) else {
        return (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("no dashboard file {name:?}\n"),
        )
            .into_response();
    };
    let (_, ctype, body) = ASSETS[i];
    let etag = &etags()[i];
    let fresh = h
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let mut resp = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, ctype)], body).into_response()
    };
    let hs = resp.headers_mut();
    hs.insert(header::ETAG, HeaderValue::from_str(etag).expect("hex etag"));
    // Revalidated every time (cheap: a 304), so a new binary's files are seen at once.
    hs.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    security_headers(hs);
    resp
}

fn security_headers(hs: &mut HeaderMap) {
    hs.insert("content-security-policy", HeaderValue::from_static(CSP));
    hs.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    hs.insert("x-frame-options", HeaderValue::from_static("DENY"));
    hs.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
}

fn cookie(s: &HttpState, value: &str, max_age: u64) -> HeaderValue {
    let secure = if s.app.config.tls.is_some() {
        "; Secure"
    } else {
        ""
    };
    HeaderValue::from_str(&format!(
        "{COOKIE}={value}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}{secure}"
    ))
    .expect("cookie is ASCII")
}

fn caller_json(c: &Caller, auth_required: bool) -> serde_json::Value {
    match c {
        Caller::Master => serde_json::json!({"caller": "master", "auth_required": auth_required}),
        Caller::Key(id) => {
            serde_json::json!({"caller": "api_key", "key_id": id, "auth_required": auth_required})
        }
    }
}

/// `POST /ui/login` `{"token": "..."}`: checks the token as the API does and opens a
/// session (200 with the caller and a `Set-Cookie`), or 401 with the API's message.
async fn login(State(s): State<HttpState>, req: Request) -> Result<Response, ApiError> {
    if !peer_allowed(&s.app.config, &req) {
        return Err(forbidden("client address is not in ORCH_ALLOWED_CIDRS"));
    }
    same_origin(req.headers(), &request_host(&req), false)?;
    let body = axum::body::to_bytes(req.into_body(), 64 * 1024)
        .await
        .map_err(|e| ApiError::invalid(format!("reading the login body: {e}")))?;
    #[derive(serde::Deserialize)]
    struct Login {
        token: String,
    }
    let l: Login = serde_json::from_slice(&body).map_err(|e| {
        ApiError::invalid(format!(
            "login body must be JSON {{\"token\": \"...\"}}: {e}"
        ))
    })?;
    let token = l.token.trim();
    if token.is_empty() {
        return Err(ApiError::new(
            ErrorCode::Unauthorized,
            "enter the master token or an API key",
        ));
    }
    let caller = match caller_of(&s.app, token).await? {
        Ok(c) => c,
        Err(m) => return Err(ApiError::new(ErrorCode::Unauthorized, m)),
    };
    let id = s.sessions.open(token);
    let mut resp =
        axum::Json(caller_json(&caller, s.app.config.auth_token.is_some())).into_response();
    resp.headers_mut()
        .insert(header::SET_COOKIE, cookie(&s, &id, SESSION_TTL.as_secs()));
    Ok(resp)
}

/// `POST /ui/logout`: drops the session and clears the cookie (204).
async fn logout(State(s): State<HttpState>, req: Request) -> Result<Response, ApiError> {
    same_origin(req.headers(), &request_host(&req), false)?;
    if let Some(id) = session_id(req.headers()) {
        s.sessions.close(&id);
    }
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut()
        .insert(header::SET_COOKIE, cookie(&s, "", 0));
    Ok(resp)
}

/// `GET /ui/session`: who the browser is (bearer or cookie), or 401 — the dashboard's
/// first call, deciding between the login form and the pages.
async fn session(State(s): State<HttpState>, req: Request) -> Result<Response, ApiError> {
    if !peer_allowed(&s.app.config, &req) {
        return Err(forbidden("client address is not in ORCH_ALLOWED_CIDRS"));
    }
    let token = token_of(&s.sessions, &req)?;
    match caller_of(&s.app, &token).await? {
        Ok(c) => Ok(axum::Json(caller_json(&c, s.app.config.auth_token.is_some())).into_response()),
        Err(m) => Err(ApiError::new(ErrorCode::Unauthorized, m)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_parsing_and_origin_rule() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; fuse_session=abc; b=2"),
        );
        assert_eq!(session_id(&h).as_deref(), Some("abc"));
        let host = "example.test:8080";
        assert!(same_origin(&h, host, false).is_ok());
        assert!(same_origin(&h, host, true).is_err());
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://example.test:8080"),
        );
        assert!(same_origin(&h, host, true).is_ok());
        assert!(same_origin(&h, "", true).is_err());
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://example.test:9090"),
        );
        assert!(same_origin(&h, host, true).is_err());
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.test:8080"),
        );
        assert!(same_origin(&h, host, false).is_err());
    }

    #[test]
    fn sessions_expire_and_close() {
        let s = Sessions::default();
        let id = s.open("tok");
        assert_eq!(s.token(&id).as_deref(), Some("tok"));
        s.close(&id);
        assert_eq!(s.token(&id), None);
        assert_eq!(s.token("nope"), None);
    }
}
