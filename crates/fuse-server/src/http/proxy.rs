//! The ports proxy: HTTP and WebSocket to a published guest port, by path
//! (`/v1/environments/{id}/ports/{port}/…`) or by host (`{port}-{id}.{FUSE_PROXY_DOMAIN}`).
//! It sits in front of the API router (outside its whole-body layer, so bodies stream
//! both ways and are never held), and speaks HTTP/1.1 itself over a tunnel that the VM's
//! host opens to the guest's port (`fc-agent`'s tunnel route): one tunnel per request.
//!
//! - **Auth**: a public endpoint needs nothing. A private one accepts the API's bearer
//!   token (master or API key; none needed on a server that requires none), or the
//!   environment's traffic token as `X-Fuse-Traffic-Token`, as the cookie
//!   [`COOKIE`], or once as `?fuse_token=` on a GET (answered with a redirect that sets the
//!   cookie, for browsers). Private endpoints are behind `ORCH_ALLOWED_CIDRS` too. Whatever
//!   authenticated the request is removed before it reaches the guest.
//! - **Headers**: hop-by-hop headers are dropped both ways (and those `Connection`
//!   names); `X-Forwarded-For`, `-Proto`, `-Host` and (path-based) `-Prefix` are set.
//! - **Upgrades**: a `101` from the guest is passed on and the two upgraded streams are
//!   copied into each other until either side closes.
//! - **Bounded**: at most `ORCH_MAX_CONNECTIONS` proxied exchanges at once (503 past it),
//!   the guest's response head within `FUSE_PROXY_TIMEOUT_SECS` (504), request bodies
//!   within `ORCH_BODY_TIMEOUT_SECS` as every request.
//! - **Errors** (the JSON envelope): unknown environment or unpublished port 404, not
//!   running 409, nothing listening in the guest 502.

use super::error::ApiError;
use crate::app::ports::{parse_host_label, port_path, traffic_token_ok};
use crate::app::App;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use fuse_store::VmRecord;
use fuse_types::{Endpoint, ErrorCode};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::Semaphore;

/// The cookie that carries a traffic token for browsers.
pub const COOKIE: &str = "fuse_traffic_token";
/// The header that carries a traffic token.
pub const TOKEN_HEADER: &str = "x-fuse-traffic-token";
/// The query parameter a browser's first request carries the traffic token in.
pub const TOKEN_QUERY: &str = "fuse_token";

/// What the proxy needs: the domain and how many exchanges may run at once.
#[derive(Clone)]
pub struct ProxyState {
    /// The domain.
    pub app: Arc<App>,
    /// One permit per proxied exchange (an upgraded stream holds it until it closes).
    pub permits: Arc<Semaphore>,
}

/// Where a proxied request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    id: String,
    port: u16,
    /// Path and query for the guest.
    upstream: String,
    /// `/v1/environments/{id}/ports/{port}` when path-based.
    prefix: Option<String>,
}

/// Sends a request for a proxy URL to the proxy; everything else to the API.
pub async fn gate(State(s): State<ProxyState>, req: Request, next: Next) -> Response {
    if s.app.config.e2b_prefix.is_some() {
        let (headers, uri) = (req.headers().clone(), req.uri().clone());
        match super::e2b::route(&s.app, &headers, &uri).await {
            Ok(Some(r)) => {
                return super::e2b::send(s, r, req)
                    .await
                    .unwrap_or_else(IntoResponse::into_response)
            }
            Ok(None) => {}
            Err(e) => return e.into_response(),
        }
    }
    match target_of(&s.app.config.proxy, &req) {
        Ok(Some(t)) => proxy(s, t, req)
            .await
            .unwrap_or_else(IntoResponse::into_response),
        Ok(None) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// The route table's entry for the proxy: never reached, as [`gate`] answers first.
pub async fn behind_gate() -> ApiError {
    ApiError::internal("the ports proxy's gate is not in front of the router")
}

/// The request's host name (its `Host`, else its URI's), lower case, without a port.
pub(super) fn host_name(headers: &HeaderMap, uri: &Uri) -> Option<String> {
    let h = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| uri.host())?;
    // An IPv6 literal (`[::1]:8080`) is never a name under the domain.
    let name = match h.rsplit_once(':') {
        Some((n, p)) if !h.starts_with('[') && p.bytes().all(|b| b.is_ascii_digit()) => n,
        _ => h,
    };
    Some(name.trim_end_matches('.').to_ascii_lowercase())
}

/// The one label of `host` under `domain` (`8080-vm1` of `8080-vm1.example.com`); `None`
/// for the domain itself, other domains and deeper names.
pub(super) fn label_under<'a>(host: &'a str, domain: &str) -> Option<&'a str> {
    let label = host.strip_suffix(domain)?.strip_suffix('.')?;
    (!label.is_empty() && !label.contains('.')).then_some(label)
}

/// Whether (and where) `req` is for the proxy.
fn target_of(
    cfg: &crate::config::proxy::ProxyConfig,
    req: &Request,
) -> Result<Option<Target>, ApiError> {
    let pq = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    if let (Some(domain), Some(host)) = (&cfg.domain, host_name(req.headers(), req.uri())) {
        if let Some(label) = label_under(&host, domain) {
            let (port, id) = parse_host_label(label).ok_or_else(|| {
                ApiError::not_found(format!(
                    "{host} is not a port of an environment: names under {domain} are \
                     {{port}}-{{environment id}}.{domain}"
                ))
            })?;
            return Ok(Some(Target {
                id: id.to_owned(),
                port,
                upstream: pq.to_owned(),
                prefix: None,
            }));
        }
    }
    let Some(rest) = pq.strip_prefix("/v1/environments/") else {
        return Ok(None);
    };
    let mut parts = rest.splitn(3, '/');
    let (Some(id), Some("ports"), Some(after)) = (parts.next(), parts.next(), parts.next()) else {
        return Ok(None);
    };
    let (port, tail) = match after.find(['/', '?']) {
        Some(i) => (&after[..i], &after[i..]),
        None => (after, ""),
    };
    let port: u16 = port.parse().ok().filter(|p| *p > 0).ok_or_else(|| {
        ApiError::invalid(format!("port {port:?} must be a number from 1 to 65535"))
    })?;
    let upstream = if tail.starts_with('/') {
        tail.to_owned()
    } else {
        format!("/{tail}")
    };
    Ok(Some(Target {
        id: id.to_owned(),
        port,
        upstream,
        prefix: Some(port_path(id, port)),
    }))
}

/// How a private request proved itself, and what to remove before it reaches the guest.
pub(super) enum Proof {
    /// The endpoint is public.
    Public,
    /// The API is open (no `ORCH_AUTH_TOKEN`), so are private ports; nothing is removed.
    Open,
    /// The API's bearer token or an API key (the `Authorization` header is removed).
    Bearer,
    /// The traffic token, in the header or the cookie.
    Token,
    /// The traffic token in `?fuse_token=` of a GET: answered with a redirect that sets the
    /// cookie.
    Query,
}

async fn prove(
    app: &App,
    rec: &VmRecord,
    ep: &Endpoint,
    (h, method, peer_ok): (&HeaderMap, &Method, bool),
    query_token: Option<&str>,
) -> Result<Proof, ApiError> {
    if ep.public {
        return Ok(Proof::Public);
    }
    if !peer_ok {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "client address is not in ORCH_ALLOWED_CIDRS",
        ));
    }
    let header_token = h.get(TOKEN_HEADER).and_then(|v| v.to_str().ok());
    if header_token.is_some_and(|t| traffic_token_ok(rec, t)) {
        return Ok(Proof::Token);
    }
    if cookie_token(h).is_some_and(|t| traffic_token_ok(rec, &t)) {
        return Ok(Proof::Token);
    }
    if query_token.is_some_and(|t| traffic_token_ok(rec, t)) {
        return Ok(if matches!(*method, Method::GET | Method::HEAD) {
            Proof::Query
        } else {
            Proof::Token
        });
    }
    let bearer = super::bearer_of(h);
    if app.config.auth_token.is_none() {
        // An open API (no ORCH_AUTH_TOKEN): anyone is its caller, as on /v1. Only a live API
        // key is one of ours to take away; any other Authorization is the guest's.
        return match app.api_key_lookup(&bearer).await? {
            crate::app::api_keys::KeyLookup::Live(_) => Ok(Proof::Bearer),
            crate::app::api_keys::KeyLookup::Revoked => Err(ApiError::new(
                ErrorCode::Unauthorized,
                "this API key was revoked",
            )),
            crate::app::api_keys::KeyLookup::Unknown => Ok(Proof::Open),
        };
    }
    if !bearer.is_empty() {
        if let Ok(_caller) = super::caller_of(app, &bearer).await? {
            return Ok(Proof::Bearer);
        }
    }
    Err(ApiError::new(
        ErrorCode::Unauthorized,
        format!(
            "port {} of environment {} is private: send the API's bearer token, an API key, \
             or the environment's traffic_token (header X-Fuse-Traffic-Token, or \
             ?fuse_token= once in a browser)",
            ep.port, rec.id
        ),
    ))
}

/// The traffic token in the `Cookie` header, if any.
fn cookie_token(h: &HeaderMap) -> Option<String> {
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_owned())
}

/// `upstream` without `fuse_token=` in its query, and that token.
fn split_query_token(upstream: &str) -> (String, Option<String>) {
    let Some((path, query)) = upstream.split_once('?') else {
        return (upstream.to_owned(), None);
    };
    let mut token = None;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|kv| match kv.split_once('=') {
            Some((TOKEN_QUERY, v)) => {
                token = Some(v.to_owned());
                false
            }
            _ => *kv != TOKEN_QUERY,
        })
        .collect();
    if kept.is_empty() {
        (path.to_owned(), token)
    } else {
        (format!("{path}?{}", kept.join("&")), token)
    }
}

/// Headers that belong to one connection, never forwarded.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

/// Removes hop-by-hop headers (and those `Connection` names); keeps `Upgrade` and sets
/// `Connection: upgrade` when `upgrade` is true.
fn strip_hop_by_hop(h: &mut HeaderMap, upgrade: bool) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::try_from(n.trim()).ok())
        .filter(|n| *n != header::UPGRADE)
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in HOP_BY_HOP {
        h.remove(n);
    }
    if upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        h.remove(header::UPGRADE);
    }
}

/// Whether the message asks for (or agrees to) an upgrade.
fn wants_upgrade(h: &HeaderMap) -> bool {
    h.contains_key(header::UPGRADE)
        && h.get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

fn bad_gateway(message: String) -> ApiError {
    let mut e = ApiError::unavailable(message);
    e.status = StatusCode::BAD_GATEWAY;
    e
}

async fn proxy(s: ProxyState, t: Target, req: Request) -> Result<Response, ApiError> {
    let app = &s.app;
    let (upstream, query_token) = split_query_token(&t.upstream);
    let (rec, ep) = app.proxy_target(&t.id, t.port).await?;
    let peer_ok = super::peer_allowed(&app.config, &req);
    let (headers, method) = (req.headers().clone(), req.method().clone());
    let proof = prove(
        app,
        &rec,
        &ep,
        (&headers, &method, peer_ok),
        query_token.as_deref(),
    )
    .await?;
    let https = app.config.tls.is_some() || app.config.proxy.tls.is_some();
    if let Proof::Query = proof {
        // The browser keeps the token in a cookie for this port's URLs; the URL it is sent
        // on loses it (so it does not stay in the address bar or the guest's logs).
        let path = t
            .prefix
            .as_deref()
            .map(|p| format!("{p}/"))
            .unwrap_or_else(|| "/".into());
        let location = match &t.prefix {
            Some(p) => format!("{p}{upstream}"),
            None => upstream.clone(),
        };
        let cookie = format!(
            "{COOKIE}={}; Path={path}; HttpOnly; SameSite=Lax{}",
            query_token.unwrap_or_default(),
            if https { "; Secure" } else { "" }
        );
        return Ok(Response::builder()
            .status(StatusCode::SEE_OTHER)
            .header(header::LOCATION, location)
            .header(header::SET_COOKIE, cookie)
            .header(header::CACHE_CONTROL, "no-store")
            .body(Body::empty())
            .unwrap_or_default());
    }
    forward(s, &rec, t.port, t.prefix, proof, upstream, req).await
}

/// Sends a request, authorized by `proof`, to `port` of `rec`'s guest through its host,
/// and its answer back (upgrades too).
pub(super) async fn forward(
    s: ProxyState,
    rec: &VmRecord,
    port: u16,
    prefix: Option<String>,
    proof: Proof,
    upstream: String,
    mut req: Request,
) -> Result<Response, ApiError> {
    let app = &s.app;
    let https = app.config.tls.is_some() || app.config.proxy.tls.is_some();
    let t = Target {
        id: rec.id.to_string(),
        port,
        upstream: upstream.clone(),
        prefix,
    };
    let Ok(permit) = s.permits.clone().try_acquire_owned() else {
        return Err(ApiError::unavailable(
            "the ports proxy has ORCH_MAX_CONNECTIONS exchanges open; retry later",
        ));
    };
    let client_upgrade = wants_upgrade(req.headers()).then(|| hyper::upgrade::on(&mut req));
    let peer = req
        .extensions()
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let (parts, body) = req.into_parts();
    let mut headers = parts.headers;
    let original_host = headers.get(header::HOST).cloned();
    strip_hop_by_hop(&mut headers, client_upgrade.is_some());
    match proof {
        Proof::Bearer => {
            headers.remove(header::AUTHORIZATION);
        }
        Proof::Token => {
            headers.remove(TOKEN_HEADER);
        }
        Proof::Public | Proof::Open | Proof::Query => {}
    }
    drop_our_cookie(&mut headers);
    let forwarded_for = match (
        headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()),
        peer,
    ) {
        (Some(prev), Some(ip)) => Some(format!("{prev}, {ip}")),
        (None, Some(ip)) => Some(ip.to_string()),
        (prev, None) => prev.map(str::to_owned),
    };
    if let Some(v) = forwarded_for.and_then(|v| HeaderValue::from_str(&v).ok()) {
        headers.insert("x-forwarded-for", v);
    }
    headers.insert(
        "x-forwarded-proto",
        HeaderValue::from_static(if https { "https" } else { "http" }),
    );
    if let Some(h) = original_host {
        headers.insert("x-forwarded-host", h);
    }
    if let Some(v) = t
        .prefix
        .as_deref()
        .and_then(|p| HeaderValue::from_str(p).ok())
    {
        headers.insert("x-forwarded-prefix", v);
    }
    let uri: Uri = upstream
        .parse()
        .map_err(|_| ApiError::invalid("the request's path is not a valid URI"))?;
    let mut out = hyper::Request::builder()
        .method(parts.method)
        .uri(uri)
        .version(axum::http::Version::HTTP_11)
        .body(body)
        .map_err(|e| ApiError::internal(format!("building the upstream request: {e}")))?;
    *out.headers_mut() = headers;

    let tunnel = app.proxy_open(rec, t.port).await?;
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(tunnel))
        .await
        .map_err(|e| {
            bad_gateway(format!(
                "speaking HTTP to port {} of {}: {e}",
                t.port, rec.id
            ))
        })?;
    let vm = rec.id.to_string();
    let port = t.port;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(vm_id = %vm, port, error = %e, "proxied connection ended");
        }
    });
    let limit = app.config.proxy.timeout;
    let mut resp = match tokio::time::timeout(limit, sender.send_request(out)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            return Err(bad_gateway(format!(
                "the server on port {} of {} did not answer: {e}",
                t.port, rec.id
            )))
        }
        Err(_) => {
            let mut e = ApiError::unavailable(format!(
                "the server on port {} of {} sent no answer within FUSE_PROXY_TIMEOUT_SECS ({} s)",
                t.port,
                rec.id,
                limit.as_secs()
            ));
            e.status = StatusCode::GATEWAY_TIMEOUT;
            return Err(e);
        }
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            return Err(bad_gateway(format!(
                "the server on port {} of {} switched protocols unasked",
                t.port, rec.id
            )));
        };
        let guest_upgrade = hyper::upgrade::on(&mut resp);
        let shutdown = app.shutdown.clone();
        let vm = rec.id.to_string();
        tokio::spawn(async move {
            let _permit = permit;
            let (c, g) = match tokio::join!(client_upgrade, guest_upgrade) {
                (Ok(c), Ok(g)) => (c, g),
                (c, g) => {
                    tracing::debug!(vm_id = %vm, port, client = c.is_ok(), guest = g.is_ok(), "proxied upgrade failed");
                    return;
                }
            };
            let (mut c, mut g) = (TokioIo::new(c), TokioIo::new(g));
            tokio::select! {
                r = tokio::io::copy_bidirectional(&mut c, &mut g) => {
                    tracing::debug!(vm_id = %vm, port, result = ?r, "proxied upgraded stream closed");
                }
                _ = shutdown.cancelled() => {}
            }
        });
        let (mut parts, _) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers, true);
        return Ok(Response::from_parts(parts, Body::empty()));
    }
    let (mut parts, incoming) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    // The permit goes with the body: held until the client has it all or goes away.
    let body = Body::new(Held {
        inner: incoming,
        _permit: permit,
    });
    Ok(Response::from_parts(parts, body))
}

/// Removes the traffic-token cookie from the `Cookie` headers (the guest never sees it).
fn drop_our_cookie(h: &mut HeaderMap) {
    let cookies: Vec<String> = h
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .map(str::trim)
                .filter(|c| c.split_once('=').is_none_or(|(k, _)| k != COOKIE))
                .collect::<Vec<_>>()
                .join("; ")
        })
        .filter(|v| !v.is_empty())
        .collect();
    h.remove(header::COOKIE);
    for c in cookies {
        if let Ok(v) = HeaderValue::from_str(&c) {
            h.append(header::COOKIE, v);
        }
    }
}

/// A response body that holds the proxy's permit until it is done.
struct Held<B> {
    inner: B,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl<B: http_body::Body + Unpin> http_body::Body for Held<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(host: &str, pq: &str) -> Request {
        axum::http::Request::builder()
            .uri(pq)
            .header(header::HOST, host)
            .body(Body::empty())
            .unwrap()
    }

    fn cfg(domain: Option<&str>) -> crate::config::proxy::ProxyConfig {
        crate::config::proxy::ProxyConfig {
            domain: domain.map(str::to_owned),
            ..Default::default()
        }
    }

    #[test]
    fn targets_by_path_and_by_host() {
        let c = cfg(Some("apps.example.com"));
        let t = |host: &str, pq: &str| target_of(&c, &req(host, pq)).map_err(|e| e.message);
        assert_eq!(
            t("fuse.example.com", "/v1/environments/fuse-a").unwrap(),
            None
        );
        assert_eq!(
            t("fuse.example.com", "/v1/environments/fuse-a/events").unwrap(),
            None
        );
        let p = t(
            "fuse.example.com",
            "/v1/environments/fuse-a/ports/8080/x/y?q=1",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (p.id.as_str(), p.port, p.upstream.as_str()),
            ("fuse-a", 8080, "/x/y?q=1")
        );
        assert_eq!(
            p.prefix.as_deref(),
            Some("/v1/environments/fuse-a/ports/8080")
        );
        let p = t("x", "/v1/environments/fuse-a/ports/8080")
            .unwrap()
            .unwrap();
        assert_eq!(p.upstream, "/");
        let p = t("x", "/v1/environments/fuse-a/ports/8080?a=b")
            .unwrap()
            .unwrap();
        assert_eq!(p.upstream, "/?a=b");
        assert!(t("x", "/v1/environments/fuse-a/ports/http/").is_err());
        let h = t("8080-fuse-a.Apps.Example.com:8443", "/p?q")
            .unwrap()
            .unwrap();
        assert_eq!(
            (h.id.as_str(), h.port, h.upstream.as_str()),
            ("fuse-a", 8080, "/p?q")
        );
        assert_eq!(h.prefix, None);
        assert!(t("web.apps.example.com", "/").is_err());
        assert_eq!(t("a.b.apps.example.com", "/").unwrap(), None);
        assert_eq!(t("apps.example.com", "/health").unwrap(), None);
        assert_eq!(
            target_of(&cfg(None), &req("8080-fuse-a.apps.example.com", "/")).unwrap(),
            None
        );
    }

    #[test]
    fn the_query_token_is_taken_out() {
        assert_eq!(split_query_token("/a"), ("/a".into(), None));
        assert_eq!(
            split_query_token("/a?fuse_token=t"),
            ("/a".into(), Some("t".into()))
        );
        assert_eq!(
            split_query_token("/a?x=1&fuse_token=t&y=2"),
            ("/a?x=1&y=2".into(), Some("t".into()))
        );
    }

    #[test]
    fn hop_by_hop_headers_and_our_cookie_go() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        let mut up = h.clone();
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        strip_hop_by_hop(&mut up, true);
        assert_eq!(up.get(header::CONNECTION).unwrap(), "upgrade");
        assert_eq!(up.get(header::UPGRADE).unwrap(), "websocket");
        let mut c = HeaderMap::new();
        c.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; fuse_traffic_token=s; b=2"),
        );
        assert_eq!(cookie_token(&c).as_deref(), Some("s"));
        drop_our_cookie(&mut c);
        assert_eq!(c.get(header::COOKIE).unwrap(), "a=1; b=2");
    }
}
